"""Tests for magvit_jax.decoding.maskgit with a tiny fake model."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magvit_jax.decoding import maskgit

K = 11  # codebook size
C = 3  # number of classes; null label = C
MASK = K


def make_params(n, seed=0, label_scale=1.0):
  r = np.random.default_rng(seed)
  return {
    'pos': jnp.asarray(r.normal(size=(n, K)) * 2.0, jnp.float32),
    'lab': jnp.asarray(r.normal(size=(C + 1, 1, K)) * label_scale, jnp.float32),
    'ctx': jnp.asarray(r.normal(size=(n, K)) * 0.1, jnp.float32),
  }


def fake_apply(params, tokens, labels):
  """logits [b, n, K]: per-position table + label term + dependence on known tokens."""
  known = (tokens != MASK).astype(jnp.float32)
  ctx = jnp.sum(known * jnp.where(tokens == MASK, 0, tokens), axis=-1)  # [b]
  return params['pos'][None] + params['lab'][labels] + ctx[:, None, None] * params['ctx'][None]


def _gamma_np(name, r):
  return {
    'linear': lambda r: 1 - r,
    'cosine': lambda r: math.cos(math.pi / 2 * r),
    'square': lambda r: 1 - r * r,
    'cubic': lambda r: 1 - r**3,
    'sqrt': lambda r: 1 - math.sqrt(r),
    'log': lambda r: 1 - math.log1p(255 * r) / math.log1p(255),
    'exp': lambda r: (1 - 2.0 ** (-8 * (1 - r))) / (1 - 2.0**-8),
  }[name](r)


def expected_counts(n_start, num_steps, schedule):
  """Reference (float64) of the number of mask ids after each step."""
  out, n_now = [], n_start
  for t in range(num_steps):
    if t == num_steps - 1:
      m = 0
    else:
      x = _gamma_np(schedule, (t + 1) / num_steps) * n_start
      m = math.floor(x + 1e-9 * max(1.0, x))
      m = max(0, min(n_now - 1, max(1, m)))
    out.append(m)
    n_now = m
  return out


def random_partial(rng, b, n, frac_known):
  r = np.random.default_rng(rng)
  tokens = r.integers(0, K, size=(b, n))
  known = r.random(size=(b, n)) < frac_known
  return jnp.asarray(np.where(known, tokens, MASK), jnp.int32)


def run(init, params=None, seed=0, labels=None, **kw):
  b, n = init.shape
  params = make_params(n) if params is None else params
  labels = jnp.arange(b, dtype=jnp.int32) % C if labels is None else labels
  kw.setdefault('mask_token_id', MASK)
  return maskgit.decode(fake_apply, params, jax.random.PRNGKey(seed), init, labels, **kw)


@pytest.mark.parametrize(
  'schedule,num_steps,frac_known',
  [
    ('cosine', 8, 0.3),
    ('linear', 7, 0.0),
    ('sqrt', 5, 0.5),
    ('log', 6, 0.1),
    ('exp', 4, 0.0),
    ('cubic', 9, 0.9),
  ],
)
def test_counts_per_step_and_known_tokens(schedule, num_steps, frac_known):
  b, n = 6, 40
  init = random_partial(1, b, n, frac_known)
  out = run(init, num_steps=num_steps, schedule=schedule)
  hist = np.asarray(out.history)
  tokens = np.asarray(out.tokens)
  init_np = np.asarray(init)
  assert hist.shape == (num_steps, b, n) and hist.dtype == np.int32
  assert tokens.shape == (b, n) and tokens.dtype == np.int32
  known = init_np != MASK
  for i in range(b):
    n_start = int((~known[i]).sum())
    want = expected_counts(n_start, num_steps, schedule)
    got = [int((hist[t, i] == MASK).sum()) for t in range(num_steps)]
    assert got == want, (i, n_start)
  # Known tokens untouched at every step and in the output.
  for t in range(num_steps):
    np.testing.assert_array_equal(hist[t][known], init_np[known])
  np.testing.assert_array_equal(tokens[known], init_np[known])
  # Once a token is fixed it stays fixed.
  for t in range(1, num_steps):
    fixed = hist[t - 1] != MASK
    np.testing.assert_array_equal(hist[t][fixed], hist[t - 1][fixed])
  # Final output: no mask ids, values in [0, K), equal to the last history entry.
  assert not np.any(tokens == MASK)
  assert tokens.min() >= 0 and tokens.max() < K
  np.testing.assert_array_equal(tokens, hist[-1])


def test_deterministic_in_rng():
  init = random_partial(2, 4, 32, 0.0)
  a = run(init, seed=5, num_steps=6)
  b = run(init, seed=5, num_steps=6)
  c = run(init, seed=6, num_steps=6)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.history, b.history)
  assert not np.array_equal(a.tokens, c.tokens)


def test_single_step():
  init = random_partial(3, 3, 20, 0.4)
  out = run(init, num_steps=1)
  assert out.history.shape == (1, 3, 20)
  assert not np.any(np.asarray(out.tokens) == MASK)
  known = np.asarray(init) != MASK
  np.testing.assert_array_equal(np.asarray(out.tokens)[known], np.asarray(init)[known])


@pytest.mark.parametrize('schedule', ['cosine', 'linear', 'square'])
def test_num_steps_equals_num_tokens(schedule):
  n = 16
  init = jnp.full((2, n), MASK, jnp.int32)
  out = run(init, num_steps=n, schedule=schedule)
  counts = (np.asarray(out.history) == MASK).sum(-1)  # [T, b]
  for t in range(n):
    np.testing.assert_array_equal(counts[t], n - t - 1)


def test_all_known_returns_input():
  init = jnp.asarray(np.random.default_rng(0).integers(0, K, size=(3, 12)), jnp.int32)
  out = run(init, num_steps=4)
  np.testing.assert_array_equal(out.tokens, init)
  for t in range(4):
    np.testing.assert_array_equal(out.history[t], init)


def test_guidance_changes_output():
  n = 32
  init = jnp.full((4, n), MASK, jnp.int32)
  params = make_params(n, label_scale=2.0)
  kw = dict(num_steps=6, params=params, seed=3)
  plain = run(init, guidance_scale=0.0, **kw)
  guided = run(init, guidance_scale=3.0, null_label=C, **kw)
  guided2 = run(init, guidance_scale=3.0, null_label=C, **kw)
  assert not np.any(np.asarray(guided.tokens) == MASK)
  assert not np.array_equal(plain.tokens, guided.tokens)
  np.testing.assert_array_equal(guided.tokens, guided2.tokens)


def test_guidance_needs_null_label():
  init = jnp.full((1, 4), MASK, jnp.int32)
  with pytest.raises(ValueError, match='null_label'):
    run(init, num_steps=2, guidance_scale=1.0)


def test_guidance_matches_manual_formula():
  # With a label-only model, guidance is cond + s (cond - uncond) of the label term; a
  # greedy (temperature 0, no noise) one-step decode must pick its argmax.
  n = 8
  params = make_params(n, label_scale=3.0)
  init = jnp.full((C, n), MASK, jnp.int32)
  labels = jnp.arange(C, dtype=jnp.int32)
  s = 2.0
  out = run(
    init,
    params=params,
    labels=labels,
    num_steps=1,
    temperature=0.0,
    choice_temperature=0.0,
    guidance_scale=s,
    null_label=C,
  )
  cond = fake_apply(params, init, labels)
  uncond = fake_apply(params, init, jnp.full_like(labels, C))
  want = jnp.argmax(cond + s * (cond - uncond), axis=-1)
  np.testing.assert_array_equal(out.tokens, want)


@pytest.mark.parametrize('temperature', [0.0, 1.0])
def test_no_choice_noise_keeps_most_confident(temperature):
  # Position j's distribution is uniform over support[j] = a_j tokens, so whatever token is
  # sampled its log-prob is -log(a_j): without choice noise the positions kept at step 0
  # must be those with the smallest a_j (the most probable tokens).
  n, b, T = 10, 3, 2
  a = np.random.default_rng(7).permutation(n) + 1  # distinct support sizes 1..10
  pos = np.full((n, K), -1e9, np.float32)
  for j in range(n):
    pos[j, : a[j]] = 0.0
  params = {'pos': jnp.asarray(pos), 'lab': jnp.zeros((C + 1, 1, K)), 'ctx': jnp.zeros((n, K))}
  init = jnp.full((b, n), MASK, jnp.int32)
  out = run(
    init,
    params=params,
    num_steps=T,
    schedule='cosine',
    temperature=temperature,
    choice_temperature=0.0,
    seed=1,
  )
  step0 = np.asarray(out.history[0])
  m = expected_counts(n, T, 'cosine')[0]
  assert 0 < m < n
  top = np.sort(np.argsort(a)[: n - m])
  for i in range(b):
    kept = np.flatnonzero(step0[i] != MASK)
    np.testing.assert_array_equal(kept, top)
    assert np.all(step0[i][kept] < a[kept])  # sampled inside the support


def test_mask_id_inside_vocab_never_sampled():
  # A model whose vocabulary includes the mask id (k > mask id) strongly prefers it.
  n = 10

  def apply_with_mask_logit(params, tokens, labels):
    logits = jnp.zeros(tokens.shape + (K + 1,))
    return logits.at[..., K].set(100.0)

  init = jnp.full((2, n), MASK, jnp.int32)
  out = maskgit.decode(
    apply_with_mask_logit,
    {},
    jax.random.PRNGKey(0),
    init,
    jnp.zeros((2,), jnp.int32),
    mask_token_id=MASK,
    num_steps=3,
  )
  assert not np.any(np.asarray(out.tokens) == MASK)


def test_inpainting_with_mask_region():
  b, h, w = 2, 4, 5
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, K, size=(b, h, w)), jnp.int32)
  region = np.zeros((h, w), bool)
  region[1:3, 1:4] = True
  init = maskgit.mask_region(tokens, jnp.asarray(region), MASK)
  assert init.shape == (b, h * w) and init.dtype == jnp.int32
  flat_region = np.broadcast_to(region.reshape(-1), (b, h * w))
  np.testing.assert_array_equal(np.asarray(init)[flat_region], MASK)
  np.testing.assert_array_equal(
    np.asarray(init)[~flat_region], np.asarray(tokens).reshape(b, -1)[~flat_region]
  )
  out = run(init, num_steps=3)
  np.testing.assert_array_equal(
    np.asarray(out.tokens)[~flat_region], np.asarray(tokens).reshape(b, -1)[~flat_region]
  )
  assert not np.any(np.asarray(out.tokens) == MASK)
  # Per-example region [b, h, w] (outpainting: keep only the centre of example 0).
  per = np.ones((b, h, w), bool)
  per[0, 1:3, 1:4] = False
  init = maskgit.mask_region(tokens, jnp.asarray(per), MASK)
  assert int((np.asarray(init) == MASK).sum()) == per.sum()
  with pytest.raises(ValueError):
    maskgit.mask_region(tokens, jnp.ones((3, 3), bool), MASK)


def test_num_masked_after_step_helper():
  n_start = jnp.array([0, 1, 5, 64], jnp.int32)
  m_last = maskgit.num_masked_after_step(jnp.int32(3), 4, n_start, n_start, 'cosine')
  np.testing.assert_array_equal(m_last, 0)
  m0 = maskgit.num_masked_after_step(jnp.int32(0), 4, n_start, n_start, 'linear')
  np.testing.assert_array_equal(m0, [0, 0, 3, 48])


def test_factorised_logits_decode_whole_tokens():
  """[b, n, s, k_sub] logits: token = sum_j sub_j * k_sub^j, log-probs add over sub-tokens."""
  b, n, s, k_sub = 2, 6, 2, 4
  table = jnp.asarray(np.random.default_rng(3).normal(size=(n, s, k_sub)) * 3.0, jnp.float32)

  def factorised_apply(params, tokens, labels):
    return jnp.broadcast_to(params[None], (tokens.shape[0], n, s, k_sub))

  mask = k_sub**s
  init = jnp.full((b, n), mask, jnp.int32).at[:, 0].set(5)
  out = maskgit.decode(
    factorised_apply,
    table,
    jax.random.PRNGKey(0),
    init,
    jnp.zeros((b,), jnp.int32),
    mask_token_id=mask,
    num_steps=3,
    temperature=0.0,
    choice_temperature=0.0,
  )
  best = np.argmax(np.asarray(table), axis=-1)  # [n, s]
  expected = best[:, 0] + k_sub * best[:, 1]
  np.testing.assert_array_equal(
    np.asarray(out.tokens)[:, 1:], np.broadcast_to(expected[1:], (b, n - 1))
  )
  np.testing.assert_array_equal(np.asarray(out.tokens)[:, 0], [5, 5])  # known token kept
  # Sampled (temperature 1) tokens stay inside the factorised vocabulary.
  out = maskgit.decode(
    factorised_apply,
    table,
    jax.random.PRNGKey(1),
    init,
    jnp.zeros((b,), jnp.int32),
    mask_token_id=mask,
    num_steps=3,
  )
  assert int(out.tokens.max()) < mask and int(out.tokens.min()) >= 0

"""Tests for magvit_jax.masking.schedules."""

import math

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from magvit_jax.decoding import maskgit
from magvit_jax.masking import mvtm, schedules

CONCAVE = ('cosine', 'square', 'cubic', 'exp')
CONVEX = ('sqrt', 'log')


def test_names():
  assert schedules.SCHEDULES == ('linear', 'cosine', 'square', 'cubic', 'sqrt', 'log', 'exp')
  assert schedules.OFFICIAL_SCHEDULES == ('official_log', 'official_exp')
  assert schedules.ALL_SCHEDULES == schedules.SCHEDULES + schedules.OFFICIAL_SCHEDULES
  assert [schedules.needs_num_tokens(n) for n in schedules.ALL_SCHEDULES] == [False] * 7 + [
    True
  ] * 2


@pytest.mark.parametrize('name', schedules.SCHEDULES)
def test_endpoints(name):
  gamma = schedules.get_schedule(name)
  assert float(gamma(jnp.float32(0.0))) == 1.0
  assert abs(float(gamma(jnp.float32(1.0)))) <= 1e-6
  # Integer input is promoted to float.
  assert float(gamma(jnp.array(0))) == 1.0
  assert abs(float(gamma(jnp.array(1)))) <= 1e-6


@pytest.mark.parametrize('name', schedules.SCHEDULES)
def test_monotone_and_range(name):
  gamma = schedules.get_schedule(name)
  r = jnp.linspace(0.0, 1.0, 10001, dtype=jnp.float32)
  g = np.asarray(gamma(r))
  assert g.shape == r.shape and g.dtype == np.float32
  assert np.all(g >= 0.0) and np.all(g <= 1.0)
  assert np.all(np.diff(g) <= 0.0)
  # Strictly decreasing overall (not a constant function).
  assert g[0] - g[-1] > 0.99


@pytest.mark.parametrize('name', schedules.SCHEDULES)
def test_any_shape(name):
  gamma = schedules.get_schedule(name)
  r = jnp.full((2, 3, 4), 0.5, jnp.float32)
  assert gamma(r).shape == (2, 3, 4)


@pytest.mark.parametrize('name', CONCAVE)
def test_concave_above_linear(name):
  r = np.linspace(0.0, 1.0, 1001, dtype=np.float32)[1:-1]
  g = np.asarray(schedules.get_schedule(name)(jnp.asarray(r)))
  assert np.all(g >= (1.0 - r) - 1e-6)


@pytest.mark.parametrize('name', CONVEX)
def test_convex_below_linear(name):
  r = np.linspace(0.0, 1.0, 1001, dtype=np.float32)[1:-1]
  g = np.asarray(schedules.get_schedule(name)(jnp.asarray(r)))
  assert np.all(g <= (1.0 - r) + 1e-6)


def test_known_values():
  r = jnp.float32(0.5)
  get = schedules.get_schedule
  np.testing.assert_allclose(get('linear')(r), 0.5, atol=1e-6)
  np.testing.assert_allclose(get('cosine')(r), np.cos(np.pi / 4), atol=1e-6)
  np.testing.assert_allclose(get('square')(r), 0.75, atol=1e-6)
  np.testing.assert_allclose(get('cubic')(r), 0.875, atol=1e-6)
  np.testing.assert_allclose(get('sqrt')(r), 1 - np.sqrt(0.5), atol=1e-6)
  np.testing.assert_allclose(get('log')(r), 1 - np.log1p(127.5) / np.log1p(255), atol=1e-6)
  np.testing.assert_allclose(get('exp')(r), (1 - 2.0**-4) / (1 - 2.0**-8), atol=1e-6)


def test_unknown_name():
  with pytest.raises(ValueError, match="'bogus'.*linear.*cosine.*exp.*official_log.*official_exp"):
    schedules.get_schedule('bogus')
  with pytest.raises(ValueError, match="'bogus'.*official_exp"):
    schedules.get_schedule('bogus', num_tokens=16)
  with pytest.raises(ValueError, match="'bogus'.*official_exp"):
    maskgit.decode(
      _apply,
      _params(4),
      jax.random.PRNGKey(0),
      jnp.full((1, 4), MASK, jnp.int32),
      jnp.zeros((1,), jnp.int32),
      mask_token_id=MASK,
      num_steps=2,
      schedule='bogus',
    )
  with pytest.raises(ValueError, match="'bogus'.*official_exp"):
    mvtm.sample_mask(jax.random.PRNGKey(0), 2, 4, 'bogus')


# ---------------------------------------------------------------------------------------
# MaskGIT's official token-count-dependent schedules.


def _official_np(name, r, n):
  """Float64 reference of maskgit/libml/mask_schedule.py (clipped to [1e-6, 1])."""
  n = max(n, 2)
  if name == 'official_log':
    g = math.inf if r == 0 else -math.log2(r) / math.log2(n)
  else:
    g = 1.0 - 2.0 ** (-math.log2(n) * (1.0 - r))
  return min(max(g, 1e-6), 1.0)


def _expected_counts(n_start, num_steps, name, rtol=1e-5):
  """Masked tokens after each decoding step, in float64 from the formula.

  The floor has the decoder's documented relative tolerance ``rtol`` (1e-5).
  """
  out, n_now = [], n_start
  for t in range(num_steps):
    if t == num_steps - 1:
      m = 0
    else:
      x = _official_np(name, (t + 1) / num_steps, n_start) * n_start
      m = math.floor(x * (1.0 + rtol) + rtol)
      m = max(0, min(n_now - 1, max(1, m)))
    out.append(m)
    n_now = m
  return out


def _counts_by_helper(n_start, num_steps, name):
  out, n_now = [], jnp.array([n_start], jnp.int32)
  for t in range(num_steps):
    m = maskgit.num_masked_after_step(
      jnp.int32(t), num_steps, jnp.array([n_start], jnp.int32), n_now, name
    )
    out.append(int(m[0]))
    n_now = m
  return out


@pytest.mark.parametrize(
  'name,r,n,expected',
  [
    ('official_log', 0.5, 256, 0.125),  # -log2(1/2) / log2(256) = 1/8
    ('official_log', 0.25, 256, 0.25),
    ('official_log', 0.5, 1024, 0.1),
    ('official_log', 0.125, 64, 0.5),
    ('official_log', 0.75, 256, -math.log2(0.75) / 8),
    ('official_exp', 0.5, 256, 1 - 2.0**-4),  # 1 - 2^(-8 * 1/2)
    ('official_exp', 0.5, 1024, 1 - 2.0**-5),
    ('official_exp', 0.75, 256, 0.75),
    ('official_exp', 0.0, 16, 1 - 1 / 16),  # 1 - 1/N at r = 0, not 1
    ('official_exp', 0.25, 100, 1 - 100**-0.75),
  ],
)
def test_official_known_values(name, r, n, expected):
  g = schedules.get_schedule(name, num_tokens=n)(jnp.float32(r))
  np.testing.assert_allclose(float(g), expected, rtol=1e-6)
  # Python int, numpy and jax integer token counts agree.
  g2 = schedules.get_schedule(name, num_tokens=jnp.int32(n))(jnp.float32(r))
  np.testing.assert_allclose(float(g2), expected, rtol=1e-6)


@pytest.mark.parametrize('name', schedules.OFFICIAL_SCHEDULES)
def test_official_endpoints_clipped(name):
  for n in (16, 256, 1024):
    gamma = schedules.get_schedule(name, num_tokens=n)
    # r = 1: the formulas give 0, clipped up to 1e-6 as in the official code.
    assert float(gamma(jnp.float32(1.0))) == np.float32(1e-6)
    assert float(gamma(jnp.array(1))) == np.float32(1e-6)  # integer input is promoted
    g0 = float(gamma(jnp.float32(0.0)))
    if name == 'official_log':
      assert g0 == 1.0  # +inf clipped to 1
    else:
      np.testing.assert_allclose(g0, 1 - 1 / n, rtol=1e-6)
    # Inputs outside [0, 1] are clipped first.
    assert float(gamma(jnp.float32(-0.5))) == g0
    assert float(gamma(jnp.float32(1.5))) == np.float32(1e-6)


@pytest.mark.parametrize('name', schedules.OFFICIAL_SCHEDULES)
def test_official_monotone_and_range(name):
  r = jnp.linspace(0.0, 1.0, 10001, dtype=jnp.float32)
  for n in (2, 16, 256, 1024, 4096):
    g = np.asarray(schedules.get_schedule(name, num_tokens=n)(r))
    assert g.shape == r.shape and g.dtype == np.float32
    assert np.all(np.isfinite(g))
    assert np.all(g >= np.float32(1e-6)) and np.all(g <= 1.0)
    assert np.all(np.diff(g) <= 0.0)
    assert g[0] - g[-1] > 0.49


def test_official_shapes_and_per_example_counts():
  # [b] token counts broadcast against a scalar ratio (the decoder's case) ...
  n = jnp.array([16, 256, 1024], jnp.int32)
  g = schedules.get_schedule('official_log', num_tokens=n)(jnp.float32(0.5))
  np.testing.assert_allclose(np.asarray(g), [0.25, 0.125, 0.1], rtol=1e-6)
  # ... and against [b] ratios (the trainer's case), any shape.
  r = jnp.array([0.25, 0.5, 0.75], jnp.float32)
  g = schedules.get_schedule('official_exp', num_tokens=256)(r)
  np.testing.assert_allclose(np.asarray(g), [1 - 2.0**-6, 1 - 2.0**-4, 0.75], rtol=1e-6)
  gamma = schedules.get_schedule('official_exp', num_tokens=64)
  assert gamma(jnp.full((2, 3, 4), 0.5, jnp.float32)).shape == (2, 3, 4)


@pytest.mark.parametrize('name', schedules.OFFICIAL_SCHEDULES)
def test_official_degenerate_token_counts_are_finite(name):
  # N < 2: the formulas divide by / scale with log2 N = 0 or -inf; evaluated as N = 2.
  gamma = schedules.get_schedule(name, num_tokens=jnp.array([0, 1, 2], jnp.int32))
  for r in (0.0, 0.5, 1.0):
    g = np.asarray(gamma(jnp.float32(r)))
    assert np.all(np.isfinite(g)) and np.all(g >= np.float32(1e-6)) and np.all(g <= 1.0)
    assert g[0] == g[1] == g[2]


@pytest.mark.parametrize('name', schedules.OFFICIAL_SCHEDULES)
def test_official_needs_num_tokens(name):
  with pytest.raises(ValueError, match='num_tokens'):
    schedules.get_schedule(name)


@pytest.mark.parametrize('name', schedules.SCHEDULES)
def test_normalised_ignore_num_tokens(name):
  r = jnp.linspace(0.0, 1.0, 257, dtype=jnp.float32)
  np.testing.assert_array_equal(
    schedules.get_schedule(name, num_tokens=256)(r), schedules.get_schedule(name)(r)
  )


def test_official_decode_counts_hand_computed():
  # N = 256, T = 8, r = k / 8. log: floor(256 * -log2(k / 8) / 8); exp: 256 - 2^k.
  assert _expected_counts(256, 8, 'official_log') == [96, 64, 45, 32, 21, 13, 6, 0]
  assert _expected_counts(256, 8, 'official_exp') == [254, 252, 248, 240, 224, 192, 128, 0]
  assert _counts_by_helper(256, 8, 'official_log') == [96, 64, 45, 32, 21, 13, 6, 0]
  assert _counts_by_helper(256, 8, 'official_exp') == [254, 252, 248, 240, 224, 192, 128, 0]


@pytest.mark.parametrize('name', schedules.OFFICIAL_SCHEDULES)
@pytest.mark.parametrize('n,num_steps', [(256, 12), (1024, 8), (1024, 16), (100, 7), (16, 10)])
def test_official_decode_counts_match_formula(name, n, num_steps):
  assert _counts_by_helper(n, num_steps, name) == _expected_counts(n, num_steps, name)


def test_official_log_floor_tolerance():
  # N = 1024, T = 16, r = 9/16: 1024 * -log2(9/16) / 10 = 84.99968 (not an integer); the
  # decoder's floor tolerates a relative 1e-5 and gives 85, a plain floor (the official
  # decoder) 84.
  x = 1024 * -math.log2(9 / 16) / 10
  assert 84.9996 < x < 84.9998
  assert _counts_by_helper(1024, 16, 'official_log')[8] == 85
  assert _expected_counts(1024, 16, 'official_log', rtol=0.0)[8] == 84


# ---------------------------------------------------------------------------------------
# Every schedule through the real decode loop and the MVTM training mask sampler.

K = 11  # codebook size of the tiny fake model
MASK = K


def _params(n, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, K)) * 2.0, jnp.float32)


def _apply(params, tokens, labels):
  """Tiny fake model: logits [b, n, K] from a per-position table plus the known-token sum."""
  ctx = jnp.sum(jnp.where(tokens == MASK, 0, tokens), axis=-1).astype(jnp.float32)
  return params[None] + 0.01 * ctx[:, None, None] + 0.1 * labels[:, None, None]


@pytest.mark.parametrize('name', schedules.ALL_SCHEDULES)
def test_every_schedule_decodes(name):
  b, n, num_steps = 3, 24, 6
  rng = np.random.default_rng(1)
  known = rng.random((b, n)) < np.array([[0.0], [0.25], [0.5]])  # per-example n_start
  init = jnp.asarray(np.where(known, rng.integers(0, K, (b, n)), MASK), jnp.int32)
  out = maskgit.decode(
    _apply,
    _params(n),
    jax.random.PRNGKey(0),
    init,
    jnp.zeros((b,), jnp.int32),
    mask_token_id=MASK,
    num_steps=num_steps,
    schedule=name,
  )
  tokens, history = np.asarray(out.tokens), np.asarray(out.history)
  assert not np.any(tokens == MASK) and tokens.min() >= 0
  np.testing.assert_array_equal(tokens[known], np.asarray(init)[known])
  for i in range(b):
    n_start = int((np.asarray(init[i]) == MASK).sum())
    counts = [int((history[t, i] == MASK).sum()) for t in range(num_steps)]
    assert counts == _counts_by_helper(n_start, num_steps, name)
    if name in schedules.OFFICIAL_SCHEDULES:
      # N is each example's own unknown count at the start (official total_unknown).
      assert counts == _expected_counts(n_start, num_steps, name)


@pytest.mark.parametrize('name', schedules.ALL_SCHEDULES)
def test_every_schedule_samples_training_masks(name):
  b, n = 64, 50
  rng = jax.random.PRNGKey(1)
  mask = jax.jit(mvtm.sample_mask, static_argnums=(1, 2, 3))(rng, b, n, name)
  assert mask.shape == (b, n) and mask.dtype == jnp.bool_
  r_rng, _ = jax.random.split(rng)
  r = jax.random.uniform(r_rng, (b,))
  counts = np.asarray(mask.sum(axis=-1))
  np.testing.assert_array_equal(counts, np.asarray(mvtm.mask_count(r, n, name)))
  assert counts.min() >= 1 and counts.max() <= n
  g = np.asarray(schedules.get_schedule(name, num_tokens=n)(r))
  np.testing.assert_array_equal(counts, np.clip(np.ceil(g * np.float32(n)), 1, n))


def test_official_training_counts():
  r = jnp.array([0.0, 0.3, 1.0], jnp.float32)
  n = 256
  log = np.asarray(mvtm.mask_count(r, n, 'official_log'))
  exp = np.asarray(mvtm.mask_count(r, n, 'official_exp'))
  # r = 0: log masks all; exp masks N - 1 (gamma(0) = 1 - 1/N). r = 1: 1e-6 -> one token.
  assert log[0] == n and exp[0] == n - 1
  assert log[2] == 1 and exp[2] == 1
  assert log[1] == math.ceil(n * -math.log2(0.3) / 8)
  assert exp[1] == math.ceil(n * (1 - 2.0 ** (-8 * 0.7)))


# ---------------------------------------------------------------------------------------
# Our decoder's per-step counts vs MaskGIT's parallel_decode.py rule under 'cosine'.


def _official_decoder_counts(n, num_steps):
  """maskgit/libml/parallel_decode.py's mask_len sequence, in its float32 arithmetic.

  mask_len = max(1, min(n_now - 1, floor(n * clip(cos(pi / 2 * r), 1e-6, 1)))) at every
  step, the last included (its output is the sampled map before that re-masking).
  """
  out, n_now = [], n
  for t in range(num_steps):
    ratio = jnp.float32(t + 1) / num_steps
    mask_ratio = jnp.clip(jax.lax.cos(math.pi / 2.0 * ratio), 1e-6, 1.0)
    m = int(jnp.floor(jnp.int32(n) * mask_ratio))
    m = max(1, min(n_now - 1, m))
    out.append(m)
    n_now = m
  return out


@pytest.mark.parametrize('n,num_steps', [(256, 8), (256, 16), (1024, 8), (1024, 16), (64, 8)])
def test_cosine_counts_match_official_decoder(n, num_steps):
  ours = _counts_by_helper(n, num_steps, 'cosine')
  official = _official_decoder_counts(n, num_steps)
  assert ours[:-1] == official[:-1]
  # Last step: the official loop re-masks one token in its state but returns the sampled
  # map, so both outputs are fully decoded.
  assert ours[-1] == 0 and official[-1] == 1


def test_cosine_counts_differ_from_official_decoder_at_two_thirds():
  # r = 8 / 12 = 2/3: 256 * cos(pi / 3) = 128 exactly, but float32 cos gives 0.49999997
  # and the official plain floor re-masks 127; our floor tolerates the rounding: 128.
  ours = _counts_by_helper(256, 12, 'cosine')
  official = _official_decoder_counts(256, 12)
  assert official[7] == 127 and ours[7] == 128
  assert [a for i, a in enumerate(ours[:-1]) if i != 7] == [
    a for i, a in enumerate(official[:-1]) if i != 7
  ]


def test_cosine_counts_differ_from_official_decoder_with_one_token_left():
  # 4 tokens, 8 steps: the official max(1, min(n_now - 1, m)) re-masks the last unknown
  # token at every step until the end; we keep it (max(0, ...)), later steps are no-ops.
  assert _official_decoder_counts(4, 8) == [3, 2, 1, 1, 1, 1, 1, 1]
  assert _counts_by_helper(4, 8, 'cosine') == [3, 2, 1, 0, 0, 0, 0, 0]

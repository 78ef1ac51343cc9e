"""Tests for magvit_jax.masking.mvtm."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magvit_jax.masking import mvtm, schedules


@pytest.mark.parametrize('schedule', schedules.SCHEDULES)
def test_mask_count_formula(schedule):
  n = 37
  r = jnp.concatenate(
    [jnp.array([0.0, 1.0], jnp.float32), jax.random.uniform(jax.random.PRNGKey(0), (200,))]
  )
  counts = np.asarray(mvtm.mask_count(r, n, schedule))
  g = np.asarray(schedules.get_schedule(schedule)(r))
  expected = np.clip(np.ceil(g * np.float32(n)), 1, n).astype(np.int32)
  np.testing.assert_array_equal(counts, expected)
  assert counts.dtype == np.int32
  assert counts[0] == n  # r = 0: everything masked
  assert counts[1] == 1  # r = 1: gamma = 0, clipped up to one token
  assert counts.min() >= 1 and counts.max() <= n


@pytest.mark.parametrize('schedule', ['cosine', 'linear', 'log'])
def test_sample_mask_exact_counts(schedule):
  rng = jax.random.PRNGKey(1)
  b, n = 64, 50
  mask = mvtm.sample_mask(rng, b, n, schedule)
  assert mask.shape == (b, n) and mask.dtype == jnp.bool_
  # Reproduce the r actually drawn (same key split as sample_mask).
  r_rng, _ = jax.random.split(rng)
  r = jax.random.uniform(r_rng, (b,))
  expected = np.asarray(mvtm.mask_count(r, n, schedule))
  counts = np.asarray(mask.sum(axis=-1))
  np.testing.assert_array_equal(counts, expected)
  assert counts.min() >= 1 and counts.max() <= n
  # Different examples get different numbers of masked tokens.
  assert len(np.unique(counts)) > 5


def test_mask_from_counts_extremes():
  counts = jnp.array([0, 1, 7, 8], jnp.int32)
  mask = mvtm.mask_from_counts(jax.random.PRNGKey(0), counts, 8)
  np.testing.assert_array_equal(np.asarray(mask.sum(-1)), [0, 1, 7, 8])


def test_sample_mask_uniform_positions():
  b, n = 4000, 16
  mask = np.asarray(mvtm.sample_mask(jax.random.PRNGKey(2), b, n, 'linear'))
  freq = mask.mean(axis=0)
  # With linear gamma the expected masked fraction is about 0.5 (+ ceil bias).
  expected = mask.mean()
  # Binomial std of a frequency over 4000 draws is <= 0.008; allow 5 sigma.
  assert np.all(np.abs(freq - expected) < 0.04), freq


def test_sample_mask_deterministic():
  a = mvtm.sample_mask(jax.random.PRNGKey(3), 8, 20, 'cosine')
  b = mvtm.sample_mask(jax.random.PRNGKey(3), 8, 20, 'cosine')
  c = mvtm.sample_mask(jax.random.PRNGKey(4), 8, 20, 'cosine')
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_sample_mask_jittable():
  f = jax.jit(mvtm.sample_mask, static_argnums=(1, 2, 3))
  mask = f(jax.random.PRNGKey(0), 4, 10, 'cosine')
  assert mask.shape == (4, 10)


def test_apply_mask():
  tokens = jnp.arange(6, dtype=jnp.int32).reshape(2, 3)
  mask = jnp.array([[True, False, False], [False, True, True]])
  out = mvtm.apply_mask(tokens, mask, 99)
  assert out.dtype == jnp.int32
  np.testing.assert_array_equal(out, [[99, 1, 2], [3, 99, 99]])


def _numpy_loss(logits, targets, mask, eps):
  k = logits.shape[-1]
  total, count, correct = 0.0, 0, 0
  for i in range(logits.shape[0]):
    for j in range(logits.shape[1]):
      if not mask[i, j]:
        continue
      z = logits[i, j].astype(np.float64)
      logp = z - (np.log(np.sum(np.exp(z - z.max()))) + z.max())
      q = np.full(k, eps / k)
      q[targets[i, j]] += 1.0 - eps
      total += -np.sum(q * logp)
      count += 1
      correct += int(np.argmax(z) == targets[i, j])
  return total / count, correct / count


def test_masked_cross_entropy_matches_numpy():
  rng = np.random.default_rng(0)
  b, n, k = 2, 4, 5
  logits = rng.normal(size=(b, n, k)).astype(np.float32) * 2
  targets = rng.integers(0, k, size=(b, n)).astype(np.int32)
  mask = np.array([[True, False, True, True], [False, False, True, False]])
  loss, metrics = mvtm.masked_cross_entropy(
    jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask), label_smoothing=0.1
  )
  ref_loss, ref_acc = _numpy_loss(logits, targets, mask, 0.1)
  assert loss.dtype == jnp.float32 and loss.shape == ()
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
  np.testing.assert_allclose(float(metrics['accuracy']), ref_acc, rtol=1e-6)
  np.testing.assert_allclose(float(metrics['num_masked']), 2.0)
  # Without smoothing, too.
  loss0, _ = mvtm.masked_cross_entropy(
    jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask), label_smoothing=0.0
  )
  np.testing.assert_allclose(float(loss0), _numpy_loss(logits, targets, mask, 0.0)[0], rtol=1e-5)


def test_masked_cross_entropy_hand_value():
  # One masked position, k = 2, logits (0, 0): log p = log(1/2) for both classes, so the
  # loss is log 2 whatever the smoothing.
  logits = jnp.zeros((1, 2, 2))
  targets = jnp.array([[1, 0]], jnp.int32)
  mask = jnp.array([[True, False]])
  loss, _ = mvtm.masked_cross_entropy(logits, targets, mask, 0.1)
  np.testing.assert_allclose(float(loss), math.log(2.0), rtol=1e-6)
  # logits (0, log 3): p = (1/4, 3/4); target 1 with eps 0.2 -> q = (0.1, 0.9).
  logits = jnp.array([[[0.0, math.log(3.0)], [5.0, -5.0]]])
  loss, _ = mvtm.masked_cross_entropy(logits, targets, mask, 0.2)
  expected = -(0.1 * math.log(0.25) + 0.9 * math.log(0.75))
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


def test_masked_cross_entropy_no_masked_tokens():
  logits = jnp.ones((2, 3, 4))
  targets = jnp.zeros((2, 3), jnp.int32)
  mask = jnp.zeros((2, 3), bool)
  loss, metrics = mvtm.masked_cross_entropy(logits, targets, mask, 0.1)
  assert float(loss) == 0.0 and np.isfinite(float(metrics['accuracy']))
  # A row without masked tokens next to one with them.
  mask = jnp.array([[False, False, False], [True, False, False]])
  loss, metrics = mvtm.masked_cross_entropy(logits, targets, mask, 0.0)
  np.testing.assert_allclose(float(loss), math.log(4.0), rtol=1e-6)
  np.testing.assert_allclose(float(metrics['num_masked']), 0.5)


@pytest.mark.slow  # over 6 s on 2 cores; the full suite runs it
def test_unmasked_positions_get_zero_gradient():
  rng = jax.random.PRNGKey(0)
  logits = jax.random.normal(rng, (3, 6, 7))
  targets = jax.random.randint(jax.random.PRNGKey(1), (3, 6), 0, 7)
  mask = mvtm.sample_mask(jax.random.PRNGKey(2), 3, 6, 'cosine')
  grad = jax.grad(lambda z: mvtm.masked_cross_entropy(z, targets, mask, 0.1)[0])(logits)
  grad = np.asarray(grad)
  m = np.asarray(mask)
  assert np.all(grad[~m] == 0.0)
  assert np.all(np.abs(grad[m]).sum(-1) > 0.0)


def test_factorised_loss_is_the_sum_of_sub_token_losses():
  """[b, n, s, k_sub] logits: loss = sum over sub-tokens of the masked CE, i.e. the token NLL."""
  rng = np.random.default_rng(0)
  b, n, s, k_sub = 2, 5, 2, 4
  logits = rng.normal(size=(b, n, s, k_sub)).astype(np.float32)
  targets = rng.integers(0, k_sub**s, size=(b, n)).astype(np.int32)
  mask = rng.random((b, n)) < 0.6
  mask[0, 0] = True
  loss, _ = mvtm.masked_token_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  subs = np.stack([targets % k_sub, targets // k_sub], -1)
  nll = -np.take_along_axis(logp, subs[..., None], -1)[..., 0].sum(-1)  # [b, n]
  np.testing.assert_allclose(float(loss), nll[mask].mean(), rtol=1e-5)
  np.testing.assert_array_equal(
    np.asarray(mvtm.split_sub_tokens(jnp.asarray(targets), s, k_sub)), subs
  )

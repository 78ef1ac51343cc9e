"""Tests for the lookup vector quantizer (magvit_jax/quantizers/vq.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn

from magvit_jax.quantizers.vq import VectorQuantizer, codebook_usage

K, D = 16, 4
BETA = 0.25


def _setup(seed=0, shape=(2, 3, 5, D)):
  model = VectorQuantizer(codebook_size=K, commitment_cost=BETA)
  z = jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)
  variables = model.init(jax.random.PRNGKey(seed + 1), z)
  params = nn.unbox(variables['params'])
  return model, params, z


@pytest.mark.slow  # over 6 s on 2 cores; the full suite runs it
def test_tokens_are_argmin_and_zq_is_codebook_lookup():
  model, params, z = _setup()
  z_q, aux = model.apply({'params': params}, z)
  codebook = np.asarray(params['codebook'])
  zn = np.asarray(z).reshape(-1, D)
  # Brute force squared distances in float64.
  dist = ((zn[:, None, :].astype(np.float64) - codebook[None].astype(np.float64)) ** 2).sum(-1)
  expected = dist.argmin(axis=1).reshape(z.shape[:-1])
  assert aux['tokens'].shape == z.shape[:-1]
  assert aux['tokens'].dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(aux['tokens']), expected)
  assert z_q.shape == z.shape
  np.testing.assert_allclose(np.asarray(z_q), codebook[expected], atol=1e-6)
  # `lookup` is the same table.
  looked = model.apply({'params': params}, aux['tokens'], method=VectorQuantizer.lookup)
  np.testing.assert_allclose(np.asarray(looked), codebook[expected], atol=0)
  # The test is non-trivial: more than one code used.
  assert len(np.unique(expected)) > 1


def test_straight_through_gradient_is_identity():
  model, params, z = _setup(seed=3)
  w = jax.random.normal(jax.random.PRNGKey(7), z.shape)

  def f(z):
    z_q, _ = model.apply({'params': params}, z)
    return jnp.sum(z_q * w)

  g = jax.grad(f)(z)
  np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-6)


def test_loss_value_and_gradient_split():
  model, params, z = _setup(seed=5)
  _, aux = model.apply({'params': params}, z)
  codebook = np.asarray(params['codebook'], np.float64)
  q = codebook[np.asarray(aux['tokens'])]
  zn = np.asarray(z, np.float64)
  mse = np.mean((zn - q) ** 2)
  np.testing.assert_allclose(float(aux['commitment_loss']), mse, rtol=1e-5)
  np.testing.assert_allclose(float(aux['codebook_loss']), mse, rtol=1e-5)
  np.testing.assert_allclose(float(aux['loss']), BETA * mse + mse, rtol=1e-5)

  def loss_fn(p, z):
    return model.apply({'params': p}, z)[1]['loss']

  g_params, g_z = jax.grad(loss_fn, argnums=(0, 1))(params, z)
  # Encoder input: only the commitment term, beta * 2 (z - q) / z.size.
  np.testing.assert_allclose(np.asarray(g_z), BETA * 2.0 * (zn - q) / zn.size, rtol=1e-4, atol=1e-8)
  # Codebook: only the codebook term, sum over assigned z of 2 (e - z) / z.size (no beta).
  flat_z = zn.reshape(-1, D)
  flat_t = np.asarray(aux['tokens']).reshape(-1)
  expected = np.zeros_like(codebook)
  for zi, ti in zip(flat_z, flat_t):
    expected[ti] += 2.0 * (codebook[ti] - zi) / zn.size
  np.testing.assert_allclose(np.asarray(g_params['codebook']), expected, rtol=1e-4, atol=1e-8)
  # Unused codes get no gradient at all.
  unused = np.setdiff1d(np.arange(K), flat_t)
  assert unused.size > 0
  assert np.all(np.asarray(g_params['codebook'])[unused] == 0)


def test_loss_zero_when_z_on_codebook():
  model, params, _ = _setup()
  codebook = params['codebook']
  idx = jnp.array([[0, 3, 5], [7, 7, 15]])
  z = codebook[idx]
  z_q, aux = model.apply({'params': params}, z)
  np.testing.assert_array_equal(np.asarray(aux['tokens']), np.asarray(idx))
  np.testing.assert_allclose(np.asarray(z_q), np.asarray(z), atol=1e-6)
  assert float(aux['loss']) < 1e-10
  # Aux usage/perplexity for this batch: 5 distinct codes of 16.
  np.testing.assert_allclose(float(aux['usage']), 5 / K, rtol=1e-6)


@pytest.mark.parametrize(
  'tokens, k, usage, perplexity',
  [
    (np.zeros((4, 4), np.int32), 8, 1 / 8, 1.0),
    (np.full((10,), 3, np.int32), 5, 1 / 5, 1.0),
    (np.arange(8, dtype=np.int32).reshape(2, 4), 8, 1.0, 8.0),
    (np.tile(np.arange(4, dtype=np.int32), 3), 16, 4 / 16, 4.0),
    # Two codes with probs 3/4, 1/4: perplexity = exp(H).
    (
      np.array([0, 0, 0, 1], np.int32),
      4,
      2 / 4,
      float(np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))),
    ),
  ],
)
def test_codebook_usage(tokens, k, usage, perplexity):
  u, p = codebook_usage(jnp.asarray(tokens), k)
  assert u.dtype == jnp.float32 and p.dtype == jnp.float32
  assert u.shape == () and p.shape == ()
  np.testing.assert_allclose(float(u), usage, rtol=1e-6)
  np.testing.assert_allclose(float(p), perplexity, rtol=1e-5)

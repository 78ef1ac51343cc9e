"""Tests for lookup-free quantization (magvit_jax/quantizers/lfq.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magvit_jax.quantizers import lfq
from magvit_jax.quantizers.lfq import LookupFreeQuantizer

ENTROPY_W, COMMIT_W = 0.1, 0.25


def _all_codes(d: int, dtype=np.float64) -> np.ndarray:
  """[2^d, d] codes in {-1, +1}, row k has channel i = +1 iff bit i of k is set."""
  k = np.arange(2**d)[:, None]
  return (2 * ((k >> np.arange(d)) & 1) - 1).astype(dtype)


def _brute_force_jax(z: jax.Array, temperature: float) -> dict[str, jax.Array]:
  """Reference built from the definition: softmax of -||z - c||^2 / T over all 2^d codes."""
  d = z.shape[-1]
  codes = jnp.asarray(_all_codes(d), z.dtype)
  flat = z.reshape(-1, d)
  logits = -jnp.sum((flat[:, None, :] - codes[None]) ** 2, axis=-1) / temperature  # [N, K]
  log_q = jax.nn.log_softmax(logits, axis=-1)
  q = jnp.exp(log_q)
  per_token = jnp.mean(-jnp.sum(q * log_q, axis=-1))
  m = jnp.mean(q, axis=0)
  batch = -jnp.sum(m * jnp.log(m))
  quantized = jnp.where(flat >= 0, 1.0, -1.0).astype(z.dtype)
  commitment = jnp.mean((flat - jax.lax.stop_gradient(quantized)) ** 2)
  loss = ENTROPY_W * (per_token - batch) + COMMIT_W * commitment
  return {'per_token_entropy': per_token, 'batch_entropy': batch, 'loss': loss}


def _model_terms(model: LookupFreeQuantizer, z: jax.Array) -> dict[str, jax.Array]:
  return jax.jit(lambda z: model.apply({}, z)[1])(z)


def _grad(fn, z: jax.Array) -> jax.Array:
  return jax.jit(jax.grad(fn))(z)


@pytest.mark.parametrize(
  'd, n, temperature, chunk',
  [
    (6, 64, 1.0, 16),  # several chunks
    (6, 100, 0.5, 4096),  # one chunk larger than the codebook
    (10, 128, 1.0, 96),  # chunk does not divide 2^d: masked tail
  ],
)
def test_matches_brute_force_in_float64(d, n, temperature, chunk):
  with jax.enable_x64(True):
    z = 0.7 * jax.random.normal(jax.random.PRNGKey(d + n), (n, d), jnp.float64)
    model = LookupFreeQuantizer(
      num_bits=d,
      entropy_weight=ENTROPY_W,
      commitment_weight=COMMIT_W,
      entropy_temperature=temperature,
      chunk_size=chunk,
    )
    ours = _model_terms(model, z)
    ref = jax.jit(_brute_force_jax, static_argnums=1)(z, temperature)
    for key in ref:
      assert ours[key].dtype == jnp.float64
      np.testing.assert_allclose(float(ours[key]), float(ref[key]), rtol=1e-10, err_msg=key)
    np.testing.assert_allclose(
      float(ours['entropy_loss']),
      float(ref['per_token_entropy'] - ref['batch_entropy']),
      rtol=1e-10,
    )
    g_ours = _grad(lambda z: model.apply({}, z)[1]['loss'], z)
    g_ref = _grad(lambda z: _brute_force_jax(z, temperature)['loss'], z)
    np.testing.assert_allclose(np.asarray(g_ours), np.asarray(g_ref), rtol=1e-8, atol=1e-12)
    # The entropy part of the gradient is non-trivial (not just the commitment gradient).
    quantized = jnp.where(z >= 0, 1.0, -1.0)
    g_ent = g_ours - COMMIT_W * 2.0 * (z - quantized) / z.size
    assert float(jnp.max(jnp.abs(g_ent))) > 1e-4


@pytest.mark.parametrize('d', [6, 10])
def test_float32_matches_float64_brute_force(d):
  n = 128
  z32 = 0.7 * jax.random.normal(jax.random.PRNGKey(d), (n, d), jnp.float32)
  model = LookupFreeQuantizer(
    num_bits=d, entropy_weight=ENTROPY_W, commitment_weight=COMMIT_W, chunk_size=256
  )
  ours = _model_terms(model, z32)
  g_ours = _grad(lambda z: model.apply({}, z)[1]['loss'], z32)
  assert ours['loss'].dtype == jnp.float32 and g_ours.dtype == jnp.float32
  with jax.enable_x64(True):
    z64 = jnp.asarray(np.asarray(z32), jnp.float64)
    ref = jax.jit(_brute_force_jax, static_argnums=1)(z64, 1.0)
    g_ref = np.asarray(_grad(lambda z: _brute_force_jax(z, 1.0)['loss'], z64))
  for key in ref:
    np.testing.assert_allclose(float(ours[key]), float(ref[key]), rtol=1e-5, err_msg=key)
  # float32 sums over 2^d codes: the absolute error is ~1e-5 of the largest gradient, and its
  # exact size depends on the CPU's vector width (1.3e-5 seen on one x86-64 machine).
  np.testing.assert_allclose(np.asarray(g_ours), g_ref, rtol=1e-5, atol=5e-5 * np.abs(g_ref).max())


def _numpy_reference_d18(z: np.ndarray, temperature: float) -> tuple[float, float]:
  """float64 per-token and batch entropy over all 2^18 codes, from the distance definition."""
  d = z.shape[-1]
  codes = _all_codes(d)  # [2^d, d]
  dist = (z**2).sum(-1, keepdims=True) - 2.0 * z @ codes.T + d  # [N, 2^d]
  logits = -dist / temperature
  logits -= logits.max(axis=1, keepdims=True)
  log_q = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  q = np.exp(log_q)
  per_token = float(np.mean(-(q * log_q).sum(axis=1)))
  m = q.mean(axis=0)
  nz = m > 0
  batch = float(-(m[nz] * np.log(m[nz])).sum())
  return per_token, batch


def test_exact_at_18_bits():
  d, n = 18, 16
  z = np.asarray(0.5 * jax.random.normal(jax.random.PRNGKey(18), (n, d), jnp.float32))
  per_ref, batch_ref = _numpy_reference_d18(z.astype(np.float64), 1.0)
  model = LookupFreeQuantizer(num_bits=d, chunk_size=8192)
  aux = _model_terms(model, jnp.asarray(z))
  np.testing.assert_allclose(float(aux['per_token_entropy']), per_ref, rtol=1e-5)
  np.testing.assert_allclose(float(aux['batch_entropy']), batch_ref, rtol=1e-5)
  # The batch term is large (~ log 2^18 region would need far more tokens): sanity range.
  assert 0 < batch_ref <= d * np.log(2)


def test_tokens_codes_round_trip_18_bits():
  d = 18
  tokens = jax.random.randint(jax.random.PRNGKey(0), (4, 3, 5), 0, 2**d, jnp.int32)
  codes = lfq.tokens_to_codes(tokens, d)
  assert codes.shape == (4, 3, 5, d) and codes.dtype == jnp.float32
  assert set(np.unique(np.asarray(codes)).tolist()) == {-1.0, 1.0}
  back = lfq.codes_to_tokens(codes)
  assert back.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(back), np.asarray(tokens))
  # Bit i is channel i.
  np.testing.assert_array_equal(
    np.asarray(lfq.tokens_to_codes(jnp.array(5), 4)), [1.0, -1.0, 1.0, -1.0]
  )
  # Quantizing codes gives the same tokens and the codes back; `lookup` decodes.
  model = LookupFreeQuantizer(num_bits=d)
  z_q, aux = jax.jit(lambda c: model.apply({}, c))(codes)
  np.testing.assert_array_equal(np.asarray(aux['tokens']), np.asarray(tokens))
  np.testing.assert_array_equal(np.asarray(z_q), np.asarray(codes))
  looked = model.apply({}, aux['tokens'], method=LookupFreeQuantizer.lookup)
  np.testing.assert_array_equal(np.asarray(looked), np.asarray(codes))


def test_sign_of_zero_is_plus_one_and_tokens_consistent():
  z = jnp.array([[0.0, -0.0, 0.3, -0.2], [-1.0, 0.0, -3.0, 2.0]])
  z_q, aux = LookupFreeQuantizer(num_bits=4).apply({}, z)
  np.testing.assert_array_equal(np.asarray(z_q), [[1, 1, 1, -1], [-1, 1, -1, 1]])
  np.testing.assert_array_equal(np.asarray(aux['tokens']), [1 + 2 + 4, 2 + 8])
  np.testing.assert_array_equal(np.asarray(lfq.tokens_to_codes(aux['tokens'], 4)), np.asarray(z_q))


def test_straight_through_gradient_is_identity():
  z = jax.random.normal(jax.random.PRNGKey(3), (2, 7, 8))
  w = jax.random.normal(jax.random.PRNGKey(4), z.shape)
  model = LookupFreeQuantizer(num_bits=8)
  g = _grad(lambda z: jnp.sum(model.apply({}, z)[0] * w), z)
  np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-6)


def test_commitment_value_and_gradient():
  z = jax.random.normal(jax.random.PRNGKey(5), (3, 4, 6))
  model = LookupFreeQuantizer(num_bits=6, entropy_weight=0.0, commitment_weight=COMMIT_W)
  aux = _model_terms(model, z)
  zn = np.asarray(z, np.float64)
  q = np.where(zn >= 0, 1.0, -1.0)
  np.testing.assert_allclose(float(aux['commitment_loss']), np.mean((zn - q) ** 2), rtol=1e-6)
  np.testing.assert_allclose(float(aux['loss']), COMMIT_W * np.mean((zn - q) ** 2), rtol=1e-6)
  g = _grad(lambda z: model.apply({}, z)[1]['loss'], z)
  np.testing.assert_allclose(np.asarray(g), COMMIT_W * 2 * (zn - q) / zn.size, rtol=1e-5, atol=1e-9)


@pytest.mark.slow  # over 4 s on 2 cores; the full suite runs it
def test_usage_and_perplexity():
  d = 18
  model = LookupFreeQuantizer(num_bits=d, chunk_size=65536)
  # All tokens equal -> one code used, perplexity 1.
  aux = _model_terms(model, jnp.full((4, 5, d), 0.5))
  np.testing.assert_allclose(float(aux['usage']), 1 / 2**d, rtol=1e-6)
  np.testing.assert_allclose(float(aux['perplexity']), 1.0, rtol=1e-6)
  # Tokens [7, 7, 7, 3, 9, 9, 0, 2**18 - 1]: 5 distinct, counts 3, 1, 2, 1, 1.
  tokens = jnp.array([7, 7, 7, 3, 9, 9, 0, 2**d - 1], jnp.int32)
  usage, perplexity = jax.jit(lfq.token_usage, static_argnums=1)(tokens, 2**d)
  p = np.array([3, 1, 2, 1, 1]) / 8
  np.testing.assert_allclose(float(usage), 5 / 2**d, rtol=1e-6)
  np.testing.assert_allclose(float(perplexity), np.exp(-(p * np.log(p)).sum()), rtol=1e-5)
  # Agrees with the histogram version of the VQ quantizer at small K.
  from magvit_jax.quantizers.vq import codebook_usage  # pylint: disable=g-import-not-at-top

  t = jax.random.randint(jax.random.PRNGKey(1), (3, 50), 0, 64)
  np.testing.assert_allclose(
    np.asarray(lfq.token_usage(t, 64)), np.asarray(codebook_usage(t, 64)), rtol=1e-6
  )


@pytest.mark.slow  # over 6 s on 2 cores; the full suite runs it
def test_grouped_approximation():
  d, n = 8, 200
  z = jax.random.normal(jax.random.PRNGKey(9), (n, d))
  exact = _model_terms(LookupFreeQuantizer(num_bits=d, chunk_size=512), z)
  one = _model_terms(LookupFreeQuantizer(num_bits=d, chunk_size=512, num_groups=1), z)
  for key in ('per_token_entropy', 'batch_entropy', 'loss'):
    np.testing.assert_allclose(float(one[key]), float(exact[key]), rtol=1e-6)
  for groups in (2, 8):
    grouped = _model_terms(LookupFreeQuantizer(num_bits=d, chunk_size=512, num_groups=groups), z)
    # Per-token entropy factorises: identical.
    np.testing.assert_allclose(
      float(grouped['per_token_entropy']), float(exact['per_token_entropy']), rtol=1e-5
    )
    # Subadditivity: H(mean q) <= sum_g H(mean q^g), and here strictly (correlated groups
    # through the mixture over tokens).
    assert np.isfinite(float(grouped['batch_entropy']))
    assert float(grouped['batch_entropy']) >= float(exact['batch_entropy']) - 1e-5
    assert float(grouped['batch_entropy']) > float(exact['batch_entropy']) + 1e-3
  with pytest.raises(ValueError, match='divide'):
    LookupFreeQuantizer(num_bits=d, num_groups=5).apply({}, z)


def test_grad_at_18_bits_never_materialises_full_matrix():
  d, n, chunk = 18, 4096, 1024
  model = LookupFreeQuantizer(num_bits=d, chunk_size=chunk)

  def loss(z):
    return model.apply({}, z)[1]['loss']

  compiled = jax.jit(jax.grad(loss)).lower(jax.ShapeDtypeStruct((n, d), jnp.float32)).compile()
  stats = compiled.memory_analysis()
  if stats is None or getattr(stats, 'temp_size_in_bytes', None) is None:
    pytest.skip('memory_analysis() is not available on this backend')
  full = n * 2**d * 4  # one float32 [N, 2^18] buffer: 4 GiB.
  assert stats.temp_size_in_bytes < full / 50, stats
  # It is jittable and runs (on a smaller batch, to keep the test fast).
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 4, d))
  g = jax.jit(jax.grad(loss))(z)
  assert g.shape == z.shape and bool(jnp.all(jnp.isfinite(g)))


def test_validation_errors():
  with pytest.raises(ValueError, match='channels'):
    LookupFreeQuantizer(num_bits=4).apply({}, jnp.zeros((2, 5)))
  with pytest.raises(ValueError, match='num_bits'):
    lfq.tokens_to_codes(jnp.zeros((2,), jnp.int32), 31)


def test_no_parameters():
  variables = LookupFreeQuantizer(num_bits=8).init(jax.random.PRNGKey(0), jnp.zeros((2, 8)))
  assert not jax.tree_util.tree_leaves(variables)

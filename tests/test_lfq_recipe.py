"""The MAGVIT-v2 / Open-MAGVIT2 LFQ recipe: defaults, entropy-weight annealing, the norm before
LFQ, the batch entropy over all devices, per-bit usage and dead bits (docs/lfq.md)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import tiny_configs  # tests/tiny_configs.py
from magvit_jax import parallel
from magvit_jax.config_loader import load_config
from magvit_jax.config_schema import validate_config
from magvit_jax.models import magvit2_tokenizer, tokenizers
from magvit_jax.quantizers import lfq
from magvit_jax.trainers import tokenizer as tok_trainer

# ----------------------------------------------------------------------------- defaults


@pytest.mark.parametrize(
  'config_arg',
  [
    'magvit2_tokenizer_video.py',
    'magvit2_tokenizer_video.py:digits',
    'magvit2_tokenizer_imagenet.py',
    'magvit2_tokenizer_imagenet.py:digits',
    'magvit2_tokenizer_imagenet.py:open_magvit2_256',
  ],
)
def test_recipe_defaults_in_the_magvit2_configs(config_arg):
  c = load_config(config_arg)
  assert c.model.entropy_temperature == 0.01
  assert c.model.commitment_weight == 0.25
  assert c.model.entropy_weight == 0.1
  assert c.model.pre_quant_norm == 'none'
  assert c.losses.entropy_weight_schedule == 'constant'
  # The model built from the config gets them.
  model = tokenizers.build_tokenizer(c.model)
  assert model.entropy_temperature == 0.01 and model.commitment_weight == 0.25


def test_pre_recipe_temperature_is_one_override_away():
  c = load_config('magvit2_tokenizer_video.py:digits')
  c.model.entropy_temperature = 1.0
  validate_config(c, 'tokenizer')
  assert tokenizers.build_tokenizer(c.model).entropy_temperature == 1.0


@pytest.mark.parametrize(
  'section, key, value, match',
  [
    ('model', 'pre_quant_norm', 'layer_norm', 'model.pre_quant_norm'),
    ('model', 'pre_quant_norm_groups', 4, 'model.pre_quant_norm_groups'),  # 4 does not divide 10
    ('model', 'pre_quant_norm_groups', 0, 'model.pre_quant_norm_groups'),
    ('model', 'entropy_temperature', 0.0, 'model.entropy_temperature'),
    ('model', 'commitment_weight', -0.25, 'model.commitment_weight'),
    ('losses', 'entropy_weight_schedule', 'step', 'losses.entropy_weight_schedule'),
    ('losses', 'entropy_weight_schedule', 'linear', 'losses.entropy_weight_steps'),  # steps = 0
  ],
)
def test_config_validation(section, key, value, match):
  c = load_config('magvit2_tokenizer_video.py:digits')
  c[section][key] = value
  with pytest.raises(ValueError, match=match):
    validate_config(c, 'tokenizer')


def test_annealing_is_refused_for_a_vq_tokenizer():
  c = tiny_configs.vqgan()
  c.losses.update(dict(entropy_weight_schedule='linear', entropy_weight_steps=10))
  with pytest.raises(ValueError, match='only the LFQ tokenizer'):
    validate_config(c, 'tokenizer')


# ----------------------------------------------------------------------------- annealing


def test_entropy_weight_constant():
  for step in (0, 1, 10_000):
    assert float(lfq.entropy_weight_at(step, 0.1)) == pytest.approx(0.1)


def test_entropy_weight_linear_matches_open_magvit2_formula():
  """Open-MAGVIT2 / official MAGVIT: w * (1 + ratio * max(0, 1 - step / steps)), ratio 3."""
  w, ratio, steps = 0.1, 3.0, 2000
  for step in (0, 1, 500, 1000, 1999, 2000, 2500, 10**6):
    expected = w * (1 + ratio * max(0.0, 1 - step / steps))
    got = float(lfq.entropy_weight_at(step, w, 'linear', 1 + ratio, steps))
    assert got == pytest.approx(expected, rel=1e-6), step
  assert float(lfq.entropy_weight_at(0, w, 'linear', 4.0, steps)) == pytest.approx(0.4)
  assert float(lfq.entropy_weight_at(1000, w, 'linear', 4.0, steps)) == pytest.approx(0.25)


def test_entropy_weight_cosine_and_warmup():
  w, steps = 0.2, 100
  cos = [
    float(lfq.entropy_weight_at(s, w, 'cosine', 3.0, steps)) for s in (0, 25, 50, 75, 100, 150)
  ]
  np.testing.assert_allclose(
    cos,
    [
      0.6,
      0.2 * (1 + 2 * (1 + math.cos(math.pi / 4)) / 2),
      0.4,
      0.2 * (1 + 2 * (1 - math.cos(math.pi / 4)) / 2),
      0.2,
      0.2,
    ],
    rtol=1e-6,
  )
  # start_factor < 1 is a warm-up: 0 at step 0, half at steps / 2, then w.
  warm = [float(lfq.entropy_weight_at(s, w, 'linear', 0.0, steps)) for s in (0, 50, 100, 200)]
  np.testing.assert_allclose(warm, [0.0, 0.1, 0.2, 0.2], rtol=1e-6, atol=1e-9)
  # Traced steps give the same values (the trainer passes state.step).
  traced = jax.jit(lambda s: lfq.entropy_weight_at(s, w, 'cosine', 3.0, steps))(jnp.int32(50))
  assert float(traced) == pytest.approx(0.4)


def test_entropy_weight_errors():
  with pytest.raises(ValueError, match='schedule'):
    lfq.entropy_weight_at(0, 0.1, 'exponential', 2.0, 10)
  with pytest.raises(ValueError, match='steps > 0'):
    lfq.entropy_weight_at(0, 0.1, 'linear', 2.0, 0)


# ----------------------------------------------------------------------------- GroupNorm before LFQ

TINY = dict(tiny_configs.TINY_MAGVIT2, entropy_chunk_size=16)


def test_group_norm_no_affine_normalises_per_frame_and_group():
  rng = np.random.RandomState(0)
  z = rng.randn(2, 3, 4, 4, 6).astype(np.float32) * np.array([1, 5, 0.1, 2, 3, 7], np.float32)
  z += np.array([3, -2, 0.5, 10, 0, -1], np.float32)
  out = np.asarray(magvit2_tokenizer.group_norm_no_affine(jnp.asarray(z), 2))
  grouped = out.reshape(2, 3, 4, 4, 2, 3)
  np.testing.assert_allclose(grouped.mean(axis=(2, 3, 5)), 0.0, atol=1e-5)
  np.testing.assert_allclose(grouped.var(axis=(2, 3, 5)), 1.0, rtol=1e-4)
  # Per frame: changing frame 2 leaves frames 0 and 1 unchanged (causal).
  z2 = z.copy()
  z2[:, 2] *= 100.0
  out2 = np.asarray(magvit2_tokenizer.group_norm_no_affine(jnp.asarray(z2), 2))
  np.testing.assert_array_equal(out2[:, :2], out[:, :2])


def test_pre_quant_norm_has_no_params_and_normalises_the_latent():
  x = jnp.asarray(np.random.RandomState(1).uniform(-1, 1, (2, 2, 8, 8, 3)), jnp.float32)
  tiny = dict(TINY, temporal_downsample=(False,))
  plain = magvit2_tokenizer.Magvit2Tokenizer(**tiny)
  normed = magvit2_tokenizer.Magvit2Tokenizer(**tiny, pre_quant_norm='group_norm_no_affine')
  rng = jax.random.PRNGKey(0)
  shapes = [jax.eval_shape(m.init, rng, x)['params'] for m in (plain, normed)]
  assert shapes[0] == shapes[1]  # The norm adds no parameters.

  def latents(m, v):
    z = m.encoder(m._as_video(v))  # pylint: disable=protected-access
    normalised = m._pre_quant(z)  # pylint: disable=protected-access
    return z, normalised, m.encode(v)[1]['tokens']

  params = jax.jit(plain.init)(rng, x)['params']
  run = jax.jit(lambda p: normed.apply({'params': p}, x, method=latents))
  z_plain, z_normed, tokens = map(np.asarray, run(params))
  assert z_normed.shape == (2, 2, 4, 4, 6)
  np.testing.assert_allclose(z_normed.mean(axis=(2, 3, 4)), 0.0, atol=1e-5)
  np.testing.assert_allclose(z_normed.var(axis=(2, 3, 4)), 1.0, rtol=1e-3)
  expected = (z_plain - z_plain.mean(axis=(2, 3, 4), keepdims=True)) / np.sqrt(
    z_plain.var(axis=(2, 3, 4), keepdims=True) + 1e-6
  )
  np.testing.assert_allclose(z_normed, expected, atol=1e-4)
  assert np.abs(z_plain - z_normed).max() > 0.1  # The raw latent is not normalised already.
  # The tokens are the signs of the normalised latent.
  np.testing.assert_array_equal(tokens, lfq.codes_to_tokens(jnp.asarray(z_normed)))


# ----------------------------------------------------------------------------- global batch entropy

D = 6


def _z(n: int, seed: int = 0) -> np.ndarray:
  """Tokens whose two halves have different code distributions (per-device != global)."""
  rng = np.random.RandomState(seed)
  z = rng.randn(n, D).astype(np.float32) * 0.3
  z[: n // 2, :3] += 0.4  # first half leans to +1 on bits 0-2
  z[n // 2 :, :3] -= 0.4  # second half to -1
  return z


def _quantizer(**kw) -> lfq.LookupFreeQuantizer:
  return lfq.LookupFreeQuantizer(num_bits=D, entropy_temperature=0.5, chunk_size=16, **kw)


def _two_device_mesh() -> Mesh:
  return Mesh(np.array(jax.devices()[:2]), ('d',))


def test_jit_on_a_sharded_batch_is_the_global_batch():
  """The trainer's way (jit over a batch sharded on the data axis) = 1 device on all of it."""
  z = _z(64)
  model = _quantizer()
  f = jax.jit(lambda v: model.apply({}, v)[1])
  one = f(jax.device_put(z, jax.devices()[0]))
  sharded = jax.device_put(z, NamedSharding(_two_device_mesh(), P('d')))
  assert len(sharded.sharding.device_set) == 2
  two = f(sharded)
  for k in ('entropy_loss', 'batch_entropy', 'per_token_entropy', 'usage', 'dead_bits'):
    np.testing.assert_allclose(two[k], one[k], atol=1e-6, err_msg=k)
  np.testing.assert_allclose(two['bit_usage'], one['bit_usage'], atol=1e-7)


def _shard_mapped(model, mesh):
  @functools.partial(jax.shard_map, mesh=mesh, in_specs=P('d'), out_specs=P())
  def f(v):
    aux = model.apply({}, v)[1]
    return {k: aux[k] for k in ('entropy_loss', 'batch_entropy', 'per_token_entropy', 'usage')}

  return f


def test_shard_map_with_axis_name_equals_one_device_on_the_concatenated_batch():
  z = _z(64)
  mesh = _two_device_mesh()
  one = jax.jit(lambda v: _quantizer().apply({}, v)[1])(z)
  two = jax.jit(_shard_mapped(_quantizer(axis_name='d'), mesh))(z)
  for k in ('entropy_loss', 'batch_entropy', 'per_token_entropy', 'usage'):
    np.testing.assert_allclose(two[k], one[k], atol=1e-6, err_msg=k)
  # Per-device batch entropy (each half alone) is really different: the test can fail.
  halves = [jax.jit(lambda v: _quantizer().apply({}, v)[1])(h) for h in (z[:32], z[32:])]
  per_device = np.mean([float(h['batch_entropy']) for h in halves])
  assert abs(per_device - float(one['batch_entropy'])) > 0.05

  # Gradients of the entropy loss w.r.t. z agree too.
  def loss_two(v):
    return _shard_mapped(_quantizer(axis_name='d'), mesh)(v)['entropy_loss']

  g_one = jax.jit(jax.grad(lambda v: _quantizer().apply({}, v)[1]['entropy_loss']))(z)
  g_two = jax.jit(jax.grad(loss_two))(z)
  np.testing.assert_allclose(g_two, g_one, atol=1e-6)


# ----------------------------------------------------------------------------- bit usage


def test_bit_usage_and_dead_bits_on_constructed_codes():
  n = 4000
  codes = -np.ones((n, 5), np.float32)
  codes[:, 0] = 1.0  # always +1: dead
  # bit 1 always -1: dead
  codes[: n // 2, 2] = 1.0  # half: alive
  codes[:2, 3] = 1.0  # 2 / 4000 = 5e-4 < 1e-3: dead
  codes[:8, 4] = 1.0  # 8 / 4000 = 2e-3: alive
  usage = np.asarray(lfq.bit_usage(jnp.asarray(codes.reshape(40, 100, 5))))
  np.testing.assert_allclose(usage, [1.0, 0.0, 0.5, 5e-4, 2e-3], rtol=1e-6)
  assert int(lfq.count_dead_bits(jnp.asarray(usage))) == 3
  assert int(lfq.count_dead_bits(jnp.asarray(usage), eps=1e-2)) == 4
  assert int(lfq.count_dead_bits(jnp.asarray([0.5, 0.999, 0.0015]))) == 0
  # The quantizer reports the same for z with these signs.
  z = codes * np.random.RandomState(0).uniform(0.1, 1.0, codes.shape).astype(np.float32)
  aux = jax.jit(lambda v: lfq.LookupFreeQuantizer(num_bits=5).apply({}, v)[1])(jnp.asarray(z))
  np.testing.assert_allclose(aux['bit_usage'], usage, rtol=1e-6)
  assert int(aux['dead_bits']) == 3
  # Eval computes it from the token histogram: same numbers.
  tokens = np.asarray(lfq.codes_to_tokens(jnp.asarray(codes)))
  hist = np.bincount(tokens, minlength=32)
  np.testing.assert_allclose(lfq.histogram_bit_usage(hist, 5), usage, rtol=1e-6)


# ----------------------------------------------------------------------------- train step


@pytest.mark.slow  # Compiles a tokenizer train step (~25 s alone on 2 CPU cores).
def test_tiny_train_step_with_the_recipe_and_annealing():
  """Two steps of the tiny LFQ tokenizer with the recipe defaults and a linear annealing, on
  a batch sharded over 2 devices: the step uses the step's weight, logs it and the bit usage."""
  config = tiny_configs.magvit2_tokenizer()
  config.losses.update(
    dict(entropy_weight_schedule='linear', entropy_weight_start_factor=4.0, entropy_weight_steps=4)
  )
  config.mesh.data = 2
  validate_config(config, 'tokenizer')
  assert config.model.entropy_temperature == 0.01
  model = tokenizers.build_tokenizer(config.model)
  tx, mesh, state, shardings = tiny_configs.init_train_state(
    config, model, (jnp.zeros((1, 16, 16, 3)),), num_devices=2
  )
  step = jax.jit(
    tok_trainer.make_train_step(model, tx, config.losses),
    in_shardings=(shardings, parallel.batch_sharding(mesh)),
  )
  images = np.random.RandomState(0).randint(0, 256, (4, 16, 16, 3)).astype(np.uint8)
  for s in range(2):
    state, m = step(state, {'image': images})
    m = jax.device_get(m)
    w = 0.1 * (1 + 3 * (1 - s / 4))
    assert float(m['entropy_weight']) == pytest.approx(w, rel=1e-6)
    assert all(np.isfinite(float(v)) for v in m.values())
    assert 0 <= int(m['dead_bits']) <= config.model.num_bits
    assert 0.0 <= float(m['bit_usage_min']) <= float(m['bit_usage_max']) <= 1.0
    # vq_loss = w(step) * entropy_loss + 0.25 * commitment.
    expected = w * float(m['entropy_loss']) + 0.25 * float(m['commitment_loss'])
    assert float(m['vq_loss']) == pytest.approx(expected, rel=1e-5, abs=1e-6)
  assert int(state.step) == 2

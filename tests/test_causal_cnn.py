"""Tests of the causal 3D CNN encoder/decoder (MAGVIT-v2): shapes, causality,
image-as-video, exact streaming, logical partitioning, parameter counts.

Parameters are drawn with numpy from the shapes `jax.eval_shape(module.init)`
gives: eager `truncated_normal` compiles once per kernel shape and would take
most of the test time on a small CPU.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magvit_jax.models.causal_cnn import CausalConv3D, CausalDecoder, CausalEncoder, StreamState

TINY = dict(
  filters=8,
  channel_multipliers=(1, 2, 2),
  num_res_blocks=1,
  temporal_downsample=(True, True),
  embedding_dim=4,
  num_groups=2,
)
PAPER = dict(
  filters=128,
  channel_multipliers=(1, 2, 2, 4),
  num_res_blocks=4,
  temporal_downsample=(False, True, True),
  embedding_dim=18,
  num_groups=32,
)
H = W = 16


def _random_params(module: nn.Module, x: jax.Array, seed: int):
  """Variables of `module.init(key, x)` filled with scaled numpy Gaussians."""
  shapes = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), x))
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if 'kernel' in name:
      fan_in = int(np.prod(s.shape[:-1]))
      return jnp.asarray(rng.normal(size=s.shape) / np.sqrt(fan_in), s.dtype)
    base = 1.0 if 'scale' in name else 0.0
    return jnp.asarray(base + 0.1 * rng.normal(size=s.shape), s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@pytest.fixture(scope='module')
def enc():
  model = CausalEncoder(**TINY)
  variables = _random_params(model, jnp.zeros((1, 1, H, W, 3)), 0)
  return model, variables, jax.jit(model.apply)


@pytest.fixture(scope='module')
def dec():
  model = CausalDecoder(**TINY)
  variables = _random_params(model, jnp.zeros((1, 1, H // 4, W // 4, 4)), 1)
  return model, variables, jax.jit(model.apply)


def _video(t: int, seed: int = 0, b: int = 1) -> jax.Array:
  return jax.random.uniform(jax.random.key(seed), (b, t, H, W, 3), minval=-1, maxval=1)


def _latents(t: int, seed: int = 0, b: int = 1) -> jax.Array:
  return jax.random.normal(jax.random.key(seed), (b, t, H // 4, W // 4, 4))


def test_causal_conv_temporal_arithmetic():
  # kernel 3, stride 2, causal pad 2: 1 + 4k -> 1 + 2k -> 1 + k; an image stays one frame.
  conv = CausalConv3D(2, (3, 3, 3), (2, 2, 2))
  x = jnp.ones((1, 9, 4, 4, 1))
  variables = jax.eval_shape(conv.init, jax.random.key(0), x)
  for t, expected in [(1, 1), (3, 2), (5, 3), (9, 5)]:
    (y, cache) = jax.eval_shape(conv.apply, variables, jnp.ones((1, t, 4, 4, 1)))
    assert y.shape == (1, expected, 2, 2, 2)
    assert cache.shape == (1, 1, 4, 4, 1)  # kt - stride = 1 frame carried
  with pytest.raises(ValueError, match='1 \\+ 2\\*m'):
    conv.apply(variables, jnp.ones((1, 4, 4, 4, 1)))


def test_shapes(enc, dec):
  enc_model, enc_vars, enc_apply = enc
  dec_model, dec_vars, dec_apply = dec
  assert enc_model.temporal_factor == 4 and enc_model.spatial_factor == 4
  for k in (0, 1, 2):
    z = enc_apply(enc_vars, _video(1 + 4 * k, b=2))
    assert z.shape == (2, 1 + k, H // 4, W // 4, 4) and z.dtype == jnp.float32
    y = dec_apply(dec_vars, z)
    assert y.shape == (2, 1 + 4 * k, H, W, 3) and y.dtype == jnp.float32
  with pytest.raises(ValueError, match='1 \\+ 4\\*k'):
    enc_model.apply(enc_vars, _video(4))
  with pytest.raises(ValueError, match='divisible'):
    enc_model.apply(enc_vars, jnp.zeros((1, 1, 10, 16, 3)))


def test_encoder_is_causal(enc):
  _, variables, apply = enc
  x = _video(9)
  x2 = x.at[:, 3].add(0.5)  # frame 3 is covered by latent frame 1 (frames 1..4)
  z, z2 = np.asarray(apply(variables, x)), np.asarray(apply(variables, x2))
  np.testing.assert_array_equal(z[:, 0], z2[:, 0])
  assert np.abs(z[:, 1] - z2[:, 1]).max() > 1e-4
  assert np.abs(z[:, 2] - z2[:, 2]).max() > 1e-4


def test_decoder_is_causal(dec):
  _, variables, apply = dec
  z = _latents(3)
  for j in (1, 2):
    z2 = z.at[:, j].add(0.5)
    y, y2 = np.asarray(apply(variables, z)), np.asarray(apply(variables, z2))
    start = 1 + 4 * (j - 1)  # latent j >= 1 covers frames 1+4(j-1) .. 4j
    np.testing.assert_array_equal(y[:, :start], y2[:, :start])
    assert np.abs(y[:, start] - y2[:, start]).max() > 1e-4
    assert np.abs(y[:, -1] - y2[:, -1]).max() > 1e-4


def test_image_is_a_one_frame_video(enc, dec):
  _, enc_vars, enc_apply = enc
  _, dec_vars, dec_apply = dec
  video = _video(9, b=2)
  z_img = enc_apply(enc_vars, video[:, :1])
  z_vid = enc_apply(enc_vars, video)
  z_other = enc_apply(enc_vars, jnp.concatenate([video[:, :1], _video(4, seed=7, b=2)], 1))
  assert z_img.shape == (2, 1, H // 4, W // 4, 4)
  # Exact up to float rounding: XLA sums a conv differently for different t.
  np.testing.assert_allclose(z_img[:, 0], z_vid[:, 0], atol=1e-6, rtol=1e-5)
  np.testing.assert_allclose(z_img[:, 0], z_other[:, 0], atol=1e-6, rtol=1e-5)
  # Decoding: the first frame of a decoded video only depends on latent frame 0.
  y_img = dec_apply(dec_vars, z_vid[:, :1])
  y_vid = dec_apply(dec_vars, z_vid)
  np.testing.assert_allclose(y_img[:, 0], y_vid[:, 0], atol=1e-6, rtol=1e-5)


def test_streaming_equals_full(enc, dec):
  enc_model, enc_vars, enc_apply = enc
  dec_model, dec_vars, dec_apply = dec
  video = _video(13, seed=3)
  z_full = enc_apply(enc_vars, video)  # [1, 4, 4, 4, 4]
  # How to stream: a zero state, then chunks through `encode_chunk` (jit retraces
  # once for the first chunk, whose state.started is False, and once for the rest).
  encode_chunk = jax.jit(functools.partial(enc_model.apply, method=enc_model.encode_chunk))
  state = enc_model.init_stream_state(1, H, W)
  assert isinstance(state, StreamState) and not state.started
  chunks = []
  for start, stop in [(0, 5), (5, 9), (9, 13)]:  # 1 + 4m frames, then 4m frames
    z, state = encode_chunk(enc_vars, state, video[:, start:stop])
    chunks.append(z)
  assert state.started and [c.shape[1] for c in chunks] == [2, 1, 1]
  np.testing.assert_allclose(jnp.concatenate(chunks, 1), z_full, atol=1e-5)
  with pytest.raises(ValueError, match='4\\*m'):
    enc_model.apply(enc_vars, state, video[:, :5], method=enc_model.encode_chunk)

  y_full = dec_apply(dec_vars, z_full)  # [1, 13, 16, 16, 3]
  decode_chunk = jax.jit(functools.partial(dec_model.apply, method=dec_model.decode_chunk))
  state = dec_model.init_stream_state(1, H, W)
  frames = []
  for start, stop in [(0, 2), (2, 3), (3, 4)]:  # 1 + m latent frames, then m
    y, state = decode_chunk(dec_vars, state, z_full[:, start:stop])
    frames.append(y)
  assert [f.shape[1] for f in frames] == [5, 4, 4]
  np.testing.assert_allclose(jnp.concatenate(frames, 1), y_full, atol=1e-5)


def _assert_partitioned(boxed_params):
  leaves = jax.tree_util.tree_leaves(
    boxed_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
  )
  assert len(leaves) > 10
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), type(leaf)
  specs = nn.get_partition_spec(boxed_params)
  values = nn.unbox(boxed_params)
  flat_specs = jax.tree_util.tree_leaves_with_path(
    specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
  )
  flat_vals = dict(jax.tree_util.tree_leaves_with_path(values))
  assert len(flat_specs) == len(flat_vals)
  for path, spec in flat_specs:
    assert len(spec) == flat_vals[path].ndim, (path, spec, flat_vals[path].shape)
    assert all(isinstance(name, str) for name in spec), (path, spec)


def test_params_are_logically_partitioned():
  from magvit_jax.config_schema import LOGICAL_AXIS_RULES

  known = {rule[0] for rule in LOGICAL_AXIS_RULES}
  for model, x in [
    (CausalEncoder(**TINY), jnp.zeros((1, 1, H, W, 3))),
    (CausalDecoder(**TINY), jnp.zeros((1, 1, H // 4, W // 4, 4))),
  ]:
    boxed = jax.eval_shape(model.init, jax.random.key(0), x)['params']
    _assert_partitioned(boxed)
    specs = jax.tree_util.tree_leaves(
      nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
    )
    assert {n for spec in specs for n in spec} <= known


def test_parameter_counts_and_paper_shapes():
  key = jax.random.key(0)
  tiny_e = jax.eval_shape(CausalEncoder(**TINY).init, key, jnp.zeros((1, 1, H, W, 3)))
  tiny_d = jax.eval_shape(CausalDecoder(**TINY).init, key, jnp.zeros((1, 1, 4, 4, 4)))
  encoder, decoder = CausalEncoder(**PAPER), CausalDecoder(**PAPER)
  video = jax.ShapeDtypeStruct((1, 17, 128, 128, 3), jnp.float32)
  z, enc_vars = jax.eval_shape(lambda x: encoder.init_with_output(key, x), video)
  assert z.shape == (1, 5, 16, 16, 18)
  y, dec_vars = jax.eval_shape(lambda z: decoder.init_with_output(key, z), z)
  assert y.shape == (1, 17, 128, 128, 3)
  counts = {
    'tiny encoder': _count(nn.unbox(tiny_e)),
    'tiny decoder': _count(nn.unbox(tiny_d)),
    'paper encoder': _count(nn.unbox(enc_vars)),
    'paper decoder': _count(nn.unbox(dec_vars)),
  }
  print('\nparameter counts:', {k: f'{v:,}' for k, v in counts.items()})
  assert counts['tiny encoder'] < 100_000 < counts['paper encoder']
  state = encoder.init_stream_state(1, 128, 128)
  assert state.caches['conv_in'].shape == (1, 2, 128, 128, 3)

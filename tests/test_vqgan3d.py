"""Tests for the MAGVIT 3D-VQ tokenizer (`VQGAN3D`) and 2D -> 3D inflation."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magvit_jax.models.transformer import count_params
from magvit_jax.models.vqgan import VQGAN
from magvit_jax.models.vqgan3d import VQGAN3D, inflate_kernel, inflate_params

TINY = dict(
  filters=16,
  channel_multipliers=(1, 2, 2),
  num_res_blocks=1,
  embedding_dim=8,
  codebook_size=32,
  num_groups=8,
)
B, T, H, W = 2, 8, 16, 16


def _numpy_params(shapes, seed=0):
  """Random values (fan-in scaled kernels, non-trivial norms / biases) for an eval_shape tree."""
  rng = np.random.default_rng(seed)

  def make(path, x):
    name = jax.tree_util.keystr(path)
    if name.endswith("['scale']"):
      return jnp.asarray(1.0 + 0.2 * rng.standard_normal(x.shape), jnp.float32)
    if name.endswith("['bias']"):
      return jnp.asarray(0.1 * rng.standard_normal(x.shape), jnp.float32)
    fan_in = int(np.prod(x.shape[:-1])) if name.endswith("['kernel']") else x.shape[-1]
    return jnp.asarray(rng.standard_normal(x.shape) / np.sqrt(fan_in), jnp.float32)

  return jax.tree_util.tree_map_with_path(make, nn.unbox(shapes))


def _template(model, frames=T):
  x = jax.ShapeDtypeStruct((1, frames, H, W, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), x)


@functools.lru_cache(maxsize=None)
def _jitted(model):
  return jax.jit(model.apply)


@pytest.fixture(scope='module')
def model_2d():
  model = VQGAN(**TINY)
  x = jax.ShapeDtypeStruct((1, H, W, 3), jnp.float32)
  variables = _numpy_params(jax.eval_shape(model.init, jax.random.PRNGKey(0), x), seed=1)
  images = jax.random.uniform(jax.random.PRNGKey(2), (B, H, W, 3), minval=-1, maxval=1)
  recon, aux = _jitted(model)(variables, images)
  # Tokens must be informative for the token comparisons below to mean anything.
  assert len(np.unique(np.asarray(aux['tokens']))) > 3
  return model, variables, images, recon, aux


# ----------------------------------------------------------------------------- shapes


@pytest.mark.slow  # over 6 s on 2 cores; the full suite runs it
def test_shapes_and_roundtrip(model_2d):
  _, variables_2d, _, _, _ = model_2d
  model = VQGAN3D(**TINY, temporal_downsample=(True, False))
  assert model.downsample_factor == 4 and model.temporal_downsample_factor == 2
  variables = inflate_params(variables_2d, _template(model))
  videos = jax.random.uniform(jax.random.PRNGKey(3), (B, T, H, W, 3), minval=-1, maxval=1)

  @jax.jit
  def run(variables, videos):
    recon, aux = model.apply(variables, videos)
    quantized, aux_e = model.apply(variables, videos, method=VQGAN3D.encode)
    decoded = model.apply(variables, quantized, method=VQGAN3D.decode)
    from_tokens = model.apply(variables, aux['tokens'], method=VQGAN3D.decode_tokens)
    return recon, aux, quantized, aux_e, decoded, from_tokens

  recon, aux, quantized, aux_e, decoded, from_tokens = run(variables, videos)
  assert recon.shape == (B, T, H, W, 3) and recon.dtype == jnp.float32
  assert aux['tokens'].shape == (B, T // 2, H // 4, W // 4)
  assert aux['tokens'].dtype == jnp.int32
  assert np.isfinite(np.asarray(recon)).all()
  assert quantized.shape == (B, T // 2, H // 4, W // 4, 8)
  np.testing.assert_array_equal(np.asarray(aux_e['tokens']), np.asarray(aux['tokens']))
  np.testing.assert_allclose(np.asarray(decoded), np.asarray(recon), atol=1e-5)
  codebook = np.asarray(nn.unbox(variables['params']['quantizer']['codebook']))
  np.testing.assert_allclose(np.asarray(quantized), codebook[np.asarray(aux['tokens'])], atol=1e-6)
  np.testing.assert_allclose(np.asarray(from_tokens), np.asarray(recon), atol=1e-5)


@pytest.mark.slow  # over 4 s on 2 cores; the full suite runs it
def test_temporal_and_paper_shapes_via_eval_shape():
  model = VQGAN3D(filters=16, num_groups=8, codebook_size=32, embedding_dim=8)  # (1, 2, 2, 4)
  assert model.temporal_downsample_factor == 4 and model.downsample_factor == 8
  variables = _template(model, frames=4)
  recon, aux = jax.eval_shape(
    model.apply, variables, jax.ShapeDtypeStruct((2, 16, 32, 32, 3), jnp.float32)
  )
  assert aux['tokens'].shape == (2, 4, 4, 4) and recon.shape == (2, 16, 32, 32, 3)
  # The paper's 3D-VQ-B: 16x128x128 -> 4x16x16 tokens.
  paper = VQGAN3D()
  recon, aux = jax.eval_shape(
    paper.apply, _template(paper, frames=4), jax.ShapeDtypeStruct((1, 16, 128, 128, 3), jnp.float32)
  )
  assert aux['tokens'].shape == (1, 4, 16, 16) and aux['tokens'].dtype == jnp.int32
  assert recon.shape == (1, 16, 128, 128, 3)


def _frames_seen_by(model, variables, video_shape, names):
  """Number of frames entering each named submodule (found by eval_shape)."""
  frames = {}

  def interceptor(next_fun, args, kwargs, context):
    if context.module.name in names and context.method_name == '__call__':
      frames[(context.module.parent.name, context.module.name)] = args[0].shape[1]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct(video_shape, jnp.float32))
  return frames


def test_temporal_resampling_per_level():
  """Encoder halves time after the levels flagged in temporal_downsample; decoder mirrors it."""
  model = VQGAN3D(
    filters=16,
    num_groups=8,
    codebook_size=32,
    embedding_dim=8,
    temporal_downsample=(True, True, False),
  )
  names = (
    'down_1_res_0',
    'down_2_res_0',
    'down_3_res_0',
    'mid_res_0',
    'up_3_conv',
    'up_2_conv',
    'up_1_conv',
    'conv_out',
  )
  frames = _frames_seen_by(model, _template(model, frames=4), (1, 16, 32, 32, 3), names)
  assert frames == {
    ('encoder', 'down_1_res_0'): 8,
    ('encoder', 'down_2_res_0'): 4,
    ('encoder', 'down_3_res_0'): 4,
    ('encoder', 'mid_res_0'): 4,
    ('encoder', 'conv_out'): 4,
    ('decoder', 'mid_res_0'): 4,
    ('decoder', 'up_3_conv'): 4,
    ('decoder', 'up_2_conv'): 8,
    ('decoder', 'up_1_conv'): 16,
    ('decoder', 'conv_out'): 16,
  }, frames
  # Temporal downsampling only at the last level: (False, True).
  model = VQGAN3D(**TINY, temporal_downsample=(False, True))
  frames = _frames_seen_by(model, _template(model), (1, 8, 16, 16, 3), names)
  assert frames[('encoder', 'down_1_res_0')] == 8 and frames[('encoder', 'down_2_res_0')] == 4
  assert frames[('decoder', 'up_2_conv')] == 8 and frames[('decoder', 'up_1_conv')] == 8


def test_module_names_mirror_2d_vqgan():
  def flat(tree):
    return {
      jax.tree_util.keystr(p): x.shape
      for p, x in jax.tree_util.tree_leaves_with_path(nn.unbox(tree))
    }

  shapes_2d = flat(
    jax.eval_shape(
      VQGAN(**TINY).init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, H, W, 3), jnp.float32)
    )
  )
  boxed_3d = _template(VQGAN3D(**TINY, temporal_downsample=(True, False)))
  shapes_3d = flat(boxed_3d)
  assert set(shapes_2d) == set(shapes_3d)
  for name, s3 in shapes_3d.items():
    s2 = shapes_2d[name]
    if name.endswith("['kernel']"):
      k = (
        1 if ("['shortcut']" in name or name.startswith("['params']['encoder']['conv_out']")) else 3
      )
      assert s3 == (k,) + s2, name
    else:
      assert s3 == s2, name
  kernel = boxed_3d['params']['encoder']['down_1_res_0']['conv_0']['kernel']
  assert isinstance(kernel, nn.LogicallyPartitioned)
  assert kernel.names == ('conv_0', 'conv_1', 'conv_2', 'conv_in', 'conv_out')


# ----------------------------------------------------------------------------- inflation


def test_inflate_kernel_methods():
  k2 = jax.random.normal(jax.random.PRNGKey(0), (3, 3, 4, 5))
  central = np.asarray(inflate_kernel(k2, 3, 'central'))
  np.testing.assert_array_equal(central[1], np.asarray(k2))
  assert not central[0].any() and not central[2].any()
  average = np.asarray(inflate_kernel(k2, 3, 'average'))
  for i in range(3):
    np.testing.assert_allclose(average[i], np.asarray(k2) / 3, rtol=1e-6)
  assert inflate_kernel(k2[:1, :1], 1, 'average').shape == (1, 1, 1, 4, 5)


def test_inflate_params_boxing(model_2d):
  _, variables_2d, _, _, _ = model_2d
  model = VQGAN3D(**TINY, temporal_downsample=(True, False))
  boxed = _template(model)
  boxed_2d = jax.tree_util.tree_map(
    lambda b, v: b.replace_boxed(v),
    jax.eval_shape(
      VQGAN(**TINY).init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, H, W, 3), jnp.float32)
    ),
    variables_2d,
    is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned),
  )
  out_boxed = inflate_params(boxed_2d, boxed)  # boxed 2D in, boxed 3D template
  out_plain = inflate_params(variables_2d, nn.unbox(boxed))  # plain in, plain template
  conv = out_boxed['params']['decoder']['up_1_conv']
  assert isinstance(conv['kernel'], nn.LogicallyPartitioned)
  assert conv['kernel'].names == ('conv_0', 'conv_1', 'conv_2', 'conv_in', 'conv_out')
  assert not isinstance(
    out_plain['params']['decoder']['up_1_conv']['kernel'], nn.LogicallyPartitioned
  )
  for a, b in zip(
    jax.tree_util.tree_leaves(nn.unbox(out_boxed)), jax.tree_util.tree_leaves(out_plain)
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(
    np.asarray(out_plain['params']['quantizer']['codebook']),
    np.asarray(variables_2d['params']['quantizer']['codebook']),
  )
  np.testing.assert_array_equal(
    np.asarray(out_plain['params']['encoder']['mid_res_0']['norm_1']['scale']),
    np.asarray(variables_2d['params']['encoder']['mid_res_0']['norm_1']['scale']),
  )


@pytest.mark.parametrize('method', ['central', 'average'])
def test_inflated_static_video_matches_2d(model_2d, method):
  """A static video is reconstructed/tokenized exactly like the 2D model does its image."""
  _, variables_2d, images, recon_2d, aux_2d = model_2d
  model = VQGAN3D(**TINY, temporal_downsample=(True, False), temporal_padding='edge')
  variables = inflate_params(variables_2d, _template(model), method)
  videos = jnp.repeat(images[:, None], T, axis=1)
  recon, aux = _jitted(model)(variables, videos)
  assert aux['tokens'].shape == (B, T // 2, H // 4, W // 4)
  for t in range(T // 2):
    np.testing.assert_array_equal(np.asarray(aux['tokens'][:, t]), np.asarray(aux_2d['tokens']))
  for t in range(T):
    np.testing.assert_allclose(np.asarray(recon[:, t]), np.asarray(recon_2d), atol=1e-4)
  np.testing.assert_allclose(float(aux['loss']), float(aux_2d['loss']), rtol=1e-4)


def test_constant_padding_static_video_central_exact_average_not(model_2d):
  """Zero temporal padding: central still exact (edge taps are zero); average breaks at the ends."""
  _, variables_2d, images, recon_2d, _ = model_2d
  model = VQGAN3D(**TINY, temporal_downsample=(True, False), temporal_padding='constant')
  template = _template(model)
  videos = jnp.repeat(images[:, None], T, axis=1)
  recon_c, _ = _jitted(model)(inflate_params(variables_2d, template, 'central'), videos)
  recon_a, _ = _jitted(model)(inflate_params(variables_2d, template, 'average'), videos)
  expected = np.broadcast_to(np.asarray(recon_2d)[:, None], recon_c.shape)
  np.testing.assert_allclose(np.asarray(recon_c), expected, atol=1e-4)
  assert np.abs(np.asarray(recon_a) - expected).max() > 1e-2


def _frames_2d_with_clip_group_norm(model_2d, variables_2d, videos):
  """The 2D model on every frame, with GroupNorm statistics pooled over each clip's frames.

  A 3D GroupNorm normalises over (T, H, W), so even without temporal mixing in
  the convs the frames of a clip share normalisation statistics; this is the
  exact per-frame 2D counterpart of a centrally inflated VQGAN3D without
  temporal downsampling.
  """
  b, t = videos.shape[:2]

  def interceptor(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.GroupNorm) and context.method_name == '__call__':
      x = args[0]  # [b * t, h, w, c] -> [b, t * h, w, c]: stats over (t, h, w) per clip.
      y = next_fun(x.reshape((b, t * x.shape[1]) + x.shape[2:]), *args[1:], **kwargs)
      return y.reshape(x.shape)
    return next_fun(*args, **kwargs)

  def run(variables, frames):
    with nn.intercept_methods(interceptor):
      return model_2d.apply(variables, frames)

  recon, aux = jax.jit(run)(variables_2d, videos.reshape((b * t,) + videos.shape[2:]))
  return (
    np.asarray(recon).reshape(videos.shape),
    np.asarray(aux['tokens']).reshape((b, t) + aux['tokens'].shape[1:]),
  )


@pytest.mark.slow  # over 6 s on 2 cores; the full suite runs it
def test_central_inflation_is_framewise_without_temporal_downsampling(model_2d):
  """Non-static video, no temporal downsampling: central == 2D per frame, average != ."""
  model_2, variables_2d, _, _, _ = model_2d
  model = VQGAN3D(**TINY, temporal_downsample=(False, False))
  assert model.temporal_downsample_factor == 1
  template = _template(model)
  videos = jax.random.uniform(jax.random.PRNGKey(4), (B, T, H, W, 3), minval=-1, maxval=1)
  expected, expected_tokens = _frames_2d_with_clip_group_norm(model_2, variables_2d, videos)
  recon_c, aux_c = _jitted(model)(inflate_params(variables_2d, template, 'central'), videos)
  assert aux_c['tokens'].shape == (B, T, H // 4, W // 4)
  np.testing.assert_allclose(np.asarray(recon_c), expected, atol=1e-4)
  np.testing.assert_array_equal(np.asarray(aux_c['tokens']), expected_tokens)
  recon_a, _ = _jitted(model)(inflate_params(variables_2d, template, 'average'), videos)
  assert np.abs(np.asarray(recon_a) - expected).max() > 1e-2
  # And the frames really are coupled only through the shared GroupNorm statistics:
  # the plain per-frame 2D model (per-frame statistics) differs.
  plain, _ = _jitted(model_2)(variables_2d, videos.reshape((B * T, H, W, 3)))
  assert np.abs(np.asarray(plain).reshape(videos.shape) - expected).max() > 1e-3


# ----------------------------------------------------------------------------- errors


def test_input_and_config_errors(model_2d):
  _, variables_2d, _, _, _ = model_2d
  model = VQGAN3D(**TINY, temporal_downsample=(True, False))
  variables = inflate_params(variables_2d, _template(model))
  shape_msg = r'\[batch, frames, height, width, 3\]'
  with pytest.raises(ValueError, match=shape_msg):
    model.apply(variables, jnp.zeros((1, H, W, 3)))
  with pytest.raises(ValueError, match=shape_msg):
    model.apply(variables, jnp.zeros((1, T, H, W, 4)), method=VQGAN3D.encode)
  with pytest.raises(ValueError, match=r'frames 7 must be divisible .* temporal .* 2'):
    model.apply(variables, jnp.zeros((1, 7, H, W, 3)))
  with pytest.raises(ValueError, match=r'height/width .* divisible .* 4'):
    model.apply(variables, jnp.zeros((1, T, 18, W, 3)))
  with pytest.raises(ValueError, match=r'tokens must be \[batch, frames, height, width\]'):
    model.apply(variables, jnp.zeros((1, 4, 4), jnp.int32), method=VQGAN3D.decode_tokens)
  with pytest.raises(ValueError, match='temporal_downsample'):
    _template(VQGAN3D(**TINY, temporal_downsample=(True, True, False)))
  with pytest.raises(ValueError, match='temporal_padding'):
    _template(VQGAN3D(**TINY, temporal_downsample=(True, False), temporal_padding='reflect'))


def test_inflation_errors(model_2d):
  _, variables_2d, _, _, _ = model_2d
  template = _template(VQGAN3D(**TINY, temporal_downsample=(True, False)))
  with pytest.raises(ValueError, match='unknown inflation method'):
    inflate_params(variables_2d, template, 'middle')
  wide = VQGAN(**dict(TINY, filters=32))
  wide_vars = _numpy_params(
    jax.eval_shape(
      wide.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, H, W, 3), jnp.float32)
    )
  )
  with pytest.raises(
    ValueError, match=r'parameter params/(en|de)coder/conv_in/\w+: .*\(\d+[,)].*\(\d+'
  ) as e:
    inflate_params(wide_vars, template)
  assert 'expected' in str(e.value)
  deeper = VQGAN(**dict(TINY, num_res_blocks=2))
  deeper_vars = _numpy_params(
    jax.eval_shape(
      deeper.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, H, W, 3), jnp.float32)
    )
  )
  with pytest.raises(ValueError, match=r'absent from the 3D template.*res_1'):
    inflate_params(deeper_vars, template)
  shallow_template = _template(
    VQGAN3D(**dict(TINY, num_res_blocks=2), temporal_downsample=(True, False))
  )
  with pytest.raises(ValueError, match=r'parameter params/decoder/mid_res_1/\S+ .* missing'):
    inflate_params(variables_2d, shallow_template)


# ----------------------------------------------------------------------------- sizes


def _counts(filters):
  model = VQGAN3D(
    filters=filters,
    channel_multipliers=(1, 2, 2, 4),
    num_res_blocks=2,
    embedding_dim=256,
    codebook_size=1024,
  )
  params = jax.eval_shape(
    model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 4, 8, 8, 3), jnp.float32)
  )['params']
  return {k: count_params(params[k]) for k in ('encoder', 'decoder', 'quantizer')}


def test_parameter_counts_b_and_l():
  counts = {}
  for name, filters in (('B', 64), ('L', 128)):
    c = _counts(filters)
    c['total'] = sum(c.values())
    counts[name] = c
    print(
      f'3D-VQ-{name}: encoder {c["encoder"] / 1e6:.3f}M, decoder {c["decoder"] / 1e6:.3f}M, '
      f'codebook {c["quantizer"] / 1e6:.3f}M, total {c["total"] / 1e6:.3f}M'
    )
    assert all(v > 0 for v in c.values())
    assert c['quantizer'] == 1024 * 256
  assert counts['L']['total'] > 3.5 * counts['B']['total']

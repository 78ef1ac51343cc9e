"""GAN losses, regularizers, StyleGAN discriminators and the VGG perceptual loss."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magvit_jax.losses import gan
from magvit_jax.losses import perceptual
from magvit_jax.losses import convert_vgg16
from magvit_jax.models import discriminator as disc_lib


# ---------------------------------------------------------------------------
# gan.py


def test_hinge_values():
  real = jnp.array([2.0, 0.5, -1.0])
  fake = jnp.array([-2.0, 0.0, 1.0])
  # relu(1 - real) = [0, .5, 2] -> mean 5/6; relu(1 + fake) = [0, 1, 2] -> mean 1.
  np.testing.assert_allclose(gan.hinge_d_loss(real, fake), 5 / 6 + 1, rtol=1e-6)
  np.testing.assert_allclose(gan.hinge_g_loss(fake), 1 / 3, rtol=1e-6)


def test_non_saturating_values():
  real = jnp.array([0.0, np.log(3.0)])
  fake = jnp.array([0.0, -np.log(3.0)])
  # softplus(0) = log 2; softplus(-log 3) = log(4/3).
  expected_d = (np.log(2) + np.log(4 / 3)) / 2 * 2
  np.testing.assert_allclose(gan.non_saturating_d_loss(real, fake), expected_d, rtol=1e-6)
  # g: softplus(-fake) = [log 2, softplus(log 3) = log 4].
  np.testing.assert_allclose(
    gan.non_saturating_g_loss(fake), (np.log(2) + np.log(4)) / 2, rtol=1e-6
  )
  d, g = gan.get_gan_losses('non_saturating')
  assert d is gan.non_saturating_d_loss and g is gan.non_saturating_g_loss
  with pytest.raises(ValueError, match='hinge'):
    gan.get_gan_losses('wasserstein')


def test_lecam_value_and_ema():
  real = jnp.array([1.0, 3.0])
  fake = jnp.array([-1.0, 0.5])
  ema_real, ema_fake = jnp.float32(1.0), jnp.float32(0.0)
  # relu(real - 0)^2 = [1, 9] -> 5; relu(1 - fake)^2 = [4, .25] -> 2.125.
  np.testing.assert_allclose(gan.lecam_loss(real, fake, ema_real, ema_fake), 7.125, rtol=1e-6)
  new_r, new_f = gan.update_lecam_ema(ema_real, ema_fake, real, fake, decay=0.9)
  np.testing.assert_allclose(new_r, 0.9 * 1.0 + 0.1 * 2.0, rtol=1e-6)
  np.testing.assert_allclose(new_f, 0.9 * 0.0 + 0.1 * (-0.25), rtol=1e-6)
  # No gradient into the EMA values.
  g = jax.grad(lambda e: gan.lecam_loss(real, fake, e, ema_fake))(ema_real)
  assert g == 0.0


def test_r1_linear_discriminator_equals_weight_norm():
  w = jnp.array([[1.0, -2.0], [0.5, 3.0]])  # D(x) = <w, x> per example.
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 2))
  disc = lambda params: lambda inp: jnp.sum(inp * params, axis=(1, 2))
  penalty = gan.r1_penalty(disc(w), x)
  np.testing.assert_allclose(penalty, jnp.sum(w**2), rtol=1e-6)
  # Differentiable w.r.t. the discriminator params: d||w||^2/dw = 2w.
  np.testing.assert_allclose(jax.grad(lambda p: gan.r1_penalty(disc(p), x))(w), 2 * w, rtol=1e-6)


def test_adaptive_generator_weight():
  nll = {'kernel': jnp.array([3.0, 4.0])}  # norm 5
  g = {'kernel': jnp.array([0.0, 2.0])}  # norm 2
  np.testing.assert_allclose(gan.adaptive_generator_weight(nll, g), 5 / (2 + 1e-4), rtol=1e-6)
  np.testing.assert_allclose(
    gan.adaptive_generator_weight(nll, {'kernel': jnp.zeros(2)}, max_weight=10.0), 10.0
  )
  # Pytree with two leaves: global norm.
  w = gan.adaptive_generator_weight({'a': jnp.ones(4), 'b': jnp.ones(5)}, jnp.array([3.0]))
  np.testing.assert_allclose(w, 3.0 / (3.0 + 1e-4), rtol=1e-6)
  assert jax.grad(lambda s: gan.adaptive_generator_weight(s * nll['kernel'], g['kernel']))(1.0) == 0


def test_generator_gan_weight():
  assert float(gan.generator_gan_weight(0, 10, 0.1)) == 0.0
  assert float(gan.generator_gan_weight(9, 10, 0.1)) == 0.0
  np.testing.assert_allclose(gan.generator_gan_weight(10, 10, 0.1), 0.1)
  jitted = jax.jit(lambda s: gan.generator_gan_weight(s, 5, 0.5))
  assert float(jitted(jnp.int32(4))) == 0.0 and float(jitted(jnp.int32(7))) == 0.5


# ---------------------------------------------------------------------------
# discriminator.py


def _init(model, x):
  """Abstract init (params tree with logical names, no compile) + He-normal numpy values.

  `model.init` itself would spend ~15 s of a loaded CPU compiling one truncated-normal
  sampler per parameter shape; the forward/backward checks only need sane values.
  """
  boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  rng = np.random.default_rng(0)

  def value(leaf):
    shape = leaf.shape
    if len(shape) == 1:
      return jnp.asarray(rng.standard_normal(shape, np.float32) * 0.1)
    return jnp.asarray(rng.standard_normal(shape, np.float32) * np.sqrt(1.0 / np.prod(shape[:-1])))

  return boxed, jax.tree_util.tree_map(value, nn.unbox(boxed)['params'])


@pytest.fixture(scope='module')
def disc2d():
  model = disc_lib.StyleGANDiscriminator2D(filters=8)
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 3), minval=-1, maxval=1)
  return (model, *_init(model, x), x)


@pytest.fixture(scope='module')
def disc3d():
  model = disc_lib.StyleGANDiscriminator3D(filters=4)
  x = jax.random.uniform(jax.random.PRNGKey(2), (2, 4, 16, 16, 3), minval=-1, maxval=1)
  return (model, *_init(model, x), x)


@pytest.mark.slow  # over 4 s on 2 cores; the full suite runs it
@pytest.mark.parametrize('which', ['disc2d', 'disc3d'])
def test_discriminator_shapes_and_gradients(which, request):
  model, _, params, x = request.getfixturevalue(which)
  assert model.channel_multipliers == (2, 4, 4, 4, 4)

  @jax.jit
  def logits_and_grads(p, inp):
    def loss(p, inp):
      out = model.apply({'params': p}, inp)
      return jnp.sum(out**2), out

    return jax.grad(loss, argnums=(0, 1), has_aux=True)(p, inp)

  (gp, gx), logits = logits_and_grads(params, x)
  assert logits.shape == (2,) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  assert gx.shape == x.shape and np.all(np.isfinite(gx)) and np.any(gx != 0)
  leaves = jax.tree_util.tree_leaves(gp)
  assert all(np.all(np.isfinite(l)) for l in leaves)
  assert any(np.any(l != 0) for l in leaves)
  # Every block's conv_1 kernel gets a gradient.
  for i in range(5):
    assert np.any(gp[f'block_{i}']['conv_1']['kernel'] != 0), i


def test_discriminator_params_logically_partitioned(disc2d, disc3d):
  for _, boxed, _, _ in (disc2d, disc3d):
    leaves = jax.tree_util.tree_leaves(
      boxed['params'], is_leaf=lambda l: isinstance(l, nn.LogicallyPartitioned)
    )
    assert len(leaves) > 10
    for leaf in leaves:
      assert isinstance(leaf, nn.LogicallyPartitioned), type(leaf)
      assert len(leaf.names) == leaf.value.ndim
      assert set(leaf.names) <= {'conv_0', 'conv_1', 'conv_2', 'conv_in', 'conv_out', 'norm'}
  p3 = disc3d[1]['params']
  assert p3['block_0']['conv_0']['kernel'].names == (
    'conv_0',
    'conv_1',
    'conv_2',
    'conv_in',
    'conv_out',
  )
  assert p3['dense_out']['kernel'].names == ('conv_in', 'conv_out')


def test_discriminator_input_errors(disc2d):
  model, _, params, _ = disc2d
  with pytest.raises(ValueError, match='images'):
    model.apply({'params': params}, jnp.zeros((2, 4, 32, 32, 3)))
  with pytest.raises(ValueError, match='temporal_downsample'):
    bad = disc_lib.StyleGANDiscriminator3D(filters=4, temporal_downsample=(True, False))
    jax.eval_shape(bad.init, jax.random.PRNGKey(0), jnp.zeros((2, 4, 16, 16, 3)))
  # Space-only downsampling keeps the 4 frames through every block.
  m = disc_lib.StyleGANDiscriminator3D(filters=4, temporal_downsample=False)
  shapes = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((2, 4, 16, 16, 3)))
  # dense_0 input = T * H * W * C after 5 space-only blocks: 4 * 1 * 1 * 16.
  assert nn.unbox(shapes)['params']['dense_0']['kernel'].shape == (4 * 16, 16)


@pytest.mark.slow  # over 4 s on 2 cores; the full suite runs it
def test_minibatch_stddev():
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 3, 3, 5))
  y = disc_lib.minibatch_stddev(x, group_size=4)
  assert y.shape == (8, 3, 3, 6)
  np.testing.assert_array_equal(y[..., :5], x)
  assert np.all(np.asarray(y[..., 5]) > 0.1)
  # Example n is in group n % 2: the stat is shared by examples 0, 2, 4, 6.
  np.testing.assert_allclose(y[0, 0, 0, 5], y[6, 2, 1, 5], rtol=1e-6)
  same = jnp.broadcast_to(x[:1], (4, 3, 3, 5))
  z = disc_lib.minibatch_stddev(same, group_size=4)
  np.testing.assert_allclose(z[..., 5], 0.0, atol=1e-3)  # sqrt(eps) = 1e-4
  # Batch not divisible by 4 -> largest divisor (3 -> groups of 3).
  assert disc_lib.minibatch_stddev(x[:3], group_size=4).shape == (3, 3, 3, 6)


def test_blur_pool():
  x = jnp.ones((1, 8, 8, 2))
  y = disc_lib.blur_pool(x, (True, True))
  assert y.shape == (1, 4, 4, 2)
  np.testing.assert_allclose(y[0, 1:3, 1:3], 1.0, rtol=1e-6)  # DC gain 1 inside
  assert disc_lib.blur_pool(jnp.ones((1, 3, 5, 6, 2)), (True, False, True)).shape == (1, 2, 5, 3, 2)
  assert disc_lib.blur_pool(x, (False, False)) is x


# ---------------------------------------------------------------------------
# perceptual.py / convert_vgg16.py


def _random_vgg_npz(path, rng, lin=False, **overrides):
  arrays = {}
  for key, shape in perceptual.expected_shapes().items():
    if key.endswith('kernel'):
      fan_in = shape[0] * shape[1] * shape[2]
      arrays[key] = rng.standard_normal(shape, dtype=np.float32) * np.sqrt(2.0 / fan_in)
    else:
      arrays[key] = rng.standard_normal(shape, dtype=np.float32) * 0.01
  if lin:
    for k, c in enumerate(perceptual.STAGE_CHANNELS):
      arrays[f'lin{k}'] = rng.uniform(0, 1, c).astype(np.float32)
  arrays.update(overrides)
  np.savez(path, **arrays)
  return arrays


@pytest.fixture(scope='module')
def vgg_npz(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('vgg') / 'vgg16.npz')
  _random_vgg_npz(path, np.random.default_rng(0))
  return path


def test_vgg_features_shapes(vgg_npz):
  params = perceptual.load_vgg16_weights(vgg_npz)
  feats = jax.eval_shape(
    perceptual.VGG16Features().apply, {'params': params['vgg']}, jnp.zeros((1, 32, 32, 3))
  )
  assert [f.shape for f in feats] == [
    (1, 32, 32, 64),
    (1, 16, 16, 128),
    (1, 8, 8, 256),
    (1, 4, 4, 512),
    (1, 2, 2, 512),
  ]


@pytest.mark.slow  # over 8 s on 2 cores; the full suite runs it
def test_perceptual_loss_properties(vgg_npz):
  loss = perceptual.make_perceptual_loss(vgg_npz, required=True)
  kx, ky = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.uniform(kx, (2, 16, 16, 3), minval=-1, maxval=1)
  y = jax.random.uniform(ky, (2, 16, 16, 3), minval=-1, maxval=1)
  black = -jnp.ones_like(x)

  @jax.jit
  def run(params):
    value_grad = jax.value_and_grad(lambda a, b: loss.apply(params, a, b))
    v = jnp.stack([x, y], axis=1)  # videos [2, 2, 16, 16, 3], per frame
    return (
      loss.apply(params, jnp.concatenate([x, x]), jnp.concatenate([x, y])),
      loss.per_example_apply(params, jnp.concatenate([x, y]), jnp.concatenate([y, x])),
      value_grad(x, y),
      value_grad(black, black),
      loss.per_example_apply(params, v, jnp.stack([y, y], axis=1)),
    )

  l_mixed, per, (lxy, g), (_, g0), per_video = run(loss.params)
  per = np.asarray(per)
  assert np.all(per[:2] > 0)
  np.testing.assert_allclose(per[:2], per[2:], rtol=1e-5)  # symmetric
  np.testing.assert_allclose(lxy, per[:2].mean(), rtol=1e-5)
  np.testing.assert_allclose(l_mixed, per[:2].sum() / 4, rtol=1e-5)  # loss(x, x) == 0
  assert float(loss(x[:1], x[:1])) == 0.0
  # Gradient w.r.t. the reconstruction is finite, also at x == y for all-black images.
  assert np.all(np.isfinite(g)) and np.any(g != 0)
  assert np.all(np.isfinite(g0))
  np.testing.assert_allclose(per_video, per[:2] / 2, rtol=1e-5)


def test_perceptual_loss_with_lpips_weights(tmp_path):
  path = str(tmp_path / 'lpips.npz')
  _random_vgg_npz(path, np.random.default_rng(1), lin=True)
  params = perceptual.load_vgg16_weights(path)
  assert params['lin']['lin2'].shape == (256,)
  loss = perceptual.PerceptualLoss(params)
  x = jnp.zeros((1, 16, 16, 3))
  assert float(loss(x, x)) == 0.0 and float(loss(x, x + 0.5)) > 0


def test_wrong_shape_weights_raise(tmp_path):
  path = str(tmp_path / 'bad.npz')
  _random_vgg_npz(
    path, np.random.default_rng(0), **{'conv3_2/kernel': np.zeros((3, 3, 256, 128), np.float32)}
  )
  with pytest.raises(ValueError, match=r'conv3_2/kernel.*\(3, 3, 256, 256\).*\(3, 3, 256, 128\)'):
    perceptual.load_vgg16_weights(path)
  arrays = dict(np.load(path))
  del arrays['conv3_2/kernel']
  arrays['conv3_2/kernel'] = np.zeros((3, 3, 256, 256), np.float32)
  del arrays['conv5_1/bias']
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match='conv5_1/bias'):
    perceptual.load_vgg16_weights(path)
  np.savez(path, **{'features.0.weight': np.zeros((64, 3, 3, 3), np.float32)})
  with pytest.raises(ValueError, match='convert_vgg16'):
    perceptual.load_vgg16_weights(path)


def test_missing_weights_file(tmp_path):
  path = str(tmp_path / 'nope.npz')
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    assert perceptual.make_perceptual_loss(path, required=False) is None
  assert len(caught) == 1 and 'convert_vgg16' in str(caught[0].message)
  with pytest.raises(FileNotFoundError, match='convert_vgg16 --input'):
    perceptual.make_perceptual_loss(path, required=True)


def test_converter_maps_torch_layout(tmp_path):
  rng = np.random.default_rng(3)
  raw = {}
  for (name, cin, cout), idx in zip(perceptual.VGG16_LAYERS, convert_vgg16.TORCH_CONV_INDICES):
    raw[f'features.{idx}.weight'] = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)
    raw[f'features.{idx}.bias'] = rng.standard_normal(cout).astype(np.float32)
  raw['classifier.0.weight'] = np.zeros((4, 4), np.float32)  # ignored
  lpips_raw = {
    f'lin{k}.model.1.weight': rng.uniform(size=(1, c, 1, 1)).astype(np.float32)
    for k, c in enumerate(perceptual.STAGE_CHANNELS)
  }
  src, lsrc = str(tmp_path / 'raw.npz'), str(tmp_path / 'lpips_raw.npz')
  np.savez(src, **raw)
  np.savez(lsrc, **lpips_raw)
  out = str(tmp_path / 'out' / 'vgg16.npz')
  assert convert_vgg16.main(['--input', src, '--output', out, '--lpips', lsrc]) == 0
  params = perceptual.load_vgg16_weights(out)
  w_torch = raw['features.7.weight']  # conv2_2: [out, in, kh, kw]
  k = np.asarray(params['vgg']['conv2_2']['kernel'])  # [kh, kw, in, out]
  assert k.shape == (3, 3, 128, 128)
  for o, i, a, b in [(0, 1, 0, 2), (5, 3, 2, 1), (127, 64, 1, 0)]:
    assert k[a, b, i, o] == w_torch[o, i, a, b]
  np.testing.assert_array_equal(params['vgg']['conv5_3']['bias'], raw['features.28.bias'])
  np.testing.assert_array_equal(params['lin']['lin4'], lpips_raw['lin4.model.1.weight'].ravel())
  # Torch conv (cross-correlation) on the first layer == flax conv with the converted kernel.
  x = rng.standard_normal((1, 5, 5, 3)).astype(np.float32)
  wt = raw['features.0.weight']
  ref = sum(x[0, 1 + a - 1, 1 + b - 1, :] @ wt[:, :, a, b].T for a in range(3) for b in range(3))
  ref = ref + raw['features.0.bias']
  y = nn.Conv(64, (3, 3), padding='SAME').apply(
    {
      'params': {
        'kernel': params['vgg']['conv1_1']['kernel'],
        'bias': params['vgg']['conv1_1']['bias'],
      }
    },
    jnp.asarray(x),
  )
  np.testing.assert_allclose(y[0, 1, 1], ref, rtol=1e-4, atol=1e-4)
  # Missing torch key -> error naming it.
  del raw['features.12.weight']
  with pytest.raises(ValueError, match=r'features\.12\.weight'):
    convert_vgg16.convert_state_dict(raw)


def test_r1_through_discriminator_traces(disc2d):
  """Second-order gradient (R1 w.r.t. D params) traces through blur-pool and mbstd."""
  model, _, params, x = disc2d
  grads = jax.eval_shape(
    jax.grad(lambda p: gan.r1_penalty(lambda inp: model.apply({'params': p}, inp), x)), params
  )
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)

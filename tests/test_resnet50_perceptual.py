"""MAGVIT's perceptual loss on ResNet-50 logits: the torchvision-layout converter, the Flax
ResNet-50 (v1.5, inference BatchNorm), a bottleneck against a numpy reference, the loss and the
weight-file errors."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magvit_jax.config_loader import load_config
from magvit_jax.config_schema import validate_config
from magvit_jax.losses import convert_resnet50
from magvit_jax.losses import perceptual
from magvit_jax.losses import resnet50


def _torch_state_dict(rng) -> dict[str, np.ndarray]:
  """Random torchvision-named, torch-layout resnet50 arrays (BN statistics included)."""
  out = {}
  for key, shape in resnet50.expected_shapes().items():
    name = convert_resnet50.torch_name(key)
    tshape = convert_resnet50.torch_shape(key, shape)
    if name.endswith('running_var'):
      value = rng.uniform(0.5, 1.5, tshape)
    elif name.endswith('running_mean') or (name.endswith('bias')):
      value = rng.standard_normal(tshape) * 0.1
    elif len(tshape) == 1:  # BN scale
      value = rng.uniform(0.5, 1.0, tshape)
    else:  # conv [out, in, kh, kw] or fc [out, in]: He-normal over the fan-in.
      value = rng.standard_normal(tshape) * np.sqrt(1.0 / np.prod(tshape[1:]))
    out[name] = value.astype(np.float32)
  out['bn1.num_batches_tracked'] = np.array(7, np.int64)  # ignored by the converter
  return out


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
  d = tmp_path_factory.mktemp('resnet50')
  raw = _torch_state_dict(np.random.default_rng(0))
  np.savez(d / 'torch.npz', **raw)
  out = str(d / 'resnet50.npz')
  assert convert_resnet50.main(['--input', str(d / 'torch.npz'), '--output', out]) == 0
  return raw, out, resnet50.load_resnet50_weights(out)


def test_names_and_sizes():
  shapes = resnet50.expected_shapes()
  # torchvision resnet50: 25,557,032 trainable parameters + 53,120 BN running statistics.
  assert sum(int(np.prod(s)) for s in shapes.values()) == 25_557_032 + 53_120
  assert len(shapes) == 267  # torchvision's 320 state_dict entries minus 53 num_batches_tracked
  assert convert_resnet50.torch_name('layer1_0/downsample_bn/mean') == (
    'layer1.0.downsample.1.running_mean'
  )
  assert convert_resnet50.torch_name('layer4_2/conv3/kernel') == 'layer4.2.conv3.weight'
  assert convert_resnet50.torch_name('bn1/scale') == 'bn1.weight'
  assert convert_resnet50.torch_name('fc/kernel') == 'fc.weight'


def test_converter_layout_and_forward_at_64(weights):
  raw, _, params = weights
  # torch conv [out, in, kh, kw] -> flax [kh, kw, in, out]; fc [out, in] -> [in, out].
  np.testing.assert_array_equal(
    params['layer2_0']['conv2']['kernel'], raw['layer2.0.conv2.weight'].transpose(2, 3, 1, 0)
  )
  np.testing.assert_array_equal(params['fc']['kernel'], raw['fc.weight'].T)
  np.testing.assert_array_equal(
    params['layer3_0']['downsample_bn']['var'], raw['layer3.0.downsample.1.running_var']
  )
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 64, 64, 3)), jnp.float32)
  logits = jax.jit(resnet50.ResNet50().apply)({'params': params}, x)
  assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits)) and float(jnp.std(logits)) > 1e-3
  assert not np.allclose(logits[0], logits[1])


def _np_conv(x, w, stride, pad):
  """Reference conv, torch semantics: x [C, H, W], w [O, C, kh, kw], symmetric zero padding."""
  c, h, wd = x.shape
  o, _, kh, kw = w.shape
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
  ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
  out = np.zeros((o, ho, wo), np.float64)
  for i in range(ho):
    for j in range(wo):
      patch = xp[:, i * stride : i * stride + kh, j * stride : j * stride + kw]
      out[:, i, j] = np.tensordot(w, patch, axes=([1, 2, 3], [0, 1, 2]))
  return out


def _np_bn(x, p):
  return (x - p['mean'][:, None, None]) / np.sqrt(p['var'][:, None, None] + 1e-5) * p['scale'][
    :, None, None
  ] + p['bias'][:, None, None]


def test_bottleneck_matches_numpy_reference():
  """A downsampling v1.5 bottleneck (stride on the 3x3) on an odd-sized input, vs numpy."""
  block = resnet50.Bottleneck(width=4, stride=2, downsample=True)
  rng = np.random.default_rng(2)
  x = rng.standard_normal((1, 7, 9, 8)).astype(np.float32)
  abstract = jax.eval_shape(block.init, jax.random.PRNGKey(0), jnp.zeros(x.shape))['params']
  params = {}
  for name, leaves in abstract.items():
    params[name] = {}
    for leaf, spec in leaves.items():
      if leaf == 'var':
        v = rng.uniform(0.5, 1.5, spec.shape)
      else:
        v = rng.standard_normal(spec.shape) * (0.5 if leaf == 'kernel' else 0.2)
      params[name][leaf] = v.astype(np.float32)
  y = np.asarray(block.apply({'params': params}, x))
  assert y.shape == (1, 4, 5, 16)

  def torch_w(name):  # flax [kh, kw, in, out] -> torch [out, in, kh, kw]
    return params[name]['kernel'].transpose(3, 2, 0, 1).astype(np.float64)

  relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
  xt = x[0].transpose(2, 0, 1).astype(np.float64)
  h = relu(_np_bn(_np_conv(xt, torch_w('conv1'), 1, 0), params['bn1']))
  h = relu(_np_bn(_np_conv(h, torch_w('conv2'), 2, 1), params['bn2']))
  h = _np_bn(_np_conv(h, torch_w('conv3'), 1, 0), params['bn3'])
  skip = _np_bn(_np_conv(xt, torch_w('downsample_conv'), 2, 0), params['downsample_bn'])
  ref = relu(h + skip).transpose(1, 2, 0)[None]
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_logits_loss_properties(weights):
  _, path, params = weights
  loss = perceptual.make_perceptual_loss(path, required=True, network='resnet50_logits')
  assert isinstance(loss, resnet50.ResNet50LogitsLoss) and loss.image_size == 224
  loss = resnet50.ResNet50LogitsLoss(params, image_size=None)  # 32x32 frames, no resize
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.uniform(-1, 1, (2, 3, 32, 32, 3)), jnp.float32)
  y = jnp.clip(x + 0.3 * jnp.asarray(rng.standard_normal(x.shape), jnp.float32), -1, 1)

  @jax.jit
  def run(p, a, b):
    per = loss.per_example_apply(p, a, b)
    frames = loss.per_example_apply(p, a.reshape(6, 32, 32, 3), b.reshape(6, 32, 32, 3))
    la = loss.logits(p, a.reshape(6, 32, 32, 3))
    lb = loss.logits(p, b.reshape(6, 32, 32, 3))
    ga, gp = jax.grad(lambda a, p: loss.apply(p, a, b), argnums=(0, 1))(a, p)
    return per, frames, la, lb, ga, gp, loss.apply(p, a, a)

  per, frames, la, lb, ga, gp, same = run(params, x, y)
  assert per.shape == (2,) and float(same) == 0.0
  assert np.all(np.asarray(per) > 0)
  # A video's loss is the mean over its frames of mean_k (logit_k(x) - logit_k(y))^2.
  np.testing.assert_allclose(per, np.asarray(frames).reshape(2, 3).mean(1), rtol=1e-5)
  np.testing.assert_allclose(frames, np.mean((np.asarray(la) - np.asarray(lb)) ** 2, -1), rtol=1e-4)
  assert np.any(np.asarray(ga) != 0)  # the generator gets a gradient ...
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree_util.tree_leaves(gp))  # ... not ResNet


def test_wrong_weight_files_are_refused(weights, tmp_path):
  raw, path, _ = weights
  arrays = dict(np.load(path))
  bad = str(tmp_path / 'bad.npz')
  missing = {k: v for k, v in arrays.items() if k != 'layer3_5/bn2/var'}
  np.savez(bad, **missing)
  with pytest.raises(ValueError, match="'layer3_5/bn2/var' is missing"):
    resnet50.load_resnet50_weights(bad)
  np.savez(bad, **dict(arrays, **{'layer2_1/conv2/kernel': np.zeros((3, 3, 128, 64), np.float32)}))
  with pytest.raises(
    ValueError, match=r"'layer2_1/conv2/kernel'.*\(3, 3, 128, 128\).*\(3, 3, 128, 64\)"
  ):
    resnet50.load_resnet50_weights(bad)
  np.savez(bad, **dict(arrays, **{'bn1/var': -np.ones(64, np.float32)}))
  with pytest.raises(ValueError, match="'bn1/var'.*negative"):
    resnet50.load_resnet50_weights(bad)
  # A raw torchvision state_dict must be converted first.
  np.savez(bad, **{'conv1.weight': raw['conv1.weight']})
  with pytest.raises(ValueError, match='convert_resnet50'):
    resnet50.load_resnet50_weights(bad)
  # The converter names the torchvision key it misses, or the one it does not know.
  partial = {k: v for k, v in raw.items() if k != 'layer2.0.downsample.1.running_var'}
  with pytest.raises(ValueError, match=r"'layer2\.0\.downsample\.1\.running_var' missing"):
    convert_resnet50.convert_state_dict(partial)
  with pytest.raises(ValueError, match=r'layer3\.6\.conv1\.weight'):
    convert_resnet50.convert_state_dict(dict(raw, **{'layer3.6.conv1.weight': raw['conv1.weight']}))
  wrong = dict(raw, **{'fc.weight': np.zeros((10, 2048), np.float32)})
  with pytest.raises(ValueError, match=r"'fc\.weight'.*\(1000, 2048\).*\(10, 2048\)"):
    convert_resnet50.convert_state_dict(wrong)
  # A .pth is refused without --allow_pickle (exit code 2, nothing written).
  pth = tmp_path / 'resnet50.pth'
  pth.write_bytes(b'not read')
  assert convert_resnet50.main(['--input', str(pth), '--output', str(tmp_path / 'o.npz')]) == 2
  assert not (tmp_path / 'o.npz').exists()


def test_missing_file_and_network_choice(tmp_path):
  path = str(tmp_path / 'nope.npz')
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    assert perceptual.make_perceptual_loss(path, False, network='resnet50_logits') is None
  assert len(caught) == 1 and 'convert_resnet50' in str(caught[0].message)
  with pytest.raises(FileNotFoundError, match='convert_resnet50 --input'):
    perceptual.make_perceptual_loss(path, True, network='resnet50_logits')
  with pytest.raises(ValueError, match='perceptual_network'):
    perceptual.make_perceptual_loss(path, True, network='resnet18')
  c = load_config('magvit2_tokenizer_video.py')
  assert c.losses.perceptual_network == 'resnet50_logits' and c.losses.lecam_weight == 0.05
  c.losses.perceptual_network = 'vgg19'
  with pytest.raises(ValueError, match=r"config\.losses\.perceptual_network='vgg19'"):
    validate_config(c, stage='tokenizer')

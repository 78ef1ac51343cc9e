"""InceptionV3, FID variant (the network of FID and the Inception Score), in Flax.

The architecture of pytorch-fid's `FIDInceptionV3` (the 2015-12-05 TensorFlow
graph used by the original FID code, ported to torchvision layers):
torchvision InceptionV3 with 1008 classes and no auxiliary head, in which the
Mixed_5*/6*/7b pooling branches average without counting padding and Mixed_7c
pools with max instead of average.

  float32 [b, 299, 299, 3] in [-1, 1]
    -> pool features float32 [b, 2048] (global average of Mixed_7c)
    -> logits float32 [b, 1008] (fc)

`preprocess` maps uint8 images of any size to that input the way pytorch-fid
does (bilinear resize without antialiasing, half-pixel centres, to 299x299;
x / 255 * 2 - 1).

Weights are never downloaded: `load_inception_weights(path)` reads an .npz the
user supplies, with one array per variable, named by the flattened Flax
variable path:

  params/<Layer>/conv/kernel          float32 [kh, kw, in, out]   (HWIO)
  params/<Layer>/bn/scale, bn/bias    float32 [out]
  batch_stats/<Layer>/bn/mean, bn/var float32 [out]
  params/fc/kernel [2048, 1008], params/fc/bias [1008]

where <Layer> is e.g. `Conv2d_1a_3x3` or `Mixed_6b/branch7x7_2` (the
torchvision/pytorch-fid module names, `.` -> `/`). `expected_weight_shapes()`
lists all of them. `python -m magvit_jax.metrics.convert_weights inception
pt_inception-2015-12-05-6726825d.pth inception_fid.npz` writes this file from
pytorch-fid's published PyTorch weights.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from magvit_jax import weight_files
from magvit_jax.metrics.batching import apply_in_batches

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008
PYTORCH_FID_URL = (
  'https://github.com/mseitzer/pytorch-fid/releases/download/'
  'fid_weights/pt_inception-2015-12-05-6726825d.pth'
)

Variables = Dict[str, Any]
Padding = Sequence[Tuple[int, int]] | str


class BasicConv(nn.Module):
  """Conv (no bias) + BatchNorm (eps 1e-3, running statistics) + ReLU, NHWC."""

  features: int
  kernel: Tuple[int, int]
  strides: Tuple[int, int] = (1, 1)
  padding: Padding = 'VALID'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(
      self.features, self.kernel, self.strides, padding=self.padding, use_bias=False, name='conv'
    )(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name='bn')(x)
    return nn.relu(x)


def _pad(kh: int, kw: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
  """Symmetric 'same' padding of an odd kernel (torch `padding=(kh // 2, kw // 2)`)."""
  return ((kh // 2, kh // 2), (kw // 2, kw // 2))


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  """3x3 stride-1 average pool, padding 1, padded cells not counted (FID blocks)."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), (2, 2), padding='VALID')


class InceptionA(nn.Module):
  """Mixed_5b/5c/5d: 64 + 64 + 96 + pool_features channels."""

  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv(64, (1, 1), name='branch1x1')(x)
    b5 = BasicConv(48, (1, 1), name='branch5x5_1')(x)
    b5 = BasicConv(64, (5, 5), padding=_pad(5, 5), name='branch5x5_2')(b5)
    b3 = BasicConv(64, (1, 1), name='branch3x3dbl_1')(x)
    b3 = BasicConv(96, (3, 3), padding=_pad(3, 3), name='branch3x3dbl_2')(b3)
    b3 = BasicConv(96, (3, 3), padding=_pad(3, 3), name='branch3x3dbl_3')(b3)
    bp = BasicConv(self.pool_features, (1, 1), name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a (grid reduction 35 -> 17): 384 + 96 + in channels."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv(384, (3, 3), (2, 2), name='branch3x3')(x)
    bd = BasicConv(64, (1, 1), name='branch3x3dbl_1')(x)
    bd = BasicConv(96, (3, 3), padding=_pad(3, 3), name='branch3x3dbl_2')(bd)
    bd = BasicConv(96, (3, 3), (2, 2), name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b..6e (factorized 7x7): 4 x 192 = 768 channels."""

  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    b1 = BasicConv(192, (1, 1), name='branch1x1')(x)
    b7 = BasicConv(c7, (1, 1), name='branch7x7_1')(x)
    b7 = BasicConv(c7, (1, 7), padding=_pad(1, 7), name='branch7x7_2')(b7)
    b7 = BasicConv(192, (7, 1), padding=_pad(7, 1), name='branch7x7_3')(b7)
    bd = BasicConv(c7, (1, 1), name='branch7x7dbl_1')(x)
    bd = BasicConv(c7, (7, 1), padding=_pad(7, 1), name='branch7x7dbl_2')(bd)
    bd = BasicConv(c7, (1, 7), padding=_pad(1, 7), name='branch7x7dbl_3')(bd)
    bd = BasicConv(c7, (7, 1), padding=_pad(7, 1), name='branch7x7dbl_4')(bd)
    bd = BasicConv(192, (1, 7), padding=_pad(1, 7), name='branch7x7dbl_5')(bd)
    bp = BasicConv(192, (1, 1), name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a (grid reduction 17 -> 8): 320 + 192 + in channels."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv(192, (1, 1), name='branch3x3_1')(x)
    b3 = BasicConv(320, (3, 3), (2, 2), name='branch3x3_2')(b3)
    b7 = BasicConv(192, (1, 1), name='branch7x7x3_1')(x)
    b7 = BasicConv(192, (1, 7), padding=_pad(1, 7), name='branch7x7x3_2')(b7)
    b7 = BasicConv(192, (7, 1), padding=_pad(7, 1), name='branch7x7x3_3')(b7)
    b7 = BasicConv(192, (3, 3), (2, 2), name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b/7c (expanded filter bank): 320 + 768 + 768 + 192 = 2048 channels.

  pool: 'avg' (Mixed_7b, padded cells not counted) or 'max' (Mixed_7c).
  """

  pool: str = 'avg'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv(320, (1, 1), name='branch1x1')(x)
    b3 = BasicConv(384, (1, 1), name='branch3x3_1')(x)
    b3 = jnp.concatenate(
      [
        BasicConv(384, (1, 3), padding=_pad(1, 3), name='branch3x3_2a')(b3),
        BasicConv(384, (3, 1), padding=_pad(3, 1), name='branch3x3_2b')(b3),
      ],
      axis=-1,
    )
    bd = BasicConv(448, (1, 1), name='branch3x3dbl_1')(x)
    bd = BasicConv(384, (3, 3), padding=_pad(3, 3), name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate(
      [
        BasicConv(384, (1, 3), padding=_pad(1, 3), name='branch3x3dbl_3a')(bd),
        BasicConv(384, (3, 1), padding=_pad(3, 1), name='branch3x3dbl_3b')(bd),
      ],
      axis=-1,
    )
    if self.pool == 'max':
      pooled = nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_3x3(x)
    bp = BasicConv(192, (1, 1), name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """float32 [b, 299, 299, 3] in [-1, 1] -> (pool features [b, 2048], logits [b, 1008])."""

  @nn.compact
  def __call__(self, x: jax.Array) -> Tuple[jax.Array, jax.Array]:
    x = BasicConv(32, (3, 3), (2, 2), name='Conv2d_1a_3x3')(x)  # 149
    x = BasicConv(32, (3, 3), name='Conv2d_2a_3x3')(x)  # 147
    x = BasicConv(64, (3, 3), padding=_pad(3, 3), name='Conv2d_2b_3x3')(x)
    x = _max_pool_3x3_s2(x)  # 73
    x = BasicConv(80, (1, 1), name='Conv2d_3b_1x1')(x)
    x = BasicConv(192, (3, 3), name='Conv2d_4a_3x3')(x)  # 71
    x = _max_pool_3x3_s2(x)  # 35
    x = InceptionA(32, name='Mixed_5b')(x)
    x = InceptionA(64, name='Mixed_5c')(x)
    x = InceptionA(64, name='Mixed_5d')(x)
    x = InceptionB(name='Mixed_6a')(x)  # 17
    x = InceptionC(128, name='Mixed_6b')(x)
    x = InceptionC(160, name='Mixed_6c')(x)
    x = InceptionC(160, name='Mixed_6d')(x)
    x = InceptionC(192, name='Mixed_6e')(x)
    x = InceptionD(name='Mixed_7a')(x)  # 8
    x = InceptionE('avg', name='Mixed_7b')(x)
    x = InceptionE('max', name='Mixed_7c')(x)
    features = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(NUM_CLASSES, name='fc')(features)
    return features, logits


def preprocess(images: jax.Array) -> jax.Array:
  """uint8 [b, H, W, 3] -> float32 [b, 299, 299, 3] in [-1, 1] (pytorch-fid's resize)."""
  x = images.astype(jnp.float32) / 255.0
  if x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
    x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3), 'bilinear', antialias=False)
  return x * 2.0 - 1.0


def _abstract_variables(module: nn.Module, example_shape: Tuple[int, ...]) -> Variables:
  """Shapes of a module's variables, via `jax.eval_shape` (nothing allocated)."""
  x = jax.ShapeDtypeStruct(example_shape, jnp.float32)
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), x)


def flat_shapes(abstract: Variables) -> Dict[str, Tuple[Tuple[str, ...], Tuple[int, ...]]]:
  """Flat name ('/'-joined variable path) -> (path tuple, shape) of every variable."""
  return {'/'.join(k): (k, tuple(v.shape)) for k, v in traverse_util.flatten_dict(abstract).items()}


def expected_weight_shapes() -> Dict[str, Tuple[int, ...]]:
  """Flat name ('params/Mixed_5b/branch1x1/conv/kernel', ...) -> shape of every variable."""
  abstract = _abstract_variables(InceptionV3(), (1, INPUT_SIZE, INPUT_SIZE, 3))
  return {name: shape for name, (_, shape) in flat_shapes(abstract).items()}


def load_npz_variables(path: str, abstract: Variables, what: str, how_to_get: str) -> Variables:
  """Reads flat-named arrays from an .npz and checks them against the network's variables.

  Args:
    path: the .npz file; names are the '/'-joined Flax variable paths.
    abstract: the network's variables as `jax.ShapeDtypeStruct`s (from `jax.eval_shape`).
    what: network name for messages (e.g. 'InceptionV3 (FID)').
    how_to_get: where to get/how to convert the weights, for the missing-file error.

  Returns:
    The nested Flax variables {'params': ..., 'batch_stats': ...} as float32 jnp arrays.

  Raises:
    FileNotFoundError: `path` does not exist (message says how to get it).
    ValueError: a variable is missing, has the wrong shape or non-finite values, or an unknown
      name is present (the message names the layer, expected vs found; `weight_files.load_npz`).
  """
  flat = flat_shapes(abstract)
  expected = {name: shape for name, (_, shape) in flat.items()}
  paths = {name: key for name, (key, _) in flat.items()}
  return weight_files.load_npz(path, expected, what, how_to_get, paths)


INCEPTION_HOW_TO_GET = (
  "magvit_jax never downloads weights. Download pytorch-fid's InceptionV3 weights "
  f'({PYTORCH_FID_URL}) on a machine with network access, then convert them: '
  '`python -m magvit_jax.metrics.convert_weights inception --allow_pickle '
  'pt_inception-2015-12-05-6726825d.pth inception_fid.npz` (a .pth needs torch and '
  '--allow_pickle, since it is Python pickle: only for a file you trust; an .npz or '
  '.safetensors of the raw state_dict arrays needs neither), and pass '
  '--weights=inception_fid.npz.'
)


def load_inception_weights(path: str) -> Variables:
  """InceptionV3 (FID) variables from an .npz in the layout of the module docstring."""
  abstract = _abstract_variables(InceptionV3(), (1, INPUT_SIZE, INPUT_SIZE, 3))
  return load_npz_variables(path, abstract, 'InceptionV3 (FID)', INCEPTION_HOW_TO_GET)


_MODEL = InceptionV3()


@jax.jit
def _apply(variables: Variables, images: jax.Array) -> Tuple[jax.Array, jax.Array]:
  features, logits = _MODEL.apply(variables, preprocess(images))
  return features, jax.nn.softmax(logits)


def inception_features(
  variables: Variables, images: np.ndarray, batch_size: int = 50
) -> Tuple[np.ndarray, np.ndarray]:
  """uint8 [N, H, W, 3] -> (pool features float32 [N, 2048], probs float32 [N, 1008])."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'images must be uint8 [N, H, W, 3], got {images.shape}')
  return apply_in_batches(lambda x: _apply(variables, x), images, batch_size)

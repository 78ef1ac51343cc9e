"""Perceptual loss on ResNet-50 logits (MAGVIT's), weights read from a user file.

The network is torchvision's `resnet50` (v1.5: the stride-2 of a downsampling bottleneck is
on its 3x3 conv) written in Flax, BatchNorm in inference mode (running statistics, eps 1e-5):

  conv1 7x7/2 (pad 3) -> bn1 -> ReLU -> max-pool 3x3/2 (pad 1)
  layer1..layer4: 3, 4, 6, 3 bottlenecks of width 64, 128, 256, 512 (output 4 x width);
    bottleneck: 1x1 -> bn -> ReLU -> 3x3/s (pad 1) -> bn -> ReLU -> 1x1 -> bn,
    + shortcut (identity, or 1x1/s conv -> bn in each layer's first block), ReLU
  global average pool -> fc -> logits [b, 1000]

Loss (MAGVIT's "perceptual loss on logits"): real and reconstructed frames are mapped from
[-1, 1] to [0, 1], ImageNet-normalized, resized (bilinear) to `image_size` (224, as MAGVIT;
None keeps the input size) and

  loss(x, y) = mean_{frames, classes} (logits(x) - logits(y))^2

i.e. the squared L2 distance of the logits divided by the 1000 classes; a video's frames are
scored one by one and averaged. Gradients flow to x and y, never to the ResNet params.

Weights file (`.npz`, made by `python -m magvit_jax.losses.convert_resnet50` from torchvision's
`resnet50` state_dict): flax layout, the torchvision names with `.` -> `/` per module and
`layer{s}.{i}` -> `layer{s}_{i}`: `conv1/kernel` [7, 7, 3, 64], `bn1/{scale,bias,mean,var}`,
`layer1_0/conv1/kernel`, ..., `layer1_0/downsample_conv/kernel`, `layer1_0/downsample_bn/...`,
`fc/kernel` [2048, 1000], `fc/bias` [1000] (see `expected_shapes`).
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from magvit_jax import weight_files

# The input normalization is the VGG loss's (the names stay public here too).
from magvit_jax.losses.perceptual import IMAGENET_MEAN as IMAGENET_MEAN
from magvit_jax.losses.perceptual import IMAGENET_STD as IMAGENET_STD
from magvit_jax.losses.perceptual import FrozenNetworkLoss, imagenet_normalize

# (blocks, width) of layer1..layer4; a bottleneck outputs EXPANSION * width channels.
STAGES: tuple[tuple[int, int], ...] = ((3, 64), (4, 128), (6, 256), (3, 512))
EXPANSION = 4
NUM_CLASSES = 1000
BN_EPS = 1e-5
IMAGE_SIZE = 224
BN_FIELDS = ('scale', 'bias', 'mean', 'var')

CONVERT_COMMAND = (
  'python -m magvit_jax.losses.convert_resnet50 --input resnet50-0676ba61.pth --output {path} '
  '--allow_pickle (--allow_pickle: the .pth is Python pickle, which can run arbitrary code; '
  'only for a file you trust, else pass an .npz or .safetensors of its arrays as --input)'
)


def block_names() -> list[tuple[str, int, int, int, bool]]:
  """(name, in_channels, width, stride, has_downsample) of the 16 bottlenecks, in order."""
  out = []
  cin = 64
  for s, (blocks, width) in enumerate(STAGES, start=1):
    for i in range(blocks):
      stride = 2 if (i == 0 and s > 1) else 1
      out.append((f'layer{s}_{i}', cin, width, stride, i == 0))
      cin = width * EXPANSION
  return out


def _bn_shapes(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
  return {f'{prefix}/{f}': (c,) for f in BN_FIELDS}


def expected_shapes(num_classes: int = NUM_CLASSES) -> dict[str, tuple[int, ...]]:
  """Flat npz key -> expected shape of the converted ResNet-50 weights file."""
  out: dict[str, tuple[int, ...]] = {'conv1/kernel': (7, 7, 3, 64), **_bn_shapes('bn1', 64)}
  for name, cin, width, _, down in block_names():
    cout = width * EXPANSION
    out[f'{name}/conv1/kernel'] = (1, 1, cin, width)
    out.update(_bn_shapes(f'{name}/bn1', width))
    out[f'{name}/conv2/kernel'] = (3, 3, width, width)
    out.update(_bn_shapes(f'{name}/bn2', width))
    out[f'{name}/conv3/kernel'] = (1, 1, width, cout)
    out.update(_bn_shapes(f'{name}/bn3', cout))
    if down:
      out[f'{name}/downsample_conv/kernel'] = (1, 1, cin, cout)
      out.update(_bn_shapes(f'{name}/downsample_bn', cout))
  out['fc/kernel'] = (STAGES[-1][1] * EXPANSION, num_classes)
  out['fc/bias'] = (num_classes,)
  return out


class FrozenBatchNorm(nn.Module):
  """Inference-mode BatchNorm: (x - mean) / sqrt(var + eps) * scale + bias over the last axis.

  The running statistics are ordinary (frozen) params here, `{scale, bias, mean, var}` [C],
  since this network is never trained. x: `[..., C]` -> same shape and dtype.
  """

  eps: float = BN_EPS

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    mean = self.param('mean', nn.initializers.zeros, (c,), jnp.float32)
    var = self.param('var', nn.initializers.ones, (c,), jnp.float32)
    mul = scale * jax.lax.rsqrt(var + self.eps)
    return (x * mul + (bias - mean * mul)).astype(x.dtype)


def _conv(features: int, k: int, stride: int, name: str, dtype: Any) -> nn.Conv:
  # Explicit symmetric padding k // 2 as torch (flax 'SAME' pads stride-2 convs asymmetrically).
  p = k // 2
  return nn.Conv(
    features, (k, k), strides=(stride, stride), padding=((p, p), (p, p)), use_bias=False,
    dtype=dtype, name=name,
  )  # fmt: skip


class Bottleneck(nn.Module):
  """torchvision's v1.5 Bottleneck: x `[b, H, W, C_in]` -> `[b, H/stride, W/stride, 4 * width]`."""

  width: int
  stride: int = 1
  downsample: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.relu(FrozenBatchNorm(name='bn1')(_conv(self.width, 1, 1, 'conv1', self.dtype)(x)))
    h = _conv(self.width, 3, self.stride, 'conv2', self.dtype)(h)
    h = nn.relu(FrozenBatchNorm(name='bn2')(h))
    h = FrozenBatchNorm(name='bn3')(_conv(self.width * EXPANSION, 1, 1, 'conv3', self.dtype)(h))
    skip = x
    if self.downsample:
      skip = _conv(self.width * EXPANSION, 1, self.stride, 'downsample_conv', self.dtype)(x)
      skip = FrozenBatchNorm(name='downsample_bn')(skip)
    return nn.relu(h + skip)


class ResNet50(nn.Module):
  """torchvision resnet50 (v1.5), inference mode.

  x: float `[b, H, W, 3]`, already ImageNet-normalized (any H, W >= 32; 224 as trained) ->
  float32 logits `[b, num_classes]`.
  """

  num_classes: int = NUM_CLASSES
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.asarray(x, self.dtype)
    x = nn.relu(FrozenBatchNorm(name='bn1')(_conv(64, 7, 2, 'conv1', self.dtype)(x)))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for name, _, width, stride, down in block_names():
      x = Bottleneck(width, stride, down, self.dtype, name=name)(x)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=jnp.float32, name='fc')(x)


class ResNet50LogitsLoss(FrozenNetworkLoss):
  """MAGVIT's perceptual loss: mean squared difference of ResNet-50 logits (module docstring).

  The interface of `perceptual.FrozenNetworkLoss` (`loss(x, y)`, `per_example`, `apply`).
  `image_size`: frames are resized (bilinear) to image_size x image_size first (224, the
  resolution the ImageNet weights were trained at, as MAGVIT); None keeps their size.
  """

  def __init__(
    self, params: Mapping[str, Any], dtype: Any = jnp.float32, image_size: int | None = IMAGE_SIZE
  ):
    super().__init__(params)
    self.net = ResNet50(dtype=dtype)
    self.image_size = image_size

  def logits(self, params: Mapping[str, Any], images: jax.Array) -> jax.Array:
    """[n, H, W, 3] in [-1, 1] -> float32 logits [n, 1000] (normalized, resized)."""
    x = imagenet_normalize(images)
    size = self.image_size
    if size and x.shape[1:3] != (size, size):
      x = jax.image.resize(x, (x.shape[0], size, size, 3), 'bilinear')
    return self.net.apply({'params': params}, x)

  features = logits

  def distance(self, params: Mapping[str, Any], fx: jax.Array, fy: jax.Array) -> jax.Array:
    """Logits [n, 1000] of x and y -> mean over classes of the squared difference, [n]."""
    del params
    return jnp.mean(jnp.square(fx - fy), axis=-1)


WHAT = 'ResNet-50 (perceptual loss)'


def how_to_get(path: str) -> str:
  """How to make the ResNet-50 weights file `path` (for the missing-file error)."""
  return (
    "Create them from torchvision's public resnet50 weights (IMAGENET1K_V1, "
    'resnet50-0676ba61.pth) with:\n  ' + CONVERT_COMMAND.format(path=path or 'resnet50.npz')
  )


def missing_file_message(path: str) -> str:
  return weight_files.not_found_message(WHAT, path, how_to_get(path))


def load_resnet50_weights(path: str) -> dict[str, Any]:
  """Reads and validates the converted ResNet-50 npz -> nested float32 params of `ResNet50`.

  Raises FileNotFoundError (with the command that creates the file) when it is missing,
  ValueError naming the keys on missing, extra, wrong-shape or non-finite entries (or a negative
  BatchNorm variance), see `weight_files.load_npz`.
  """
  return weight_files.load_npz(path, expected_shapes(), WHAT, how_to_get(path))

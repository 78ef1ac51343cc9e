"""LPIPS-style perceptual loss on VGG-16 features, weights read from a user file.

The feature net is torchvision's `vgg16().features` (13 3x3 convs, ReLU, 2x2
max-pool) written in Flax; the loss compares the five ReLU stages conv1_2,
conv2_2, conv3_3, conv4_3, conv5_3 after normalizing each feature vector to unit
L2 norm over channels:

  loss(x, y) = sum_stage mean_{h,w} sum_c w_c (f_x / |f_x| - f_y / |f_y|)^2

with w_c = 1 (no learned weights; the LPIPS "baseline" form) or the LPIPS linear
weights when the weights file holds them (`lin0` ... `lin4`). Inputs are in
[-1, 1] and are converted to [0, 1] and normalized with the ImageNet mean/std.

Weights file (`.npz`, made by `python -m magvit_jax.losses.convert_vgg16`):
  `conv{s}_{i}/kernel` float32 [3, 3, in, out] (flax HWIO) and `conv{s}_{i}/bias`
  [out] for the 13 layers in `VGG16_LAYERS`; optionally `lin{k}` float32 [C_k]
  (non-negative LPIPS channel weights for stage k; all five or none).

This module's only I/O is `load_vgg16_weights` / `make_perceptual_loss`; the loss
itself is a pure function of (params, x, y). `FrozenNetworkLoss` is the interface and shared
part of both perceptual losses (this one and `resnet50.ResNet50LogitsLoss`).
"""

from __future__ import annotations

import abc
import os
import warnings
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from magvit_jax import weight_files
from magvit_jax.models.layers import conv

# (name, in_channels, out_channels) in torchvision order; a max-pool follows the
# last conv of every stage.
VGG16_LAYERS: tuple[tuple[str, int, int], ...] = (
  ('conv1_1', 3, 64),
  ('conv1_2', 64, 64),
  ('conv2_1', 64, 128),
  ('conv2_2', 128, 128),
  ('conv3_1', 128, 256),
  ('conv3_2', 256, 256),
  ('conv3_3', 256, 256),
  ('conv4_1', 256, 512),
  ('conv4_2', 512, 512),
  ('conv4_3', 512, 512),
  ('conv5_1', 512, 512),
  ('conv5_2', 512, 512),
  ('conv5_3', 512, 512),
)
FEATURE_LAYERS = ('conv1_2', 'conv2_2', 'conv3_3', 'conv4_3', 'conv5_3')
STAGE_CHANNELS = (64, 128, 256, 512, 512)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CONVERT_COMMAND = (
  'python -m magvit_jax.losses.convert_vgg16 --input vgg16-397923af.pth --output {path} '
  '--allow_pickle (--allow_pickle: the .pth is Python pickle, which can run arbitrary code; '
  'only for a file you trust, else pass an .npz of its arrays as --input)'
)


def expected_shapes() -> dict[str, tuple[int, ...]]:
  """Flat npz key -> expected shape for the VGG-16 part of the weights file."""
  out = {}
  for name, cin, cout in VGG16_LAYERS:
    out[f'{name}/kernel'] = (3, 3, cin, cout)
    out[f'{name}/bias'] = (cout,)
  return out


class VGG16Features(nn.Module):
  """torchvision vgg16.features up to relu5_3.

  x: float `[b, H, W, 3]`, already ImageNet-normalized (H, W >= 16) ->
  tuple of the 5 ReLU stages `[b, H/2^s, W/2^s, C_s]`, C = (64, 128, 256, 512, 512).
  """

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
    feats = []
    x = x.astype(self.dtype)
    for name, _, cout in VGG16_LAYERS:
      if name.endswith('_1') and name != 'conv1_1':
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
      x = nn.relu(conv(cout, (3, 3), name, dtype=self.dtype)(x))
      if name in FEATURE_LAYERS:
        feats.append(x)
    return tuple(feats)


def imagenet_normalize(images: jax.Array) -> jax.Array:
  """[..., 3] in [-1, 1] -> float32 in [0, 1] normalized with the ImageNet mean and std."""
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(IMAGENET_STD, jnp.float32)
  return ((jnp.asarray(images, jnp.float32) + 1.0) * 0.5 - mean) / std


def _unit_normalize(f: jax.Array, eps: float = 1e-10) -> jax.Array:
  # sqrt(sum f^2 + eps) rather than |f| + eps keeps the gradient finite where a
  # feature vector is exactly zero (all channels ReLU-dead).
  return f * jax.lax.rsqrt(jnp.sum(jnp.square(f), axis=-1, keepdims=True) + eps)


class FrozenNetworkLoss(abc.ABC):
  """A perceptual loss: a distance between the features a frozen network sees in two batches.

  A subclass gives only its network's `features` (of a batch of frames) and `distance` (per
  frame, from the features of x and of y); this class checks the inputs, scores a video frame
  by frame, stops the gradient to the network and provides the interface the trainers use:
  `loss(x, y)` -> batch-mean float32 scalar, `loss.per_example(x, y)` -> float32 `[b]`, and
  `loss.apply(params, x, y)` / `loss.per_example_apply(params, x, y)` with explicit params (for
  a trainer that keeps the frozen weights in its state instead of closing over them in jit).
  x, y: float `[b, H, W, 3]` or `[b, T, H, W, 3]` in [-1, 1] (videos: per frame, averaged over
  time). Gradients flow to x and y, never to the params.
  """

  def __init__(self, params: Mapping[str, Any]):
    self.params = params

  @abc.abstractmethod
  def features(self, params: Mapping[str, Any], images: jax.Array) -> Any:
    """Frames `[n, H, W, 3]` in [-1, 1] -> the network's features (arrays with leading n)."""

  @abc.abstractmethod
  def distance(self, params: Mapping[str, Any], fx: Any, fy: Any) -> jax.Array:
    """Features of n frames of x and of y -> float32 `[n]` distances."""

  def per_example_apply(self, params: Mapping[str, Any], x: jax.Array, y: jax.Array) -> jax.Array:
    if x.shape != y.shape:
      raise ValueError(f'perceptual loss: x {x.shape} and y {y.shape} differ')
    if x.ndim not in (4, 5) or x.shape[-1] != 3:
      raise ValueError(f'perceptual loss expects [b, H, W, 3] or [b, T, H, W, 3]; got {x.shape}')
    b = x.shape[0]
    x = x.reshape((-1,) + x.shape[-3:])  # videos: their frames one by one.
    y = y.reshape((-1,) + y.shape[-3:])
    n = x.shape[0]
    params = jax.lax.stop_gradient(params)
    feats = self.features(params, jnp.concatenate([x, y], axis=0))  # one pass for both.
    fx = jax.tree.map(lambda f: f[:n], feats)
    fy = jax.tree.map(lambda f: f[n:], feats)
    return self.distance(params, fx, fy).reshape(b, -1).mean(axis=1)

  def apply(self, params: Mapping[str, Any], x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(self.per_example_apply(params, x, y))

  def per_example(self, x: jax.Array, y: jax.Array) -> jax.Array:
    return self.per_example_apply(self.params, x, y)

  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    return self.apply(self.params, x, y)


class PerceptualLoss(FrozenNetworkLoss):
  """LPIPS-style distance on VGG-16 features (module docstring), interface of `FrozenNetworkLoss`.

  Construct with params from `load_vgg16_weights` (~58 MB of VGG weights); frames H, W >= 16.
  """

  def __init__(self, params: Mapping[str, Any], dtype: Any = jnp.float32):
    super().__init__(params)
    self.net = VGG16Features(dtype=dtype)

  def features(self, params: Mapping[str, Any], images: jax.Array) -> tuple[jax.Array, ...]:
    """The 5 ReLU stages, each unit-normalized over channels (float32)."""
    feats = self.net.apply({'params': params['vgg']}, imagenet_normalize(images))
    return tuple(_unit_normalize(f.astype(jnp.float32)) for f in feats)

  def distance(
    self, params: Mapping[str, Any], fx: tuple[jax.Array, ...], fy: tuple[jax.Array, ...]
  ) -> jax.Array:
    """sum_stage mean_{h,w} sum_c w_c (fx - fy)^2, w_c the LPIPS weights or 1."""
    lin = params.get('lin')
    total = jnp.zeros((fx[0].shape[0],), jnp.float32)
    for k, (a, b) in enumerate(zip(fx, fy)):
      d = jnp.square(a - b)  # [n, h, w, c]
      if lin is not None:
        d = d * lin[f'lin{k}']
      total = total + jnp.mean(jnp.sum(d, axis=-1), axis=(1, 2))
    return total


WHAT = 'VGG-16 (perceptual loss)'


def how_to_get(path: str) -> str:
  """How to make the VGG-16 weights file `path` (for the missing-file error)."""
  return "Create them from torchvision's public vgg16-397923af.pth with:\n  " + (
    CONVERT_COMMAND.format(path=path or 'vgg16.npz')
  )


def missing_file_message(path: str) -> str:
  return weight_files.not_found_message(WHAT, path, how_to_get(path))


def load_vgg16_weights(path: str) -> dict[str, Any]:
  """Reads and validates the VGG-16 (+ optional LPIPS) weights npz.

  Returns `{'vgg': {'conv1_1': {'kernel', 'bias'}, ...}}` plus
  `'lin': {'lin0': [64], ..., 'lin4': [512]}` when the file holds LPIPS weights (any of
  `lin0..lin4`: then all five are required); float32 jnp arrays. Raises FileNotFoundError (with
  the command that creates the file) when it is missing, ValueError naming the layers on
  missing, extra, wrong-shape or non-finite entries (`weight_files.load_npz`).
  """
  expected = dict(expected_shapes())
  if path and os.path.exists(path):
    with np.load(path, allow_pickle=False) as data:
      lin_shapes = {f'lin{k}': (c,) for k, c in enumerate(STAGE_CHANNELS)}
      if set(lin_shapes) & set(data.files):
        expected.update(lin_shapes)
  nested = weight_files.load_npz(path, expected, WHAT, how_to_get(path))
  params: dict[str, Any] = {'vgg': {k: v for k, v in nested.items() if not k.startswith('lin')}}
  lin = {k: v for k, v in nested.items() if k.startswith('lin')}
  if lin:
    params['lin'] = lin
  return params


NETWORKS = ('vgg16_lpips', 'resnet50_logits')


def make_perceptual_loss(
  path: str | None, required: bool, dtype: Any = jnp.float32, network: str = 'vgg16_lpips'
) -> Any:
  """The perceptual loss of `network` built from the weights at `path`.

  network: 'vgg16_lpips' (this module's `PerceptualLoss`, VQGAN/MaskGIT) or 'resnet50_logits'
  (`resnet50.ResNet50LogitsLoss`, MAGVIT's squared distance of ResNet-50 logits); both have
  the same `apply(params, x, y)` / `params` interface.
  When the file is missing: `required=True` raises FileNotFoundError (with the
  command that creates the file); `required=False` emits one warning and returns
  None (the trainer then drops the perceptual term). A file that exists but is
  malformed always raises ValueError.
  """
  if network not in NETWORKS:
    raise ValueError(
      f'config.losses.perceptual_network={network!r}: expected one of {", ".join(NETWORKS)}'
    )
  if network == 'resnet50_logits':
    from magvit_jax.losses import resnet50  # pylint: disable=g-import-not-at-top

    load, build = resnet50.load_resnet50_weights, resnet50.ResNet50LogitsLoss
    missing = resnet50.missing_file_message(path or '')
  else:
    load, build = load_vgg16_weights, PerceptualLoss
    missing = missing_file_message(path or '')
  if not path or not os.path.exists(path):
    if required:
      return build(load(path or ''), dtype)  # raises FileNotFoundError
    warnings.warn(f'Perceptual loss disabled: {missing}', stacklevel=2)
    return None
  return build(load(path), dtype)

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
itself is a pure function of (params, x, y).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


def _unit_normalize(f: jax.Array, eps: float = 1e-10) -> jax.Array:
  # sqrt(sum f^2 + eps) rather than |f| + eps keeps the gradient finite where a
  # feature vector is exactly zero (all channels ReLU-dead).
  return f * jax.lax.rsqrt(jnp.sum(jnp.square(f), axis=-1, keepdims=True) + eps)


class PerceptualLoss:
  """LPIPS-style distance between two batches of images (or videos, per frame).

  Construct with params from `load_vgg16_weights`. `loss(x, y)` returns the
  batch-mean float32 scalar; `loss.per_example(x, y)` returns `[b]`.
  `loss.apply(params, x, y)` is the same function with explicit params, for a
  trainer that keeps the (frozen) weights in its state instead of closing over
  ~58 MB of constants inside jit.
  x, y: float `[b, H, W, 3]` or `[b, T, H, W, 3]` in [-1, 1], H, W >= 16.
  Gradients flow to x and y, never to the VGG params.
  """

  def __init__(self, params: Mapping[str, Any], dtype: Any = jnp.float32):
    self.params = params
    self.net = VGG16Features(dtype=dtype)

  def per_example_apply(self, params: Mapping[str, Any], x: jax.Array, y: jax.Array) -> jax.Array:
    if x.shape != y.shape:
      raise ValueError(f'perceptual loss: x {x.shape} and y {y.shape} differ')
    if x.ndim not in (4, 5) or x.shape[-1] != 3:
      raise ValueError(f'perceptual loss expects [b, H, W, 3] or [b, T, H, W, 3]; got {x.shape}')
    b = x.shape[0]
    if x.ndim == 5:  # videos: per frame, averaged over time.
      x = x.reshape((-1,) + x.shape[2:])
      y = y.reshape((-1,) + y.shape[2:])
    params = jax.lax.stop_gradient(params)
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    inp = jnp.concatenate([x, y], axis=0).astype(jnp.float32)
    inp = ((inp + 1.0) * 0.5 - mean) / std
    feats = self.net.apply({'params': params['vgg']}, inp)
    lin = params.get('lin')
    n = x.shape[0]
    total = jnp.zeros((n,), jnp.float32)
    for k, f in enumerate(feats):
      f = _unit_normalize(f.astype(jnp.float32))
      d = jnp.square(f[:n] - f[n:])  # [n, h, w, c]
      if lin is not None:
        d = d * lin[f'lin{k}']
      total = total + jnp.mean(jnp.sum(d, axis=-1), axis=(1, 2))
    return total.reshape(b, -1).mean(axis=1)

  def apply(self, params: Mapping[str, Any], x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(self.per_example_apply(params, x, y))

  def per_example(self, x: jax.Array, y: jax.Array) -> jax.Array:
    return self.per_example_apply(self.params, x, y)

  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    return self.apply(self.params, x, y)


def load_vgg16_weights(path: str) -> dict[str, Any]:
  """Reads and validates the VGG-16 (+ optional LPIPS) weights npz.

  Returns `{'vgg': {'conv1_1': {'kernel', 'bias'}, ...}}` plus
  `'lin': {'lin0': [64], ..., 'lin4': [512]}` when the file holds LPIPS weights;
  float32 jnp arrays. Raises FileNotFoundError (with the command that creates the
  file) when it is missing, ValueError naming the layer on a missing, extra,
  wrong-shape or non-finite entry.
  """
  if not path or not os.path.exists(path):
    raise FileNotFoundError(
      f'VGG-16 weights for the perceptual loss not found at {path!r}. Create them from '
      "torchvision's public vgg16-397923af.pth with:\n  "
      + CONVERT_COMMAND.format(path=path or 'vgg16.npz')
    )
  with np.load(path, allow_pickle=False) as data:
    arrays = {k: np.asarray(data[k]) for k in data.files}
  expected = dict(expected_shapes())
  lin_keys = [f'lin{k}' for k in range(len(STAGE_CHANNELS))]
  present_lin = [k for k in lin_keys if k in arrays]
  if present_lin:
    if len(present_lin) != len(lin_keys):
      missing = sorted(set(lin_keys) - set(present_lin))
      raise ValueError(f'{path}: LPIPS weights must hold all of {lin_keys}; missing {missing}')
    for k, c in zip(lin_keys, STAGE_CHANNELS):
      expected[k] = (c,)
  extra = sorted(set(arrays) - set(expected))
  if extra:
    raise ValueError(
      f'{path}: unexpected entries {extra[:5]}{"..." if len(extra) > 5 else ""}; expected '
      f'conv{{s}}_{{i}}/kernel|bias (and lin0..lin4). A raw torch state_dict must first be '
      f'converted: ' + CONVERT_COMMAND.format(path=path)
    )
  vgg: dict[str, dict[str, jax.Array]] = {}
  lin: dict[str, jax.Array] = {}
  for key, shape in expected.items():
    if key not in arrays:
      raise ValueError(f'{path}: layer {key!r} is missing (expected shape {shape})')
    value = arrays[key]
    if tuple(value.shape) != shape:
      raise ValueError(
        f'{path}: layer {key!r} has the wrong shape: expected {shape}, found {tuple(value.shape)}'
      )
    if not np.all(np.isfinite(value)):
      raise ValueError(f'{path}: layer {key!r} holds non-finite values')
    value = jnp.asarray(value, jnp.float32)
    if key.startswith('lin'):
      lin[key] = value
    else:
      layer, kind = key.split('/')
      vgg.setdefault(layer, {})[kind] = value
  params: dict[str, Any] = {'vgg': vgg}
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
    missing = f'VGG-16 weights not found at {path!r}. Create them with: ' + CONVERT_COMMAND.format(
      path=path or 'vgg16.npz'
    )
  if not path or not os.path.exists(path):
    if required:
      return build(load(path or ''), dtype)  # raises FileNotFoundError
    warnings.warn(f'Perceptual loss disabled: {missing}', stacklevel=2)
    return None
  return build(load(path), dtype)

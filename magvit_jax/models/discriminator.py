"""StyleGAN-style discriminators for images (2D) and videos (3D).

Architecture (StyleGAN2 residual discriminator, as used by MAGVIT):

  conv_in 3x3(x3) -> leaky-ReLU(0.2)
  for m in channel_multipliers:        # one residual down block per entry
    h    = lrelu(conv_0 3x3(x)) -> blur-pool -> lrelu(conv_1 3x3 (filters*m))
    skip = blur-pool(x) -> shortcut 1x1 (filters*m)
    x    = (h + skip) / sqrt(2)
  minibatch-stddev (group 4, +1 channel) -> lrelu(conv_final 3x3)
  [3D with pool_time: mean over the time axis] -> flatten -> lrelu(dense_0) -> dense_out
  -> logits [b]

No normalization layers. Blur-pool is a fixed, non-learned [1, 3, 3, 1] / 8
binomial low-pass filter applied depthwise (separable outer product over the
downsampled axes) followed by a stride-2 subsample, with zero padding so that an
axis of size n becomes ceil(n / 2). An axis that has already reached size 1 is
neither blurred nor strided, so inputs smaller than 2^len(multipliers) still work
(e.g. a 32x32 image reaches 1x1 after the fifth block; a 16x16 one stays 1x1).

3D: blur and stride 2 are applied in time *and* space (a separable 4x4x4 filter)
while the clip has more than one frame and `temporal_downsample` allows it for
that block; otherwise the block blurs and strides in space only. With the MAGVIT
setting (5 blocks) a 16-frame clip goes 16 -> 8 -> 4 -> 2 -> 1 -> 1.

Parameters carry logical axis names from the shared rule table: conv kernels
(`conv_0`, `conv_1`[, `conv_2`], `conv_in`, `conv_out`), biases (`conv_out`), dense
kernels (`conv_in`, `conv_out`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from magvit_jax.models.layers import conv

_BLUR_1D = np.array([1.0, 3.0, 3.0, 1.0], np.float32) / 8.0
_SPATIAL_LETTERS = 'DHW'


def leaky_relu(x: jax.Array) -> jax.Array:
  return nn.leaky_relu(x, negative_slope=0.2)


def blur_pool(x: jax.Array, down: Sequence[bool]) -> jax.Array:
  """Depthwise [1,3,3,1]/8 blur then stride-2 subsample on the flagged axes.

  Args:
    x: `[b, *spatial, c]` (spatial rank 1-3), any float dtype.
    down: one bool per spatial axis; True axes are blurred and strided by 2
      (size n -> ceil(n/2), zero padding), False axes are untouched.
  Returns:
    `[b, *spatial', c]` in x's dtype.
  """
  rank = x.ndim - 2
  down = tuple(bool(d) for d in down)
  if len(down) != rank:
    raise ValueError(f'blur_pool: {len(down)} flags for {rank} spatial axes')
  if not any(down):
    return x
  kernel = np.ones((), np.float32)
  padding = []
  for n, d in zip(x.shape[1:-1], down):
    kernel = np.multiply.outer(kernel, _BLUR_1D if d else np.ones((1,), np.float32))
    if d:
      total = max((math.ceil(n / 2) - 1) * 2 + 4 - n, 0)
      padding.append((total // 2, total - total // 2))
    else:
      padding.append((0, 0))
  c = x.shape[-1]
  kernel = jnp.broadcast_to(jnp.asarray(kernel, x.dtype)[..., None, None], kernel.shape + (1, c))
  letters = _SPATIAL_LETTERS[-rank:]
  dn = jax.lax.conv_dimension_numbers(
    x.shape, kernel.shape, ('N' + letters + 'C', letters + 'IO', 'N' + letters + 'C')
  )
  return jax.lax.conv_general_dilated(
    x,
    kernel,
    window_strides=tuple(2 if d else 1 for d in down),
    padding=padding,
    dimension_numbers=dn,
    feature_group_count=c,
  )


def minibatch_stddev(x: jax.Array, group_size: int = 4, eps: float = 1e-8) -> jax.Array:
  """StyleGAN minibatch standard deviation, appended as one extra channel.

  The batch is split into groups of `g = min(group_size, b)` examples (reduced to
  the largest divisor of b not above it); example n is in group n % (b / g), as in
  StyleGAN2. For each group the per-feature std over the group members,
  sqrt(var + eps), is averaged over every feature and location and broadcast to
  one channel. Identical examples therefore give sqrt(eps) = 1e-4, i.e. ~0.

  x: `[b, *spatial, c]` -> `[b, *spatial, c + 1]`, x's dtype.
  """
  b = x.shape[0]
  g = max(1, min(group_size, b))
  while b % g:
    g -= 1
  m = b // g
  y = x.astype(jnp.float32).reshape((g, m) + x.shape[1:])
  std = jnp.sqrt(jnp.var(y, axis=0) + eps)  # [m, *spatial, c]
  std = jnp.mean(std.reshape(m, -1), axis=-1)  # [m]
  std = jnp.tile(std, g)  # [b]: example n -> std[n % m]
  feat = jnp.broadcast_to(std.reshape((b,) + (1,) * (x.ndim - 1)), x.shape[:-1] + (1,))
  return jnp.concatenate([x, feat.astype(x.dtype)], axis=-1)


def _dense(features: int, name: str, dtype: Any) -> nn.Dense:
  return nn.Dense(
    features,
    dtype=dtype,
    kernel_init=nn.with_logical_partitioning(
      nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal'), ('conv_in', 'conv_out')
    ),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ('conv_out',)),
    name=name,
  )


class DownResBlock(nn.Module):
  """Residual block with blur-pool downsampling.

  x: `[b, *spatial, c_in]` -> `[b, *spatial', features]` where every spatial axis of
  size > 1 is halved (ceil); the first axis of a 3D input (time) only when
  `temporal_down` is True.
  """

  features: int
  temporal_down: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    rank = x.ndim - 2
    down = [n > 1 for n in x.shape[1:-1]]
    if rank == 3 and not self.temporal_down:
      down[0] = False
    k3 = (3,) * rank
    skip = blur_pool(x, down)
    skip = conv(self.features, (1,) * rank, 'shortcut', dtype=self.dtype)(skip)
    h = leaky_relu(conv(x.shape[-1], k3, 'conv_0', dtype=self.dtype)(x))
    h = blur_pool(h, down)
    h = leaky_relu(conv(self.features, k3, 'conv_1', dtype=self.dtype)(h))
    return (h + skip) * (1.0 / math.sqrt(2.0))


class _StyleGANDiscriminator(nn.Module):
  """Shared body; see the module docstring. Subclasses fix the input rank."""

  filters: int = 64
  channel_multipliers: Sequence[int] = (2, 4, 4, 4, 4)
  mbstd_group_size: int = 4
  dtype: Any = jnp.float32

  def _temporal_flags(self) -> Sequence[bool]:
    return (True,) * len(self.channel_multipliers)

  def _check_input(self, x: jax.Array) -> None:
    raise NotImplementedError

  def _pools_time(self) -> bool:
    return False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    self._check_input(x)
    rank = x.ndim - 2
    k3 = (3,) * rank
    x = jnp.asarray(x, self.dtype)
    x = leaky_relu(conv(self.filters, k3, 'conv_in', dtype=self.dtype)(x))
    temporal = self._temporal_flags()
    for i, mult in enumerate(self.channel_multipliers):
      x = DownResBlock(
        self.filters * mult, temporal_down=bool(temporal[i]), dtype=self.dtype, name=f'block_{i}'
      )(x)
    x = minibatch_stddev(x, self.mbstd_group_size)
    last = self.filters * (self.channel_multipliers[-1] if self.channel_multipliers else 1)
    x = leaky_relu(conv(last, k3, 'conv_final', dtype=self.dtype)(x))
    if self._pools_time():
      x = jnp.mean(x, axis=1)  # [b, T', H', W', C] -> [b, H', W', C]: the head is T-agnostic.
    x = x.reshape(x.shape[0], -1)
    x = leaky_relu(_dense(last, 'dense_0', self.dtype)(x))
    logits = _dense(1, 'dense_out', self.dtype)(x)
    return logits[:, 0].astype(jnp.float32)


class StyleGANDiscriminator2D(_StyleGANDiscriminator):
  """Image discriminator: float `[b, H, W, C]` (in [-1, 1]) -> float32 logits `[b]`.

  The final dense layer's input size depends on H, W: params are tied to the
  image resolution used at init.
  """

  def _check_input(self, x: jax.Array) -> None:
    if x.ndim != 4:
      raise ValueError(f'StyleGANDiscriminator2D expects images [b, H, W, C]; got shape {x.shape}')


class StyleGANDiscriminator3D(_StyleGANDiscriminator):
  """Video discriminator: float `[b, T, H, W, C]` (in [-1, 1]) -> float32 logits `[b]`.

  `temporal_downsample`: True/False for every block, or one bool per block; a
  block downsamples time (blur + stride 2) only where its flag is True and the
  clip still has more than one frame. Params are tied to the (T, H, W) used at init unless
  `pool_time` is True.

  `pool_time`: average the final features over time before the dense head, so one set of
  weights scores clips of any length T (only H, W stay tied to init): joint image-video
  training scores images as T=1 clips with the video discriminator. Every conv is
  T-agnostic; only the head's input size depends on T without pooling.
  """

  temporal_downsample: bool | Sequence[bool] = True
  pool_time: bool = False

  def _pools_time(self) -> bool:
    return bool(self.pool_time)

  def _temporal_flags(self) -> Sequence[bool]:
    flags = self.temporal_downsample
    n = len(self.channel_multipliers)
    if isinstance(flags, (bool, np.bool_)):
      return (bool(flags),) * n
    flags = tuple(flags)
    if len(flags) != n:
      raise ValueError(
        f'temporal_downsample has {len(flags)} entries; expected one per channel multiplier ({n})'
      )
    return flags

  def _check_input(self, x: jax.Array) -> None:
    if x.ndim != 5:
      raise ValueError(
        f'StyleGANDiscriminator3D expects videos [b, T, H, W, C]; got shape {x.shape}'
      )

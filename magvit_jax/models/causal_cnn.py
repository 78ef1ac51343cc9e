"""Causal 3D CNN tokenizer encoder/decoder (MAGVIT-v2), with exact streaming.

Videos are channels-last `float32 [b, t, h, w, c]`; an image is a 1-frame video.
With F = 2 ** sum(temporal_downsample) (4 in the paper) and
f = 2 ** (len(channel_multipliers) - 1) (8 in the paper):

  CausalEncoder: [b, 1 + F*k, H, W, 3]            -> [b, 1 + k, H/f, W/f, embedding_dim]
  CausalDecoder: [b, 1 + k, H/f, W/f, embedding_dim] -> [b, 1 + F*k, H, W, 3]

Frame 0 is always encoded on its own (latent frame 0 sees only frame 0), latent
frame i >= 1 sees frames <= F*i (it "covers" frames F*(i-1)+1 .. F*i), and
decoded frame n sees latent frames <= the one covering n. Hence one model
tokenizes both images and videos.

Design choices
--------------
* Causal padding: every `CausalConv3D` pads kt - 1 **zero** frames on the past side
  only (no padding on the future side) and pads h, w like 'SAME'. Zeros (rather
  than replicating frame 0) make a chunk's padding independent of its content,
  so streaming state is just "the last kt - stride_t padded input frames".
* Temporal stride s_t: a chunk must hold a multiple of s_t frames, except the
  first chunk of a video which holds 1 + s_t*m frames: it is left-padded with
  s_t - 1 more zero frames, so output 0 sees frame 0 only
  (T = 1 + s_t*m -> 1 + m, e.g. 1+4k -> 1+2k -> 1+k for kernel 3, stride 2).
* Normalisation is causal: GroupNorm statistics per frame (over h, w and the
  channel group), never across time. The decoder uses adaptive GroupNorm: a
  per-frame GroupNorm without affine params, then `x * (1 + scale) + bias`
  where (scale, bias) = Dense(latent) with the latent resized (nearest) to the
  current resolution causally (output frame n at temporal scale u takes latent
  frame 0 if n == 0 else 1 + (n - 1) // u).
* Other layouts (Open-MAGVIT2's 2D image tokenizer, ...) are options of `_CausalCNN`:
  kernel depth, padding, biases and the decoder's latent conditioning.
* Downsampling: strided causal convs (kernel 3x3x3, stride (2 or 1, 2, 2)).
  Upsampling: causal conv to c * s_t * 2 * 2 channels, depth-to-space, and for
  s_t = 2 the first (extra) output frame is dropped so frame 0 stays alone.

Streaming (exact, chunk by chunk)
---------------------------------
Every stream-aware submodule computes `(y, new_cache) = module(x, cache, first)`
where `cache` is a pytree of the trailing padded input frames of each causal
conv (None -> zeros) and `first` says whether the chunk starts the video. The
public modules wrap this in a `StreamState` (a flax struct whose `started` flag
is static, so `jax.jit` retraces once for the first chunk and once for the rest):

  enc = CausalEncoder(...);  dec = CausalDecoder(...)
  enc_vars = enc.init(key, video);  dec_vars = dec.init(key, latents)
  state = enc.init_stream_state(batch, height, width)   # unbound call, no params
  for chunk in chunks:   # first: 1 + 4m frames starting at frame 0, then 4m frames each
    z, state = enc.apply(enc_vars, state, chunk, method=enc.encode_chunk)
  dstate = dec.init_stream_state(batch, height, width)  # pixel height/width
  for zc in latent_chunks:  # first: 1 + m latent frames, then m each
    frames, dstate = dec.apply(dec_vars, dstate, zc, method=dec.decode_chunk)

Concatenating the chunk outputs along time equals `enc.apply(enc_vars, video)`
(resp. `dec.apply(dec_vars, latents)`) up to float rounding.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from magvit_jax.models import layers
from magvit_jax.models.layers import group_norm

Cache = Any  # pytree of float arrays [b, n, h, w, c] (or None), nested like the modules.


def _kernel_init(axes: tuple[str, ...]):
  return nn.with_logical_partitioning(
    nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal'), axes
  )


def _bias_init():
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), ('conv_out',))


def _get(cache: Cache, key: str) -> Cache:
  return None if cache is None else cache[key]


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """(low, high) padding of 'SAME' for one spatial axis (as XLA/TF compute it)."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


SPATIAL_PADDINGS = ('same', 'symmetric')


def _spatial_padding(mode: str, size: int, kernel: int, stride: int) -> tuple[int, int]:
  """(low, high) padding of one spatial axis: 'same' (XLA/TF 'SAME') or 'symmetric'
  (kernel // 2 on both sides, PyTorch's `padding=kernel // 2`). They differ only for even
  sizes with stride 2: 'same' pads (0, 1), output i sees inputs 2i .. 2i + 2; 'symmetric'
  pads (1, 1), output i sees inputs 2i - 1 .. 2i + 1."""
  if mode == 'same':
    return _same_padding(size, kernel, stride)
  if mode == 'symmetric':
    return kernel // 2, kernel // 2
  raise ValueError(f'spatial_padding={mode!r}: expected one of {SPATIAL_PADDINGS}')


def per_frame_group_norm(norm: nn.Module, x: jax.Array) -> jax.Array:
  """Applies an image GroupNorm to every frame: x [b, t, h, w, c] -> same shape.

  Statistics are over (h, w, channels of a group) of each frame separately.
  """
  b, t = x.shape[:2]
  return norm(x.reshape((b * t,) + x.shape[2:])).reshape(x.shape)


def depth_to_space(x: jax.Array, factors: Sequence[int]) -> jax.Array:
  """[b, t, h, w, c*st*sh*sw] -> [b, t*st, h*sh, w*sw, c] (channel order (st, sh, sw, c))."""
  st, sh, sw = factors
  b, t, h, w, cc = x.shape
  c = cc // (st * sh * sw)
  if c * st * sh * sw != cc:
    raise ValueError(f'channels {cc} not divisible by {st}*{sh}*{sw}')
  x = x.reshape(b, t, h, w, st, sh, sw, c)
  x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return x.reshape(b, t * st, h * sh, w * sw, c)


def causal_upsample_time(x: jax.Array, factor: int, first: bool) -> jax.Array:
  """Nearest causal temporal upsampling: [b, t, ...] -> [b, t*factor - (factor-1 if first), ...].

  Frame n of the result is input frame 0 if n == 0 (first chunk) else
  1 + (n - 1) // factor; in later chunks every frame is repeated `factor` times.
  """
  if factor == 1:
    return x
  x = jnp.repeat(x, factor, axis=1)
  return x[:, factor - 1 :] if first else x


def resize_latent(z: jax.Array, time_factor: int, space_factor: int, first: bool) -> jax.Array:
  """Causal nearest resize of latents [b, t, h, w, d] to a decoder level's resolution."""
  z = causal_upsample_time(z, time_factor, first)
  if space_factor > 1:
    z = jnp.repeat(jnp.repeat(z, space_factor, axis=2), space_factor, axis=3)
  return z


class CausalConv3D(nn.Module):
  """3D conv, causal in time, 'SAME' in space, optional strides.

  `__call__(x, cache=None, first=True) -> (y, new_cache)`:
    x: float [b, t, h, w, c_in]. If `first`, t = 1 + s_t*m and y has 1 + m frames;
      otherwise t = s_t*m and y has m frames. Spatial output ceil(h/s_h), ceil(w/s_w).
    cache: [b, kt - s_t, h, w, c_in], the last padded input frames of the previous
      chunk (None: zeros, i.e. the start of a video). new_cache: same shape (None
      when kt == s_t, e.g. 1x1x1 convs).
  Kernel [kt, kh, kw, c_in, features] with logical axes
  ('conv_0', 'conv_1', 'conv_2', 'conv_in', 'conv_out'); bias ('conv_out',), absent when
  `use_bias` is False. `spatial_padding`: 'same' or 'symmetric' (see `_spatial_padding`).
  """

  features: int
  kernel_size: Sequence[int] = (3, 3, 3)
  strides: Sequence[int] = (1, 1, 1)
  dtype: jnp.dtype = jnp.float32
  use_bias: bool = True
  spatial_padding: str = 'same'

  @nn.compact
  def __call__(
    self, x: jax.Array, cache: jax.Array | None = None, first: bool = True
  ) -> tuple[jax.Array, jax.Array | None]:
    kt, kh, kw = self.kernel_size
    st, sh, sw = self.strides
    if kt < st:
      raise ValueError(f'temporal kernel {kt} must be >= temporal stride {st}')
    if x.ndim != 5:
      raise ValueError(f'expected [b, t, h, w, c], got shape {x.shape}')
    b, t, h, w, c = x.shape
    n_cache = kt - st
    if first:
      if t % st != 1 % st:
        raise ValueError(f'the first chunk must have 1 + {st}*m frames, got {t}')
      lead = jnp.zeros((b, st - 1, h, w, c), x.dtype)
      if cache is None:
        cache = jnp.zeros((b, n_cache, h, w, c), x.dtype)
    else:
      if t % st:
        raise ValueError(f'chunks after the first must have {st}*m frames, got {t}')
      if cache is None and n_cache:
        raise ValueError('a chunk that does not start the video needs the cache')
      lead = jnp.zeros((b, 0, h, w, c), x.dtype)
    if n_cache:
      if cache.shape != (b, n_cache, h, w, c):
        raise ValueError(f'cache shape {cache.shape} != {(b, n_cache, h, w, c)}')
      padded = jnp.concatenate([cache.astype(x.dtype), lead, x], axis=1)
      new_cache = padded[:, padded.shape[1] - n_cache :]
    else:
      padded = jnp.concatenate([lead, x], axis=1) if first and st > 1 else x
      new_cache = None
    y = nn.Conv(
      self.features,
      (kt, kh, kw),
      strides=(st, sh, sw),
      padding=(
        (0, 0),
        _spatial_padding(self.spatial_padding, h, kh, sh),
        _spatial_padding(self.spatial_padding, w, kw, sw),
      ),
      use_bias=self.use_bias,
      dtype=self.dtype,
      kernel_init=_kernel_init(('conv_0', 'conv_1', 'conv_2', 'conv_in', 'conv_out')),
      bias_init=_bias_init(),
      name='conv',
    )(padded)
    return y, new_cache


class AdaptiveGroupNorm(nn.Module):
  """Per-frame GroupNorm whose scale and bias are predicted from a latent.

  x: [b, t, h, w, c]; cond: [b, t, h, w, d] (the latent already resized to x's
  resolution) -> [b, t, h, w, c] = norm(x) * (1 + scale) + bias, with
  (scale, bias) = Dense(cond) (kernel ('conv_in', 'conv_out')).
  """

  num_groups: int = 32
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
    if cond.shape[:4] != x.shape[:4]:
      raise ValueError(f'cond {cond.shape} must match x {x.shape} except channels')
    c = x.shape[-1]
    norm = nn.GroupNorm(
      num_groups=self.num_groups,
      epsilon=1e-6,
      use_scale=False,
      use_bias=False,
      dtype=self.dtype,
      name='norm',
    )
    x = per_frame_group_norm(norm, x)
    affine = nn.Dense(
      2 * c,
      dtype=self.dtype,
      kernel_init=_kernel_init(('conv_in', 'conv_out')),
      bias_init=_bias_init(),
      name='affine',
    )(cond)
    scale, bias = jnp.split(affine, 2, axis=-1)
    return x * (1.0 + scale) + bias


def latent_statistics(z: jax.Array, epsilon: float = 1e-6) -> tuple[jax.Array, jax.Array]:
  """Per-frame (mean, std) of latents z [b, t, h, w, d] over (h, w): two [b, t, d] arrays.

  std = sqrt(unbiased variance + epsilon) (divisor h*w - 1, as `torch.var`'s default; for a
  1x1 latent the divisor is 1, where torch would give NaN).
  """
  n = z.shape[2] * z.shape[3]
  mean = jnp.mean(z, axis=(2, 3))
  var = jnp.sum(jnp.square(z - mean[:, :, None, None]), axis=(2, 3)) / max(n - 1, 1)
  return mean, jnp.sqrt(var + epsilon)


class PooledAdaptiveGroupNorm(nn.Module):
  """Per-frame GroupNorm whose scale and bias are predicted from pooled latent statistics.

  x: [b, t, h, w, c]; mean, std: [b, t, d] (`latent_statistics` of the latent, resized in
  time to x's frames) -> norm(x) * Dense_gamma(std) + Dense_beta(mean), one (scale, bias)
  per frame and channel (Open-MAGVIT2's decoder AdaptiveGroupNorm). Dense kernels
  ('conv_in', 'conv_out').
  """

  num_groups: int = 32
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    if mean.shape[:2] != x.shape[:2] or std.shape != mean.shape:
      raise ValueError(f'mean {mean.shape} / std {std.shape} must be [b, t, d] of x {x.shape}')
    c = x.shape[-1]
    norm = nn.GroupNorm(
      num_groups=self.num_groups,
      epsilon=1e-6,
      use_scale=False,
      use_bias=False,
      dtype=self.dtype,
      name='norm',
    )
    x = per_frame_group_norm(norm, x)

    def dense(name):
      return nn.Dense(
        c,
        dtype=self.dtype,
        kernel_init=_kernel_init(('conv_in', 'conv_out')),
        bias_init=_bias_init(),
        name=name,
      )

    scale = dense('gamma')(std)[:, :, None, None]
    bias = dense('beta')(mean)[:, :, None, None]
    return x * scale + bias


class CausalResBlock(nn.Module):
  """norm -> swish -> causal conv3 -> norm -> swish -> causal conv3, plus a shortcut.

  The shortcut is a 1x1x1 conv on the block's input when channels change.
  Norms are per-frame GroupNorm, or AdaptiveGroupNorm on `cond` when `adaptive`.
  `conv_bias` False: the convs (and shortcut) have no bias. The 3x3 convs have kernel
  (temporal_kernel_size, 3, 3) and `spatial_padding` (see `CausalConv3D`).
  `__call__(x, cache=None, first=True, cond=None) -> (y, new_cache)`:
  x [b, t, h, w, c_in] -> y [b, t, h, w, features]; cache {'conv_0', 'conv_1'}.
  """

  features: int
  num_groups: int = 32
  adaptive: bool = False
  dtype: jnp.dtype = jnp.float32
  conv_bias: bool = True
  temporal_kernel_size: int = 3
  spatial_padding: str = 'same'

  def _conv(self, name: str, features: int, kernel_size: Sequence[int]) -> CausalConv3D:
    return CausalConv3D(
      features,
      kernel_size,
      dtype=self.dtype,
      use_bias=self.conv_bias,
      spatial_padding=self.spatial_padding,
      name=name,
    )

  def _norm(self, x: jax.Array, cond: jax.Array | None, name: str) -> jax.Array:
    if self.adaptive:
      if cond is None:
        raise ValueError('an adaptive block needs `cond`')
      return AdaptiveGroupNorm(self.num_groups, self.dtype, name=name)(x, cond)
    return per_frame_group_norm(group_norm(self.num_groups, name, self.dtype), x)

  @nn.compact
  def __call__(
    self, x: jax.Array, cache: Cache = None, first: bool = True, cond: jax.Array | None = None
  ) -> tuple[jax.Array, Cache]:
    new = {}
    residual = x
    kernel = (self.temporal_kernel_size, 3, 3)
    x = nn.swish(self._norm(x, cond, 'norm_0'))
    x, new['conv_0'] = self._conv('conv_0', self.features, kernel)(x, _get(cache, 'conv_0'), first)
    x = nn.swish(self._norm(x, cond, 'norm_1'))
    x, new['conv_1'] = self._conv('conv_1', self.features, kernel)(x, _get(cache, 'conv_1'), first)
    if residual.shape[-1] != self.features:
      residual, _ = self._conv('shortcut', self.features, (1, 1, 1))(residual, None, first)
    return x + residual, new


@flax.struct.dataclass
class StreamState:
  """Carried state of a streaming encoder/decoder.

  caches: pytree of the causal convs' trailing input frames (float arrays).
  started: static; False until the first chunk (which must start the video).
  """

  caches: Any
  started: bool = flax.struct.field(pytree_node=False, default=False)


def _check_temporal(
  channel_multipliers: Sequence[int], temporal_downsample: Sequence[bool]
) -> tuple[bool, ...]:
  """One flag per downsampling stage (len(channel_multipliers) - 1); a trailing
  extra False (one flag per level, last level never downsamples) is accepted."""
  n = len(channel_multipliers) - 1
  td = tuple(bool(v) for v in temporal_downsample)
  if len(td) == n + 1 and not td[-1]:
    td = td[:-1]
  if len(td) != n:
    raise ValueError(
      f'temporal_downsample {tuple(temporal_downsample)} must have one flag per '
      f'downsampling stage (len(channel_multipliers) - 1 = {n})'
    )
  return td


def _stream_shapes(module: nn.Module, x: jax.ShapeDtypeStruct, method: str) -> Cache:
  """Zero caches for `module`'s `method(x, None, True) -> (y, caches)` (abstract trace only)."""
  if module.scope is not None:
    module = module.clone(parent=None)

  def caches(x):
    (_, c), _ = module.init_with_output(jax.random.key(0), x, None, True, method=method)
    return c

  shapes = jax.eval_shape(caches, x)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


ADAPTIVE_NORMS = ('every_norm', 'level_start')


class _CausalCNN(nn.Module):
  """The attributes shared by `CausalEncoder` and `CausalDecoder`, and the factors they imply.

  Architecture options (defaults: the MAGVIT-v2 layout above; Open-MAGVIT2's image
  tokenizer is temporal_kernel_size=1, spatial_padding='symmetric', res_conv_bias=False,
  encoder_in_bias=False, adaptive_norm='level_start'):
    temporal_kernel_size: kt of every 3x3 conv ((kt, 3, 3) kernels). 1 makes the network a
      per-frame 2D CNN (then temporal_downsample must be all False).
    spatial_padding: 'same' or 'symmetric' (PyTorch `padding=1`); differs for the strided
      downsampling convs only.
    res_conv_bias: whether the residual blocks' convs and shortcuts have a bias.
    encoder_in_bias: whether the encoder's first conv has a bias.
    adaptive_norm: the decoder's conditioning on the latent. 'every_norm': every decoder
      norm is an `AdaptiveGroupNorm` on the latent resized to its resolution.
      'level_start': the decoder's blocks and norm_out use plain GroupNorm and each level
      starts with one `PooledAdaptiveGroupNorm` (`up_<level>_norm`) on the latent's per-frame
      mean and std.
    remat_policy: a key of the transformer's REMAT_POLICIES; not 'none': each residual block
      is wrapped in `nn.remat` with that policy (same params and outputs, less activation
      memory in the backward pass).
  """

  filters: int = 128
  channel_multipliers: Sequence[int] = (1, 2, 2, 4)
  num_res_blocks: int = 4
  temporal_downsample: Sequence[bool] = (False, True, True)
  embedding_dim: int = 18
  num_groups: int = 32
  channels: int = 3
  dtype: jnp.dtype = jnp.float32
  temporal_kernel_size: int = 3
  spatial_padding: str = 'same'
  res_conv_bias: bool = True
  encoder_in_bias: bool = True
  adaptive_norm: str = 'every_norm'
  remat_policy: str = 'none'

  def _conv(self, features: int, name: str, **kwargs: Any) -> CausalConv3D:
    """A (temporal_kernel_size, 3, 3) causal conv (unless kernel_size is given)."""
    kwargs.setdefault('kernel_size', (self.temporal_kernel_size, 3, 3))
    return CausalConv3D(
      features, dtype=self.dtype, spatial_padding=self.spatial_padding, name=name, **kwargs
    )

  def _block(self, features: int, name: str, adaptive: bool = False) -> CausalResBlock:
    # remat_policy != 'none': nn.remat of the block; `first` (argument 3) is a Python bool.
    block_cls = layers.remat(CausalResBlock, self.remat_policy, static_argnums=(3,))
    return block_cls(
      features,
      self.num_groups,
      adaptive=adaptive,
      dtype=self.dtype,
      conv_bias=self.res_conv_bias,
      temporal_kernel_size=self.temporal_kernel_size,
      spatial_padding=self.spatial_padding,
      name=name,
    )

  @property
  def temporal_factor(self) -> int:
    return 2 ** sum(_check_temporal(self.channel_multipliers, self.temporal_downsample))

  @property
  def spatial_factor(self) -> int:
    return 2 ** (len(self.channel_multipliers) - 1)


class CausalEncoder(_CausalCNN):
  """Causal 3D CNN encoder: [b, 1 + F*k, H, W, c] -> [b, 1 + k, H/f, W/f, embedding_dim].

  F = 2 ** sum(temporal_downsample), f = 2 ** (len(channel_multipliers) - 1).
  Level i has `num_res_blocks` blocks of filters * channel_multipliers[i]
  channels, then (except the last level) a strided causal conv with stride
  (2 if temporal_downsample[i] else 1, 2, 2). The paper's video tokenizer:
  filters 128, channel_multipliers (1, 2, 2, 4), num_res_blocks 4,
  temporal_downsample (False, True, True), embedding_dim 18 (17 frames -> 5).
  """

  def _validate(self, x: jax.Array, first: bool) -> None:
    f, ft = self.spatial_factor, self.temporal_factor
    if x.ndim != 5 or x.shape[-1] != self.channels:
      raise ValueError(
        f'video must be [batch, time, height, width, {self.channels}], got shape {x.shape}'
      )
    if x.shape[2] % f or x.shape[3] % f:
      raise ValueError(f'height/width {x.shape[2:4]} must be divisible by {f}')
    t = x.shape[1]
    if first and t % ft != 1 % ft:
      raise ValueError(f'a video (or first chunk) must have 1 + {ft}*k frames, got {t}')
    if not first and (t % ft or t == 0):
      raise ValueError(f'chunks after the first must have {ft}*m frames (m >= 1), got {t}')

  @nn.compact
  def forward(self, x: jax.Array, cache: Cache, first: bool) -> tuple[jax.Array, Cache]:
    td = _check_temporal(self.channel_multipliers, self.temporal_downsample)
    new = {}
    x, new['conv_in'] = self._conv(self.filters, 'conv_in', use_bias=self.encoder_in_bias)(
      x, _get(cache, 'conv_in'), first
    )
    for level, mult in enumerate(self.channel_multipliers):
      for i in range(self.num_res_blocks):
        name = f'down_{level}_res_{i}'
        x, new[name] = self._block(self.filters * mult, name)(x, _get(cache, name), first)
      if level < len(self.channel_multipliers) - 1:
        name = f'down_{level}_conv'
        x, new[name] = self._conv(x.shape[-1], name, strides=(2 if td[level] else 1, 2, 2))(
          x, _get(cache, name), first
        )
    for i in range(self.num_res_blocks):
      name = f'mid_res_{i}'
      x, new[name] = self._block(x.shape[-1], name)(x, _get(cache, name), first)
    x = nn.swish(per_frame_group_norm(group_norm(self.num_groups, 'norm_out', self.dtype), x))
    x, _ = CausalConv3D(self.embedding_dim, (1, 1, 1), dtype=self.dtype, name='conv_out')(
      x, None, first
    )
    return x, new

  def __call__(self, video: jax.Array) -> jax.Array:
    """video: float32 [b, 1 + F*k, H, W, c] -> latents [b, 1 + k, H/f, W/f, embedding_dim]."""
    self._validate(video, True)
    return self.forward(video, None, True)[0]

  def encode_chunk(self, state: StreamState, frames: jax.Array) -> tuple[jax.Array, StreamState]:
    """Streams one chunk: frames [b, 1 + F*m (first) or F*m, H, W, c] -> latents
    [b, 1 + m (first) or m, H/f, W/f, embedding_dim] and the updated state."""
    first = not state.started
    self._validate(frames, first)
    z, caches = self.forward(frames, state.caches, first)
    return z, StreamState(caches, started=True)

  def init_stream_state(self, batch: int, height: int, width: int) -> StreamState:
    """Zero state for a video of `height` x `width` pixels. Call it on the module
    object itself (`encoder.init_stream_state(...)`, no params needed)."""
    x = jax.ShapeDtypeStruct((batch, 1, height, width, self.channels), jnp.float32)
    return StreamState(_stream_shapes(self, x, 'forward'), started=False)


class CausalDecoder(_CausalCNN):
  """Causal 3D CNN decoder: [b, 1 + k, H/f, W/f, embedding_dim] -> [b, 1 + F*k, H, W, c].

  Mirror of `CausalEncoder` (same attributes): conv_in, mid blocks, then from the
  last level down: `num_res_blocks` blocks of filters * channel_multipliers[level]
  and (level > 0) a depth-to-space upsampling by (2 if temporal_downsample[level-1]
  else 1, 2, 2); all norms are AdaptiveGroupNorm conditioned on the input latent
  (adaptive_norm='every_norm'; 'level_start': see `_CausalCNN`).
  """

  def _validate(self, z: jax.Array, first: bool) -> None:
    if z.ndim != 5 or z.shape[-1] != self.embedding_dim:
      raise ValueError(
        f'latents must be [batch, time, h, w, {self.embedding_dim}], got shape {z.shape}'
      )
    if z.shape[1] < 1:
      raise ValueError(f'need at least one latent frame, got shape {z.shape}')

  @nn.compact
  def forward(self, z: jax.Array, cache: Cache, first: bool) -> tuple[jax.Array, Cache]:
    td = _check_temporal(self.channel_multipliers, self.temporal_downsample)
    if self.adaptive_norm not in ADAPTIVE_NORMS:
      raise ValueError(f'adaptive_norm={self.adaptive_norm!r}: expected one of {ADAPTIVE_NORMS}')
    every = self.adaptive_norm == 'every_norm'
    mults = tuple(self.channel_multipliers)
    new = {}
    x, new['conv_in'] = self._conv(self.filters * mults[-1], 'conv_in')(
      z, _get(cache, 'conv_in'), first
    )
    cond, time_up, space_up = z, 1, 1
    stats = None if every else latent_statistics(z)
    for i in range(self.num_res_blocks):
      name = f'mid_res_{i}'
      x, new[name] = self._block(x.shape[-1], name, every)(x, _get(cache, name), first, cond)
    for level in reversed(range(len(mults))):
      if not every:
        mean, std = (causal_upsample_time(v, time_up, first) for v in stats)
        x = PooledAdaptiveGroupNorm(self.num_groups, self.dtype, name=f'up_{level}_norm')(
          x, mean, std
        )
      for i in range(self.num_res_blocks):
        name = f'up_{level}_res_{i}'
        x, new[name] = self._block(self.filters * mults[level], name, every)(
          x, _get(cache, name), first, cond
        )
      if level > 0:
        s_t = 2 if td[level - 1] else 1
        c = x.shape[-1]
        name = f'up_{level}_conv'
        x, new[name] = self._conv(c * s_t * 4, name)(x, _get(cache, name), first)
        x = depth_to_space(x, (s_t, 2, 2))
        if first and s_t > 1:
          x = x[:, s_t - 1 :]  # frame 0 stays alone: 1 + k -> 1 + s_t*k
        time_up, space_up = time_up * s_t, space_up * 2
        if every:
          cond = resize_latent(z, time_up, space_up, first)
    if every:
      x = AdaptiveGroupNorm(self.num_groups, self.dtype, name='norm_out')(x, cond)
    else:
      x = per_frame_group_norm(group_norm(self.num_groups, 'norm_out', self.dtype), x)
    x, new['conv_out'] = self._conv(self.channels, 'conv_out')(
      nn.swish(x), _get(cache, 'conv_out'), first
    )
    return x, new

  def __call__(self, latents: jax.Array) -> jax.Array:
    """latents: [b, 1 + k, h, w, embedding_dim] -> video float32 [b, 1 + F*k, h*f, w*f, c]."""
    self._validate(latents, True)
    return self.forward(latents, None, True)[0]

  def decode_chunk(self, state: StreamState, latents: jax.Array) -> tuple[jax.Array, StreamState]:
    """Streams one chunk: latents [b, 1 + m (first) or m, h, w, embedding_dim] ->
    frames [b, 1 + F*m (first) or F*m, h*f, w*f, c] and the updated state."""
    first = not state.started
    self._validate(latents, first)
    x, caches = self.forward(latents, state.caches, first)
    return x, StreamState(caches, started=True)

  def init_stream_state(self, batch: int, height: int, width: int) -> StreamState:
    """Zero state for decoding a video of `height` x `width` *pixels* (latent grid
    height/f x width/f). Call it on the module object itself, no params needed."""
    f = self.spatial_factor
    if height % f or width % f:
      raise ValueError(f'height/width {(height, width)} must be divisible by {f}')
    z = jax.ShapeDtypeStruct((batch, 1, height // f, width // f, self.embedding_dim), jnp.float32)
    return StreamState(_stream_shapes(self, z, 'forward'), started=False)

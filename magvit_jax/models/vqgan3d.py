"""MAGVIT 3D-VQ tokenizer (a VQGAN with 3D convolutions) and 2D -> 3D inflation.

Videos `[batch, T, H, W, 3]` float32 in [-1, 1] are encoded to latents
`[batch, T/ft, H/f, W/f, embedding_dim]` with f = 2^(len(channel_multipliers) - 1)
and ft = 2^sum(temporal_downsample), quantized by a lookup codebook to tokens
`[batch, T/ft, H/f, W/f]` int32, and decoded back to `[batch, T, H, W, 3]`.

MAGVIT (Yu et al., CVPR 2023) 3D-VQ: 16x128x128 -> 4x16x16 tokens; B / L: filters
64 / 128, 2 residual blocks per level, channel multipliers (1, 2, 2, 4), temporal
downsampling (True, True, False) per downsampling level, codebook 1024 x 256,
GroupNorm + swish, average-pool downsampling, nearest + conv upsampling.

The module tree mirrors `vqgan.VQGAN` name for name (encoder / quantizer /
decoder, conv_in, down_{level}_res_{i}, mid_res_{i}, up_{level}_res_{i},
up_{level}_conv, norm_out, conv_out; ResBlock norm_0 / conv_0 / norm_1 / conv_1 /
shortcut): every 2D kernel `[kh, kw, cin, cout]` has a 3D counterpart
`[kt, kh, kw, cin, cout]` (3x3 -> 3x3x3, 1x1 -> 1x1x1) and every other parameter
has the same shape, so `inflate_params` maps a trained 2D VQGAN 1:1 onto a
`VQGAN3D` ('central' inflation: the 2D kernel in the middle temporal slice,
zeros elsewhere; 'average': the 2D kernel / kt in every slice).

Convolutions pad time explicitly (`temporal_padding`: 'edge' replicates the
first / last frame, 'constant' pads zeros) and pad height / width with zeros,
like the 2D model's SAME. With 'edge' padding a static video (one image repeated
over time) is reconstructed by an inflated model exactly as the 2D model
reconstructs the image, for both inflation methods. GroupNorm statistics are
taken over (T, H, W) and the channel group.

Options that reproduce the official MAGVIT 3D-VQ (google-research/magvit,
videogvt/models/enc_dec_3dcnn.py; configs/magvit_ucf101.py:official_B etc.,
docs/pretrained.md); their defaults are this project's own 3D-VQ:
  temporal_padding='constant'  zeros in time too (the official convs are flax 'SAME');
  res_conv_bias=False          no biases on the residual blocks' convs (shortcut included);
  encoder_in_bias=False        no bias on the encoder's first conv;
  pixel_range='unit'           the networks see [0, 1] pixels: `encode` maps its [-1, 1]
                               input to (x + 1) / 2, `decode` / `decode_tokens` map the
                               output y to 2y - 1.
Parameter conversion: magvit_jax/convert/magvit_3dvq.py.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from magvit_jax.models import layers
from magvit_jax.quantizers.vq import VectorQuantizer

TEMPORAL_PADDINGS = ('edge', 'constant')
PIXEL_RANGES = ('signed', 'unit')
INFLATION_METHODS = ('central', 'average')


def _check_temporal_padding(temporal_padding: str) -> None:
  if temporal_padding not in TEMPORAL_PADDINGS:
    raise ValueError(
      f'temporal_padding must be one of {TEMPORAL_PADDINGS}, got {temporal_padding!r}'
    )


class Conv3D(nn.Module):
  """Stride-1 3D conv with explicit temporal padding and zero spatial padding.

  x: [b, t, h, w, c_in] -> [b, t, h, w, features]. Time is padded by
  (kt - 1) // 2 frames before and kt - 1 - (kt - 1) // 2 after (replicated edge
  frames for 'edge', zeros for 'constant'); height / width are zero padded the
  same way (SAME). Parameters `kernel` [kt, kh, kw, c_in, features] (logical
  axes conv_0, conv_1, conv_2, conv_in, conv_out) and, unless `use_bias` is
  False, `bias` [features] (conv_out), initialised like `layers.conv`.
  """

  features: int
  kernel_size: Sequence[int] = (3, 3, 3)
  temporal_padding: str = 'edge'
  dtype: jnp.dtype = jnp.float32
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _check_temporal_padding(self.temporal_padding)
    kernel_size = tuple(self.kernel_size)
    if len(kernel_size) != 3:
      raise ValueError(f'Conv3D kernel_size must be (kt, kh, kw), got {kernel_size}')
    if x.ndim != 5:
      raise ValueError(
        f'Conv3D input must be [batch, frames, height, width, channels], got shape {x.shape}'
      )
    kernel = self.param(
      'kernel',
      nn.with_logical_partitioning(
        nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal'),
        ('conv_0', 'conv_1', 'conv_2', 'conv_in', 'conv_out'),
      ),
      kernel_size + (x.shape[-1], self.features),
      jnp.float32,
    )
    pads = [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel_size]
    if pads[0] != (0, 0):
      mode = 'edge' if self.temporal_padding == 'edge' else 'constant'
      x = jnp.pad(x, ((0, 0), pads[0], (0, 0), (0, 0), (0, 0)), mode=mode)
    y = jax.lax.conv_general_dilated(
      x.astype(self.dtype),
      kernel.astype(self.dtype),
      window_strides=(1, 1, 1),
      padding=[(0, 0), pads[1], pads[2]],
      dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'),
    )
    if not self.use_bias:
      return y
    bias = self.param(
      'bias',
      nn.with_logical_partitioning(nn.initializers.zeros_init(), ('conv_out',)),
      (self.features,),
      jnp.float32,
    )
    return y + bias.astype(self.dtype)


class ResBlock3D(nn.Module):
  """3D `layers.ResBlock`: GN -> swish -> conv3x3x3 -> GN -> swish -> conv3x3x3 (+ shortcut).

  The shortcut is a 1x1x1 conv of the block's input when the channel count
  changes, else the identity. x: [b, t, h, w, c_in] -> [b, t, h, w, features].
  `use_bias=False`: none of the three convs has a bias (the official MAGVIT block).
  """

  features: int
  num_groups: int = 32
  temporal_padding: str = 'edge'
  dtype: jnp.dtype = jnp.float32
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    residual = x
    x = nn.swish(layers.group_norm(self.num_groups, 'norm_0', self.dtype)(x))
    tp, bias = self.temporal_padding, self.use_bias
    x = Conv3D(self.features, (3, 3, 3), tp, self.dtype, bias, name='conv_0')(x)
    x = nn.swish(layers.group_norm(self.num_groups, 'norm_1', self.dtype)(x))
    x = Conv3D(self.features, (3, 3, 3), tp, self.dtype, bias, name='conv_1')(x)
    if residual.shape[-1] != self.features:
      residual = Conv3D(self.features, (1, 1, 1), tp, self.dtype, bias, name='shortcut')(residual)
    return x + residual


def downsample_3d(x: jax.Array, temporal: bool) -> jax.Array:
  """Average pooling 2x2x2 (temporal) or 1x2x2. [b, t, h, w, c] -> [b, t/2 or t, h/2, w/2, c]."""
  window = (2, 2, 2) if temporal else (1, 2, 2)
  return nn.avg_pool(x, window, strides=window)


def upsample_3d(x: jax.Array, temporal: bool) -> jax.Array:
  """Nearest 2x upsampling of h, w (and t if temporal). [b, t, h, w, c] -> [b, 2t or t, 2h, 2w, c]."""
  if temporal:
    x = jnp.repeat(x, 2, axis=1)
  return jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)


def _check_temporal_downsample(
  channel_multipliers: Sequence[int], temporal_downsample: Sequence[bool]
) -> None:
  if len(tuple(temporal_downsample)) != len(tuple(channel_multipliers)) - 1:
    raise ValueError(
      f'temporal_downsample needs one entry per downsampling level '
      f'(len(channel_multipliers) - 1 = {len(tuple(channel_multipliers)) - 1}), '
      f'got {tuple(temporal_downsample)}'
    )


class Encoder3D(nn.Module):
  """[b, T, H, W, 3] -> [b, T/ft, H/f, W/f, embedding_dim]."""

  filters: int
  channel_multipliers: Sequence[int]
  num_res_blocks: int
  embedding_dim: int
  temporal_downsample: Sequence[bool]
  num_groups: int = 32
  temporal_padding: str = 'edge'
  res_conv_bias: bool = True
  in_bias: bool = True
  remat_policy: str = 'none'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _check_temporal_downsample(self.channel_multipliers, self.temporal_downsample)
    tp, rb = self.temporal_padding, self.res_conv_bias
    block_cls = layers.remat(ResBlock3D, self.remat_policy)
    x = Conv3D(self.filters, (3, 3, 3), tp, use_bias=self.in_bias, name='conv_in')(x)
    for level, mult in enumerate(self.channel_multipliers):
      for i in range(self.num_res_blocks):
        x = block_cls(
          self.filters * mult, self.num_groups, tp, use_bias=rb, name=f'down_{level}_res_{i}'
        )(x)
      if level < len(self.channel_multipliers) - 1:
        x = downsample_3d(x, bool(self.temporal_downsample[level]))
    for i in range(self.num_res_blocks):
      x = block_cls(x.shape[-1], self.num_groups, tp, use_bias=rb, name=f'mid_res_{i}')(x)
    x = nn.swish(layers.group_norm(self.num_groups, 'norm_out')(x))
    return Conv3D(self.embedding_dim, (1, 1, 1), tp, name='conv_out')(x)


class Decoder3D(nn.Module):
  """[b, t, h, w, embedding_dim] -> [b, t*ft, h*f, w*f, 3].

  Level `level > 0` upsamples time iff the encoder's downsampling after level
  `level - 1` did (`temporal_downsample[level - 1]`).
  """

  filters: int
  channel_multipliers: Sequence[int]
  num_res_blocks: int
  temporal_downsample: Sequence[bool]
  num_groups: int = 32
  temporal_padding: str = 'edge'
  res_conv_bias: bool = True
  remat_policy: str = 'none'

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    _check_temporal_downsample(self.channel_multipliers, self.temporal_downsample)
    mults = tuple(self.channel_multipliers)
    tp, rb = self.temporal_padding, self.res_conv_bias
    block_cls = layers.remat(ResBlock3D, self.remat_policy)
    x = Conv3D(self.filters * mults[-1], (3, 3, 3), tp, name='conv_in')(z)
    for i in range(self.num_res_blocks):
      x = block_cls(x.shape[-1], self.num_groups, tp, use_bias=rb, name=f'mid_res_{i}')(x)
    for level in reversed(range(len(mults))):
      for i in range(self.num_res_blocks):
        x = block_cls(
          self.filters * mults[level], self.num_groups, tp, use_bias=rb, name=f'up_{level}_res_{i}'
        )(x)
      if level > 0:
        x = upsample_3d(x, bool(self.temporal_downsample[level - 1]))
        x = Conv3D(x.shape[-1], (3, 3, 3), tp, name=f'up_{level}_conv')(x)
    x = nn.swish(layers.group_norm(self.num_groups, 'norm_out')(x))
    return Conv3D(3, (3, 3, 3), tp, name='conv_out')(x)


class VQGAN3D(nn.Module):
  """Encoder3D -> VectorQuantizer -> Decoder3D (MAGVIT 3D-VQ).

  `__call__(videos)` returns `(reconstructions, aux)` where aux holds the
  quantizer's outputs (`tokens` [b, t, h, w] int32, `loss`, `usage`,
  `perplexity`, ...).
  """

  filters: int = 64
  channel_multipliers: Sequence[int] = (1, 2, 2, 4)
  num_res_blocks: int = 2
  embedding_dim: int = 256
  codebook_size: int = 1024
  commitment_cost: float = 0.25
  num_groups: int = 32
  temporal_downsample: Sequence[bool] = (True, True, False)
  temporal_padding: str = 'edge'
  # The official MAGVIT 3D-VQ's options (module docstring; defaults: this project's 3D-VQ).
  res_conv_bias: bool = True
  encoder_in_bias: bool = True
  pixel_range: str = 'signed'
  # A key of the transformer's REMAT_POLICIES: each residual block of the encoder and decoder
  # is wrapped in `nn.remat` with that policy ('none': no remat, the same model and params).
  remat_policy: str = 'none'
  causal: ClassVar[bool] = False  # Frames are padded on both sides in time.

  def setup(self):
    _check_temporal_downsample(self.channel_multipliers, self.temporal_downsample)
    _check_temporal_padding(self.temporal_padding)
    if self.pixel_range not in PIXEL_RANGES:
      raise ValueError(f'VQGAN3D pixel_range={self.pixel_range!r}: expected one of {PIXEL_RANGES}')
    self.encoder = Encoder3D(
      self.filters,
      self.channel_multipliers,
      self.num_res_blocks,
      self.embedding_dim,
      self.temporal_downsample,
      self.num_groups,
      self.temporal_padding,
      self.res_conv_bias,
      self.encoder_in_bias,
      self.remat_policy,
    )
    self.quantizer = VectorQuantizer(self.codebook_size, self.commitment_cost)
    self.decoder = Decoder3D(
      self.filters,
      self.channel_multipliers,
      self.num_res_blocks,
      self.temporal_downsample,
      self.num_groups,
      self.temporal_padding,
      self.res_conv_bias,
      self.remat_policy,
    )

  def _pixels_out(self, y: jax.Array) -> jax.Array:
    return y * 2.0 - 1.0 if self.pixel_range == 'unit' else y

  @property
  def downsample_factor(self) -> int:
    """Spatial downsampling factor f = 2^(len(channel_multipliers) - 1)."""
    return 2 ** (len(self.channel_multipliers) - 1)

  @property
  def temporal_downsample_factor(self) -> int:
    """Temporal downsampling factor ft = 2^sum(temporal_downsample)."""
    return 2 ** sum(bool(d) for d in self.temporal_downsample)

  def token_shape(self, input_shape: Sequence[int]) -> tuple[int, int, int]:
    """Token grid (t, h, w) of one video of shape (T, H, W, 3)."""
    if len(input_shape) != 4:
      raise ValueError(f'the 3D-VQ codes videos (T, H, W, 3), got an input of shape {input_shape}')
    ft, f = self.temporal_downsample_factor, self.downsample_factor
    return (int(input_shape[0]) // ft, int(input_shape[1]) // f, int(input_shape[2]) // f)

  def encode(self, videos: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """videos: [b, T, H, W, 3] float32 in [-1, 1] -> (quantized [b, t, h, w, d], aux)."""
    if videos.ndim != 5 or videos.shape[-1] != 3:
      raise ValueError(
        f'videos must be [batch, frames, height, width, 3], got shape {videos.shape}'
      )
    ft, f = self.temporal_downsample_factor, self.downsample_factor
    if videos.shape[1] % ft:
      raise ValueError(
        f'number of frames {videos.shape[1]} must be divisible by the temporal '
        f'downsampling factor {ft} (2^sum(temporal_downsample))'
      )
    if videos.shape[2] % f or videos.shape[3] % f:
      raise ValueError(
        f'video height/width {videos.shape[2:4]} must be divisible by the '
        f'downsampling factor {f} (len(channel_multipliers) - 1 halvings)'
      )
    if self.pixel_range == 'unit':
      videos = (videos + 1.0) * 0.5
    return self.quantizer(self.encoder(videos))

  def decode(self, quantized: jax.Array) -> jax.Array:
    """quantized: [b, t, h, w, d] -> videos [b, T, H, W, 3] float32 (unclipped)."""
    if quantized.ndim != 5:
      raise ValueError(
        f'quantized latents must be [batch, frames, height, width, '
        f'embedding_dim], got shape {quantized.shape}'
      )
    return self._pixels_out(self.decoder(quantized))

  def decode_tokens(self, tokens: jax.Array) -> jax.Array:
    """tokens: [b, t, h, w] int32 -> videos [b, T, H, W, 3] float32."""
    if tokens.ndim != 4:
      raise ValueError(f'tokens must be [batch, frames, height, width], got shape {tokens.shape}')
    return self._pixels_out(self.decoder(self.quantizer.lookup(tokens)))

  def __call__(self, videos: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    quantized, aux = self.encode(videos)
    return self.decode(quantized), aux


# ----------------------------------------------------------------------------- inflation


def _is_box(x: Any) -> bool:
  return isinstance(x, nn.meta.AxisMetadata)


def _path_str(path) -> str:
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(str(k.name))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    else:
      parts.append(str(k))
  return '/'.join(parts)


def inflate_kernel(kernel_2d: jax.Array, kt: int, method: str = 'central') -> jax.Array:
  """Inflates a 2D conv kernel [kh, kw, cin, cout] to [kt, kh, kw, cin, cout].

  'central': zeros except the middle temporal slice (index kt // 2) = kernel_2d.
  'average': kernel_2d / kt in every temporal slice.
  Either way a static input (same frame repeated, edge-padded in time) gives the
  2D conv's output on every frame; kt == 1 just adds the axis.
  """
  if method not in INFLATION_METHODS:
    raise ValueError(f'unknown inflation method {method!r}, expected one of {INFLATION_METHODS}')
  kernel_2d = jnp.asarray(kernel_2d)
  if kt == 1:
    return kernel_2d[None]
  if method == 'average':
    return jnp.broadcast_to(kernel_2d[None] / kt, (kt,) + kernel_2d.shape)
  return jnp.zeros((kt,) + kernel_2d.shape, kernel_2d.dtype).at[kt // 2].set(kernel_2d)


def inflate_params(params_2d: Any, params_3d: Any, method: str = 'central') -> Any:
  """Maps 2D `VQGAN` params onto a `VQGAN3D` params tree.

  Args:
    params_2d: params (or variables) of a 2D `VQGAN` with the same filters,
      channel multipliers, residual blocks, embedding dim and codebook size;
      plain arrays or boxed `nn.LogicallyPartitioned` leaves.
    params_3d: the matching `VQGAN3D` tree (e.g. from `VQGAN3D(...).init` or
      `jax.eval_shape` of it); only its structure, shapes, dtypes and boxing are
      used. Both trees must have the same nesting (e.g. both with or both
      without the top-level 'params' key).
    method: 'central' or 'average' (see `inflate_kernel`).

  Returns:
    A tree like `params_3d` (same structure and boxing) holding the inflated 2D
    values: each conv `kernel` [kh, kw, cin, cout] -> [kt, kh, kw, cin, cout]
    with kt from the template; biases, norms and the codebook copied.

  Raises:
    ValueError: for an unknown method, or when the trees do not match
      (missing / extra parameters, or a shape that does not inflate to the
      template's), naming the parameter path and the expected vs found shape.
  """
  if method not in INFLATION_METHODS:
    raise ValueError(f'unknown inflation method {method!r}, expected one of {INFLATION_METHODS}')
  flat_2d = {
    _path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(nn.unbox(params_2d))[0]
  }
  leaves_3d, treedef = jax.tree_util.tree_flatten_with_path(params_3d, is_leaf=_is_box)
  used = set()
  out = []
  for path, leaf in leaves_3d:
    name = _path_str(path)
    target = leaf.unbox() if _is_box(leaf) else leaf
    shape, dtype = tuple(target.shape), target.dtype
    if name not in flat_2d:
      raise ValueError(f'parameter {name} (3D shape {shape}) is missing from the 2D params')
    used.add(name)
    value = flat_2d[name]
    found = tuple(np.shape(value))
    if name.split('/')[-1] == 'kernel' and len(shape) == len(found) + 1:
      if shape[1:] != found:
        raise ValueError(
          f'parameter {name}: 2D kernel shape {found} does not inflate to the '
          f'3D shape {shape} (expected 2D shape {shape[1:]})'
        )
      new = inflate_kernel(value, shape[0], method)
    else:
      if shape != found:
        raise ValueError(
          f'parameter {name}: expected shape {shape} (from the 3D template), '
          f'found {found} in the 2D params'
        )
      new = jnp.asarray(value)
    new = new.astype(dtype)
    out.append(leaf.replace_boxed(new) if _is_box(leaf) else new)
  extra = sorted(set(flat_2d) - used)
  if extra:
    raise ValueError(
      f'2D params have parameters absent from the 3D template: {extra[:5]}'
      f'{" ..." if len(extra) > 5 else ""}'
    )
  return jax.tree_util.tree_unflatten(treedef, out)

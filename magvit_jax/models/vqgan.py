"""2D VQGAN tokenizer (MaskGIT stage 1).

Images `[batch, H, W, 3]` float32 in [-1, 1] are encoded to latents
`[batch, H/f, W/f, embedding_dim]` with f = 2^(len(channel_multipliers) - 1),
quantized by a lookup codebook to tokens `[batch, H/f, W/f]` int32, and
decoded back to `[batch, H, W, 3]`.

MaskGIT's tokenizer: filters 128, channel multipliers (1, 1, 2, 2, 4), 2 residual
blocks per level, GroupNorm + swish, average-pool downsampling, nearest + conv
upsampling, no attention, codebook 1024 x 256 (16x downsampling: 256 -> 16).

Options that reproduce the released MaskGIT tokenizer exactly (docs/pretrained.md,
configs/vqgan_imagenet.py:official256); their defaults are this project's own VQGAN:
  shortcut='output'      the residual blocks' 1x1 shortcut conv reads the residual branch's
                         output (features -> features), not the block's input;
  res_conv_bias=False    no biases on the residual blocks' convs (shortcut included);
  encoder_in_bias=False  no bias on the encoder's first conv;
  pixel_range='unit'     the networks see [0, 1] pixels: `encode` maps its [-1, 1] input to
                         (x + 1) / 2, and `decode` / `decode_tokens` map the output y to 2y - 1.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import flax.linen as nn
import jax

from magvit_jax.models import layers
from magvit_jax.quantizers.vq import VectorQuantizer

SHORTCUTS = ('input', 'output')
PIXEL_RANGES = ('signed', 'unit')


def _conv(features: int, kernel_size: Sequence[int], name: str, use_bias: bool = True) -> nn.Conv:
  """`layers.conv`, or the same conv (init and logical axes) without a bias."""
  if use_bias:
    return layers.conv(features, kernel_size, name)
  spatial = tuple(f'conv_{i}' for i in range(len(kernel_size)))
  return nn.Conv(
    features,
    tuple(kernel_size),
    padding='SAME',
    use_bias=False,
    kernel_init=nn.with_logical_partitioning(
      nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal'),
      spatial + ('conv_in', 'conv_out'),
    ),
    name=name,
  )


class MaskgitResBlock(nn.Module):
  """`layers.ResBlock` with the released MaskGIT tokenizer's options (same param names).

  shortcut='output': when the channel count changes, the 1x1 shortcut conv (features ->
  features) is applied to the residual branch's output x, and the block returns x + conv(x)
  (the reference code's behaviour); 'input': to the block's input, as `layers.ResBlock`.
  use_bias=False: none of the block's convs has a bias. x: [b, h, w, c_in] -> [b, h, w, features].
  """

  features: int
  num_groups: int = 32
  shortcut: str = 'output'
  use_bias: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    residual = x
    x = nn.swish(layers.group_norm(self.num_groups, 'norm_0')(x))
    x = _conv(self.features, (3, 3), 'conv_0', self.use_bias)(x)
    x = nn.swish(layers.group_norm(self.num_groups, 'norm_1')(x))
    x = _conv(self.features, (3, 3), 'conv_1', self.use_bias)(x)
    if residual.shape[-1] != self.features:
      source = x if self.shortcut == 'output' else residual
      residual = _conv(self.features, (1, 1), 'shortcut', self.use_bias)(source)
    return x + residual


def _res_block(
  features: int,
  num_groups: int,
  name: str,
  shortcut: str,
  use_bias: bool,
  remat_policy: str = 'none',
) -> nn.Module:
  # The defaults build `layers.ResBlock` itself, so the default VQGAN is unchanged.
  if shortcut == 'input' and use_bias:
    return layers.remat(layers.ResBlock, remat_policy)(features, num_groups, name=name)
  block_cls = layers.remat(MaskgitResBlock, remat_policy)
  return block_cls(features, num_groups, shortcut, use_bias, name=name)


class Encoder(nn.Module):
  """[b, H, W, 3] -> [b, H/f, W/f, embedding_dim]."""

  filters: int
  channel_multipliers: Sequence[int]
  num_res_blocks: int
  embedding_dim: int
  num_groups: int = 32
  shortcut: str = 'input'
  res_conv_bias: bool = True
  encoder_in_bias: bool = True
  remat_policy: str = 'none'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    def block(features: int, name: str) -> nn.Module:
      return _res_block(
        features, self.num_groups, name, self.shortcut, self.res_conv_bias, self.remat_policy
      )

    x = _conv(self.filters, (3, 3), 'conv_in', self.encoder_in_bias)(x)
    for level, mult in enumerate(self.channel_multipliers):
      for i in range(self.num_res_blocks):
        x = block(self.filters * mult, f'down_{level}_res_{i}')(x)
      if level < len(self.channel_multipliers) - 1:
        x = layers.downsample_2x(x)
    for i in range(self.num_res_blocks):
      x = block(x.shape[-1], f'mid_res_{i}')(x)
    x = nn.swish(layers.group_norm(self.num_groups, 'norm_out')(x))
    return layers.conv(self.embedding_dim, (1, 1), 'conv_out')(x)


class Decoder(nn.Module):
  """[b, h, w, embedding_dim] -> [b, h*f, w*f, 3]."""

  filters: int
  channel_multipliers: Sequence[int]
  num_res_blocks: int
  num_groups: int = 32
  shortcut: str = 'input'
  res_conv_bias: bool = True
  remat_policy: str = 'none'

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    def block(features: int, name: str) -> nn.Module:
      return _res_block(
        features, self.num_groups, name, self.shortcut, self.res_conv_bias, self.remat_policy
      )

    mults = tuple(self.channel_multipliers)
    x = layers.conv(self.filters * mults[-1], (3, 3), 'conv_in')(z)
    for i in range(self.num_res_blocks):
      x = block(x.shape[-1], f'mid_res_{i}')(x)
    for level in reversed(range(len(mults))):
      for i in range(self.num_res_blocks):
        x = block(self.filters * mults[level], f'up_{level}_res_{i}')(x)
      if level > 0:
        x = layers.upsample_2x(x)
        x = layers.conv(x.shape[-1], (3, 3), f'up_{level}_conv')(x)
    x = nn.swish(layers.group_norm(self.num_groups, 'norm_out')(x))
    return layers.conv(3, (3, 3), 'conv_out')(x)


class VQGAN(nn.Module):
  """Encoder -> VectorQuantizer -> Decoder.

  `__call__(images)` returns `(reconstructions, aux)` where aux holds the
  quantizer's outputs (`tokens` [b, h, w] int32, `loss`, `usage`, `perplexity`).
  """

  filters: int = 128
  channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  embedding_dim: int = 256
  codebook_size: int = 1024
  commitment_cost: float = 0.25
  num_groups: int = 32
  # The released MaskGIT tokenizer's quirks (module docstring; defaults: this project's VQGAN).
  shortcut: str = 'input'
  res_conv_bias: bool = True
  encoder_in_bias: bool = True
  pixel_range: str = 'signed'
  # A key of the transformer's REMAT_POLICIES: each residual block of the encoder and decoder
  # is wrapped in `nn.remat` with that policy ('none': no remat, the same model and params).
  remat_policy: str = 'none'
  causal: ClassVar[bool] = False  # Frames are not coded causally (it codes images only).

  def setup(self):
    if self.shortcut not in SHORTCUTS:
      raise ValueError(f'VQGAN shortcut={self.shortcut!r}: expected one of {SHORTCUTS}')
    if self.pixel_range not in PIXEL_RANGES:
      raise ValueError(f'VQGAN pixel_range={self.pixel_range!r}: expected one of {PIXEL_RANGES}')
    self.encoder = Encoder(
      self.filters,
      self.channel_multipliers,
      self.num_res_blocks,
      self.embedding_dim,
      self.num_groups,
      self.shortcut,
      self.res_conv_bias,
      self.encoder_in_bias,
      self.remat_policy,
    )
    self.quantizer = VectorQuantizer(self.codebook_size, self.commitment_cost)
    self.decoder = Decoder(
      self.filters,
      self.channel_multipliers,
      self.num_res_blocks,
      self.num_groups,
      self.shortcut,
      self.res_conv_bias,
      self.remat_policy,
    )

  def _pixels_out(self, y: jax.Array) -> jax.Array:
    return y * 2.0 - 1.0 if self.pixel_range == 'unit' else y

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.channel_multipliers) - 1)

  def token_shape(self, input_shape: Sequence[int]) -> tuple[int, int]:
    """Token grid (h, w) of one image of shape (H, W, 3)."""
    if len(input_shape) != 3:
      raise ValueError(f'the VQGAN codes images (H, W, 3), got an input of shape {input_shape}')
    f = self.downsample_factor
    return (int(input_shape[0]) // f, int(input_shape[1]) // f)

  def encode(self, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """images: [b, H, W, 3] float32 in [-1, 1] -> (quantized [b, h, w, d], aux)."""
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'images must be [batch, height, width, 3], got shape {images.shape}')
    f = self.downsample_factor
    if images.shape[1] % f or images.shape[2] % f:
      raise ValueError(
        f'image height/width {images.shape[1:3]} must be divisible by the '
        f'downsampling factor {f} (len(channel_multipliers) - 1 halvings)'
      )
    if self.pixel_range == 'unit':
      images = (images + 1.0) * 0.5
    return self.quantizer(self.encoder(images))

  def decode(self, quantized: jax.Array) -> jax.Array:
    """quantized: [b, h, w, d] -> images [b, H, W, 3] float32 (unclipped)."""
    return self._pixels_out(self.decoder(quantized))

  def decode_tokens(self, tokens: jax.Array) -> jax.Array:
    """tokens: [b, h, w] int32 -> images [b, H, W, 3] float32."""
    return self._pixels_out(self.decoder(self.quantizer.lookup(tokens)))

  def __call__(self, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    quantized, aux = self.encode(images)
    return self.decode(quantized), aux

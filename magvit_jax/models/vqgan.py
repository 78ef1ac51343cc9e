"""2D VQGAN tokenizer (MaskGIT stage 1).

Images `[batch, H, W, 3]` float32 in [-1, 1] are encoded to latents
`[batch, H/f, W/f, embedding_dim]` with f = 2^(len(channel_multipliers) - 1),
quantized by a lookup codebook to tokens `[batch, H/f, W/f]` int32, and
decoded back to `[batch, H, W, 3]`.

MaskGIT's tokenizer: filters 128, channel multipliers (1, 1, 2, 2, 4), 2 residual
blocks per level, GroupNorm + swish, average-pool downsampling, nearest + conv
upsampling, no attention, codebook 1024 x 256 (16x downsampling: 256 -> 16).
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import flax.linen as nn
import jax

from magvit_jax.models import layers
from magvit_jax.quantizers.vq import VectorQuantizer


class Encoder(nn.Module):
  """[b, H, W, 3] -> [b, H/f, W/f, embedding_dim]."""

  filters: int
  channel_multipliers: Sequence[int]
  num_res_blocks: int
  embedding_dim: int
  num_groups: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = layers.conv(self.filters, (3, 3), 'conv_in')(x)
    for level, mult in enumerate(self.channel_multipliers):
      for i in range(self.num_res_blocks):
        x = layers.ResBlock(self.filters * mult, self.num_groups, name=f'down_{level}_res_{i}')(x)
      if level < len(self.channel_multipliers) - 1:
        x = layers.downsample_2x(x)
    for i in range(self.num_res_blocks):
      x = layers.ResBlock(x.shape[-1], self.num_groups, name=f'mid_res_{i}')(x)
    x = nn.swish(layers.group_norm(self.num_groups, 'norm_out')(x))
    return layers.conv(self.embedding_dim, (1, 1), 'conv_out')(x)


class Decoder(nn.Module):
  """[b, h, w, embedding_dim] -> [b, h*f, w*f, 3]."""

  filters: int
  channel_multipliers: Sequence[int]
  num_res_blocks: int
  num_groups: int = 32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    mults = tuple(self.channel_multipliers)
    x = layers.conv(self.filters * mults[-1], (3, 3), 'conv_in')(z)
    for i in range(self.num_res_blocks):
      x = layers.ResBlock(x.shape[-1], self.num_groups, name=f'mid_res_{i}')(x)
    for level in reversed(range(len(mults))):
      for i in range(self.num_res_blocks):
        x = layers.ResBlock(
          self.filters * mults[level], self.num_groups, name=f'up_{level}_res_{i}'
        )(x)
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
  causal: ClassVar[bool] = False  # Frames are not coded causally (it codes images only).

  def setup(self):
    self.encoder = Encoder(
      self.filters,
      self.channel_multipliers,
      self.num_res_blocks,
      self.embedding_dim,
      self.num_groups,
    )
    self.quantizer = VectorQuantizer(self.codebook_size, self.commitment_cost)
    self.decoder = Decoder(
      self.filters, self.channel_multipliers, self.num_res_blocks, self.num_groups
    )

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
    return self.quantizer(self.encoder(images))

  def decode(self, quantized: jax.Array) -> jax.Array:
    """quantized: [b, h, w, d] -> images [b, H, W, 3] float32 (unclipped)."""
    return self.decoder(quantized)

  def decode_tokens(self, tokens: jax.Array) -> jax.Array:
    """tokens: [b, h, w] int32 -> images [b, H, W, 3] float32."""
    return self.decoder(self.quantizer.lookup(tokens))

  def __call__(self, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    quantized, aux = self.encode(images)
    return self.decode(quantized), aux

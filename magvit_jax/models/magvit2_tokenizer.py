"""MAGVIT-v2 tokenizer: causal 3D CNN encoder -> lookup-free quantizer -> causal decoder.

One set of weights tokenizes images and videos: videos are
`float32 [b, 1 + F*k, H, W, 3]` in [-1, 1], an image is a 1-frame video
`[b, 1, H, W, 3]` (a 4-D `[b, H, W, 3]` input is accepted and treated as such).
Tokens are `int32 [b, 1 + k, H/f, W/f]` in `[0, 2^num_bits)`; the token of a
latent vector is its sign bits read as an integer (see `quantizers/lfq.py`).

Same interface as `VQGAN`: `encode(x) -> (quantized, aux)`, `decode(quantized)`,
`decode_tokens(tokens)`, `__call__(x) -> (reconstruction, aux)`.

`pre_quant_norm='group_norm_no_affine'` normalises the encoder output right before LFQ with
a GroupNorm without scale or bias (no parameters), per frame (so the tokenizer stays
causal): statistics over (h, w, channels of a group) of each frame, `pre_quant_norm_groups`
groups of the num_bits channels. See docs/lfq.md for the recipe and its defaults.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from magvit_jax.models.causal_cnn import CausalDecoder, CausalEncoder
from magvit_jax.quantizers import lfq

PRE_QUANT_NORMS = ('none', 'group_norm_no_affine')


def group_norm_no_affine(z: jax.Array, num_groups: int, epsilon: float = 1e-6) -> jax.Array:
  """Per-frame GroupNorm without scale or bias (no parameters).

  z: [b, t, h, w, c] float with c divisible by num_groups. Each (example, frame, group) is
  shifted to mean 0 and scaled to variance 1 over its (h, w, c / num_groups) values, frames
  separately (causal). Returns the same shape, dtype of z (statistics in at least float32).
  """
  b, t, h, w, c = z.shape
  dtype = jnp.promote_types(z.dtype, jnp.float32)
  x = z.astype(dtype).reshape(b, t, h, w, num_groups, c // num_groups)
  mean = jnp.mean(x, axis=(2, 3, 5), keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=(2, 3, 5), keepdims=True)
  out = (x - mean) * jax.lax.rsqrt(var + epsilon)
  return out.reshape(z.shape).astype(z.dtype)


class Magvit2Tokenizer(nn.Module):
  """Attributes mirror `CausalEncoder` plus the LFQ settings; embedding_dim = num_bits.

  The architecture options (temporal_kernel_size, spatial_padding, res_conv_bias,
  encoder_in_bias, adaptive_norm; see `causal_cnn._CausalCNN`) and `zero_sign` (the LFQ
  code of an exact 0, see `lfq.LookupFreeQuantizer`) default to the MAGVIT-v2 layout;
  `configs/magvit2_tokenizer_imagenet.py:open_magvit2_256` sets them to Open-MAGVIT2's
  (`magvit_jax/convert/open_magvit2.py`).

  LFQ recipe (docs/lfq.md): entropy_temperature 0.01 (Open-MAGVIT2's and the official MAGVIT
  code's entropy temperature; 1.0 before the recipe), entropy_weight 0.1, commitment_weight
  0.25. pre_quant_norm: 'none' (default; neither reference normalises z before the
  quantizer) or 'group_norm_no_affine' (see the module docstring); pre_quant_norm_groups
  must divide num_bits.
  """

  filters: int = 128
  channel_multipliers: Sequence[int] = (1, 2, 2, 4)
  num_res_blocks: int = 4
  temporal_downsample: Sequence[bool] = (False, True, True)
  num_bits: int = 18
  num_groups: int = 32
  entropy_weight: float = 0.1
  commitment_weight: float = 0.25
  entropy_temperature: float = 0.01
  entropy_chunk_size: int = 1024
  entropy_groups: int | None = None
  temporal_kernel_size: int = 3
  spatial_padding: str = 'same'
  res_conv_bias: bool = True
  encoder_in_bias: bool = True
  adaptive_norm: str = 'every_norm'
  zero_sign: int = 1
  pre_quant_norm: str = 'none'
  pre_quant_norm_groups: int = 1
  remat_policy: str = 'none'  # The encoder's and decoder's: see `causal_cnn._CausalCNN`.
  causal: ClassVar[bool] = True  # Each latent frame depends on earlier frames only.

  def setup(self):
    kwargs = dict(
      filters=self.filters,
      channel_multipliers=tuple(self.channel_multipliers),
      num_res_blocks=self.num_res_blocks,
      temporal_downsample=tuple(self.temporal_downsample),
      embedding_dim=self.num_bits,
      num_groups=self.num_groups,
      temporal_kernel_size=self.temporal_kernel_size,
      spatial_padding=self.spatial_padding,
      res_conv_bias=self.res_conv_bias,
      encoder_in_bias=self.encoder_in_bias,
      adaptive_norm=self.adaptive_norm,
      remat_policy=self.remat_policy,
    )
    self.encoder = CausalEncoder(**kwargs)
    self.decoder = CausalDecoder(**kwargs)
    self.quantizer = lfq.LookupFreeQuantizer(
      num_bits=self.num_bits,
      entropy_weight=self.entropy_weight,
      commitment_weight=self.commitment_weight,
      entropy_temperature=self.entropy_temperature,
      chunk_size=self.entropy_chunk_size,
      num_groups=self.entropy_groups,
      zero_sign=self.zero_sign,
    )

  def _pre_quant(self, z: jax.Array) -> jax.Array:
    """z: [b, t, h, w, num_bits] encoder output -> same shape, normalised per pre_quant_norm."""
    if self.pre_quant_norm == 'none':
      return z
    if self.pre_quant_norm != 'group_norm_no_affine':
      raise ValueError(f'pre_quant_norm={self.pre_quant_norm!r}: expected one of {PRE_QUANT_NORMS}')
    groups = self.pre_quant_norm_groups
    if groups < 1 or self.num_bits % groups:
      raise ValueError(f'pre_quant_norm_groups={groups} must be >= 1 and divide num_bits')
    return group_norm_no_affine(z, groups)

  @property
  def codebook_size(self) -> int:
    return 2**self.num_bits

  @property
  def spatial_factor(self) -> int:
    return 2 ** (len(self.channel_multipliers) - 1)

  @property
  def temporal_factor(self) -> int:
    return 2 ** sum(bool(t) for t in self.temporal_downsample)

  def token_shape(self, input_shape: Sequence[int]) -> tuple[int, int, int]:
    """Token grid (t, h, w) of one video (T, H, W, 3) or image (H, W, 3) (t = 1)."""
    if len(input_shape) not in (3, 4):
      raise ValueError(f'input shape must be (T, H, W, 3) or (H, W, 3), got {input_shape}')
    frames = int(input_shape[0]) if len(input_shape) == 4 else 1
    height, width = int(input_shape[-3]), int(input_shape[-2])
    return (
      1 + (frames - 1) // self.temporal_factor,
      height // self.spatial_factor,
      width // self.spatial_factor,
    )

  def _as_video(self, x: jax.Array) -> jax.Array:
    if x.ndim == 4:
      x = x[:, None]
    if x.ndim != 5 or x.shape[-1] != 3:
      raise ValueError(
        f'input must be videos [batch, time, height, width, 3] or images '
        f'[batch, height, width, 3], got shape {x.shape}'
      )
    t, f = x.shape[1], self.temporal_factor
    if (t - 1) % f:
      raise ValueError(f'time={t} frames: expected 1 + {f}*k (the first frame is coded alone)')
    if x.shape[2] % self.spatial_factor or x.shape[3] % self.spatial_factor:
      raise ValueError(
        f'height/width {x.shape[2:4]} must be divisible by the spatial '
        f'downsampling factor {self.spatial_factor}'
      )
    return x

  def encode(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """x: [b, T, H, W, 3] or [b, H, W, 3] -> (quantized [b, t, h, w, d] in {-1, 1}, aux)."""
    return self.quantizer(self._pre_quant(self.encoder(self._as_video(x))))

  def decode(self, quantized: jax.Array) -> jax.Array:
    """quantized: [b, t, h, w, d] -> videos [b, 1 + F(t-1), H, W, 3] float32."""
    return self.decoder(quantized)

  def decode_tokens(self, tokens: jax.Array) -> jax.Array:
    """tokens: [b, t, h, w] int32 -> videos [b, T, H, W, 3] float32."""
    return self.decoder(lfq.tokens_to_codes(tokens, self.num_bits))

  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Reconstruction with the input's rank ([b, H, W, 3] in -> [b, H, W, 3] out) and aux."""
    quantized, aux = self.encode(x)
    recon = self.decode(quantized)
    return (recon[:, 0] if x.ndim == 4 else recon), aux

"""MAGVIT-v2 tokenizer: causal 3D CNN encoder -> lookup-free quantizer -> causal decoder.

One set of weights tokenizes images and videos: videos are
`float32 [b, 1 + F*k, H, W, 3]` in [-1, 1], an image is a 1-frame video
`[b, 1, H, W, 3]` (a 4-D `[b, H, W, 3]` input is accepted and treated as such).
Tokens are `int32 [b, 1 + k, H/f, W/f]` in `[0, 2^num_bits)`; the token of a
latent vector is its sign bits read as an integer (see `quantizers/lfq.py`).

Same interface as `VQGAN`: `encode(x) -> (quantized, aux)`, `decode(quantized)`,
`decode_tokens(tokens)`, `__call__(x) -> (reconstruction, aux)`.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import flax.linen as nn
import jax

from magvit_jax.models.causal_cnn import CausalDecoder, CausalEncoder
from magvit_jax.quantizers import lfq


class Magvit2Tokenizer(nn.Module):
  """Attributes mirror `CausalEncoder` plus the LFQ settings; embedding_dim = num_bits.

  The architecture options (temporal_kernel_size, spatial_padding, res_conv_bias,
  encoder_in_bias, adaptive_norm; see `causal_cnn._CausalCNN`) and `zero_sign` (the LFQ
  code of an exact 0, see `lfq.LookupFreeQuantizer`) default to the MAGVIT-v2 layout;
  `configs/magvit2_tokenizer_imagenet.py:open_magvit2_256` sets them to Open-MAGVIT2's
  (`magvit_jax/convert/open_magvit2.py`).
  """

  filters: int = 128
  channel_multipliers: Sequence[int] = (1, 2, 2, 4)
  num_res_blocks: int = 4
  temporal_downsample: Sequence[bool] = (False, True, True)
  num_bits: int = 18
  num_groups: int = 32
  entropy_weight: float = 0.1
  commitment_weight: float = 0.25
  entropy_temperature: float = 1.0
  entropy_chunk_size: int = 1024
  entropy_groups: int | None = None
  temporal_kernel_size: int = 3
  spatial_padding: str = 'same'
  res_conv_bias: bool = True
  encoder_in_bias: bool = True
  adaptive_norm: str = 'every_norm'
  zero_sign: int = 1
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
    return self.quantizer(self.encoder(self._as_video(x)))

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

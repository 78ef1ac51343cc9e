"""Lookup vector quantizer (VQ-VAE / VQGAN) with a straight-through estimator.

`VectorQuantizer()(z)` with `z: [..., d] float32` returns `(z_q, aux)`:
  z_q: [..., d] float32, equal to the nearest codebook vector in the forward
       pass, with the identity gradient to `z` (straight-through).
  aux: {'tokens': [...] int32 in [0, codebook_size),
        'loss': scalar, commitment_cost * ||z - sg(e)||^2 + ||sg(z) - e||^2,
        'commitment_loss', 'codebook_loss': scalars,
        'usage': fraction of the codebook used in this batch (scalar),
        'perplexity': exp(entropy of the batch code histogram) (scalar)}.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def codebook_usage(tokens: jax.Array, codebook_size: int) -> tuple[jax.Array, jax.Array]:
  """Fraction of codes used and perplexity of the code histogram.

  tokens: int32 of any shape with values in [0, codebook_size).
  Returns (usage, perplexity), float32 scalars.
  """
  counts = jnp.zeros((codebook_size,), jnp.float32).at[tokens.reshape(-1)].add(1.0)
  probs = counts / jnp.maximum(counts.sum(), 1.0)
  usage = jnp.mean((counts > 0).astype(jnp.float32))
  entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0))
  return usage, jnp.exp(entropy)


class VectorQuantizer(nn.Module):
  """Nearest-neighbour codebook lookup.

  Attributes:
    codebook_size: number of codes K.
    commitment_cost: beta in the VQ-VAE loss (MaskGIT: 0.25).
  """

  codebook_size: int
  commitment_cost: float = 0.25

  @nn.compact
  def __call__(self, z: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    d = z.shape[-1]
    codebook = self.param(
      'codebook',
      nn.with_logical_partitioning(
        nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform'), ('codes', 'code_dim')
      ),
      (self.codebook_size, d),
      jnp.float32,
    )
    z = z.astype(jnp.float32)
    flat = z.reshape(-1, d)
    distances = (
      jnp.sum(flat**2, axis=1, keepdims=True)
      - 2.0 * flat @ codebook.T
      + jnp.sum(codebook**2, axis=1)[None, :]
    )
    tokens = jnp.argmin(distances, axis=1).astype(jnp.int32)
    quantized = codebook[tokens].reshape(z.shape)
    commitment = jnp.mean((z - jax.lax.stop_gradient(quantized)) ** 2)
    codebook_loss = jnp.mean((jax.lax.stop_gradient(z) - quantized) ** 2)
    z_q = z + jax.lax.stop_gradient(quantized - z)
    usage, perplexity = codebook_usage(tokens, self.codebook_size)
    aux = {
      'tokens': tokens.reshape(z.shape[:-1]),
      'loss': self.commitment_cost * commitment + codebook_loss,
      'commitment_loss': commitment,
      'codebook_loss': codebook_loss,
      'usage': usage,
      'perplexity': perplexity,
    }
    return z_q, aux

  def lookup(self, tokens: jax.Array) -> jax.Array:
    """tokens: [...] int32 -> codes [..., d] float32."""
    codebook = self.get_variable('params', 'codebook')
    return nn.unbox(codebook)[tokens]

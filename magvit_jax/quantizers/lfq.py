"""Lookup-free quantization (LFQ, MAGVIT-v2) with an exact, chunked entropy penalty.

The codebook is implicit: C = {-1, +1}^d, K = 2^d codes, no parameters.
`LookupFreeQuantizer(num_bits=d)(z)` with `z: [..., d]` float returns `(z_q, aux)`:
  z_q: [..., d], sign(z) in {-1, +1} (sign(0) = +1) in the forward pass, identity
       gradient to `z` (straight-through: z + sg(sign(z) - z)).
  aux: {'tokens': [...] int32 in [0, 2^d), token = sum_i 2^i [z_q_i > 0] (bit i =
        channel i; z_i = 0 gives bit 1, consistent with sign(0) = +1),
        'loss': entropy_weight * entropy_loss + commitment_weight * commitment_loss,
        'entropy_loss': per_token_entropy - batch_entropy,
        'per_token_entropy': mean_n H(q(.|z_n)) (nats),
        'batch_entropy': H(mean_n q(.|z_n)) (nats; grouped upper bound if num_groups),
        'commitment_loss': mean (z - sg(z_q))^2,
        'usage': distinct tokens in the batch / 2^d,
        'perplexity': exp(entropy of the batch's hard-token histogram),
        'bit_usage': [d] float32, fraction of the batch's codes with channel i = +1,
        'dead_bits': number of channels whose bit_usage is < eps or > 1 - eps (eps = 1e-3)},
        float scalars unless noted.

The batch is everything the call sees. Under `jax.jit` with a batch sharded over devices
that is the global batch (XLA inserts the cross-device reductions). Inside `shard_map` or
`pmap`, pass `axis_name` so that the batch terms (m = mean_n q_n, usage, bit usage) and the
means are taken over all devices of that axis instead of each device's shard.

Soft assignment: q(k|z) ∝ exp(-||z - c_k||^2 / T). Since ||z - c||^2 = ||z||^2 - 2 z.c + d,
q factorises over channels: q(k|z) = prod_i p_i(c_ki) with p_i(+1) = sigmoid(a_i),
a = 4 z / T. With b_k in {0, 1}^d the bits of k,

  log q_n(k) = sum_i log_sigmoid(-a_ni) + a_n . b_k,

so the per-token entropy is a sum of d binary entropies, and the batch term
sum_k m_k log m_k, m_k = mean_n q_n(k), is accumulated over chunks of `chunk_size` codes
(one [N, chunk] matmul + logsumexp over n per chunk) in a `lax.scan` whose body is
`jax.checkpoint`-ed: [N, 2^d] is never materialised, forward or backward; peak memory is
about 4 * N * chunk_size bytes for the loss and twice that for its gradient (float32).

Training helpers: `entropy_weight_at` (annealing of the entropy weight over steps),
`bit_usage` / `count_dead_bits` (per-channel usage of the sign bits). See docs/lfq.md.
"""

from __future__ import annotations

import functools
import math
from typing import Hashable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_MAX_BITS = 30  # tokens are int32 and 2^d must fit in an int32.


def _check_num_bits(num_bits: int) -> None:
  if not 1 <= num_bits <= _MAX_BITS:
    raise ValueError(f'num_bits must be in [1, {_MAX_BITS}], got {num_bits}.')


def codes_to_tokens(codes: jax.Array) -> jax.Array:
  """Binary codes to token ids.

  codes: [..., d] float (normally in {-1, +1}); channel i gives bit i = [codes_i > 0].
  Returns int32 [...], sum_i 2^i [codes_i > 0], in [0, 2^d).
  """
  d = codes.shape[-1]
  _check_num_bits(d)
  bits = (codes > 0).astype(jnp.int32)
  return jnp.sum(jnp.left_shift(bits, jnp.arange(d, dtype=jnp.int32)), axis=-1, dtype=jnp.int32)


def tokens_to_codes(tokens: jax.Array, num_bits: int) -> jax.Array:
  """Token ids to binary codes (inverse of `codes_to_tokens` on {-1, +1}^d).

  tokens: int [...] in [0, 2^num_bits).
  Returns float32 [..., num_bits] in {-1, +1}: channel i is +1 iff bit i of the token is set.
  """
  _check_num_bits(num_bits)
  tokens = jnp.asarray(tokens, jnp.int32)
  bits = jnp.right_shift(tokens[..., None], jnp.arange(num_bits, dtype=jnp.int32)) & 1
  return 2.0 * bits.astype(jnp.float32) - 1.0


def token_usage(tokens: jax.Array, codebook_size: int) -> tuple[jax.Array, jax.Array]:
  """Codebook usage and perplexity from sorted tokens, O(#tokens) memory.

  Unlike `vq.codebook_usage` this never builds a [codebook_size] histogram, so it is
  usable for K = 2^18 and beyond: tokens are sorted, runs of equal ids are counted with a
  static-shape segment sum.

  tokens: int32 of any shape with values in [0, codebook_size).
  Returns (usage, perplexity), float32 scalars: distinct ids / codebook_size and
  exp(entropy of the empirical token distribution).
  """
  flat = jnp.sort(tokens.reshape(-1))
  m = flat.shape[0]
  if m == 0:
    return jnp.zeros((), jnp.float32), jnp.ones((), jnp.float32)
  is_new = jnp.concatenate([jnp.ones((1,), bool), flat[1:] != flat[:-1]])
  num_unique = jnp.sum(is_new, dtype=jnp.int32)
  segment = jnp.cumsum(is_new.astype(jnp.int32)) - 1
  counts = jax.ops.segment_sum(
    jnp.ones((m,), jnp.float32), segment, num_segments=m, indices_are_sorted=True
  )
  probs = counts / m
  safe = jnp.where(probs > 0, probs, 1.0)
  entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(safe), 0.0))
  usage = num_unique.astype(jnp.float32) / float(codebook_size)
  return usage, jnp.exp(entropy)


def binary_entropy_from_logits(logits: jax.Array) -> jax.Array:
  """Entropy (nats) of Bernoulli(sigmoid(logits)), elementwise, stable for large |logits|.

  logits: float [...]. Returns the same shape and dtype.
  """
  return -(
    jax.nn.sigmoid(logits) * jax.nn.log_sigmoid(logits)
    + jax.nn.sigmoid(-logits) * jax.nn.log_sigmoid(-logits)
  )


def _global_logsumexp(x: jax.Array, axis_name: Hashable | None) -> jax.Array:
  """log(sum over the devices of `axis_name` of exp(x)), elementwise; x itself if None.

  The shift by the cross-device max is a constant for the gradient (stop_gradient), which
  leaves the value and the derivative of the log-sum-exp unchanged.
  """
  if axis_name is None:
    return x
  shift = jax.lax.pmax(jax.lax.stop_gradient(x), axis_name)
  return shift + jnp.log(jax.lax.psum(jnp.exp(x - shift), axis_name))


@functools.partial(jax.checkpoint, static_argnums=(3, 4))
def _chunk_neg_entropy(
  logits: jax.Array,
  log_norm: jax.Array,
  start: jax.Array,
  chunk: int,
  axis_name: Hashable | None = None,
) -> jax.Array:
  """sum_{k in chunk} m_k log m_k for the codes start .. start + chunk - 1 (masked to < 2^d).

  logits: [N, d] float, a = 4 z / T. log_norm: [N], sum_i log_sigmoid(-a_ni).
  start: int32 scalar. axis_name: None, or the mapped axis whose devices' tokens together
  form the batch (m_k is then the mean over all of them). Returns a scalar of logits.dtype.
  Checkpointed: the backward pass recomputes the [N, chunk] block instead of storing one
  per chunk.
  """
  n, d = logits.shape
  codes = start + jnp.arange(chunk, dtype=jnp.int32)  # [C]
  bits = jnp.right_shift(codes[:, None], jnp.arange(d, dtype=jnp.int32)) & 1  # [C, d]
  log_q = log_norm[:, None] + jnp.matmul(
    logits, bits.astype(logits.dtype).T, precision=jax.lax.Precision.HIGHEST
  )  # [N, C]
  if axis_name is None:
    log_total = math.log(n)
  else:
    log_total = jnp.log(jnp.asarray(jax.lax.psum(n, axis_name), logits.dtype))
  log_m = _global_logsumexp(jax.nn.logsumexp(log_q, axis=0), axis_name) - log_total  # [C]
  valid = codes < 2**d
  return jnp.sum(jnp.where(valid, jnp.exp(log_m) * log_m, 0.0))


def batch_entropy_from_logits(
  logits: jax.Array, chunk_size: int = 1024, axis_name: Hashable | None = None
) -> jax.Array:
  """Exact H(mean_n q_n) over all 2^d codes, in chunks of `chunk_size` codes.

  logits: [N, d] float, a = 4 z / T, so q_n(k) = prod_i sigmoid(a_ni)^b_ki
    sigmoid(-a_ni)^(1 - b_ki) with b_k the bits of k.
  axis_name: None (the batch is `logits`), or inside `shard_map`/`pmap` the mapped axis whose
    devices' tokens together form the batch: then m is the mean over all of them and every
    device returns the same global value.
  Returns a scalar (nats) of logits.dtype. Peak memory O(N * chunk_size); codes are made
  from an iota inside each chunk, so no [2^d, d] constant exists either.
  """
  n, d = logits.shape
  _check_num_bits(d)
  if n == 0 and axis_name is None:
    return jnp.zeros((), logits.dtype)
  num_codes = 2**d
  chunk = max(1, min(chunk_size, num_codes))
  num_chunks = -(-num_codes // chunk)
  log_norm = jnp.sum(jax.nn.log_sigmoid(-logits), axis=-1)

  def body(acc, start):
    return acc + _chunk_neg_entropy(logits, log_norm, start, chunk, axis_name), None

  starts = jnp.arange(num_chunks, dtype=jnp.int32) * chunk
  total, _ = jax.lax.scan(body, jnp.zeros((), logits.dtype), starts)
  return -total


def entropy_terms(
  z: jax.Array,
  temperature: float = 1.0,
  chunk_size: int = 1024,
  num_groups: int | None = None,
  axis_name: Hashable | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Per-token and batch entropy of the LFQ soft assignment.

  z: [..., d] float; all leading axes are the batch of N tokens.
  temperature: T in q(k|z) ∝ exp(-||z - c_k||^2 / T).
  num_groups: None for the exact batch entropy; G (dividing d) for the grouped
    approximation sum_g H(mean_n q_n^g) over G sub-codebooks of d/G bits, an upper bound
    of the exact H(mean_n q_n) (subadditivity of entropy).
  axis_name: None, or inside `shard_map`/`pmap` the mapped axis over which the batch is
    split: both terms are then over the tokens of all its devices (equal shard sizes).
  Returns (per_token_entropy, batch_entropy): scalars in nats, dtype of z (at least f32).
  The per-token term is exact in both modes (q factorises over channels).
  """
  dtype = jnp.promote_types(z.dtype, jnp.float32)
  d = z.shape[-1]
  logits = (4.0 / temperature) * z.astype(dtype).reshape(-1, d)
  per_token = _mean(jnp.sum(binary_entropy_from_logits(logits), axis=-1), axis_name)
  if num_groups is None:
    return per_token, batch_entropy_from_logits(logits, chunk_size, axis_name)
  if num_groups < 1 or d % num_groups:
    raise ValueError(f'num_groups={num_groups} must be >= 1 and divide num_bits={d}.')
  g = d // num_groups
  batch = sum(
    batch_entropy_from_logits(logits[:, i * g : (i + 1) * g], chunk_size, axis_name)
    for i in range(num_groups)
  )
  return per_token, batch


def _mean(x: jax.Array, axis_name: Hashable | None) -> jax.Array:
  """Mean of all elements of x, over the devices of `axis_name` too (equal shard sizes)."""
  m = jnp.mean(x)
  return m if axis_name is None else jax.lax.pmean(m, axis_name)


DEAD_BIT_EPS = 1e-3


def bit_usage(codes: jax.Array, axis_name: Hashable | None = None) -> jax.Array:
  """Fraction of +1 per channel: codes [..., d] (signs; > 0 counts as +1) -> float32 [d].

  All leading axes are the batch (and, with `axis_name`, the shards of all its devices).
  """
  d = codes.shape[-1]
  ones = (codes.reshape(-1, d) > 0).astype(jnp.float32)
  usage = jnp.mean(ones, axis=0)
  return usage if axis_name is None else jax.lax.pmean(usage, axis_name)


def count_dead_bits(usage: jax.Array, eps: float = DEAD_BIT_EPS) -> jax.Array:
  """Number of bits that are (almost) constant over the batch.

  usage: float [d], `bit_usage` (fraction of +1 per channel). A bit is dead when its usage is
  < eps or > 1 - eps: it then carries (almost) no information, and the effective codebook is
  at most 2^(d - dead_bits). Returns an int32 scalar in [0, d].
  """
  dead = (usage < eps) | (usage > 1.0 - eps)
  return jnp.sum(dead, dtype=jnp.int32)


def histogram_bit_usage(histogram: np.ndarray, num_bits: int) -> np.ndarray:
  """LFQ bit usage from a token histogram: int [2^num_bits] counts -> float64 [num_bits].

  Entry i is the fraction of the counted tokens whose bit i is set (channel i = +1); the
  held-out counterpart of `bit_usage` (evaluation over a whole split).
  """
  ids = np.arange(histogram.shape[0])
  total = max(int(histogram.sum()), 1)
  return np.array([histogram[(ids >> i) & 1 == 1].sum() / total for i in range(num_bits)])


ENTROPY_WEIGHT_SCHEDULES = ('constant', 'linear', 'cosine')


def entropy_weight_at(
  step: jax.Array | int,
  weight: float,
  schedule: str = 'constant',
  start_factor: float = 1.0,
  steps: int = 0,
) -> jax.Array:
  """The entropy-loss weight at a training step (annealing).

  step: int scalar (the step being taken, 0 for the first update; traced or Python).
  weight: the weight after annealing (`model.entropy_weight`).
  schedule: 'constant' (always `weight`), 'linear' or 'cosine': the weight goes from
    `start_factor * weight` at step 0 to `weight` at step `steps` (linearly, or along half a
    cosine), and stays there. start_factor > 1 anneals down (Open-MAGVIT2 and the official
    MAGVIT trainer: linear with start_factor = 1 + enlarge_ratio), < 1 warms up.
  Returns a float32 scalar.
  """
  if schedule not in ENTROPY_WEIGHT_SCHEDULES:
    raise ValueError(
      f'entropy weight schedule={schedule!r}: expected one of {ENTROPY_WEIGHT_SCHEDULES}'
    )
  if schedule == 'constant':
    return jnp.asarray(weight, jnp.float32)
  if steps <= 0:
    raise ValueError(f'entropy weight schedule {schedule!r} needs steps > 0, got {steps}')
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / float(steps), 0.0, 1.0)
  if schedule == 'cosine':
    frac = 0.5 * (1.0 - jnp.cos(jnp.pi * frac))
  factor = start_factor + (1.0 - start_factor) * frac
  return (weight * factor).astype(jnp.float32)


class LookupFreeQuantizer(nn.Module):
  """Lookup-free quantizer: sign of each channel, implicit codebook {-1, +1}^d.

  Attributes:
    num_bits: d, channels of z; codebook size 2^d (MAGVIT-v2: 18). At most 30.
    entropy_weight: weight of entropy_loss in aux['loss'] (MAGVIT-v2: 0.1).
    commitment_weight: weight of commitment_loss in aux['loss'] (VQ's beta).
    entropy_temperature: T of the soft assignment exp(-||z - c||^2 / T).
    chunk_size: codes per chunk of the exact batch-entropy sum. Peak memory of the
      gradient is ~ 2 * N * chunk_size * 4 bytes (N tokens in the batch); smaller chunks
      use less memory (and were faster on CPU, see docs/lfq.md).
    num_groups: None = exact batch entropy; G = grouped approximation (G sub-codebooks of
      d/G bits, batch entropies summed: an upper bound of the exact one).
    zero_sign: the code of a channel that is exactly 0: +1 (default, sign(0) = +1) or -1
      (Open-MAGVIT2: `where(z > 0, 1, -1)`); the token's bit is [code > 0] either way.
    axis_name: None (the batch is the call's input; under `jax.jit` with sharded global
      arrays that is already the global batch), or inside `shard_map`/`pmap` the mapped axis
      over which the batch is split: the entropy terms, commitment, usage, perplexity and bit
      usage are then over all its devices (equal shard sizes), the same value on each.
  """

  num_bits: int
  entropy_weight: float = 0.1
  commitment_weight: float = 0.25
  entropy_temperature: float = 1.0
  chunk_size: int = 1024
  num_groups: int | None = None
  zero_sign: int = 1
  axis_name: Hashable | None = None

  @property
  def codebook_size(self) -> int:
    return 2**self.num_bits

  def __call__(self, z: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """z: [..., num_bits] float -> (z_q [..., num_bits], aux); see the module docstring."""
    _check_num_bits(self.num_bits)
    if z.shape[-1] != self.num_bits:
      raise ValueError(f'z has {z.shape[-1]} channels, expected num_bits={self.num_bits}.')
    dtype = jnp.promote_types(z.dtype, jnp.float32)
    z = z.astype(dtype)
    if self.zero_sign not in (1, -1):
      raise ValueError(f'zero_sign must be 1 or -1, got {self.zero_sign!r}.')
    positive = z >= 0 if self.zero_sign == 1 else z > 0
    quantized = jnp.where(positive, 1.0, -1.0).astype(dtype)
    tokens = codes_to_tokens(quantized)
    axis = self.axis_name
    commitment = _mean((z - jax.lax.stop_gradient(quantized)) ** 2, axis)
    per_token, batch = entropy_terms(
      z, self.entropy_temperature, self.chunk_size, self.num_groups, axis
    )
    entropy_loss = per_token - batch
    if axis is None:
      all_tokens = tokens
    else:  # The same gathered batch on every device (invariant over `axis`).
      all_tokens = jax.lax.all_gather(tokens, axis, tiled=True, to='invarying')
    usage, perplexity = token_usage(all_tokens, self.codebook_size)
    bits = bit_usage(quantized, axis)
    z_q = z + jax.lax.stop_gradient(quantized - z)
    aux = {
      'tokens': tokens,
      'loss': self.entropy_weight * entropy_loss + self.commitment_weight * commitment,
      'entropy_loss': entropy_loss,
      'per_token_entropy': per_token,
      'batch_entropy': batch,
      'commitment_loss': commitment,
      'usage': usage,
      'perplexity': perplexity,
      'bit_usage': bits,
      'dead_bits': count_dead_bits(bits),
    }
    return z_q, aux

  def lookup(self, tokens: jax.Array) -> jax.Array:
    """tokens: [...] int32 -> codes [..., num_bits] float32 in {-1, +1} (for decode_tokens)."""
    return tokens_to_codes(tokens, self.num_bits)

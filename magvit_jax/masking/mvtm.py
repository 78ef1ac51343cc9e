"""Masked visual token modeling (MVTM), the MaskGIT training objective.

Per example a ratio ``r ~ U(0, 1)`` is drawn, ``ceil(gamma(r) * n)`` of the ``n`` tokens
(clipped to ``[1, n]``) are chosen uniformly at random and replaced by the mask token,
and the transformer is trained with cross-entropy on the masked positions only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from magvit_jax.masking import schedules


def mask_count(r: jax.Array, num_tokens: int, schedule: str) -> jax.Array:
  """Number of tokens to mask for ratio ``r``: ``clip(ceil(gamma(r) * n), 1, n)``.

  Args:
    r: float array of any shape, values in [0, 1].
    num_tokens: ``n``, the number of tokens per example (also the token count ``N`` of
      the official schedules, ``schedules.OFFICIAL_SCHEDULES``).
    schedule: a name in ``schedules.ALL_SCHEDULES``.

  Returns:
    int32 array of the shape of ``r``, values in ``[1, n]``.
  """
  gamma = schedules.get_schedule(schedule, num_tokens=num_tokens)
  count = jnp.ceil(gamma(r) * num_tokens).astype(jnp.int32)
  return jnp.clip(count, 1, num_tokens)


def mask_from_counts(rng: jax.Array, counts: jax.Array, num_tokens: int) -> jax.Array:
  """Masks exactly ``counts[i]`` uniformly random positions of row ``i``.

  Args:
    rng: PRNG key.
    counts: [batch] int32, values in ``[0, n]``.
    num_tokens: ``n``.

  Returns:
    [batch, n] bool, True = masked; row ``i`` has exactly ``counts[i]`` True entries.
  """
  scores = jax.random.uniform(rng, (counts.shape[0], num_tokens))
  # Rank of each position among the random scores (0 = lowest); ranks are a permutation,
  # so the count is exact even if two scores tie.
  ranks = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
  return ranks < counts[:, None]


def sample_mask(rng: jax.Array, batch_size: int, num_tokens: int, schedule: str) -> jax.Array:
  """Samples an MVTM training mask.

  Per example ``r ~ U(0, 1)``; ``mask_count(r, n, schedule)`` positions, chosen uniformly
  at random, are masked.

  Args:
    rng: PRNG key.
    batch_size: ``b``.
    num_tokens: ``n``.
    schedule: a name in ``schedules.ALL_SCHEDULES``.

  Returns:
    [b, n] bool, True = masked; every row has between 1 and n True entries.
  """
  r_rng, pos_rng = jax.random.split(rng)
  r = jax.random.uniform(r_rng, (batch_size,))
  counts = mask_count(r, num_tokens, schedule)
  return mask_from_counts(pos_rng, counts, num_tokens)


def apply_mask(tokens: jax.Array, mask: jax.Array, mask_token_id: int) -> jax.Array:
  """Replaces masked tokens by the mask token.

  Args:
    tokens: [b, n] int32 token ids.
    mask: [b, n] bool, True = masked.
    mask_token_id: id written at masked positions.

  Returns:
    [b, n] int32.
  """
  return jnp.where(mask, jnp.int32(mask_token_id), tokens.astype(jnp.int32))


def masked_cross_entropy(
  logits: jax.Array,
  targets: jax.Array,
  mask: jax.Array,
  label_smoothing: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Label-smoothed softmax cross-entropy averaged over the masked positions.

  The smoothed target is ``(1 - label_smoothing) * one_hot(target) + label_smoothing / k``.
  The loss is ``sum(ce * mask) / max(sum(mask), 1)`` over the whole batch, so rows (or
  batches) with no masked token are safe and unmasked positions get zero gradient.

  Args:
    logits: [b, n, k] float.
    targets: [b, n] int32, values in ``[0, k)``.
    mask: [b, n] bool, True = masked (counted in the loss).
    label_smoothing: in [0, 1).

  Returns:
    ``(loss, metrics)``: ``loss`` float32 scalar; ``metrics`` holds ``'loss'``,
    ``'accuracy'`` (argmax accuracy on masked positions, float32 scalar) and
    ``'num_masked'`` (mean number of masked tokens per example, float32 scalar).
  """
  num_classes = logits.shape[-1]
  logits = logits.astype(jnp.float32)
  labels = jax.nn.one_hot(targets, num_classes, dtype=jnp.float32)
  if label_smoothing:
    labels = optax.smooth_labels(labels, label_smoothing)
  ce = optax.softmax_cross_entropy(logits, labels)  # [b, n]
  weights = mask.astype(jnp.float32)
  denom = jnp.maximum(weights.sum(), 1.0)
  loss = jnp.where(mask, ce, 0.0).sum() / denom
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  accuracy = (correct * weights).sum() / denom
  num_masked = weights.sum(axis=-1).mean()
  metrics = {'loss': loss, 'accuracy': accuracy, 'num_masked': num_masked}
  return loss, metrics


def split_sub_tokens(tokens: jax.Array, num_sub_tokens: int, sub_codebook_size: int) -> jax.Array:
  """tokens [b, n] int32 -> sub-tokens [b, n, s] int32, token = sum_j sub_j * k_sub^j."""
  powers = sub_codebook_size ** jnp.arange(num_sub_tokens, dtype=jnp.int32)
  return (tokens[..., None] // powers) % sub_codebook_size


def masked_token_loss(
  logits: jax.Array,
  targets: jax.Array,
  mask: jax.Array,
  label_smoothing: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`masked_cross_entropy` for plain [b, n, k] or factorised [b, n, s, k_sub] logits.

  Factorised: the sub-tokens are independent given the context, so the token's negative
  log-likelihood is the sum over its s sub-tokens; the loss is that sum averaged over masked
  tokens, and 'accuracy' is per sub-token.
  """
  if logits.ndim == 3:
    return masked_cross_entropy(logits, targets, mask, label_smoothing)
  b, n, s, k_sub = logits.shape
  sub_targets = split_sub_tokens(targets, s, k_sub).reshape(b, n * s)
  sub_mask = jnp.repeat(mask, s, axis=1)
  loss, metrics = masked_cross_entropy(
    logits.reshape(b, n * s, k_sub), sub_targets, sub_mask, label_smoothing
  )
  metrics = dict(metrics, loss=loss * s, num_masked=metrics['num_masked'] / s)
  return loss * s, metrics


def token_cross_entropy(
  logits: jax.Array,
  targets: jax.Array,
  label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
  """Per-token label-smoothed cross-entropy for plain or factorised logits.

  Args:
    logits: [b, n, k] or factorised [b, n, s, k_sub] float.
    targets: [b, n] int32 token ids.
    label_smoothing: in [0, 1).

  Returns:
    ``(ce, correct)``, both float32 [b, n]: the token's cross-entropy (factorised: the sum over
    its s sub-tokens) and the fraction of its (sub-)tokens predicted right by argmax.
  """
  logits = logits.astype(jnp.float32)
  if logits.ndim == 4:
    targets = split_sub_tokens(targets, logits.shape[2], logits.shape[3])
  else:
    targets = targets[..., None]
    logits = logits[:, :, None]
  labels = jax.nn.one_hot(targets, logits.shape[-1], dtype=jnp.float32)
  if label_smoothing:
    labels = optax.smooth_labels(labels, label_smoothing)
  ce = optax.softmax_cross_entropy(logits, labels).sum(axis=-1)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32).mean(axis=-1)
  return ce, correct

"""MaskGIT iterative parallel decoding (Chang et al., 2022, section 3.2).

Starting from a token map in which unknown positions hold the mask token, each of the
``T`` steps

1. predicts logits for every position (optionally with classifier-free guidance),
2. samples a token for every unknown position,
3. scores each sampled token by its log-probability plus annealed Gumbel noise
   (known positions score ``+inf``),
4. keeps the ``m`` lowest-scoring positions masked, where
   ``m = floor(gamma((t + 1) / T) * n_unknown_at_start)`` clipped so that each step fixes at
   least one token while any is unknown and leaves at least one masked for later steps
   when possible; the last step leaves none.

The whole loop is one jitted ``lax.fori_loop`` with static shapes. Known input tokens are
never changed, so editing, inpainting and outpainting are decoding from a partial token
map (see ``mask_region``).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

from flax import struct
import jax
import jax.numpy as jnp

from magvit_jax.masking import schedules

# Relative tolerance of the floor in num_masked_after_step (float32 rounding guard).
_FLOOR_RTOL = 1e-5

ApplyFn = Callable[..., jax.Array]


@struct.dataclass
class DecodeOutput:
  """Result of ``decode``.

  Attributes:
    tokens: [b, n] int32, final tokens; no mask id is left, values in ``[0, k)`` at
      decoded positions (known input positions hold their input value).
    history: [T, b, n] int32, the tokens after each step, the mask id where a position
      is still masked.
  """

  tokens: jax.Array
  history: jax.Array


def num_masked_after_step(
  step: jax.Array,
  num_steps: int,
  num_unknown_at_start: jax.Array,
  num_unknown_now: jax.Array,
  schedule: str,
) -> jax.Array:
  """How many positions stay masked after step ``step`` (0-based).

  ``m = floor(gamma((step + 1) / T) * n_start)`` (the floor tolerates a relative float32
  rounding error of 1e-5, so values that are integers in exact arithmetic stay so); for ``step < T - 1`` it is clipped to
  ``max(0, min(n_now - 1, max(1, m)))``; at ``step = T - 1`` it is 0.

  MaskGIT's own decoder (``maskgit/libml/parallel_decode.py``) differs in two corner cases
  (documented in docs/mask_schedules.md, kept on purpose): its floor is a plain float32
  floor, so where ``gamma * n_start`` is an integer in exact arithmetic but rounds just below
  it re-masks one token fewer (``cosine`` at ``r = 2/3``: 256 tokens, ``T = 12``, step 7:
  127 there, 128 here); and it clips with ``max(1, min(n_now - 1, m))``, so with one
  unknown token left before the last step it re-masks it (here it is kept: 0).

  Args:
    step: int32 scalar (may be traced).
    num_steps: ``T``.
    num_unknown_at_start: [b] int32, unknown tokens in the initial map.
    num_unknown_now: [b] int32, unknown tokens before this step.
    schedule: a name in ``schedules.ALL_SCHEDULES``; the official ones
      (``schedules.OFFICIAL_SCHEDULES``) get ``N = n_start`` per example, as MaskGIT's
      decoder passes ``total_unknown = unknown_number_in_the_beginning``.

  Returns:
    [b] int32.
  """
  gamma = schedules.get_schedule(schedule, num_tokens=num_unknown_at_start)
  ratio = (jnp.asarray(step, jnp.float32) + 1.0) / num_steps
  x = gamma(ratio) * num_unknown_at_start.astype(jnp.float32)
  # floor with a small relative tolerance: in float32, (1 - 3 / 7) * 7 is 1.9999999, and a
  # plain floor would re-mask one token fewer than the exact-arithmetic formula says.
  m = jnp.floor(x * (1.0 + _FLOOR_RTOL) + _FLOOR_RTOL).astype(jnp.int32)
  m = jnp.maximum(0, jnp.minimum(num_unknown_now - 1, jnp.maximum(1, m)))
  return jnp.where(step >= num_steps - 1, 0, m).astype(jnp.int32)


def _logits(apply_fn, params, tokens, labels, tasks, mask_token_id, guidance_scale, null_label):
  """Model logits [b, n, k] float32, guided when ``guidance_scale != 0``."""
  extra = () if tasks is None else (tasks,)
  if guidance_scale != 0.0:
    b = tokens.shape[0]
    extra2 = () if tasks is None else (jnp.concatenate([tasks, tasks], axis=0),)
    both = apply_fn(
      params,
      jnp.concatenate([tokens, tokens], axis=0),
      jnp.concatenate([labels, jnp.full_like(labels, null_label)], axis=0),
      *extra2,
    )
    both = both.astype(jnp.float32)
    cond, uncond = both[:b], both[b:]
    logits = cond + guidance_scale * (cond - uncond)
  else:
    logits = apply_fn(params, tokens, labels, *extra).astype(jnp.float32)
  k = logits.shape[-1]
  if logits.ndim == 3 and mask_token_id < k:
    # The model's vocabulary includes the mask id: never sample it.
    logits = logits.at[..., mask_token_id].set(-jnp.inf)
  return logits


def _step_noise(
  rng: jax.Array, sample_shape: tuple[int, ...] | None, choice_shape: tuple[int, ...] | None
):
  """Gumbel noise for one step: (sample_shape noise or None, choice_shape noise or None).

  Both are cut from one flat draw: on CPU, XLA takes about a second to compile random
  bits of a rank-3 shape but milliseconds for one rank-1 draw.
  """
  n_sample = math.prod(sample_shape) if sample_shape else 0
  n_choice = math.prod(choice_shape) if choice_shape else 0
  if n_sample + n_choice == 0:
    return None, None
  flat = jax.random.gumbel(rng, (n_sample + n_choice,), jnp.float32)
  sample_noise = flat[:n_sample].reshape(sample_shape) if sample_shape else None
  choice_noise = flat[n_sample:].reshape(choice_shape) if choice_shape else None
  return sample_noise, choice_noise


def _sample_with_logp(logits: jax.Array, noise: jax.Array | None, temperature: float):
  """Samples one token per position and returns it with its log-probability.

  logits: [b, n, k] (one distribution per token) or [b, n, s, k_sub] (factorised: token =
  sum_j sub_j * k_sub^j, the sub-tokens independent given the context, as MAGVIT-v2 does for
  large LFQ vocabularies). Returns (tokens [b, n] int32, log-prob [b, n] float32 of the whole
  token, before temperature).
  """
  if temperature == 0.0:
    sub = jnp.argmax(logits, axis=-1)
  else:
    scaled = logits if temperature == 1.0 else logits / temperature
    sub = jnp.argmax(scaled + noise, axis=-1)  # Gumbel-max sampling.
  sub = sub.astype(jnp.int32)
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), sub[..., None], axis=-1)[..., 0]
  if logits.ndim == 4:
    k_sub = logits.shape[-1]
    weights = k_sub ** jnp.arange(logits.shape[2], dtype=jnp.int32)
    return jnp.sum(sub * weights, axis=-1), jnp.sum(logp, axis=-1)
  return sub, logp


@functools.partial(
  jax.jit,
  static_argnames=(
    'apply_fn',
    'mask_token_id',
    'num_steps',
    'schedule',
    'choice_temperature',
    'temperature',
    'guidance_scale',
    'null_label',
  ),
)
def decode(
  apply_fn: ApplyFn,
  params: Any,
  rng: jax.Array,
  init_tokens: jax.Array,
  labels: jax.Array,
  *,
  mask_token_id: int,
  num_steps: int,
  schedule: str = 'cosine',
  choice_temperature: float = 4.5,
  temperature: float = 1.0,
  guidance_scale: float = 0.0,
  null_label: int | None = None,
  tasks: jax.Array | None = None,
  condition_tokens: jax.Array | None = None,
) -> DecodeOutput:
  """MaskGIT iterative decoding in ``num_steps`` steps (one jitted ``lax.fori_loop``).

  ``apply_fn`` is a static argument: pass the same function object on every call (not a
  fresh lambda) or each call recompiles.

  Args:
    apply_fn: ``apply_fn(params, tokens [b, n] int32, labels [b] int32) -> logits
      [b, n, k] float`` with ``k`` the codebook size, or factorised logits
      ``[b, n, s, k_sub]`` (codebook ``k_sub ** s``; token = sum_j sub_j * k_sub ** j).
    params: model parameters (any pytree), passed through to ``apply_fn``.
    rng: PRNG key.
    init_tokens: [b, n] int32; positions equal to ``mask_token_id`` are unknown, the others
      are known and returned unchanged.
    labels: [b] int32 class labels.
    mask_token_id: id of the mask token (normally ``k``; if ``< k`` it is never sampled).
    num_steps: ``T >= 1``.
    schedule: mask schedule name (``schedules.ALL_SCHEDULES``).
    choice_temperature: scale of the Gumbel noise added to the confidence at step 0,
      annealed linearly to 0 at the last step (``* (1 - (t + 1) / T)``).
    temperature: sampling temperature (logits are divided by it); 0 means argmax.
    guidance_scale: classifier-free guidance ``s``: logits = ``cond + s (cond - uncond)``
      where ``uncond`` uses ``null_label``; 0 disables it (one model call per step).
    null_label: the label id of the unconditional class; required when
      ``guidance_scale != 0``.
    tasks: optional [b] int32 task ids (MAGVIT COMMIT); then ``apply_fn(params, tokens,
      labels, tasks)`` is called.
    condition_tokens: optional [b, n] int32 (COMMIT): where a position is still masked and
      ``condition_tokens`` is not ``mask_token_id``, the model sees the condition token
      instead of [MASK] (re-injected at every step); the output is sampled as usual.

  Returns:
    ``DecodeOutput(tokens [b, n] int32, history [T, b, n] int32)``.

  The confidence of a sampled token is its log-probability under the (guided) model
  distribution before temperature, plus the annealed Gumbel noise.
  """
  if num_steps < 1:
    raise ValueError(f'num_steps must be >= 1, got {num_steps}.')
  if guidance_scale != 0.0 and null_label is None:
    raise ValueError('guidance_scale != 0 needs null_label (the unconditional class id).')
  if init_tokens.ndim != 2:
    raise ValueError(f'init_tokens must be [batch, n], got shape {init_tokens.shape}.')
  if condition_tokens is not None and condition_tokens.shape != init_tokens.shape:
    raise ValueError(
      f'condition_tokens must match init_tokens {init_tokens.shape}, got {condition_tokens.shape}.'
    )
  schedules.check_name(schedule)  # validate the name early
  init_tokens = init_tokens.astype(jnp.int32)
  labels = jnp.asarray(labels).astype(jnp.int32)
  b, n = init_tokens.shape
  n_start = jnp.sum(init_tokens == mask_token_id, axis=-1).astype(jnp.int32)
  history0 = jnp.zeros((num_steps, b, n), jnp.int32)

  def body(t, carry):
    tokens, history = carry
    unknown = tokens == mask_token_id
    model_in = tokens
    if condition_tokens is not None:
      model_in = jnp.where(
        unknown & (condition_tokens != mask_token_id), condition_tokens.astype(jnp.int32), tokens
      )
    logits = _logits(
      apply_fn, params, model_in, labels, tasks, mask_token_id, guidance_scale, null_label
    )
    sample_noise, choice_noise = _step_noise(
      jax.random.fold_in(rng, t),
      logits.shape if temperature != 0.0 else None,
      (b, n) if choice_temperature != 0.0 else None,
    )
    sampled, confidence = _sample_with_logp(logits, sample_noise, temperature)
    sampled = jnp.where(unknown, sampled, tokens)
    if choice_temperature != 0.0:
      noise_scale = choice_temperature * (1.0 - (t + 1.0) / num_steps)
      confidence = confidence + noise_scale * choice_noise
    confidence = jnp.where(unknown, confidence, jnp.inf)
    n_now = jnp.sum(unknown, axis=-1).astype(jnp.int32)
    m = num_masked_after_step(t, num_steps, n_start, n_now, schedule)
    # Exact count even with ties: rank positions by confidence, re-mask the m lowest.
    # Known positions (+inf) rank after all n_now unknown ones, and m < n_now.
    ranks = jnp.argsort(jnp.argsort(confidence, axis=-1), axis=-1)
    remask = ranks < m[:, None]
    new_tokens = jnp.where(remask, jnp.int32(mask_token_id), sampled)
    history = history.at[t].set(new_tokens)
    return new_tokens, history

  tokens, history = jax.lax.fori_loop(0, num_steps, body, (init_tokens, history0))
  return DecodeOutput(tokens=tokens, history=history)


def mask_region(tokens: jax.Array, region_mask: jax.Array, mask_token_id: int) -> jax.Array:
  """Masks a region of a token map, for inpainting / outpainting (images or videos).

  Inpainting: ``region_mask`` True inside the hole. Outpainting: True outside the kept
  area (e.g. ``~inner``). Feed the result to ``decode`` as ``init_tokens``.

  Args:
    tokens: [b, h, w] (or [b, t, h, w]) int32 token map.
    region_mask: bool of the grid shape ([h, w] / [t, h, w]) or of ``tokens.shape``;
      True = to be regenerated.
    mask_token_id: the mask token id.

  Returns:
    [b, n] int32 with n = prod(grid), ``mask_token_id`` inside the region, the input
    tokens elsewhere.
  """
  if tokens.ndim < 2:
    raise ValueError(f'tokens must be [batch, *grid], got shape {tokens.shape}.')
  if region_mask.shape not in (tokens.shape[1:], tokens.shape):
    raise ValueError(
      f'region_mask must be the token grid {tokens.shape[1:]} or match tokens '
      f'{tokens.shape}, got {region_mask.shape}.'
    )
  region = jnp.broadcast_to(region_mask.astype(bool), tokens.shape)
  out = jnp.where(region, jnp.int32(mask_token_id), tokens.astype(jnp.int32))
  return out.reshape(tokens.shape[0], -1)

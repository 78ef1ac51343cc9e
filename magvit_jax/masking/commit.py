"""COMMIT: conditional masked modeling by interior tokens (MAGVIT, Yu et al. 2023, sec. 3.2).

One transformer learns ten video tasks. A task says which pixels of the target video are known
(the *condition*); the condition is padded to a full video and tokenized (`cond_tokens`), and the
training input mixes three kinds of positions:

  masked and inside the condition region  -> the condition token (to be refined),
  masked and outside it                   -> [MASK] (to be predicted),
  not masked                              -> the original token (to be reconstructed).

A token is in the condition region ("interior") when its supervoxel holds at least one known
pixel (MAGVIT's `ispad` is the negation: every pixel of the supervoxel is padding). The loss
is cross-entropy against the original tokens at every position, weighted per kind
(`loss_weights`): MAGVIT's default weighs all tokens; (1, 1, 0) is "masked/replaced only".

Tasks (`TASKS`, the paper's names), for a video of T frames, H x W pixels:
  FP   frame prediction: the first `fp_frames` frames are known.
  FI   frame interpolation: the first and last `fi_frames` frames are known.
  OPC  central outpainting: the central box (`box_fraction` of H and W) is known.
  OPV  vertical outpainting: the middle band of rows (`box_fraction` of H) is known; the
       model extends the video upwards and downwards.
  OPH  horizontal outpainting: the middle band of columns is known; extends left and right.
  OPD  dynamic outpainting: a box moving linearly from a random start to a random end
       position over the clip is known.
  IPC  central inpainting: everything except the central box is known.
  IPD  dynamic inpainting: everything except the moving box is known.
  CG   class-conditional generation: nothing is known; the class is given.
  CFP  class-conditional frame prediction: FP plus the class.

Padding of the condition (`pad_condition`): a frame with no known pixel is replaced by the
nearest known frame (FP repeats the last condition frame; FI fills the first half of the gap
with the first known frame and the second half with the last), other unknown pixels are 0
(mid-grey in [-1, 1]). Everything here is pure jnp and jittable; task ids may be traced.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

from magvit_jax.masking import mvtm

TASKS = ('FP', 'FI', 'OPC', 'OPV', 'OPH', 'OPD', 'IPC', 'IPD', 'CG', 'CFP')
CLASS_TASKS = ('CG', 'CFP')  # The only tasks that see the class label.

# Per task: (temporal kind, box kind, box inverted). Temporal: 0 none, 1 first frames,
# 2 first and last frames. Box: 0 none, 1 central, 2 row band, 3 column band, 4 moving.
# Inverted: the box is the unknown part (inpainting) instead of the known part.
_TEMPORAL = {'FP': 1, 'FI': 2, 'CFP': 1}
_BOX = {'OPC': 1, 'OPV': 2, 'OPH': 3, 'OPD': 4, 'IPC': 1, 'IPD': 4}
_INVERTED = ('IPC', 'IPD')


@dataclasses.dataclass(frozen=True)
class TaskSettings:
  """Sizes of the task conditions.

  Attributes:
    fp_frames: frames known in FP / CFP.
    fi_frames: frames known at each end in FI.
    box_fraction: size of the central / moving box and of the bands, as a fraction of H and W.
  """

  fp_frames: int = 1
  fi_frames: int = 1
  box_fraction: float = 0.5

  @classmethod
  def from_config(cls, commit_config) -> 'TaskSettings':
    return cls(
      fp_frames=int(commit_config.fp_frames),
      fi_frames=int(commit_config.fi_frames),
      box_fraction=float(commit_config.box_fraction),
    )


def task_ids(names: Sequence[str]) -> list[int]:
  """Task names -> ids (indices into `TASKS`); unknown names raise naming the valid ones."""
  bad = [n for n in names if n not in TASKS]
  if bad:
    raise ValueError(f'unknown COMMIT task(s) {bad}: expected names from {TASKS}')
  return [TASKS.index(n) for n in names]


def uses_class(tasks: jax.Array) -> jax.Array:
  """tasks: int32 [b] -> bool [b], True for the class-conditional tasks (CG, CFP)."""
  ids = jnp.asarray(task_ids(CLASS_TASKS), jnp.int32)
  return jnp.any(tasks[:, None] == ids[None], axis=-1)


def _table(mapping: dict, default=0) -> jax.Array:
  return jnp.asarray([mapping.get(name, default) for name in TASKS], jnp.int32)


def _moving_boxes(
  rng: jax.Array, batch: int, num_frames: int, height: int, width: int, bh: int, bw: int
) -> tuple[jax.Array, jax.Array]:
  """Top-left corners [b, T] (y, x) of a box moving linearly from a random start to a random
  end position over the clip, staying inside the frame."""
  start_rng, end_rng = jax.random.split(rng)
  hi = jnp.asarray([height - bh, width - bw], jnp.float32)
  start = jnp.floor(jax.random.uniform(start_rng, (batch, 2)) * (hi + 1))
  end = jnp.floor(jax.random.uniform(end_rng, (batch, 2)) * (hi + 1))
  frac = jnp.arange(num_frames, dtype=jnp.float32) / max(num_frames - 1, 1)
  pos = jnp.round(start[:, None] + (end - start)[:, None] * frac[None, :, None])
  return pos[..., 0].astype(jnp.int32), pos[..., 1].astype(jnp.int32)


def known_pixels(
  tasks: jax.Array,
  rng: jax.Array,
  num_frames: int,
  height: int,
  width: int,
  settings: TaskSettings = TaskSettings(),
) -> jax.Array:
  """Which pixels each task gives as condition.

  Args:
    tasks: int32 [b], ids into `TASKS` (may be traced).
    rng: PRNG key for the moving boxes of OPD / IPD.
    num_frames, height, width: T, H, W of the video.
    settings: sizes of the conditions.

  Returns:
    bool [b, T, H, W], True = known pixel.
  """
  b, t_, h_, w_ = tasks.shape[0], num_frames, height, width
  if not 0 < settings.fp_frames < t_:
    raise ValueError(
      f'commit.fp_frames={settings.fp_frames}: expected 1..{t_ - 1} for {t_}-frame videos'
    )
  if not 0 < 2 * settings.fi_frames < t_:
    raise ValueError(
      f'commit.fi_frames={settings.fi_frames}: expected 1..{(t_ - 1) // 2} for {t_}-frame videos'
    )
  if not 0.0 < settings.box_fraction < 1.0:
    raise ValueError(f'commit.box_fraction={settings.box_fraction}: expected a float in (0, 1)')
  temporal = _table(_TEMPORAL)[tasks]  # [b]
  box = _table(_BOX)[tasks]
  inverted = jnp.asarray([n in _INVERTED for n in TASKS])[tasks]

  t = jnp.arange(t_)[None]  # [1, T]
  frames = jnp.where(
    temporal[:, None] == 1,
    t < settings.fp_frames,
    jnp.where(
      temporal[:, None] == 2, (t < settings.fi_frames) | (t >= t_ - settings.fi_frames), False
    ),
  )

  bh = max(1, int(round(h_ * settings.box_fraction)))
  bw = max(1, int(round(w_ * settings.box_fraction)))
  cy, cx = (h_ - bh) // 2, (w_ - bw) // 2
  my, mx = _moving_boxes(rng, b, t_, h_, w_, bh, bw)  # [b, T]
  # Box rows [y0, y1) and columns [x0, x1) per example and frame.
  full = jnp.zeros((b, t_), jnp.int32)
  y0 = jnp.select(
    [box[:, None] == 1, box[:, None] == 2, box[:, None] == 4], [full + cy, full + cy, my], full
  )
  y1 = jnp.select(
    [box[:, None] == 1, box[:, None] == 2, box[:, None] == 4],
    [full + cy + bh, full + cy + bh, my + bh],
    full + h_,
  )
  x0 = jnp.select(
    [box[:, None] == 1, box[:, None] == 3, box[:, None] == 4], [full + cx, full + cx, mx], full
  )
  x1 = jnp.select(
    [box[:, None] == 1, box[:, None] == 3, box[:, None] == 4],
    [full + cx + bw, full + cx + bw, mx + bw],
    full + w_,
  )
  ys = jnp.arange(h_)[None, None, :, None]
  xs = jnp.arange(w_)[None, None, None, :]
  inside = (
    (ys >= y0[..., None, None])
    & (ys < y1[..., None, None])
    & (xs >= x0[..., None, None])
    & (xs < x1[..., None, None])
  )  # [b, T, H, W]
  spatial = jnp.where(inverted[:, None, None, None], ~inside, inside)
  spatial = spatial & (box > 0)[:, None, None, None]
  return frames[:, :, None, None] | spatial


def pad_condition(videos: jax.Array, known: jax.Array) -> jax.Array:
  """The condition video: known pixels kept, the rest padded (see the module docstring).

  Args:
    videos: float [b, T, H, W, C] in [-1, 1].
    known: bool [b, T, H, W].

  Returns:
    float [b, T, H, W, C].
  """
  t_ = videos.shape[1]
  frame_known = jnp.all(known, axis=(2, 3))  # [b, T] fully known frames
  frame_empty = ~jnp.any(known, axis=(2, 3))  # [b, T] frames without a known pixel
  # Nearest fully known frame per frame (ties -> the earlier one).
  dist = jnp.abs(jnp.arange(t_)[:, None] - jnp.arange(t_)[None, :])  # [T, T]
  dist = jnp.where(frame_known[:, None, :], dist[None], 2 * t_ + 1)  # [b, T, T]
  nearest = jnp.argmin(dist, axis=-1)  # [b, T]
  has_source = jnp.any(frame_known, axis=-1)  # [b]
  copied = jnp.take_along_axis(videos, nearest[:, :, None, None, None], axis=1)
  fill = jnp.where((frame_empty & has_source[:, None])[..., None, None, None], copied, 0.0)
  return jnp.where(known[..., None], videos, fill).astype(videos.dtype)


def condition_region(
  known: jax.Array, token_grid: Sequence[int], causal: bool = False
) -> jax.Array:
  """Interior condition tokens: True where the token's supervoxel holds a known pixel.

  Args:
    known: bool [b, T, H, W].
    token_grid: (t, h, w) of the tokenizer's output.
    causal: the tokenizer is MAGVIT-v2's causal CNN (latent frame 0 covers frame 0 alone,
      latent frame i > 0 covers frames 1 + (i - 1) f .. i f with f = (T - 1) / (t - 1));
      otherwise latent frame i covers frames i f .. (i + 1) f - 1 with f = T / t.

  Returns:
    bool [b, t * h * w] (flattened like the token sequence).
  """
  b, t_, h_, w_ = known.shape
  t, h, w = token_grid
  if h_ % h or w_ % w:
    raise ValueError(f'video size {(h_, w_)} is not a multiple of the token grid {(h, w)}')
  if causal:
    if t < 1 or (t_ - 1) % max(t - 1, 1) or (t == 1 and t_ != 1):
      raise ValueError(f'{t_} frames do not map onto {t} causal latent frames (1 + f k)')
    first = jnp.any(known[:, :1], axis=1, keepdims=True)
    rest = known[:, 1:].reshape(b, t - 1, (t_ - 1) // max(t - 1, 1), h_, w_).any(axis=2)
    per_frame = jnp.concatenate([first, rest], axis=1) if t > 1 else first
  else:
    if t_ % t:
      raise ValueError(f'{t_} frames are not a multiple of {t} latent frames')
    per_frame = known.reshape(b, t, t_ // t, h_, w_).any(axis=2)
  region = per_frame.reshape(b, t, h, h_ // h, w, w_ // w).any(axis=(3, 5))
  return region.reshape(b, t * h * w)


def compose_inputs(
  tokens: jax.Array, cond_tokens: jax.Array, region: jax.Array, mask: jax.Array, mask_token_id: int
) -> jax.Array:
  """COMMIT's multivariate mask m(z | z~).

  Args:
    tokens: int32 [b, n], tokens of the target video.
    cond_tokens: int32 [b, n], tokens of the padded condition.
    region: bool [b, n], interior condition tokens (`condition_region`).
    mask: bool [b, n], True = masked (s_i <= s*).
    mask_token_id: the [MASK] id.

  Returns:
    int32 [b, n]: cond_tokens where masked & region, [MASK] where masked & ~region, tokens
    elsewhere.
  """
  masked = jnp.where(region, cond_tokens.astype(jnp.int32), jnp.int32(mask_token_id))
  return jnp.where(mask, masked, tokens.astype(jnp.int32))


def loss_weights(
  mask: jax.Array,
  region: jax.Array,
  *,
  mask_weight: float = 1.0,
  refine_weight: float = 1.0,
  recon_weight: float = 1.0,
) -> jax.Array:
  """Per-position loss weight [b, n] float32: masked & ~region -> mask_weight (predict),
  masked & region -> refine_weight (refine the condition token), ~masked -> recon_weight
  (reconstruct the visible token)."""
  return jnp.where(mask, jnp.where(region, refine_weight, mask_weight), recon_weight).astype(
    jnp.float32
  )


def decoding_condition(cond_tokens: jax.Array, region: jax.Array, mask_token_id: int) -> jax.Array:
  """`condition_tokens` for `decoding.maskgit.decode`: the condition token inside the condition
  region, [MASK] (= no condition) elsewhere. cond_tokens: int32 [b, n]; region: bool [b, n]."""
  return jnp.where(region, cond_tokens.astype(jnp.int32), jnp.int32(mask_token_id))


def commit_loss(
  logits: jax.Array,
  tokens: jax.Array,
  mask: jax.Array,
  region: jax.Array,
  *,
  mask_weight: float = 1.0,
  refine_weight: float = 1.0,
  recon_weight: float = 1.0,
  label_smoothing: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """COMMIT loss: sum_i w_i CE_i / sum_i w_i against the target tokens at every position.

  Args:
    logits: [b, n, k] or factorised [b, n, s, k_sub].
    tokens: int32 [b, n], the target video's tokens.
    mask, region: bool [b, n] (see `compose_inputs`).
    mask_weight, refine_weight, recon_weight: see `loss_weights`.
    label_smoothing: in [0, 1).

  Returns:
    (loss, metrics): metrics hold 'loss', the mean cross-entropy of each kind of position
    ('mask_ce', 'refine_ce', 'recon_ce'), 'accuracy' on the masked positions and the mean
    number of positions of each kind per example ('num_masked', 'num_refine').
  """
  ce, correct = mvtm.token_cross_entropy(logits, tokens, label_smoothing)
  w = loss_weights(
    mask, region, mask_weight=mask_weight, refine_weight=refine_weight, recon_weight=recon_weight
  )
  loss = jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1e-6)

  def mean_over(sel):
    sel = sel.astype(jnp.float32)
    return jnp.sum(sel * ce) / jnp.maximum(sel.sum(), 1.0)

  predict, refine = mask & ~region, mask & region
  masked = mask.astype(jnp.float32)
  metrics = {
    'loss': loss,
    'mask_ce': mean_over(predict),
    'refine_ce': mean_over(refine),
    'recon_ce': mean_over(~mask),
    'accuracy': jnp.sum(correct * masked) / jnp.maximum(masked.sum(), 1.0),
    'num_masked': masked.sum(axis=-1).mean(),
    'num_refine': refine.astype(jnp.float32).sum(axis=-1).mean(),
  }
  return loss, metrics

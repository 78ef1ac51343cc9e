"""MAGVIT's video tasks at sampling time (library side of `sample --task` / `evaluate --task`).

  condition (known pixels of the task, padded) -> condition tokens (frozen tokenizer)
  -> COMMIT decoding from all-[MASK] with the condition tokens re-injected at every step
  -> tokens -> pixels -> the known pixels pasted back (known regions never change).

`evaluate_task` scores the generated (unknown) pixels by PSNR against the ground truth and
against a baseline that needs no model: frame prediction copies the last known frame,
frame interpolation blends the two known frames linearly.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from magvit_jax.masking import commit
from magvit_jax.metrics import image as image_metrics
from magvit_jax.inference import visualize
from magvit_jax.inference.sampler import Sampler
from magvit_jax.models import tokenizers

BASELINES = {
  'FP': 'copy the last known frame',
  'CFP': 'copy the last known frame',
  'FI': 'linear blend of the two known frames',
}


def task_settings(sampler: Sampler) -> commit.TaskSettings:
  """The task sizes the transformer was trained with (its config's `commit` section)."""
  cc = sampler.config.commit
  if not cc.tasks or not sampler.model.num_tasks:
    raise ValueError(
      'the transformer in this workdir was not trained with COMMIT tasks '
      '(config.commit.tasks is empty); train with e.g. '
      'configs/magvit_ucf101.py:digits'
    )
  return commit.TaskSettings.from_config(cc)


def _check_videos(sampler: Sampler, videos: np.ndarray) -> np.ndarray:
  videos = np.asarray(videos)
  if videos.dtype != np.uint8 or videos.shape[1:] != sampler.input_shape:
    raise ValueError(
      f'videos must be uint8 [N, {", ".join(map(str, sampler.input_shape))}] '
      f'(the tokenizer input), got {videos.dtype} {videos.shape}'
    )
  return videos


def prepare_condition(
  sampler: Sampler, task: str, videos: np.ndarray, seed: int = 0
) -> dict[str, np.ndarray]:
  """The condition of `task` for each video.

  Args:
    sampler: a COMMIT-trained transformer and its tokenizer.
    task: a name in `commit.TASKS`.
    videos: uint8 [N, T, H, W, 3] ground-truth clips (only their known pixels are used).
    seed: seeds the moving boxes of OPD / IPD.

  Returns:
    {'known': bool [N, T, H, W], 'condition': uint8 [N, T, H, W, 3] (the padded condition),
     'condition_tokens': int32 [N, n] (condition token inside the condition region, the mask id
     elsewhere), 'tasks': int32 [N]}.
  """
  (task_id,) = commit.task_ids([task])
  settings = task_settings(sampler)
  videos = _check_videos(sampler, videos)
  tokenizer, tok_params, grid = sampler.tokenizer, sampler.tok_params, sampler.token_shape
  causal = tokenizer.causal
  mask_id = sampler.model.mask_token_id
  n, t, h, w = videos.shape[:4]
  tasks = jnp.full((n,), task_id, jnp.int32)

  @jax.jit
  def condition(pixels):
    x = tokenizers.to_float(pixels)
    known = commit.known_pixels(tasks, jax.random.PRNGKey(seed), t, h, w, settings)
    padded = commit.pad_condition(x, known)
    _, aux = tokenizer.apply({'params': tok_params}, padded, method='encode')
    region = commit.condition_region(known, grid, causal)
    cond = commit.decoding_condition(aux['tokens'].reshape(n, -1), region, mask_id)
    return known, tokenizers.to_uint8(padded), cond

  known, padded, cond = condition(jnp.asarray(videos))
  return {
    'known': np.asarray(known),
    'condition': np.asarray(padded),
    'condition_tokens': np.asarray(cond),
    'tasks': np.asarray(tasks),
  }


def run_task(
  sampler: Sampler,
  task: str,
  videos: np.ndarray,
  labels: Sequence[int] | None = None,
  *,
  seed: int = 0,
  **decode_kwargs: Any,
) -> dict[str, np.ndarray]:
  """Generates `task` (e.g. 'FP') for each ground-truth clip.

  Args:
    sampler: a COMMIT-trained transformer and its tokenizer.
    task: a name in `commit.TASKS`.
    videos: uint8 [N, T, H, W, 3].
    labels: [N] classes; required by the class-conditional tasks (CG, CFP), else ignored.
    seed: sampling seed.
    **decode_kwargs: batch_size, num_steps, guidance_scale, ... of `Sampler.decode_tokens`.

  Returns:
    {'videos': uint8 [N, T, H, W, 3] generated, with the known pixels pasted back;
     'generated': the decoder output before pasting; 'condition', 'known' (see
     `prepare_condition`); 'targets': the input clips; 'labels' int32 [N] as fed to the model
     (the null class for tasks without class); 'tokens'; 'history'; 'task'}.
  """
  cond = prepare_condition(sampler, task, videos, seed)
  n = len(videos)
  if task in commit.CLASS_TASKS:
    if labels is None:
      raise ValueError(f'task {task} is class-conditional: pass labels (one class per video)')
    labels = np.asarray(labels, np.int32)
  else:
    labels = np.full((n,), sampler.model.null_label, np.int32)
  init = np.full((n, sampler.model.seq_len), sampler.model.mask_token_id, np.int32)
  out = sampler.decode_tokens(
    init,
    labels,
    seed=seed,
    tasks=cond['tasks'],
    condition_tokens=cond['condition_tokens'],
    **decode_kwargs,
  )
  known = cond['known'][..., None]
  return {
    'videos': np.where(known, videos, out['images']).astype(np.uint8),
    'generated': out['images'],
    'condition': cond['condition'],
    'known': cond['known'],
    'targets': np.asarray(videos),
    'labels': labels,
    'tokens': out['tokens'],
    'history': out['history'],
    'task': np.asarray(task),
  }


def baseline(task: str, videos: np.ndarray, known: np.ndarray) -> np.ndarray:
  """The model-free baseline of a temporal task (see `BASELINES`).

  videos: uint8 [N, T, H, W, 3]; known: bool [N, T, H, W] of whole known frames.
  Returns uint8 [N, T, H, W, 3]: known frames kept, the others predicted.
  """
  if task not in BASELINES:
    raise ValueError(f'no baseline for task {task}: baselines exist for {sorted(BASELINES)}')
  frames_known = known.all(axis=(2, 3))  # [N, T]
  x = videos.astype(np.float32)
  out = x.copy()
  for i in range(len(videos)):
    idx = np.flatnonzero(frames_known[i])
    for t in np.flatnonzero(~frames_known[i]):
      before, after = idx[idx < t], idx[idx > t]
      if task == 'FI' and before.size and after.size:
        a, b = before[-1], after[0]
        out[i, t] = x[i, a] + (x[i, b] - x[i, a]) * (t - a) / (b - a)
      else:
        out[i, t] = x[i, before[-1] if before.size else after[0]]
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def region_psnr(pred: np.ndarray, target: np.ndarray, region: np.ndarray) -> np.ndarray:
  """PSNR in dB over the pixels in `region` (bool [N, T, H, W]) per example.
  pred, target: uint8 [N, T, H, W, 3]. Returns float64 [N], capped at 100 dB (exact regions)."""
  p = image_metrics.psnr(np.asarray(pred), np.asarray(target), 255.0, mask=region[..., None])
  return np.minimum(p, 100.0)


def evaluate_task(
  sampler: Sampler,
  task: str,
  videos: np.ndarray,
  labels: Sequence[int] | None = None,
  *,
  seed: int = 0,
  **decode_kwargs: Any,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """PSNR of the generated pixels of `task` on ground-truth clips, and of its baseline.

  Returns ({'<task>/psnr': mean PSNR over the unknown pixels, '<task>/baseline_psnr' (tasks
  with a baseline), '<task>/examples'}, the `run_task` result).
  """
  result = run_task(sampler, task, videos, labels, seed=seed, **decode_kwargs)
  unknown = ~result['known']
  metrics = {
    f'{task}/psnr': float(region_psnr(result['videos'], videos, unknown).mean()),
    f'{task}/examples': float(len(videos)),
  }
  if task in BASELINES:
    base = baseline(task, np.asarray(videos), result['known'])
    metrics[f'{task}/baseline_psnr'] = float(region_psnr(base, videos, unknown).mean())
  return metrics, result


def load_clips(config: Any, num: int, split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The first `num` clips (uint8 [N, T, H, W, 3]) and labels of a run's eval split.

  config: the run's ConfigDict (e.g. `Sampler.config` or `pretrained.read_config`).
  """
  from magvit_jax.data import pipeline  # TF is imported only here.

  data = config.data
  videos, labels = [], []
  for batch in pipeline.create_dataset(
    data, split=split or data.eval_split, batch_size=min(num, 64), train=False, drop_remainder=False
  ):
    videos.append(np.asarray(batch['video']))
    labels.append(np.asarray(batch['label']))
    if sum(len(v) for v in videos) >= num:
      break
  if not videos:
    raise ValueError(f'no clips in split {split or data.eval_split} of {data.name}')
  return np.concatenate(videos)[:num], np.concatenate(labels)[:num]


def write_task_samples(
  output: str, result: dict[str, np.ndarray], max_clips: int | None = None
) -> None:
  """samples.npz (images = generated videos uint8 [N, T, H, W, 3], labels, condition, known,
  targets, task), grid.png (per clip three rows of frames: condition, generated, ground truth)
  and samples.gif (per clip condition | generated | ground truth side by side); the pictures
  show the first `max_clips` clips (all by default)."""
  os.makedirs(output, exist_ok=True)
  np.savez(
    os.path.join(output, 'samples.npz'),
    images=result['videos'],
    labels=result['labels'],
    condition=result['condition'],
    known=result['known'],
    targets=result['targets'],
    task=result['task'],
  )
  shown = slice(0, max_clips)
  cond, gen, gt = (result[k][shown] for k in ('condition', 'videos', 'targets'))
  n, t = gen.shape[:2]
  rows = np.stack([cond, gen, gt], axis=1).reshape(n * 3 * t, *gen.shape[2:])
  visualize.save_png(os.path.join(output, 'grid.png'), visualize.image_grid(rows, ncols=t), scale=2)
  side = np.concatenate([cond, gen, gt], axis=3)  # [N, T, H, 3W, 3]
  frames = np.stack([visualize.image_grid(side[:, i], ncols=min(n, 4)) for i in range(t)])
  visualize.save_gif(os.path.join(output, 'samples.gif'), frames, fps=4, scale=2)

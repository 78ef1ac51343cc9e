"""The training loop shared by the stage trainers.

Per step: host batch -> global sharded arrays -> jitted step (dispatched
asynchronously; metrics stay on device). Every `log_every` steps the buffered
metrics are fetched once, checked for NaN/Inf, written and shown. Every
`checkpoint_every` steps (and at the end) the state is saved -- only after the
losses leading up to it were checked, so no checkpoint ever holds a NaN state.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import numpy as np

from magvit_jax import parallel
from magvit_jax.checkpoint import Checkpointer
from magvit_jax.trainers import metrics_writer as mw


def run_loop(*, state: Any, train_step: Callable[[Any, dict], tuple[Any, dict]],
             batches: Iterator[dict[str, np.ndarray]], mesh, checkpointer: Checkpointer,
             writer: mw.MetricsWriter, config, start_step: int, stage: str,
             max_steps: int | None = None,
             extra_scalars: Callable[[dict[str, float], float], dict[str, float]] | None = None) -> Any:
  """Runs steps start_step+1 .. config.num_train_steps.

  max_steps: stop after this step *without* the final checkpoint, as a kill
    would (used by the resume tests).
  extra_scalars: (averaged metrics, steps/s) -> more scalars to log (e.g. MFU).
  Returns the final state.
  """
  total = int(config.num_train_steps)
  log_every = int(config.log_every)
  ckpt_every = int(config.checkpoint_every)
  progress = mw.Progress(total, start_step, stage)
  last_ckpt = checkpointer.latest_step()
  pending: list[dict[str, Any]] = []
  pending_steps: list[int] = []

  def flush() -> None:
    if not pending:
      return
    stacked = mw.stack_metrics(jax.device_get(pending))
    mw.check_finite(pending_steps, stacked['loss'], last_ckpt, checkpointer.directory)
    for i, step in enumerate(pending_steps):
      writer.write(step, {k: v[i] for k, v in stacked.items()})
    shown = {k: float(np.mean(v)) for k, v in stacked.items()}
    rate = progress.rate(pending_steps[-1])
    if extra_scalars is not None:
      more = extra_scalars(shown, rate)
      writer.write(pending_steps[-1], more)
      shown.update(more)
    progress.show(pending_steps[-1], shown, rate)
    pending.clear()
    pending_steps.clear()

  for step in range(start_step + 1, total + 1):
    batch = parallel.shard_batch(next(batches), mesh)
    state, metrics = train_step(state, batch)
    pending.append(metrics)
    pending_steps.append(step)
    if step % log_every == 0 or step == total:
      flush()
    if max_steps is not None and step >= max_steps:
      flush()
      return state
    if step % ckpt_every == 0 or step == total:
      flush()
      checkpointer.save(step, state)
      last_ckpt = step
  flush()
  return state

"""The training loop shared by the stage trainers.

Per step: host batch -> global sharded arrays -> jitted step (dispatched
asynchronously; metrics stay on device). Every `log_every` steps the buffered
metrics are fetched once, checked for NaN/Inf, written and shown. Every
`checkpoint_every` steps (and at the end) the state is saved -- only after the
losses leading up to it were checked, so no checkpoint ever holds a NaN state.
With `config.checkpoint_async` the save returns once the state is on the host and
the steps go on while orbax writes it; the next save, the end of the loop, a
preemption and an error wait for it (a failed write raises there, naming its step).

Preemption (TPU maintenance, spot VMs, `kill`): while the loop runs, SIGTERM
only sets a flag (the previous handler is restored when the loop exits). At
the next step boundary where the flag is looked at, the pending metrics are
flushed and checked, the state of that step is saved, "preempted at step N,
checkpoint saved" is logged (once that checkpoint is written, also with
`checkpoint_async`) and `Preempted` is raised; `magvit_jax.train`
catches it and exits with status 0. Re-running the same command resumes from
that checkpoint, and the resumed run's losses equal an uninterrupted run's.

Data: every checkpoint also stores where each training stream stands (its position and skip
counts per process, `data_state`), so a resume reads on exactly from there even when bad
records were skipped; the skip counts of the streams (`data/skipped`,
`data/skipped_fraction`, summed over processes) go into the metrics at every log step.
With several processes the flag is OR-ed over all processes (a tiny
all-gather) every `preemption_sync_every` steps, so all of them stop -- and
save -- at the same step; on one process it is looked at after every step.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Any, Callable, Iterator

import jax
import numpy as np

from magvit_jax import parallel
from magvit_jax.checkpoint import Checkpointer
from magvit_jax import metrics_writer as mw

# Multi-process runs agree on the SIGTERM flag every this many steps (at most;
# also at every log step). Each agreement is a blocking all-gather of one int.
PREEMPTION_SYNC_EVERY = 10


class Preempted(Exception):
  """Raised by `run_loop` after a SIGTERM: the state of `step` was saved to `directory`."""

  def __init__(self, step: int, directory: str):
    super().__init__(f'preempted at step {step}, checkpoint saved in {directory}/{step}')
    self.step = step
    self.directory = directory


def _streams(batches: Any) -> dict[str, Any]:
  """The training streams behind `batches`: {'data': ...} for one `GoodBatches`, the
  `streams` of a `MixedBatches`, {} for a plain iterator (tests)."""
  if hasattr(batches, 'streams'):
    return dict(batches.streams)
  return {'data': batches} if hasattr(batches, 'state') else {}


def _data_state(streams: dict[str, Any]) -> dict[str, dict[str, list[int]]] | None:
  """{stream: {'position': [per process], 'read': [...], 'skipped': [...]}}, gathered from
  every process (a collective), for the checkpoint; None without streams."""
  if not streams:
    return None
  names = sorted(streams)
  local = [v for n in names for v in _counts(streams[n])]
  table = parallel.gather_ints(local).reshape(-1, len(names), 3)
  out = {
    n: {
      key: [int(v) for v in table[:, i, j]] for j, key in enumerate(('position', 'read', 'skipped'))
    }
    for i, n in enumerate(names)
  }
  for n in names:
    # What the positions mean ('files': per process shard, 'rows': the global stream); the
    # same on every process (one config), so a resume can refuse positions it cannot use.
    sharding = getattr(streams[n], 'host_sharding', None)
    if sharding is not None:
      out[n]['host_sharding'] = sharding
  return out


def _counts(stream: Any) -> tuple[int, int, int]:
  state = stream.state()
  return state['position'], state['read'], state['skipped']


def _data_scalars(data_state: dict[str, dict[str, list[int]]] | None) -> dict[str, float]:
  """Skip metrics summed over processes: {'<stream>/skipped', '<stream>/skipped_fraction'}."""
  out = {}
  for name, counts in (data_state or {}).items():
    read, skipped = sum(counts['read']), sum(counts['skipped'])
    out[f'{name}/skipped'] = float(skipped)
    out[f'{name}/skipped_fraction'] = skipped / max(read, 1)
  return out


class _SigtermFlag:
  """Context manager: while active, SIGTERM sets `.requested` instead of killing the process.

  The previous handler is restored on exit. Outside the main thread (where
  Python cannot install signal handlers) it does nothing.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._installed = False

  def _handle(self, signum, frame) -> None:  # pylint: disable=unused-argument
    self.requested = True

  def __enter__(self) -> '_SigtermFlag':
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
      self._installed = True
    return self

  def __exit__(self, *exc) -> None:
    if self._installed:
      # None: the previous handler was not installed from Python; fall back to the default.
      signal.signal(
        signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL
      )
      self._installed = False


def run_loop(
  *,
  state: Any,
  train_step: Callable[[Any, dict], tuple[Any, dict]],
  batches: Iterator[dict[str, np.ndarray]],
  mesh,
  checkpointer: Checkpointer,
  writer: mw.MetricsWriter,
  config,
  start_step: int,
  stage: str,
  max_steps: int | None = None,
  extra_scalars: Callable[[dict[str, float], float], dict[str, float]] | None = None,
  preemption_sync_every: int | None = None,
) -> Any:
  """Runs steps start_step+1 .. config.num_train_steps.

  max_steps: stop after this step *without* the final checkpoint, as a kill
    would (used by the resume tests).
  extra_scalars: (averaged metrics, steps/s) -> more scalars to log (e.g. MFU).
  preemption_sync_every: with several processes, how often (in steps) they
    agree on whether a SIGTERM arrived; default min(log_every,
    PREEMPTION_SYNC_EVERY). Log steps always sync. Ignored on one process
    (checked after every step).
  Returns the final state.
  Raises:
    Preempted: after a SIGTERM, once the current step's state is saved.
    NonFiniteLossError: on a NaN/Inf loss (nothing is saved after it).
  """
  print(f'[{stage}] {parallel.describe_runtime(mesh)}', flush=True)
  with _SigtermFlag() as sigterm:
    try:
      state = _run_steps(
        state=state,
        train_step=train_step,
        batches=batches,
        mesh=mesh,
        checkpointer=checkpointer,
        writer=writer,
        config=config,
        start_step=start_step,
        stage=stage,
        max_steps=max_steps,
        extra_scalars=extra_scalars,
        sigterm=sigterm,
        sync_every=preemption_sync_every,
      )
    except BaseException:
      # A checkpoint still being written in the background (`checkpoint_async`) is finished
      # before the error propagates (its own failure would only hide this error).
      with contextlib.suppress(Exception):
        _wait_for_save(checkpointer)
      raise
    finally:
      writer.flush(force=True)  # Buffered rows of object-store workdirs, even on errors.
    _wait_for_save(checkpointer)  # The final checkpoint is on disk when the loop returns.
    return state


def _wait_for_save(checkpointer: Checkpointer) -> None:
  """Waits for a checkpoint being written in the background; raises its CheckpointSaveError."""
  wait = getattr(checkpointer, 'wait', None)
  if wait is not None:
    wait()


def _run_steps(
  *,
  state,
  train_step,
  batches,
  mesh,
  checkpointer,
  writer,
  config,
  start_step,
  stage,
  max_steps,
  extra_scalars,
  sigterm: _SigtermFlag,
  sync_every: int | None,
) -> Any:
  """The body of `run_loop`, with SIGTERM turned into `sigterm.requested`."""
  total = int(config.num_train_steps)
  log_every = int(config.log_every)
  ckpt_every = int(config.checkpoint_every)
  multiprocess = jax.process_count() > 1
  sync_every = max(1, int(sync_every or min(log_every, PREEMPTION_SYNC_EVERY)))
  progress = mw.Progress(total, start_step, stage)
  last_ckpt = checkpointer.latest_step()
  pending: list[dict[str, Any]] = []
  pending_steps: list[int] = []
  streams = _streams(batches)

  def save(step: int) -> None:
    checkpointer.save(step, state, _data_state(streams))

  def flush() -> None:
    if not pending:
      return
    stacked = mw.stack_metrics(jax.device_get(pending))
    mw.check_finite(pending_steps, stacked['loss'], last_ckpt, checkpointer.directory)
    for i, step in enumerate(pending_steps):
      writer.write(step, {k: v[i] for k, v in stacked.items()})
    if streams:  # A collective: every process flushes at the same steps.
      writer.write(pending_steps[-1], _data_scalars(_data_state(streams)))
    shown = {k: float(np.mean(v)) for k, v in stacked.items()}
    rate = progress.rate(pending_steps[-1])
    if extra_scalars is not None:
      more = extra_scalars(shown, rate)
      writer.write(pending_steps[-1], more)
      shown.update(more)
    progress.show(pending_steps[-1], shown, rate)
    writer.flush()  # Object-store workdirs: a new metrics part, at most every part_every_s.
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
      writer.flush(force=True)  # The metrics up to a checkpoint are stored before it.
      save(step)
      last_ckpt = step
    if multiprocess:
      # Every process reaches the same steps, so they all take part in each all-gather.
      stop = (
        step % sync_every == 0 or step % log_every == 0 or step == total
      ) and parallel.any_process(sigterm.requested)
    else:
      stop = sigterm.requested
    if stop:
      flush()  # The NaN check comes first: never save a state whose losses were not finite.
      writer.flush(force=True)
      if last_ckpt != step:
        save(step)
        last_ckpt = step
      _wait_for_save(checkpointer)  # Written and finalized before the process may be killed.
      print(
        f'[{stage}] preempted at step {step}, checkpoint saved in {checkpointer.directory}/{step}',
        flush=True,
      )
      writer.close()
      sys.stdout.flush()
      raise Preempted(step, checkpointer.directory)
  flush()
  return state

"""Metrics log (JSON lines + TensorBoard), progress line and the NaN guard.

Each logged step is one JSON line `{"step": s, "<name>": value, ...}`. Where
the lines go depends on the workdir (`magvit_jax.fileio`):

  * local: appended to `<workdir>/metrics.jsonl` as they come (`tail -f` works);
  * object store (`gs://bucket/run`): objects cannot be appended to, so rows
    are buffered in memory and each `flush()` writes them as a new, never
    rewritten file `<workdir>/metrics/<time_ns>-<first step>-<last step>.jsonl`
    (name order = write order). The training loop calls `flush()` after each
    log step -- a new file at most every `part_every_s` seconds (60) -- and
    forces it before every checkpoint, on preemption/errors and in `close()`,
    so the metrics up to a saved checkpoint are always stored.

`read_metrics` reads `metrics.jsonl` and then `metrics/*.jsonl` in name order
(either may be absent; old workdirs only have the former) and merges the rows
of a step, later values winning: a resumed run re-logs the steps after its
last checkpoint.

TensorBoard events go to `<workdir>/tensorboard` through tensorboardX (no
TensorFlow needed). On gs:// tensorboardX uploads with google-cloud-storage;
without that package (or on another object store without its client)
TensorBoard is turned off with one log line and only the JSON lines are kept.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
import time
from typing import Any, Iterable

from absl import logging
import numpy as np

from magvit_jax import fileio

METRICS_FILE = 'metrics.jsonl'
METRICS_DIR = 'metrics'
# Object-store clients tensorboardX's own writers need, by URI scheme.
_TB_REMOTE_CLIENTS = {'gs': 'google.cloud.storage', 's3': 'boto3'}


class NonFiniteLossError(FloatingPointError):
  pass


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


def _open_tensorboard(logdir: str, metrics_path: str):
  """A tensorboardX SummaryWriter for `logdir`, or None (logged) where it cannot write."""
  if fileio.is_remote(logdir):
    scheme = logdir.partition('://')[0]
    client = _TB_REMOTE_CLIENTS.get(scheme)
    try:
      if client is None:
        raise ImportError(f'tensorboardX has no writer for {scheme}://')
      importlib.import_module(client)
    except ImportError as e:
      logging.warning(
        'TensorBoard events are off for %s (%s; tensorboardX writes gs:// with '
        '`pip install google-cloud-storage`); metrics still go to %s',
        logdir,
        e,
        metrics_path,
      )
      return None
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  except ImportError:  # pragma: no cover - tensorboardX is a dependency
    return None
  return SummaryWriter(logdir)


class MetricsWriter:
  """Writes scalars as JSON lines and to TensorBoard; only process 0 writes (`enabled`).

  Args:
    workdir: local directory or object-store URI ('gs://bucket/run').
    enabled: False on the processes that must not write.
    parts: write `metrics/*.jsonl` files per flush instead of appending to
      `metrics.jsonl`; default: True exactly for object-store workdirs.
    part_every_s: an unforced `flush()` writes a new part at most this often.
  """

  def __init__(
    self, workdir: str, enabled: bool = True, parts: bool | None = None, part_every_s: float = 60.0
  ):
    self.enabled = enabled
    self.workdir = str(workdir)
    self.parts = fileio.is_remote(workdir) if parts is None else bool(parts)
    self.part_every_s = part_every_s
    # Where the rows go: the metrics.jsonl file, or the folder of part files.
    self.path = fileio.join(workdir, METRICS_DIR if self.parts else METRICS_FILE)
    self._pending: list[dict[str, float]] = []
    self._last_part_t = time.monotonic()
    self._last_part_ns = 0
    self._tb = None
    if enabled:
      fileio.makedirs(self.path if self.parts else workdir)
      self._tb = _open_tensorboard(fileio.join(workdir, 'tensorboard'), self.path)

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    if not self.enabled:
      return
    row = {'step': int(step)}
    row.update({k: float(v) for k, v in scalars.items()})
    if self.parts:
      self._pending.append(row)
    else:
      with fileio.as_path(self.path).open('a') as f:
        f.write(json.dumps(row) + '\n')
    if self._tb is not None:
      for k, v in row.items():
        if k != 'step':
          self._tb.add_scalar(k, v, int(step))

  def flush(self, force: bool = False) -> None:
    """Parts layout: writes the buffered rows as one new file (unforced: if part_every_s passed)."""
    if not self._pending or (
      not force and time.monotonic() - self._last_part_t < self.part_every_s
    ):
      return
    # Strictly increasing names even if the wall clock steps back.
    self._last_part_ns = max(time.time_ns(), self._last_part_ns + 1)
    name = (
      f'{self._last_part_ns:020d}-{self._pending[0]["step"]:09d}-'
      f'{self._pending[-1]["step"]:09d}.jsonl'
    )
    fileio.as_path(fileio.join(self.path, name)).write_text(
      ''.join(json.dumps(row) + '\n' for row in self._pending)
    )
    self._pending.clear()
    self._last_part_t = time.monotonic()

  def close(self) -> None:
    self.flush(force=True)
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()
      self._tb = None


def _metrics_files(workdir: str) -> list[str]:
  """metrics.jsonl (if any), then metrics/*.jsonl in name (= write) order."""
  files = []
  single = fileio.join(workdir, METRICS_FILE)
  if fileio.exists(single):
    files.append(single)
  parts = fileio.as_path(fileio.join(workdir, METRICS_DIR))
  if parts.exists():
    files += [str(p) for p in sorted(parts.glob('*.jsonl'), key=lambda p: p.name)]
  return files


def read_metrics(workdir: str) -> dict[int, dict[str, float]]:
  """step -> metrics; rows of the same step are merged, later values winning (resumed runs re-log).

  A truncated last line (a process killed while appending) is skipped.
  """
  out: dict[int, dict[str, float]] = {}
  for path in _metrics_files(workdir):
    lines = [line for line in fileio.read_text(path).splitlines() if line.strip()]
    for i, line in enumerate(lines):
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        if i == len(lines) - 1:
          continue
        raise
      out.setdefault(row['step'], {}).update(row)
  return out


class Progress:
  """A steady log line: step, loss, it/s and ETA."""

  def __init__(self, total_steps: int, start_step: int, stage: str, stream=None):
    self.total = total_steps
    self.stage = stage
    self.stream = stream or sys.stdout
    self._t0 = time.perf_counter()
    self._step0 = start_step
    self._last_t = self._t0
    self._last_step = start_step

  def rate(self, step: int) -> float:
    """Steps per second since the previous call."""
    now = time.perf_counter()
    rate = (step - self._last_step) / max(now - self._last_t, 1e-9)
    self._last_t, self._last_step = now, step
    return rate

  def show(self, step: int, scalars: dict[str, float], rate: float) -> None:
    overall = (step - self._step0) / max(time.perf_counter() - self._t0, 1e-9)
    eta = (self.total - step) / max(overall, 1e-9)
    shown = ' '.join(f'{k} {v:.4g}' for k, v in scalars.items())
    print(
      f'[{self.stage}] step {step}/{self.total} {shown} | {rate:.2f} it/s | '
      f'ETA {_format_duration(eta)}',
      file=self.stream,
      flush=True,
    )


def check_finite(
  steps: Iterable[int], losses: Iterable[float], last_checkpoint: int | None, checkpoint_dir: str
) -> None:
  """Raises NonFiniteLossError naming the first bad step and the last good checkpoint."""
  for step, loss in zip(steps, losses):
    if not math.isfinite(float(loss)):
      where = (
        f'{checkpoint_dir}/{last_checkpoint}'
        if last_checkpoint is not None
        else 'none (no checkpoint was saved yet)'
      )
      raise NonFiniteLossError(
        f'loss is {loss} at step {step}; training stopped. Last good checkpoint: {where}. '
        f'Lower config.optimizer.lr or raise config.optimizer.warmup_steps and resume.'
      )


def stack_metrics(history: list[dict[str, Any]]) -> dict[str, np.ndarray]:
  """List of per-step metric dicts (device scalars) -> name -> [steps] numpy array."""
  if not history:
    return {}
  return {k: np.asarray([float(h[k]) for h in history]) for k in history[0]}

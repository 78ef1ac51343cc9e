"""Metrics log (metrics.jsonl + TensorBoard), progress line and the NaN guard.

Each logged step appends one JSON line `{"step": s, "<name>": value, ...}` to
`<workdir>/metrics.jsonl` and the same scalars to TensorBoard event files in
`<workdir>/tensorboard` (written by tensorboardX, no TensorFlow needed). A
resumed run re-logs the steps after its last checkpoint; readers merge the
rows of a step, later values winning (`read_metrics`).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Iterable

import numpy as np


class NonFiniteLossError(FloatingPointError):
  pass


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


class MetricsWriter:
  """Writes scalars to metrics.jsonl and TensorBoard; only process 0 writes."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))
      except ImportError:  # pragma: no cover - tensorboardX is a dependency
        self._tb = None

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    if not self.enabled:
      return
    row = {'step': int(step)}
    row.update({k: float(v) for k, v in scalars.items()})
    with open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')
    if self._tb is not None:
      for k, v in row.items():
        if k != 'step':
          self._tb.add_scalar(k, v, int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


def read_metrics(workdir: str) -> dict[int, dict[str, float]]:
  """step -> metrics; rows of the same step are merged, later values winning (resumed runs re-log)."""
  out: dict[int, dict[str, float]] = {}
  path = os.path.join(workdir, 'metrics.jsonl')
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        row = json.loads(line)
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
    print(f'[{self.stage}] step {step}/{self.total} {shown} | {rate:.2f} it/s | '
          f'ETA {_format_duration(eta)}', file=self.stream, flush=True)


def check_finite(steps: Iterable[int], losses: Iterable[float], last_checkpoint: int | None,
                 checkpoint_dir: str) -> None:
  """Raises NonFiniteLossError naming the first bad step and the last good checkpoint."""
  for step, loss in zip(steps, losses):
    if not math.isfinite(float(loss)):
      where = (f'{checkpoint_dir}/{last_checkpoint}' if last_checkpoint is not None
               else 'none (no checkpoint was saved yet)')
      raise NonFiniteLossError(
          f'loss is {loss} at step {step}; training stopped. Last good checkpoint: {where}. '
          f'Lower config.optimizer.lr or raise config.optimizer.warmup_steps and resume.')


def stack_metrics(history: list[dict[str, Any]]) -> dict[str, np.ndarray]:
  """List of per-step metric dicts (device scalars) -> name -> [steps] numpy array."""
  if not history:
    return {}
  return {k: np.asarray([float(h[k]) for h in history]) for k in history[0]}

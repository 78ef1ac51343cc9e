"""SIGKILL at random moments, again and again: every restart resumes exactly.

A measured fault-injection trial of the real CLI (`python -m magvit_jax.train`) on the tiny
tokenizer of tests/tiny_configs.py (`vqgan`, a save every CHECKPOINT_EVERY steps):

1. a reference run trains STEPS steps uninterrupted;
2. in a fresh workdir the same command is started again and again and SIGKILLed KILLS times
   at seeded random moments: SAVE_KILLS of them a random fraction of a second after a save's
   temporary directory (orbax's `<step>.orbax-checkpoint-tmp`) appears, EARLY_KILLS at a random
   time before the run's first save, the others a random moment after one of its saves
   completed (between saves); the last start runs to the end.

Whether a kill landed during a save is what was seen on disk, not what was aimed at: an
unfinished temporary directory of the killed run is left behind. Checked: each restart
resumed from the newest checkpoint on disk after the kill (which was readable: no 'damaged'
warning, nothing set aside), orbax never counted a temporary directory as a checkpoint, the
metrics log holds every step 1..STEPS with each step's loss the same in every run that logged
it (the reference's), and the final train state equals the reference's bit for bit.

A summary (kills, kills during a save, runs resumed, steps lost, data lost) is printed and,
with $KILL_SAFETY_REPORT set, written to that path as JSON (the numbers of docs/reliability.md).
Subprocesses share a persistent XLA compilation cache in tmp_path, so a restart compiles
nothing; they run under the test process's environment (tests/conftest.py: 8 CPU devices,
JAX_DISABLE_MOST_OPTIMIZATIONS).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from magvit_jax import checkpoint as ckpt_lib
import tiny_configs  # tests/tiny_configs.py

# Trains in many subprocesses: the full suite (CI) runs it, the fast lane (-m 'not slow') skips it.
pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]

KILLS = 20  # SIGKILLs over the trial.
SEED = 2024  # Of the kill plan (kinds, moments).
STEPS = 12
CHECKPOINT_EVERY = 2
SAVE_KILLS = 7  # Aimed at a save; at least a third of the kills must land in one.
EARLY_KILLS = 9  # At a random time before the run's first save; the rest between saves.
SAVE_DELAY_S = 0.4  # A save kill comes up to this long after the temporary directory appears.
BETWEEN_DELAY_S = 0.4  # A between-saves kill: up to this long after a save completed.
RUN_TIMEOUT_S = 150  # Any single run.
POLL_S = 0.02

# Orbax's name mark of an unfinished step directory (`<step>.orbax-checkpoint-tmp...`).
TMP_MARK = ocp.path.atomicity_types.TMP_DIR_SUFFIX
RESUMED = re.compile(r'^\[tokenizer\] resumed from .*/(\d+)$', re.M)
# Printed by the training loop once the state is restored (or created): past the resume.
LOOP_STARTED = re.compile(r'^\[tokenizer\] process \d+/\d+ ', re.M)
TROUBLE = re.compile(r'.*(?:damaged|set aside|\[checkpoint\] moved).*', re.I)


class _Run:
  """One `python -m magvit_jax.train` process; stdout and stderr go to `log`."""

  def __init__(self, config: pathlib.Path, workdir: pathlib.Path, env: dict, log: pathlib.Path):
    self.workdir = workdir
    self.log = log
    self.metrics_offset = _metrics_size(workdir)
    self._out = log.open('w')
    self.t0 = time.monotonic()
    command = [
      sys.executable,
      '-m',
      'magvit_jax.train',
      f'--config={config}',
      f'--workdir={workdir}',
      # A small held-out set: the evaluation at the end is not what is tested.
      '--config.data.eval_split=test[:16]',
      '--config.eval_batch_size=16',
    ]
    self.proc = subprocess.Popen(
      command, cwd=REPO, env=env, stdout=self._out, stderr=subprocess.STDOUT
    )

  def elapsed(self) -> float:
    return time.monotonic() - self.t0

  def alive(self) -> bool:
    return self.proc.poll() is None

  def kill(self) -> None:
    if self.alive():
      os.kill(self.proc.pid, signal.SIGKILL)
    self.proc.wait(timeout=60)
    self._out.close()

  def wait(self) -> int:
    try:
      rc = self.proc.wait(timeout=max(1.0, RUN_TIMEOUT_S - self.elapsed()))
    finally:
      self.kill()
    return rc

  def output(self) -> str:
    return self.log.read_text(errors='replace')

  def tail(self, n: int = 3000) -> str:
    return f'--- {self.log} (last {n} chars) ---\n{self.output()[-n:]}'


def _env(cache: pathlib.Path) -> dict:
  env = dict(os.environ, PYTHONPATH=str(REPO))
  env.update(
    JAX_COMPILATION_CACHE_DIR=str(cache),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
  )
  return env


def _entries(ckpt_dir: pathlib.Path) -> dict[str, tuple[int, int]]:
  """name -> (inode, ctime) of each entry of the checkpoint directory ({} if there is none)."""
  out = {}
  try:
    with os.scandir(ckpt_dir) as it:
      for entry in it:
        try:
          st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:  # Removed while listing.
          continue
        out[entry.name] = (st.st_ino, st.st_ctime_ns)
  except FileNotFoundError:
    pass
  return out


def _tmp_dirs(entries: dict) -> set[tuple[str, tuple[int, int]]]:
  return {(name, ident) for name, ident in entries.items() if TMP_MARK in name}


def _steps(entries: dict) -> list[int]:
  """The finalized checkpoints: entries named by a step number only."""
  return sorted(int(name) for name in entries if name.isdigit())


def _metrics_size(workdir: pathlib.Path) -> int:
  path = workdir / 'metrics.jsonl'
  return path.stat().st_size if path.exists() else 0


def _loss_rows(workdir: pathlib.Path, offset: int = 0) -> tuple[list[tuple[int, float]], list[str]]:
  """(step, loss) of each training row of metrics.jsonl from byte `offset`, and unreadable lines."""
  path = workdir / 'metrics.jsonl'
  if not path.exists():
    return [], []
  with path.open('rb') as f:
    f.seek(offset)
    text = f.read().decode(errors='replace')
  rows, bad = [], []
  for line in text.splitlines():
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      bad.append(line)
      continue
    if 'loss' in row:
      rows.append((int(row['step']), row['loss']))
  return rows, bad


def _orbax_steps(ckpt_dir: pathlib.Path) -> list[int]:
  """The steps orbax itself lists (what a restart can resume from)."""
  if not ckpt_dir.exists():
    return []
  checkpointer = ckpt_lib.Checkpointer(str(ckpt_dir), {})
  try:
    return sorted(checkpointer.all_steps())
  finally:
    checkpointer.close()


def _train_state(workdir: pathlib.Path, step: int) -> Any:
  """The whole saved train state of `step` as numpy arrays."""
  path = epath.Path(workdir) / 'checkpoints' / str(step) / 'state'
  metadata = ocp.PyTreeCheckpointHandler().metadata(path)
  tree = getattr(metadata, 'tree', metadata)
  restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  finally:
    checkpointer.close()


def _watch(run: _Run, before: dict, kind: str, u: float, early_window: float) -> dict[str, Any]:
  """Waits for the moment of a `kind` kill of `run` (u: its uniform draw) and SIGKILLs it.

  before: the checkpoint directory's entries before the run started (its leftover temporary
  directories are not this run's saves). Returns what was seen: 'killed' (False when the run
  ended first), 'at_s' (time of the kill or the end), 'first_save_s' (when the run's first
  temporary directory appeared, if it did).
  """
  ckpt_dir = run.workdir / 'checkpoints'
  stale = _tmp_dirs(before)
  newest_at_start = max(_steps(before), default=0)
  kill_at = u * early_window if kind == 'early' else None
  first_save_s = None
  while True:
    if not run.alive():
      return dict(killed=False, at_s=run.elapsed(), first_save_s=first_save_s)
    assert run.elapsed() < RUN_TIMEOUT_S, f'no {kind} kill within {RUN_TIMEOUT_S} s\n{run.tail()}'
    entries = _entries(ckpt_dir)
    saving = bool(_tmp_dirs(entries) - stale)
    if saving and first_save_s is None:
      first_save_s = run.elapsed()
    if kind == 'early' and (run.elapsed() >= kill_at or saving):
      break  # Before the first save, or (a fast start) just as it begins.
    if kind == 'save' and saving:
      time.sleep(u * SAVE_DELAY_S)
      break
    if kind == 'between' and max(_steps(entries), default=0) > newest_at_start:
      time.sleep(u * BETWEEN_DELAY_S)
      break
    time.sleep(POLL_S)
  at_s = run.elapsed()
  run.kill()
  return dict(killed=True, at_s=at_s, first_save_s=first_save_s)


def _plan() -> list[tuple[str, float]]:
  """KILLS (kind, uniform draw) pairs in a seeded random order."""
  rng = np.random.default_rng(SEED)
  kinds = ['save'] * SAVE_KILLS + ['early'] * EARLY_KILLS
  kinds += ['between'] * (KILLS - len(kinds))
  kinds = [kinds[i] for i in rng.permutation(KILLS)]
  return [(kind, float(u)) for kind, u in zip(kinds, rng.uniform(size=KILLS))]


def _resumed(output: str) -> int | None:
  """The step a run resumed from (0: a fresh start), None if it was killed before knowing."""
  if not LOOP_STARTED.search(output):
    return None
  found = RESUMED.findall(output)
  return int(found[-1]) if found else 0


def _summary(kills: list[dict], resumed_runs: int, data_lost: int) -> dict:
  lost = [k['steps_lost'] for k in kills]
  return dict(
    kills=len(kills),
    kills_during_save=sum(k['during_save'] for k in kills),
    kills_before_first_checkpoint=sum(k['newest_after'] == 0 for k in kills),
    runs_resumed=resumed_runs,
    max_steps_lost=max(lost, default=0),
    total_steps_lost=sum(lost),
    data_lost_steps=data_lost,
    steps=STEPS,
    checkpoint_every=CHECKPOINT_EVERY,
    seed=SEED,
  )


def _print_report(kills: list[dict], summary: dict) -> None:
  print(
    f'\nkill-safety trial: {summary["kills"]} SIGKILLs of `python -m magvit_jax.train` '
    f'(tiny VQGAN, {STEPS} steps, a checkpoint every {CHECKPOINT_EVERY}, seed {SEED}); '
    f'{summary["seconds"]} s in all, of which the reference run {summary["reference_run_s"]} s '
    f'and the last (resumed, uninterrupted) run {summary["final_run_s"]} s'
  )
  print('  #  aimed at  at kill (s)  in a save  newest ckpt  next resumed  last logged  lost')
  for i, k in enumerate(kills, 1):
    resumed = '-' if k['resumed'] is None else k['resumed']
    logged = '-' if k['last_logged'] is None else k['last_logged']
    print(
      f'{i:3d}  {k["kind"]:8s}  {k["at_s"]:11.1f}  {"yes" if k["during_save"] else "no":>9s}  '
      f'{k["newest_after"]:11d}  {resumed:>12}  {logged:>11}  {k["steps_lost"]:4d}'
    )
  print(f'  kills                        {summary["kills"]}')
  print(f'  kills during a save          {summary["kills_during_save"]}')
  print(f'  kills before any checkpoint  {summary["kills_before_first_checkpoint"]}')
  print(f'  runs resumed                 {summary["runs_resumed"]}')
  print(
    f'  steps lost (max / total)     {summary["max_steps_lost"]} / {summary["total_steps_lost"]}'
  )
  print(f'  data lost (steps, no row)    {summary["data_lost_steps"]}')


def test_sigkill_at_random_moments_resumes_exactly(tmp_path):
  t_start = time.monotonic()
  config = tiny_configs.write_config_file(
    tmp_path / 'tiny_tokenizer.py', 'vqgan', steps=STEPS, checkpoint_every=CHECKPOINT_EVERY
  )
  env = _env(tmp_path / 'xla_cache')
  logs = tmp_path / 'logs'
  logs.mkdir()
  runs: list[_Run] = []
  try:
    # 1. The reference: uninterrupted (it also fills the compilation cache).
    reference = tmp_path / 'reference'
    run = _Run(config, reference, env, logs / 'reference.txt')
    runs.append(run)
    seen = _watch(run, {}, 'none', 0.0, 0.0)
    assert run.wait() == 0, run.tail()
    reference_s = run.elapsed()
    early_window = seen['first_save_s'] or run.elapsed()
    ref_rows, bad = _loss_rows(reference)
    assert not bad and [s for s, _ in ref_rows] == list(range(1, STEPS + 1)), run.tail()
    ref_loss = dict(ref_rows)

    # 2. The trial: KILLS kills, then a run to the end.
    workdir = tmp_path / 'killed'
    ckpt_dir = workdir / 'checkpoints'
    kills: list[dict] = []
    problems: list[str] = []
    pending: list[dict] = []  # Kills whose resume no restart has shown yet.
    resumed_runs = 0
    for i, (kind, u) in enumerate(_plan() + [('end', 0.0)]):
      newest = max(_steps(_entries(ckpt_dir)), default=0)
      # A save (two, for a kill between saves) must remain to be aimed at.
      if kind == 'save' and newest + CHECKPOINT_EVERY > STEPS:
        kind = 'early'
      if kind == 'between' and newest + 2 * CHECKPOINT_EVERY > STEPS:
        kind = 'early'
      before = _entries(ckpt_dir)
      run = _Run(config, workdir, env, logs / f'run{i:02d}.txt')
      runs.append(run)
      if kind == 'end':
        rc = run.wait()
        seen = dict(killed=False)
        final_s = run.elapsed()
      else:
        seen = _watch(run, before, kind, u, early_window)
        if seen['first_save_s'] is not None:
          early_window = min(early_window, seen['first_save_s'])
        rc = run.proc.returncode
      output = run.output()
      problems += [f'run {i}: {line.strip()}' for line in TROUBLE.findall(output)]

      # What this run resumed from settles the kills before it.
      resumed = _resumed(output)
      if resumed is not None:
        for k in pending:
          k['resumed'] = resumed
          if resumed != k['newest_after']:
            problems.append(
              f'kill {k["index"]}: run {i} resumed from step {resumed}, but the newest '
              f'checkpoint on disk after the kill was {k["newest_after"]}\n{run.tail()}'
            )
        resumed_runs += resumed > 0
        pending = []

      if not seen['killed']:
        assert kind == 'end', (
          f'run {i} ended (status {rc}) before its {kind} kill: the trial ran out of steps or '
          f'the run failed\n{run.tail()}'
        )
        assert rc == 0, run.tail()
        assert 'held-out PSNR' in output, run.tail()
        break

      entries = _entries(ckpt_dir)
      steps = _steps(entries)
      orbax_steps = _orbax_steps(ckpt_dir)
      if orbax_steps != steps:
        problems.append(
          f'kill {i}: orbax lists steps {orbax_steps}; the finalized directories are {steps} '
          f'(on disk: {sorted(entries)})'
        )
      rows, _ = _loss_rows(workdir, run.metrics_offset)
      last_logged = max((s for s, _ in rows), default=None)
      newest_after = max(steps, default=0)
      kill = dict(
        index=i,
        kind=kind,
        at_s=round(seen['at_s'], 2),
        during_save=bool(_tmp_dirs(entries) - _tmp_dirs(before)),
        newest_after=newest_after,
        steps_on_disk=steps,
        tmp_dirs=sorted(name for name in entries if TMP_MARK in name),
        last_logged=last_logged,
        steps_lost=0 if last_logged is None else last_logged - newest_after,
        resumed=None,
      )
      kills.append(kill)
      pending.append(kill)

    # 3. The metrics log: every step, each step's loss identical wherever it was logged.
    rows, bad = _loss_rows(workdir)
    problems += [f'unreadable metrics line: {line!r}' for line in bad]
    losses: dict[int, list[float]] = {}
    for step, loss in rows:
      losses.setdefault(step, []).append(loss)
    missing = [s for s in range(1, STEPS + 1) if s not in losses]
    for step, values in sorted(losses.items()):
      if set(values) != {ref_loss.get(step)}:
        problems.append(
          f'step {step}: losses {values} over the restarts, reference {ref_loss.get(step)}'
        )
    summary = _summary(kills, resumed_runs, len(missing))
    summary.update(
      reference_run_s=round(reference_s),
      final_run_s=round(final_s),
      seconds=round(time.monotonic() - t_start),
    )
    if len(rows) != STEPS + summary['total_steps_lost']:
      problems.append(
        f'{len(rows)} loss rows for {STEPS} steps and {summary["total_steps_lost"]} steps lost'
      )

    _print_report(kills, summary)
    report_path = os.environ.get('KILL_SAFETY_REPORT')
    if report_path:
      pathlib.Path(report_path).write_text(json.dumps(dict(summary, kills=kills), indent=2) + '\n')

    assert len(kills) == KILLS
    assert not problems, '\n'.join(problems)
    assert not missing, f'steps with no metrics row: {missing}'
    assert 3 * summary['kills_during_save'] >= KILLS, summary
    assert summary['kills_before_first_checkpoint'] >= 1, summary
    assert resumed_runs >= KILLS // 2, summary

    # 4. The final train state (params, optimizer state, rng, step) is the reference's.
    final, expected = _train_state(workdir, STEPS), _train_state(reference, STEPS)
    assert jax.tree_util.tree_structure(final) == jax.tree_util.tree_structure(expected)
    for (path, a), b in zip(
      jax.tree_util.tree_leaves_with_path(final), jax.tree_util.tree_leaves(expected)
    ):
      np.testing.assert_allclose(a, b, rtol=0, atol=0, err_msg=jax.tree_util.keystr(path))
  finally:
    for run in runs:
      if run.alive():
        run.kill()

"""A disk that takes no more during a save: the previous checkpoint stays intact, one clear line.

The real CLI (`python -m magvit_jax.train`, the tiny tokenizer of tests/tiny_configs.py) on a
real file system, nothing mocked: the run that should fail is started under a file size limit
(RLIMIT_FSIZE of LIMIT bytes, SIGXFSZ ignored), so every write past LIMIT bytes of a file fails
with EFBIG ('File too large') as a write to a full disk fails with ENOSPC. The config, metrics
and TensorBoard files stay far below LIMIT; a checkpoint's array files do not.

1. trains to step 2 (checkpoint 2), without a limit;
2. the same command with --config.num_train_steps=4, under the limit: the save of step 4 fails;
   the run exits with status 1 and one `error: ...` line naming step 4, the reason, the intact
   step 2 and the rerun, no traceback and no library noise; on disk only checkpoint 2 is left
   (no partial step, no temporary directory) and the tokenizer loads from it;
3. the same command without the limit resumes from step 2 and saves step 4.

Both with asynchronous checkpoints (`checkpoint_async=True`, the default: the failure surfaces
at the wait after the last step) and synchronous ones (the save itself fails).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import resource
import signal
import subprocess
import sys

import pytest

from magvit_jax import pretrained
import tiny_configs  # tests/tiny_configs.py

# Three trainings of the tiny tokenizer in subprocesses, twice (about 60 s each on 2 CPU cores).
pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
# A tiny checkpoint's array files are 100 KiB - 1 MiB; config.json 2 KiB, metrics.jsonl < 2 KiB.
LIMIT = 64 * 1024
RUN_TIMEOUT_S = 240
# The lines TensorFlow / XLA print at start-up on stderr (oneDNN notices, absl's InitializeLog).
STARTUP_NOISE = re.compile(r'^(WARNING: All log messages before absl::InitializeLog|I0000 )')


def _file_size_limit() -> None:
  """In the child before exec: writes past LIMIT bytes fail with EFBIG instead of a signal."""
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def _train(
  config: pathlib.Path, workdir: pathlib.Path, *overrides: str, limited: bool = False
) -> subprocess.CompletedProcess:
  """Runs the CLI to its end; `limited`: under the file size limit.

  The runs without the limit share a persistent XLA cache (run 3 compiles nothing); the run
  under the limit has none, since its cache entries could not be written there.
  """
  env = dict(os.environ, PYTHONPATH=str(REPO))
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  if not limited:
    env.update(
      JAX_COMPILATION_CACHE_DIR=str(workdir.parent / 'xla_cache'),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
    )
  command = [
    sys.executable,
    '-m',
    'magvit_jax.train',
    f'--config={config}',
    f'--workdir={workdir}',
    # A small held-out set: the evaluation at the end is not what is tested.
    '--config.data.eval_split=test[:16]',
    '--config.eval_batch_size=16',
    *overrides,
  ]
  return subprocess.run(
    command,
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=RUN_TIMEOUT_S,
    preexec_fn=_file_size_limit if limited else None,
  )


def _log(proc: subprocess.CompletedProcess) -> str:
  out, err = proc.stdout[-3000:], proc.stderr[-5000:]
  return f'--- status {proc.returncode}\n--- stdout\n{out}\n--- stderr\n{err}'


def _logged_steps(workdir: pathlib.Path) -> list[int]:
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return [int(row['step']) for row in rows if 'loss' in row]


@pytest.mark.parametrize('checkpoint_async', [True, False], ids=['async', 'sync'])
def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, checkpoint_async):
  config = tiny_configs.write_config_file(
    tmp_path / 'tiny_tokenizer.py', 'vqgan', steps=2, checkpoint_every=2
  )
  workdir = tmp_path / 'run'
  ckpt_dir = workdir / 'checkpoints'
  mode = f'--config.checkpoint_async={checkpoint_async}'

  # 1. Checkpoint 2, no limit; its array files must not fit under the limit of run 2.
  proc = _train(config, workdir, mode)
  assert proc.returncode == 0, _log(proc)
  assert sorted(os.listdir(ckpt_dir)) == ['2'], _log(proc)
  largest = max(p.stat().st_size for p in (ckpt_dir / '2').rglob('*') if p.is_file())
  assert largest > LIMIT, f'the largest checkpoint file has {largest} bytes: raise the model size'

  # 2. Steps 3 and 4 under the limit: the save of step 4 fails.
  proc = _train(config, workdir, mode, '--config.num_train_steps=4', limited=True)
  assert proc.returncode == 1, _log(proc)
  assert '[tokenizer] step 4/4' in proc.stdout, _log(proc)  # It failed in the save, not before.
  lines = proc.stderr.strip().splitlines()
  assert len(lines) < 10 and 'Traceback' not in proc.stderr, _log(proc)
  assert [line for line in lines[:-1] if not STARTUP_NOISE.match(line)] == [], _log(proc)
  error = lines[-1]
  assert error.startswith(f'error: saving the checkpoint of step 4 to {ckpt_dir} failed ('), error
  assert 'File too large (errno 27) writing 4/state/' in error, error
  assert error.endswith(
    '; the checkpoint of step 2 is intact; lift the file size limit (ulimit -f) or free space '
    'and rerun the same command to resume from it'
  ), error
  assert sorted(os.listdir(ckpt_dir)) == ['2'], 'a partial checkpoint was left behind'
  loaded = pretrained.load_tokenizer(str(workdir))
  assert loaded.step == 2
  assert _logged_steps(workdir) == [1, 2, 3, 4]

  # 3. The same command without the limit resumes from step 2 and saves step 4.
  proc = _train(config, workdir, mode, '--config.num_train_steps=4')
  assert proc.returncode == 0, _log(proc)
  assert f'[tokenizer] resumed from {ckpt_dir}/2' in proc.stdout, _log(proc)
  assert sorted(os.listdir(ckpt_dir)) == ['2', '4'], _log(proc)
  assert _logged_steps(workdir) == [1, 2, 3, 4, 3, 4]

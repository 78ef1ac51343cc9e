"""Two CPU processes joined by `jax.distributed` train like one process.

Each of the two processes (4 fake CPU devices each, gloo collectives over
loopback) runs the tokenizer trainer on its half of every global batch; the
mesh is data=2 x fsdp=4 over the 8 global devices, as the in-process
reference on the 8 devices of tests/conftest.py.

What is compared: the data pipeline reads one global shuffled stream and each
process keeps its rows of every global batch, so the 2-process run sees exactly
the global batches of a 1-process run; its losses equal the single-process
ones, both processes see the same losses, and the checkpoint they wrote
together restores in one process with the reference's parameters.
"""

import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from magvit_jax import metrics_writer as mw
from magvit_jax.trainers import tokenizer as tokenizer_trainer
from magvit_jax import pretrained
from magvit_jax.config_loader import load_config
import tiny_configs  # tests/tiny_configs.py

# Trains or runs subprocesses: the full suite (CI) runs it, the fast lane (-m 'not slow') skips it.
pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 3

DRIVER = textwrap.dedent('''\
    """Process `pid` of 2: tiny tokenizer run on the real (global-order) data pipeline."""
    import os
    import sys

    pid, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    from magvit_jax import parallel
    parallel.initialize_distributed(True, f'127.0.0.1:{port}', 2, pid)

    import jax
    from magvit_jax import metrics_writer as mw
    from magvit_jax.trainers import tokenizer

    # Every process logs its own metrics (normally only process 0 writes).
    writer_cls = mw.MetricsWriter
    tokenizer.mw.MetricsWriter = lambda wd, enabled=True: writer_cls(
        os.path.join(wd, f'process{pid}'), True)

    from magvit_jax.config_loader import load_config
    config = load_config(sys.argv[4])
    config.data.host_sharding = sys.argv[6]
    tokenizer.train_and_evaluate(config, workdir, max_steps=int(sys.argv[5]))
    print('DONE', pid, flush=True)
    ''')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _losses(workdir):
  metrics = mw.read_metrics(str(workdir))
  return np.asarray([metrics[s]['loss'] for s in sorted(metrics) if 'loss' in metrics[s]])


def _start_two_processes(tmp_path, workdir, config_path, steps: int, host_sharding: str):
  driver = tmp_path / 'driver.py'
  driver.write_text(DRIVER)
  env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS='--xla_force_host_platform_device_count=4')
  port = _free_port()
  return [
    subprocess.Popen(
      [
        sys.executable,
        str(driver),
        str(pid),
        str(port),
        str(workdir),
        str(config_path),
        str(steps),
        host_sharding,
      ],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for pid in (0, 1)
  ]


def _finish(procs) -> list[str]:
  outputs = []
  for p in procs:
    try:
      out, _ = p.communicate(timeout=150)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    outputs.append(out)
    assert p.returncode == 0, out[-4000:]
  return outputs


def test_two_processes_match_one_process(tmp_path):
  config_path = tiny_configs.write_config_file(
    tmp_path / 'tiny_tokenizer.py', 'vqgan', steps=STEPS + 1, checkpoint_every=2
  )
  workdir = tmp_path / 'multi'
  # 'rows': both processes read the one global stream, so the global batches are those of one
  # process (with 'files', the default, each reads its own shard: see the next test).
  procs = _start_two_processes(tmp_path, workdir, config_path, STEPS, 'rows')

  # Meanwhile: the single-process reference on this process's 8 devices.
  reference = tmp_path / 'single'
  tokenizer_trainer.train_and_evaluate(
    load_config(str(config_path)), str(reference), max_steps=STEPS
  )

  outputs = _finish(procs)
  for pid, out in enumerate(outputs):
    assert f'process {pid}/2' in out and '4 local / 8 global cpu devices' in out, out[-4000:]
    assert 'mesh data=2 fsdp=4 tensor=1' in out, out[-4000:]

  expected = _losses(reference)
  assert len(expected) == STEPS and np.isfinite(expected).all()
  per_process = [_losses(workdir / f'process{pid}') for pid in (0, 1)]
  np.testing.assert_array_equal(per_process[0], per_process[1])  # one program, one result
  np.testing.assert_allclose(per_process[0], expected, rtol=1e-5, atol=0)

  # The checkpoint written by both processes (step 2) restores in one process.
  params = pretrained.load_tokenizer(str(workdir)).params
  ref_params = pretrained.load_tokenizer(str(reference)).params
  jax.tree_util.tree_map(
    lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6),
    params,
    ref_params,
  )


def test_two_processes_with_files_sharding_store_their_own_positions(tmp_path):
  """host_sharding='files': each of 2 real processes reads its own half of the split; they
  run the same steps (equal losses), and the checkpoint holds both per-process positions
  (local: 8 rows per process per step) with the sharding, which a resume checks
  (in-process tests of the exact resume: tests/test_data_host_sharding.py)."""
  config_path = tiny_configs.write_config_file(
    tmp_path / 'tiny_tokenizer.py', 'vqgan', steps=4, checkpoint_every=2
  )
  workdir = tmp_path / 'multi'
  _finish(_start_two_processes(tmp_path, workdir, config_path, STEPS, 'files'))  # Saves step 2.
  per_process = [_losses(workdir / f'process{pid}') for pid in (0, 1)]
  assert len(per_process[0]) == STEPS and np.isfinite(per_process[0]).all()
  np.testing.assert_array_equal(per_process[0], per_process[1])
  from magvit_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top

  checkpointer = ckpt_lib.Checkpointer(str(workdir / 'checkpoints'), {})
  assert checkpointer.all_steps() == [2]
  saved = checkpointer.data_state(2)['data']
  checkpointer.close()
  assert saved['host_sharding'] == 'files'
  assert saved['position'] == [16, 16] and saved['read'] == [16, 16]  # 2 steps x 8 per process.


def test_global_batch_is_independent_of_process_count():
  from magvit_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  config = _load_default_data_config()
  config.host_sharding = 'rows'  # 'files' (the default) gives each process its own shard.
  one = next(
    pipeline.create_dataset(
      config, split='train', batch_size=8, train=True, seed=0, process_index=0, process_count=1
    )
  )
  halves = [
    next(
      pipeline.create_dataset(
        config, split='train', batch_size=4, train=True, seed=0, process_index=i, process_count=2
      )
    )
    for i in (0, 1)
  ]
  np.testing.assert_array_equal(np.concatenate([h['image'] for h in halves]), one['image'])


def _load_default_data_config():
  config = load_config('vqgan_imagenet.py:digits').data
  config.image_size = 16
  return config

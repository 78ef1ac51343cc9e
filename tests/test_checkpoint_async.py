"""`checkpoint_async`: a save returns before orbax has written the step; errors surface at wait.

1. An async save returns while the step is still being written (orbax reports a save in
   progress and the step directory is not finalized yet); the caller may overwrite (donate)
   its arrays meanwhile; after `wait` the step restores to the values at save time.
2. A write that fails in the background (a file size limit, as a full disk) is raised at the
   next `wait` as the one-line CheckpointSaveError naming the step; the earlier checkpoint is
   intact, no partial step is left, and the same Checkpointer saves again once the limit is
   lifted. A synchronous Checkpointer raises the same error from `save` itself. The failure
   comes within seconds: the clean-up waits for orbax's writer threads, not for the thread
   pools that orbax keeps open until its CheckpointManager is closed (their idle workers held
   it for its whole 30 s budget before, issue 14).
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import subprocess
import sys
import textwrap
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from magvit_jax import checkpoint as ckpt_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def _abstract(tree):
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def test_async_save_overlaps_the_next_steps_and_restores(tmp_path):
  directory = tmp_path / 'checkpoints'
  checkpointer = ckpt_lib.Checkpointer(str(directory), {'checkpoint_async': True})
  assert checkpointer.async_save
  # 64 MiB: far more than orbax writes before `save` returns.
  state = {'w': jnp.arange(1 << 24, dtype=jnp.float32), 'b': jnp.full((1 << 22,), 3.0)}
  expected = jax.device_get(state)
  checkpointer.save(1, state, {'data': {'position': [7], 'read': [7], 'skipped': [0]}})
  in_progress = checkpointer._manager.is_saving_in_progress()
  finalized = (directory / '1').exists()
  assert checkpointer.saving()
  # The next "steps" overwrite the state (donated buffers) while the save is being written.
  state = jax.jit(lambda s: jax.tree.map(lambda x: -x, s), donate_argnums=0)(state)
  jax.block_until_ready(state)
  assert in_progress and not finalized
  checkpointer.wait()
  assert not checkpointer.saving() and (directory / '1').exists()
  assert not [p for p in os.listdir(directory) if 'tmp' in p]
  restored = checkpointer.restore(_abstract(expected), 1)
  for key in expected:
    np.testing.assert_array_equal(np.asarray(restored[key]), expected[key])
  assert checkpointer.data_state(1) == {'data': {'position': [7], 'read': [7], 'skipped': [0]}}
  # A second save waits for nothing left over, and close() waits for it.
  checkpointer.save(2, state)
  checkpointer.close()
  assert checkpointer.all_steps() == [1, 2]
  np.testing.assert_array_equal(
    np.asarray(ckpt_lib.Checkpointer(str(directory), {}).restore(_abstract(expected), 2)['b']),
    -expected['b'],
  )


def test_sync_save_is_finalized_when_it_returns(tmp_path):
  directory = tmp_path / 'checkpoints'
  checkpointer = ckpt_lib.Checkpointer(str(directory), {})  # No checkpoint_async: sync.
  assert not checkpointer.async_save
  checkpointer.save(1, {'w': jnp.arange(1 << 20, dtype=jnp.float32)})
  assert (directory / '1').exists() and not checkpointer.saving()
  checkpointer.close()


SCRIPT = textwrap.dedent("""\
    import resource, signal, sys, time
    import jax
    import jax.numpy as jnp
    from magvit_jax import checkpoint as ckpt_lib

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # Writes past the limit fail with EFBIG.
    checkpointer = ckpt_lib.Checkpointer(sys.argv[1], {'checkpoint_async': True})
    checkpointer.save(1, {'w': jnp.zeros((8,))})
    checkpointer.wait()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    start = time.monotonic()
    try:
      # A 4 MiB array file of random (incompressible) values.
      checkpointer.save(2, {'w': jax.random.normal(jax.random.key(0), (1 << 20,))})
      print('SAVE RETURNED', flush=True)
      checkpointer.wait()
      print('NO ERROR', flush=True)
    except ckpt_lib.CheckpointSaveError as e:
      print('SECONDS', time.monotonic() - start, flush=True)
      print('ERROR', e.errno, str(e), flush=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    checkpointer.save(3, {'w': jnp.ones((1 << 20,))})
    checkpointer.close()
    print('STEPS', checkpointer.all_steps(), flush=True)

    # The same with a synchronous Checkpointer: the save itself raises.
    checkpointer = ckpt_lib.Checkpointer(sys.argv[1] + '_sync', {'checkpoint_async': False})
    checkpointer.save(1, {'w': jnp.zeros((8,))})
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
      checkpointer.save(2, {'w': jax.random.normal(jax.random.key(0), (1 << 20,))})
      print('SYNC NO ERROR', flush=True)
    except ckpt_lib.CheckpointSaveError as e:
      print('SYNC ERROR', e.errno, str(e), flush=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    checkpointer.close()
    print('SYNC STEPS', checkpointer.all_steps(), flush=True)
    """)


def test_async_write_failure_is_raised_at_wait_naming_the_step(tmp_path):
  directory = tmp_path / 'checkpoints'
  script = tmp_path / 'save.py'
  script.write_text(SCRIPT)
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  out = subprocess.run(
    [sys.executable, str(script), str(directory)],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  lines = out.stdout.splitlines()
  assert 'SAVE RETURNED' in lines, out.stdout  # The failure came at the wait, not the save.
  error = next(line for line in lines if line.startswith('ERROR'))
  assert error.startswith(f'ERROR 27 saving the checkpoint of step 2 to {directory} failed')
  assert 'File too large (errno 27)' in error
  assert 'the checkpoint of step 1 is intact' in error
  # From the save to the error: the writes and the clean-up (under 5 s on 2 loaded cores; 30 s
  # or more when the idle worker of orbax's metadata store was joined).
  seconds = float(next(line for line in lines if line.startswith('SECONDS')).split()[1])
  assert seconds < 20, seconds
  assert 'STEPS [1, 3]' in lines
  assert sorted(os.listdir(directory)) == ['1', '3']  # No partial step, no temporary directory.
  sync = next(line for line in lines if line.startswith('SYNC ERROR'))
  assert sync.startswith(f'SYNC ERROR 27 saving the checkpoint of step 2 to {directory}_sync')
  assert lines[-1] == 'SYNC STEPS [1]'
  assert sorted(os.listdir(f'{directory}_sync')) == ['1']
  assert 'Traceback' not in out.stderr, out.stderr[-3000:]


def test_failed_save_cleanup_waits_for_writers_not_for_idle_pool_workers():
  """`_join_new_threads` joins a thread started since `before` that is still writing, and does
  not wait for the idle worker of a thread pool that stays open (it would never end)."""
  before = set(threading.enumerate())
  pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='test_pool')
  try:
    pool.submit(lambda: None).result()  # Its worker now idles until the pool is shut down.
    (worker,) = [t for t in threading.enumerate() if t.name.startswith('test_pool')]
    writer = threading.Thread(target=time.sleep, args=(0.5,))
    writer.start()
    assert ckpt_lib._is_pool_worker(worker) and not ckpt_lib._is_pool_worker(writer)
    start = time.monotonic()
    ckpt_lib._join_new_threads(before, timeout_s=10.0)
    elapsed = time.monotonic() - start
    assert not writer.is_alive()  # Joined: its writes are over before the partial step goes.
    assert worker.is_alive()  # Not joined: the wait ended with the writer, not at the timeout.
    assert elapsed < 5.0, elapsed
  finally:
    pool.shutdown()

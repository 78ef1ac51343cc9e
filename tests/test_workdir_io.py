"""Path-agnostic workdirs (local or gs://): config.json, metrics files, mkdir, latest step.

No cloud access: the object-store code path runs on a local tmp dir (the
`parts` metrics layout that gs:// workdirs use), and a fake 'gs://fake-bucket'
is served from a tmp dir through etils' own `epath.testing.mock_epath`, with
GCS's limits (no append, no rename) enforced.
"""

from __future__ import annotations

import io
import json
import os

from etils import epath
from etils.epath import gpath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from magvit_jax import checkpoint as ckpt_lib
from magvit_jax import evaluation
from magvit_jax import fileio
from magvit_jax import parallel
from magvit_jax.trainers import loop
from magvit_jax import metrics_writer as mw

BUCKET = 'gs://fake-bucket'


def _config(**kwargs):
  return ml_collections.ConfigDict(dict(seed=0, mesh=dict(data=-1), **kwargs))


def test_is_remote_and_join():
  assert fileio.is_remote('gs://b/run') and fileio.is_remote(epath.Path('gs://b/run'))
  assert not fileio.is_remote('runs/demo') and not fileio.is_remote('/tmp/x')
  assert fileio.join('gs://b/run', 'checkpoints') == 'gs://b/run/checkpoints'
  assert fileio.join('runs/x', 'metrics.jsonl') == os.path.join('runs/x', 'metrics.jsonl')


def test_config_round_trip_local(tmp_path):
  workdir = tmp_path / 'a' / 'b'  # Created (parents too).
  ckpt_lib.write_workdir_config(str(workdir), _config(x=1))
  assert ckpt_lib.read_workdir_config(str(workdir))['x'] == 1
  ckpt_lib.write_workdir_config(str(workdir), _config(x=2))  # Replaced whole.
  assert ckpt_lib.read_workdir_config(str(workdir))['x'] == 2
  assert sorted(os.listdir(workdir)) == ['config.json']  # No .tmp left behind.
  with pytest.raises(FileNotFoundError, match='not a training workdir'):
    ckpt_lib.read_workdir_config(str(tmp_path / 'nothing'))


def test_metrics_parts_several_flushes_read_back(tmp_path):
  workdir = str(tmp_path)
  writer = mw.MetricsWriter(workdir, parts=True, part_every_s=3600)
  writer.write(1, {'loss': 1.0})
  writer.write(2, {'loss': 0.5})
  writer.flush()  # Too soon for an unforced part: nothing written yet.
  assert not os.listdir(tmp_path / 'metrics')
  writer.flush(force=True)
  writer.write(3, {'loss': 0.25})
  writer.flush(force=True)
  writer.flush(force=True)  # Nothing pending: no empty file.
  writer.write(2, {'loss': 0.4, 'eval/psnr': 30.0})  # A resumed run re-logs step 2.
  writer.close()
  names = sorted(os.listdir(tmp_path / 'metrics'))
  assert len(names) == 3 and all(n.endswith('.jsonl') for n in names)
  assert names[0].endswith('-000000001-000000002.jsonl')
  assert not os.path.exists(tmp_path / 'metrics.jsonl')
  metrics = mw.read_metrics(workdir)
  assert sorted(metrics) == [1, 2, 3]
  assert metrics[2] == {'step': 2, 'loss': 0.4, 'eval/psnr': 30.0}  # Later values win.
  assert metrics[3]['loss'] == 0.25
  writer = mw.MetricsWriter(workdir, parts=True, part_every_s=0.0)  # Unforced flush writes.
  writer.write(4, {'loss': 0.1})
  writer.flush()
  assert len(os.listdir(tmp_path / 'metrics')) == 4 and mw.read_metrics(workdir)[4]['loss'] == 0.1


def test_metrics_single_file_is_still_read_with_parts(tmp_path):
  """Backward compatible: an old workdir's metrics.jsonl comes first, then metrics/ parts."""
  (tmp_path / 'metrics.jsonl').write_text(
    json.dumps({'step': 1, 'loss': 2.0})
    + '\n'
    + json.dumps({'step': 2, 'loss': 1.0})
    + '\n'
    + '{"step": 3, "lo'
  )  # Truncated by a kill while appending: skipped.
  assert mw.read_metrics(str(tmp_path)) == {
    1: {'step': 1, 'loss': 2.0},
    2: {'step': 2, 'loss': 1.0},
  }
  writer = mw.MetricsWriter(str(tmp_path), parts=True)
  writer.write(2, {'loss': 0.9})
  writer.close()
  assert mw.read_metrics(str(tmp_path))[2]['loss'] == 0.9
  local = mw.MetricsWriter(str(tmp_path / 'local'))  # Local default: append, as before.
  assert not local.parts and local.path.endswith('metrics.jsonl')
  local.write(5, {'loss': 1.5})
  local.close()
  assert mw.read_metrics(str(tmp_path / 'local')) == {5: {'step': 5, 'loss': 1.5}}


def test_loop_writes_parts_up_to_checkpoints_and_on_nan(tmp_path):
  """run_loop with the object-store layout: every step's row is stored, also before a NaN stop."""
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])

  @jax.jit
  def step(state, batch):
    del batch
    w = state['w'] + 1.0
    return {'w': w}, {'loss': jnp.where(w == 7.0, jnp.nan, w)}

  config = ml_collections.ConfigDict(dict(num_train_steps=8, log_every=2, checkpoint_every=4))
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / 'checkpoints'), {'stage': 'test'})
  writer = mw.MetricsWriter(str(tmp_path), parts=True, part_every_s=3600)
  batches = iter([{'x': np.zeros((1,), np.float32)}] * 8)
  with pytest.raises(mw.NonFiniteLossError, match='at step 7'):
    loop.run_loop(
      state={'w': jnp.zeros(())},
      train_step=step,
      batches=batches,
      mesh=mesh,
      checkpointer=checkpointer,
      writer=writer,
      config=config,
      start_step=0,
      stage='test',
    )
  assert checkpointer.all_steps() == [4]
  metrics = mw.read_metrics(str(tmp_path))
  # Steps 1-4: a part forced before checkpoint 4. Steps 5-6 (logged at step 6, still buffered
  # at the NaN of step 7): the part the loop forces when it raises.
  assert [metrics[s]['loss'] for s in sorted(metrics)] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
  assert sorted(n.rsplit('-', 2)[1:] for n in os.listdir(tmp_path / 'metrics')) == [
    ['000000001', '000000004.jsonl'],
    ['000000005', '000000006.jsonl'],
  ]
  checkpointer.close()


# ----------------------------------------------------------------------------- fake gs://


class _FakeBucket:
  """Serves 'gs://fake-bucket/...' from a local folder; refuses append and rename like GCS."""

  def __init__(self, root: str):
    self.root = root
    self.calls = []

  def local(self, path) -> str:
    path = os.fspath(path)
    return self.root + path[len(BUCKET) :] if path.startswith(BUCKET) else path

  def remote(self, path: str) -> str:
    return BUCKET + path[len(self.root) :] if path.startswith(self.root) else path

  def mocks(self):
    def passthrough(name):
      def fn(original, path, *args, **kwargs):
        if os.fspath(path).startswith(BUCKET):
          self.calls.append(name)
        return original(self.local(path), *args, **kwargs)

      return fn

    def open_(original, path, mode):
      if os.fspath(path).startswith(BUCKET):
        self.calls.append(f'open:{mode}')
        if 'a' in mode:
          raise io.UnsupportedOperation(f'GCS objects cannot be appended to: {path}')
      return original(self.local(path), mode)

    def no_rename(original, path, dst, *args, **kwargs):
      if BUCKET in (os.fspath(path) + os.fspath(dst)):
        raise AssertionError(f'rename on an object store is not atomic: {path} -> {dst}')
      return original(path, dst, *args, **kwargs)

    def glob(original, pattern):
      return [self.remote(p) for p in original(self.local(pattern))]

    names = ('exists', 'isdir', 'listdir', 'makedirs', 'mkdir', 'remove', 'rmtree', 'stat')
    return dict(
      {n: passthrough(n) for n in names}, open=open_, glob=glob, rename=no_rename, replace=no_rename
    )


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  bucket = _FakeBucket(str(tmp_path / 'bucket'))
  os.makedirs(bucket.root)
  # With TensorFlow installed etils sends gs:// to tf.io.gfile, past the mocked backends.
  monkeypatch.setattr(gpath, '_is_tf_installed', lambda: False)
  with epath.testing.mock_epath(**bucket.mocks()):
    yield bucket


def test_fake_gcs_workdir(fake_gcs, monkeypatch):
  workdir = f'{BUCKET}/runs/m'
  warnings = []
  monkeypatch.setattr(mw.logging, 'warning', lambda msg, *args: warnings.append(msg % args))
  monkeypatch.setattr(mw, '_TB_REMOTE_CLIENTS', {'gs': 'magvit_jax_no_such_client'})

  fileio.makedirs(workdir)
  ckpt_lib.write_workdir_config(workdir, _config(x=3))
  assert ckpt_lib.read_workdir_config(workdir)['x'] == 3
  assert os.path.exists(os.path.join(fake_gcs.root, 'runs', 'm', 'config.json'))

  writer = mw.MetricsWriter(workdir, part_every_s=0.0)  # gs:// -> parts, automatically.
  assert writer.parts and writer.path == f'{workdir}/metrics'
  assert writer._tb is None  # pylint: disable=protected-access
  assert len(warnings) == 1 and 'TensorBoard events are off' in warnings[0]
  for s in range(1, 4):
    writer.write(s, {'loss': 1.0 / s})
    writer.flush()
  writer.close()
  assert mw.read_metrics(workdir) == {s: {'step': s, 'loss': 1.0 / s} for s in range(1, 4)}
  assert 'open:a' not in fake_gcs.calls and 'open:w' in fake_gcs.calls

  for step in (2, 10):
    fileio.makedirs(f'{workdir}/checkpoints/{step}')
  assert evaluation.latest_step(workdir) == 10
  with pytest.raises(io.UnsupportedOperation):  # The fake really refuses appends.
    with epath.Path(f'{workdir}/x.jsonl').open('a') as f:
      f.write('x')

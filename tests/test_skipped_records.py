"""Bad records: skipped, counted, named once in the log, bounded by a limit, exact on resume."""

from __future__ import annotations

import os
import pathlib
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from magvit_jax import checkpoint as ckpt_lib
from magvit_jax import metrics_writer as mw
from magvit_jax.data import pipeline
from magvit_jax.data import skipped_records
from magvit_jax.data.skipped_records import GoodBatches, TooManyBadRecordsError
from magvit_jax.trainers import tokenizer as tokenizer_trainer
import tiny_configs  # tests/tiny_configs.py

ONE_PROCESS = dict(process_index=0, process_count=1)
BAD_EVERY = 10  # Every 10th record of the corrupted digits copy has an undecodable image.


def _raw_batch(positions, bad=(), nan=(), size=2):
  """A tf.data-like batch: image float [n, size, size, 3] = position, with markers."""
  positions = np.asarray(positions, np.int64)
  image = np.repeat(positions.astype(np.float32), size * size * 3).reshape(-1, size, size, 3)
  for i in nan:
    image[i, 0, 0, 0] = np.nan
  return {
    'image': image,
    'label': positions.astype(np.int32),
    '_position': positions,
    '_bad': np.isin(np.arange(len(positions)), bad),
    '_source': np.array([f'file.rec__{p}'.encode() for p in positions]),
  }


def test_bad_and_non_finite_rows_are_dropped_refilled_counted_and_logged_once():
  raw = [
    _raw_batch([0, 1, 2, 3], bad=[1]),
    _raw_batch([4, 5, 6, 7], nan=[2]),
    _raw_batch([8, 9, 10, 11]),
    _raw_batch([12, 13, 14, 1], bad=[3]),  # Record 1 again (a second epoch): logged once.
  ]
  lines = []
  it = GoodBatches(iter(raw), 3, stream='data', max_skipped_fraction=1.0, log=lines.append)
  got = [next(it) for _ in range(4)]
  assert [b['label'].tolist() for b in got] == [[0, 2, 3], [4, 5, 7], [8, 9, 10], [11, 12, 13]]
  assert all(b.keys() == {'image', 'label'} for b in got)
  assert it.state() == {'position': 14, 'read': 16, 'skipped': 3}
  assert it.stats() == {'data/skipped': 3.0, 'data/skipped_fraction': 3 / 16}
  assert lines == [
    '[data] skipped file.rec__1 (record 1 of the data stream): could not be decoded',
    "[data] skipped file.rec__6 (record 6 of the data stream): NaN or Inf values in 'image'",
  ]
  with pytest.raises(StopIteration):
    next(it)  # Row 14 alone: dropped with drop_remainder.
  tail = GoodBatches(iter(raw[:2]), 3, max_skipped_fraction=1.0, drop_remainder=False)
  assert [b['label'].tolist() for b in tail] == [[0, 2, 3], [4, 5, 7]]


def test_the_skipped_fraction_limit_stops_the_stream_naming_sources_and_the_key():
  raw = [_raw_batch(range(10 * k, 10 * k + 10), bad=[0, 5]) for k in range(20)]  # 20% bad.
  it = GoodBatches(iter(raw), 8, stream='image_data', max_skipped_fraction=0.1, log=lambda _: 0)
  for _ in range(8):  # Below MIN_RECORDS_FOR_LIMIT records read: no verdict yet.
    next(it)
  with pytest.raises(TooManyBadRecordsError) as e:
    for _ in range(20):
      next(it)
  message = str(e.value)
  assert it.read == skipped_records.MIN_RECORDS_FOR_LIMIT
  assert '20 of the 100 records' in message and 'image_data.max_skipped_fraction=0.1' in message
  assert 'file.rec__95' in message and '--config.image_data.max_skipped_fraction=' in message
  # 10% allowed, 10% bad: goes on.
  ok = GoodBatches(iter(raw), 8, max_skipped_fraction=0.2, log=lambda _: 0)
  assert sum(len(b['label']) for b in ok) == 160


def test_resume_position_per_process_and_after_a_process_count_change():
  state = {'data': {'position': [40, 44], 'read': [41, 45], 'skipped': [1, 3]}}
  assert skipped_records.resume_position(state, 'data', 1, 2) == {
    'position': 44,
    'read': 45,
    'skipped': 3,
  }
  assert skipped_records.resume_position(state, 'data', 0, 4) == {
    'position': 40,
    'read': 0,
    'skipped': 0,
  }
  assert skipped_records.resume_position(state, 'image_data', 0, 2) is None
  assert skipped_records.resume_position(None, 'data', 0, 1) is None


def _clip_folder(root: pathlib.Path) -> pathlib.Path:
  """train/<class>/<clip>.npy clips of 4 frames (frame value = 10 * clip index), 2 broken."""
  rng = np.random.default_rng(0)
  for i in range(12):
    path = root / 'train' / f'c{i % 2}' / f'clip{i:02d}.npy'
    path.parent.mkdir(parents=True, exist_ok=True)
    video = np.full((4, 8, 8, 3), 10 * i, np.uint8) + rng.integers(0, 3, (4, 8, 8, 3), np.uint8)
    np.save(path, video)
  # A truncated clip and one that is not a .npy at all.
  broken = root / 'train' / 'c1' / 'clip03.npy'
  broken.write_bytes(broken.read_bytes()[:200])
  (root / 'train' / 'c0' / 'clip06.npy').write_bytes(b'garbage')
  return root


def test_corrupt_clips_of_a_video_folder_are_skipped_and_resume_is_exact(tmp_path, capsys):
  cfg = ml_collections.ConfigDict(
    dict(
      name='video_folder',
      folder=str(_clip_folder(tmp_path / 'clips')),
      image_size=8,
      num_frames=4,
      max_skipped_fraction=0.5,
    )
  )
  kw = dict(split='train', batch_size=4, train=True, seed=3, **ONE_PROCESS)
  it = pipeline.create_dataset(cfg, **kw)
  first = [next(it) for _ in range(5)]  # 20 clips of 12 per epoch, both broken ones included.
  clip_ids = np.concatenate([np.round(b['video'][:, 0].mean((1, 2, 3)) / 10) for b in first])
  assert 3 not in clip_ids and 6 not in clip_ids and len(clip_ids) == 20
  out = capsys.readouterr().out
  assert 'clip03.npy (record' in out and 'clip06.npy (record' in out
  assert it.stats()['data/skipped'] >= 2
  state = it.state()
  # 20 rows handed out and at least the 2 broken clips passed: resume reads on after them.
  assert 22 <= state['position'] <= state['read']
  rest = [next(it) for _ in range(3)]
  resumed = pipeline.create_dataset(cfg, resume=state, **kw)
  for expected in rest:
    got = next(resumed)
    np.testing.assert_array_equal(got['video'], expected['video'])
    np.testing.assert_array_equal(got['label'], expected['label'])
  assert resumed.state()['skipped'] == it.state()['skipped']


def _corrupt_digits(data_dir: pathlib.Path) -> list[int]:
  """A copy of the embedded digits dataset in `data_dir` whose every BAD_EVERY-th train
  record holds bytes that are not an image; returns the indices of those records."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  source = pipeline.get_builder('magvit_digits', None).data_dir
  target = data_dir / 'magvit_digits' / os.path.basename(source)
  shutil.copytree(source, target)
  (train,) = [p for p in target.iterdir() if '-train.tfrecord' in p.name]
  records = [r.numpy() for r in tf.data.TFRecordDataset(str(train))]
  bad = list(range(0, len(records), BAD_EVERY))
  with tf.io.TFRecordWriter(str(train)) as writer:
    for i, record in enumerate(records):
      if i in bad:
        example = tf.train.Example.FromString(record)
        example.features.feature['image'].bytes_list.value[0] = b'not an image'
        record = example.SerializeToString()
      writer.write(record)
  return bad


@pytest.fixture(scope='module')
def corrupt_digits(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('corrupt_digits')
  return data_dir, _corrupt_digits(data_dir)


def test_corrupt_tfds_records_are_named_by_tfds_id_and_the_limit_stops_the_run(
  corrupt_digits, capsys
):
  data_dir, bad = corrupt_digits
  cfg = ml_collections.ConfigDict(
    dict(name='magvit_digits', data_dir=str(data_dir), image_size=16, max_skipped_fraction=0.2)
  )
  kw = dict(split='train', batch_size=16, train=True, seed=0, **ONE_PROCESS)
  it = pipeline.create_dataset(cfg, **kw)
  for _ in range(10):
    assert next(it)['image'].shape == (16, 16, 16, 3)
  fraction = it.stats()['data/skipped_fraction']
  assert 0.04 < fraction < 0.2  # ~1 in BAD_EVERY.
  out = capsys.readouterr().out
  named = {int(line.split('__')[1].split()[0]) for line in out.splitlines() if 'skipped' in line}
  assert named and named <= set(bad)
  cfg.max_skipped_fraction = 0.01
  with pytest.raises(TooManyBadRecordsError, match=r'data\.max_skipped_fraction=0\.01'):
    for _ in pipeline.create_dataset(cfg, **kw):
      pass


def test_a_tfrecord_damaged_below_the_record_level_is_named(tmp_path):
  source = pipeline.get_builder('magvit_digits', None).data_dir
  target = tmp_path / 'magvit_digits' / os.path.basename(source)
  shutil.copytree(source, target)
  (train,) = [p for p in target.iterdir() if '-train.tfrecord' in p.name]
  data = bytearray(train.read_bytes())
  data[len(data) // 2] ^= 0xFF  # The CRC of the record holding this byte fails.
  train.write_bytes(bytes(data))
  cfg = ml_collections.ConfigDict(dict(name='magvit_digits', data_dir=str(tmp_path), image_size=8))
  it = pipeline.create_dataset(cfg, split='train', batch_size=16, train=True, **ONE_PROCESS)
  with pytest.raises(pipeline.DamagedDataError) as e:
    for _ in range(200):
      next(it)
  assert f"dataset 'magvit_digits' (split 'train') in {tmp_path} is damaged" in str(e.value)
  assert 'corrupted record at' in str(e.value) and '{{' not in str(e.value)


@pytest.mark.slow  # Two tiny training runs.
def test_training_on_corrupt_records_counts_them_and_resumes_exactly(corrupt_digits, tmp_path):
  """A tiny VQGAN on the corrupted copy: the metrics count the skipped records, every
  checkpoint stores the stream position, and a resume from step 4 (--restore_step) retrains
  steps 5 and 6 on exactly the same batches (the same losses)."""
  data_dir, _ = corrupt_digits
  config = tiny_configs.vqgan(steps=6, checkpoint_every=2)
  with config.unlocked():
    config.data.data_dir = str(data_dir)
    config.data.max_skipped_fraction = 0.3
    config.data.eval_split = 'test[:16]'
    config.eval_batch_size = 16
  workdir = str(tmp_path / 'run')
  tokenizer_trainer.train_and_evaluate(config, workdir)
  metrics = mw.read_metrics(workdir)
  assert metrics[6]['data/skipped'] > 0 and 0 < metrics[6]['data/skipped_fraction'] < 0.3
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), {})
  state = checkpointer.data_state(4)['data']
  checkpointer.close()
  local_batch = config.batch_size // jax.process_count()
  # Past the 4 * local_batch rows trained on and the bad records among them.
  assert 4 * local_batch < state['position'][0] <= state['read'][0]
  losses = [metrics[s]['loss'] for s in (5, 6)]

  tokenizer_trainer.train_and_evaluate(config, workdir, restore_step=4)
  again = mw.read_metrics(workdir)
  np.testing.assert_allclose([again[s]['loss'] for s in (5, 6)], losses, rtol=1e-6, atol=0)

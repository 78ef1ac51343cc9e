"""data.host_sharding='files': each training process reads only its own shard of the split.

On the embedded `magvit_digits` (1497 train images, one TFRecord file): the shards of 2 and 4
processes are disjoint and hold every record exactly once per epoch, each process reads only
the records of its shard (counted from the `tfds_id`s its raw stream yields), a stored
position resumes exactly, and a checkpoint's per-process positions are refused under another
process count or sharding. Video folders: tests/test_data_datasets.py.
"""

import collections
import re

import ml_collections
import numpy as np
import pytest

from magvit_jax.data import pipeline, skipped_records, tfds_source

NUM_TRAIN = 1497


def _config(**kw):
  return ml_collections.ConfigDict(
    {'name': 'magvit_digits', 'image_size': 8, 'shuffle_buffer': 64, 'host_sharding': 'files', **kw}
  )


def _take(it, n):
  return [next(it) for _ in range(n)]


def _images(batches):
  return np.concatenate([b['image'] for b in batches])


def _counter(images):
  return collections.Counter(img.tobytes() for img in images)


def _stream(cfg, p, n, batch_size, **kw):
  kw = dict(split='train', batch_size=batch_size, train=True, seed=1, **kw)
  return pipeline.create_dataset(cfg, process_index=p, process_count=n, **kw)


@pytest.fixture(scope='module')
def whole_split():
  batches = pipeline.create_dataset(
    _config(),
    split='train',
    batch_size=500,
    train=False,
    process_index=0,
    process_count=1,
    drop_remainder=False,
  )
  return _counter(_images(list(batches)))


@pytest.mark.parametrize('count', [2, 4])
def test_files_shards_are_disjoint_and_cover_every_record_once_per_epoch(count, whole_split):
  cfg = _config(shuffle_buffer=1)  # No shuffle: the first epoch of each shard is its first rows.
  sizes = _shard_sizes(count)
  assert sum(sizes) == NUM_TRAIN
  total = collections.Counter()
  shards, unshuffled = [], []
  for p in range(count):
    rows = _images(_take(_stream(cfg, p, count, 250), -(-sizes[p] // 250)))[: sizes[p]]
    unshuffled.append(rows)
    shard = _counter(rows)
    assert sum(shard.values()) == sizes[p]
    shards.append(shard)
    total += shard
  # Every record exactly once (as multisets: a few digits images occur twice in the split).
  assert total == whole_split
  # Shuffled (the default): a process still only ever sees its own records.
  for p in range(count):
    rows = _images(_take(_stream(_config(), p, count, 250), -(-sizes[p] // 250)))
    assert set(_counter(rows)) <= set(shards[p])
    assert not np.array_equal(rows[:250], unshuffled[p][:250])


def _shard_sizes(count: int) -> list[int]:
  """Records per process: contiguous ranges, the first N % count one record larger."""
  return [NUM_TRAIN // count + (p < NUM_TRAIN % count) for p in range(count)]


def _records_read(by_files: bool, p: int, count: int, n: int) -> list[tuple[str, int]]:
  """(file, record index) of the first `n` raw records the training stream of process `p`
  reads (before its rows are chosen and decoded), from their `tfds_id`s."""
  ds, _, source = tfds_source._tfds_records(
    'magvit_digits',
    _config(shuffle_buffer=1),
    'train',
    None,
    8,
    True,
    1,
    0,
    p,
    count,
    pipeline.tf.data.Options(),
    by_files=by_files,
  )
  out = []
  for _, ex in ds.take(n).as_numpy_iterator():
    file, index = re.fullmatch(r'(.*)__(\d+)', source(ex).decode()).groups()
    out.append((file, int(index)))
  return out


def test_each_process_reads_only_its_own_records():
  count = 4
  sizes = _shard_sizes(count)
  for p in range(count):
    lo, hi = sum(sizes[:p]), sum(sizes[: p + 1])
    read = _records_read(True, p, count, hi - lo)
    assert {f for f, _ in read} == {'magvit_digits-train.tfrecord-00000-of-00001'}
    # One epoch of this process: exactly its own contiguous quarter, no other record read.
    assert sorted(i for _, i in read) == list(range(lo, hi))
  # 'rows': every process reads every record of the split each epoch (4x the IO at 4 hosts).
  read = _records_read(False, 1, count, NUM_TRAIN)
  assert sorted(i for _, i in read) == list(range(NUM_TRAIN))


def test_files_resume_continues_exactly():
  cfg = _config()
  a = _stream(cfg, 1, 2, 32)
  first = _take(a, 2)
  state = a.state()
  assert state == {'position': 64, 'read': 64, 'skipped': 0}  # Positions of this process.
  rest = _take(a, 3)
  resumed = _take(_stream(cfg, 1, 2, 32, resume=state), 3)
  from_step = _take(_stream(cfg, 1, 2, 32, start_step=2), 3)
  for x, y, z in zip(rest, resumed, from_step):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['image'], z['image'])
    np.testing.assert_array_equal(x['label'], y['label'])
  # Process 0 reads other records, and augments with its own seed.
  other = _images(_take(_stream(cfg, 0, 2, 32), 2))
  assert len(set(_counter(other)) & set(_counter(_images(first)))) < 4  # (duplicate digits)


def test_one_process_files_equals_rows():
  files = _take(_stream(_config(), 0, 1, 16), 3)
  rows = _take(_stream(_config(host_sharding='rows'), 0, 1, 16), 3)
  for x, y in zip(files, rows):
    np.testing.assert_array_equal(x['image'], y['image'])


def _saved(host_sharding, count):
  return {
    'data': {
      'position': [64 * (p + 1) for p in range(count)],
      'read': [64] * count,
      'skipped': [0] * count,
      'host_sharding': host_sharding,
    }
  }


def test_resume_refuses_positions_of_another_process_count_or_sharding():
  # Same count and sharding: this process's own position.
  resume = skipped_records.resume_position(_saved('files', 2), 'data', 1, 2)
  assert resume['position'] == 128 and resume['process_count'] == 2
  assert next(_stream(_config(), 1, 2, 8, resume=resume))['image'].shape == (8, 8, 8, 3)
  cases = [
    (_saved('files', 2), _config(), 4),  # 'files' positions under another process count.
    (_saved('files', 4), _config(host_sharding='rows'), 4),  # ... under 'rows'.
    (_saved('rows', 4), _config(), 4),  # 'rows' (global) positions under 'files'.
  ]
  for saved, cfg, count in cases:
    resume = skipped_records.resume_position(saved, 'data', 0, count)
    with pytest.raises(ValueError, match=r'data\.host_sharding=') as e:
      _stream(cfg, 0, count, 8, resume=resume)
    assert f'resume with {len(saved["data"]["position"])} process(es)' in str(e.value)
  # 'rows' positions are global: any process count may resume them, and one process is 'rows'.
  resume = skipped_records.resume_position(_saved('rows', 4), 'data', 0, 2)
  _stream(_config(host_sharding='rows'), 0, 2, 8, resume=resume)
  resume = skipped_records.resume_position(_saved('files', 1), 'data', 0, 1)
  _stream(_config(), 0, 1, 8, resume=resume)


def test_host_sharding_value_is_checked():
  with pytest.raises(ValueError, match=r"data\.host_sharding='hosts'.*'files'.*'rows'"):
    _stream(_config(host_sharding='hosts'), 0, 2, 8)

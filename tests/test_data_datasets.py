"""Tests of the MAGVIT video datasets in the data pipeline (CPU, offline, small fakes).

- `bair_robot_pushing_small` and `ucf101`: tiny fake copies, written into a temporary data_dir by
  builders with the exact feature specs (and name, version, config) of the TFDS catalog builders
  (tensorflow-datasets 4.9.10), then read back through the real registered TFDS builders, as a
  prepared dataset would be.
- `video_folder`: a tiny folder of frame-image and .npy clips.

Every frame is a constant color that encodes (clip, frame index), so a served clip can be traced
back to the frames it came from, whatever crop/flip/resize was applied.
"""

import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from magvit_jax.data import pipeline, video_folder

KW = dict(process_index=0, process_count=1)
BAIR = 'bair_robot_pushing_small'
UCF = 'ucf101/ucf101_1_256'
BAIR_SPLITS = {'train': 6, 'test': 2}
UCF_LENGTHS = {'train': (3, 6, 7, 8, 9, 10), 'test': (5, 12)}  # Variable length; one short clip.
FRAME_STEP = 8  # Channel 0 of frame t is FRAME_STEP * t.


def _clip_color(clip_id: int) -> int:
  """Channel 1 of every frame of clip `clip_id`."""
  return 16 + 20 * clip_id


def _frame(t: int, clip_id: int, shape=(64, 64)) -> np.ndarray:
  frame = np.empty(shape + (3,), np.uint8)
  frame[..., 0], frame[..., 1], frame[..., 2] = FRAME_STEP * t, _clip_color(clip_id), 128
  return frame


def _decode(clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """uint8 [b, t, s, s, 3] of constant frames -> (frame indices int [b, t], clip ids int [b])."""
  assert np.abs(clips.astype(np.int64) - clips[:, :, :1, :1].astype(np.int64)).max() <= 1
  color = clips[:, :, 0, 0].astype(np.float64)  # [b, t, 3]
  frames = np.round(color[..., 0] / FRAME_STEP).astype(np.int64)
  ids = np.round((color[..., 1] - 16) / 20).astype(np.int64)
  assert np.all(ids == ids[:, :1])  # All frames of a clip come from one source clip.
  return frames, ids[:, 0]


def _assert_windows(frames: np.ndarray, lengths) -> set:
  """Each row is consecutive real frames (the last one repeated for short clips); the starts."""
  starts = set()
  for row, n in zip(frames, lengths):
    want = np.minimum(row[0] + np.arange(len(row)), n - 1)
    np.testing.assert_array_equal(row, want)
    assert 0 <= row[0] <= max(n - len(row), 0)
    starts.add(int(row[0]))
  return starts


def _take(it, n):
  return [next(it) for _ in range(n)]


def _config(**kw):
  return ml_collections.ConfigDict({'image_size': 16, 'shuffle_buffer': 8, **kw})


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert set(x) == set(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def _code_path(cls):
  del cls
  return epath.Path(__file__)


# ----------------------------------------------------------------------------- fake TFDS data

with tfds.core.registered.skip_registration():  # Same names as the catalog builders.

  class FakeBair(tfds.core.GeneratorBasedBuilder):
    """The features of `bair_robot_pushing_small` 2.0.0: a 30-long sequence of dicts."""

    name = BAIR
    VERSION = tfds.core.Version('2.0.0')
    code_path = tfds.core.utils.classproperty(classmethod(_code_path))

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.Sequence(
          {
            'image_main': tfds.features.Image(shape=(64, 64, 3)),
            'image_aux1': tfds.features.Image(shape=(64, 64, 3)),
            'action': tfds.features.Tensor(shape=(4,), dtype=np.float32),
            'endeffector_pos': tfds.features.Tensor(shape=(3,), dtype=np.float32),
          },
          length=30,
        ),
      )

    def _split_generators(self, dl_manager):
      return {s: self._generate_examples(s) for s in BAIR_SPLITS}

    def _generate_examples(self, split):
      offset = 0 if split == 'train' else BAIR_SPLITS['train']
      for i in range(offset, offset + BAIR_SPLITS[split]):
        yield (
          i,
          [
            {
              'image_main': _frame(t, i),
              'image_aux1': np.zeros((64, 64, 3), np.uint8),
              'action': np.full(4, t, np.float32),
              'endeffector_pos': np.zeros(3, np.float32),
            }
            for t in range(30)
          ],
        )

  class FakeUcf101(tfds.core.GeneratorBasedBuilder):
    """The features of `ucf101/ucf101_1_256` 2.0.0: variable-length 256x256 JPEG videos."""

    name = 'ucf101'
    VERSION = tfds.core.Version('2.0.0')
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name='ucf101_1_256')]
    code_path = tfds.core.utils.classproperty(classmethod(_code_path))

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
          {
            'video': tfds.features.Video((None, 256, 256, 3), encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(
              names_file=tfds.core.tfds_path('video/ucf101_labels.txt')
            ),
          }
        ),
      )

    def _split_generators(self, dl_manager):
      return {s: self._generate_examples(s) for s in UCF_LENGTHS}

    def _generate_examples(self, split):
      offset = 0 if split == 'train' else len(UCF_LENGTHS['train'])
      for k, n in enumerate(UCF_LENGTHS[split]):
        i = offset + k
        video = np.stack([_frame(t, i, (256, 256)) for t in range(n)])
        yield i, {'video': video, 'label': 7 * i}  # label = 7 * clip id


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  FakeBair(data_dir=data_dir).download_and_prepare()
  FakeUcf101(data_dir=data_dir, config='ucf101_1_256').download_and_prepare()
  return data_dir


def test_fakes_are_read_by_the_catalog_builders(tfds_dir):
  bair = pipeline.get_builder(BAIR, tfds_dir)
  assert type(bair).__module__.startswith('tensorflow_datasets.datasets.bair_robot_pushing')
  assert isinstance(bair.info.features, tfds.features.Sequence)
  assert 'label' not in bair.info.features
  ucf = pipeline.get_builder(UCF, tfds_dir)
  assert type(ucf).__module__ == 'tensorflow_datasets.video.ucf101'
  assert ucf.info.features['video'].shape == (None, 256, 256, 3)
  assert ucf.info.features['label'].num_classes == 101


# ----------------------------------------------------------------------------- BAIR


def test_bair_train_clips_are_random_windows_with_zero_labels(tfds_dir):
  cfg = _config(name=BAIR, data_dir=tfds_dir, num_frames=16)  # No video_key: 'image_main'.
  batches = _take(
    pipeline.create_dataset(cfg, split='train', batch_size=4, train=True, seed=1, **KW), 6
  )
  starts, ids = set(), set()
  for b in batches:
    assert set(b) == {'video', 'label'}
    assert b['video'].dtype == np.uint8 and b['video'].shape == (4, 16, 16, 16, 3)
    assert b['label'].dtype == np.int32 and b['label'].shape == (4,)
    np.testing.assert_array_equal(b['label'], 0)
    frames, clip_ids = _decode(b['video'])
    starts |= _assert_windows(frames, [30] * 4)
    ids |= set(clip_ids.tolist())
  assert ids == set(range(BAIR_SPLITS['train']))
  assert len(starts) > 3  # Not always the first frames.


def test_bair_eval_first_frames_explicit_video_key(tfds_dir):
  cfg = _config(name=BAIR, data_dir=tfds_dir, video_key='image_main', image_size=64)
  batches = list(
    pipeline.create_dataset(
      cfg, split='test', batch_size=4, train=False, drop_remainder=False, **KW
    )
  )
  assert [b['video'].shape for b in batches] == [(2, 30, 64, 64, 3)]  # num_frames None -> 30
  frames, ids = _decode(batches[0]['video'])
  np.testing.assert_array_equal(frames, np.tile(np.arange(30), (2, 1)))
  assert sorted(ids) == [6, 7]
  np.testing.assert_array_equal(batches[0]['label'], [0, 0])
  # Another video feature of the same dataset.
  aux = next(
    pipeline.create_dataset(
      _config(name=BAIR, data_dir=tfds_dir, num_frames=2, video_key='image_aux1'),
      split='test',
      batch_size=2,
      train=False,
      **KW,
    )
  )
  np.testing.assert_array_equal(aux['video'], 0)


def test_bair_bad_video_key(tfds_dir):
  for key in ('action', 'nope'):
    with pytest.raises(ValueError, match=f"video_key='{key}'"):
      pipeline.create_dataset(
        _config(name=BAIR, data_dir=tfds_dir, video_key=key),
        split='train',
        batch_size=2,
        train=True,
        **KW,
      )


def test_bair_global_batch_independent_of_process_count_and_resumable(tfds_dir):
  cfg = _config(name=BAIR, data_dir=tfds_dir, num_frames=5, host_sharding='rows')
  kw = dict(split='train', train=True, seed=4)
  one = _take(pipeline.create_dataset(cfg, batch_size=4, **kw, **KW), 4)
  halves = [
    _take(pipeline.create_dataset(cfg, batch_size=2, process_index=p, process_count=2, **kw), 4)
    for p in range(2)
  ]
  for step in range(4):
    for k in ('video', 'label'):
      np.testing.assert_array_equal(
        np.concatenate([halves[0][step][k], halves[1][step][k]]), one[step][k]
      )
  resumed = _take(pipeline.create_dataset(cfg, batch_size=4, start_step=2, **kw, **KW), 2)
  _assert_same(one[2:], resumed)


# ----------------------------------------------------------------------------- UCF101


def test_ucf101_needs_num_frames(tfds_dir):
  with pytest.raises(ValueError, match='variable-length'):
    pipeline.create_dataset(
      _config(name=UCF, data_dir=tfds_dir), split='train', batch_size=2, train=True, **KW
    )


def test_ucf101_train_windows_labels_resume_and_processes(tfds_dir):
  cfg = _config(name=UCF, data_dir=tfds_dir, num_frames=4, host_sharding='rows')
  lengths = dict(enumerate(UCF_LENGTHS['train']))
  kw = dict(split='train', train=True, seed=2)
  one = _take(pipeline.create_dataset(cfg, batch_size=4, **kw, **KW), 6)
  starts = set()
  for b in one:
    assert b['video'].dtype == np.uint8 and b['video'].shape == (4, 4, 16, 16, 3)
    assert b['label'].dtype == np.int32
    frames, ids = _decode(b['video'])
    np.testing.assert_array_equal(b['label'], 7 * ids)
    starts |= _assert_windows(frames, [lengths[i] for i in ids])
  assert len(starts) > 2
  halves = [
    _take(pipeline.create_dataset(cfg, batch_size=2, process_index=p, process_count=2, **kw), 3)
    for p in range(2)
  ]
  for step in range(3):
    np.testing.assert_array_equal(
      np.concatenate([halves[0][step]['video'], halves[1][step]['video']]), one[step]['video']
    )
  _assert_same(
    one[3:], _take(pipeline.create_dataset(cfg, batch_size=4, start_step=3, **kw, **KW), 3)
  )


def test_ucf101_eval_first_frames_padded(tfds_dir):
  cfg = _config(name=UCF, data_dir=tfds_dir, num_frames=8)
  batches = list(
    pipeline.create_dataset(
      cfg, split='train', batch_size=4, train=False, drop_remainder=False, **KW
    )
  )
  assert [b['video'].shape for b in batches] == [(4, 8, 16, 16, 3), (2, 8, 16, 16, 3)]
  frames, ids = _decode(np.concatenate([b['video'] for b in batches]))
  assert sorted(ids) == list(range(6))
  for row, i in zip(frames, ids):  # First frames; shorter clips repeat their last frame.
    np.testing.assert_array_equal(row, np.minimum(np.arange(8), UCF_LENGTHS['train'][i] - 1))
  np.testing.assert_array_equal(np.concatenate([b['label'] for b in batches]), 7 * ids)


def test_prepare_hints(tmp_path):
  empty = str(tmp_path / 'empty')
  for name, want in (
    (UCF, 'tfds build ucf101/ucf101_1_256'),
    ('ucf101', 'ucf101_1_256'),
    (BAIR, 'tfds build bair_robot_pushing_small'),
  ):
    with pytest.raises(pipeline.DatasetNotPreparedError) as e:
      pipeline.get_builder(name, empty)
    assert want in str(e.value) and empty in str(e.value)


# ----------------------------------------------------------------------------- video folder

# (split, class, clip name, kind, length); clip ids are the row numbers.
FOLDER_CLIPS = [
  ('train', 'apple', 'a0', 'jpg', 6),
  ('train', 'apple', 'a1', 'npy', 9),
  ('train', 'apple', 'a2', 'png', 3),  # Shorter than num_frames: padded.
  ('train', 'banana', 'b0', 'npy', 7),
  ('train', 'banana', 'b1', 'jpg', 10),
  ('train', 'banana', 'b2', 'gray_npy', 8),
  ('val', 'banana', 'v0', 'png', 5),
]
FOLDER_T = 4


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('videos')
  for clip_id, (split, cls, clip, kind, n) in enumerate(FOLDER_CLIPS):
    d = root / split / cls
    d.mkdir(parents=True, exist_ok=True)
    frames = np.stack([_frame(t, clip_id, (24, 32)) for t in range(n)])  # Not square.
    if kind == 'npy':
      np.save(d / f'{clip}.npy', frames)
    elif kind == 'gray_npy':  # [T, H, W] gray: only channel 0 matters for the frame index.
      np.save(d / f'{clip}.npy', frames[..., 0])
    else:
      (d / clip).mkdir()
      for t, frame in enumerate(frames):
        data = tf.io.encode_png(frame) if kind == 'png' else tf.io.encode_jpeg(frame, quality=100)
        (d / clip / f'{t:05d}.{kind}').write_bytes(data.numpy())
  (root / 'train' / 'apple' / 'notes.txt').write_text('ignored')
  return str(root)


def _folder_config(folder, **kw):
  return _config(name='video_folder', folder=folder, num_frames=FOLDER_T, **kw)


def _folder_frames(clips: np.ndarray) -> np.ndarray:
  return np.round(clips[:, :, 0, 0, 0] / FRAME_STEP).astype(np.int64)


def test_video_folder_classes_and_eval_order(folder):
  assert pipeline.video_folder_classes(folder) == ['apple', 'banana']
  paths, is_npy, labels = pipeline.scan_video_folder(folder, 'train')
  assert [os.path.basename(p) for p in paths] == ['a0', 'a1.npy', 'a2', 'b0.npy', 'b1', 'b2.npy']
  assert is_npy == [False, True, False, True, False, True] and labels == [0, 0, 0, 1, 1, 1]
  batches = list(
    pipeline.create_dataset(
      _folder_config(folder), split='train', batch_size=4, train=False, drop_remainder=False, **KW
    )
  )
  assert [b['video'].shape for b in batches] == [(4, FOLDER_T, 16, 16, 3), (2, FOLDER_T, 16, 16, 3)]
  assert all(b['video'].dtype == np.uint8 and b['label'].dtype == np.int32 for b in batches)
  videos = np.concatenate([b['video'] for b in batches])
  np.testing.assert_array_equal(np.concatenate([b['label'] for b in batches]), [0, 0, 0, 1, 1, 1])
  # File order, first frames (the 3-frame clip repeats its last one).
  frames = _folder_frames(videos)
  for row, (_, _, _, _, n) in zip(frames, FOLDER_CLIPS):
    np.testing.assert_array_equal(row, np.minimum(np.arange(FOLDER_T), n - 1))
  colored = [i for i, c in enumerate(FOLDER_CLIPS[:6]) if c[3] != 'gray_npy']
  _, ids = _decode(videos[colored])
  np.testing.assert_array_equal(ids, colored)
  assert np.all(videos[5] == videos[5][..., :1])  # The gray clip is replicated to RGB.
  # Another split: labels use the class ids of the whole folder.
  val = list(
    pipeline.create_dataset(
      _folder_config(folder), split='val', batch_size=4, train=False, drop_remainder=False, **KW
    )
  )
  np.testing.assert_array_equal(val[0]['label'], [1])
  both = list(
    pipeline.create_dataset(
      _folder_config(folder), split='train+val', batch_size=7, train=False, **KW
    )
  )
  np.testing.assert_array_equal(both[0]['label'], [0, 0, 0, 1, 1, 1, 1])


def test_video_folder_eval_shards(folder):
  cfg = _folder_config(folder)
  whole = next(pipeline.create_dataset(cfg, split='train', batch_size=6, train=False, **KW))
  shards = []
  for p in range(4):
    batches = list(
      pipeline.create_dataset(
        cfg,
        split='train',
        batch_size=4,
        train=False,
        drop_remainder=False,
        process_index=p,
        process_count=4,
      )
    )
    shards.append({k: np.concatenate([b[k] for b in batches]) for k in ('video', 'label')})
  assert [len(s['label']) for s in shards] == [1, 2, 1, 2]  # Contiguous, sizes differ by <= 1.
  for k in ('video', 'label'):
    np.testing.assert_array_equal(np.concatenate([s[k] for s in shards]), whole[k])


@pytest.mark.slow  # over 6 s on 2 cores; the full suite runs it
def test_video_folder_train_stream(folder):
  cfg = _folder_config(folder, host_sharding='rows')
  kw = dict(split='train', train=True, seed=3)
  lengths = [c[4] for c in FOLDER_CLIPS]
  a = _take(pipeline.create_dataset(cfg, batch_size=4, **kw, **KW), 6)  # 4 epochs of 6 clips.
  b = _take(pipeline.create_dataset(cfg, batch_size=4, **kw, **KW), 6)
  c = _take(pipeline.create_dataset(cfg, batch_size=4, split='train', train=True, seed=4, **KW), 6)
  _assert_same(a, b)
  assert any(not np.array_equal(x['video'], y['video']) for x, y in zip(a, c))
  videos = np.concatenate([x['video'] for x in a])
  labels = np.concatenate([x['label'] for x in a])
  assert videos.shape == (24, FOLDER_T, 16, 16, 3) and videos.dtype == np.uint8
  # Clip identity from channel 1 (the gray clip has channel 1 == channel 0).
  ids = np.array(
    [5 if np.all(v == v[..., :1]) else int(np.round((v[0, 0, 0, 1] - 16) / 20)) for v in videos]
  )
  np.testing.assert_array_equal(labels, np.array([0, 0, 0, 1, 1, 1])[ids])
  for epoch in range(4):  # Every epoch is a permutation of the clips.
    assert sorted(ids[6 * epoch : 6 * epoch + 6]) == list(range(6))
  starts = _assert_windows(_folder_frames(videos), [lengths[i] for i in ids])
  assert len(starts) > 2
  # Resume (also mid-epoch) and the global batch for 2 processes.
  _assert_same(
    a[3:], _take(pipeline.create_dataset(cfg, batch_size=4, start_step=3, **kw, **KW), 3)
  )
  halves = [
    _take(pipeline.create_dataset(cfg, batch_size=2, process_index=p, process_count=2, **kw), 4)
    for p in range(2)
  ]
  for step in range(4):
    for k in ('video', 'label'):
      np.testing.assert_array_equal(
        np.concatenate([halves[0][step][k], halves[1][step][k]]), a[step][k]
      )
  resumed_half = _take(
    pipeline.create_dataset(
      cfg, batch_size=2, process_index=1, process_count=2, start_step=2, **kw
    ),
    2,
  )
  _assert_same(halves[1][2:], resumed_half)


def _folder_clip_ids(videos: np.ndarray) -> list[int]:
  """The FOLDER_CLIPS index of each clip (channel 1; the gray clip has channel 1 == 0)."""
  return [
    5 if np.all(v == v[..., :1]) else int(np.round((v[0, 0, 0, 1] - 16) / 20)) for v in videos
  ]


@pytest.mark.slow  # over 6 s on 2 cores (7 pipelines); the full suite runs it
def test_video_folder_files_sharding_reads_own_clips_and_resumes(folder):
  cfg = _folder_config(folder)  # host_sharding='files', the default.
  kw = dict(split='train', train=True, seed=3)
  for p in range(4):
    own = list(range(p, 6, 4))  # Clips i % 4 == p (sorted file order): 2, 2, 1, 1 clips.
    batches = _take(
      pipeline.create_dataset(cfg, batch_size=1, process_index=p, process_count=4, **kw),
      2 * len(own),
    )
    ids = _folder_clip_ids(np.concatenate([b['video'] for b in batches]))
    for epoch in range(2):  # Every epoch of a process is a permutation of its own clips.
      assert sorted(ids[epoch * len(own) : (epoch + 1) * len(own)]) == own
  # Exact resume of process 1 of 2 (clips 1, 3, 5) from a stored position, mid-epoch.
  stream = pipeline.create_dataset(cfg, batch_size=2, process_index=1, process_count=2, **kw)
  _take(stream, 1)
  state = stream.state()
  assert state['position'] == 2
  rest = _take(stream, 2)
  assert set(_folder_clip_ids(np.concatenate([b['video'] for b in rest]))) == {1, 3, 5}
  resumed = pipeline.create_dataset(
    cfg, batch_size=2, process_index=1, process_count=2, resume=state, **kw
  )
  _assert_same(rest, _take(resumed, 2))
  with pytest.raises(ValueError, match=r"host_sharding='files'.*only 6 clips.*host_sharding=rows"):
    pipeline.create_dataset(cfg, batch_size=1, process_index=0, process_count=8, **kw)


def test_video_folder_errors(folder, tmp_path):
  missing = str(tmp_path / 'no_such_folder')
  with pytest.raises(pipeline.DatasetNotPreparedError) as e:
    pipeline.create_dataset(_folder_config(missing), split='train', batch_size=2, train=True, **KW)
  msg = str(e.value)
  assert missing in msg and '<class_name>' in msg and 'ffmpeg' in msg and '.npy' in msg
  assert isinstance(e.value, FileNotFoundError)
  with pytest.raises(pipeline.DatasetNotPreparedError, match="no split 'test'.*val") as e:
    pipeline.create_dataset(_folder_config(folder), split='test', batch_size=2, train=False, **KW)
  assert folder in str(e.value)
  mp4s = tmp_path / 'mp4s' / 'train' / 'apple'
  mp4s.mkdir(parents=True)
  (mp4s / 'x.gif').write_bytes(b'')
  with pytest.raises(pipeline.DatasetNotPreparedError, match='holds no clips.*x.gif.*ffmpeg'):
    pipeline.create_dataset(
      _folder_config(str(tmp_path / 'mp4s')), split='train', batch_size=2, train=True, **KW
    )
  with pytest.raises(ValueError, match='data.folder'):
    pipeline.create_dataset(
      _config(name='video_folder', num_frames=4), split='train', batch_size=2, train=True, **KW
    )
  with pytest.raises(ValueError, match='num_frames'):
    pipeline.create_dataset(
      _config(name='video_folder', folder=folder), split='train', batch_size=2, train=True, **KW
    )
  with pytest.raises(ValueError, match='no slices'):
    pipeline.create_dataset(
      _folder_config(folder), split='train[:50%]', batch_size=2, train=True, **KW
    )


def test_npy_reads_only_the_kept_frames(tmp_path):
  path = str(tmp_path / 'clip.npy')
  video = np.arange(6 * 2 * 3 * 3, dtype=np.uint8).reshape(6, 2, 3, 3)
  np.save(path, video)
  # pylint: disable=protected-access
  assert video_folder._npy_num_frames(path.encode()) == 6
  got = video_folder._npy_read_frames(path.encode(), np.array([3, 4, 5, 5]))
  np.testing.assert_array_equal(got, video[[3, 4, 5, 5]])
  # Frames after the last kept one are never read: cut them off the file.
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[: len(data) - 3 * video[0].size])
  np.testing.assert_array_equal(
    video_folder._npy_read_frames(path.encode(), np.array([1, 2])), video[1:3]
  )
  np.save(path, video.astype(np.float32))
  with pytest.raises(ValueError, match='uint8'):
    video_folder._npy_num_frames(path.encode())


def test_reference_statistics_of_a_video_folder(folder, tmp_path):
  """FVD references work on a video folder; adding a clip invalidates the cache."""
  from magvit_jax.metrics import reference_stats

  def feature_fn(videos):
    return videos.reshape(len(videos), -1)[:, :8].astype(np.float32)

  config = _folder_config(folder, image_size=8)
  args = ('video_folder', feature_fn, config, 'train')
  mu, _ = reference_stats.reference_statistics(*args, network_id='pix', cache_dir=str(tmp_path))
  count = reference_stats.compute_count
  reference_stats.reference_statistics(*args, network_id='pix', cache_dir=str(tmp_path))
  assert reference_stats.compute_count == count  # cached
  extra = os.path.join(folder, 'train', 'apple', 'zz_extra.npy')
  np.save(extra, np.zeros((FOLDER_T, 24, 32, 3), np.uint8))
  try:
    mu2, _ = reference_stats.reference_statistics(*args, network_id='pix', cache_dir=str(tmp_path))
  finally:
    os.remove(extra)
  assert reference_stats.compute_count == count + 1 and mu.shape == mu2.shape == (8,)

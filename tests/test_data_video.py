"""Tests of the video pipeline and the embedded `magvit_moving_digits` dataset (CPU, offline)."""

import os

import ml_collections
import numpy as np
import pytest

from magvit_jax.data import pipeline
from magvit_jax.data.builders import digits
from magvit_jax.data.builders import moving_digits

NAME = 'magvit_moving_digits'
NUM_TOTAL = 1797
T = moving_digits.NUM_FRAMES


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  env = os.environ.get('MAGVIT_DATA_DIR')
  return env if env else str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def builder(data_dir):
  return pipeline.get_builder(NAME, data_dir)


@pytest.fixture(scope='module')
def stored(builder):
  """{split: (videos uint8 [N, 17, 32, 32, 3], labels [N])} in file order."""
  import tensorflow_datasets as tfds

  out = {}
  for split in ('train', 'test'):
    ex = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False, batch_size=-1))
    out[split] = (ex['video'], ex['label'])
  return out


@pytest.fixture(scope='module')
def source():
  images, labels = digits.load_source()
  return digits.upsample(images, moving_digits.DIGIT_SIZE), labels


def _config(data_dir, image_size=32, num_frames=None, shuffle_buffer=256, name=NAME):
  return ml_collections.ConfigDict(
    dict(
      name=name,
      data_dir=data_dir,
      image_size=image_size,
      shuffle_buffer=shuffle_buffer,
      num_frames=num_frames,
    )
  )


def _take(it, n):
  return [next(it) for _ in range(n)]


KW = dict(process_index=0, process_count=1)


def test_builder_builds_offline_with_expected_splits(builder, data_dir):
  assert builder.is_prepared()
  assert builder.name == NAME and NAME in pipeline.EMBEDDED_DATASETS
  assert str(builder.version) == '1.0.0'
  assert builder.info.features['video'].shape == (T, 32, 32, 3) == (17, 32, 32, 3)
  assert builder.info.features['label'].num_classes == 10
  splits = builder.info.splits
  assert splits['test'].num_examples == 300
  assert splits['train'].num_examples == 1497
  assert pipeline.get_builder(NAME, data_dir).is_prepared()  # Reuses the prepared data.


def test_videos_are_the_rendered_sklearn_digits(stored, source):
  up, src_labels = source
  seen = set()
  for split in ('train', 'test'):
    videos, labels = stored[split]
    assert videos.dtype == np.uint8 and videos.shape[1:] == (17, 32, 32, 3)
    assert set(labels.tolist()) == set(range(10))
    assert np.all(videos[..., 0] == videos[..., 2])  # gray replicated to RGB
    want = {
      moving_digits.make_video(i, up[i]).tobytes(): i
      for i in range(NUM_TOTAL)
      if digits.split_of(i) == split
    }
    for video, label in zip(videos, labels):
      i = want[video.tobytes()]  # Exactly one source digit of this split, rendered.
      assert label == src_labels[i]
      seen.add(i)
  assert len(seen) == NUM_TOTAL


def test_digit_moves_and_stays_on_canvas(stored, source):
  up, src_labels = source
  videos, labels = stored['test']
  src_idx = [i for i in range(NUM_TOTAL) if digits.split_of(i) == 'test']
  mass = videos[..., 0].astype(np.int64).sum(axis=(2, 3))  # [N, T]
  # Frame 0 carries the upsampled source digit's mass (the stored order is a permutation of
  # the source order, so compare the sorted multisets, label by label).
  src_mass = up[src_idx, ..., 0].astype(np.int64).sum(axis=(1, 2))
  for c in range(10):
    a = np.sort(mass[labels == c, 0])
    b = np.sort(src_mass[src_labels[src_idx] == c])
    np.testing.assert_allclose(a, b, rtol=0.15)
  # Constant mass per frame: the whole digit is on the canvas in every frame.
  np.testing.assert_allclose(mass, mass[:, :1] * np.ones((1, T)), rtol=0.01)
  for video in videos:
    assert not np.array_equal(video[0], video[-1])
    # Bright-pixel centroid moves at most 2 px/frame per axis and does move overall.
    w = video[..., 0].astype(np.float64)
    ys = (w.sum(axis=2) * np.arange(32)).sum(axis=1) / w.sum(axis=(1, 2))
    xs = (w.sum(axis=1) * np.arange(32)).sum(axis=1) / w.sum(axis=(1, 2))
    assert np.abs(np.diff(ys)).max() <= 2 + 1e-6 and np.abs(np.diff(xs)).max() <= 2 + 1e-6
    assert np.ptp(ys) + np.ptp(xs) >= 2


def test_frame0_crop_is_the_source_digit(stored, source):
  up, src_labels = source
  videos, labels = stored['test']
  src = {up[i].tobytes(): i for i in range(NUM_TOTAL) if digits.split_of(i) == 'test'}
  s = moving_digits.DIGIT_SIZE
  for video, label in zip(videos, labels):
    frame = video[0]
    # Some 16x16 window of frame 0 is exactly an upsampled source digit of the same label, and
    # nothing else is drawn (the window holds all the mass).
    hits = [
      src[frame[r : r + s, c : c + s].tobytes()]
      for r in range(33 - s)
      for c in range(33 - s)
      if frame[r : r + s, c : c + s].tobytes() in src
    ]
    assert hits and all(src_labels[i] == label for i in hits)
    assert frame.astype(np.int64).sum() == up[hits[0]].astype(np.int64).sum()


def test_trajectory_is_deterministic_and_bounded():
  for i in range(200):
    a = moving_digits.trajectory(np.random.default_rng([moving_digits.SEED_SALT, i]))
    b = moving_digits.trajectory(np.random.default_rng([moving_digits.SEED_SALT, i]))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (T, 2) and a.min() >= 0 and a.max() <= 32 - moving_digits.DIGIT_SIZE
    assert np.abs(np.diff(a, axis=0)).max() <= 2 and np.any(a[0] != a[-1])


def test_train_stream_shapes_deterministic_and_seeded(data_dir):
  cfg = _config(data_dir)
  kw = dict(split='train', batch_size=8, train=True, **KW)
  a = _take(pipeline.create_dataset(cfg, seed=0, **kw), 3)
  b = _take(pipeline.create_dataset(cfg, seed=0, **kw), 3)
  c = _take(pipeline.create_dataset(cfg, seed=1, **kw), 3)
  for x in a:
    assert set(x) == {'video', 'label'}
    assert x['video'].dtype == np.uint8 and x['video'].shape == (8, 17, 32, 32, 3)
    assert x['label'].dtype == np.int32 and x['label'].shape == (8,)
    assert 0 <= x['label'].min() and x['label'].max() <= 9
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['video'], y['video'])
    np.testing.assert_array_equal(x['label'], y['label'])
  assert any(not np.array_equal(x['video'], y['video']) for x, y in zip(a, c))


def test_resume_with_temporal_crop_equals_fresh_stream(data_dir):
  cfg = _config(data_dir, image_size=16, num_frames=5)
  kw = dict(split='train', batch_size=8, train=True, seed=3, **KW)
  fresh = _take(pipeline.create_dataset(cfg, **kw), 6)
  resumed = _take(pipeline.create_dataset(cfg, start_step=3, **kw), 3)
  for x, y in zip(fresh[3:], resumed):
    assert y['video'].shape == (8, 5, 16, 16, 3) and y['video'].dtype == np.uint8
    np.testing.assert_array_equal(x['video'], y['video'])
    np.testing.assert_array_equal(x['label'], y['label'])


def test_train_temporal_crop_is_a_random_window(data_dir, stored):
  videos, _ = stored['test']
  windows = {}
  for v in videos:
    for s in range(T - 5 + 1):
      windows.setdefault(v[s : s + 5].tobytes(), set()).add(s)
  it = pipeline.create_dataset(
    _config(data_dir, num_frames=5), split='test', batch_size=64, train=True, seed=7, **KW
  )
  starts = set()
  for batch in _take(it, 2):
    for clip in batch['video']:
      starts |= windows[clip.tobytes()]  # Consecutive frames of a stored video.
  assert len(starts) > 3  # Not always the first frames.


def test_eval_pass_first_frames_each_video_once(data_dir, stored):
  videos, labels = stored['test']
  for num_frames, size in ((None, 32), (5, 32), (5, 16)):
    batches = list(
      pipeline.create_dataset(
        _config(data_dir, image_size=size, num_frames=num_frames),
        split='test',
        batch_size=64,
        train=False,
        drop_remainder=False,
        **KW,
      )
    )
    t = num_frames or T
    assert [b['video'].shape for b in batches] == (
      [(64, t, size, size, 3)] * 4 + [(44, t, size, size, 3)]
    )
    got = np.concatenate([b['video'] for b in batches])
    np.testing.assert_array_equal(np.concatenate([b['label'] for b in batches]), labels)
    if size == 32:
      np.testing.assert_array_equal(got, videos[:, :t])  # File order, first t frames.
  dropped = list(
    pipeline.create_dataset(_config(data_dir), split='test', batch_size=64, train=False, **KW)
  )
  assert len(dropped) == 4


def test_video_validation_errors(data_dir):
  with pytest.raises(ValueError, match=r'data\.num_frames'):
    pipeline.create_dataset(
      _config(data_dir, num_frames=0), split='train', batch_size=4, train=True, **KW
    )
  with pytest.raises(ValueError, match="no 'video' feature"):
    pipeline.create_dataset(
      _config(data_dir, num_frames=4, name='magvit_digits'),
      split='train',
      batch_size=4,
      train=True,
      **KW,
    )


def test_generic_video_dataset_crop_flip_resize_pad(tmp_path):
  """A non-embedded dataset of variable-length non-square videos: crop/flip/resize, padding."""
  import tensorflow_datasets as tfds
  from etils import epath

  class MagvitTestClips(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
      return epath.Path(__file__)

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
          {
            'video': tfds.features.Video(shape=(None, 20, 30, 3)),
            'label': tfds.features.ClassLabel(num_classes=3),
          }
        ),
      )

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples(6), 'test': self._generate_examples(3)}

    def _generate_examples(self, n):
      rng = np.random.default_rng(n)
      for i in range(n):
        yield i, {'video': rng.integers(0, 256, (3 + i, 20, 30, 3), dtype=np.uint8), 'label': i % 3}

  data_dir = str(tmp_path)
  MagvitTestClips(data_dir=data_dir).download_and_prepare()
  with pytest.raises(ValueError, match='variable-length'):
    pipeline.create_dataset(
      _config(data_dir, name='magvit_test_clips'), split='train', batch_size=2, train=True, **KW
    )
  cfg = _config(data_dir, image_size=16, num_frames=4, shuffle_buffer=4, name='magvit_test_clips')
  kw = dict(split='train', batch_size=2, train=True, seed=5, **KW)
  a = _take(pipeline.create_dataset(cfg, **kw), 5)
  b = _take(pipeline.create_dataset(cfg, start_step=2, **kw), 3)
  for x, y in zip(a[2:], b):
    np.testing.assert_array_equal(x['video'], y['video'])  # Augmentation is resumable.
  assert a[0]['video'].shape == (2, 4, 16, 16, 3) and a[0]['video'].dtype == np.uint8
  ev = list(
    pipeline.create_dataset(
      cfg, split='test', batch_size=2, train=False, drop_remainder=False, **KW
    )
  )
  assert [e['video'].shape for e in ev] == [(2, 4, 16, 16, 3), (1, 4, 16, 16, 3)]
  # The 3-frame test clip is padded by repeating its last frame (the 4- and 5-frame ones are not).
  clips = np.concatenate([e['video'] for e in ev])
  assert sum(np.array_equal(clip[3], clip[2]) for clip in clips) == 1

"""Tests of the data pipeline and the embedded `magvit_digits` dataset (CPU, offline)."""

import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from magvit_jax.data import pipeline
from magvit_jax.data.builders import digits

NUM_TOTAL = 1797


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  env = os.environ.get('MAGVIT_DATA_DIR')
  return env if env else str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def builder(data_dir):
  return pipeline.get_builder('magvit_digits', data_dir)


def _config(data_dir, image_size=32, shuffle_buffer=256, name='magvit_digits'):
  return ml_collections.ConfigDict(
    dict(name=name, data_dir=data_dir, image_size=image_size, shuffle_buffer=shuffle_buffer)
  )


def _split_arrays(builder, split):
  import tensorflow_datasets as tfds

  ds = builder.as_dataset(split=split, shuffle_files=False, batch_size=-1)
  ex = tfds.as_numpy(ds)
  return ex['image'], ex['label']


def _take(it, n):
  return [next(it) for _ in range(n)]


def _hashes(images):
  return [img.tobytes() for img in images]


def test_builder_builds_offline_with_expected_splits(builder, data_dir):
  assert builder.is_prepared()
  assert builder.name == 'magvit_digits'
  assert str(builder.version) == '1.0.0'
  splits = builder.info.splits
  n_test = len(range(0, NUM_TOTAL, digits.TEST_EVERY))
  assert splits['test'].num_examples == n_test == 300
  assert splits['train'].num_examples == NUM_TOTAL - n_test == 1497
  # A second call reuses the prepared data.
  assert pipeline.get_builder('magvit_digits', data_dir).is_prepared()


def test_images_and_labels_are_the_sklearn_digits(builder):
  src_images, src_labels = digits.load_source()
  expected = digits.upsample(src_images)
  seen = set()
  for split in ('train', 'test'):
    images, labels = _split_arrays(builder, split)
    assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)
    assert images.min() == 0 and images.max() >= 250
    assert np.all(images[..., 0] == images[..., 2])  # gray replicated to RGB
    assert set(labels.tolist()) == set(range(10))
    # Every stored example is exactly one source example of that split (keys = source index).
    want = {expected[i].tobytes(): i for i in range(NUM_TOTAL) if digits.split_of(i) == split}
    for img, lab in zip(images, labels):
      i = want[img.tobytes()]
      assert lab == src_labels[i]
      seen.add(i)
  assert len(seen) == NUM_TOTAL  # train and test disjoint and together cover the source


def test_upsampled_digits_match_source():
  src_images, _ = digits.load_source()
  up = digits.upsample(src_images[:50]).astype(np.float64)
  down = up[..., 0].reshape(50, 8, 4, 8, 4).mean(axis=(2, 4))
  for a, b in zip(down, src_images[:50]):
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9


def test_train_stream_deterministic_and_seeded(data_dir):
  cfg = _config(data_dir)
  kw = dict(split='train', batch_size=16, train=True, process_index=0, process_count=1)
  a = _take(pipeline.create_dataset(cfg, seed=0, **kw), 4)
  b = _take(pipeline.create_dataset(cfg, seed=0, **kw), 4)
  c = _take(pipeline.create_dataset(cfg, seed=1, **kw), 4)
  for x in a:
    assert x['image'].dtype == np.uint8 and x['image'].shape == (16, 32, 32, 3)
    assert x['label'].dtype == np.int32 and x['label'].shape == (16,)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])
  assert any(not np.array_equal(x['image'], y['image']) for x, y in zip(a, c))


def test_resume_equals_fresh_stream_from_step(data_dir):
  cfg = _config(data_dir, image_size=16)
  kw = dict(split='train', batch_size=8, train=True, seed=3, process_index=0, process_count=1)
  fresh = _take(pipeline.create_dataset(cfg, **kw), 7)
  resumed = _take(pipeline.create_dataset(cfg, start_step=3, **kw), 4)
  for x, y in zip(fresh[3:], resumed):
    assert y['image'].shape == (8, 16, 16, 3)
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])


def test_train_repeats_past_one_epoch(data_dir):
  cfg = _config(data_dir)
  it = pipeline.create_dataset(
    cfg, split='test', batch_size=128, train=True, process_index=0, process_count=1
  )
  batches = _take(it, 5)  # 640 > 300 examples
  assert all(b['image'].shape[0] == 128 for b in batches)


def test_process_shards_disjoint_and_cover(builder, data_dir):
  cfg = _config(data_dir)
  all_images, _ = _split_arrays(builder, 'train')
  shards = []
  for p in range(2):
    batches = list(
      pipeline.create_dataset(
        cfg,
        split='train',
        batch_size=100,
        train=False,
        process_index=p,
        process_count=2,
        drop_remainder=False,
      )
    )
    shards.append(set(_hashes(np.concatenate([b['image'] for b in batches]))))
  assert not shards[0] & shards[1]
  assert shards[0] | shards[1] == set(_hashes(all_images))
  # Training with host_sharding='rows': each process holds its half of every global batch of
  # the one-process stream.
  cfg.host_sharding = 'rows'
  one = _take(
    pipeline.create_dataset(
      cfg, split='train', batch_size=64, train=True, process_index=0, process_count=1
    ),
    3,
  )
  halves = [
    _take(
      pipeline.create_dataset(
        cfg, split='train', batch_size=32, train=True, process_index=p, process_count=2
      ),
      3,
    )
    for p in range(2)
  ]
  for step in range(3):
    np.testing.assert_array_equal(
      np.concatenate([halves[0][step]['image'], halves[1][step]['image']]), one[step]['image']
    )


def test_eval_pass_yields_each_example_once(builder, data_dir):
  cfg = _config(data_dir)
  batches = list(
    pipeline.create_dataset(
      cfg,
      split='test',
      batch_size=64,
      train=False,
      process_index=0,
      process_count=1,
      drop_remainder=False,
    )
  )
  assert [b['image'].shape[0] for b in batches] == [64, 64, 64, 64, 44]
  images = np.concatenate([b['image'] for b in batches])
  labels = np.concatenate([b['label'] for b in batches])
  ref_images, ref_labels = _split_arrays(builder, 'test')
  np.testing.assert_array_equal(images, ref_images)  # file order, no shuffle
  np.testing.assert_array_equal(labels, ref_labels)
  dropped = list(
    pipeline.create_dataset(
      cfg, split='test', batch_size=64, train=False, process_index=0, process_count=1
    )
  )
  assert len(dropped) == 4


def test_validation_errors(data_dir):
  with pytest.raises(ValueError, match='train.*test|test.*train'):
    next(
      pipeline.create_dataset(
        _config(data_dir),
        split='validation',
        batch_size=4,
        train=False,
        process_index=0,
        process_count=1,
      )
    )
  with pytest.raises(ValueError, match=r'data\.image_size'):
    pipeline.create_dataset(
      _config(data_dir, image_size=0),
      split='train',
      batch_size=4,
      train=True,
      process_index=0,
      process_count=1,
    )


def test_unprepared_dataset_raises_helpful_error(tmp_path):
  empty = str(tmp_path / 'empty')
  with pytest.raises(pipeline.DatasetNotPreparedError) as e:
    pipeline.get_builder('imagenet2012', empty)
  msg = str(e.value)
  assert 'imagenet2012' in msg and 'tfds build' in msg and empty in msg
  assert 'ILSVRC2012_img_train.tar' in msg
  assert isinstance(e.value, FileNotFoundError)
  assert not os.path.exists(os.path.join(empty, 'downloads', 'imagenet2012'))
  with pytest.raises(pipeline.DatasetNotPreparedError, match='tfds build'):
    pipeline.create_dataset(
      _config(empty, name='imagenet2012'),
      split='train',
      batch_size=4,
      train=True,
      process_index=0,
      process_count=1,
    )


def test_default_data_dir_env(monkeypatch):
  monkeypatch.setenv('MAGVIT_DATA_DIR', '/some/where')
  assert pipeline.default_data_dir() == '/some/where'
  monkeypatch.delenv('MAGVIT_DATA_DIR')
  assert pipeline.default_data_dir().endswith(
    os.path.join('.cache', 'magvit_jax', 'tensorflow_datasets')
  )


def test_package_import_does_not_import_tensorflow():
  code = (
    'import sys, magvit_jax, magvit_jax.data; '
    "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', "
    "'tensorflow_datasets')]; assert not bad, bad"
  )
  subprocess.run([sys.executable, '-c', code], check=True, timeout=60)


def test_generic_image_dataset_crop_flip_resize(tmp_path):
  """A non-embedded dataset with non-square images goes through crop/flip/resize (seeded)."""
  import tensorflow_datasets as tfds
  from etils import epath

  class MagvitTestRects(tfds.core.GeneratorBasedBuilder):
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
            'image': tfds.features.Image(shape=(None, None, 3)),
            'label': tfds.features.ClassLabel(num_classes=3),
          }
        ),
      )

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples(12), 'validation': self._generate_examples(5)}

    def _generate_examples(self, n):
      rng = np.random.default_rng(n)
      for i in range(n):
        h, w = 20 + 3 * i, 30 + i
        yield i, {'image': rng.integers(0, 256, (h, w, 3), dtype=np.uint8), 'label': i % 3}

  data_dir = str(tmp_path)
  MagvitTestRects(data_dir=data_dir).download_and_prepare()
  cfg = _config(data_dir, image_size=16, shuffle_buffer=8, name='magvit_test_rects')
  kw = dict(split='train', batch_size=4, train=True, process_index=0, process_count=1)
  a = _take(pipeline.create_dataset(cfg, seed=5, **kw), 5)
  b = _take(pipeline.create_dataset(cfg, seed=5, start_step=2, **kw), 3)
  for x, y in zip(a[2:], b):
    np.testing.assert_array_equal(x['image'], y['image'])  # augmentation is resumable
  assert a[0]['image'].shape == (4, 16, 16, 3) and a[0]['image'].dtype == np.uint8
  ev = list(
    pipeline.create_dataset(
      cfg,
      split='validation',
      batch_size=2,
      train=False,
      process_index=0,
      process_count=1,
      drop_remainder=False,
    )
  )
  assert [e['image'].shape for e in ev] == [(2, 16, 16, 3)] * 2 + [(1, 16, 16, 3)]

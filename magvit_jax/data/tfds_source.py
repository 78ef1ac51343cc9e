"""TFDS datasets: builders, data_dir, "not prepared" errors, and TFDS record preprocessing.

- `get_builder` returns a prepared TFDS builder from `default_data_dir()` (or a given data_dir);
  the embedded datasets (`EMBEDDED_DATASETS`, the builders in `magvit_jax.data.builders`) are
  built offline on first use, any other dataset raises `DatasetNotPreparedError` with a
  per-dataset hint on how to prepare it (nothing is ever downloaded).
- `_make_preprocess` / `_make_video_preprocess` decode and augment one encoded image / video
  record (stateless seeds; only the kept frames of a video are decoded).
- `_tfds_records` is the TFDS half of `pipeline.create_dataset`: the dataset of
  (position, encoded example) of a split (for training the global shuffled stream, or with
  `data.host_sharding='files'` this process's own shuffled shard; a per-process shard for
  eval) and its preprocess function.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Any

import tensorflow as tf
import tensorflow_datasets as tfds

from magvit_jax.data.transforms import (
  _center_square_crop,
  _random_square_crop_flip,
  _resize_uint8,
  _spatial_video,
  _temporal_crop,
)


class _DropTfdsSelfDeprecation(logging.Filter):
  """TFDS 4.9.10's own partial decoding reads its deprecated `FeatureConnector.dtype` and logs a
  deprecation warning for it once per feature on every `as_dataset`, and its reader (with
  `add_tfds_id`) calls TF's deprecated `CounterV2`: nothing this project calls, so a user can
  do nothing about them. Exactly those messages are dropped; every other warning passes."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return '`FeatureConnector.dtype` is deprecated' not in message and (
      'CounterV2 (from tensorflow' not in message
    )


logging.getLogger('absl').addFilter(_DropTfdsSelfDeprecation())
logging.getLogger('tensorflow').addFilter(_DropTfdsSelfDeprecation())

EMBEDDED_DATASETS = ('magvit_digits', 'magvit_moving_digits')
# A user's folder of video files converted to TFDS (`builders.video_files`); not embedded: it is
# prepared with `python -m magvit_jax.data.prepare_video_files` and read from its files.
VIDEO_FILES = 'magvit_video_files'
_DATA_DIR_ENV = 'MAGVIT_DATA_DIR'

# The video feature of datasets whose video is not `video` (used when `data.video_key` is unset).
_DEFAULT_VIDEO_KEYS = {'bair_robot_pushing_small': 'image_main'}

# Per-dataset preparation commands for the error message; `{data_dir}` is filled in.
_PREPARE_HINTS = {
  'imagenet2012': (
    'place ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in {data_dir}/downloads/manual '
    'and run `tfds build imagenet2012 --data_dir={data_dir}`'
  ),
  'ucf101': (
    'on a machine with network access and ffmpeg, run `tfds build ucf101/ucf101_1_256 '
    '--data_dir={data_dir}` (TFDS downloads UCF101_videos.zip, 6.5 GiB, and decodes the .avi '
    'files with ffmpeg; configs: `ucf101/ucf101_1_256` = 256x256 frames, split 1 (the '
    'default), `ucf101/ucf101_1`, `ucf101/ucf101_2`, `ucf101/ucf101_3` = original resolution, '
    'splits 1-3; a bare `tfds build ucf101` builds all four), then copy {data_dir}/ucf101/ '
    "here and set data.name='ucf101/ucf101_1_256' and data.num_frames (the videos have "
    'variable length)'
  ),
  'magvit_video_files': (
    'convert your folder of video files with `python -m magvit_jax.data.prepare_video_files '
    '--src=<folder: <split>/<class>/<video>.mp4> --data_dir={data_dir} --num_frames=16 '
    '--image_size=64` (optionally --fps, --stride, --clips_per_video, --config_name); it prints '
    "the data.name to use, 'magvit_video_files/<config name>'"
  ),
  'bair_robot_pushing_small': (
    'on a machine with network access, run `tfds build bair_robot_pushing_small '
    '--data_dir={data_dir}` (TFDS downloads bair_robot_pushing_dataset_v0.tar, 30 GiB), '
    'then copy {data_dir}/bair_robot_pushing_small/ here; '
    'the video is the `image_main` feature (data.video_key, the default for this dataset) '
    'and there are no labels (batches get label 0)'
  ),
}


class DatasetNotPreparedError(FileNotFoundError):
  """The requested TFDS dataset (or video folder) is not prepared; nothing is downloaded here."""


def default_data_dir() -> str:
  """`$MAGVIT_DATA_DIR` if set, else `~/.cache/magvit_jax/tensorflow_datasets`."""
  env = os.environ.get(_DATA_DIR_ENV)
  if env:
    return os.path.expanduser(env)
  return os.path.join(os.path.expanduser('~'), '.cache', 'magvit_jax', 'tensorflow_datasets')


@contextlib.contextmanager
def _file_lock(path: str):
  """Exclusive inter-process lock on `path` (no-op where fcntl is unavailable)."""
  try:
    import fcntl  # pylint: disable=g-import-not-at-top
  except ImportError:  # pragma: no cover  (non-POSIX)
    yield
    return
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _not_prepared(name: str, data_dir: str, detail: str = '') -> DatasetNotPreparedError:
  hint = _PREPARE_HINTS.get(
    name.split('/')[0].split(':')[0], 'run `tfds build {name} --data_dir={data_dir}`'
  )
  hint = hint.format(name=name, data_dir=data_dir)
  return DatasetNotPreparedError(
    f'Dataset {name!r} is not prepared in data_dir {data_dir!r}{detail}. magvit_jax never '
    f"downloads data: {hint}; see docs/data.md. (The data_dir is the config's `data.data_dir`, "
    f'else ${_DATA_DIR_ENV}, else ~/.cache/magvit_jax/tensorflow_datasets.)'
  )


def _embedded_builder_cls(name: str) -> type[tfds.core.DatasetBuilder]:
  """The builder class of embedded dataset `name` (imports `magvit_jax.data.builders`)."""
  from magvit_jax.data import builders  # pylint: disable=g-import-not-at-top

  return {
    'magvit_digits': builders.MagvitDigits,
    'magvit_moving_digits': builders.MagvitMovingDigits,
  }[name]


def get_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """Returns the prepared TFDS builder `name` in `data_dir` (default: `default_data_dir()`).

  The embedded datasets (`EMBEDDED_DATASETS`: `magvit_digits`, `magvit_moving_digits`) are built
  offline on first use (under a file lock, so concurrent processes build each once). Any other
  dataset must already be prepared in `data_dir`, else `DatasetNotPreparedError` says how to
  prepare it; `magvit_video_files/<config>` (a folder of video files, prepared with
  `python -m magvit_jax.data.prepare_video_files`) is read from its files. Never downloads
  anything.
  """
  data_dir = os.path.expanduser(data_dir) if data_dir else default_data_dir()
  if name in EMBEDDED_DATASETS:
    builder_cls = _embedded_builder_cls(name)
    builder = builder_cls(data_dir=data_dir)
    if not builder.is_prepared():
      os.makedirs(data_dir, exist_ok=True)
      with _file_lock(os.path.join(data_dir, f'.{name}.lock')):
        # Re-check: another process may have built it while we waited.
        builder = builder_cls(data_dir=data_dir)
        if not builder.is_prepared():
          builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
          )
          builder = builder_cls(data_dir=data_dir)
    return builder
  video_files = name.split('/')[0].split(':')[0] == VIDEO_FILES
  try:
    if video_files:
      # Always from its files: the builder's code needs the source folder and settings.
      builder = tfds.core.read_only_builder.builder_from_files(name, data_dir=data_dir)
    else:
      builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
  except tfds.core.registered.DatasetNotFoundError as e:
    detail = ' (no prepared config of that name)' if video_files else ''
    raise _not_prepared(name, data_dir, detail or f' (TFDS does not know it either: {e})') from e
  if not builder.is_prepared():
    raise _not_prepared(name, data_dir, f' (looked for {builder.data_dir})')
  return builder


def _has_feature(features: tfds.features.FeatureConnector, key: str) -> bool:
  """Whether the top-level features (a FeaturesDict, or a Sequence of a dict) contain `key`."""
  if not isinstance(features, (tfds.features.FeaturesDict, tfds.features.Sequence)):
    return False
  try:
    return key in features
  except TypeError:  # A Sequence of a non-dict feature.
    return False


def _has_label(features: tfds.features.FeatureConnector) -> bool:
  """Whether the dataset has a per-example `label` (a top-level scalar feature)."""
  return (
    isinstance(features, tfds.features.FeaturesDict)
    and 'label' in features
    and features['label'].shape == ()
  )


def _label(example: dict[str, tf.Tensor], has_label: bool) -> tf.Tensor:
  """The example's int32 label, or 0 for datasets without labels."""
  if has_label:
    return tf.cast(example['label'], tf.int32)
  return tf.constant(0, tf.int32)


def _video_frame_feature(
  features: tfds.features.FeatureConnector, key: str
) -> tfds.features.Image | None:
  """The per-frame `tfds.features.Image` of video feature `key`, or None if `key` is no video.

  A video is either a `Sequence` of `Image` (e.g. `tfds.features.Video`: `ucf101`'s `video`) in
  the top-level FeaturesDict, or an `Image` inside a top-level `Sequence` of dicts (e.g.
  `bair_robot_pushing_small`, a sequence of {'image_main', 'image_aux1', 'action', ...}).
  """
  if not _has_feature(features, key):
    return None
  feature = features[key]
  if isinstance(features, tfds.features.Sequence):
    return feature if isinstance(feature, tfds.features.Image) else None
  if isinstance(feature, tfds.features.Sequence) and isinstance(
    feature.feature, tfds.features.Image
  ):
    return feature.feature
  return None


def _make_preprocess(name: str, builder: tfds.core.DatasetBuilder, image_size: int, train: bool):
  """Returns fn(example with encoded image, stateless seed [2]) -> {'image', 'label'}."""
  features = builder.info.features
  if not _has_feature(features, 'image'):
    keys = sorted(features.keys()) if hasattr(features, 'keys') else features
    raise ValueError(
      f"Dataset {name!r} has no 'image' feature; the image pipeline needs "
      f"'image' (and 'label', else labels are 0) (it has {keys}). For a video "
      f'dataset, set data.video_key to its video feature.'
    )
  image_feature = features['image']
  has_label = _has_label(features)
  embedded = name in EMBEDDED_DATASETS

  def preprocess(example: dict[str, tf.Tensor], seed: tf.Tensor) -> dict[str, tf.Tensor]:
    image = image_feature.decode_example(example['image'])
    if image.shape.rank == 3 and image.shape[-1] == 1:
      image = tf.image.grayscale_to_rgb(image)
    if embedded:
      # Digits: no augmentation (a flipped digit is not the same digit); only resize.
      if image_size != image.shape[0]:
        image = _resize_uint8(image, image_size, antialias=False)
    elif train:
      image = _resize_uint8(_random_square_crop_flip(image, seed), image_size, antialias=True)
    else:
      image = _resize_uint8(_center_square_crop(image), image_size, antialias=True)
    image = tf.ensure_shape(tf.cast(image, tf.uint8), (image_size, image_size, 3))
    return {'image': image, 'label': _label(example, has_label)}

  return preprocess


def _make_video_preprocess(
  name: str,
  frame_feature: tfds.features.Image,
  video_key: str,
  has_label: bool,
  image_size: int,
  num_frames: int,
  train: bool,
):
  """Returns fn(example with encoded video frames, stateless seed [2]) -> {'video', 'label'}.

  `example[video_key]` holds the encoded frames [n] of the video, `frame_feature` decodes one.
  Temporal: train -> a seeded random window of `num_frames` consecutive frames; eval -> the
  first `num_frames`. Only the kept frames are decoded. Spatial: as for images (one crop/flip
  per video), and none for embedded datasets (resize only). Label: `example['label']`, or 0
  when the dataset has none (`has_label=False`).
  """
  embedded = name in EMBEDDED_DATASETS

  def preprocess(example: dict[str, tf.Tensor], seed: tf.Tensor) -> dict[str, tf.Tensor]:
    time_seed, space_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    encoded = _temporal_crop(example[video_key], num_frames, time_seed if train else None)
    video = tf.map_fn(
      frame_feature.decode_example,
      encoded,
      fn_output_signature=tf.TensorSpec(frame_feature.shape, tf.uint8),
    )
    video = _spatial_video(video, image_size, train, space_seed, embedded)
    video = tf.ensure_shape(video, (num_frames, image_size, image_size, 3))
    return {'video': video, 'label': _label(example, has_label)}

  return preprocess


def _split_names(split: str) -> list[str]:
  """Base split names of a TFDS split expression, e.g. 'train[:10%]+test' -> ['train', 'test']."""
  return [re.sub(r'\[.*\]$', '', part.strip()) for part in split.split('+')]


def _cfg_get(config: Any, key: str, default: Any = None) -> Any:
  if hasattr(config, 'get'):
    return config.get(key, default)
  return getattr(config, key, default)


def _process_seed(seed: int, process_index: int) -> int:
  """The shuffle seed of process `process_index`'s own stream (host_sharding='files')."""
  return int(seed) * 1_000_003 + int(process_index)


def _tfds_records(
  name: str,
  data_config: Any,
  split: str,
  num_frames: int | None,
  image_size: int,
  train: bool,
  seed: int,
  start: int,
  process_index: int,
  process_count: int,
  options: tf.data.Options,
  by_files: bool = False,
):
  """(dataset of (position, encoded example), preprocess, source) of a TFDS dataset.

  start: (train) the first position of the stream to read (raw records before it are skipped
  undecoded): of the global stream, or with `by_files` of this process's own stream.
  by_files: (train, `data.host_sharding='files'`) this process reads only its contiguous
  1/process_count of the split (`tfds.even_splits`: only the files, or file ranges, that hold
  it), shuffled with a seed of its own. source: fn(encoded example) -> its `tfds_id` (file and
  record index), how a bad record is named in the log.
  """
  builder = get_builder(name, _cfg_get(data_config, 'data_dir'))
  available = sorted(builder.info.splits.keys())
  unknown = [s for s in _split_names(split) if s not in available]
  if unknown:
    raise ValueError(
      f'Unknown split {split!r} for dataset {name!r}: available splits are {available}.'
    )

  features = builder.info.features
  keys = sorted(features.keys()) if hasattr(features, 'keys') else features
  video_key = _cfg_get(data_config, 'video_key', None)
  explicit_key = video_key is not None
  if not video_key:
    video_key = _DEFAULT_VIDEO_KEYS.get(name.split('/')[0].split(':')[0], 'video')
  frame_feature = _video_frame_feature(features, video_key)
  has_label = _has_label(features)
  if frame_feature is not None:
    if num_frames is None:
      num_frames = features.get_tensor_info()[video_key].shape[0]
      if num_frames is None:
        raise ValueError(f'Dataset {name!r} has variable-length videos: set data.num_frames.')
    preprocess = _make_video_preprocess(
      name, frame_feature, video_key, has_label, image_size, int(num_frames), train
    )
    key = video_key
  elif explicit_key and video_key != 'video':
    raise ValueError(
      f'data.video_key={video_key!r}, but dataset {name!r} has no video '
      f'feature of that name (a sequence of images; it has {keys}).'
    )
  elif num_frames is not None:
    raise ValueError(
      f'data.num_frames={num_frames} is set but dataset {name!r} has no '
      f'{video_key!r} feature (it has {keys}); unset it for images, or set '
      f'data.video_key to the video feature.'
    )
  else:
    preprocess = _make_preprocess(name, builder, image_size, train)
    key = 'image'
  # Read only the needed features, with the image/frames still encoded; decoding happens in
  # `preprocess`, after any resume skip.
  decoders = tfds.decode.PartialDecoding(
    {key: True, **({'label': True} if has_label else {})},
    decoders={key: tfds.decode.SkipDecoding()},
  )

  # Training with host_sharding='rows' reads the whole split on every process (one global
  # shuffled stream, each process keeping its rows of every global batch), so the global batch
  # order does not depend on the process count. With 'files' (`by_files`), and for evaluation,
  # each process reads its own shard: TFDS turns it into the file instructions of that range.
  shard = (
    tfds.even_splits(split, n=process_count)[process_index]
    if process_count > 1 and (by_files or not train)
    else split
  )
  if by_files:
    seed = _process_seed(seed, process_index)
  read_config = tfds.ReadConfig(
    options=options,
    shuffle_seed=seed,
    interleave_cycle_length=1,
    try_autocache=False,
    add_tfds_id=True,
  )
  ds = builder.as_dataset(
    split=shard, shuffle_files=False, read_config=read_config, decoders=decoders
  )
  if train:
    shuffle_buffer = int(_cfg_get(data_config, 'shuffle_buffer', 1000) or 1)
    ds = ds.repeat()
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.enumerate()
    if start:
      ds = ds.skip(int(start))  # Raw records: cheap.
  else:
    ds = ds.enumerate()
  return ds, preprocess, lambda example: example['tfds_id']

"""TFDS or a video folder -> tf.data -> per-process numpy batches: deterministic, resumable.

This is the only module (with `magvit_jax.data.builders`) that imports TensorFlow.

Output of `create_dataset`: an iterator of dicts
  image: uint8 [batch_size, image_size, image_size, 3]
  label: int32 [batch_size]
for image datasets, or, for video datasets (a video feature, `data.video_key`, default `video`,
e.g. `magvit_moving_digits`, `ucf101`, `bair_robot_pushing_small`; or `video_folder`),
  video: uint8 [batch_size, num_frames, image_size, image_size, 3]
  label: int32 [batch_size]  (all zeros for datasets without a `label` feature)
where `batch_size` is the per-process batch.

Training streams are a pure function of (dataset, split, seed, global batch): every process
reads the whole split, shuffled with a fixed seed and repeated forever, and keeps its rows of each
global batch (process p: rows [p * batch_size, (p + 1) * batch_size)), so the global batch order
is the same for any number of processes; every random augmentation (incl. the temporal crop of
videos) is a stateless function of (seed, position in the global stream). So
`start_step=k` reproduces batches k, k+1, ... of a fresh iterator exactly, by skipping
`k * batch_size` raw (still encoded) records before any decoding.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any, Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

# Keep TensorFlow off accelerators: JAX owns them. (tensorflow-cpu has none; harmless there.)
try:
  tf.config.set_visible_devices([], 'GPU')
except (RuntimeError, ValueError):  # Already initialised, or no such device type.
  pass

EMBEDDED_DATASETS = ('magvit_digits', 'magvit_moving_digits')
VIDEO_FOLDER = 'video_folder'  # `data.name` of a local folder of frame-image / .npy clips.
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
  prepare it. Never downloads anything.
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
  try:
    builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise _not_prepared(name, data_dir, f' (TFDS does not know it either: {e})') from e
  if not builder.is_prepared():
    raise _not_prepared(name, data_dir, f' (looked for {builder.data_dir})')
  return builder


# ----------------------------------------------------------------------------- preprocessing


def _resize_uint8(image: tf.Tensor, size: int, antialias: bool) -> tf.Tensor:
  """Bilinear resize of an image [h, w, 3] to uint8 [size, size, 3] (rounded, clipped)."""
  image = tf.image.resize(
    tf.cast(image, tf.float32), (size, size), method='bilinear', antialias=antialias
  )
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _maybe_resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """Resizes to [size, size, 3] unless the (static) shape already matches."""
  if image.shape[0] == size and image.shape[1] == size:
    return tf.cast(image, tf.uint8)
  return _resize_uint8(image, size, antialias=True)


def _center_square_crop(image: tf.Tensor) -> tf.Tensor:
  """Center square crop of an image [h, w, c] or a video [t, h, w, c]."""
  shape = tf.shape(image)
  h, w = shape[-3], shape[-2]
  side = tf.minimum(h, w)
  return tf.image.crop_to_bounding_box(image, (h - side) // 2, (w - side) // 2, side, side)


def _random_square_crop_flip(
  image: tf.Tensor, seed: tf.Tensor, min_scale: float = 0.8
) -> tf.Tensor:
  """Random square crop (side in [min_scale, 1] * min(h, w)) + random horizontal flip.

  `image` is [h, w, c], or a video [t, h, w, c] (one crop/flip for all frames). `seed` is an
  int64 [2] stateless seed, so the result is a pure function of (image, seed).
  """
  seeds = tf.random.experimental.stateless_split(seed, num=4)
  shape = tf.shape(image)
  h, w = shape[-3], shape[-2]
  short = tf.cast(tf.minimum(h, w), tf.float32)
  scale = tf.random.stateless_uniform([], seeds[0], minval=min_scale, maxval=1.0)
  side = tf.maximum(1, tf.cast(tf.round(short * scale), tf.int32))
  top = tf.random.stateless_uniform([], seeds[1], minval=0, maxval=h - side + 1, dtype=tf.int32)
  left = tf.random.stateless_uniform([], seeds[2], minval=0, maxval=w - side + 1, dtype=tf.int32)
  image = tf.image.crop_to_bounding_box(image, top, left, side, side)
  flip = tf.random.stateless_uniform([], seeds[3]) < 0.5
  return tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)


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


def _temporal_crop(frames: tf.Tensor, num_frames: int, seed: tf.Tensor | None) -> tf.Tensor:
  """`num_frames` consecutive entries of `frames` [n, ...] (encoded frames, before decoding).

  seed None -> the first `num_frames`; else a stateless uniform start in [0, n - num_frames].
  Videos shorter than `num_frames` are padded by repeating their last frame.
  """
  n = tf.shape(frames)[0]
  short = tf.maximum(num_frames - n, 0)
  frames = tf.concat([frames, tf.repeat(frames[-1:], short, axis=0)], axis=0)
  if seed is None:
    start = tf.constant(0, tf.int32)
  else:
    start = tf.random.stateless_uniform(
      [], seed, minval=0, maxval=tf.shape(frames)[0] - num_frames + 1, dtype=tf.int32
    )
  return frames[start : start + num_frames]


def _spatial_video(
  video: tf.Tensor, image_size: int, train: bool, seed: tf.Tensor, embedded: bool = False
) -> tf.Tensor:
  """uint8 video [t, h, w, 1 or 3] -> uint8 [t, image_size, image_size, 3].

  Embedded datasets: resize only. Others: train -> random square crop + flip (one for all
  frames, from the stateless `seed`) + resize; eval -> center square crop + resize.
  """
  if video.shape.rank == 4 and video.shape[-1] == 1:
    video = tf.image.grayscale_to_rgb(video)
  if embedded:
    if video.shape[1] != image_size or video.shape[2] != image_size:
      video = _resize_uint8(video, image_size, antialias=False)
  elif train:
    video = _resize_uint8(_random_square_crop_flip(video, seed), image_size, antialias=True)
  else:
    video = _resize_uint8(_center_square_crop(video), image_size, antialias=True)
  return tf.cast(video, tf.uint8)


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


# ----------------------------------------------------------------------------- video folders

_FRAME_EXTENSIONS = ('.jpg', '.jpeg', '.png')


def _video_folder_help(folder: str) -> str:
  return (
    f"Expected layout: {folder}/<split>/<class_name>/<clip>/ holding one clip's frames as "
    f'images (*.jpg, *.jpeg or *.png, in file-name order), or '
    f'{folder}/<split>/<class_name>/<clip>.npy holding uint8 [T, H, W, 3]; label ids '
    f'are the sorted class names. For Kinetics (or any .mp4 videos) extract the frames '
    f'first, e.g. `mkdir -p {folder}/train/<class>/<clip> && ffmpeg -i <clip>.mp4 -vf '
    f'fps=25 -q:v 2 {folder}/train/<class>/<clip>/%05d.jpg`. magvit_jax never downloads '
    f'data; see docs/data.md.'
  )


def _list_dir(path: str) -> list[tuple[str, bool]]:
  """(name, is_dir) of the entries of directory `path`, sorted by name, hidden ones skipped."""
  if '://' not in path:
    with os.scandir(path) as it:
      entries = [(e.name, e.is_dir()) for e in it]
  else:  # Remote (e.g. gs://): directories are listed with a trailing '/'.
    entries = []
    for name in tf.io.gfile.listdir(path):
      is_dir = name.endswith('/') or (
        not name.lower().endswith(('.npy',) + _FRAME_EXTENSIONS)
        and tf.io.gfile.isdir(os.path.join(path, name))
      )
      entries.append((name.rstrip('/'), is_dir))
  return sorted((n, d) for n, d in entries if not n.startswith('.'))


def _is_dir(path: str) -> bool:
  return os.path.isdir(path) if '://' not in path else tf.io.gfile.isdir(path)


def video_folder_classes(folder: str) -> list[str]:
  """Sorted class names of a video folder; label id `i` is class `i`.

  The classes are the union of the class directories of every split directory of `folder`, so
  the ids agree across splits even if a split lacks some class.
  """
  folder = os.path.expanduser(str(folder))
  names = set()
  for split, is_dir in _list_dir(folder):
    if is_dir:
      names.update(n for n, d in _list_dir(os.path.join(folder, split)) if d)
  return sorted(names)


def scan_video_folder(folder: str | None, split: str) -> tuple[list[str], list[bool], list[int]]:
  """The clips of `split` of a video folder: (paths, is_npy, label ids), in file order.

  File order: split names in the order given ('train+val'), then class, then clip name (both
  sorted). A clip is a directory of frame images or a `.npy` file; other files are ignored.
  Raises DatasetNotPreparedError for a missing folder or split, or a split without clips.
  """
  if not folder:
    raise ValueError(
      f'data.name={VIDEO_FOLDER!r} needs data.folder, the path of the video '
      f'folder. {_video_folder_help("<folder>")}'
    )
  folder = os.path.expanduser(str(folder))
  if not _is_dir(folder):
    raise DatasetNotPreparedError(
      f'Video folder {folder!r} (data.folder) does not exist. {_video_folder_help(folder)}'
    )
  names = [part.strip() for part in split.split('+')]
  if any(not n or '[' in n or '/' in n for n in names):
    raise ValueError(
      f'Split {split!r} of a video folder must be split directory names, '
      f"optionally joined by '+' (no slices such as 'train[:10%]')."
    )
  label_ids = {c: i for i, c in enumerate(video_folder_classes(folder))}
  paths, is_npy, labels, others = [], [], [], []
  for name in names:
    split_dir = os.path.join(folder, name)
    if not _is_dir(split_dir):
      have = [n for n, d in _list_dir(folder) if d]
      raise DatasetNotPreparedError(
        f'Video folder {folder!r} has no split {name!r} ({split_dir} is not a directory; '
        f'splits found: {have}). {_video_folder_help(folder)}'
      )
    for cls, cls_is_dir in _list_dir(split_dir):
      if not cls_is_dir:
        continue
      class_dir = os.path.join(split_dir, cls)
      for clip, clip_is_dir in _list_dir(class_dir):
        if clip_is_dir or clip.endswith('.npy'):
          paths.append(os.path.join(class_dir, clip))
          is_npy.append(not clip_is_dir)
          labels.append(label_ids[cls])
        else:
          others.append(os.path.join(class_dir, clip))
  if not paths:
    seen = (
      f' (it holds {len(others)} other files, e.g. {others[0]!r}: video files must be '
      f'extracted to frame directories or .npy arrays)'
      if others
      else ''
    )
    raise DatasetNotPreparedError(
      f'Split {split!r} of video folder {folder!r} holds no '
      f'clips{seen}. {_video_folder_help(folder)}'
    )
  return paths, is_npy, labels


def _frame_paths(clip_dir: bytes) -> np.ndarray:
  """Paths (bytes [n]) of the frame images of a clip directory, sorted by file name."""
  clip_dir = clip_dir.decode()
  names = [
    n for n, is_dir in _list_dir(clip_dir) if not is_dir and n.lower().endswith(_FRAME_EXTENSIONS)
  ]
  if not names:
    raise ValueError(f'Clip directory {clip_dir!r} holds no frame images (*.jpg, *.jpeg, *.png).')
  return np.array([os.path.join(clip_dir, n).encode() for n in names], dtype=object)


def _open_binary(path: str):
  return open(path, 'rb') if '://' not in path else tf.io.gfile.GFile(path, 'rb')


def _npy_header(f, path: str) -> tuple[int, ...]:
  """Reads the header of a .npy file (leaves `f` at the data); checks uint8 [T, H, W(, C)]."""
  version = np.lib.format.read_magic(f)
  if version == (1, 0):
    shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
  elif version == (2, 0):
    shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
  else:
    raise ValueError(f'{path}: unsupported .npy format version {version}.')
  ok = (
    dtype == np.uint8
    and not fortran_order
    and len(shape) in (3, 4)
    and shape[0] > 0
    and (len(shape) == 3 or shape[3] in (1, 3))
  )
  if not ok:
    raise ValueError(
      f'{path}: a clip .npy must hold a C-order uint8 array [T, H, W, 3] '
      f'(or [T, H, W] / [T, H, W, 1] gray) with T > 0, got dtype {dtype}, '
      f'shape {shape}, fortran_order={fortran_order}.'
    )
  return tuple(int(d) for d in shape)


def _npy_num_frames(path: bytes) -> np.ndarray:
  path = path.decode()
  with _open_binary(path) as f:
    return np.int32(_npy_header(f, path)[0])


def _npy_read_frames(path: bytes, indices: np.ndarray) -> np.ndarray:
  """Frames `indices` of a .npy clip as uint8 [k, H, W, 3]; reads only frames min..max."""
  path = path.decode()
  with _open_binary(path) as f:
    shape = _npy_header(f, path)
    frame_bytes = int(np.prod(shape[1:]))
    lo, hi = int(indices.min()), int(indices.max()) + 1
    f.seek(f.tell() + lo * frame_bytes)
    data = np.frombuffer(f.read((hi - lo) * frame_bytes), np.uint8)
  video = data.reshape((hi - lo,) + shape[1:])[indices - lo]
  if video.ndim == 3:
    video = video[..., None]
  return np.repeat(video, 3, axis=-1) if video.shape[-1] == 1 else np.ascontiguousarray(video)


def _decode_frame(path: tf.Tensor) -> tf.Tensor:
  return tf.io.decode_image(
    tf.io.read_file(path), channels=3, dtype=tf.uint8, expand_animations=False
  )


def _make_folder_preprocess(
  paths: list[str],
  is_npy: list[bool],
  labels: list[int],
  image_size: int,
  num_frames: int,
  train: bool,
):
  """Returns fn(clip index, stateless seed [2]) -> {'video', 'label'} for a video folder.

  Temporal and spatial processing as for TFDS videos (`_make_video_preprocess`); only the kept
  frames are read (frame images: the kept files; .npy: the byte range of the kept frames).
  """
  paths_t = tf.constant(paths, tf.string)
  is_npy_t = tf.constant(is_npy, tf.bool)
  labels_t = tf.constant(labels, tf.int32)

  def preprocess(clip: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
    time_seed, space_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    time_seed = time_seed if train else None
    path = paths_t[clip]

    def from_npy():
      n = tf.numpy_function(_npy_num_frames, [path], tf.int32, stateful=False)
      kept = _temporal_crop(tf.range(n), num_frames, time_seed)
      video = tf.numpy_function(_npy_read_frames, [path, kept], tf.uint8, stateful=False)
      return tf.ensure_shape(video, (num_frames, None, None, 3))

    def from_frames():
      files = tf.numpy_function(_frame_paths, [path], tf.string, stateful=False)
      kept = _temporal_crop(tf.ensure_shape(files, (None,)), num_frames, time_seed)
      return tf.map_fn(
        _decode_frame, kept, fn_output_signature=tf.TensorSpec((None, None, 3), tf.uint8)
      )

    video = tf.cond(is_npy_t[clip], from_npy, from_frames)
    video = _spatial_video(
      tf.ensure_shape(video, (num_frames, None, None, 3)), image_size, train, space_seed
    )
    video = tf.ensure_shape(video, (num_frames, image_size, image_size, 3))
    return {'video': video, 'label': labels_t[clip]}

  return preprocess


def _video_folder_records(
  data_config: Any,
  split: str,
  num_frames: int | None,
  image_size: int,
  train: bool,
  seed: int,
  start_step: int,
  global_batch: int,
  process_index: int,
  process_count: int,
):
  """(dataset of (position, clip index), preprocess) of a video folder; see create_dataset."""
  if num_frames is None:
    raise ValueError(
      f'data.name={VIDEO_FOLDER!r}: clips have variable length: set data.num_frames.'
    )
  paths, is_npy, labels = scan_video_folder(_cfg_get(data_config, 'folder'), split)
  preprocess = _make_folder_preprocess(paths, is_npy, labels, image_size, num_frames, train)
  n = len(paths)
  if train:
    # Epoch e is a full permutation of the clips, seeded by (seed, e); so the record at global
    # position k is computed directly and a resume skips less than one epoch.
    start = int(start_step) * global_batch
    first_epoch = start // n
    shuffle_seed = tf.constant(int(seed), tf.int64)

    def epoch(e):
      order = tf.random.experimental.stateless_shuffle(
        tf.range(n, dtype=tf.int64), seed=tf.stack([shuffle_seed, e])
      )
      return tf.data.Dataset.from_tensor_slices(order)

    ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch)
    ds = ds.skip(start - first_epoch * n).enumerate(start=start)
  else:
    # Contiguous shards in file order; sizes differ by at most one.
    lo, hi = process_index * n // process_count, (process_index + 1) * n // process_count
    ds = tf.data.Dataset.range(lo, hi).enumerate()
  return ds, preprocess


# ----------------------------------------------------------------------------- datasets


def _split_names(split: str) -> list[str]:
  """Base split names of a TFDS split expression, e.g. 'train[:10%]+test' -> ['train', 'test']."""
  return [re.sub(r'\[.*\]$', '', part.strip()) for part in split.split('+')]


def _cfg_get(config: Any, key: str, default: Any = None) -> Any:
  if hasattr(config, 'get'):
    return config.get(key, default)
  return getattr(config, key, default)


def _tfds_records(
  name: str,
  data_config: Any,
  split: str,
  num_frames: int | None,
  image_size: int,
  train: bool,
  seed: int,
  start_step: int,
  global_batch: int,
  process_index: int,
  process_count: int,
  options: tf.data.Options,
):
  """(dataset of (position, encoded example), preprocess) of a TFDS dataset."""
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

  # Training reads the whole split on every process (one global shuffled stream, each process
  # keeping its rows of every global batch), so the global batch order does not depend on the
  # process count. Evaluation reads a per-process shard.
  shard = (
    tfds.even_splits(split, n=process_count)[process_index]
    if process_count > 1 and not train
    else split
  )
  read_config = tfds.ReadConfig(
    options=options, shuffle_seed=seed, interleave_cycle_length=1, try_autocache=False
  )
  ds = builder.as_dataset(
    split=shard, shuffle_files=False, read_config=read_config, decoders=decoders
  )
  if train:
    shuffle_buffer = int(_cfg_get(data_config, 'shuffle_buffer', 1000) or 1)
    ds = ds.repeat()
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.enumerate()
    if start_step:
      ds = ds.skip(int(start_step) * global_batch)  # Raw records: cheap.
  else:
    ds = ds.enumerate()
  return ds, preprocess


def create_dataset(
  data_config: Any,
  *,
  split: str,
  batch_size: int,
  train: bool,
  seed: int = 0,
  start_step: int = 0,
  process_index: int | None = None,
  process_count: int | None = None,
  drop_remainder: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
  """Per-process iterator of numpy batches from a TFDS dataset or a video folder.

  Args:
    data_config: ConfigDict (absent optional keys take their defaults) with
      `name` (str): a TFDS name (e.g. 'magvit_digits', 'imagenet2012', 'ucf101/ucf101_1_256',
        'bair_robot_pushing_small') or 'video_folder' (see `folder`);
      `data_dir` (str or None -> `default_data_dir()`): the TFDS data_dir;
      `image_size` (int > 0): output height = width (square crop + resize);
      `shuffle_buffer` (int, train only, TFDS only; a video folder shuffles each epoch fully);
      `num_frames` (int > 0 or None/absent; videos only: frames per clip, None -> the dataset's
        fixed length; required for variable-length videos: ucf101, video folders);
      `video_key` (str or None/absent): the TFDS video feature (a sequence of images), default
        'video' ('image_main' for bair_robot_pushing_small); the output key is always 'video';
      `folder` (str; `name='video_folder'` only): a folder laid out as
        `<folder>/<split>/<class_name>/<clip>/` (frame images *.jpg/*.jpeg/*.png, in name
        order) or `<folder>/<split>/<class_name>/<clip>.npy` (uint8 [T, H, W, 3]); labels are
        the indices of the sorted class names (`video_folder_classes`); `split` is a split
        directory name, or several joined by '+'.
    split: TFDS split expression, e.g. 'train', 'test', 'train[:90%]'.
    batch_size: per-process batch size.
    train: True -> this process's rows of the global stream, shuffled (seeded), repeated
      forever, augmented (seeded;
      for videos also a seeded random temporal window), always `drop_remainder`.
      False -> this process's shard, one pass in file order, no shuffle, no augmentation
      (videos: the first `num_frames` frames), `drop_remainder` as given.
    seed: shuffle/augmentation seed; same seed -> identical stream.
    start_step: (train) resume: the first batch yielded is batch `start_step` of a fresh stream.
    process_index, process_count: default `jax.process_index()` / `jax.process_count()`.
      Training: rows of each global batch (see above). Evaluation: shards from
      `tfds.even_splits` (video folders: contiguous file-order shards; sizes differ by at
      most 1).
    drop_remainder: (eval) drop a final partial batch.

  Yields:
    {'image': uint8 [batch_size, image_size, image_size, 3], 'label': int32 [batch_size]}, or
    for a video dataset (a video feature `video_key`, or a video folder)
    {'video': uint8 [batch_size, num_frames, image_size, image_size, 3],
     'label': int32 [batch_size]}
    (the last eval batch may be smaller if `drop_remainder=False`). Datasets without a
    `label` feature (e.g. bair_robot_pushing_small) give label 0 (unconditional).
  """
  name = str(_cfg_get(data_config, 'name', ''))
  image_size = _cfg_get(data_config, 'image_size')
  if not isinstance(image_size, (int, np.integer)) or image_size <= 0:
    raise ValueError(f'data.image_size must be a positive int, got {image_size!r}.')
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}.')
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}.')
  num_frames = _cfg_get(data_config, 'num_frames', None)
  if num_frames is not None and (
    not isinstance(num_frames, (int, np.integer)) or isinstance(num_frames, bool) or num_frames <= 0
  ):
    raise ValueError(f'data.num_frames must be a positive int or None, got {num_frames!r}.')
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} not in [0, process_count={process_count}).')

  options = tf.data.Options()
  options.deterministic = True
  global_batch = int(batch_size) * int(process_count)
  args = (
    data_config,
    split,
    None if num_frames is None else int(num_frames),
    int(image_size),
    train,
    int(seed),
    int(start_step),
    global_batch,
    int(process_index),
    int(process_count),
  )
  if name == VIDEO_FOLDER:
    ds, preprocess = _video_folder_records(*args)
  else:
    ds, preprocess = _tfds_records(name, *args, options)
  # `ds` holds (position, raw record): for training the position in the global stream (after
  # the resume skip), for eval the position in this process's shard.
  if train:
    # Stateless seed per element: seed x position in the global stream.
    base = tf.constant(int(seed) * 1_000_003, tf.int64)
    if process_count > 1:
      # Rows [p * batch_size, (p + 1) * batch_size) of every global batch, chosen before
      # decoding so that each process decodes only its own examples.
      ds = ds.filter(lambda i, ex: (i % global_batch) // batch_size == process_index)
    drop_remainder = True
  else:
    base = tf.constant(int(seed) * 1_000_003 + int(process_index), tf.int64)

  ds = ds.map(
    lambda i, ex: preprocess(ex, tf.stack([base, i])),
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  ds = ds.with_options(options)
  return iter(tfds.as_numpy(ds))

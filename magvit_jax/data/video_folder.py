"""Local video folders (`data.name='video_folder'`): clips as frame-image directories or .npy.

Layout: `<folder>/<split>/<class_name>/<clip>/` (frame images, in file-name order) or
`<folder>/<split>/<class_name>/<clip>.npy` (uint8 [T, H, W(, C)]); labels are the indices of the
sorted class names. Holds the folder scan (`scan_video_folder`, `video_folder_classes`), the
readers (frame files; .npy headers and byte ranges of the kept frames: `_npy_num_frames`,
`_npy_read_frames`), the per-clip preprocess and `_video_folder_records`, the video-folder half
of `pipeline.create_dataset` (a seeded full permutation per epoch for training, contiguous
file-order shards for eval).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow as tf

from magvit_jax.data.tfds_source import DatasetNotPreparedError, _cfg_get
from magvit_jax.data.transforms import _spatial_video, _temporal_crop

VIDEO_FOLDER = 'video_folder'  # `data.name` of a local folder of frame-image / .npy clips.
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
  start: int,
  process_index: int,
  process_count: int,
):
  """(dataset of (position, clip index), preprocess, source) of a video folder; see
  create_dataset. start: (train) the first position of the global stream; source: fn(clip
  index) -> the clip's path."""
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
  paths_t = tf.constant(paths, tf.string)
  return ds, preprocess, lambda clip: paths_t[clip]

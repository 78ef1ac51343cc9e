"""Local video folders (`data.name='video_folder'`): clips as frame-image directories, .npy
arrays or video files.

Layout: `<folder>/<split>/<class_name>/<clip>/` (frame images, in file-name order),
`<folder>/<split>/<class_name>/<clip>.npy` (uint8 [T, H, W(, C)]) or
`<folder>/<split>/<class_name>/<clip>.mp4` (or .webm .avi .mov .mkv, decoded with PyAV: `pip
install av`, imported only when a folder holds video files); labels are the indices of the sorted
class names. Holds the folder scan (`scan_video_folder`, `video_folder_classes`), the readers
(frame files; .npy headers and byte ranges of the kept frames: `_npy_num_frames`,
`_npy_read_frames`; video files: `_video_frame_indices` from the container's packets, optionally
resampled to `data.fps`, and `_video_read_frames`, which decodes up to the last kept frame;
public for the `magvit_video_files` TFDS builder: `list_dir`, `video_file_frame_indices`,
`iter_video_file_frames`), the per-clip preprocess and `_video_folder_records`, the
video-folder half of `pipeline.create_dataset` (a seeded full permutation per epoch for
training, contiguous file-order shards for eval).
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Iterator

import numpy as np
import tensorflow as tf

from magvit_jax.data.tfds_source import DatasetNotPreparedError, _cfg_get
from magvit_jax.data.transforms import _spatial_video, _temporal_crop

VIDEO_FOLDER = 'video_folder'  # `data.name` of a local folder of frame/.npy/video clips.
_FRAME_EXTENSIONS = ('.jpg', '.jpeg', '.png')
VIDEO_EXTENSIONS = ('.mp4', '.webm', '.avi', '.mov', '.mkv')  # Decoded with PyAV.
# Clip kinds (`_scan_clips`, `_make_folder_preprocess`).
_FRAMES, _NPY, _VIDEO = 0, 1, 2
_PYAV_HINT = 'pip install av (or pip install magvit_jax[video])'


def _video_folder_help(folder: str) -> str:
  return (
    f"Expected layout: {folder}/<split>/<class_name>/<clip>/ holding one clip's frames as "
    f'images (*.jpg, *.jpeg or *.png, in file-name order), '
    f'{folder}/<split>/<class_name>/<clip>.npy holding uint8 [T, H, W, 3], or video files '
    f'{folder}/<split>/<class_name>/<clip>.mp4 ({" ".join(VIDEO_EXTENSIONS)}; read with PyAV: '
    f'{_PYAV_HINT}); label ids are the sorted class names. Frames decode faster than videos '
    f'when read every epoch: e.g. `mkdir -p {folder}/train/<class>/<clip> && ffmpeg -i '
    f'<clip>.mp4 -vf fps=25 -q:v 2 {folder}/train/<class>/<clip>/%05d.jpg`. magvit_jax never '
    f'downloads data; see docs/data.md.'
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
        not name.lower().endswith(('.npy',) + _FRAME_EXTENSIONS + VIDEO_EXTENSIONS)
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
  sorted). A clip is a directory of frame images, a `.npy` file or a video file
  (VIDEO_EXTENSIONS, any case); other files are ignored. Raises DatasetNotPreparedError for a
  missing folder or split, or a split without clips.
  """
  paths, kinds, labels = _scan_clips(folder, split)
  return paths, [k == _NPY for k in kinds], labels


def _clip_kind(name: str, is_dir: bool) -> int | None:
  if is_dir:
    return _FRAMES
  lower = name.lower()
  if lower.endswith('.npy'):
    return _NPY
  return _VIDEO if lower.endswith(VIDEO_EXTENSIONS) else None


def _scan_clips(folder: str | None, split: str) -> tuple[list[str], list[int], list[int]]:
  """scan_video_folder with the kind of each clip (_FRAMES, _NPY or _VIDEO)."""
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
  paths, kinds, labels, others = [], [], [], []
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
        kind = _clip_kind(clip, clip_is_dir)
        if kind is not None:
          paths.append(os.path.join(class_dir, clip))
          kinds.append(kind)
          labels.append(label_ids[cls])
        else:
          others.append(os.path.join(class_dir, clip))
  if not paths:
    seen = (
      f' (it holds {len(others)} other files, e.g. {others[0]!r}: a clip is a frame '
      f'directory, a .npy array or a video file, {" ".join(VIDEO_EXTENSIONS)})'
      if others
      else ''
    )
    raise DatasetNotPreparedError(
      f'Split {split!r} of video folder {folder!r} holds no '
      f'clips{seen}. {_video_folder_help(folder)}'
    )
  return paths, kinds, labels


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


# Path -> why decoding that video file last failed in this process (see `decode_error`).
_DECODE_ERRORS: dict[str, str] = {}


def decode_error(path: str | bytes) -> str | None:
  """Why video file `path` last failed to decode in this process, or None.

  The guard of the pipeline only sees that a record raised; this keeps the reason so that the
  `[data] skipped <path> ...` log line can carry it."""
  return _DECODE_ERRORS.get(path.decode() if isinstance(path, bytes) else str(path))


class VideoDecodeError(ValueError):
  """A video file of a video folder could not be read (names the file and FFmpeg's reason)."""


def _import_av():
  """The PyAV module; an ImportError naming the install command if it is missing."""
  try:
    import av  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
      f'data.name={VIDEO_FOLDER!r}: reading video files ({" ".join(VIDEO_EXTENSIONS)}) needs '
      f'PyAV, which is not installed: {_PYAV_HINT}. Frame directories and .npy clips work '
      f'without it.'
    ) from e
  return av


def _named_video_errors(fn):
  """fn(path: bytes, ...) with its errors (other than a missing PyAV) turned into a
  VideoDecodeError naming the file, and recorded for `decode_error`."""

  @functools.wraps(fn)
  def wrapped(path: bytes, *args):
    try:
      result = fn(path.decode(), *args)
    except ImportError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      why = ' '.join(f'{type(e).__name__}: {e}'.split())
      _DECODE_ERRORS[path.decode()] = why
      raise VideoDecodeError(f'{path.decode()}: cannot decode video file ({why})') from e
    _DECODE_ERRORS.pop(path.decode(), None)
    return result

  return wrapped


def _open_video(path: str):
  av = _import_av()
  container = av.open(path if '://' not in path else _open_binary(path), 'r')
  if not container.streams.video:
    container.close()
    raise ValueError('the file holds no video stream')
  return container, container.streams.video[0]


def _nearest(times: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """Index of the entry of sorted `times` nearest each target (ties: the earlier one)."""
  right = np.clip(np.searchsorted(times, targets), 1, len(times) - 1)
  left = right - 1
  return np.where(targets - times[left] <= times[right] - targets, left, right)


@_named_video_errors
def _video_frame_indices(path: str, fps: float) -> np.ndarray:
  """The frames of a video file's first video stream, as int32 indices into its decoded
  (presentation-order) frames: all of them (fps 0), or resampled to `fps` frames per second.

  Frames are counted from the container's packets (demuxed, not decoded: one packet per frame,
  exact also for variable frame rates and for containers whose header has no frame count, e.g.
  webm/mkv). Resampling: target times j / fps (j = 0, 1, ...) from the first frame's timestamp
  up to the end of the last frame (its timestamp plus its duration); each takes the frame with
  the nearest presentation timestamp (ties: the earlier frame), so a 30 fps file read at
  fps=10 gives frames 0, 3, 6, ... and one read faster than its rate repeats frames.
  """
  container, stream = _open_video(path)
  with container:
    stamps, durations = [], []
    for packet in container.demux(stream):
      if packet.size == 0:  # The empty packet that flushes the decoder.
        continue
      stamps.append(packet.pts if packet.pts is not None else packet.dts)
      durations.append(packet.duration or 0)
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    time_base = stream.time_base
  n = len(stamps)
  if n == 0:
    raise ValueError('the video stream holds no frames')
  if not fps:
    return np.arange(n, dtype=np.int32)
  if any(t is None for t in stamps) or not time_base:  # No timestamps: a constant rate.
    if not rate:
      raise ValueError(f'cannot resample to fps={fps}: no timestamps and no frame rate')
    times = np.arange(n) / float(rate)
    frame_time = 1 / float(rate)
  else:
    times = np.sort(np.array(stamps, np.float64)) * float(time_base)
    times -= times[0]
    positive = [d for d in durations if d > 0]
    if positive:
      frame_time = float(np.median(positive)) * float(time_base)
    elif rate:
      frame_time = 1 / float(rate)
    else:
      frame_time = float(np.median(np.diff(times))) if n > 1 else 0.0
  end = times[-1] + frame_time
  count = max(1, math.ceil(end * fps - 1e-6))
  if n == 1:
    return np.zeros(count, np.int32)
  return _nearest(times, np.arange(count) / fps).astype(np.int32)


def _iter_video_frames(path: str, indices: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
  """(i, uint8 [H, W, 3] RGB frame i) for the distinct `indices` in increasing order.

  Decodes the first video stream sequentially from its start up to the largest index (no seek)
  and converts only the wanted frames; frames after the first wanted one's size are scaled to
  it. Raises ValueError if the decoder gives fewer frames than asked for.
  """
  wanted = {int(i) for i in indices}
  last = max(wanted)
  size = None
  decoded = 0
  container, stream = _open_video(path)
  with container:
    for i, frame in enumerate(container.decode(stream)):
      decoded = i + 1
      if i in wanted:
        if size is None:
          size = (frame.width, frame.height)
        yield i, frame.to_ndarray(format='rgb24', width=size[0], height=size[1])
      if i >= last:
        return
  raise ValueError(
    f'the decoder gave {decoded} frames, but frame {last} was asked for (the container '
    f'lists more frames than decode: a truncated or damaged file)'
  )


@_named_video_errors
def _video_read_frames(path: str, indices: np.ndarray) -> np.ndarray:
  """Frames `indices` (of `_video_frame_indices`) of a video file as uint8 [k, H, W, 3] (RGB).

  Decodes the first video stream sequentially from its start up to the last kept frame (no
  seek) and converts only the kept frames; frames after the first one's size are scaled to it.
  """
  frames = dict(_iter_video_frames(path, indices))
  return np.stack([frames[int(i)] for i in indices])


def list_dir(path: str) -> list[tuple[str, bool]]:
  """(name, is_dir) of the entries of directory `path` (local or remote, e.g. gs://), sorted by
  name, hidden ones skipped."""
  return _list_dir(path)


def video_file_frame_indices(path: str, fps: float | None = None) -> np.ndarray:
  """int32 [n] indices into the decoded frames of video file `path`: all of them (fps None), or
  resampled to `fps` frames per second (the nearest frame to each target time j / fps; see
  `_video_frame_indices`). Raises VideoDecodeError naming the file; ImportError without PyAV."""
  return _video_frame_indices(str(path).encode(), float(fps or 0))


def iter_video_file_frames(path: str, indices: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
  """(i, uint8 [H, W, 3] RGB frame i) of video file `path` for the distinct `indices` (into its
  decoded frames, e.g. from `video_file_frame_indices`), in increasing order, decoding once
  from the start up to the largest index. Raises VideoDecodeError naming the file (also for a
  file that decodes fewer frames than asked for); ImportError without PyAV."""
  path = str(path)
  try:
    yield from _iter_video_frames(path, indices)
  except ImportError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    why = ' '.join(f'{type(e).__name__}: {e}'.split())
    _DECODE_ERRORS[path] = why
    raise VideoDecodeError(f'{path}: cannot decode video file ({why})') from e


def _decode_frame(path: tf.Tensor) -> tf.Tensor:
  return tf.io.decode_image(
    tf.io.read_file(path), channels=3, dtype=tf.uint8, expand_animations=False
  )


def _make_folder_preprocess(
  paths: list[str],
  kinds: list[int],
  labels: list[int],
  image_size: int,
  num_frames: int,
  train: bool,
  fps: float | None = None,
):
  """Returns fn(clip index, stateless seed [2]) -> {'video', 'label'} for a video folder.

  Temporal and spatial processing as for TFDS videos (`_make_video_preprocess`); only the kept
  frames are read (frame images: the kept files; .npy: the byte range of the kept frames; video
  files: decoded up to the last kept frame). kinds: _FRAMES, _NPY or _VIDEO per clip; fps: video
  files only, resample to this frame rate (None: the file's own frames).
  """
  paths_t = tf.constant(paths, tf.string)
  kinds_t = tf.constant(kinds, tf.int32)
  labels_t = tf.constant(labels, tf.int32)
  fps_t = tf.constant(float(fps or 0), tf.float64)

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

    def from_video():
      frames = tf.numpy_function(_video_frame_indices, [path, fps_t], tf.int32, stateful=False)
      kept = _temporal_crop(tf.ensure_shape(frames, (None,)), num_frames, time_seed)
      video = tf.numpy_function(_video_read_frames, [path, kept], tf.uint8, stateful=False)
      return tf.ensure_shape(video, (num_frames, None, None, 3))

    video = tf.switch_case(kinds_t[clip], [from_frames, from_npy, from_video])
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
  by_files: bool = False,
):
  """(dataset of (position, clip index), preprocess, source) of a video folder; see
  create_dataset. start: (train) the first position of the global stream (with `by_files`: of
  this process's own stream); by_files: (train, `data.host_sharding='files'`) this process
  reads only clips i with i % process_count == process_index (in sorted file order), each
  epoch a permutation of them seeded by (seed, process, epoch); source: fn(clip index) -> the
  clip's path."""
  if num_frames is None:
    raise ValueError(
      f'data.name={VIDEO_FOLDER!r}: clips have variable length: set data.num_frames.'
    )
  fps = _cfg_get(data_config, 'fps', None)
  if fps is not None and (
    isinstance(fps, bool)
    or not isinstance(fps, (int, float, np.integer, np.floating))
    or not 0 < fps < math.inf
  ):
    raise ValueError(f'data.fps must be a positive number or None, got {fps!r}.')
  paths, kinds, labels = _scan_clips(_cfg_get(data_config, 'folder'), split)
  if _VIDEO in kinds:
    _import_av()  # Fails now, naming the install command, rather than skipping every video.
  preprocess = _make_folder_preprocess(
    paths, kinds, labels, image_size, num_frames, train, None if fps is None else float(fps)
  )
  n = len(paths)
  if train:
    # Epoch e is a full permutation of the clips (of this process's own clips with `by_files`),
    # seeded by (seed, e); so the record at position k is computed directly and a resume skips
    # less than one epoch.
    clips = tf.range(n, dtype=tf.int64)
    shuffle_seed = tf.constant(int(seed), tf.int64)
    if by_files:
      if n < process_count:
        raise ValueError(
          f"data.host_sharding='files' gives each of the {process_count} processes the clips "
          f'i % {process_count} == process_index, but split {split!r} of '
          f'{_cfg_get(data_config, "folder")} has only {n} clips: use '
          '--config.data.host_sharding=rows'
        )
      clips = tf.range(process_index, n, process_count, dtype=tf.int64)
      n = len(range(process_index, len(paths), process_count))
      shuffle_seed = tf.constant(int(seed) * 1_000_003 + int(process_index), tf.int64)
    first_epoch = start // n

    def epoch(e):
      order = tf.random.experimental.stateless_shuffle(
        tf.range(n, dtype=tf.int64), seed=tf.stack([shuffle_seed, e])
      )
      return tf.data.Dataset.from_tensor_slices(tf.gather(clips, order))

    ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch)
    ds = ds.skip(start - first_epoch * n).enumerate(start=start)
  else:
    # Contiguous shards in file order; sizes differ by at most one.
    lo, hi = process_index * n // process_count, (process_index + 1) * n // process_count
    ds = tf.data.Dataset.range(lo, hi).enumerate()
  paths_t = tf.constant(paths, tf.string)
  return ds, preprocess, lambda clip: paths_t[clip]

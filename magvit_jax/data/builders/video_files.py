"""TFDS builder `magvit_video_files`: a user's folder of video files as fixed-length clips.

Converts a local folder of video files (the layout of `data.name='video_folder'`, see
`magvit_jax.data.video_folder`) into TFRecords once, so that training reads PNG frames of
fixed-size clips instead of decoding videos every epoch:

  <src>/<split>/<class_name>/<video>.mp4   (.webm .avi .mov .mkv too; labels = sorted classes)
  <src>/<split>/<video>.mp4                (no class folders anywhere: no `label` feature)

Every directory of `<src>` is a split (`train`, `test`, `validation`, ...). Class ids are the
indices of the sorted union of the class folders of all splits (`video_folder_classes`), so
they agree with the `video_folder` reader and across splits; when class folders exist, video
files lying directly in a split folder are ignored (as the reader does).

Per video file (decoded with PyAV by the `video_folder` helpers, no ffmpeg binary):
  1. frames: every decoded frame, or resampled to `fps` (`video_file_frame_indices`: the
     nearest frame to each target time j / fps);
  2. clips: windows of `num_frames` consecutive (resampled) frames starting at 0, `stride`,
     2 * `stride`, ... (stride None: `num_frames`, i.e. non-overlapping), all of them or
     `clips_per_video` evenly spread ones; a video shorter than `num_frames` gives one clip
     padded by repeating its last frame (as the pipeline pads);
  3. space: center square crop (side min(H, W)) resized to `image_size` (bilinear with
     antialias, rounded: `center_crop_resize`, the pipeline's eval transform), i.e. the shorter
     side resized to `image_size` and the longer one center-cropped. Each needed frame is
     decoded and resized once, even when clips overlap.

Features: `video` uint8 [num_frames, image_size, image_size, 3] (`tfds.features.Video`, PNG
frames, read unchanged by `pipeline.create_dataset`), `label` (ClassLabel, only with class
folders), `path` (the file relative to `<src>`) and `clip_start` (int32, index of the clip's
first frame among the file's resampled frames; its time is clip_start / fps with `fps`).

A file that fails to decode is skipped with a warning naming it and the build goes on; the
skipped files are counted in the log and in the dataset's metadata (`metadata.json`:
`num_skipped_files`, `skipped_files` {split: [[path, reason], ...]}, `num_padded_videos`,
`num_videos`).

Source: the config's `src`, else TFDS's manual dir (`<data_dir>/downloads/manual` unless a
DownloadConfig names another). Configs are made per source (`VideoFilesConfig`); prepare with
`python -m magvit_jax.data.prepare_video_files --src=... --data_dir=...` and train with
`data.name='magvit_video_files/<config name>'`. Nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from magvit_jax.data import video_folder
from magvit_jax.data.builders import digits
from magvit_jax.data.tfds_source import VIDEO_FILES, DatasetNotPreparedError
from magvit_jax.data.transforms import _center_square_crop, _resize_uint8

NAME = VIDEO_FILES  # 'magvit_video_files', the TFDS name; data.name = f'{NAME}/<config name>'.
_RESIZE_CHUNK = 32  # Full-size frames held at once before resizing.

_LAYOUT = (
  'one directory per split (train/, test/, ...), each holding class directories with the video '
  'files of that class (<src>/<split>/<class_name>/<video>.mp4; label ids are the sorted class '
  'names) or, without classes, the video files themselves (<src>/<split>/<video>.mp4); '
  f'extensions: {" ".join(video_folder.VIDEO_EXTENSIONS)} (any case), decoded with PyAV '
  '(pip install av)'
)


def _positive_int(value, field: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
    raise ValueError(f'{NAME}: {field} must be a positive int, got {value!r}.')
  return int(value)


def default_config_name(
  num_frames: int, image_size: int, fps: float | None, stride: int | None, clips_per_video: int
) -> str:
  """The config name for these settings, e.g. 't16_s64', 't16_s64_fps12p5_stride8_k4'."""
  name = f't{num_frames}_s{image_size}'
  if fps is not None:
    name += '_fps' + f'{float(fps):g}'.replace('.', 'p')
  if stride is not None and stride != num_frames:
    name += f'_stride{stride}'
  if clips_per_video:
    name += f'_k{clips_per_video}'
  return name


@dataclasses.dataclass(eq=False)
class VideoFilesConfig(tfds.core.BuilderConfig):
  """Settings of one `magvit_video_files` dataset.

  Attributes:
    src: the folder of video files (see the module docstring), or None: TFDS's manual dir.
    num_frames: frames per clip (> 0).
    image_size: clip height = width (> 0).
    fps: resample each file to this frame rate (> 0), None: every frame of the file.
    stride: frames between the starts of consecutive clips of a file (> 0), None: num_frames.
    clips_per_video: at most this many clips per file, evenly spread (>= 0; 0: all).
  An empty `name` becomes `default_config_name(...)`.
  """

  src: str | None = None
  num_frames: int = 16
  image_size: int = 64
  fps: float | None = None
  stride: int | None = None
  clips_per_video: int = 0

  def __post_init__(self):
    self.num_frames = _positive_int(self.num_frames, 'num_frames')
    self.image_size = _positive_int(self.image_size, 'image_size')
    if self.fps is not None:
      ok = not isinstance(self.fps, bool) and isinstance(self.fps, (int, float, np.number))
      if not ok or not 0 < float(self.fps) < math.inf:
        raise ValueError(f'{NAME}: fps must be a positive number or None, got {self.fps!r}.')
      self.fps = float(self.fps)
    if self.stride is not None:
      self.stride = _positive_int(self.stride, 'stride')
    k = self.clips_per_video
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
      raise ValueError(f'{NAME}: clips_per_video must be an int >= 0 (0: all), got {k!r}.')
    self.clips_per_video = int(k)
    if self.src is not None:
      self.src = os.path.expanduser(str(self.src))
    if not self.name:
      self.name = default_config_name(
        self.num_frames, self.image_size, self.fps, self.stride, self.clips_per_video
      )
    if not self.description:
      self.description = (
        f'{self.num_frames}-frame {self.image_size}x{self.image_size} clips'
        + (f' at {self.fps:g} fps' if self.fps else '')
        + f', stride {self.stride or self.num_frames}'
        + (f', at most {self.clips_per_video} per video' if self.clips_per_video else '')
      )


def clip_starts(
  num_available: int, num_frames: int, stride: int | None = None, clips_per_video: int = 0
) -> np.ndarray:
  """int [k] start frames of the clips of a video with `num_available` (resampled) frames.

  Starts 0, stride, 2 * stride, ... with start + num_frames <= num_available (stride None:
  num_frames); a video shorter than num_frames gets one clip at 0 (padded by the caller). With
  clips_per_video > 0, at most that many, evenly spread over those starts (first and last kept).
  """
  starts = np.arange(0, max(num_available - num_frames, 0) + 1, stride or num_frames)
  if clips_per_video and len(starts) > clips_per_video:
    starts = starts[np.round(np.linspace(0, len(starts) - 1, clips_per_video)).astype(int)]
  return starts


def center_crop_resize(frames: np.ndarray, image_size: int) -> np.ndarray:
  """uint8 [k, H, W, 3] -> uint8 [k, image_size, image_size, 3]: the center square crop (side
  min(H, W)) resized with antialiased bilinear interpolation, rounded (the eval transform of
  `pipeline.create_dataset`)."""
  video = _resize_uint8(_center_square_crop(tf.constant(frames)), image_size, antialias=True)
  return video.numpy()


def list_video_files(src: str) -> tuple[list[str], dict[str, list[tuple[str, int | None]]]]:
  """(class names, {split: [(video file path, label id or None), ...]}) of a source folder.

  Splits and files in sorted order; splits without video files are left out. Raises
  DatasetNotPreparedError naming `src` if it is missing or holds no video files.
  """
  if not src or not tf.io.gfile.isdir(src):
    raise DatasetNotPreparedError(
      f"{NAME}: the source folder {src!r} does not exist (the config's src / --src, else "
      f"TFDS's manual dir). Expected layout: {_LAYOUT}."
    )
  classes = video_folder.video_folder_classes(src)
  label_ids = {c: i for i, c in enumerate(classes)}

  def videos_in(directory: str) -> list[str]:
    return [
      os.path.join(directory, n)
      for n, is_dir in video_folder.list_dir(directory)
      if not is_dir and n.lower().endswith(video_folder.VIDEO_EXTENSIONS)
    ]

  splits = {}
  for split, is_dir in video_folder.list_dir(src):
    if not is_dir:
      continue
    split_dir = os.path.join(src, split)
    if classes:
      files = [
        (path, label_ids[cls])
        for cls, cls_is_dir in video_folder.list_dir(split_dir)
        if cls_is_dir
        for path in videos_in(os.path.join(split_dir, cls))
      ]
    else:
      files = [(path, None) for path in videos_in(split_dir)]
    if files:
      splits[split] = files
  if not splits:
    raise DatasetNotPreparedError(
      f'{NAME}: the source folder {src!r} holds no video files. Expected layout: {_LAYOUT}.'
    )
  return classes, splits


def read_clips(
  path: str, config: VideoFilesConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
  """The clips of video file `path`: (starts int32 [k], frames uint8 [m, S, S, 3], clip frames
  int [k, T], n); clip c is `frames[clip_frames[c]]`, starting at resampled frame `starts[c]`
  of the file's n resampled frames.

  Decodes the file once, up to the last needed frame, and keeps only the needed frames, each
  resized once (in chunks of full-size frames), however much the clips overlap. Raises
  VideoDecodeError naming the file.
  """
  frames = video_folder.video_file_frame_indices(path, config.fps)
  n, t = len(frames), config.num_frames
  starts = clip_starts(n, t, config.stride, config.clips_per_video)
  # Decoded-frame index of each clip frame; a video shorter than T repeats its last frame.
  decoded = frames[np.minimum(starts[:, None] + np.arange(t)[None, :], n - 1)]
  needed, clip_frames = np.unique(decoded, return_inverse=True)
  resized, chunk = [], []
  for _, frame in video_folder.iter_video_file_frames(path, needed):  # In increasing order.
    chunk.append(frame)
    if len(chunk) == _RESIZE_CHUNK:
      resized.append(center_crop_resize(np.stack(chunk), config.image_size))
      chunk = []
  if chunk:
    resized.append(center_crop_resize(np.stack(chunk), config.image_size))
  out = np.concatenate(resized)
  if len(out) != len(needed):
    raise ValueError(f'{path}: decoded {len(out)} of the {len(needed)} needed frames')
  return starts.astype(np.int32), out, clip_frames.reshape(decoded.shape), n


class MagvitVideoFiles(tfds.core.GeneratorBasedBuilder):
  """A local folder of video files as fixed-length, fixed-size clips (see module docstring)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = []  # Made per source folder: VideoFilesConfig(src=..., ...).
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    f"Put (or link) your videos in the manual dir, or set the config's src: {_LAYOUT}."
  )

  code_path = digits.code_path_property(__file__)  # TFDS 4.9.10 needs importlib_resources.

  def _source(self) -> str:
    """The source folder as known at construction: the config's src, else TFDS's default
    manual dir of this data_dir."""
    config = self.builder_config
    if config.src:
      return config.src
    return os.path.join(str(self._data_dir_root), 'downloads', 'manual')

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    if not isinstance(config, VideoFilesConfig):
      raise ValueError(
        f'{NAME} needs a VideoFilesConfig (config=VideoFilesConfig(src=..., num_frames=..., '
        f'image_size=...)); to read a prepared one use data.name={NAME!r}/<config name>, to '
        'prepare one run `python -m magvit_jax.data.prepare_video_files --src=... '
        '--data_dir=...`.'
      )
    classes, _ = list_video_files(self._source())
    t, s = config.num_frames, config.image_size
    features = {
      'video': tfds.features.Video(shape=(t, s, s, 3), dtype=np.uint8),
      'path': tfds.features.Text(doc='The source video file, relative to the source folder.'),
      'clip_start': tfds.features.Scalar(
        np.int32, doc="Index of the clip's first frame among the file's (resampled) frames."
      ),
    }
    if classes:
      features['label'] = tfds.features.ClassLabel(names=classes)
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        f'Video files of a local folder as {config.description}; see '
        'magvit_jax/data/builders/video_files.py. Files that failed to decode are listed in '
        'the metadata (skipped_files).'
      ),
      features=tfds.features.FeaturesDict(features),
      supervised_keys=('video', 'label') if classes else None,
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    src = self.builder_config.src or os.fspath(dl_manager.manual_dir)
    classes, splits = list_video_files(src)
    has_label = 'label' in self.info.features
    if classes != (self.info.features['label'].names if has_label else []):
      raise ValueError(
        f'{NAME}: the class folders of {src} differ from those of {self._source()} (read when '
        "the builder was made): set the config's src to the source folder instead of passing "
        'another manual_dir.'
      )
    metadata = self.info.metadata
    metadata.update(
      source=src, num_videos={}, num_padded_videos={}, skipped_files={}, num_skipped_files=0
    )
    return {
      split: self._generate_examples(src, split, files, has_label)
      for split, files in splits.items()
    }

  def _generate_examples(
    self, src: str, split: str, files: list[tuple[str, int | None]], has_label: bool
  ) -> Iterator[tuple[str, dict]]:
    config = self.builder_config
    metadata = self.info.metadata
    skipped, padded, clips_done = [], 0, 0
    for path, label in files:
      try:
        starts, frames, clip_frames, n = read_clips(path, config)
      except ImportError:
        raise
      except Exception as e:  # pylint: disable=broad-except  (any damaged file is skipped)
        why = ' '.join(str(e).split())
        why = why[len(path) + 2 :] if why.startswith(f'{path}: ') else why  # Named below.
        logging.warning('%s: skipped %s, which failed to decode: %s', NAME, path, why)
        skipped.append([os.path.relpath(path, src), why])
        continue
      padded += n < config.num_frames
      rel = os.path.relpath(path, src)
      for start, index in zip(starts, clip_frames):
        example = {'video': frames[index], 'path': rel, 'clip_start': start}
        if has_label:
          example['label'] = label
        clips_done += 1
        yield f'{rel}:{int(start)}', example
    metadata['num_videos'][split] = len(files) - len(skipped)
    metadata['num_padded_videos'][split] = padded
    metadata['skipped_files'][split] = skipped
    metadata['num_skipped_files'] += len(skipped)
    logging.info(
      '%s/%s: split %r: %d clips from %d video files; %d files skipped (failed to decode)%s',
      NAME,
      config.name,
      split,
      clips_done,
      len(files) - len(skipped),
      len(skipped),
      f', {padded} shorter than num_frames={config.num_frames} were padded' if padded else '',
    )
    if not clips_done:
      raise ValueError(
        f'{NAME}: none of the {len(files)} video files of split {split!r} of {src} could be '
        f'decoded (e.g. {skipped[0][0]}: {skipped[0][1]}).'
      )


def prepare(
  src: str | None,
  data_dir: str | None = None,
  *,
  num_frames: int = 16,
  image_size: int = 64,
  fps: float | None = None,
  stride: int | None = None,
  clips_per_video: int = 0,
  config_name: str | None = None,
  overwrite: bool = False,
):
  """Builds `magvit_video_files/<config name>` from `src` into `data_dir` and returns the
  prepared (read-only) builder. A config prepared before from the same source is reused
  (`overwrite=True` rebuilds it); one prepared from another source raises ValueError."""
  from magvit_jax.data import tfds_source  # pylint: disable=g-import-not-at-top

  data_dir = os.path.expanduser(data_dir) if data_dir else tfds_source.default_data_dir()
  config = VideoFilesConfig(
    name=config_name or '',
    src=None if not src else src if '://' in src else os.path.abspath(os.path.expanduser(src)),
    num_frames=num_frames,
    image_size=image_size,
    fps=fps,
    stride=stride,
    clips_per_video=clips_per_video,
  )
  name = f'{NAME}/{config.name}'
  if not overwrite:
    try:
      built = tfds_source.get_builder(name, data_dir)
    except tfds_source.DatasetNotPreparedError:
      built = None
    if built is not None:
      source = (built.info.metadata or {}).get('source')
      wanted = config.src or os.path.join(data_dir, 'downloads', 'manual')
      if source != wanted:
        raise ValueError(
          f'{name} is already prepared in {data_dir} from {source!r}, not {wanted!r}: pass '
          'another --config_name, or --overwrite to rebuild it.'
        )
      return built
  os.makedirs(data_dir, exist_ok=True)
  builder = MagvitVideoFiles(config=config, data_dir=data_dir)
  modes = tfds.download.GenerateMode
  mode = modes.FORCE_REDOWNLOAD if overwrite else modes.REUSE_DATASET_IF_EXISTS
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(try_download_gcs=False, download_mode=mode)
  )
  return tfds_source.get_builder(name, data_dir)

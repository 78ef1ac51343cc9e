"""TFDS or a video folder -> tf.data -> per-process numpy batches: deterministic, resumable.

The public entry of `magvit_jax.data`: `create_dataset`, plus the public names of its parts
(`tfds_source`: TFDS builders and data_dir; `video_folder`: local video folders;
`transforms`: the tf image/video ops). Only the modules of `magvit_jax.data` import
TensorFlow (`import magvit_jax.data` itself does not).

Output of `create_dataset`: an iterator of dicts
  image: uint8 [batch_size, image_size, image_size, 3]
  label: int32 [batch_size]
for image datasets, or, for video datasets (a video feature, `data.video_key`, default `video`,
e.g. `magvit_moving_digits`, `ucf101`, `bair_robot_pushing_small`; or `video_folder`),
  video: uint8 [batch_size, num_frames, image_size, image_size, 3]
  label: int32 [batch_size]  (all zeros for datasets without a `label` feature)
where `batch_size` is the per-process batch.

Training streams: how the processes of a multi-process run share the split is
`data.host_sharding` (the same on one process: one stream of the whole split):
- 'files' (default; what pods need): each process reads only its own 1/process_count of the
  split (TFDS: `tfds.even_splits`, i.e. only the files or file ranges holding it; a video
  folder: the clips i % process_count == process_index), shuffles it with a seed of its own,
  repeats it forever and batches it locally. Per epoch the shards of all processes hold every
  record exactly once; the records each process reads (IO, parsing, shuffling) shrink with
  the process count (decoding is per own example in both modes). The global
  batch composition depends on the process count, so a checkpoint's stream positions
  (per process) resume only with the same process count (else a ValueError naming
  `data.host_sharding`).
- 'rows': every process reads the whole split, shuffled with a fixed seed and repeated
  forever, and keeps its rows of each global batch (process p: rows [p * batch_size,
  (p + 1) * batch_size)), so the global batch order is the same for any number of processes,
  at the price of every process reading (not decoding) the whole split.
Every random augmentation (incl. the temporal crop of videos) is a stateless function of (seed,
position in the stream; with 'files' also the process). So `start_step=k` reproduces batches
k, k+1, ... of a fresh iterator exactly, by skipping `k * global batch` ('rows') or
`k * batch_size` ('files') raw (still encoded) records before any decoding; `resume=` (what a
checkpoint stored) starts at an exact stream position instead, which stays exact when bad
records were skipped.

Bad records (`skipped_records`): each record is decoded under a guard; one that fails to decode
or holds NaN/Inf in a float feature is dropped, counted, named once in the log, and replaced by
the next record; past `data.max_skipped_fraction` the stream stops with an error.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from magvit_jax.data import skipped_records
from magvit_jax.data.tfds_source import (
  EMBEDDED_DATASETS,
  DatasetNotPreparedError,
  _cfg_get,
  _tfds_records,
  default_data_dir,
  get_builder,
)
from magvit_jax.data.video_folder import (
  VIDEO_FOLDER,
  _video_folder_records,
  scan_video_folder,
  video_folder_classes,
)

# data.host_sharding: how the processes of a training run share the split (module docstring).
HOST_SHARDINGS = ('files', 'rows')

__all__ = [
  'DamagedDataError',
  'HOST_SHARDINGS',
  'DatasetNotPreparedError',
  'EMBEDDED_DATASETS',
  'VIDEO_FOLDER',
  'create_dataset',
  'default_data_dir',
  'get_builder',
  'scan_video_folder',
  'video_folder_classes',
]


def create_dataset(
  data_config: Any,
  *,
  split: str,
  batch_size: int,
  train: bool,
  seed: int = 0,
  start_step: int = 0,
  resume: dict[str, int] | None = None,
  stream: str = 'data',
  process_index: int | None = None,
  process_count: int | None = None,
  drop_remainder: bool = True,
) -> skipped_records.GoodBatches:
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
      `max_skipped_fraction` (float in [0, 1], default 0.01): the stream stops with
        TooManyBadRecordsError once more than this fraction of its records was skipped as
        undecodable or non-finite (see `skipped_records`);
      `folder` (str; `name='video_folder'` only): a folder laid out as
        `<folder>/<split>/<class_name>/<clip>/` (frame images *.jpg/*.jpeg/*.png, in name
        order), `<folder>/<split>/<class_name>/<clip>.npy` (uint8 [T, H, W, 3]) or a video
        file `<clip>.mp4/.webm/.avi/.mov/.mkv` (decoded with PyAV: `pip install -e '.[video]'`);
        labels are the indices of the sorted class names (`video_folder_classes`); `split` is
        a split directory name, or several joined by '+';
      `fps` (float or None; video files only): resample to this frame rate (the nearest frame
        to each target time), None: every frame of the file;
      `host_sharding` ('files' (default) or 'rows'; train only): each process reads only its
        own shard of the split, or the whole split keeping its rows of each global batch (see
        the module docstring).
    split: TFDS split expression, e.g. 'train', 'test', 'train[:90%]'.
    batch_size: per-process batch size.
    train: True -> this process's shard ('files') or rows of the global stream ('rows'),
      shuffled (seeded), repeated forever, augmented (seeded;
      for videos also a seeded random temporal window), always `drop_remainder`.
      False -> this process's shard, one pass in file order, no shuffle, no augmentation
      (videos: the first `num_frames` frames), `drop_remainder` as given.
    seed: shuffle/augmentation seed; same seed -> identical stream.
    start_step: (train) resume: the first batch yielded is batch `start_step` of a fresh stream
      (exact when no record was skipped before it).
    resume: (train) {'position', 'read', 'skipped'} of this process as a checkpoint stored them
      (`skipped_records.resume_position`): the stream starts at that position, the counts go
      on; overrides `start_step`. With the saved 'host_sharding' and 'process_count' (newer
      checkpoints), a resume whose positions mean something else here is refused (ValueError).
    stream: the config section of `data_config` ('data', 'image_data'): names the skip
      metrics and the limit's config key in messages.
    process_index, process_count: default `jax.process_index()` / `jax.process_count()`.
      Training: this process's shard or rows (see above). Evaluation: shards from
      `tfds.even_splits` (video folders: contiguous file-order shards; sizes differ by at
      most 1).
    drop_remainder: (eval) drop a final partial batch.

  Returns a `skipped_records.GoodBatches` iterator (with `position()`, `state()`,
  `stats()`) that yields
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
  max_skipped = _cfg_get(data_config, 'max_skipped_fraction', 0.01)
  if (
    isinstance(max_skipped, bool)
    or not isinstance(max_skipped, (int, float))
    or not (0 <= max_skipped <= 1)
  ):
    raise ValueError(f'data.max_skipped_fraction must be in [0, 1], got {max_skipped!r}.')
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
  host_sharding = _cfg_get(data_config, 'host_sharding', 'files')
  if host_sharding not in HOST_SHARDINGS:
    raise ValueError(
      f"{stream}.host_sharding={host_sharding!r}: expected 'files' (each process reads its own "
      "files) or 'rows' (each process reads the whole split and keeps its rows)"
    )
  # One process: both are the one stream of the whole split.
  by_files = train and host_sharding == 'files' and process_count > 1

  options = tf.data.Options()
  options.deterministic = True
  global_batch = int(batch_size) * int(process_count)
  resume = dict(resume or {})
  if train and resume:
    _check_resumable(resume, stream, host_sharding, int(process_count))
  per_step = int(batch_size) if by_files else global_batch
  start = int(resume.get('position', int(start_step) * per_step)) if train else 0
  args = (
    data_config,
    split,
    None if num_frames is None else int(num_frames),
    int(image_size),
    train,
    int(seed),
    start,
    int(process_index),
    int(process_count),
  )
  if name == VIDEO_FOLDER:
    ds, preprocess, source = _video_folder_records(*args, by_files=by_files)
  else:
    ds, preprocess, source = _tfds_records(name, *args, options, by_files=by_files)
  # `ds` holds (position, raw record): for training the position in the global stream ('rows')
  # or in this process's own stream ('files') (after the resume skip), for eval the position in
  # this process's shard.
  if by_files:
    # Stateless seed per element: (seed, process) x position in this process's stream.
    base = tf.constant(int(seed) * 1_000_003 + int(process_index), tf.int64)
    drop_remainder = True
  elif train:
    # Stateless seed per element: seed x position in the global stream.
    base = tf.constant(int(seed) * 1_000_003, tf.int64)
    if process_count > 1:
      # Rows [p * batch_size, (p + 1) * batch_size) of every global batch, chosen before
      # decoding so that each process decodes only its own examples.
      ds = ds.filter(lambda i, ex: (i % global_batch) // batch_size == process_index)
    drop_remainder = True
  else:
    base = tf.constant(int(seed) * 1_000_003 + int(process_index), tf.int64)

  ds = ds.interleave(
    _guarded_decode(ds, preprocess, source, base),
    cycle_length=8,
    block_length=1,
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  ds = ds.with_options(options)
  batches = skipped_records.GoodBatches(
    _framing_errors_named(tfds.as_numpy(ds), name, split, data_config),
    batch_size,
    stream=stream,
    max_skipped_fraction=float(max_skipped),
    drop_remainder=drop_remainder,
    start_position=start,
    read=int(resume.get('read', 0)),
    skipped=int(resume.get('skipped', 0)),
  )
  # What the positions of this stream mean; stored beside them in checkpoints (trainers/loop).
  batches.host_sharding = host_sharding
  return batches


def _check_resumable(resume: dict, stream: str, host_sharding: str, process_count: int) -> None:
  """Refuses a checkpoint's stream positions that mean something else in this run.

  resume: from `skipped_records.resume_position`; its 'host_sharding' and 'process_count' are
  those of the run that saved it (absent for a hand-made dict or an older checkpoint: nothing
  to check). On one process both shardings give the same stream; 'rows' positions are global,
  so they carry over to another process count (`resume_position` then starts every process at
  the smallest one); 'files' positions are per process and per shard, so they need the same
  process count and sharding.
  """
  saved_mode, saved_count = resume.get('host_sharding'), resume.get('process_count')
  if saved_mode is None or saved_count is None:
    return
  saved = 'rows' if saved_count == 1 else saved_mode
  current = 'rows' if process_count == 1 else host_sharding
  if saved == current == 'rows' or (saved == current and saved_count == process_count):
    return
  raise ValueError(
    f'the checkpoint stored the {stream} stream positions of {saved_count} process(es) with '
    f'{stream}.host_sharding={saved_mode!r}; this run has {process_count} process(es) with '
    f"{stream}.host_sharding={host_sharding!r}. With 'files' each process reads its own shard "
    'of the split, whose positions mean nothing under another process count or sharding: '
    f'resume with {saved_count} process(es) and {stream}.host_sharding={saved_mode!r}'
    + (" (or, for a run saved with 'rows', any process count)" if saved_mode == 'rows' else '')
  )


class DamagedDataError(OSError):
  """A data file is damaged below the record level (e.g. a TFRecord whose CRC fails)."""


def _framing_errors_named(batches, name: str, split: str, data_config: Any):
  """`batches`, with TF's bare DataLossError ('corrupted record at 889869', no file named)
  turned into an error that names the dataset, split and data_dir and how to repair them."""
  try:
    yield from batches
  except tf.errors.DataLossError as e:
    where = (
      _cfg_get(data_config, 'folder')
      if name == VIDEO_FOLDER
      else (_cfg_get(data_config, 'data_dir') or default_data_dir())
    )
    detail = re.sub(r'\{\{.*?\}\}|\[Op:.*$', '', ' '.join(str(e.message).split())).strip()
    raise DamagedDataError(
      f'a file of dataset {name!r} (split {split!r}) in {where} is damaged below the record '
      f'level, where no single record can be skipped ({detail}); rebuild the dataset '
      f'(`tfds build {name} --data_dir=...`) or restore its files from a copy'
    ) from None


def _guarded_decode(ds: tf.data.Dataset, preprocess, source, base: tf.Tensor):
  """fn(position, raw record) -> a dataset of exactly one decoded row with the markers of
  `skipped_records`: the decoded record, or, if decoding raised, zeros marked `_bad`.

  Used with `interleave` (deterministic, one row per input): the output order is the input
  order, and an error in one record no longer ends the whole stream.
  """

  def decode(i, ex):
    row = preprocess(ex, tf.stack([base, i]))
    return dict(row, _position=i, _bad=tf.constant(False), _source=source(ex))

  spec = ds.map(decode).element_spec
  for key, s in spec.items():
    if not s.shape.is_fully_defined():
      raise ValueError(f'pipeline output {key!r} has no static shape ({s.shape})')

  def placeholder(i, ex):
    row = {k: tf.zeros(s.shape, s.dtype) for k, s in spec.items() if not k.startswith('_')}
    return dict(row, _position=i, _bad=tf.constant(True), _source=source(ex))

  def guarded(i, ex):
    one = tf.data.Dataset.from_tensors((i, ex))
    return one.map(decode).ignore_errors().concatenate(one.map(placeholder)).take(1)

  return guarded

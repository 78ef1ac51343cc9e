"""TFDS -> tf.data -> per-process numpy batches: deterministic and resumable.

This is the only module (with `magvit_jax.data.builders`) that imports TensorFlow.

Output of `create_dataset`: an iterator of dicts
  image: uint8 [batch_size, image_size, image_size, 3]
  label: int32 [batch_size]
for image datasets, or, for video datasets (a `video` feature, e.g. `magvit_moving_digits`),
  video: uint8 [batch_size, num_frames, image_size, image_size, 3]
  label: int32 [batch_size]
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
    tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):  # Already initialised, or no such device type.
    pass

EMBEDDED_DATASETS = ("magvit_digits", "magvit_moving_digits")
_DATA_DIR_ENV = "MAGVIT_DATA_DIR"

# Per-dataset preparation commands for the error message; `{data_dir}` is filled in.
_PREPARE_HINTS = {
    "imagenet2012": (
        "place ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in {data_dir}/downloads/manual "
        "and run `tfds build imagenet2012 --data_dir={data_dir}`"),
}


class DatasetNotPreparedError(FileNotFoundError):
    """The requested TFDS dataset is not prepared in the data_dir (and is never downloaded here)."""


def default_data_dir() -> str:
    """`$MAGVIT_DATA_DIR` if set, else `~/.cache/magvit_jax/tensorflow_datasets`."""
    env = os.environ.get(_DATA_DIR_ENV)
    if env:
        return os.path.expanduser(env)
    return os.path.join(os.path.expanduser("~"), ".cache", "magvit_jax", "tensorflow_datasets")


@contextlib.contextmanager
def _file_lock(path: str):
    """Exclusive inter-process lock on `path` (no-op where fcntl is unavailable)."""
    try:
        import fcntl  # pylint: disable=g-import-not-at-top
    except ImportError:  # pragma: no cover  (non-POSIX)
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _not_prepared(name: str, data_dir: str, detail: str = "") -> DatasetNotPreparedError:
    hint = _PREPARE_HINTS.get(name.split("/")[0].split(":")[0],
                              "run `tfds build {name} --data_dir={data_dir}`")
    hint = hint.format(name=name, data_dir=data_dir)
    return DatasetNotPreparedError(
        f"Dataset {name!r} is not prepared in data_dir {data_dir!r}{detail}. magvit_jax never "
        f"downloads data: {hint}; see docs/data.md. (The data_dir is the config's `data.data_dir`, "
        f"else ${_DATA_DIR_ENV}, else ~/.cache/magvit_jax/tensorflow_datasets.)")


def _embedded_builder_cls(name: str) -> type[tfds.core.DatasetBuilder]:
    """The builder class of embedded dataset `name` (imports `magvit_jax.data.builders`)."""
    from magvit_jax.data import builders  # pylint: disable=g-import-not-at-top
    return {"magvit_digits": builders.MagvitDigits,
            "magvit_moving_digits": builders.MagvitMovingDigits}[name]


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
            with _file_lock(os.path.join(data_dir, f".{name}.lock")):
                # Re-check: another process may have built it while we waited.
                builder = builder_cls(data_dir=data_dir)
                if not builder.is_prepared():
                    builder.download_and_prepare(
                        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
                    builder = builder_cls(data_dir=data_dir)
        return builder
    try:
        builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise _not_prepared(name, data_dir, f" (TFDS does not know it either: {e})") from e
    if not builder.is_prepared():
        raise _not_prepared(name, data_dir, f" (looked for {builder.data_dir})")
    return builder


# ----------------------------------------------------------------------------- preprocessing


def _resize_uint8(image: tf.Tensor, size: int, antialias: bool) -> tf.Tensor:
    """Bilinear resize of an image [h, w, 3] to uint8 [size, size, 3] (rounded, clipped)."""
    image = tf.image.resize(tf.cast(image, tf.float32), (size, size), method="bilinear",
                            antialias=antialias)
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


def _random_square_crop_flip(image: tf.Tensor, seed: tf.Tensor,
                             min_scale: float = 0.8) -> tf.Tensor:
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


def _make_preprocess(name: str, builder: tfds.core.DatasetBuilder, image_size: int, train: bool):
    """Returns fn(example with encoded image, stateless seed [2]) -> {'image', 'label'}."""
    features = builder.info.features
    missing = [k for k in ("image", "label") if k not in features]
    if missing:
        raise ValueError(f"Dataset {name!r} has no {missing} feature(s); the image pipeline needs "
                         f"'image' and 'label' (it has {sorted(features.keys())}).")
    image_feature = features["image"]
    embedded = name in EMBEDDED_DATASETS

    def preprocess(example: dict[str, tf.Tensor], seed: tf.Tensor) -> dict[str, tf.Tensor]:
        image = image_feature.decode_example(example["image"])
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
        return {"image": image, "label": tf.cast(example["label"], tf.int32)}

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
        start = tf.random.stateless_uniform([], seed, minval=0,
                                            maxval=tf.shape(frames)[0] - num_frames + 1,
                                            dtype=tf.int32)
    return frames[start:start + num_frames]


def _make_video_preprocess(name: str, builder: tfds.core.DatasetBuilder, image_size: int,
                           num_frames: int, train: bool):
    """Returns fn(example with encoded video frames, stateless seed [2]) -> {'video', 'label'}.

    Temporal: train -> a seeded random window of `num_frames` consecutive frames; eval -> the
    first `num_frames`. Only the kept frames are decoded. Spatial: as for images (one crop/flip
    per video), and none for embedded datasets (resize only).
    """
    features = builder.info.features
    if "label" not in features:
        raise ValueError(f"Dataset {name!r} has no 'label' feature; the video pipeline needs "
                         f"'video' and 'label' (it has {sorted(features.keys())}).")
    frame_feature = features["video"].feature  # The per-frame tfds.features.Image.
    embedded = name in EMBEDDED_DATASETS

    def preprocess(example: dict[str, tf.Tensor], seed: tf.Tensor) -> dict[str, tf.Tensor]:
        time_seed, space_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
        encoded = _temporal_crop(example["video"], num_frames, time_seed if train else None)
        video = tf.map_fn(frame_feature.decode_example, encoded,
                          fn_output_signature=tf.TensorSpec(frame_feature.shape, tf.uint8))
        if video.shape.rank == 4 and video.shape[-1] == 1:
            video = tf.image.grayscale_to_rgb(video)
        if embedded:
            if video.shape[1] != image_size or video.shape[2] != image_size:
                video = _resize_uint8(video, image_size, antialias=False)
        elif train:
            video = _resize_uint8(_random_square_crop_flip(video, space_seed), image_size,
                                  antialias=True)
        else:
            video = _resize_uint8(_center_square_crop(video), image_size, antialias=True)
        video = tf.ensure_shape(tf.cast(video, tf.uint8), (num_frames, image_size, image_size, 3))
        return {"video": video, "label": tf.cast(example["label"], tf.int32)}

    return preprocess


# ----------------------------------------------------------------------------- datasets


def _split_names(split: str) -> list[str]:
    """Base split names of a TFDS split expression, e.g. 'train[:10%]+test' -> ['train', 'test']."""
    return [re.sub(r"\[.*\]$", "", part.strip()) for part in split.split("+")]


def _cfg_get(config: Any, key: str, default: Any = None) -> Any:
    if hasattr(config, "get"):
        return config.get(key, default)
    return getattr(config, key, default)


def create_dataset(data_config: Any, *, split: str, batch_size: int, train: bool, seed: int = 0,
                   start_step: int = 0, process_index: int | None = None,
                   process_count: int | None = None,
                   drop_remainder: bool = True) -> Iterator[dict[str, np.ndarray]]:
    """Per-process iterator of numpy batches from a TFDS dataset.

    Args:
      data_config: ConfigDict with `name` (str), `data_dir` (str or None -> `default_data_dir()`),
        `image_size` (int > 0), `shuffle_buffer` (int, train only), `num_frames` (int > 0 or
        None/absent; video datasets only: frames per clip, None -> the dataset's fixed length).
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
        `tfds.even_splits` (sizes differ by at most 1).
      drop_remainder: (eval) drop a final partial batch.

    Yields:
      {'image': uint8 [batch_size, image_size, image_size, 3], 'label': int32 [batch_size]}, or
      for a dataset with a `video` feature
      {'video': uint8 [batch_size, num_frames, image_size, image_size, 3],
       'label': int32 [batch_size]}
      (the last eval batch may be smaller if `drop_remainder=False`).
    """
    name = str(_cfg_get(data_config, "name", ""))
    image_size = _cfg_get(data_config, "image_size")
    if not isinstance(image_size, (int, np.integer)) or image_size <= 0:
        raise ValueError(f"data.image_size must be a positive int, got {image_size!r}.")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}.")
    num_frames = _cfg_get(data_config, "num_frames", None)
    if num_frames is not None and (not isinstance(num_frames, (int, np.integer)) or
                                   isinstance(num_frames, bool) or num_frames <= 0):
        raise ValueError(f"data.num_frames must be a positive int or None, got {num_frames!r}.")
    if process_index is None or process_count is None:
        import jax  # pylint: disable=g-import-not-at-top
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index={process_index} not in [0, process_count={process_count}).")

    builder = get_builder(name, _cfg_get(data_config, "data_dir"))
    available = sorted(builder.info.splits.keys())
    unknown = [s for s in _split_names(split) if s not in available]
    if unknown:
        raise ValueError(f"Unknown split {split!r} for dataset {name!r}: available splits are "
                         f"{available}.")

    # Training reads the whole split on every process (one global shuffled stream, each process
    # keeping its rows of every global batch), so the global batch order does not depend on the
    # process count. Evaluation reads a per-process shard.
    shard = (tfds.even_splits(split, n=process_count)[process_index]
             if process_count > 1 and not train else split)
    options = tf.data.Options()
    options.deterministic = True
    read_config = tfds.ReadConfig(options=options, shuffle_seed=seed, interleave_cycle_length=1,
                                  try_autocache=False)
    features = builder.info.features
    is_video = "video" in features
    if is_video:
        if num_frames is None:
            num_frames = features["video"].shape[0]
            if num_frames is None:
                raise ValueError(f"Dataset {name!r} has variable-length videos: set "
                                 f"data.num_frames.")
        preprocess = _make_video_preprocess(name, builder, int(image_size), int(num_frames),
                                            train)
    elif num_frames is not None:
        raise ValueError(f"data.num_frames={num_frames} is set but dataset {name!r} has no 'video' "
                         f"feature (it has {sorted(features.keys())}); unset it for images.")
    else:
        preprocess = _make_preprocess(name, builder, int(image_size), train)
    # Read encoded records; decoding happens in `preprocess`, after any resume skip.
    key = "video" if is_video else "image"
    ds = builder.as_dataset(split=shard, shuffle_files=False, read_config=read_config,
                            decoders={key: tfds.decode.SkipDecoding()})
    if train:
        # Stateless seed per element: seed x position in the global stream.
        base = tf.constant(int(seed) * 1_000_003, tf.int64)
        global_batch = int(batch_size) * int(process_count)
        shuffle_buffer = int(_cfg_get(data_config, "shuffle_buffer", 1000) or 1)
        ds = ds.repeat()
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        ds = ds.enumerate()
        if start_step:
            ds = ds.skip(int(start_step) * global_batch)  # Raw records: cheap.
        if process_count > 1:
            # Rows [p * batch_size, (p + 1) * batch_size) of every global batch, chosen before
            # decoding so that each process decodes only its own examples.
            ds = ds.filter(lambda i, ex: (i % global_batch) // batch_size == process_index)
        drop_remainder = True
    else:
        base = tf.constant(int(seed) * 1_000_003 + int(process_index), tf.int64)
        ds = ds.enumerate()

    ds = ds.map(lambda i, ex: preprocess(ex, tf.stack([base, i])),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    ds = ds.with_options(options)
    return iter(tfds.as_numpy(ds))

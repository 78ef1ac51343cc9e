"""TensorFlow image / video ops of the input pipeline: resize, square crops, flips, time crops.

Pure tf functions on uint8 images [h, w, c] and videos [t, h, w, c], used by `tfds_source` and
`video_folder`: `_resize_uint8` (bilinear, rounded and clipped to uint8), `_center_square_crop`,
`_random_square_crop_flip` (the train augmentation, a stateless function of its seed),
`_temporal_crop` (a window of consecutive frames, before decoding) and `_spatial_video` (the
per-video crop/flip + resize). Every random choice takes an explicit stateless seed.

Importing this module (which every `magvit_jax.data` pipeline module does) hides the GPUs from
TensorFlow: JAX owns the accelerators.
"""

from __future__ import annotations

import tensorflow as tf

# Keep TensorFlow off accelerators: JAX owns them. (tensorflow-cpu has none; harmless there.)
try:
  tf.config.set_visible_devices([], 'GPU')
except (RuntimeError, ValueError):  # Already initialised, or no such device type.
  pass


def _resize_uint8(image: tf.Tensor, size: int, antialias: bool) -> tf.Tensor:
  """Bilinear resize of an image [h, w, 3] to uint8 [size, size, 3] (rounded, clipped)."""
  image = tf.image.resize(
    tf.cast(image, tf.float32), (size, size), method='bilinear', antialias=antialias
  )
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


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

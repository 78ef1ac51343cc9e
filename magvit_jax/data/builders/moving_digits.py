"""TFDS builder `magvit_moving_digits`: the embedded, offline video dataset.

Source: the same 1797 real handwritten digits as `magvit_digits` (`sklearn.datasets.load_digits`),
so building never touches the network. Each source digit becomes one video of the digit moving
and bouncing inside a black canvas:

  video: uint8 [17, 32, 32, 3]  (17 = 1 + 4 * 4 frames, the MAGVIT-v2 causal layout)
  label: int64 scalar in [0, 10)  (ClassLabel, the digit)

Rendering (a pure function of the source index `i`, see `make_video`):
  - the 8x8 digit is upsampled to 16x16 RGB with `digits.upsample` (0..16 -> 0..255, bilinear);
  - its top-left corner starts at a pseudo-random integer position in [0, 16]^2 and moves with
    an integer velocity of 1 or 2 px/frame (random sign) along each axis;
  - it bounces off the canvas borders (the position is reflected), so the whole digit stays on
    the canvas in every frame and every frame has the same pixel mass as the upsampled digit;
  - the random state is `np.random.default_rng([SEED_SALT, i])`; trajectories whose last frame
    would show the digit where it started are redrawn (deterministically), so every video moves.

Splits: the rule of `magvit_digits` (`digits.split_of(i)`): test iff i % 6 == 0 (300 videos),
else train (1497 videos); the TFDS key is the source index.

Encoding: `tfds.features.Video` stores each frame as a PNG. Encoding numpy frames (as here) and
decoding need no ffmpeg (ffmpeg is only used for encoding video *files*), so this works offline.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from magvit_jax.data.builders import digits

NUM_FRAMES = 17  # 1 + 4 * 4
CANVAS_SIZE = 32
DIGIT_SIZE = 16
NUM_CLASSES = digits.NUM_CLASSES
SPEEDS = (1, 2)  # px/frame, per axis; the sign is random too
SEED_SALT = 20240517  # Mixed with the source index into the per-video random state.


def trajectory(
  rng: np.random.Generator,
  num_frames: int = NUM_FRAMES,
  canvas_size: int = CANVAS_SIZE,
  digit_size: int = DIGIT_SIZE,
) -> np.ndarray:
  """Integer top-left positions int [num_frames, 2] (row, col) of a digit bouncing in a canvas.

  Start uniform in [0, canvas_size - digit_size]^2; velocity per axis +-1 or +-2 px/frame;
  positions leaving [0, hi] are reflected back (and the velocity flips). Redraws until the last
  position differs from the first (a 2 px/frame bounce can return to its start).
  """
  hi = canvas_size - digit_size
  if hi <= 0:
    raise ValueError(f'digit_size={digit_size} must be smaller than canvas_size={canvas_size}.')
  while True:
    pos = rng.integers(0, hi + 1, size=2)
    vel = rng.choice(SPEEDS, size=2) * rng.choice((-1, 1), size=2)
    out = np.empty((num_frames, 2), np.int64)
    for t in range(num_frames):
      out[t] = pos
      pos = pos + vel
      low, high = pos < 0, pos > hi
      pos = np.where(low, -pos, np.where(high, 2 * hi - pos, pos))
      vel = np.where(low | high, -vel, vel)
    if num_frames < 2 or np.any(out[-1] != out[0]):
      return out


def make_video(
  index: int, digit: np.ndarray, num_frames: int = NUM_FRAMES, canvas_size: int = CANVAS_SIZE
) -> np.ndarray:
  """Renders source digit `index` (already upsampled, uint8 [s, s, 3]) as uint8 [T, C, C, 3]."""
  size = digit.shape[0]
  rng = np.random.default_rng([SEED_SALT, int(index)])
  video = np.zeros((num_frames, canvas_size, canvas_size, 3), np.uint8)
  for t, (r, c) in enumerate(trajectory(rng, num_frames, canvas_size, size)):
    video[t, r : r + size, c : c + size] = digit
  return video


class MagvitMovingDigits(tfds.core.GeneratorBasedBuilder):
  """Handwritten digits from scikit-learn moving and bouncing in 17-frame 32x32 videos."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {
    '1.0.0': 'Initial release: one bouncing sklearn digit per video, 17x32x32 RGB, '
    'train/test by index % 6.',
  }

  code_path = digits.code_path_property(__file__)  # TFDS 4.9.10 needs importlib_resources.

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        'Videos of the 1797 handwritten 8x8 digits from scikit-learn, each upsampled to '
        '16x16 and moving (1-2 px/frame per axis, bouncing off the borders) on a black '
        '32x32 RGB canvas for 17 frames. Split: index % 6 == 0 -> test, else train.'
      ),
      features=tfds.features.FeaturesDict(
        {
          'video': tfds.features.Video(
            shape=(NUM_FRAMES, CANVAS_SIZE, CANVAS_SIZE, 3), dtype=np.uint8
          ),
          'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }
      ),
      supervised_keys=('video', 'label'),
      homepage=digits.HOMEPAGE,
      license=digits.LICENSE,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Everything ships with scikit-learn: no download.
    images, labels = digits.load_source()
    upsampled = digits.upsample(images, DIGIT_SIZE)
    return {
      'train': self._generate_examples(upsampled, labels, 'train'),
      'test': self._generate_examples(upsampled, labels, 'test'),
    }

  def _generate_examples(
    self, images: np.ndarray, labels: np.ndarray, split: str
  ) -> Iterator[tuple[int, dict]]:
    for i in range(len(labels)):
      if digits.split_of(i) == split:
        yield i, {'video': make_video(i, images[i]), 'label': int(labels[i])}

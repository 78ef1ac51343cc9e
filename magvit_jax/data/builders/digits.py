"""TFDS builder `magvit_digits`: the embedded, offline image dataset.

Source: `sklearn.datasets.load_digits()` -- 1797 real handwritten digits (UCI optical
recognition of handwritten digits, test part), 8x8 pixels with values 0..16. The data ships
inside the scikit-learn wheel, so building this dataset never touches the network.

Each example:
  image: uint8 [32, 32, 3]  (0..16 scaled to 0..255, bilinearly upsampled 8x8 -> 32x32,
                             gray replicated to RGB)
  label: int64 scalar in [0, 10)  (ClassLabel, the digit)

Splits (deterministic, keyed by the source index i):
  test:  i % 6 == 0   (300 examples)
  train: otherwise    (1497 examples)
"""

from __future__ import annotations

from typing import Iterator

from etils import epath
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

IMAGE_SIZE = 32
NUM_CLASSES = 10
TEST_EVERY = 6  # example i is in `test` iff i % TEST_EVERY == 0
# `homepage` / `license` of the source digits, in the DatasetInfo of every embedded builder.
HOMEPAGE = 'https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html'
LICENSE = 'CC BY 4.0 (UCI ML repository)'


def load_source() -> tuple[np.ndarray, np.ndarray]:
  """Returns the sklearn digits: images float64 [1797, 8, 8] in 0..16, labels int [1797]."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  digits = load_digits()
  return np.asarray(digits.images), np.asarray(digits.target)


def split_of(index: int) -> str:
  """Split name ('train' or 'test') of source example `index`."""
  return 'test' if index % TEST_EVERY == 0 else 'train'


def upsample(images: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
  """Maps digits float [N, 8, 8] in 0..16 to uint8 [N, size, size, 3] in 0..255.

  Scales to 0..255, resizes bilinearly (half-pixel centers, no antialiasing), rounds, clips,
  and replicates the gray channel to RGB.
  """
  x = np.asarray(images, np.float32) * (255.0 / 16.0)
  x = tf.image.resize(x[..., None], (size, size), method='bilinear', antialias=False)
  x = np.clip(np.round(x.numpy()), 0, 255).astype(np.uint8)
  return np.repeat(x, 3, axis=-1)


def code_path_property(path: str):
  """A `code_path` classproperty for a builder class defined in file `path` (its `__file__`).

  TFDS 4.9.10 derives `code_path` via `importlib_resources`, which is not a dependency of this
  project (ModuleNotFoundError at download_and_prepare). The path of the builder's file is all
  it needs, so the embedded builders set `code_path = code_path_property(__file__)`.
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(path)

  return code_path


class MagvitDigits(tfds.core.GeneratorBasedBuilder):
  """Handwritten digits from scikit-learn, upsampled to 32x32 RGB (built offline)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {
    '1.0.0': 'Initial release: sklearn digits, 32x32 RGB, train/test by index % 6.',
  }

  code_path = code_path_property(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        '1797 handwritten 8x8 digits from scikit-learn (UCI optical recognition of '
        'handwritten digits), scaled to 0..255 and bilinearly upsampled to 32x32 RGB. '
        'Split: index % 6 == 0 -> test, else train.'
      ),
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
          'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }
      ),
      supervised_keys=('image', 'label'),
      homepage=HOMEPAGE,
      license=LICENSE,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Everything ships with scikit-learn: no download.
    images, labels = load_source()
    upsampled = upsample(images)
    return {
      'train': self._generate_examples(upsampled, labels, 'train'),
      'test': self._generate_examples(upsampled, labels, 'test'),
    }

  def _generate_examples(
    self, images: np.ndarray, labels: np.ndarray, split: str
  ) -> Iterator[tuple[int, dict]]:
    for i in range(len(labels)):
      if split_of(i) == split:
        yield i, {'image': images[i], 'label': int(labels[i])}

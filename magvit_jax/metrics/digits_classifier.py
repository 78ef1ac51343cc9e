"""An independent digit classifier for the embedded digits, to score samples.

A multinomial logistic regression (scikit-learn) trained on the original 8x8
digits of the *train* split (the split rule of the TFDS builder). Generated
32x32 RGB samples are turned back into 8x8 grey images (mean over channels,
4x4 average pooling, rescaled to 0..16) and classified; the agreement with the
class each sample was asked for measures class-conditional generation. It
never sees our tokenizer or transformer, so it cannot share their mistakes.
"""

from __future__ import annotations

import numpy as np


def _to_8x8(images: np.ndarray) -> np.ndarray:
  """uint8 [n, s, s, 3] (s a multiple of 8) -> float [n, 64] in 0..16."""
  images = np.asarray(images, np.float32)
  n, s = images.shape[0], images.shape[1]
  if images.ndim != 4 or s % 8 or images.shape[2] != s:
    raise ValueError(
      f'images must be square [n, s, s, 3] with s a multiple of 8, got {images.shape}'
    )
  grey = images.mean(axis=-1)
  k = s // 8
  small = grey.reshape(n, 8, k, 8, k).mean(axis=(2, 4))
  return (small / 255.0 * 16.0).reshape(n, 64)


class DigitsClassifier:
  """fit() on the sklearn digits train split; predict(images uint8 [n, s, s, 3]) -> [n] int."""

  def __init__(self):
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top

    digits = load_digits()
    index = np.arange(len(digits.target))
    train, test = index % 6 != 0, index % 6 == 0
    x = digits.images.reshape(-1, 64)
    self._model = LogisticRegression(max_iter=2000, C=0.5).fit(x[train], digits.target[train])
    self.test_accuracy = float(self._model.score(x[test], digits.target[test]))

  def predict(self, images: np.ndarray) -> np.ndarray:
    return self._model.predict(_to_8x8(images))

  def agreement(self, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images classified as the label they were generated for."""
    return float(np.mean(self.predict(images) == np.asarray(labels)))

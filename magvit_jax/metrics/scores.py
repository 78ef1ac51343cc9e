"""Inception Score and k-NN precision/recall of generated samples.

Both take features/predictions already computed by a network (Inception for
images, I3D for videos) and are plain NumPy in float64. Inputs may be NumPy or
JAX arrays.
"""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

ArrayLike = Any


def inception_score(probs: ArrayLike, num_splits: int = 10) -> Tuple[float, float]:
  """Inception Score exp(E_x KL(p(y|x) || p(y))), mean and std over splits.

  As in Salimans et al. 2016: the n predictions are cut into `num_splits`
  contiguous, near-equal parts (`np.array_split`); in each part p(y) is the
  part's mean prediction and the score is exp(mean_x KL(p(y|x) || p(y))),
  with 0 log 0 = 0. The result is the mean and the (population, ddof=0)
  standard deviation of the per-part scores. It lies in [1, k].

  Args:
    probs: float [n, k] class probabilities (softmax outputs), rows summing
      to 1 (within 1e-3), entries >= 0.
    num_splits: number of parts, 1 <= num_splits <= n.

  Returns:
    (mean, std) as Python floats.

  Raises:
    ValueError: if `probs` is not [n, k] rows of probabilities, or
      `num_splits` is out of range.
  """
  probs = np.asarray(probs, dtype=np.float64)
  if probs.ndim != 2 or probs.shape[0] < 1 or probs.shape[1] < 1:
    raise ValueError(f'probs must be [n, k] class probabilities, got shape {probs.shape}')
  n = probs.shape[0]
  if not 1 <= num_splits <= n:
    raise ValueError(f'num_splits must be in [1, n={n}], got {num_splits}')
  if not np.all(np.isfinite(probs)) or np.any(probs < 0):
    raise ValueError('probs must be finite and >= 0 (softmax outputs, not logits)')
  row_sums = probs.sum(axis=1)
  if not np.allclose(row_sums, 1.0, rtol=0.0, atol=1e-3):
    raise ValueError(
      'probs rows must sum to 1 (softmax outputs, not logits); '
      f'got sums in [{row_sums.min():.4g}, {row_sums.max():.4g}]'
    )

  scores = []
  for part in np.array_split(probs, num_splits, axis=0):
    marginal = part.mean(axis=0, keepdims=True)
    # p log(p / p_y), 0 where p == 0 (then also where p_y == 0 since p_y >= p / n).
    safe_p = np.where(part > 0, part, 1.0)
    safe_m = np.where(part > 0, marginal, 1.0)
    kl = np.sum(np.where(part > 0, part * (np.log(safe_p) - np.log(safe_m)), 0.0), axis=1)
    scores.append(np.exp(np.mean(kl)))
  scores = np.asarray(scores)
  return float(np.mean(scores)), float(np.std(scores))


def _squared_distances(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
  """||a_i - b_j||^2 for float64 a [p, d], b [q, d] (b_sq = ||b_j||^2 [q]) -> [p, q]."""
  a_sq = np.sum(a * a, axis=1)
  d2 = a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
  return np.maximum(d2, 0.0)


def _knn_radii_sq(x: np.ndarray, k: int, chunk_size: int) -> np.ndarray:
  """Squared distance of each row of x [n, d] to its k-th nearest other row -> [n]."""
  x_sq = np.sum(x * x, axis=1)
  radii = np.empty((x.shape[0],), np.float64)
  for start in range(0, x.shape[0], chunk_size):
    d2 = _squared_distances(x[start : start + chunk_size], x, x_sq)
    # Index 0 of the sorted row is the point itself (distance 0), so the k-th
    # neighbour excluding itself is at index k.
    radii[start : start + chunk_size] = np.partition(d2, k, axis=1)[:, k]
  return radii


def _coverage(
  queries: np.ndarray, refs: np.ndarray, ref_radii_sq: np.ndarray, chunk_size: int
) -> float:
  """Fraction of queries inside the union of balls B(refs_j, radius_j)."""
  refs_sq = np.sum(refs * refs, axis=1)
  inside = 0
  for start in range(0, queries.shape[0], chunk_size):
    d2 = _squared_distances(queries[start : start + chunk_size], refs, refs_sq)
    inside += int(np.sum(np.any(d2 <= ref_radii_sq[None, :], axis=1)))
  return inside / queries.shape[0]


def precision_recall(
  real: ArrayLike, fake: ArrayLike, k: int = 3, chunk_size: int = 1024
) -> Tuple[float, float]:
  """Improved precision and recall (Kynkaanniemi et al. 2019), k-NN manifolds.

  The real manifold is the union of balls around each real feature with
  radius its distance to its k-th nearest other real feature; likewise for
  fake. Precision is the fraction of fake samples inside the real manifold
  (sample quality), recall the fraction of real samples inside the fake
  manifold (coverage). Euclidean distances, in float64 NumPy, computed in
  row chunks of `chunk_size` (memory O(chunk_size * max(n, m))).

  Args:
    real: float [n, d] features of real samples, n > k.
    fake: float [m, d] features of generated samples, m > k.
    k: neighbourhood size (the paper uses 3).
    chunk_size: rows of the distance matrix held at a time.

  Returns:
    (precision, recall) as Python floats in [0, 1].

  Raises:
    ValueError: on bad shapes, non-finite values, or k out of range.
  """
  real = np.asarray(real, dtype=np.float64)
  fake = np.asarray(fake, dtype=np.float64)
  if real.ndim != 2:
    raise ValueError(f'real must be [n, d], got shape {real.shape}')
  if fake.ndim != 2 or fake.shape[1] != real.shape[1]:
    raise ValueError(
      f'fake must be [m, d] with d = {real.shape[1]} (as real), got shape {fake.shape}'
    )
  if k < 1:
    raise ValueError(f'k must be >= 1, got {k}')
  for name, x in (('real', real), ('fake', fake)):
    if x.shape[0] <= k:
      raise ValueError(f'{name} needs more than k={k} rows, got {x.shape[0]}')
    if not np.all(np.isfinite(x)):
      raise ValueError(f'{name} holds NaN or inf values')
  if chunk_size < 1:
    raise ValueError(f'chunk_size must be >= 1, got {chunk_size}')

  real_radii = _knn_radii_sq(real, k, chunk_size)
  fake_radii = _knn_radii_sq(fake, k, chunk_size)
  precision = _coverage(fake, real, real_radii, chunk_size)
  recall = _coverage(real, fake, fake_radii, chunk_size)
  return precision, recall

"""Frechet distance between Gaussians fitted to features (the math of FID and FVD).

FID (Inception pool features of images) and FVD (I3D logits/features of
videos) differ only in the network that produces the features; both fit a
Gaussian N(mu, sigma) to each feature set and report

  ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)),

the squared 2-Wasserstein distance between the two Gaussians.

Everything here is NumPy in float64 (JAX would need the global x64 flag to
match that precision). Inputs may be NumPy or JAX arrays of any float dtype.

The trace term is computed without a (possibly complex) general matrix square
root: with s = sigma1^(1/2) (symmetric PSD, from `eigh`),
sigma1 sigma2 = s (s sigma2 s) s^(-1) is similar to the symmetric PSD matrix
s sigma2 s, so both share eigenvalues and

  tr((sigma1 sigma2)^(1/2)) = sum_i sqrt(lambda_i(s sigma2 s)).

Tiny negative eigenvalues from rounding are clipped to 0, which also makes
rank-deficient (singular) covariances, e.g. from n < d samples, well defined.
"""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

ArrayLike = Any


def feature_statistics(
  features: ArrayLike, chunk_size: int = 4096
) -> Tuple[np.ndarray, np.ndarray]:
  """Mean and covariance of a feature set, accumulated in float64.

  Two passes over `features` in row chunks of `chunk_size` (mean, then the
  centred scatter matrix), so only one chunk is ever converted to float64 at a
  time and the centred accumulation avoids the cancellation of E[xx^T] - mu mu^T.

  Args:
    features: float [n, d] (NumPy or JAX array, any float dtype), n >= 2.
    chunk_size: rows converted and accumulated at a time.

  Returns:
    (mu, sigma): float64 [d] mean and float64 [d, d] unbiased covariance
    (denominator n - 1, as `np.cov`).

  Raises:
    ValueError: if `features` is not [n, d] with n >= 2, or holds non-finite
      values, or `chunk_size` < 1.
  """
  if not hasattr(features, 'shape'):
    features = np.asarray(features)
  if len(features.shape) != 2:
    raise ValueError(f'features must be [n, d], got shape {tuple(features.shape)}')
  n, d = features.shape
  if n < 2:
    raise ValueError(f'features must be [n, d] with n >= 2 to estimate a covariance, got n={n}')
  if chunk_size < 1:
    raise ValueError(f'chunk_size must be >= 1, got {chunk_size}')

  def chunks():
    for start in range(0, n, chunk_size):
      chunk = np.asarray(features[start : start + chunk_size], dtype=np.float64)
      if not np.all(np.isfinite(chunk)):
        raise ValueError('features hold NaN or inf values')
      yield chunk

  total = np.zeros((d,), np.float64)
  for chunk in chunks():
    total += chunk.sum(axis=0)
  mu = total / n

  scatter = np.zeros((d, d), np.float64)
  for chunk in chunks():
    centred = chunk - mu
    scatter += centred.T @ centred
  sigma = scatter / (n - 1)
  sigma = 0.5 * (sigma + sigma.T)  # exactly symmetric
  return mu, sigma


def _check_stats(
  mu: ArrayLike, sigma: ArrayLike, mu_name: str, sigma_name: str, d: int | None
) -> Tuple[np.ndarray, np.ndarray]:
  """Validates one (mu [d], sigma [d, d]) pair; returns float64 copies."""
  mu = np.asarray(mu, dtype=np.float64)
  sigma = np.asarray(sigma, dtype=np.float64)
  if d is None:
    if mu.ndim != 1:
      raise ValueError(f'{mu_name} must be a vector [d], got shape {mu.shape}')
    d = mu.shape[0]
  elif mu.shape != (d,):
    raise ValueError(f'{mu_name} must have shape [d] = ({d},) to match mu1, got {mu.shape}')
  if sigma.shape != (d, d):
    raise ValueError(f'{sigma_name} must have shape [d, d] = ({d}, {d}), got {sigma.shape}')
  if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
    raise ValueError(f'{mu_name} / {sigma_name} hold NaN or inf values')
  return mu, sigma


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD float64 [d, d] matrix."""
  w, v = np.linalg.eigh(0.5 * (sigma + sigma.T))
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """tr((sigma1 sigma2)^(1/2)) for symmetric PSD float64 [d, d] matrices."""
  s1 = _psd_sqrt(sigma1)
  m = s1 @ sigma2 @ s1
  eig = np.linalg.eigvalsh(0.5 * (m + m.T))
  return float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
  """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

  Args:
    mu1: float [d] mean of the first set (e.g. real features).
    sigma1: float [d, d] symmetric PSD covariance of the first set.
    mu2: float [d] mean of the second set (e.g. generated features).
    sigma2: float [d, d] symmetric PSD covariance of the second set.

  Returns:
    The distance as a Python float, >= 0 (rounding can give values like
    -1e-13 for identical statistics; those are clipped to 0).

  Raises:
    ValueError: if a shape is not as above (the message names the argument
      and the expected shape) or a value is NaN/inf.
  """
  mu1, sigma1 = _check_stats(mu1, sigma1, 'mu1', 'sigma1', None)
  mu2, sigma2 = _check_stats(mu2, sigma2, 'mu2', 'sigma2', mu1.shape[0])
  diff = mu1 - mu2
  fd = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
  return max(float(fd), 0.0)


def frechet_distance_from_features(
  features1: ArrayLike, features2: ArrayLike, chunk_size: int = 4096
) -> float:
  """Frechet distance between two feature sets [n1, d] and [n2, d]."""
  mu1, sigma1 = feature_statistics(features1, chunk_size)
  mu2, sigma2 = feature_statistics(features2, chunk_size)
  return frechet_distance(mu1, sigma1, mu2, sigma2)

"""Per-example PSNR and SSIM of images and videos.

SSIM is plain NumPy in float64 (evaluation-time; no jit, no x64 flag needed). PSNR scores
NumPy inputs the same way and JAX arrays with jax.numpy (jittable, float32), so the train
step and evaluation share one definition. Pass `max_value` as the
dynamic range of the data (1.0 for [0, 1] floats, 255 for uint8, 2.0 for
[-1, 1] floats).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ArrayLike = Any

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _pair(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
  x = np.asarray(x, dtype=np.float64)
  y = np.asarray(y, dtype=np.float64)
  if x.shape != y.shape:
    raise ValueError(f'x and y must have the same shape, got {x.shape} and {y.shape}')
  return x, y


def psnr(
  x: ArrayLike, y: ArrayLike, max_value: float = 1.0, mask: ArrayLike | None = None
) -> ArrayLike:
  """Peak signal-to-noise ratio per example, 10 log10(max_value^2 / mse).

  The one PSNR of the project: NumPy inputs are scored in float64 (evaluation), JAX arrays
  (also inside jit, e.g. the tokenizer's train step) in float32 with jax.numpy.

  Args:
    x: [b, ...] images, videos or any array with a leading batch axis.
    y: same shape as x.
    max_value: dynamic range of the data.
    mask: optional, broadcastable to x: the mean squared error is taken over the masked
      elements only (e.g. the generated region of a video task); weights may be 0/1 or bool.

  Returns:
    [b] (float64 NumPy, or float32 JAX for JAX inputs); the mean squared error is taken over
    all trailing axes. Identical examples (mse == 0) give +inf (not capped; average with care,
    e.g. `np.mean(np.minimum(p, cap))`).

  Raises:
    ValueError: if shapes differ, x has no batch axis, or max_value <= 0.
  """
  if isinstance(x, jax.Array) or isinstance(y, jax.Array):
    xp = jnp
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    if x.shape != y.shape:
      raise ValueError(f'x and y must have the same shape, got {x.shape} and {y.shape}')
  else:
    xp = np
    x, y = _pair(x, y)
  if x.ndim < 1:
    raise ValueError(f'x must have a leading batch axis [b, ...], got shape {x.shape}')
  if max_value <= 0:
    raise ValueError(f'max_value must be > 0, got {max_value}')
  axes = tuple(range(1, x.ndim))
  if mask is None:
    mse = xp.mean(xp.square(x - y), axis=axes)
  else:
    w = xp.broadcast_to(xp.asarray(mask, x.dtype), x.shape)
    mse = xp.sum(xp.square(x - y) * w, axis=axes) / xp.maximum(xp.sum(w, axis=axes), 1.0)
  with np.errstate(divide='ignore'):
    return 10.0 * xp.log10(float(max_value) ** 2 / mse)


def model_space_psnr(x: ArrayLike, y: ArrayLike) -> ArrayLike:
  """PSNR of pixels in the models' space, [-1, 1] (clipped to it; peak = the full range).

  x, y: [b, ...] float; NumPy or JAX (jittable) as `psnr`. Equal to the PSNR of the same
  pixels mapped to [0, 1] or [0, 255].
  """
  if isinstance(x, jax.Array) or isinstance(y, jax.Array):
    return psnr(jnp.clip(x, -1, 1), jnp.clip(y, -1, 1), max_value=2.0)
  return psnr(np.clip(x, -1, 1), np.clip(y, -1, 1), max_value=2.0)


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
  """Normalised 1-D Gaussian, float64 [size]; the 2-D window is its outer product."""
  r = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  g = np.exp(-r * r / (2.0 * sigma * sigma))
  return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
  """Separable 'valid' filtering of x [n, h, w, c] over h and w -> [n, h-s+1, w-s+1, c]."""
  s = g.shape[0]
  h, w = x.shape[1], x.shape[2]
  rows = sum(g[i] * x[:, i : i + h - s + 1] for i in range(s))
  return sum(g[j] * rows[:, :, j : j + w - s + 1] for j in range(s))


def _ssim_frames(x: np.ndarray, y: np.ndarray, max_value: float) -> np.ndarray:
  """SSIM of float64 frames [n, h, w, c] -> [n]."""
  g = _gaussian_window()
  c1 = (SSIM_K1 * max_value) ** 2
  c2 = (SSIM_K2 * max_value) ** 2
  mu_x = _filter_valid(x, g)
  mu_y = _filter_valid(y, g)
  var_x = _filter_valid(x * x, g) - mu_x * mu_x
  var_y = _filter_valid(y * y, g) - mu_y * mu_y
  cov = _filter_valid(x * y, g) - mu_x * mu_y
  luminance = (2.0 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
  contrast_structure = (2.0 * cov + c2) / (var_x + var_y + c2)
  # Mean over the valid positions of each channel, then over channels
  # (equal counts, so one mean over all three axes).
  return np.mean(luminance * contrast_structure, axis=(1, 2, 3))


def ssim(x: ArrayLike, y: ArrayLike, max_value: float = 1.0) -> np.ndarray:
  """Structural similarity (Wang et al. 2004) per example.

  The standard single-scale SSIM (as `tf.image.ssim`): an 11x11 Gaussian
  window with sigma 1.5 (normalised, truncated), K1 = 0.01, K2 = 0.03,
  C1 = (K1 max_value)^2, C2 = (K2 max_value)^2, local statistics with 'valid'
  filtering (no padding) and population (biased) variances, computed per
  channel, averaged over positions and channels; for videos also over frames.

  Args:
    x: images [b, h, w, c] or videos [b, t, h, w, c], h, w >= 11.
    y: same shape as x.
    max_value: dynamic range of the data.

  Returns:
    float64 [b], 1.0 for identical inputs.

  Raises:
    ValueError: if shapes differ or are not as above, or max_value <= 0.
  """
  x, y = _pair(x, y)
  if x.ndim not in (4, 5):
    raise ValueError(
      f'x must be images [b, h, w, c] or videos [b, t, h, w, c], got shape {x.shape}'
    )
  h, w = x.shape[-3], x.shape[-2]
  if h < SSIM_WINDOW or w < SSIM_WINDOW:
    raise ValueError(f'SSIM needs height and width >= {SSIM_WINDOW}, got {h}x{w}')
  if max_value <= 0:
    raise ValueError(f'max_value must be > 0, got {max_value}')
  lead = x.shape[:-3]
  frames = _ssim_frames(
    x.reshape((-1,) + x.shape[-3:]), y.reshape((-1,) + y.shape[-3:]), float(max_value)
  )
  return frames.reshape(lead[0], -1).mean(axis=1)

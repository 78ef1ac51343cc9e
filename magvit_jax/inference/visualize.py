"""Image grids and animations for samples: PNG grids and GIFs (uint8 in, files out)."""

from __future__ import annotations

import math
import os

import numpy as np


def image_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2) -> np.ndarray:
  """images: uint8 [n, h, w, 3] -> one uint8 [H, W, 3] grid (row-major, white padding)."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(f'images must be uint8 [n, h, w, 3], got {images.dtype} {images.shape}')
  n, h, w, _ = images.shape
  ncols = ncols or math.ceil(math.sqrt(n))
  nrows = math.ceil(n / ncols)
  grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), 255, np.uint8)
  for i in range(n):
    r, c = divmod(i, ncols)
    y, x = pad + r * (h + pad), pad + c * (w + pad)
    grid[y : y + h, x : x + w] = images[i]
  return grid


def save_png(path: str, image: np.ndarray, scale: int = 1) -> None:
  """Writes uint8 [H, W, 3] as PNG, optionally upscaled by nearest neighbour."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  if scale > 1:
    image = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(image).save(path)


def save_gif(path: str, frames: np.ndarray, fps: int = 4, scale: int = 1) -> None:
  """Writes uint8 [t, H, W, 3] frames as a looping GIF."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  if scale > 1:
    frames = np.repeat(np.repeat(frames, scale, axis=1), scale, axis=2)
  pil = [Image.fromarray(f) for f in frames]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  pil[0].save(path, save_all=True, append_images=pil[1:], duration=int(1000 / fps), loop=0)

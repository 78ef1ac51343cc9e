"""Applying a jitted feature network to many examples in fixed-size batches.

The last batch is zero-padded to the batch size, so at most one shape is compiled,
and the padded rows are dropped from the outputs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np


def apply_in_batches(
  fn: Callable[[jnp.ndarray], Sequence[jnp.ndarray]], x: np.ndarray, batch_size: int
) -> tuple[np.ndarray, ...]:
  """fn(batch [b, ...]) -> tuple of [b, ...] outputs; returns each output for all of x, [N, ...].

  batch_size is capped at len(x), so small inputs do not pay for padding.
  """
  size = min(int(batch_size), max(len(x), 1))
  outputs: list[list[np.ndarray]] = []
  for start in range(0, len(x), size):
    chunk = x[start : start + size]
    n = len(chunk)
    if n < size:
      chunk = np.concatenate([chunk, np.zeros((size - n,) + chunk.shape[1:], chunk.dtype)])
    results = fn(jnp.asarray(chunk))
    if not outputs:
      outputs = [[] for _ in results]
    for acc, r in zip(outputs, results):
      acc.append(np.asarray(r)[:n])
  return tuple(np.concatenate(acc) for acc in outputs)

"""Helpers shared by the parity fixture makers in tools/parity (no official code here)."""

from __future__ import annotations

from typing import Any

import numpy as np


def jax_shim() -> None:
  """Old-jax names the official code uses: ``jnp.DeviceArray`` -> ``jax.Array`` when absent."""
  import jax
  import jax.numpy as jnp

  if not hasattr(jnp, 'DeviceArray'):
    jnp.DeviceArray = jax.Array


def flat(tree: dict, prefix: str = '') -> dict[str, Any]:
  """Nested dicts -> {'a/b/c': leaf}, in the dicts' order."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flat(v, f'{prefix}{k}/'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def unflat(flat_tree: dict[str, Any]) -> dict:
  """{'a/b/c': leaf} -> nested dicts."""
  out: dict = {}
  for key, v in flat_tree.items():
    node = out
    *parents, leaf = key.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return out


def random_bert_params(shapes: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Every parameter of a BERT-like official transformer random, '/'-joined paths -> float32.

  LayerNorm scales around 1, biases small (not zero), kernels fan-in scaled. Embedding tables
  0.3 N(0, 1): logits of a few units. With N(0, 1) tables the tied logits reach ~20, softmax
  saturates to exactly 1.0 in float32 and the official MaskGIT decoder's strict `<` cut-off then
  re-masks fewer tokens than its schedule says (ties at log(1) = 0).
  """

  def make(path, s):
    shape = tuple(s.shape)
    if path.endswith('/scale'):
      return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    if path.endswith('/bias'):
      return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    if path.endswith('/embedding'):
      return (0.3 * rng.standard_normal(shape)).astype(np.float32)
    return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)

  return {k: make(k, v) for k, v in flat(shapes).items()}

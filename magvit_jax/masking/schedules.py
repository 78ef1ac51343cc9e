"""Mask schedules gamma(r) of MaskGIT (Chang et al., 2022), section 3.3.

A schedule maps the decoding / training ratio ``r`` in [0, 1] to the fraction of tokens
that is masked: ``gamma(0) = 1`` (everything masked), ``gamma(1) = 0`` (nothing masked),
monotone non-increasing in between. The paper's three families are provided:

* linear: ``1 - r``.
* concave (mask more for longer): ``cosine`` ``cos(pi r / 2)``, ``square`` ``1 - r^2``,
  ``cubic`` ``1 - r^3`` and ``exp``.
* convex (unmask quickly at first): ``sqrt`` ``1 - sqrt(r)`` and ``log``.

MaskGIT's logarithmic and exponential schedules are written in terms of the token count
``N`` (``-log2(r) / log2(N)`` and ``1 - 2^(-log2(N) (1 - r))``), which makes them depend
on the sequence length and miss the endpoints (the first is unbounded at ``r = 0``). Here
they are normalised to hit the endpoints exactly while keeping their shape:

* ``log``: ``1 - log1p(c r) / log1p(c)`` with ``c = 255`` (the curve of ``log2(1 + 255 r)
  / 8``, i.e. MaskGIT's ``log`` family for an 8-bit dynamic range); convex, below linear.
* ``exp``: ``(1 - 2^(-8 (1 - r))) / (1 - 2^(-8))`` (MaskGIT's ``exp`` family with
  ``log2(N) = 8``, i.e. ``N = 256``, rescaled so that ``gamma(0) = 1``); concave, above
  linear.

All functions take a float array of any shape and return a float array of the same shape
and dtype (inputs are clipped to [0, 1] and outputs to [0, 1]).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

Schedule = Callable[[jax.Array], jax.Array]

SCHEDULES: tuple[str, ...] = ('linear', 'cosine', 'square', 'cubic', 'sqrt', 'log', 'exp')

# Constants of the normalised log / exp schedules (see the module docstring).
_LOG_C = 255.0
_EXP_BITS = 8.0


def _linear(r: jax.Array) -> jax.Array:
  return 1.0 - r


def _cosine(r: jax.Array) -> jax.Array:
  return jnp.cos(0.5 * math.pi * r)


def _square(r: jax.Array) -> jax.Array:
  return 1.0 - r * r


def _cubic(r: jax.Array) -> jax.Array:
  return 1.0 - r * r * r


def _sqrt(r: jax.Array) -> jax.Array:
  return 1.0 - jnp.sqrt(r)


def _log(r: jax.Array) -> jax.Array:
  return 1.0 - jnp.log1p(_LOG_C * r) / math.log1p(_LOG_C)


def _exp(r: jax.Array) -> jax.Array:
  # Numerator and denominator use the same float expression so gamma(0) == 1 exactly.
  num = 1.0 - jnp.exp2(-_EXP_BITS * (1.0 - r))
  den = 1.0 - jnp.exp2(-_EXP_BITS * jnp.ones_like(r))
  return num / den


_FNS: dict[str, Schedule] = {
  'linear': _linear,
  'cosine': _cosine,
  'square': _square,
  'cubic': _cubic,
  'sqrt': _sqrt,
  'log': _log,
  'exp': _exp,
}


def get_schedule(name: str) -> Schedule:
  """Returns the mask schedule ``gamma`` called ``name``.

  Args:
    name: one of ``SCHEDULES``.

  Returns:
    ``gamma(r)``: takes ``r`` (float array of any shape, values in [0, 1]) and returns the
    masked fraction, a float array of the same shape in [0, 1] (``gamma(0) = 1``,
    ``gamma(1) = 0``, non-increasing). Integer inputs are promoted to float32.

  Raises:
    ValueError: if ``name`` is not a known schedule.
  """
  if name not in _FNS:
    raise ValueError(f'Unknown mask schedule {name!r}; expected one of {", ".join(SCHEDULES)}.')
  fn = _FNS[name]

  def gamma(r: jax.Array) -> jax.Array:
    r = jnp.asarray(r)
    if not jnp.issubdtype(r.dtype, jnp.floating):
      r = r.astype(jnp.float32)
    r = jnp.clip(r, 0.0, 1.0)
    return jnp.clip(fn(r), 0.0, 1.0)

  gamma.__name__ = f'gamma_{name}'
  gamma.__doc__ = f'MaskGIT mask schedule {name!r}: r in [0, 1] -> masked fraction.'
  return gamma

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

These normalised schedules (``SCHEDULES``) take a float array of any shape and return a
float array of the same shape and dtype (inputs are clipped to [0, 1] and outputs to
[0, 1]).

The official formulas, which depend on the token count ``N``, are available too, under
names that say so (``OFFICIAL_SCHEDULES``; ``get_schedule(name, num_tokens=N)``):

* ``official_log``: ``-log2(r) / log2(N)``; convex. Unbounded at ``r = 0`` (clipped to 1);
  for ``N = 256`` it is ``1/8`` at ``r = 1/2``.
* ``official_exp``: ``1 - 2^(-log2(N) (1 - r))`` = ``1 - N^(r - 1)``; concave. Starts at
  ``1 - 1/N`` (not 1) at ``r = 0``.

As in MaskGIT's ``maskgit/libml/mask_schedule.py`` their values are clipped to
``[1e-6, 1]`` (so ``gamma(1) = 1e-6``, not 0), and ``N`` is what the official code calls
``total_unknown``: the decoder passes the number of tokens unknown at the start of decoding
(per example), the MVTM trainer the number of tokens per example. ``N`` may be an int or an
array that broadcasts with ``r``. ``N < 2`` is evaluated as ``N = 2`` (the formulas divide
by / scale with ``log2 N``, which is 0 or -inf there and gives NaN); with at most one token
the masked count is fixed by the callers' clipping anyway. The official ImageNet
checkpoints use ``cosine`` (``config.mask_scheduling_method = "cosine"`` in
``maskgit/configs/maskgit_class_cond_config.py``), which needs no ``N``.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

Schedule = Callable[[jax.Array], jax.Array]

# The normalised schedules: gamma(r) alone, exact endpoints.
SCHEDULES: tuple[str, ...] = ('linear', 'cosine', 'square', 'cubic', 'sqrt', 'log', 'exp')
# MaskGIT's own token-count-dependent formulas: gamma(r, N), clipped to [1e-6, 1].
OFFICIAL_SCHEDULES: tuple[str, ...] = ('official_log', 'official_exp')
ALL_SCHEDULES: tuple[str, ...] = SCHEDULES + OFFICIAL_SCHEDULES

# Output clip of the official schedules (MaskGIT clamps the mask ratio into [1e-6, 1]).
_OFFICIAL_MIN = 1e-6

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


def _official_log(r: jax.Array, log2_n: jax.Array) -> jax.Array:
  return -jnp.log2(r) / log2_n


def _official_exp(r: jax.Array, log2_n: jax.Array) -> jax.Array:
  return 1.0 - jnp.exp2(-log2_n * (1.0 - r))


_OFFICIAL_FNS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
  'official_log': _official_log,
  'official_exp': _official_exp,
}


def check_name(name: str) -> None:
  """Raises ValueError (listing ``ALL_SCHEDULES``) unless ``name`` is a known schedule."""
  if name not in ALL_SCHEDULES:
    raise ValueError(f'Unknown mask schedule {name!r}; expected one of {", ".join(ALL_SCHEDULES)}.')


def needs_num_tokens(name: str) -> bool:
  """Whether schedule ``name`` depends on the token count (``OFFICIAL_SCHEDULES``)."""
  check_name(name)
  return name in OFFICIAL_SCHEDULES


def _as_float(r) -> jax.Array:
  r = jnp.asarray(r)
  if not jnp.issubdtype(r.dtype, jnp.floating):
    r = r.astype(jnp.float32)
  return r


def get_schedule(name: str, num_tokens: int | jax.Array | None = None) -> Schedule:
  """Returns the mask schedule ``gamma`` called ``name``.

  Args:
    name: one of ``ALL_SCHEDULES``.
    num_tokens: ``N``, the token count of the official schedules (``OFFICIAL_SCHEDULES``,
      required there): an int or an int / float array broadcastable with ``r`` (e.g. [b]
      per-example counts). Ignored by the normalised schedules (``SCHEDULES``).

  Returns:
    ``gamma(r)``: takes ``r`` (float array of any shape, values in [0, 1]) and returns the
    masked fraction. Normalised schedules: a float array of the shape of ``r`` in [0, 1]
    (``gamma(0) = 1``, ``gamma(1) = 0``, non-increasing). Official schedules: a float array
    of the broadcast shape of ``r`` and ``num_tokens`` in [1e-6, 1], non-increasing in
    ``r``. Integer inputs are promoted to float32.

  Raises:
    ValueError: if ``name`` is not a known schedule, or ``num_tokens`` is missing for an
      official schedule.
  """
  check_name(name)
  if name in OFFICIAL_SCHEDULES:
    if num_tokens is None:
      raise ValueError(
        f'Mask schedule {name!r} depends on the token count: pass num_tokens '
        '(get_schedule(name, num_tokens=N)).'
      )
    official_fn = _OFFICIAL_FNS[name]

    def official_gamma(r: jax.Array) -> jax.Array:
      r = jnp.clip(_as_float(r), 0.0, 1.0)
      n = jnp.maximum(jnp.asarray(num_tokens).astype(r.dtype), 2.0)
      return jnp.clip(official_fn(r, jnp.log2(n)), _OFFICIAL_MIN, 1.0)

    official_gamma.__name__ = f'gamma_{name}'
    official_gamma.__doc__ = (
      f'MaskGIT official mask schedule {name!r} for the bound token count: r in [0, 1] '
      '-> masked fraction in [1e-6, 1].'
    )
    return official_gamma
  fn = _FNS[name]

  def gamma(r: jax.Array) -> jax.Array:
    r = jnp.clip(_as_float(r), 0.0, 1.0)
    return jnp.clip(fn(r), 0.0, 1.0)

  gamma.__name__ = f'gamma_{name}'
  gamma.__doc__ = f'MaskGIT mask schedule {name!r}: r in [0, 1] -> masked fraction.'
  return gamma

"""Every tokenizer from its config, and what a consumer needs to know about it.

The one place that maps `config.model.name` to a module and back:

  'vqgan'    MaskGIT's 2D VQGAN      images [b, H, W, 3]    -> tokens [b, h, w]
  'vqgan3d'  MAGVIT's 3D-VQ          videos [b, T, H, W, 3] -> tokens [b, t, h, w]
  'magvit2'  MAGVIT-v2 causal CNN    videos [b, 1 + F*k, H, W, 3] (images = 1-frame videos)
                                     -> tokens [b, 1 + k, h, w]

The token grid is computed by the module itself (`module.token_shape(input_shape)`), whether
its frames are coded causally is the module's `causal` class attribute, and the defaults of a
model config are the module's own field defaults (`model_defaults`), so nothing here restates
an architecture. Pure: no file I/O, no TensorFlow; loading trained weights is
`magvit_jax.pretrained`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from magvit_jax.models.magvit2_tokenizer import Magvit2Tokenizer
from magvit_jax.models.vqgan import VQGAN
from magvit_jax.models.vqgan3d import VQGAN3D

Tokenizer = VQGAN | VQGAN3D | Magvit2Tokenizer

MODULES: dict[str, type] = {'vqgan': VQGAN, 'vqgan3d': VQGAN3D, 'magvit2': Magvit2Tokenizer}
NAMES = tuple(MODULES)

# Config keys of `config.model` that configure training, not the module.
TRAINING_KEYS = {'vqgan3d': {'inflation': 'central', 'inflate_from': None}}


def _module_fields(cls: type) -> list[dataclasses.Field]:
  # `parent` and `name` are flax's own bookkeeping fields, not architecture.
  return [f for f in dataclasses.fields(cls) if f.init and f.name not in ('parent', 'name')]


def _module_class(name: str) -> type:
  if name not in MODULES:
    raise ValueError(f'config.model.name={name!r}: expected one of {NAMES}')
  return MODULES[name]


def model_defaults(name: str) -> dict[str, Any]:
  """The full `config.model` of tokenizer `name` with every field at its module default."""
  out: dict[str, Any] = {'name': name}
  for f in _module_fields(_module_class(name)):
    value = f.default
    out[f.name] = tuple(value) if isinstance(value, (list, tuple)) else value
  out.update(TRAINING_KEYS.get(name, {}))
  return out


def build_tokenizer(model_config: Mapping[str, Any]) -> Tokenizer:
  """The (unbound) tokenizer module described by `config.model`.

  Keys that the module does not have (other than the training keys) are refused, so a typo
  in a hand-written config does not silently fall back to a default.
  """
  name = str(model_config['name'])
  cls = _module_class(name)
  fields = {f.name for f in _module_fields(cls)}
  unknown = set(model_config) - fields - {'name'} - set(TRAINING_KEYS.get(name, {}))
  if unknown:
    raise ValueError(
      f'config.model has keys {sorted(unknown)} that a {name!r} tokenizer does not take; '
      f'valid keys: {sorted(fields)}'
    )
  kwargs = {}
  for key in fields & set(model_config):
    value = model_config[key]
    kwargs[key] = tuple(value) if isinstance(value, (list, tuple)) else value
  return cls(**kwargs)


def codebook_size(model_config: Mapping[str, Any]) -> int:
  """Number of distinct tokens of the tokenizer in `config.model`."""
  if model_config['name'] == 'magvit2':
    return 2 ** int(model_config['num_bits'])
  return int(model_config['codebook_size'])


def is_causal(model_config: Mapping[str, Any]) -> bool:
  """True when each latent frame depends on earlier frames only (the first coded alone)."""
  return bool(_module_class(str(model_config['name'])).causal)


def input_shape(config: Any) -> tuple[int, ...]:
  """Per-example tokenizer input of a run: (H, W, 3) for images, (T, H, W, 3) for videos."""
  size = int(config.data.image_size)
  frames = config.data.num_frames
  return (int(frames), size, size, 3) if frames else (size, size, 3)


def token_shape(config: Any) -> tuple[int, ...]:
  """Token grid of one example of a run: (h, w) for the VQGAN, (t, h, w) for video tokenizers."""
  return tuple(build_tokenizer(config.model).token_shape(input_shape(config)))


def num_tokens(config: Any) -> int:
  """Tokens per example (the transformer's sequence length without special tokens)."""
  return math.prod(token_shape(config))


def model_input(batch: Mapping[str, jax.Array]) -> jax.Array:
  """The pixels of a data batch: 'video' [b, T, H, W, 3] or 'image' [b, H, W, 3] uint8."""
  return batch['video'] if 'video' in batch else batch['image']


def to_float(images: jax.Array) -> jax.Array:
  """uint8 [..., 3] in [0, 255] -> float32 in [-1, 1]."""
  return images.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(images: jax.Array) -> jax.Array:
  """float in [-1, 1] -> uint8 [0, 255] (clipped)."""
  return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def init_params(module: Tokenizer, config: Any) -> Callable[[jax.Array], Any]:
  """rng -> freshly initialised (logically boxed) params of `module` for this run's inputs."""
  dummy = jnp.zeros((1,) + input_shape(config), jnp.float32)
  return lambda rng: module.init(rng, dummy)['params']


def _dims(shape: Sequence[Any]) -> str:
  return f'[{", ".join(map(str, shape))}]'


def check_pixels(
  pixels: Any,
  config: Any = None,
  module: Tokenizer | None = None,
  *,
  name: str = 'pixels',
  allow_float: bool = True,
) -> None:
  """Raises ValueError, naming the expected shape, unless `pixels` is a valid tokenizer input.

  Valid: uint8 (or, with `allow_float`, float in [-1, 1]) of shape [batch, *input_shape(config)]
  with batch >= 1; without `config`, any [b, H, W, 3] (image tokenizers) / [b, T, H, W, 3]
  (video tokenizers; `magvit2` takes both) of `module`, or either without `module`. A float
  array that is concrete (not traced inside jit) must be finite: the error counts its NaN / Inf
  values. Shapes and dtypes are static, so under jit they are checked when tracing.
  """
  if not hasattr(pixels, 'dtype'):  # A list: as numpy would read it.
    pixels = np.asarray(pixels)
  shape, dtype = tuple(pixels.shape), np.dtype(pixels.dtype)
  kinds = 'uint8 (or float in [-1, 1])' if allow_float else 'uint8'
  if config is not None:
    expected = input_shape(config)
    source = f'data.image_size={config.data.image_size}'
    if len(expected) == 4:
      source = f'data.num_frames={config.data.num_frames}, {source}'
    want = f'{kinds} {_dims(("batch",) + expected)} for this tokenizer ({source})'
    ok_shape = len(shape) == len(expected) + 1 and shape[1:] == expected and shape[0] > 0
  else:
    ranks = (
      (4, 5)
      if module is None or isinstance(module, Magvit2Tokenizer)
      else ((4,) if isinstance(module, VQGAN) else (5,))
    )
    layouts = {4: '[batch, H, W, 3]', 5: '[batch, T, H, W, 3]'}
    want = f'{kinds} ' + ' or '.join(layouts[r] for r in ranks)
    ok_shape = len(shape) in ranks and shape[-1] == 3 and shape[0] > 0
  ok_dtype = dtype == np.uint8 or (allow_float and jnp.issubdtype(dtype, jnp.floating))
  if not (ok_shape and ok_dtype):
    raise ValueError(f'{name}: expected {want}, got {dtype} {_dims(shape)}')
  if dtype != np.uint8 and not isinstance(pixels, jax.core.Tracer):
    bad = int(np.size(pixels) - np.count_nonzero(np.isfinite(np.asarray(pixels))))
    if bad:
      raise ValueError(
        f'{name}: {bad} of {np.size(pixels)} values are NaN or Inf; expected finite floats '
        'in [-1, 1] (or uint8)'
      )


def make_tokenize_fn(
  module: Tokenizer, config: Any = None
) -> Callable[[Any, jax.Array], jax.Array]:
  """(params, pixels) -> tokens int32 [b, n], n = prod(token grid).

  pixels: uint8 in [0, 255] or float in [-1, 1], [b, H, W, 3] or [b, T, H, W, 3]; with the
  tokenizer run's `config`, exactly [b, *input_shape(config)]. A wrong shape, rank or dtype
  raises ValueError naming the expected shape (see `check_pixels`; under jit when tracing);
  NaN / Inf in a float array passed outside jit too.
  """

  def tokenize(params: Any, pixels: jax.Array) -> jax.Array:
    check_pixels(pixels, config, module)
    if pixels.dtype == jnp.uint8:
      pixels = to_float(pixels)
    _, aux = module.apply({'params': params}, pixels, method='encode')
    return aux['tokens'].reshape(pixels.shape[0], -1)

  return tokenize


def make_detokenize_fn(
  module: Tokenizer, grid: tuple[int, ...]
) -> Callable[[Any, jax.Array], jax.Array]:
  """(params, tokens int32 [..., n]) -> uint8 pixels [N, *input_shape] (N = tokens.size / n)."""

  def detokenize(params: Any, tokens: jax.Array) -> jax.Array:
    pixels = module.apply(
      {'params': params}, tokens.reshape((-1,) + tuple(grid)), method='decode_tokens'
    )
    return to_uint8(pixels)

  return detokenize

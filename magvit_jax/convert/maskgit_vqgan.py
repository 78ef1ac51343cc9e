"""The released MaskGIT VQGAN tokenizer's parameters -> this project's `VQGAN` params.

google-research/maskgit released `tokenizer_imagenet{256,512}_checkpoint`: the bytes of
`flax.serialization.to_bytes(variables)`, a msgpack of `{'params': {'encoder': ...,
'quantizer': {'codebook'}, 'decoder': ...}}` in flax's automatic naming (`Conv_0`,
`ResBlock_3`, `GroupNorm_0`, ...). Our `VQGAN` with the options of
`configs/vqgan_imagenet.py:official256` (or `:official512`) computes the same function;
this module renames the leaves (their values and shapes are the same) and checks every
shape against the module built from the config.

  tree = load_official_tree('tokenizer_imagenet256_checkpoint')
  config = load_config('vqgan_imagenet.py:official256')
  params = tokenizer_params_from_official(tree, config)
  module = tokenizers.build_tokenizer(config.model)
  _, aux = module.apply({'params': params}, images, method='encode')   # images in [-1, 1]

Parity with the official code: tests/test_parity_maskgit_vqgan.py, docs/pretrained.md.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from magvit_jax.convert.official_tree import conv_vq_module_map, conv_vq_names, conv_vq_params
from magvit_jax.convert.official_tree import load_official_tree  # noqa: F401  (public here too)
from magvit_jax.convert.official_tree import model_config as _model_config
from magvit_jax.models import tokenizers

# The config.model options that make our VQGAN compute the official function.
OFFICIAL_OPTIONS = {
  'name': 'vqgan',
  'shortcut': 'output',
  'res_conv_bias': False,
  'encoder_in_bias': False,
  'pixel_range': 'unit',
}
# Official module path -> our module path, for config.model (see official_tree).
module_map = conv_vq_module_map


def _our_shapes(model_config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  module = tokenizers.build_tokenizer(model_config)
  f = 2 ** (len(model_config['channel_multipliers']) - 1)
  images = jax.ShapeDtypeStruct((1, f, f, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x), images)
  flat = traverse_util.flatten_dict(nn.unbox(shapes['params']), sep='/')
  return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def official_shapes(model_config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  """'params/<official path>' -> shape, of the official tokenizer that `config.model` expresses."""
  model_config = _model_config(model_config)
  return dict(conv_vq_names(module_map(model_config), _our_shapes(model_config)).values())


def tokenizer_params_from_official(tree: Mapping[str, Any], config: Any) -> dict[str, Any]:
  """Our `VQGAN` params (plain arrays) from the official tree, for `config` (or config.model).

  tree: `{'params': {...}}` as `load_official_tree` returns it (or its 'params' dict).
  Raises ValueError when `config.model` lacks the official options (OFFICIAL_OPTIONS) or when
  the tree does not fit the architecture of `config.model`: every missing and unexpected key
  path is listed, and every leaf of the wrong shape named with the expected and the got shape.
  """
  model_config = _model_config(config)
  wrong = {k: model_config.get(k) for k, v in OFFICIAL_OPTIONS.items() if model_config.get(k) != v}
  if wrong:
    raise ValueError(
      f'config.model has {wrong}; the official MaskGIT tokenizer needs {OFFICIAL_OPTIONS} '
      '(use configs/vqgan_imagenet.py:official256 or :official512)'
    )
  if not isinstance(tree, Mapping):
    raise ValueError(f'expected a dict of parameters, got {type(tree).__name__}')
  if 'params' not in tree:
    tree = {'params': tree}
  return conv_vq_params(tree, model_config, _our_shapes(model_config), 'the official tokenizer')

"""Official MAGVIT 3D-VQ parameters (google-research/magvit) -> this project's `VQGAN3D` params.

The official tokenizer (videogvt/models/vqvae.py `VQVAE` with architecture '3dcnn',
videogvt/models/enc_dec_3dcnn.py) has no public weights, but its parameter tree is known: a
dict `{'encoder': ..., 'quantizer': {'codebook'}, 'decoder': ...}` in flax's automatic naming
(`Conv_0`, `ResBlock_3`, `GroupNorm_0`, ...), under 'params' in the model's variables and under
'ema_params' / 'g_params' in its training checkpoints (`flax.training.checkpoints`, msgpack).
Our `VQGAN3D` with the options of `configs/magvit_ucf101.py:official_B` (and the other
`official_*` variants) computes the same function; this module renames the leaves (their
values and shapes are the same) and checks every shape against the module built from the
config.

  tree = load_official_tree('checkpoint_500000')          # or an .npz of '/'-joined paths
  config = load_config('magvit_ucf101.py:official_B')
  params = tokenizer_params_from_official(tree, config)
  module = tokenizers.build_tokenizer(config.model)
  _, aux = module.apply({'params': params}, videos, method='encode')   # videos in [-1, 1]

Parity with the official code: tests/test_parity_magvit_3dvq.py, docs/pretrained.md.
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
from magvit_jax.convert.official_tree import variables_from_state
from magvit_jax.models import tokenizers

# The config.model options that make our VQGAN3D compute the official function.
OFFICIAL_OPTIONS = {
  'name': 'vqgan3d',
  'temporal_padding': 'constant',
  'res_conv_bias': False,
  'encoder_in_bias': False,
  'pixel_range': 'unit',
}
# Where a training checkpoint keeps the generator's params, in the order they are looked for.
STATE_KEYS = ('ema_params', 'g_params')
# Official module path -> our module path, for config.model (see official_tree).
module_map = conv_vq_module_map


def _our_shapes(model_config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  module = tokenizers.build_tokenizer(model_config)
  f, ft = module.downsample_factor, module.temporal_downsample_factor
  videos = jax.ShapeDtypeStruct((1, ft, f, f, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x), videos)
  flat = traverse_util.flatten_dict(nn.unbox(shapes['params']), sep='/')
  return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def official_shapes(model_config: Any) -> dict[str, tuple[int, ...]]:
  """'params/<official path>' -> shape, of the official 3D-VQ that `config.model` expresses."""
  model_config = _model_config(model_config)
  return dict(conv_vq_names(module_map(model_config), _our_shapes(model_config)).values())


def tokenizer_params_from_official(tree: Mapping[str, Any], config: Any) -> dict[str, Any]:
  """Our `VQGAN3D` params (plain arrays) from the official tree, for `config` (or config.model).

  tree: `{'params': {...}}` (the official model's variables), its 'params' dict, or an
  official training checkpoint's state dict (its 'ema_params', else its 'g_params', are used),
  as `load_official_tree` returns them.
  Raises ValueError when `config.model` lacks the official options (OFFICIAL_OPTIONS) or when
  the tree does not fit the architecture of `config.model`: every missing and unexpected key
  path is listed, and every leaf of the wrong shape named with the expected and the got shape.
  """
  model_config = _model_config(config)
  wrong = {k: model_config.get(k) for k, v in OFFICIAL_OPTIONS.items() if model_config.get(k) != v}
  if wrong:
    raise ValueError(
      f'config.model has {wrong}; the official MAGVIT 3D-VQ needs {OFFICIAL_OPTIONS} '
      '(use configs/magvit_ucf101.py:official_B / :official_L, or magvit_bair.py / magvit_k600.py)'
    )
  variables = variables_from_state(tree, STATE_KEYS)
  return conv_vq_params(variables, model_config, _our_shapes(model_config), 'the official 3D-VQ')

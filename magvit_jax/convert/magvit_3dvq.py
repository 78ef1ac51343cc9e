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

import io
from typing import Any, Iterator, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from magvit_jax import fileio
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
_RES_BLOCK = {
  'GroupNorm_0': 'norm_0',
  'Conv_0': 'conv_0',
  'GroupNorm_1': 'norm_1',
  'Conv_1': 'conv_1',
  'Conv_2': 'shortcut',
}


def load_official_tree(path: fileio.PathLike) -> dict[str, Any]:
  """The nested dict of numpy arrays in an official file (no pickle).

  A flax msgpack (`flax.serialization.to_bytes` / a `flax.training.checkpoints` file), or an
  .npz whose keys are '/'-joined paths ('params/encoder/Conv_0/kernel', ...).
  """
  data = fileio.as_path(path).read_bytes()
  if data[:4] == b'PK\x03\x04':  # A zip: numpy's .npz.
    try:
      with np.load(io.BytesIO(data), allow_pickle=False) as f:
        flat = {tuple(k.split('/')): f[k] for k in f.files}
    except Exception as e:  # A broken zip / member raises many exception types.
      raise ValueError(f'{path}: not a readable .npz ({type(e).__name__}: {e})') from e
    return traverse_util.unflatten_dict(flat)
  try:
    tree = serialization.msgpack_restore(data)
  except Exception as e:  # msgpack raises its own exception types.
    raise ValueError(
      f'{path}: not a flax msgpack checkpoint nor an .npz ({type(e).__name__}: {e}); expected '
      'the bytes of flax.serialization.to_bytes(variables) or a flax training checkpoint'
    ) from e
  if not isinstance(tree, dict):
    raise ValueError(f'{path}: expected a dict of parameters, got {type(tree).__name__}')
  return tree


def _model_config(config: Any) -> Mapping[str, Any]:
  """config.model of a run config, or a model config itself."""
  return config['model'] if 'model' in config else config


def _res_blocks(prefix: str, names: list[str]) -> Iterator[tuple[str, str]]:
  for i, name in enumerate(names):
    yield f'{prefix}/ResBlock_{i}', f'{prefix}/{name}'


def module_map(model_config: Mapping[str, Any]) -> dict[str, str]:
  """Official module path -> our module path (without the leaf name), for `config.model`.

  Flax names the official modules by type in creation order: the encoder's first conv, its
  residual blocks (per level, then the middle ones), GroupNorm, 1x1x1 output conv; the
  decoder's input conv, residual blocks (middle, then per level from the deepest), one conv
  after each upsampling, GroupNorm, output conv.
  """
  levels = len(model_config['channel_multipliers'])
  blocks = int(model_config['num_res_blocks'])
  down = [f'down_{lv}_res_{i}' for lv in range(levels) for i in range(blocks)]
  mid = [f'mid_res_{i}' for i in range(blocks)]
  up = [f'up_{lv}_res_{i}' for lv in reversed(range(levels)) for i in range(blocks)]
  up_convs = [f'up_{lv}_conv' for lv in reversed(range(1, levels))]
  out = {
    'encoder/Conv_0': 'encoder/conv_in',
    'encoder/GroupNorm_0': 'encoder/norm_out',
    'encoder/Conv_1': 'encoder/conv_out',
    'quantizer': 'quantizer',
    'decoder/Conv_0': 'decoder/conv_in',
    'decoder/GroupNorm_0': 'decoder/norm_out',
    f'decoder/Conv_{len(up_convs) + 1}': 'decoder/conv_out',
  }
  out.update(_res_blocks('encoder', down + mid))
  out.update(_res_blocks('decoder', mid + up))
  out.update({f'decoder/Conv_{i + 1}': f'decoder/{name}' for i, name in enumerate(up_convs)})
  return out


def _our_shapes(model_config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  module = tokenizers.build_tokenizer(model_config)
  f, ft = module.downsample_factor, module.temporal_downsample_factor
  videos = jax.ShapeDtypeStruct((1, ft, f, f, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x), videos)
  flat = traverse_util.flatten_dict(nn.unbox(shapes['params']), sep='/')
  return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def _names(model_config: Mapping[str, Any]) -> dict[str, tuple[str, tuple[int, ...]]]:
  """Our leaf path -> ('params/<official leaf path>', shape), for `config.model`."""
  ours_to_official = {mine: official for official, mine in module_map(model_config).items()}
  block_leaf = {ours: official for official, ours in _RES_BLOCK.items()}
  out = {}
  for path, shape in _our_shapes(model_config).items():
    parts = path.split('/')
    for cut in (len(parts) - 1, len(parts) - 2):
      head = '/'.join(parts[:cut])
      if head in ours_to_official:
        inner = [block_leaf[q] for q in parts[cut:-1]]
        out[path] = ('/'.join(['params', ours_to_official[head], *inner, parts[-1]]), shape)
        break
    else:
      raise AssertionError(f'{path}: no official name (module_map is out of date)')
  return out


def official_shapes(model_config: Any) -> dict[str, tuple[int, ...]]:
  """'params/<official path>' -> shape, of the official 3D-VQ that `config.model` expresses."""
  return dict(_names(_model_config(model_config)).values())


def _flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  out = {}

  def walk(node: Any, prefix: str) -> None:
    if isinstance(node, Mapping):
      for k, v in node.items():
        walk(v, f'{prefix}/{k}' if prefix else str(k))
    else:
      out[prefix] = node

  walk(tree, '')
  return out


def _params_tree(tree: Mapping[str, Any]) -> Mapping[str, Any]:
  """{'params': ...} from variables, a bare params dict or a training checkpoint's state."""
  if not isinstance(tree, Mapping):
    raise ValueError(f'expected a dict of parameters, got {type(tree).__name__}')
  if 'params' in tree:
    return tree
  for key in STATE_KEYS:
    if key in tree:
      inner = tree[key]
      if isinstance(inner, Mapping) and 'params' in inner:
        return inner
      return {'params': inner}
  return {'params': tree}


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
  got = {k: v for k, v in _flatten(_params_tree(tree)).items() if k.split('/')[0] == 'params'}
  names = _names(model_config)
  expected = dict(names.values())
  missing = sorted(set(expected) - set(got))
  unexpected = sorted(set(got) - set(expected))
  problems = []
  for path in sorted(set(expected) & set(got)):
    shape = tuple(np.shape(got[path]))
    if shape != expected[path]:
      problems.append(f'{path}: expected shape {expected[path]}, got {shape}')
  if missing:
    problems.append(f'missing keys: {missing}')
  if unexpected:
    problems.append(f'unexpected keys: {unexpected}')
  if problems:
    arch = {
      k: model_config[k]
      for k in ('filters', 'channel_multipliers', 'num_res_blocks', 'embedding_dim')
    }
    arch['codebook_size'] = model_config['codebook_size']
    raise ValueError(
      f'the official 3D-VQ tree does not match config.model ({arch}):\n  ' + '\n  '.join(problems)
    )
  ours = {
    tuple(path.split('/')): jnp.asarray(np.asarray(got[official], np.float32))
    for path, (official, _) in names.items()
  }
  return traverse_util.unflatten_dict(ours)

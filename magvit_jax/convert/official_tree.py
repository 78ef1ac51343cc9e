"""Reading and checking official parameter trees: the parts every converter shares.

An official checkpoint (google-research/maskgit, google-research/magvit) is a nested dict of
arrays, written as a msgpack by `flax.serialization.to_bytes` / `flax.training.checkpoints`,
or (for files made by hand or by tools/parity) an .npz whose keys are '/'-joined paths.

  tree = load_official_tree(path)                  # nested dict of numpy arrays
  flat = flatten(tree)                             # {'params/Embed_0/...': array}
  problems = tree_problems(flat, expected_shapes)  # wrong shape / missing / unexpected keys
  raise_problems(problems, 'the official ... tree does not match config.model (...)')

and, for the convolutional VQ tokenizers of MaskGIT (2D) and MAGVIT (3D), whose official
modules are named by flax in creation order, `conv_vq_module_map` / `conv_vq_names`.
"""

from __future__ import annotations

import io
from typing import Any, Callable, Iterator, Mapping

import jax.numpy as jnp
import numpy as np
from flax import serialization

from magvit_jax import fileio

# Official residual block's submodule -> ours (both VQ tokenizers).
RES_BLOCK = {
  'GroupNorm_0': 'norm_0',
  'Conv_0': 'conv_0',
  'GroupNorm_1': 'norm_1',
  'Conv_1': 'conv_1',
  'Conv_2': 'shortcut',
}
_DEFAULT_EXPECTED = (
  'the bytes of flax.serialization.to_bytes(variables) or a flax training checkpoint'
)


def load_official_tree(path: fileio.PathLike, expected: str = _DEFAULT_EXPECTED) -> dict[str, Any]:
  """The nested dict of numpy arrays in an official file (no pickle is ever run).

  A flax msgpack (`flax.serialization.to_bytes` / a `flax.training.checkpoints` file), or an
  .npz whose keys are '/'-joined paths ('params/encoder/Conv_0/kernel', ...).
  `expected` names the file the caller wants, for the error message.

  Raises:
    ValueError: neither format (the message names the path), or not a dict.
  """
  data = fileio.as_path(path).read_bytes()
  if data[:4] == b'PK\x03\x04':  # A zip: numpy's .npz.
    try:
      with np.load(io.BytesIO(data), allow_pickle=False) as f:
        return nest({k: f[k] for k in f.files})
    except Exception as e:  # A broken zip / member raises many exception types.
      raise ValueError(f'{path}: not a readable .npz ({type(e).__name__}: {e})') from e
  try:
    tree = serialization.msgpack_restore(data)
  except Exception as e:  # msgpack raises its own exception types.
    raise ValueError(
      f'{path}: not a flax msgpack checkpoint nor an .npz ({type(e).__name__}: {e}); '
      f'expected {expected}'
    ) from e
  if not isinstance(tree, dict):
    raise ValueError(f'{path}: expected a dict of parameters, got {type(tree).__name__}')
  return tree


def flatten(tree: Mapping[str, Any], sep: str = '/') -> dict[str, Any]:
  """Nested mappings -> {'a/b/c': leaf}. Leaves may be anything (arrays, ShapeDtypeStructs)."""
  out: dict[str, Any] = {}

  def walk(node: Any, prefix: str) -> None:
    if isinstance(node, Mapping):
      for k, v in node.items():
        walk(v, f'{prefix}{sep}{k}' if prefix else str(k))
    else:
      out[prefix] = node

  walk(tree, '')
  return out


def nest(flat: Mapping[str, Any], sep: str = '/') -> dict[str, Any]:
  """{'a/b/c': leaf} -> nested dicts (the inverse of `flatten`)."""
  tree: dict[str, Any] = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split(sep)
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def model_config(config: Any) -> Mapping[str, Any]:
  """config.model of a run config, or a model config itself."""
  return config['model'] if 'model' in config else config


def variables_from_state(tree: Any, state_keys: tuple[str, ...] = ()) -> Mapping[str, Any]:
  """{'params': ...} from variables, a bare params dict, or a training checkpoint's state dict
  (its first key of `state_keys` present, e.g. 'ema_params', holding params or variables)."""
  if not isinstance(tree, Mapping):
    raise ValueError(f'expected a dict of parameters, got {type(tree).__name__}')
  if 'params' in tree:
    return tree
  for key in state_keys:
    if key in tree:
      inner = tree[key]
      if isinstance(inner, Mapping) and 'params' in inner:
        return inner
      return {'params': inner}
  return {'params': tree}


def strip_params(tree: Any) -> tuple[Mapping[str, Any], str]:
  """(the params dict, 'params/' or '') of variables `{'params': ...}` or a bare params dict."""
  if not isinstance(tree, Mapping):
    raise ValueError(f'expected a dict of parameters, got {type(tree).__name__}')
  if set(tree) == {'params'}:
    return tree['params'], 'params/'
  return tree, ''


def tree_problems(
  got: Mapping[str, Any],
  expected: Mapping[str, tuple[int, ...]],
  name: Callable[[str], str] = str,
) -> list[str]:
  """Every mismatch of a flat tree with the expected {key: shape}, each naming its key.

  Returns lines '<key>: expected shape (..), got (..)', then 'missing keys: [...]' and
  'unexpected keys: [...]' (sorted); empty when the tree fits. `name` spells a key in the
  messages (e.g. with the 'params/' prefix the caller removed).
  """
  problems = []
  for key in sorted(set(expected) & set(got)):
    shape = tuple(np.shape(got[key]))
    if shape != tuple(expected[key]):
      problems.append(f'{name(key)}: expected shape {tuple(expected[key])}, got {shape}')
  missing = sorted(set(expected) - set(got))
  unexpected = sorted(set(got) - set(expected))
  if missing:
    problems.append(f'missing keys: {[name(k) for k in missing]}')
  if unexpected:
    problems.append(f'unexpected keys: {[name(k) for k in unexpected]}')
  return problems


def raise_problems(problems: list[str], header: str) -> None:
  """ValueError('<header>:\\n  <problem>\\n  ...') when there are problems."""
  if problems:
    raise ValueError(f'{header}:\n  ' + '\n  '.join(problems))


def bert_layer_shapes(attention: str, mlp: str, d: int, h: int, m: int) -> dict[str, tuple]:
  """Param shapes of one official post-LN BERT layer (MaskGIT's and MAGVIT's transformers).

  attention, mlp: the layer's attention and MLP module paths; d hidden size, h heads, m MLP
  width. Flax `SelfAttention` kernels are [d, h, d/h] (query/key/value) and [h, d/h, d] (out).
  """
  a, p = attention, mlp
  shapes: dict[str, tuple] = {}
  for proj in ('query', 'key', 'value'):
    shapes[f'{a}/self_attention/{proj}/kernel'] = (d, h, d // h)
    shapes[f'{a}/self_attention/{proj}/bias'] = (h, d // h)
  shapes[f'{a}/self_attention/out/kernel'] = (h, d // h, d)
  shapes[f'{a}/self_attention/out/bias'] = (d,)
  shapes[f'{p}/intermediate_output/kernel'] = (d, m)
  shapes[f'{p}/intermediate_output/bias'] = (m,)
  shapes[f'{p}/layer_output/kernel'] = (m, d)
  shapes[f'{p}/layer_output/bias'] = (d,)
  for ln in (f'{a}/attention_output_ln', f'{p}/layer_output_ln'):
    shapes[f'{ln}/scale'] = (d,)
    shapes[f'{ln}/bias'] = (d,)
  return shapes


def _res_blocks(prefix: str, names: list[str]) -> Iterator[tuple[str, str]]:
  for i, name in enumerate(names):
    yield f'{prefix}/ResBlock_{i}', f'{prefix}/{name}'


def conv_vq_module_map(model_config: Mapping[str, Any]) -> dict[str, str]:
  """Official module path -> our module path (without the leaf name), for the conv VQ tokenizers
  (MaskGIT's VQGAN, MAGVIT's 3D-VQ) of `config.model`.

  Flax names the official modules by type in creation order: the encoder's first conv, its
  residual blocks (per level, then the middle ones), GroupNorm, output conv; the decoder's
  input conv, residual blocks (middle, then per level from the deepest), one conv after each
  upsampling, GroupNorm, output conv.
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


def conv_vq_names(
  module_map: Mapping[str, str], our_shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, tuple[str, tuple[int, ...]]]:
  """Our leaf path -> ('params/<official leaf path>', shape), from `conv_vq_module_map` and
  our tokenizer's {leaf path: shape}."""
  ours_to_official = {mine: official for official, mine in module_map.items()}
  block_leaf = {ours: official for official, ours in RES_BLOCK.items()}
  out = {}
  for path, shape in our_shapes.items():
    parts = path.split('/')
    for cut in (len(parts) - 1, len(parts) - 2):
      head = '/'.join(parts[:cut])
      if head in ours_to_official:
        inner = [block_leaf[q] for q in parts[cut:-1]]
        out[path] = ('/'.join(['params', ours_to_official[head], *inner, parts[-1]]), shape)
        break
    else:
      raise AssertionError(f'{path}: no official name (conv_vq_module_map is out of date)')
  return out


def conv_vq_params(
  variables: Mapping[str, Any],
  model_config: Mapping[str, Any],
  our_shapes: Mapping[str, tuple[int, ...]],
  what: str,
) -> dict[str, Any]:
  """Our conv VQ tokenizer's params (float32 jnp arrays) from official `{'params': ...}`.

  our_shapes: our tokenizer's {leaf path: shape} for `model_config`. what: the official model's
  name in the error ('the official 3D-VQ').
  Raises ValueError listing every leaf of the wrong shape and every missing / unexpected key.
  """
  got = {k: v for k, v in flatten(variables).items() if k.split('/')[0] == 'params'}
  names = conv_vq_names(conv_vq_module_map(model_config), our_shapes)
  arch = {
    k: model_config[k]
    for k in ('filters', 'channel_multipliers', 'num_res_blocks', 'embedding_dim')
  }
  arch['codebook_size'] = model_config['codebook_size']
  raise_problems(
    tree_problems(got, dict(names.values())),
    f'{what} tree does not match config.model ({arch})',
  )
  return nest(
    {
      path: jnp.asarray(np.asarray(got[official], np.float32))
      for path, (official, _) in names.items()
    }
  )

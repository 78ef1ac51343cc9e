"""Weight files of the frozen networks (perceptual losses, FID / FVD networks): reading, checking.

Every network's converter and loader goes through this module:

  * a converter reads a PyTorch state_dict with `read_state_dict` (an .npz or .safetensors of
    its arrays by default; the pickled .pt/.pth only with `allow_pickle`), maps the names (the
    only network-specific part), writes the result with `write_npz` (which re-reads it with the
    network's loader), and is a command line built by `converter_parser` + `run_converter`
    (a user error is one `error: ...` line on stderr and exit code 2);
  * a loader reads the converted .npz with `load_npz`, which checks every array against the
    network's `{flat name: shape}` and returns the nested float32 params (names split at '/').

Nothing here downloads anything or imports torch unless a pickle is explicitly allowed.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Dict, Mapping, Sequence, Tuple

import jax.numpy as jnp
import numpy as np

# Weight files read by default, and the PyTorch pickles read only with `allow_pickle`.
SAFE_EXTENSIONS = ('.npz', '.safetensors')
PICKLE_EXTENSIONS = ('.pt', '.pth')
ALLOW_PICKLE_HELP = (
  'Also read .pt/.pth inputs. They are read with torch.load, which runs Python pickle from the '
  'file: a pickle can execute arbitrary code, so use this only for files you trust. '
  'Not needed for .npz or .safetensors inputs.'
)
# How many names one problem line lists before '... and N more'.
LIST_LIMIT = 5


def to_npz_command(path: str) -> str:
  """A shell command that exports the arrays of the PyTorch file `path` to an .npz (needs torch)."""
  out = os.path.splitext(path)[0] + '.npz'
  return (
    'python -c "import numpy as np, torch; '
    f"sd = torch.load('{path}', map_location='cpu', weights_only=True); "
    f"np.savez('{out}', **{{k: v.numpy() for k, v in sd.items()}})\""
  )


def strip_module_prefix(state: Mapping[str, Any]) -> Dict[str, Any]:
  """Drops the `module.` that nn.DataParallel puts before every name (only if all have it)."""
  if state and all(k.startswith('module.') for k in state):
    return {k[len('module.') :]: v for k, v in state.items()}
  return dict(state)


def read_state_dict(
  path: str, how_to_get: str = '', allow_pickle: bool = False
) -> Dict[str, np.ndarray]:
  """A PyTorch state_dict as name -> numpy array, from an .npz or .safetensors of its arrays, or
  (only with `allow_pickle`) from the .pth/.pt itself.

  A `module.` prefix (nn.DataParallel) is removed from every name.

  Args:
    path: the weights file; its extension chooses the reader.
    how_to_get: named in the error when `path` does not exist.
    allow_pickle: read a .pt/.pth with `torch.load(weights_only=True)`. That is still Python
      pickle, which can execute arbitrary code from the file: only for files you trust.

  Raises:
    ValueError: an extension other than .npz, .safetensors, .pt, .pth, or a .pt/.pth without
      `allow_pickle` (refused before the file is opened).
    FileNotFoundError: `path` does not exist.
    ImportError: safetensors (for .safetensors) or torch (for .pt/.pth) is not installed.
  """
  ext = os.path.splitext(path)[1].lower()
  if ext not in SAFE_EXTENSIONS + PICKLE_EXTENSIONS:
    raise ValueError(
      f'{path}: unknown weights file extension {ext or "(none)"!r}; expected one of '
      f'{", ".join(SAFE_EXTENSIONS)} (or {", ".join(PICKLE_EXTENSIONS)} with --allow_pickle)'
    )
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found. {how_to_get}'.strip())
  if ext == '.npz':
    with np.load(path, allow_pickle=False) as f:
      return strip_module_prefix({k: np.asarray(f[k]) for k in f.files})
  if ext == '.safetensors':
    try:
      from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(
        f'reading {path} needs the safetensors package: pip install safetensors '
        '(or pass an .npz of the same arrays)'
      ) from e
    return strip_module_prefix(dict(load_file(path)))
  if not allow_pickle:
    raise ValueError(
      f'refusing to read {path}: a {ext} file is read with Python pickle (torch.load), which can '
      'execute arbitrary code from the file. If you trust it, pass --allow_pickle '
      '(allow_pickle=True); otherwise make an .npz of its arrays on a machine with torch and '
      f'pass that: {to_npz_command(path)}'
    )
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
      f'reading {path} needs torch (pip install torch), or make an .npz of its arrays '
      f'elsewhere: {to_npz_command(path)}'
    ) from e
  state = torch.load(path, map_location='cpu', weights_only=True)
  if isinstance(state, Mapping) and 'state_dict' in state:
    state = state['state_dict']
  return strip_module_prefix(
    {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, 'detach')}
  )


# ----------------------------------------------------------------------------- checking


def listing(names: Sequence[str], limit: int = LIST_LIMIT) -> str:
  """'a, b, c' or, past `limit` names, 'a, b and 3 more'."""
  more = f' and {len(names) - limit} more' if len(names) > limit else ''
  return ', '.join(names[:limit]) + more


def unexpected_names(names: Sequence[str], what: str, limit: int = LIST_LIMIT) -> str:
  """The problem line for names a file holds that the network does not have."""
  more = f' and {len(names) - limit} more' if len(names) > limit else ''
  return f'unexpected names (not in {what}): {sorted(names)[:limit]}{more}'


def raise_problems(header: str, problems: Sequence[str], limit: int = 20) -> None:
  """Raises one ValueError `header (N problem(s)):` + a line per problem; nothing if none."""
  if problems:
    raise ValueError(f'{header} ({len(problems)} problem(s)):\n  ' + '\n  '.join(problems[:limit]))


def check_arrays(
  arrays: Mapping[str, np.ndarray],
  expected: Mapping[str, Tuple[int, ...]],
  what: str,
  unexpected_hint: str = '',
) -> list[str]:
  """The problems of `arrays` as the weights of `what` (`expected`: flat name -> shape).

  In this order: a wrong shape, non-finite values, a negative BatchNorm variance (a name
  ending in `/var`), then missing names (the first `LIST_LIMIT`, each `'name' is missing`, the
  last followed by how many more), then names that `expected` does not have (followed by
  `unexpected_hint`). Empty when the arrays are the network's weights.
  """
  problems = []
  for name, shape in expected.items():
    if name not in arrays:
      continue
    value = arrays[name]
    if tuple(value.shape) != tuple(shape):
      problems.append(f'{name!r}: expected shape {shape}, found {tuple(value.shape)}')
    elif not np.all(np.isfinite(value)):
      problems.append(f'{name!r} holds non-finite values')
    elif name.endswith('/var') and np.any(value < 0):
      problems.append(f'{name!r} (a BatchNorm variance) holds negative values')
  missing = [name for name in expected if name not in arrays]
  problems += [f'{m!r} is missing (expected shape {expected[m]})' for m in missing[:LIST_LIMIT]]
  if len(missing) > LIST_LIMIT:
    problems[-1] += f'; {len(missing) - LIST_LIMIT} more names are missing'
  unknown = sorted(set(arrays) - set(expected))
  if unknown:
    problems.append(unexpected_names(unknown, what) + unexpected_hint)
  return problems


def not_found_message(what: str, path: str, how_to_get: str) -> str:
  """The FileNotFoundError text of a missing weights file of `what`."""
  return f'{what} weights not found at {path!r}. {how_to_get}'


def load_npz(
  path: str,
  expected: Mapping[str, Tuple[int, ...]],
  what: str,
  how_to_get: str,
  paths: Mapping[str, Tuple[str, ...]] | None = None,
) -> Dict[str, Any]:
  """Reads a converted weights .npz and checks it against the network (`check_arrays`).

  Args:
    path: the .npz; its names are the flat '/'-joined variable names of `expected`.
    expected: flat name -> shape of every variable of the network.
    what: the network's name for messages (e.g. 'InceptionV3 (FID)').
    how_to_get: how to make the file (the converter command), for the missing-file error and
      after unexpected names (an unconverted state_dict).
    paths: flat name -> its path in the nested result, where a module name holds a '/' itself
      (e.g. Flax's `Mixed_3b/Branch_0`); None: the name split at every '/'.

  Returns:
    The nested variables ({'params': {'conv': {'kernel': ...}}} for 'params/conv/kernel'),
    float32 jnp arrays.

  Raises:
    FileNotFoundError: `path` does not exist (the message says how to make it).
    ValueError: every problem `check_arrays` finds, naming the variables.
  """
  if not path or not os.path.exists(path):
    raise FileNotFoundError(not_found_message(what, path, how_to_get))
  with np.load(path, allow_pickle=False) as f:
    arrays = {k: np.asarray(f[k]) for k in f.files}
  problems = check_arrays(arrays, expected, what, f' -- not converted yet? {how_to_get}')
  raise_problems(f'{path} does not hold {what} weights in the expected layout', problems)
  nested: Dict[str, Any] = {}
  for name in expected:
    *parents, leaf = paths[name] if paths is not None else name.split('/')
    node = nested
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = jnp.asarray(arrays[name], jnp.float32)
  return nested


# ----------------------------------------------------------------------------- converters


def write_npz(path: str, arrays: Mapping[str, np.ndarray], load: Callable[[str], Any]) -> None:
  """Writes the converted `arrays` to the .npz `path` (folders made), then re-reads it with the
  network's loader `load`, which raises, naming the variable, if anything is off."""
  if not path.endswith('.npz'):
    raise ValueError(f'--output must end with .npz; got {path!r}')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  np.savez(path, **arrays)
  load(path)


def converter_parser(
  description: str, input_help: str, input_required: bool = True
) -> argparse.ArgumentParser:
  """The converters' common command line: --input, --output, --allow_pickle, --verbose."""
  parser = argparse.ArgumentParser(
    description=description, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--input', required=input_required, help=input_help)
  parser.add_argument('--output', required=input_required, help='output .npz')
  parser.add_argument('--allow_pickle', action='store_true', help=ALLOW_PICKLE_HELP)
  parser.add_argument('--verbose', action='store_true', help='Show the traceback of an error.')
  return parser


def report_user_errors(run: Callable[[], None], verbose: bool = False) -> int:
  """Runs `run()` for an argparse CLI: 0 on success; a user error (a refused or missing file,
  a file of the wrong kind, a missing optional package) prints one `error: ...` line on stderr
  and returns 2, as `magvit_jax.cli_errors` does for the absl CLIs (`verbose`: re-raise)."""
  try:
    run()
  except (ValueError, KeyError, FileNotFoundError, ImportError) as e:
    if verbose:
      raise
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    print(f'error: {" ".join(text.split()) or type(e).__name__}', file=sys.stderr, flush=True)
    return 2
  return 0


def run_converter(convert: Callable[[], None], output: str, verbose: bool = False) -> int:
  """Runs a converter CLI's `convert()`, then prints `wrote <output>`; exit code as
  `report_user_errors`."""

  def run() -> None:
    convert()
    print(f'wrote {output}')

  return report_user_errors(run, verbose)

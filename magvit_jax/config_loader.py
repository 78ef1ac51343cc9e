"""Config files by name, the way `--config=configs/FILE.py:VARIANT` reads them, for code.

The CLIs read `--config` with ml_collections' config_flags; the demo, the notebooks, the
tests and the benchmarks use `load_config`, so there is one loader and one error for a file
or variant that does not exist:

  config = load_config('vqgan_imagenet.py:digits')                 # configs/ of this checkout
  config = load_config('configs/maskgit_imagenet.py:digits', {'model.num_layers': 2})
  config = load_config('/path/to/my_config.py')                    # any config file
"""

from __future__ import annotations

import difflib
import importlib.util
import pathlib
from typing import Any, Mapping

import ml_collections

# configs/ beside the package in a checkout (also with `pip install -e .`).
CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / 'configs'


def config_path(name: str) -> pathlib.Path:
  """The file of `name`: a path as given when it exists, else `configs/<basename>` ('.py' may
  be left out)."""
  path = pathlib.Path(name if name.endswith('.py') else name + '.py')
  if path.is_file():
    return path
  candidate = CONFIG_DIR / path.name
  if candidate.is_file():
    return candidate
  known = sorted(p.name for p in CONFIG_DIR.glob('*.py')) if CONFIG_DIR.is_dir() else []
  close = difflib.get_close_matches(path.name, known, n=3)
  hint = f'; did you mean {", ".join(close)}?' if close else ''
  raise FileNotFoundError(
    f'config file {name!r} does not exist (nor {candidate}); config files: '
    f'{", ".join(known) or "none found"}{hint}'
  )


def load_config(
  spec: str, overrides: Mapping[str, Any] | None = None, lock: bool = True
) -> ml_collections.ConfigDict:
  """`get_config(VARIANT)` of the config file in `spec` ('FILE.py[:VARIANT]').

  overrides: {'dotted.key': value} applied as `--config.dotted.key=value` would be; a key that
  does not exist is refused, naming the closest valid keys.
  """
  name, _, arg = spec.partition(':')
  path = config_path(name)
  module_spec = importlib.util.spec_from_file_location(f'magvit_config_{path.stem}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ValueError(f'{path} has no get_config(arg) function; it is not a config file')
  config = module.get_config(arg or None)
  config.lock()
  apply_overrides(config, overrides or {})
  if not lock:
    config.unlock()
  return config


def _all_keys(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  keys = []
  for key, value in config.items():
    keys.append(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      keys.extend(_all_keys(value, f'{prefix}{key}.'))
  return keys


def unknown_key_error(config: ml_collections.ConfigDict, key: str) -> KeyError:
  """The error for a config key that does not exist, naming the closest valid keys."""
  close = difflib.get_close_matches(key, _all_keys(config), n=3, cutoff=0.5)
  hint = f'; did you mean {", ".join(close)}?' if close else ''
  return KeyError(f'config key {key!r} does not exist{hint}')


def _parent(config: ml_collections.ConfigDict, key: str) -> tuple[ml_collections.ConfigDict, str]:
  """The ConfigDict holding dotted `key` and its last part; unknown keys are refused."""
  node = config
  *parents, leaf = key.split('.')
  for part in parents:
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise unknown_key_error(config, key)
    node = node[part]
  if leaf not in node:
    raise unknown_key_error(config, key)
  return node, leaf


def get_key(config: ml_collections.ConfigDict, key: str) -> Any:
  """The value of dotted `key` ('model.filters'); an unknown key names the closest valid ones."""
  node, leaf = _parent(config, key)
  return node[leaf]


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
  """Sets each 'dotted.key' of `overrides` on `config` (in place); unknown keys are refused."""
  for key, value in overrides.items():
    node, leaf = _parent(config, key)
    node[leaf] = value

"""User errors end in one clear line on stderr and exit code 2; `--verbose` shows the traceback.

Every CLI runs through `run(main)` instead of `absl.app.run(main)`. What counts as a user
error: a flag that does not parse, a config key or variant or file that does not exist, and
the ValueError / KeyError / FileNotFoundError that the project raises at its boundaries (bad
config values, a workdir that is not one, a checkpoint of another architecture, a dataset that
is not prepared, a class id out of range). An environment error (any other OSError: a full
disk, a file size limit, no permission; e.g. `checkpoint.CheckpointSaveError`) also ends in one
line, with exit code 1. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Callable, NoReturn, Sequence

from absl import app
from absl import flags

USER_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError)
EXIT_USER_ERROR = 2
EXIT_ENVIRONMENT_ERROR = 1

_VERBOSE = flags.DEFINE_bool('verbose', False, 'Show the traceback of a user or environment error.')


def _message(error: BaseException) -> str:
  text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
  return ' '.join(text.split()) or type(error).__name__


def fail(message: str) -> NoReturn:
  """Prints `error: message` (one line) on stderr and exits with status 2."""
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def _environment_error(message: str) -> NoReturn:
  """Prints `error: message` (one line) on stderr and exits with status 1.

  Threads of a failed write (orbax's checkpoint writers) may still run and would keep the
  interpreter from exiting, or print their failures while it shuts down; then the process ends
  at once (os._exit) once stdout and stderr are flushed.
  """
  print(f'error: {message}', file=sys.stderr, flush=True)
  if any(
    t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()
  ):
    sys.stdout.flush()
    os._exit(EXIT_ENVIRONMENT_ERROR)  # pylint: disable=protected-access
  sys.exit(EXIT_ENVIRONMENT_ERROR)


def _bad_config(argv: Sequence[str]) -> str | None:
  """What is wrong with --config (file, variant) or its first `--config.a.b=v` key, if any."""
  from magvit_jax import config_loader  # pylint: disable=g-import-not-at-top

  spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  if spec is None:
    return None
  try:
    config = config_loader.load_config(spec)
  except USER_ERRORS as e:
    return _message(e)
  for arg in argv:
    if arg.startswith('--config.'):
      key = arg[len('--config.') :].split('=', 1)[0]
      try:
        config_loader.get_key(config, key)
      except KeyError as e:
        return _message(e)
  return None


def _parse_flags(argv: Sequence[str]) -> list[str]:
  verbose = '--verbose' in argv
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    # ml_collections' config_flags raises any of these for a config file, variant or
    # --config.a.b override it cannot use; loading the config ourselves names the problem.
    if verbose:
      raise
    fail(_bad_config(argv) or _message(e))


def config_value(holder: flags.FlagHolder) -> Any:
  """The ConfigDict of a `config_flags.DEFINE_config_file` flag; the file is read on this first
  access, so a file, variant or override that does not work is reported here, in one line."""
  try:
    config = holder.value
    config.keys()  # config_flags hands out a stand-in that raises only when first used.
    return config
  except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    if _VERBOSE.value:
      raise
    fail(_bad_config(sys.argv) or _message(e))


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)` with user errors reported as one line (see the module docstring)."""

  def guarded(argv: list[str]) -> None:
    try:
      main(argv)
    except USER_ERRORS as e:
      if _VERBOSE.value:
        raise
      fail(_message(e))
    except OSError as e:
      if _VERBOSE.value:
        raise
      _environment_error(_message(e))

  app.run(guarded, flags_parser=_parse_flags)

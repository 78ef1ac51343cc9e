"""Orbax checkpoints of sharded train state plus the run's config.

Layout: `<workdir>/checkpoints/<step>/{state,config}`; the workdir may be local
or on an object store (`gs://bucket/run`, file I/O through `magvit_jax.fileio`).
Orbax finalizes each step only when it is complete (a temporary directory
renamed locally, a commit marker on GCS), so a run killed while saving never
leaves a half-written checkpoint that looks valid. The config
is stored beside the state; restoring checks that the model-defining parts of
the config match, so a checkpoint from another architecture is refused with
the differing keys named.
"""

from __future__ import annotations

import concurrent.futures.thread
import contextlib
import dataclasses
import errno
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import orbax.checkpoint as ocp
from etils import epath

from magvit_jax import fileio
from magvit_jax.config_schema import STAGES, with_defaults

# Config sections that define parameter shapes: a checkpoint is only
# restorable into a run whose values here are identical.
ARCHITECTURE_KEYS = ('stage', 'model')
# Model keys that change how the step computes, not what is stored: never a mismatch.
COMPUTE_ONLY_KEYS = ('model.remat_policy', 'model.dtype', 'model.attention_impl')
# Model keys that change the stored layout but not the values: restorable when the caller
# converts (trainers/train_state.init_or_restore converts `model.scan_layers`).
LAYOUT_KEYS = ('model.scan_layers',)


class IncompatibleCheckpointError(ValueError):
  pass


class DamagedCheckpointError(RuntimeError):
  """A checkpoint (or every checkpoint) of a run cannot be read."""


def _reason(error: BaseException) -> str:
  """The first line of an orbax / TensorStore error, short enough for one log line."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  text = lines[0] if lines else type(error).__name__
  return text if len(text) <= 240 else text[:237] + '...'


class CheckpointSaveError(OSError):
  """Writing a checkpoint failed in the file system (a full disk, a file size limit, no
  permission): the partial step was removed and the earlier checkpoints are intact, so a rerun
  of the same command, once the cause is fixed, resumes from the newest of them."""


# Orbax's name mark of an unfinished step directory (`<step>.orbax-checkpoint-tmp...`).
_TMP_MARK = ocp.path.atomicity_types.TMP_DIR_SUFFIX
# The errno in the text of an error that wraps an OS error: Python's "[Errno 28] ...",
# TensorStore's "... [os_error_code='27']" (orbax re-raises those as ValueError / RuntimeError).
_ERRNO_IN_TEXT = re.compile(r"\[Errno (\d+)\]|os_error_code='?(\d+)|\berrno[ =:]+(\d+)", re.I)
# Without an errno, these strerror texts name the error.
_KNOWN_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EIO)
_QUOTED_PATH = re.compile(r'"(/[^"]+|gs://[^"]+)"')
# What to do about each errno before the rerun.
_ERRNO_HINTS = {
  errno.ENOSPC: 'free space on that disk',
  errno.EDQUOT: 'free space within your disk quota',
  errno.EFBIG: 'lift the file size limit (ulimit -f) or free space',
  errno.EROFS: 'make the checkpoint directory writable',
  errno.EACCES: 'make the checkpoint directory writable',
}


def _os_failure(error: BaseException) -> tuple[int, str, str | None] | None:
  """(errno, strerror, file) of the OS error behind `error` (None if there is none), from its
  __cause__ / __context__ chain: an OSError itself, or an errno in the text of a wrapper."""
  chain: list[BaseException] = []
  e: BaseException | None = error
  while e is not None and all(e is not c for c in chain):
    chain.append(e)
    e = e.__cause__ or e.__context__
  for e in chain:
    if isinstance(e, OSError) and e.errno:
      return e.errno, e.strerror or os.strerror(e.errno), e.filename
  for e in chain:
    text = str(e)
    found = _ERRNO_IN_TEXT.search(text)
    code = int(next(g for g in found.groups() if g)) if found else None
    code = code or next((c for c in _KNOWN_ERRNOS if os.strerror(c) in text), None)
    if code:
      paths = _QUOTED_PATH.findall(text)  # The last one is the file itself (before: its database).
      return code, os.strerror(code), paths[-1] if paths else None
  return None


def _is_failed_write_noise(record: logging.LogRecord) -> bool:
  """A log record that only repeats a failed checkpoint write: orbax's background threads log
  their exception (absl), asyncio the task exceptions nobody retrieved once the save gave up."""
  if record.levelno < logging.ERROR:
    return False
  if record.name == 'asyncio':
    return 'exception was never retrieved' in record.getMessage()
  return bool(record.exc_info) and f'{os.sep}orbax{os.sep}' in record.pathname


class _HoldFailedWriteNoise(logging.Filter):
  """Holds back failed-write records (`_is_failed_write_noise`) of the 'absl' and 'asyncio'
  loggers: re-emitted if the save succeeds after all, dropped if it fails (the failure is then
  reported once, as a CheckpointSaveError)."""

  LOGGERS = ('absl', 'asyncio')

  def __init__(self):
    super().__init__()
    self.held: list[logging.LogRecord] = []
    self.failed = False

  def filter(self, record: logging.LogRecord) -> bool:
    if not _is_failed_write_noise(record):
      return True
    if not self.failed:
      self.held.append(record)
    return False


@contextlib.contextmanager
def _quiet_failed_writes() -> Iterator[None]:
  """Keeps the dozens of lines a failed save logs (and prints at exit) off stderr.

  On success the held records are logged after all. On failure the filter stays installed (the
  writes of orbax's background threads keep failing for a while after the save raised) and
  'Event loop is closed' errors of TensorStore callbacks into orbax's closed loops are dropped.
  """
  hold = _HoldFailedWriteNoise()
  loggers = [logging.getLogger(name) for name in _HoldFailedWriteNoise.LOGGERS]
  for logger in loggers:
    logger.addFilter(hold)
  previous_hook = sys.unraisablehook

  def unraisablehook(unraisable: Any) -> None:
    if not (
      isinstance(unraisable.exc_value, RuntimeError)
      and str(unraisable.exc_value) == 'Event loop is closed'
    ):
      previous_hook(unraisable)

  sys.unraisablehook = unraisablehook
  try:
    yield
  except BaseException:
    hold.failed = True
    hold.held.clear()
    raise
  sys.unraisablehook = previous_hook
  for logger in loggers:
    logger.removeFilter(hold)
  for record in hold.held:
    logging.getLogger(record.name).handle(record)


def _is_pool_worker(thread: threading.Thread) -> bool:
  """Whether `thread` is a worker of a `concurrent.futures.ThreadPoolExecutor`.

  Such a worker lives until its pool is shut down, idle or not (e.g. 'metadata_store_0' of
  orbax's non-blocking metadata store, which an async CheckpointManager keeps until `close`):
  joining it waits for the pool's owner, not for a write.
  """
  # CPython keeps the target of a running thread in `_target` (there is no public accessor).
  return getattr(thread, '_target', None) is concurrent.futures.thread._worker


def _join_new_threads(before: set[threading.Thread], timeout_s: float) -> None:
  """Waits (up to `timeout_s` in all) for the threads started since `before` (orbax's writers
  of a failed save, which go on after the first of them failed).

  Executor workers are not waited for (`_is_pool_worker`): a pool that orbax keeps open would
  hold this wait for the whole `timeout_s` (an async save failed 30 s late, issue 14). The
  failed async manager is closed next, which shuts its pools down after their pending work,
  and what is written into the partial step after all is removed by `_remove_for_good`.
  """
  deadline = time.monotonic() + timeout_s
  for thread in threading.enumerate():
    if (
      thread not in before
      and thread is not threading.current_thread()
      and not thread.daemon
      and not _is_pool_worker(thread)
    ):
      # The plain join: orbax's threads override join() to raise their exception.
      threading.Thread.join(thread, max(0.0, deadline - time.monotonic()))


def _remove_for_good(
  paths: Sequence[epath.Path], quiet_s: float = 1.0, timeout_s: float = 15.0
) -> list[str]:
  """Removes `paths` again and again until none of them has come back for `quiet_s`.

  The writes that TensorStore still has in flight when a save fails run on in its own threads
  (no Python thread to join) and create their parent directories anew, within milliseconds of
  a removal under load. Returns 'path (why)' for each path still there after `timeout_s`.
  """
  deadline = time.monotonic() + timeout_s
  gone_since = None
  errors: dict[epath.Path, str] = {}
  while True:
    present = [p for p in paths if p.exists()]
    if not present:
      gone_since = gone_since or time.monotonic()
      if time.monotonic() - gone_since >= quiet_s:
        return []
    else:
      gone_since = None
      if time.monotonic() > deadline:
        return [f'{p} ({errors.get(p, "it keeps coming back")})' for p in present]
      for p in present:
        try:
          p.rmtree()
        except OSError as e:  # A late writer added files while it was being removed.
          errors[p] = f'{type(e).__name__}: {e}'
    time.sleep(0.05)


def _as_tree(state: Any) -> Any:
  """A dataclass state as a dict of its non-None fields (optional parts such as an EMA or a
  discriminator are simply absent), so runs with and without them share one layout."""
  if dataclasses.is_dataclass(state):
    return {
      f.name: getattr(state, f.name)
      for f in dataclasses.fields(state)
      if getattr(state, f.name) is not None
    }
  return state


def _flatten(d: Any, prefix: str = '') -> dict[str, Any]:
  out = {}
  if isinstance(d, dict):
    for k, v in d.items():
      out.update(_flatten(v, f'{prefix}{k}.'))
  else:
    out[prefix[:-1]] = d
  return out


def _complete(config: dict) -> dict:
  """A run config with today's defaults filled in (other dicts, e.g. in tests, as they are)."""
  return with_defaults(config) if config.get('stage') in STAGES else config


def architecture_diff(saved: dict, current: dict, ignore: Sequence[str] = ()) -> list[str]:
  """Lines 'key: saved=... current=...' for every architecture key that differs.

  COMPUTE_ONLY_KEYS and the keys in `ignore` (e.g. LAYOUT_KEYS when the caller converts the
  layout) are not compared.
  """
  lines = []
  skip = set(COMPUTE_ONLY_KEYS) | set(ignore)
  for top in ARCHITECTURE_KEYS:
    a = _flatten(saved.get(top, {}), f'{top}.')
    b = _flatten(current.get(top, {}), f'{top}.')
    for key in sorted((set(a) | set(b)) - skip):
      va, vb = a.get(key, '<absent>'), b.get(key, '<absent>')
      if isinstance(va, (list, tuple)):
        va = list(va)
      if isinstance(vb, (list, tuple)):
        vb = list(vb)
      if va != vb:
        lines.append(f'{key}: checkpoint={va!r} config={vb!r}')
  return lines


@dataclasses.dataclass
class _Save:
  """A save that was started and not yet waited for: what its failure handling needs."""

  step: int
  steps_before: list[int]
  threads_before: set[threading.Thread]
  quiet: contextlib.ExitStack  # Holds `_quiet_failed_writes` until the save is finished.


class Checkpointer:
  """Thin wrapper of `ocp.CheckpointManager` for one training run.

  Args:
    directory: `<workdir>/checkpoints`.
    config: the run's config as a JSON-able dict (saved with every step).
    max_to_keep: how many recent checkpoints to keep.
    async_save: write checkpoints in the background (`save` returns once the arrays are
      copied to host memory; the next `save`, `wait` and `close` wait for it). None: the
      config's `checkpoint_async` (False when the config lacks it).
  """

  def __init__(
    self, directory: str, config: dict, max_to_keep: int = 3, async_save: bool | None = None
  ):
    # Local paths are made absolute (orbax wants that); 'gs://...' stays as it is.
    self.directory = directory if fileio.is_remote(directory) else os.path.abspath(directory)
    self.config = config
    if async_save is None:
      async_save = bool(config.get('checkpoint_async', False)) if hasattr(config, 'get') else False
    self.async_save = bool(async_save)
    self._max_to_keep = max_to_keep
    self._manager = self._new_manager()
    self._in_flight: _Save | None = None

  def _new_manager(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=self._max_to_keep, create=True, enable_async_checkpointing=self.async_save
      ),
      item_names=('state', 'config', 'data'),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict | None = None) -> None:
    """Saves `state` (and the run's config) as step `step`.

    data_state: where the training data streams stand after this step (a JSON-able dict, see
      `magvit_jax.data.skipped_records`), so a resume reads on from there exactly.

    Raises CheckpointSaveError when the file system refuses a write (a full disk, a file size
    limit): the partial step is removed first, so the earlier checkpoints stay the run's newest.

    With `async_save` it returns once the state is copied to host memory (the caller may then
    donate or overwrite its arrays) and orbax writes and finalizes (renames) the step in the
    background; a failure of that write is raised, as the same one-line CheckpointSaveError
    naming the step, by the next `save`, `wait` or `close`.
    """
    self.wait()  # The previous save first: its failure names its own step.
    items = dict(
      state=ocp.args.StandardSave(_as_tree(state)), config=ocp.args.JsonSave(self.config)
    )
    if data_state is not None:
      items['data'] = ocp.args.JsonSave(data_state)
    pending = _Save(step, self.all_steps(), set(threading.enumerate()), contextlib.ExitStack())
    pending.quiet.enter_context(_quiet_failed_writes())
    try:
      self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:  # pylint: disable=broad-except  (orbax/TensorStore raise many types)
      error = self._failed(pending, e)
      if error is None:
        raise
      raise error from e
    self._in_flight = pending
    if not self.async_save:
      self.wait()

  def saving(self) -> bool:
    """Whether a save was started and not yet waited for (`wait`)."""
    return self._in_flight is not None

  def wait(self) -> None:
    """Waits until the save in flight (if any) is written and finalized.

    Raises CheckpointSaveError (see `save`) when that write failed.
    """
    pending, self._in_flight = self._in_flight, None
    if pending is None:
      return
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except  (orbax/TensorStore raise many types)
      error = self._failed(pending, e)
      if error is None:
        raise
      raise error from e
    pending.quiet.close()

  def _failed(self, pending: _Save, error: Exception) -> CheckpointSaveError | None:
    """Cleans up after the failed save `pending`: waits for its writer threads, removes the
    partial step; the CheckpointSaveError to raise (None: not a file system error, re-raise)."""
    # Orbax's other writer threads go on after the first failure; the partial step is removed
    # once they are done (they would recreate its directories otherwise).
    _join_new_threads(pending.threads_before, timeout_s=30.0)
    # Marks the failure: the noise of the failed writes stays off stderr.
    pending.quiet.__exit__(type(error), error, error.__traceback__)
    if self.async_save:
      # The failed background save stays in the manager (it would raise again on every
      # later wait): start from a fresh one.
      with contextlib.suppress(Exception):
        self._manager.close()
      self._manager = self._new_manager()
    not_removed = self._remove_partial_step(pending.step, pending.steps_before)
    failure = _os_failure(error)
    if failure is None:
      return None
    save_error = CheckpointSaveError(
      self._save_failed_message(pending.step, pending.steps_before, failure, not_removed)
    )
    save_error.errno = failure[0]  # str(error) stays the message alone.
    return save_error

  def _remove_partial_step(self, step: int, steps_before: list[int]) -> list[str]:
    """Removes what a failed save of `step` left (`<step>.orbax-checkpoint-tmp*`, and `<step>`
    unless it was a checkpoint before) and makes orbax forget it; the paths it could not remove
    (with why)."""
    not_removed = []
    if jax.process_index() == 0:
      root = epath.Path(self.directory)
      partial = [root / f'{step}{_TMP_MARK}']
      partial += [p for p in root.glob(f'{step}{_TMP_MARK}*') if p not in partial]
      if step not in steps_before:
        partial.append(root / str(step))
      not_removed = _remove_for_good(partial)
    self._manager.reload()
    return not_removed

  def _save_failed_message(
    self,
    step: int,
    steps_before: list[int],
    failure: tuple[int, str, str | None],
    not_removed: list[str],
  ) -> str:
    """One line: which save failed where and why, what is intact, what to do."""
    code, strerror, path = failure
    free = ''
    if not fileio.is_remote(self.directory):
      with contextlib.suppress(OSError):
        free = f' ({shutil.disk_usage(self.directory).free / 2**20:.1f} MiB free on that disk)'
    what = f'{strerror} (errno {code})'
    if path:
      name = path[len(self.directory) + 1 :] if path.startswith(self.directory + '/') else path
      # Named as in the finished checkpoint: no temporary-directory marks, no TensorStore lock.
      name = re.sub(re.escape(_TMP_MARK) + r'[^/]*|\.__lock$', '', name)
      what += f' writing {name}'
    intact = [s for s in steps_before if s != step]
    if intact:
      state = f'the checkpoint of step {max(intact)} is intact'
      rerun = 'rerun the same command to resume from it'
    else:
      state = 'there is no earlier checkpoint'
      rerun = 'rerun the same command to start again'
    message = f'saving the checkpoint of step {step} to {self.directory} failed{free}: {what}; '
    message += f'{state}; {_ERRNO_HINTS.get(code, "fix that")} and {rerun}'
    if not_removed:
      message += f' (could not remove the partial checkpoint: {"; ".join(not_removed)})'
    return message

  def data_state(self, step: int) -> dict | None:
    """The data positions saved with `step` (None for a checkpoint saved without them)."""
    if not (epath.Path(self.directory) / str(step) / 'data').exists():
      return None
    restored = self._manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
    return restored['data']

  def saved_config(self, step: int | None = None) -> dict:
    step = self.latest_step() if step is None else step
    restored = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return restored['config']

  def restore(
    self, abstract_state: Any, step: int | None = None, ignore: Sequence[str] = ()
  ) -> Any:
    """Restores `state` at `step` (default: latest) into the given abstract tree.

    abstract_state: pytree of `jax.ShapeDtypeStruct` with `.sharding` set.
    ignore: architecture keys not to compare (LAYOUT_KEYS when `abstract_state` already has
      the saved layout).
    Raises IncompatibleCheckpointError when the saved architecture differs.
    """
    step = self._check_restorable(step, ignore)
    restored = self._manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_as_tree(abstract_state)))
    )
    state = restored['state']
    if dataclasses.is_dataclass(abstract_state):
      state = type(abstract_state)(**state)
    return state

  def _check_restorable(self, step: int | None, ignore: Sequence[str] = ()) -> int:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    diff = architecture_diff(_complete(self.saved_config(step)), _complete(self.config), ignore)
    if diff:
      raise IncompatibleCheckpointError(
        f'checkpoint {self.directory}/{step} was written by a different architecture:\n  '
        + '\n  '.join(diff)
      )
    return step

  def saved_fields(self, step: int) -> set[str]:
    """Top-level fields of the state saved at `step` (e.g. {'step', 'params', 'ema_params'})."""
    path = epath.Path(self.directory) / str(step) / 'state'
    metadata = ocp.PyTreeCheckpointHandler().metadata(path)
    return set(getattr(metadata, 'tree', metadata).keys())

  def restore_subtree(self, abstract: Any, fields: Sequence[str], step: int | None = None) -> Any:
    """One field of the saved state, read alone (nothing else is loaded from disk).

    abstract: pytree of `jax.ShapeDtypeStruct` (with `.sharding`) of that field.
    fields: candidates in order of preference; the first one the checkpoint holds is restored
    (e.g. ('ema_params', 'params') for evaluation weights).
    """
    step = self._check_restorable(step)
    saved = self.saved_fields(step)
    field = next((f for f in fields if f in saved), None)
    if field is None:
      raise KeyError(
        f'checkpoint {self.directory}/{step} holds none of {list(fields)} (it has {sorted(saved)})'
      )
    restore_args = ocp.checkpoint_utils.construct_restore_args({field: abstract})
    restored = self._manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
          item={field: abstract}, restore_args=restore_args, partial_restore=True
        )
      ),
    )
    return restored['state'][field]

  def restore_readable(
    self, read: Callable[[int], Any], step: int | None = None, strict: bool = False
  ) -> tuple[Any, int, list[int]]:
    """`read(step)` at `step`, or (step None) at the newest checkpoint that can be read.

    A checkpoint that cannot be read (truncated or missing files) is reported loudly with its
    step and the reason, and the next older one is tried; with `strict`, or an explicit
    `step`, the first failure is raised instead. A checkpoint of another architecture is
    always refused (IncompatibleCheckpointError).
    Returns (what read returned, its step, the newer steps that were damaged).
    """
    steps = [step] if step is not None else sorted(self.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    if step is not None and step not in self.all_steps():
      raise FileNotFoundError(
        f'no checkpoint of step {step} in {self.directory}; it has steps {self.all_steps()}'
      )
    damaged: list[int] = []
    for s in steps:
      try:
        return read(s), s, damaged
      except IncompatibleCheckpointError:
        raise
      except Exception as e:  # pylint: disable=broad-except  (orbax/TensorStore raise many types)
        message = f'checkpoint {self.directory}/{s} is damaged and cannot be read: {_reason(e)}'
        if strict or step is not None:
          older = [t for t in self.all_steps() if t < s]
          hint = f' (older checkpoints: steps {older})' if older else ''
          raise DamagedCheckpointError(message + hint) from e
        print(f'WARNING: {message}; falling back to the next older checkpoint', flush=True)
        damaged.append(s)
    raise DamagedCheckpointError(
      f'no readable checkpoint in {self.directory}: steps {damaged} are all damaged'
    )

  def set_aside(self, steps: Sequence[int], why: str) -> None:
    """Moves checkpoints out of the run (to `<checkpoints>_set_aside/<why>-<step>`), so a
    resumed run can save those steps again and keep-last-N never counts them; kept on disk
    for inspection."""
    if not steps:
      return
    if jax.process_index() == 0:
      root = epath.Path(self.directory + '_set_aside')
      root.mkdir(parents=True, exist_ok=True)
      for s in steps:
        target = root / f'{why}-{s}'
        if target.exists():
          target.rmtree()
        (epath.Path(self.directory) / str(s)).rename(target)
        print(f'[checkpoint] moved step {s} ({why}) to {target}', flush=True)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      multihost_utils.sync_global_devices('checkpoint_set_aside')
    self._manager.reload()

  def close(self) -> None:
    """Waits for the save in flight (raising its CheckpointSaveError), then closes orbax."""
    try:
      self.wait()
    except BaseException:
      with contextlib.suppress(Exception):
        self._manager.close()
      raise
    self._manager.close()


def read_workdir_config(workdir: str) -> dict:
  """The config.json a trainer wrote into its workdir (local or gs://)."""
  path = fileio.join(workdir, 'config.json')
  if not fileio.exists(path):
    raise FileNotFoundError(
      f'{path} not found: {workdir} is not a training workdir (train one with '
      f'`python -m magvit_jax.train --config=... --workdir={workdir}`)'
    )
  return json.loads(fileio.read_text(path))


def write_workdir_config(workdir: str, config: Any) -> None:
  """Writes the run's config as `<workdir>/config.json` (process 0 only; atomic locally)."""
  if jax.process_index() != 0:
    return
  fileio.makedirs(workdir)
  fileio.write_text_atomic(
    fileio.join(workdir, 'config.json'), json.dumps(config.to_dict(), indent=2, sort_keys=True)
  )

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

import dataclasses
import json
import os
from typing import Any, Callable, Sequence

import jax
import orbax.checkpoint as ocp
from etils import epath

from magvit_jax import fileio
from magvit_jax.config_schema import STAGES, with_defaults

# Config sections that define parameter shapes: a checkpoint is only
# restorable into a run whose values here are identical.
ARCHITECTURE_KEYS = ('stage', 'model')


class IncompatibleCheckpointError(ValueError):
  pass


class DamagedCheckpointError(RuntimeError):
  """A checkpoint (or every checkpoint) of a run cannot be read."""


def _reason(error: BaseException) -> str:
  """The first line of an orbax / TensorStore error, short enough for one log line."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  text = lines[0] if lines else type(error).__name__
  return text if len(text) <= 240 else text[:237] + '...'


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


def architecture_diff(saved: dict, current: dict) -> list[str]:
  """Lines 'key: saved=... current=...' for every architecture key that differs."""
  lines = []
  for top in ARCHITECTURE_KEYS:
    a = _flatten(saved.get(top, {}), f'{top}.')
    b = _flatten(current.get(top, {}), f'{top}.')
    for key in sorted(set(a) | set(b)):
      va, vb = a.get(key, '<absent>'), b.get(key, '<absent>')
      if isinstance(va, (list, tuple)):
        va = list(va)
      if isinstance(vb, (list, tuple)):
        vb = list(vb)
      if va != vb:
        lines.append(f'{key}: checkpoint={va!r} config={vb!r}')
  return lines


class Checkpointer:
  """Thin wrapper of `ocp.CheckpointManager` for one training run.

  Args:
    directory: `<workdir>/checkpoints`.
    config: the run's config as a JSON-able dict (saved with every step).
    max_to_keep: how many recent checkpoints to keep.
  """

  def __init__(self, directory: str, config: dict, max_to_keep: int = 3):
    # Local paths are made absolute (orbax wants that); 'gs://...' stays as it is.
    self.directory = directory if fileio.is_remote(directory) else os.path.abspath(directory)
    self.config = config
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
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
    """
    items = dict(
      state=ocp.args.StandardSave(_as_tree(state)), config=ocp.args.JsonSave(self.config)
    )
    if data_state is not None:
      items['data'] = ocp.args.JsonSave(data_state)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    self._manager.wait_until_finished()

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

  def restore(self, abstract_state: Any, step: int | None = None) -> Any:
    """Restores `state` at `step` (default: latest) into the given abstract tree.

    abstract_state: pytree of `jax.ShapeDtypeStruct` with `.sharding` set.
    Raises IncompatibleCheckpointError when the saved architecture differs.
    """
    step = self._check_restorable(step)
    restored = self._manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_as_tree(abstract_state)))
    )
    state = restored['state']
    if dataclasses.is_dataclass(abstract_state):
      state = type(abstract_state)(**state)
    return state

  def _check_restorable(self, step: int | None) -> int:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    diff = architecture_diff(_complete(self.saved_config(step)), _complete(self.config))
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
    self._manager.wait_until_finished()
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

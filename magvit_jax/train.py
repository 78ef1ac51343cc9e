r"""Training entry point; the stage is chosen by the config.

  python -m magvit_jax.train --config=configs/vqgan_imagenet.py:digits --workdir=runs/vqgan_digits
  python -m magvit_jax.train --config=configs/maskgit_imagenet.py:digits \
      --config.tokenizer_workdir=runs/vqgan_digits --workdir=runs/maskgit_digits

Re-running the same command resumes from the latest checkpoint in --workdir.
Overrides of keys that do not exist in the config are rejected.

Multi-host (TPU pod slices, several GPU hosts, one process per GPU): add
`--multihost` (or set MAGVIT_MULTIHOST=1) on every process; with
`--coordinator_address/--num_processes/--process_id` those are passed to
`jax.distributed.initialize`, else JAX detects them (TPU VMs, SLURM, MPI).
See launch/README.md.

SIGTERM (preemption, TPU maintenance): the loop saves a checkpoint of the
current step at the next step boundary, logs "preempted at step N, checkpoint
saved" and this command exits with status 0; re-run it to resume.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app
from absl import flags
from absl import logging

from magvit_jax import cli_errors
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Config file (path[:variant]).', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and samples.')
_MULTIHOST = flags.DEFINE_bool(
  'multihost',
  False,
  'Call jax.distributed.initialize before training (also: env '
  'MAGVIT_MULTIHOST=1). Needed on every process of a multi-host / multi-process job.',
)
_COORDINATOR = flags.DEFINE_string(
  'coordinator_address',
  None,
  "With --multihost: 'host:port' of process 0 (default: auto-detected on TPU VMs / SLURM / MPI).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
  'num_processes', None, 'With --multihost: number of processes (default: detected).'
)
_PROCESS_ID = flags.DEFINE_integer(
  'process_id', None, 'With --multihost: index of this process (default: detected).'
)
_RESTORE_STEP = flags.DEFINE_integer(
  'restore_step',
  None,
  'Resume from this checkpoint step (later ones are set aside); default: the newest readable.',
)
_STRICT_RESTORE = flags.DEFINE_bool(
  'strict_restore',
  False,
  'Refuse to start when the newest checkpoint is damaged, instead of falling back to the next '
  'older readable one.',
)
flags.mark_flags_as_required(['config', 'workdir'])


def quiet_library_logs() -> None:
  """Orbax and TFDS log every file they touch at INFO; keep warnings and our own lines."""
  logging.set_verbosity(logging.WARNING)


def run(config, workdir: str):
  """Dispatches to the trainer of `config.stage`."""
  if config.stage == 'tokenizer':
    from magvit_jax.trainers import tokenizer as trainer
  elif config.stage == 'transformer':
    from magvit_jax.trainers import transformer as trainer
  else:
    raise ValueError(f"config.stage={config.stage!r}: expected 'tokenizer' or 'transformer'")
  return trainer.train_and_evaluate(
    config, workdir, restore_step=_RESTORE_STEP.value, strict_restore=_STRICT_RESTORE.value
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  quiet_library_logs()
  from magvit_jax import parallel  # pylint: disable=g-import-not-at-top
  from magvit_jax.trainers import loop  # pylint: disable=g-import-not-at-top

  parallel.initialize_distributed(
    _MULTIHOST.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
  )
  try:
    run(cli_errors.config_value(_CONFIG), _WORKDIR.value)
  except loop.Preempted as e:
    # A clean stop: the checkpoint of e.step is complete; re-running resumes from it.
    print(
      f'Exiting after preemption at step {e.step}; re-run the same command to resume.', flush=True
    )


if __name__ == '__main__':
  cli_errors.run(main)

r"""Training entry point; the stage is chosen by the config.

  python -m magvit_jax.train --config=configs/vqgan_imagenet.py:digits --workdir=runs/vqgan_digits
  python -m magvit_jax.train --config=configs/maskgit_imagenet.py:digits \
      --config.tokenizer_workdir=runs/vqgan_digits --workdir=runs/maskgit_digits

Re-running the same command resumes from the latest checkpoint in --workdir.
Overrides of keys that do not exist in the config are rejected.
"""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (path[:variant]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and samples.')
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
  return trainer.train_and_evaluate(config, workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  quiet_library_logs()
  run(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)

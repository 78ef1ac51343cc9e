"""Test-session set-up: 8 fake CPU devices, a private TFDS data_dir, quiet logs.

XLA_FLAGS must be set before jax is imported, so this runs first. Tests that
want one device build a mesh over `jax.devices()[:1]`.
"""

import os

os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault(
  'MAGVIT_DATA_DIR',
  os.path.join(os.path.expanduser('~'), '.cache', 'magvit_jax', 'tensorflow_datasets'),
)

from absl import logging  # pylint: disable=g-import-not-at-top

logging.set_verbosity(logging.WARNING)

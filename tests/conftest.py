"""Test-session set-up: 8 fake CPU devices, a private TFDS data_dir, quiet logs.

XLA_FLAGS must be set before jax is imported, so this runs first. Tests that
want one device build a mesh over `jax.devices()[:1]`.
"""

import os

os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Tests are compile-bound on CPU: XLA's cheap optimisation level compiles ~1.5x faster. Also
# inherited by the subprocess tests (multi-host, preemption, CLIs, notebooks). Set it to 0 to
# test the fully optimised programs.
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
os.environ.setdefault(
  'MAGVIT_DATA_DIR',
  os.path.join(os.path.expanduser('~'), '.cache', 'magvit_jax', 'tensorflow_datasets'),
)

from absl import logging  # pylint: disable=g-import-not-at-top

logging.set_verbosity(logging.WARNING)

"""SIGTERM during training: checkpoint at the stopping step, exit 0, exact resume.

The interrupted run goes through the real CLI (`magvit_jax.train.main`) in a
subprocess, with a tiny tokenizer config written to tmp_path; a small driver
slows each step down so that the SIGTERM reliably lands mid-run. The resumed
and the uninterrupted runs are in-process (both on the 8 fake CPU devices of
tests/conftest.py, the mesh of the subprocess too).
"""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from magvit_jax import checkpoint as ckpt_lib
from magvit_jax import metrics_writer as mw
from magvit_jax.config_loader import load_config
from magvit_jax.trainers import tokenizer as tokenizer_trainer
import tiny_configs  # tests/tiny_configs.py

# Trains or runs subprocesses: the full suite (CI) runs it, the fast lane (-m 'not slow') skips it.
pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 8

# The CLI, with every training batch delayed by $STEP_DELAY seconds.
DRIVER = textwrap.dedent("""\
    import os
    import sys
    import time

    from absl import app

    from magvit_jax import train
    from magvit_jax.trainers import tokenizer

    delay = float(os.environ.get('STEP_DELAY', '0'))
    class SlowBatches(tokenizer.MixedBatches):
      def __next__(self):
        time.sleep(delay)
        return super().__next__()

    tokenizer.MixedBatches = SlowBatches
    app.run(train.main)
    """)


def _write_files(tmp_path):
  # The only checkpoints: at preemption and at the end.
  config = tiny_configs.write_config_file(
    tmp_path / 'tiny_tokenizer.py', 'vqgan', steps=STEPS, checkpoint_every=100
  )
  driver = tmp_path / 'driver.py'
  driver.write_text(DRIVER)
  return config, driver


def _start(driver, config, workdir, delay):
  env = dict(os.environ, STEP_DELAY=str(delay), PYTHONPATH=str(REPO))
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
  return subprocess.Popen(
    [sys.executable, str(driver), f'--config={config}', f'--workdir={workdir}'],
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _losses(workdir):
  metrics = mw.read_metrics(str(workdir))
  return np.asarray([metrics[s]['loss'] for s in sorted(metrics) if 'loss' in metrics[s]])


def _last_step(workdir):
  steps = [s for s, m in mw.read_metrics(str(workdir)).items() if 'loss' in m]
  return max(steps, default=0)


def test_sigterm_saves_checkpoint_and_resume_is_exact(tmp_path):
  config, driver = _write_files(tmp_path)
  workdir = tmp_path / 'run'

  # 1. Interrupted run: SIGTERM once step >= 3 is logged.
  proc = _start(driver, config, workdir, delay=0.3)
  deadline = time.time() + 60
  while _last_step(workdir) < 3:
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    assert time.time() < deadline, 'no step 3 within 60 s'
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  output, _ = proc.communicate(timeout=60)
  assert proc.returncode == 0, output[-3000:]
  stopped = _last_step(workdir)
  assert 3 <= stopped < STEPS, output[-3000:]
  assert f'preempted at step {stopped}, checkpoint saved' in output, output[-3000:]
  checkpointer = ckpt_lib.Checkpointer(str(workdir / 'checkpoints'), {})
  assert checkpointer.latest_step() == stopped
  checkpointer.close()
  assert 'held-out PSNR' not in output  # no final evaluation after a preemption

  # 2. Resume to the end and 3. an uninterrupted run, in this process (saves two start-ups).
  tokenizer_trainer.train_and_evaluate(load_config(str(config)), str(workdir))
  reference = tmp_path / 'reference'
  tokenizer_trainer.train_and_evaluate(load_config(str(config)), str(reference))
  expected = _losses(reference)
  assert len(expected) == STEPS
  np.testing.assert_allclose(_losses(workdir), expected, rtol=1e-6, atol=0)

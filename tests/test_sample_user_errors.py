"""More user errors of the CLIs, each one line `error: ...` and exit code 2 (see test_cli_errors.py).

A class id out of range is caught from the workdir's config.json alone, before any checkpoint
is read, so the workdir here holds only that file; a step count below 1 is refused when the
flags are parsed.
"""

import json
import pathlib
import subprocess
import sys

import pytest

from magvit_jax.config_loader import load_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def _one_line_error(*args: str) -> str:
  proc = subprocess.run(
    [sys.executable, '-m', *args], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr[-3000:]
  return lines[0]


@pytest.fixture
def config_only_workdir(tmp_path):
  """A transformer workdir with its config.json (as `write_workdir_config` writes it) only."""
  workdir = tmp_path / 'maskgit'
  workdir.mkdir()
  config = load_config('maskgit_imagenet.py:digits')
  (workdir / 'config.json').write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))
  return str(workdir)


@pytest.mark.parametrize('classes', ['3,12', '-1'])
def test_sample_class_out_of_range(classes, config_only_workdir, tmp_path):
  line = _one_line_error(
    'magvit_jax.sample',
    f'--workdir={config_only_workdir}',
    f'--output={tmp_path}/out',
    f'--classes={classes}',
  )
  assert line == (
    f'error: --classes={classes}: class ids must be in [0, 10) '
    f'(model.num_classes=10 of {config_only_workdir})'
  )
  assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('steps', ['0', '-3'])
def test_sample_steps_must_be_positive(steps, tmp_path):
  line = _one_line_error(
    'magvit_jax.sample', f'--workdir={tmp_path}', f'--output={tmp_path}/out', f'--steps={steps}'
  )
  assert line == f'error: flag --steps={steps}: {steps} is not a positive integer'


def test_train_negative_num_train_steps(tmp_path):
  line = _one_line_error(
    'magvit_jax.train',
    f'--workdir={tmp_path}',
    '--config=configs/vqgan_imagenet.py:digits',
    '--config.num_train_steps=-1',
  )
  assert 'config.num_train_steps=-1: expected a positive integer' in line

"""A user's mistake ends in one line on stderr and exit code 2, no traceback; --verbose shows it."""

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, '-m', *args], cwd=REPO, capture_output=True, text=True, timeout=300
  )


@pytest.mark.parametrize(
  'args,expected',
  [
    (
      ['--config=configs/maskgit_imagenet.py:digits', '--config.model.nonexistnt=3'],
      "config key 'model.nonexistnt' does not exist; did you mean",
    ),
    (
      ['--config=configs/maskgit_imagenet.py:digit'],
      'maskgit_imagenet.py:digit does not exist; variants of maskgit_imagenet.py: imagenet, digits',
    ),
    (['--config=configs/maskgit_imagenett.py'], 'did you mean maskgit_imagenet.py'),
    (
      ['--config=configs/vqgan_imagenet.py:digits', '--config.num_train_steps=0'],
      'config.num_train_steps=0: expected a positive integer',
    ),
  ],
  ids=['unknown-key', 'unknown-variant', 'unknown-file', 'bad-value'],
)
def test_train_user_errors_are_one_line(args, expected, tmp_path):
  proc = _run('magvit_jax.train', f'--workdir={tmp_path}', *args)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr[-3000:]
  assert expected in lines[0]


def test_sample_on_a_directory_that_is_no_workdir(tmp_path):
  proc = _run('magvit_jax.sample', f'--workdir={tmp_path}', f'--output={tmp_path}/out')
  assert proc.returncode == 2
  assert proc.stderr.strip() == (
    f'error: {tmp_path}/config.json not found: {tmp_path} is not a training workdir (train one '
    f'with `python -m magvit_jax.train --config=... --workdir={tmp_path}`)'
  )


def test_verbose_shows_the_traceback(tmp_path):
  proc = _run('magvit_jax.sample', f'--workdir={tmp_path}', f'--output={tmp_path}/o', '--verbose')
  assert proc.returncode != 0 and 'Traceback (most recent call last)' in proc.stderr

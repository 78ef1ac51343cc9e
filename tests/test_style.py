"""The repository is formatted and linted as pyproject.toml configures (ruff, 2-space Google style)."""

import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
  exe = shutil.which('ruff') or str(pathlib.Path(sys.executable).parent / 'ruff')
  if not pathlib.Path(exe).exists():
    pytest.fail("ruff is not installed: pip install -e '.[test]'")
  return [exe]


@pytest.mark.parametrize('args', [['format', '--check'], ['check']], ids=['format', 'lint'])
def test_ruff_clean(args):
  proc = subprocess.run(_ruff() + args + ['.'], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, (
    f'`ruff {" ".join(args)} .` failed (fix with `ruff format . && ruff check --fix .`):\n'
    + proc.stdout[-3000:]
    + proc.stderr[-2000:]
  )

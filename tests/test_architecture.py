"""The shape of the house: who may import whom, and what the pure packages pull in.

- Nothing in `magvit_jax/` outside `trainers/` imports `trainers/`, except the two commands
  that train (`train.py`, `demo.py`): trainers use the library, never the reverse.
- `models/`, `quantizers/`, `masking/`, `decoding/` and `losses/` import neither TensorFlow nor
  orbax (what a Colab user imports stays light; TF only in `data/`).
- The `sample` and `evaluate` CLIs import together in one process (no flag defined twice).
"""

import ast
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'magvit_jax'
# Commands that train, or compile the training step (compile_check).
TRAINING_COMMANDS = {'magvit_jax/train.py', 'magvit_jax/demo.py', 'magvit_jax/compile_check.py'}
PURE = ('models', 'quantizers', 'masking', 'decoding', 'losses')


def _imports(path: pathlib.Path) -> set[str]:
  """Absolute module names imported anywhere in the file (also inside functions)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names.add(node.module)
      names.update(f'{node.module}.{alias.name}' for alias in node.names)
  return names


def test_only_trainers_and_training_commands_import_trainers():
  offenders = []
  for path in sorted(PACKAGE.rglob('*.py')):
    rel = path.relative_to(REPO).as_posix()
    if rel.startswith('magvit_jax/trainers/') or rel in TRAINING_COMMANDS:
      continue
    bad = sorted(n for n in _imports(path) if n.startswith('magvit_jax.trainers'))
    if bad:
      offenders.append(f'{rel}: {bad}')
  assert not offenders, 'library modules import the trainers:\n' + '\n'.join(offenders)


def test_the_import_scan_sees_trainer_imports():
  """The scan above would catch an import inside a function (the way CLIs import lazily)."""
  assert 'magvit_jax.trainers.tokenizer' in _imports(PACKAGE / 'train.py')


_PROBE = """
import importlib, pkgutil, sys
import magvit_jax
for pkg in {pure!r}:
  base = importlib.import_module('magvit_jax.' + pkg)
  for info in pkgutil.walk_packages(base.__path__, base.__name__ + '.'):
    importlib.import_module(info.name)
heavy = sorted({{m.split('.')[0] for m in sys.modules}} & {{'tensorflow', 'tensorflow_datasets', 'orbax'}})
print('HEAVY', heavy)
"""


def test_pure_packages_import_neither_tensorflow_nor_orbax():
  proc = subprocess.run(
    [sys.executable, '-c', _PROBE.format(pure=PURE)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'HEAVY []' in proc.stdout, proc.stdout[-2000:]


@pytest.mark.parametrize('order', [('sample', 'evaluate'), ('evaluate', 'sample')])
def test_sample_and_evaluate_import_in_one_process(order):
  code = '; '.join(f'import magvit_jax.{m}' for m in order) + "; print('OK')"
  proc = subprocess.run(
    [sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0 and 'OK' in proc.stdout, proc.stderr[-3000:]

"""Weight converters read .npz / .safetensors by default; a pickled .pt/.pth only when asked.

No torch needed: a .pt is refused by its name before it is opened, so the refused files here
are not real torch files.
"""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

from magvit_jax.losses import convert_vgg16
from magvit_jax.metrics import convert_weights as cw

REPO = pathlib.Path(__file__).resolve().parents[1]
ARRAYS = {'conv.weight': np.arange(6, dtype=np.float32).reshape(2, 3), 'bn.bias': np.ones(2)}


def _fake_pickle(tmp_path, name='weights.pt'):
  path = tmp_path / name
  path.write_bytes(b'not a torch file; must not be opened')
  return str(path)


@pytest.mark.parametrize('read', [cw.read_state_dict, convert_vgg16.read_state_dict])
def test_npz_is_read_by_default(read, tmp_path):
  path = str(tmp_path / 'w.npz')
  np.savez(path, **{f'module.{k}': v for k, v in ARRAYS.items()})  # nn.DataParallel names
  state = read(path)
  assert sorted(state) == sorted(ARRAYS)
  for k, v in ARRAYS.items():
    np.testing.assert_array_equal(state[k], v)


@pytest.mark.parametrize('name', ['weights.pt', 'weights.pth', 'WEIGHTS.PTH'])
def test_pickle_files_are_refused_without_opt_in(name, tmp_path):
  path = _fake_pickle(tmp_path, name)
  for read in (cw.read_state_dict, convert_vgg16.read_state_dict):
    with pytest.raises(ValueError, match='--allow_pickle') as e:
      read(path)
    assert 'arbitrary code' in str(e.value) and 'np.savez(' in str(e.value)
  with pytest.raises(ValueError, match='--allow_pickle'):
    cw.convert_i3d(path, str(tmp_path / 'out.npz'))
  with pytest.raises(ValueError, match='--allow_pickle'):
    convert_vgg16.convert_file(path, str(tmp_path / 'out.npz'))
  assert not (tmp_path / 'out.npz').exists()


def test_opt_in_reads_with_torch(tmp_path, monkeypatch):
  path = _fake_pickle(tmp_path)
  monkeypatch.setitem(sys.modules, 'torch', None)  # As if torch were not installed.
  with pytest.raises(ImportError, match='pip install torch'):
    cw.read_state_dict(path, allow_pickle=True)
  monkeypatch.undo()
  torch = pytest.importorskip('torch')
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in ARRAYS.items()}, path)
  state = convert_vgg16.read_state_dict(path, allow_pickle=True)
  np.testing.assert_array_equal(state['conv.weight'], ARRAYS['conv.weight'])


def test_unknown_extension_is_refused(tmp_path):
  path = tmp_path / 'weights.bin'
  path.write_bytes(b'')
  for read in (cw.read_state_dict, convert_vgg16.read_state_dict):
    with pytest.raises(ValueError, match=r"unknown .* '\.bin'; expected one of .npz, .safetensors"):
      read(str(path))
  # A missing file of a known kind says how to get it.
  with pytest.raises(FileNotFoundError, match='i3d_pretrained_400.pt'):
    cw.convert_i3d(str(tmp_path / 'nope.npz'), str(tmp_path / 'out.npz'))


def test_safetensors_without_the_package_names_it(tmp_path, monkeypatch):
  path = tmp_path / 'w.safetensors'
  path.write_bytes(b'')
  monkeypatch.setitem(sys.modules, 'safetensors', None)
  monkeypatch.setitem(sys.modules, 'safetensors.numpy', None)
  with pytest.raises(ImportError, match='pip install safetensors'):
    cw.read_state_dict(str(path))


def test_safetensors_round_trip(tmp_path):
  st = pytest.importorskip('safetensors.numpy')
  path = str(tmp_path / 'w.safetensors')
  st.save_file({k: np.ascontiguousarray(v) for k, v in ARRAYS.items()}, path)
  for read in (cw.read_state_dict, convert_vgg16.read_state_dict):
    state = read(path)
    for k, v in ARRAYS.items():
      np.testing.assert_array_equal(state[k], v)


def test_cli_refuses_pickle_in_one_line(tmp_path):
  src = _fake_pickle(tmp_path, 'i3d_pretrained_400.pt')
  proc = subprocess.run(
    [sys.executable, '-m', 'magvit_jax.metrics.convert_weights', 'i3d', src, f'{tmp_path}/o.npz'],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr[-3000:]
  assert '--allow_pickle' in lines[0] and 'Traceback' not in proc.stderr
  assert not (tmp_path / 'o.npz').exists()


def test_vgg16_cli_refuses_pickle_in_one_line(tmp_path, capsys):
  """`python -m magvit_jax.losses.convert_vgg16` is `sys.exit(main())`: the same in-process."""
  src = _fake_pickle(tmp_path, 'vgg16-397923af.pth')
  assert convert_vgg16.main(['--input', src, '--output', f'{tmp_path}/o.npz']) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and err.startswith('error: ') and '--allow_pickle' in err
  with pytest.raises(ValueError, match='--allow_pickle'):  # --verbose: the exception itself
    convert_vgg16.main(['--input', src, '--output', f'{tmp_path}/o.npz', '--verbose'])
  # The flag's help says what it risks.
  with pytest.raises(SystemExit):
    convert_vgg16.main(['--help'])
  assert 'arbitrary code' in ' '.join(capsys.readouterr().out.split())

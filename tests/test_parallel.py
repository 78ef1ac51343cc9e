"""Mesh construction, batch checks, and 8-device == 1-device train steps for both stages."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from magvit_jax import parallel
import tiny_configs  # tests/tiny_configs.py
from magvit_jax.models import tokenizers
from magvit_jax.models.transformer import build_transformer
from magvit_jax.trainers import tokenizer as tok_trainer
from magvit_jax.trainers import train_state as ts
from magvit_jax.trainers import transformer as tf_trainer

# Trains or runs subprocesses: the full suite (CI) runs it, the fast lane (-m 'not slow') skips it.
pytestmark = pytest.mark.slow

NUM_STEPS = 2
ATOL = RTOL = 1e-5
LR = 0.5


def test_eight_fake_devices():
  assert jax.device_count() == 8


# ----------------------------------------------------------------------------- make_mesh


def test_make_mesh_all_data():
  mesh = parallel.make_mesh({'data': -1})
  assert dict(mesh.shape) == {'data': 8, 'fsdp': 1, 'tensor': 1}
  assert mesh.axis_names == ('data', 'fsdp', 'tensor')
  assert mesh.devices.size == 8


def test_make_mesh_three_axes():
  mesh = parallel.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 2, 'tensor': 2}
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))
  assert parallel.data_parallel_size(mesh) == 4
  mesh = parallel.make_mesh({'data': 2, 'tensor': -1})
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 1, 'tensor': 4}


def test_make_mesh_subset_of_devices():
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])
  assert dict(mesh.shape) == {'data': 1, 'fsdp': 1, 'tensor': 1}
  mesh = parallel.make_mesh({'data': -1, 'fsdp': 2}, devices=jax.devices()[:4])
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 2, 'tensor': 1}


@pytest.mark.parametrize(
  'shape, match',
  [
    ({'data': -1, 'fsdp': -1}, 'at most one axis'),
    ({'data': 2, 'model': 4}, 'unknown axes'),
    ({'data': 3}, 'needs 3 devices'),
    ({'data': 2, 'fsdp': 2}, 'needs 4 devices'),
    ({'data': -1, 'fsdp': 3}, 'not divisible by 3'),
  ],
)
def test_make_mesh_errors(shape, match):
  with pytest.raises(ValueError, match=match) as e:
    parallel.make_mesh(shape)
  assert 'config.mesh' in str(e.value)


def test_make_mesh_num_slices_one_is_unchanged():
  """num_slices=1 (the default, absent in old configs) reshapes jax.devices() in order."""
  for shape in ({'data': 2, 'fsdp': 2, 'tensor': 2}, {'data': -1, 'fsdp': 4}):
    old = parallel.make_mesh(shape)
    new = parallel.make_mesh({**shape, 'num_slices': 1})
    assert new.shape == old.shape
    assert [d.id for d in new.devices.flat] == [d.id for d in old.devices.flat]
    assert [d.id for d in old.devices.flat] == list(range(8))


def _interleaved_slice(device):
  """Fake slice id: even ids in slice 0, odd in slice 1 (a plain reshape would mix slices)."""
  return device.id % 2


@pytest.mark.parametrize(
  'shape',
  [
    {'data': 2, 'fsdp': 4},
    {'data': 4, 'fsdp': 2},
    {'data': -1, 'fsdp': 2, 'tensor': 2},
    {'data': 2, 'fsdp': -1},
  ],
)
def test_make_mesh_multislice_data_spans_slices(shape):
  mesh = parallel.make_mesh({**shape, 'num_slices': 2}, slice_of=_interleaved_slice)
  assert mesh.axis_names == ('data', 'fsdp', 'tensor') and mesh.devices.size == 8
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))
  per_slice = mesh.shape['data'] // 2
  for i in range(mesh.shape['data']):
    # Every fsdp x tensor block (and each run of data / num_slices rows) stays in one slice.
    assert {_interleaved_slice(d) for d in mesh.devices[i].flat} == {i // per_slice}


def test_make_mesh_multislice_four_slices():
  slice_of = lambda d: 3 - d.id // 2  # Slices numbered against device order.
  mesh = parallel.make_mesh({'data': 4, 'fsdp': 2, 'num_slices': 4}, slice_of=slice_of)
  assert [[d.id for d in row.flat] for row in mesh.devices] == [[6, 7], [4, 5], [2, 3], [0, 1]]


@pytest.mark.parametrize(
  'shape, slice_of, match',
  [
    (
      {'data': 1, 'fsdp': 8, 'num_slices': 2},
      _interleaved_slice,
      r'config\.mesh\.data=1 must be a multiple of config\.mesh\.num_slices=2',
    ),
    (
      {'data': -1, 'num_slices': 3},
      _interleaved_slice,
      r'config\.mesh\.num_slices=3: 8 devices are not divisible by 3',
    ),
    (
      {'data': 4, 'fsdp': 2, 'num_slices': 2},
      lambda d: d.id % 4,
      r'from 4 slice\(s\).*set config\.mesh\.num_slices=4',
    ),
    (
      {'data': 2, 'fsdp': 4, 'num_slices': 2},
      lambda d: int(d.id < 5),
      r'config\.mesh\.num_slices=2.*slice 0: 3, slice 1: 5',
    ),
    ({'data': 2, 'fsdp': 4, 'num_slices': 2}, None, r'no `slice_index`.*num_slices=1'),
    ({'data': 2, 'fsdp': 4, 'num_slices': 0}, None, r'config\.mesh\.num_slices must be >= 1'),
  ],
)
def test_make_mesh_multislice_errors(shape, slice_of, match):
  with pytest.raises(ValueError, match=match):
    parallel.make_mesh(shape, slice_of=slice_of)


def test_base_config_mesh_has_num_slices():
  from magvit_jax import config_schema  # pylint: disable=g-import-not-at-top

  mesh_config = config_schema.base_config('tokenizer').mesh
  assert mesh_config.num_slices == 1
  assert dict(parallel.make_mesh(mesh_config).shape) == {'data': 8, 'fsdp': 1, 'tensor': 1}


def test_check_batch_size():
  mesh = parallel.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  assert parallel.check_batch_size(16, mesh) == 16  # single process
  with pytest.raises(ValueError, match=r'config\.batch_size=6 .*data\*fsdp=4'):
    parallel.check_batch_size(6, mesh)
  with pytest.raises(ValueError, match=r'config\.eval_batch_size=10'):
    parallel.check_batch_size(10, mesh, field='config.eval_batch_size')


def test_shard_batch_layout():
  mesh = parallel.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  images = np.arange(8 * 2 * 2 * 3, dtype=np.uint8).reshape(8, 2, 2, 3)
  out = parallel.shard_batch({'image': images, 'label': np.arange(8, dtype=np.int32)}, mesh)
  np.testing.assert_array_equal(np.asarray(out['image']), images)
  assert out['image'].shape == (8, 2, 2, 3)
  # Split 4 ways over the batch axis, replicated over 'tensor'.
  assert {s.data.shape for s in out['image'].addressable_shards} == {(2, 2, 2, 3)}
  assert len(out['label'].sharding.device_set) == 8


# ----------------------------------------------------------------------------- train steps


def _meshes():
  return {
    'one': parallel.make_mesh({'data': 1}, devices=jax.devices()[:1]),
    'eight': parallel.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2}),
  }


def _batch(size=16):
  rng = np.random.default_rng(0)
  return {
    'image': rng.integers(0, 256, (16, size, size, 3), dtype=np.uint8),
    'label': rng.integers(0, 10, (16,), dtype=np.int32),
  }


def _optimizer_overrides(config):
  # Constant lr from step 0 (no warmup), so both steps really move the params.
  config.optimizer.update(dict(lr=LR, warmup_steps=0, decay='constant'))


def _optimizer(opt_config):
  """The trainer's clip + decoupled weight decay + lr schedule, but SGD-momentum, not Adam.

  Adam's first update is lr * g / (|g| + eps), i.e. ~lr * sign(g): an element whose gradient
  is ~0 (e.g. attention key biases, whose gradient vanishes analytically because softmax
  is shift-invariant) or ~eps turns a 1e-7 all-reduce rounding difference between layouts
  into an O(lr) parameter difference. Measured with the trainer's AdamW at lr 1e-3: up to
  3e-5 on the tokenizer, so 1e-5 agreement of *parameters* is only a meaningful
  sharding check with an update that is linear in the gradient.
  """
  return optax.chain(
    optax.clip_by_global_norm(opt_config.grad_clip_norm),
    optax.add_decayed_weights(opt_config.weight_decay),
    optax.sgd(ts.learning_rate_schedule(opt_config), momentum=0.9),
  )


def _run(step, init_params, tx, mesh, config, image_size=16):
  init_fn, shardings, _ = ts.state_layout(init_params, tx, mesh, config.logical_axis_rules)
  step_fn = jax.jit(
    step,
    in_shardings=(shardings, parallel.batch_sharding(mesh)),
    out_shardings=(shardings, parallel.replicated(mesh)),
  )
  metrics = []
  state = jax.jit(init_fn, out_shardings=shardings)(jax.random.PRNGKey(int(config.seed)))
  init = jax.device_get(state.params)
  batch = parallel.shard_batch(_batch(image_size), mesh)
  for _ in range(NUM_STEPS):
    state, m = step_fn(state, batch)
    metrics.append(jax.device_get(m))
  return {'init': init, 'state': state, 'params': jax.device_get(state.params), 'metrics': metrics}


def _assert_trees_close(a, b):
  flat_a = jax.tree_util.tree_leaves_with_path(a)
  flat_b = jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (path, x), (_, y) in zip(flat_a, flat_b):
    np.testing.assert_allclose(
      np.asarray(x), np.asarray(y), atol=ATOL, rtol=RTOL, err_msg=jax.tree_util.keystr(path)
    )


def _numpy_params(shapes):
  """Random frozen-tokenizer params without compiling an init (fan-in scaled kernels)."""
  rng = np.random.default_rng(42)

  def make(path, x):
    name = jax.tree_util.keystr(path)
    if name.endswith("['scale']"):
      return np.ones(x.shape, np.float32)
    if name.endswith("['bias']"):
      return np.zeros(x.shape, np.float32)
    fan_in = int(np.prod(x.shape[:-1]))
    return (rng.standard_normal(x.shape) / np.sqrt(fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(make, shapes)


@pytest.fixture(scope='module')
def transformer_runs():
  config = tiny_configs.maskgit(tokenizer_workdir='')
  _optimizer_overrides(config)
  assert config.masking.class_dropout > 0  # the class-dropout path is exercised too
  tokenizer = tokenizers.build_tokenizer(tiny_configs.vqgan().model)
  assert tokenizer.downsample_factor == 4  # 16x16 images -> 4x4 = 16 tokens
  tok_params = _numpy_params(
    nn.unbox(jax.eval_shape(tokenizer.init, jax.random.PRNGKey(42), jnp.zeros((1, 16, 16, 3))))[
      'params'
    ]
  )
  model = build_transformer(config.model, 16)
  assert model.dropout_rate == 0.1
  tx = _optimizer(config.optimizer)

  def init_params(rng):
    return model.init(rng, jnp.zeros((1, 16), jnp.int32), jnp.zeros((1,), jnp.int32))['params']

  runs = {}
  for name, mesh in _meshes().items():
    params = jax.device_put(tok_params, parallel.replicated(mesh))
    step = tf_trainer.make_train_step(
      model, tokenizers.make_tokenize_fn(tokenizer), params, tx, config
    )
    runs[name] = _run(step, init_params, tx, mesh, config)
  return runs


@pytest.fixture(scope='module')
def tokenizer_runs():
  config = tiny_configs.vqgan()
  # One halving (8x8 images -> 4x4 tokens) keeps the compile small.
  config.model.channel_multipliers = (1, 2)
  _optimizer_overrides(config)
  model = tokenizers.build_tokenizer(config.model)
  tx = _optimizer(config.optimizer)

  def init_params(rng):
    return model.init(rng, jnp.zeros((1, 8, 8, 3), jnp.float32))['params']

  runs = {}
  meshes = {
    'one': parallel.make_mesh({'data': 1}, devices=jax.devices()[:1]),
    'eight': parallel.make_mesh({'data': 8}),
  }
  for name, mesh in meshes.items():
    step = tok_trainer.make_train_step(model, tx, config.losses)
    runs[name] = _run(step, init_params, tx, mesh, config, image_size=8)
  return runs


def _check_runs(runs, loss_keys):
  one, eight = runs['one'], runs['eight']
  # Same seed -> the same initial params whatever the layout.
  _assert_trees_close(one['init'], eight['init'])
  for m1, m8 in zip(one['metrics'], eight['metrics']):
    assert set(m1) == set(m8)
    for k in loss_keys:
      assert np.isfinite(m1[k])
    for k in m1:
      np.testing.assert_allclose(m8[k], m1[k], atol=ATOL, rtol=RTOL, err_msg=k)
  _assert_trees_close(one['params'], eight['params'])
  # The steps really changed the params (else the comparison above would be vacuous).
  moved = [
    np.abs(np.asarray(a) - np.asarray(b)).max()
    for a, b in zip(
      jax.tree_util.tree_leaves(one['init']), jax.tree_util.tree_leaves(one['params'])
    )
  ]
  assert max(moved) > 1e-3
  assert int(one['state'].step) == int(eight['state'].step) == NUM_STEPS


def test_transformer_step_8_devices_equals_1(transformer_runs):
  _check_runs(transformer_runs, ['loss'])
  m = transformer_runs['one']['metrics']
  assert m[0]['loss'] != m[1]['loss']
  np.testing.assert_allclose(m[0]['lr'], LR)


def test_transformer_params_really_sharded(transformer_runs):
  params = transformer_runs['eight']['state'].params
  kernel = params['block_0']['mlp_in']['kernel']  # ('embed', 'mlp') -> ('fsdp', 'tensor')
  assert kernel.shape == (32, 64)
  assert len(kernel.sharding.device_set) == 8
  assert kernel.addressable_shards[0].data.shape == (16, 32)
  query = params['block_1']['attn']['query']['kernel']  # ('embed', 'heads', 'kv')
  assert query.addressable_shards[0].data.shape == (16, 1, 16)
  # Optimizer moments follow the params' layout.
  mu = transformer_runs['eight']['state'].opt_state
  mu_leaves = [x for x in jax.tree_util.tree_leaves(mu) if getattr(x, 'shape', None) == (32, 64)]
  assert mu_leaves and all(x.addressable_shards[0].data.shape == (16, 32) for x in mu_leaves)
  one = transformer_runs['one']['state'].params['block_0']['mlp_in']['kernel']
  assert len(one.sharding.device_set) == 1


def test_tokenizer_step_8_devices_equals_1(tokenizer_runs):
  _check_runs(tokenizer_runs, ['loss', 'l2_loss', 'vq_loss'])
  m = tokenizer_runs['one']['metrics']
  assert m[1]['loss'] < m[0]['loss'] or m[0]['loss'] != m[1]['loss']
  conv = tokenizer_runs['eight']['state'].params['encoder']['conv_in']['kernel']
  assert len(conv.sharding.device_set) == 8  # replicated over the data axis

"""Transformer scaling options: nn.scan over layers, remat policies, bf16 compute, attention
kernels and activation sharding constraints (magvit_jax/models/transformer.py).

Each option must leave the model's function unchanged: scanned (with stacked params) equals
unrolled, remat equals no remat, 'einsum' attention equals jax.nn.dot_product_attention, and
constrained activations equal unconstrained ones. Compiles are shared through caches: the tests
are compile-bound on CPU.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magvit_jax import config_schema, parallel
from magvit_jax.models import transformer as tfm

SIZES = dict(
  codebook_size=16,
  num_classes=4,
  seq_len=8,
  hidden_size=32,
  num_layers=2,
  num_heads=4,
  mlp_dim=64,
  dropout_rate=0.0,
)
BATCH = 8  # Divisible by the 8 fake devices of the sharding tests.


def _model(**kw):
  return tfm.Transformer(**{**SIZES, **kw})


@functools.lru_cache(maxsize=None)
def _inputs():
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, SIZES['codebook_size'] + 1, (BATCH, SIZES['seq_len']))
  labels = rng.integers(0, SIZES['num_classes'] + 1, (BATCH,))
  return tokens.astype(np.int32), labels.astype(np.int32)  # numpy: safe to cache


def _abstract_params(model):
  """Boxed abstract params of model.init (no compile)."""
  return jax.eval_shape(lambda: model.init(jax.random.key(0), *_inputs()))['params']


@functools.lru_cache(maxsize=None)
def _params(norm_layout='pre', scan_layers=False):
  """Random params of the unrolled pre-LN model (numpy, no compile; weights ~N(0, 0.1) so that
  activations and gradients are O(0.01..1)), in the layout of the model asked for."""
  rng = np.random.default_rng(0)
  abstract = nn.unbox(_abstract_params(_model()))
  params = jax.tree_util.tree_map_with_path(
    lambda path, x: (rng.normal(size=x.shape) * 0.1 + (path[-1].key == 'scale')).astype(x.dtype),
    abstract,
  )
  if norm_layout == 'post':  # Same params without the final LayerNorm.
    params = {k: v for k, v in params.items() if k != 'ln_final'}
  return tfm.stack_layers(params) if scan_layers else params


def _loss_and_grads(model, params):
  tokens, labels = _inputs()
  targets = tokens % SIZES['codebook_size']

  def loss(p):
    logits = model.apply({'params': p}, tokens, labels)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], -1)), logits

  (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return value, logits, grads


@functools.lru_cache(maxsize=None)
def _run(**kw):
  """(loss, logits, grads) of _model(**kw) at `_params` in its layout; each model once."""
  model = _model(**kw)
  return _loss_and_grads(model, _params(model.norm_layout, model.scan_layers))


def _assert_trees_close(a, b, atol):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


def test_defaults_keep_the_unrolled_params_tree():
  params = _params()
  assert sorted(k for k in params if k.startswith('block')) == ['block_0', 'block_1']
  defaults = tfm.model_defaults()
  assert (defaults['scan_layers'], defaults['remat_policy']) == (False, 'none')
  assert (defaults['attention_impl'], defaults['dtype']) == ('auto', 'float32')
  # remat adds no scope: the unrolled tree is unchanged by it.
  remat = nn.unbox(_abstract_params(_model(remat_policy='full')))
  assert jax.tree_util.tree_structure(remat) == jax.tree_util.tree_structure(params)


def test_stack_unstack_round_trip_and_logical_layers_axis():
  unrolled = _params()
  stacked = tfm.stack_layers(unrolled)
  assert 'blocks' in stacked and 'block_0' not in stacked
  assert stacked['blocks']['mlp_in']['kernel'].shape == (2, 32, 64)
  # The stacked tree has exactly the scanned (and scanned + remat) model's shapes.
  shapes = lambda t: jax.tree_util.tree_map(lambda x: x.shape, nn.unbox(t))  # noqa: E731
  for policy in ('none', 'full'):
    scan_params = _abstract_params(_model(scan_layers=True, remat_policy=policy))
    assert shapes(stacked) == shapes(scan_params)
  # The layer axis is the logical axis 'layers' (no rule: replicated).
  names = scan_params['blocks']['attn']['query']['kernel'].names
  assert names == ('layers', 'embed', 'heads', 'kv')
  _assert_trees_close(tfm.unstack_layers(stacked), unrolled, atol=0)
  # Wrapped in {'params': ...} too; mixed layouts are refused.
  assert 'blocks' in tfm.stack_layers({'params': unrolled})['params']
  with pytest.raises(ValueError, match='not one layout'):
    tfm.unstack_layers({**stacked, 'block_0': unrolled['block_0']})


def test_train_state_converts_between_layouts():
  """A whole TrainState (params, AdamW moments) of one layout converts to the other's."""
  from magvit_jax.trainers import train_state as ts  # pylint: disable=g-import-not-at-top

  c = config_schema.base_config('transformer')
  tx = ts.make_optimizer(c.optimizer)
  mesh = parallel.make_mesh({'data': -1}, jax.devices()[:1])

  def abstract_state(model):
    init = lambda rng: model.init(rng, *_inputs())['params']  # noqa: E731
    return ts.state_layout(init, tx, mesh, c.logical_axis_rules)[2]

  def layout(tree):
    flat, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, [(x.shape, x.dtype) for x in flat]

  unrolled, scanned = abstract_state(_model()), abstract_state(_model(scan_layers=True))
  assert layout(jax.eval_shape(tfm.stack_layers, unrolled)) == layout(scanned)
  assert layout(jax.eval_shape(tfm.unstack_layers, scanned)) == layout(unrolled)


@pytest.mark.parametrize('norm_layout,policy', [('pre', 'none'), ('post', 'full')])
def test_scan_equals_unrolled(norm_layout, policy):
  """Scanned (and rematerialised) with stacked params == unrolled: outputs and gradients."""
  loss0, logits0, grads0 = _run(norm_layout=norm_layout)
  loss1, logits1, grads1 = _run(norm_layout=norm_layout, scan_layers=True, remat_policy=policy)
  assert grads0['block_0']['mlp_in']['kernel'].std() > 1e-3  # Not vacuous.
  np.testing.assert_allclose(logits1, logits0, atol=1e-5, rtol=0)
  np.testing.assert_allclose(loss1, loss0, atol=1e-5, rtol=0)
  _assert_trees_close(tfm.unstack_layers(grads1), grads0, atol=1e-5)


@pytest.mark.parametrize('scan_layers,policy', [(False, 'full'), (True, 'dots_saveable')])
def test_remat_changes_nothing(scan_layers, policy):
  _, logits0, grads0 = _run(scan_layers=scan_layers)
  _, logits1, grads1 = _run(scan_layers=scan_layers, remat_policy=policy)
  np.testing.assert_allclose(logits1, logits0, atol=1e-6, rtol=0)
  _assert_trees_close(grads1, grads0, atol=1e-6)


def test_scan_remat_with_dropout_trains():
  model = _model(
    scan_layers=True, remat_policy='dots_with_no_batch_dims_saveable', dropout_rate=0.1
  )
  params = _params(scan_layers=True)
  tokens, labels = _inputs()

  def loss(p, rng):
    logits = model.apply({'params': p}, tokens, labels, deterministic=False, rngs={'dropout': rng})
    return jnp.mean(logits**2)

  grad_fn = jax.jit(jax.grad(loss))
  g1, g2 = grad_fn(params, jax.random.key(1)), grad_fn(params, jax.random.key(2))
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(g1))
  assert not np.allclose(g1['blocks']['mlp_in']['kernel'], g2['blocks']['mlp_in']['kernel'])


def test_bf16_policy_keeps_params_and_grads_float32():
  bf16 = _model(dtype=jnp.bfloat16, scan_layers=True)
  init_dtypes = {x.dtype for x in jax.tree_util.tree_leaves(nn.unbox(_abstract_params(bf16)))}
  assert init_dtypes == {jnp.dtype(jnp.float32)}
  params = _params(scan_layers=True)
  tokens, labels = _inputs()
  grads = jax.eval_shape(
    jax.grad(lambda p: jnp.mean(bf16.apply({'params': p}, tokens, labels) ** 2)), params
  )
  assert {x.dtype for x in jax.tree_util.tree_leaves(grads)} == {jnp.dtype(jnp.float32)}
  logits = jax.jit(bf16.apply)({'params': params}, tokens, labels)
  assert logits.dtype == jnp.float32
  # Close to the float32 model with the same params (loose: bf16 has an 8-bit mantissa).
  _, logits32, _ = _run()
  np.testing.assert_allclose(logits, logits32, atol=0.1, rtol=0)
  assert np.abs(np.asarray(logits) - np.asarray(logits32)).mean() < 0.02
  # The blocks run in bf16: their matmuls and the residual stream between them (traced only).
  apply = functools.partial(
    _model(dtype=jnp.bfloat16).apply, capture_intermediates=True, mutable=['intermediates']
  )
  _, inter = jax.eval_shape(apply, {'params': _params()}, *_inputs())
  block = inter['intermediates']['block_1']
  assert block['attn']['query']['__call__'][0].dtype == jnp.bfloat16
  assert block['mlp_in']['__call__'][0].dtype == jnp.bfloat16
  assert block['__call__'][0].dtype == jnp.bfloat16


def test_attention_impls_agree():
  """Every implementation == jax.nn.dot_product_attention (the default): values and gradients.

  The model's attention is bidirectional without a mask (no padding), as here.
  """
  q, k, v = jax.random.normal(jax.random.key(3), (3, BATCH, 9, 4, 8))
  ct = jax.random.normal(jax.random.key(4), q.shape)

  @functools.partial(jax.jit, static_argnums=3)
  def value_and_vjp(q, k, v, impl):
    out, vjp = jax.vjp(lambda *a: tfm.attention(*a, impl), q, k, v)
    return out, vjp(ct)

  want = value_and_vjp(q, k, v, 'auto')
  np.testing.assert_allclose(want[0], jax.nn.dot_product_attention(q, k, v), atol=1e-5, rtol=0)
  for impl in ('xla', 'einsum'):
    _assert_trees_close(value_and_vjp(q, k, v, impl), want, atol=1e-5)
  with pytest.raises(ValueError, match='attention_impl'):
    tfm.attention(q, k, v, 'flash')


def _constraints(text):
  return [ln for ln in text.splitlines() if 'sharding_constraint' in ln]


def test_activation_constraints_use_the_rule_table():
  assert len(jax.devices()) == 8
  mesh = parallel.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  model, params = _model(), _params()
  args = (params,) + _inputs()

  def fwd(p, t, y):
    return model.apply({'params': p}, t, y)

  assert not _constraints(jax.jit(fwd).lower(*args).as_text())
  with parallel.activation_sharding(mesh, config_schema.LOGICAL_AXIS_RULES):
    # A new function: jit's trace cache does not key on the context.
    f = jax.jit(lambda p, t, y: model.apply({'params': p}, t, y))
    constraints = _constraints(f.lower(*args).as_text())
    got = f(*args)
  np.testing.assert_allclose(got, _run()[1], atol=1e-5, rtol=0)
  # Embeddings output + one per block, batch over ('data', 'fsdp') from the `batch` rule;
  # `embed` -> 'fsdp' yields to it.
  assert len(constraints) == 1 + SIZES['num_layers'], constraints
  assert all('[{"data", "fsdp"}, {}, {}]' in ln for ln in constraints), constraints
  # The `batch` rule decides: batch over 'tensor' only, and embed takes 'fsdp' then.
  rules = [['batch', 'tensor']] + [r for r in config_schema.LOGICAL_AXIS_RULES if r[0] != 'batch']
  with parallel.activation_sharding(mesh, rules):
    text = jax.jit(lambda p, t, y: model.apply({'params': p}, t, y)).lower(*args).as_text()
  constraints = _constraints(text)
  assert len(constraints) == 1 + SIZES['num_layers'], constraints
  assert all('[{"tensor"}, {}, {"fsdp"}]' in ln for ln in constraints), constraints


def test_activation_constraints_scanned_sharded_params():
  mesh = parallel.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  rules = config_schema.LOGICAL_AXIS_RULES
  model = _model(scan_layers=True, remat_policy='full')
  shardings = parallel.logical_shardings(_abstract_params(model), mesh, rules)
  # The stacked 'layers' axis (no rule) is replicated; 'mlp' -> 'tensor' as when unrolled.
  spec = shardings['blocks']['mlp_in']['kernel'].spec
  assert spec == jax.sharding.PartitionSpec(None, 'fsdp', 'tensor')
  params = jax.device_put(_params(scan_layers=True), shardings)
  with parallel.activation_sharding(mesh, rules):
    f = jax.jit(lambda p, t, y: model.apply({'params': p}, t, y))
    assert _constraints(f.lower(params, *_inputs()).as_text())
    got = f(params, *_inputs())
  np.testing.assert_allclose(got, _run()[1], atol=1e-5, rtol=0)


def _transformer_config(**model):
  c = config_schema.base_config('transformer')
  c.tokenizer_workdir = '/tmp/unused'
  c.model.update(model)
  return c


def test_config_options_flow_through_and_are_validated():
  c = _transformer_config(
    scan_layers=True, remat_policy='dots_saveable', dtype='bfloat16', attention_impl='cudnn'
  )
  config_schema.validate_config(c, 'transformer')
  model = tfm.build_transformer(c.model, 16)
  assert (model.scan_layers, model.remat_policy, model.attention_impl) == (
    True,
    'dots_saveable',
    'cudnn',
  )
  assert model.dtype == jnp.bfloat16
  # A config.json written before these fields existed builds the default model.
  new = ('scan_layers', 'remat_policy', 'attention_impl')
  old = {k: v for k, v in tfm.model_defaults().items() if k not in new}
  assert tfm.build_transformer(old, 16) == tfm.build_transformer(tfm.model_defaults(), 16)
  bad = [
    (dict(remat_policy='sometimes'), 'model.remat_policy'),
    (dict(dtype='int8'), 'model.dtype'),
    (dict(attention_impl='flash'), 'model.attention_impl'),
    (dict(attention_impl='cudnn'), 'model.attention_impl'),  # needs bf16
  ]
  for fields, field in bad:
    c = _transformer_config(**fields)
    with pytest.raises(ValueError, match=field):
      config_schema.validate_config(c, 'transformer')
  # Type checks of the ConfigDict stop a non-bool scan_layers before validation.
  with pytest.raises(TypeError):
    _transformer_config().model.scan_layers = 1


def test_weight_decay_treats_scanned_and_unrolled_layouts_alike():
  """The decay mask skips the stacked layer axis: one AdamW step with weight decay and zero
  gradients moves the scanned params exactly as it moves the unrolled ones (norm scales and
  biases, 2-D once stacked, are not decayed)."""
  from magvit_jax.trainers import train_state as ts  # pylint: disable=g-import-not-at-top

  opt = config_schema.base_config('transformer').optimizer
  opt.update(dict(weight_decay=0.1, grad_clip_norm=0.0, warmup_steps=0))
  tx = ts.make_optimizer(opt)

  def step(params):
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    return jax.tree_util.tree_map(lambda u: np.asarray(u), updates)

  unrolled = step(_params())
  scanned = step(_params(scan_layers=True))
  want = tfm.stack_layers(unrolled)
  for (path, got), expected in zip(
    jax.tree_util.tree_leaves_with_path(scanned), jax.tree_util.tree_leaves(want)
  ):
    np.testing.assert_array_equal(got, expected, err_msg=jax.tree_util.keystr(path))
  assert not np.any(scanned['blocks']['ln_attn']['scale'])  # [layers, hidden]: not decayed.

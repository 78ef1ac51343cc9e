"""Parity with the official MAGVIT transformer (google-research/magvit `maskgvt`, simplified BERT).

tests/data/magvit_transformer_parity.npz was made by tools/parity/magvit_transformer.py from the
official code: a tiny model with random weights in two layouts (single-task class-conditional;
multi-task with segment embeddings, inputs masked by the official 'cond->input' masking), its
inputs and its logits. Regenerate with
`python tools/make_parity_fixtures.py --magvit=PATH --only=magvit_transformer`.
"""

import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

from magvit_jax.config_loader import load_config
from magvit_jax.config_schema import transformer_model, validate_config
from magvit_jax.convert import magvit_transformer as conv
from magvit_jax.convert import official_tree
from magvit_jax.decoding import maskgit as decoding
from magvit_jax.masking.commit import TASKS
from magvit_jax.models.transformer import build_transformer

FIXTURE = pathlib.Path(__file__).resolve().parent / 'data' / 'magvit_transformer_parity.npz'
LAYOUTS = ('single', 'multi')


@pytest.fixture(scope='module')
def data():
  with np.load(FIXTURE) as z:
    return {k: z[k] for k in z.files}


def _layout(data, layout, **model_overrides):
  """(official cfg, official tree, our model config, our model, converted params)."""
  cfg = json.loads(str(data[f'{layout}/config_json']))
  prefix = f'{layout}/'
  tree = official_tree.nest({k[len(prefix) :]: v for k, v in data.items() if k.startswith(prefix)})
  tree = {'params': tree['params']}
  n = int(np.prod(cfg['latent_shape']))
  base = {'model': transformer_model(codebook_size=cfg['codebook_size'], num_classes=1)}
  model_cfg = dict(conv.official_transformer_config(tree, base, n)['model'], dropout_rate=0.0)
  model_cfg.update(model_overrides)
  params = conv.transformer_params_from_official(tree, model_cfg, inpainting_token=True)
  return cfg, tree, model_cfg, build_transformer(model_cfg, n), params


def _our_inputs(data, layout, model_cfg, cfg, **kw):
  return conv.official_inputs_to_ours(
    data[f'{layout}/input_ids'],
    model_cfg,
    data.get(f'{layout}/segment_ids'),
    official_classes=cfg['num_classes'],
    **kw,
  )


@pytest.mark.parametrize('layout', LAYOUTS)
def test_logits_match_official(data, layout):
  cfg, _, model_cfg, model, params = _layout(data, layout)
  multi = layout == 'multi'
  assert model_cfg['num_tasks'] == (len(TASKS) if multi else 0)
  assert model_cfg['num_segments'] == (2 if multi else 0)
  assert model_cfg['num_classes'] == max(cfg['num_classes'], 1)
  inputs = _our_inputs(data, layout, model_cfg, cfg, inpainting_token=True)
  K = cfg['codebook_size']
  ids = data[f'{layout}/input_ids']
  assert int(np.sum(inputs['tokens'] == K)) == int(np.sum(ids == -1)) > 0
  if multi:
    assert 0 < inputs['segments'].sum() < inputs['segments'].size
    # Official tokens FP, FI, OUTPAINTING, INPAINTING, FULL_GENERATION -> our first task of each.
    assert [TASKS[t] for t in inputs['tasks']] == ['FP', 'FI', 'OPC', 'IPC', 'CG']
  else:
    assert inputs['labels'].tolist() == [0, 2, 1, cfg['num_classes']]  # the last is UNCOND
  ours = jax.jit(lambda p, x: model.apply({'params': p}, **x))(params, inputs)
  want = conv.official_logits_to_ours(data[f'{layout}/logits'], model_cfg)
  assert ours.shape == want.shape == (ids.shape[0], ids.shape[1] - (2 if multi else 1), K)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(want), rtol=1e-5, atol=1e-5)
  back_ids, back_segments = conv.ours_to_official_inputs(
    inputs, model_cfg, official_classes=cfg['num_classes'], inpainting_token=True
  )
  np.testing.assert_array_equal(back_ids, ids)
  np.testing.assert_array_equal(back_segments, data.get(f'{layout}/segment_ids', back_segments))
  if multi:  # The segment ids matter: without them the logits are other.
    inputs0 = dict(inputs, segments=np.zeros_like(inputs['segments']))
    other = jax.jit(lambda p, x: model.apply({'params': p}, **x))(params, inputs0)
    assert np.abs(np.asarray(other) - np.asarray(want)).max() > 1e-3


def test_decoder_matches_official_masked_counts_and_greedy_tokens(data):
  """The official parallel decoder (greedy: top-1 sampling, no mask noise) on the single-task
  model vs ours at temperature 0 and choice temperature 0, from an all-masked map.

  T = 8 steps over 32 tokens: no step has ``cos(pi r / 2) * 32`` an integer, where the official
  float32 floor and ours (with its 1e-5 tolerance, docs/mask_schedules.md) differ by one
  token on purpose (at T = 6, r = 2/3: 15 official, 16 ours)."""
  cfg, _, model_cfg, model, params = _layout(data, 'single')
  K, C = cfg['codebook_size'], cfg['num_classes']
  before = data['decode/masked_before_step']  # [T, b]: unknown tokens in each step's input
  labels = jnp.asarray(data['decode/labels'])
  assert labels.tolist()[-1] == C  # the last example unconditional: UNCOND = our null label
  want = data['decode/tokens']  # [b, t, h, w]
  b, n = want.shape[0], int(np.prod(want.shape[1:]))
  out = decoding.decode(
    lambda p, tokens, labels: model.apply({'params': p}, tokens, labels),
    params,
    jax.random.PRNGKey(0),
    jnp.full((b, n), K, jnp.int32),
    labels,
    mask_token_id=K,
    num_steps=before.shape[0],
    schedule='cosine',
    choice_temperature=0.0,
    temperature=0.0,
  )
  ours_after = np.asarray(jnp.sum(out.history == K, axis=-1))  # [T, b]
  assert (before[0] == n).all()
  np.testing.assert_array_equal(ours_after[:-1], before[1:])
  assert (ours_after[-1] == 0).all()
  np.testing.assert_array_equal(np.asarray(out.tokens), want.reshape(b, n))


def test_scanned_layers_give_the_official_logits(data):
  cfg, _, model_cfg, model, params = _layout(data, 'multi', scan_layers=True)
  assert 'blocks' in params and 'block_0' not in params
  inputs = _our_inputs(data, 'multi', model_cfg, cfg, inpainting_token=True)
  ours = jax.jit(lambda p, x: model.apply({'params': p}, **x))(params, inputs)
  want = conv.official_logits_to_ours(data['multi/logits'], model_cfg)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_task_rows_are_the_official_task_tokens(data):
  _, tree, model_cfg, _, _ = _layout(data, 'multi')
  word = tree['params']['BertEmbed_0']['word_embeddings']['embedding']
  v = word.shape[0]
  for inpainting_token in (False, True):
    params = conv.transformer_params_from_official(
      tree, model_cfg, inpainting_token=inpainting_token
    )
    rows = np.asarray(params['task_embedding'])
    tokens = conv.task_tokens(inpainting_token)
    for i, task in enumerate(TASKS):
      np.testing.assert_array_equal(rows[i], word[v + tokens[task]], err_msg=task)
  assert conv.task_tokens()['IPC'] == conv.task_tokens()['OPC'] == -6  # task_registry default
  assert conv.task_tokens(True)['IPD'] == -7 and conv.task_tokens()['CG'] == -3
  assert conv.task_tokens()['FP'] == conv.task_tokens()['CFP'] == -4
  # Without inpainting_token the official INPAINTING token (-7) has no COMMIT task.
  cfg = json.loads(str(data['multi/config_json']))
  with pytest.raises(ValueError, match=r'task tokens \[-7\] have no COMMIT task'):
    _our_inputs(data, 'multi', model_cfg, cfg)
  # An official model without classes: every class row (and the null one) is UNCOND.
  params = conv.transformer_params_from_official(tree, model_cfg)
  np.testing.assert_array_equal(np.asarray(params['class_embedding'])[0], word[64])
  np.testing.assert_array_equal(np.asarray(params['class_embedding'])[1], word[64])
  np.testing.assert_array_equal(np.asarray(params['token_embedding'])[64], word[-1])  # MASK


def test_wrong_tree_or_shape_is_refused_naming_the_key(data):
  _, tree, model_cfg, _, _ = _layout(data, 'single')
  p = tree['params']
  bad = {**p, 'BertMlmLayer_0': {**p['BertMlmLayer_0'], 'mlm_bias': {'bias': np.zeros(5)}}}
  with pytest.raises(
    ValueError, match=r'params/BertMlmLayer_0/mlm_bias/bias: expected shape \(69,\)'
  ):
    conv.transformer_params_from_official({'params': bad}, model_cfg)
  missing = {k: v for k, v in p.items() if k != 'BertLayer_1'}
  with pytest.raises(ValueError, match='missing keys: .*BertLayer_1/BertMlp_0/layer_output/bias'):
    conv.transformer_params_from_official(missing, model_cfg)
  extra = {**p, 'BertLayer_2': p['BertLayer_1']}
  with pytest.raises(ValueError, match=r"unexpected keys: \['BertLayer_2/BertAttention_0"):
    conv.transformer_params_from_official(extra, model_cfg)
  # A segment table the config does not have, and a config with a segment table the tree lacks.
  seg = {'segment_embeddings': {'embedding': np.zeros((2, 32), np.float32)}}
  with_seg = {**p, 'BertEmbed_0': {**p['BertEmbed_0'], **seg}}
  with pytest.raises(ValueError, match='unexpected keys: .*BertEmbed_0/segment_embeddings'):
    conv.transformer_params_from_official(with_seg, model_cfg)
  with pytest.raises(ValueError, match='missing keys: .*BertEmbed_0/segment_embeddings'):
    conv.transformer_params_from_official(tree, dict(model_cfg, num_segments=2))
  with pytest.raises(ValueError, match='norm_layout'):
    conv.transformer_params_from_official(tree, dict(model_cfg, norm_layout='pre'))
  with pytest.raises(ValueError, match='official model has 3 classes .* model.num_classes=5'):
    conv.transformer_params_from_official(tree, dict(model_cfg, num_classes=5))
  with pytest.raises(ValueError, match=r'position_embeddings/embedding: expected shape \(65, 32\)'):
    conv.transformer_params_from_official(tree, model_cfg, seq_len=64)
  with pytest.raises(ValueError, match='num_tasks=3'):
    conv.transformer_params_from_official(tree, dict(model_cfg, num_tasks=3))
  # The single-task tree read as multi-task: its word table is 15 rows short.
  with pytest.raises(ValueError, match='word_embeddings/embedding has 69 rows'):
    conv.transformer_params_from_official(tree, dict(model_cfg, num_tasks=len(TASKS)))


def test_load_official_tree_reads_msgpack_and_npz(data, tmp_path):
  _, tree, model_cfg, _, params = _layout(data, 'single')
  path = tmp_path / 'checkpoint_1'
  path.write_bytes(serialization.to_bytes(tree))
  npz = tmp_path / 'params.npz'
  np.savez(npz, **official_tree.flatten(tree))
  for p in (path, npz):
    got = conv.transformer_params_from_official(conv.load_official_tree(p), model_cfg)
    np.testing.assert_array_equal(
      np.asarray(got['block_1']['mlp_in']['kernel']),
      np.asarray(params['block_1']['mlp_in']['kernel']),
    )
  (tmp_path / 'junk').write_bytes(b'\xc1 not msgpack')
  with pytest.raises(ValueError, match='junk: not a flax msgpack'):
    conv.load_official_tree(tmp_path / 'junk')


def test_segments_option_of_our_transformer(data):
  """num_segments: the segment table adds one row per position; 0 = the model without it."""
  cfg, _, model_cfg, seg, p = _layout(data, 'multi')
  inputs = _our_inputs(data, 'multi', model_cfg, cfg, inpainting_token=True)
  plain_cfg = dict(model_cfg, num_segments=0)
  plain = build_transformer(plain_cfg, seg.seq_len)
  shapes = jax.eval_shape(plain.init, jax.random.PRNGKey(0), *plain.dummy_inputs())['params']
  assert 'segment_embedding' not in shapes and p['segment_embedding'].shape == (2, 32)
  assert len(seg.dummy_inputs()) == 4 and seg.dummy_inputs()[3].shape == (1, seg.seq_len)
  segments = np.zeros_like(inputs['segments'])
  segments[0, 3] = 1  # One condition token in example 0 only.
  apply = jax.jit(lambda p, s: seg.apply({'params': p}, **dict(inputs, segments=s)))
  a, b = apply(p, segments), apply(p, np.zeros_like(segments))
  assert np.abs(np.asarray(a[0] - b[0])).max() > 1e-4
  np.testing.assert_array_equal(np.asarray(a[1:]), np.asarray(b[1:]))
  # Segment 0 everywhere = the model without segments, row 0 added to every position.
  no_seg = {k: v for k, v in inputs.items() if k != 'segments'}
  c = jax.jit(lambda p: plain.apply({'params': p}, **no_seg))(_without_segments(p))
  np.testing.assert_allclose(np.asarray(c), np.asarray(b), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='num_segments=2: segments must be'):
    seg.apply({'params': p}, **no_seg)
  with pytest.raises(ValueError, match='segments must be'):
    seg.apply({'params': p}, **dict(inputs, segments=segments[:, :-1]))
  with pytest.raises(ValueError, match='segments were given but the model has num_segments=0'):
    plain.apply({'params': p}, **dict(inputs, segments=segments))


def _without_segments(p):
  out = {k: v for k, v in p.items() if k != 'segment_embedding'}
  out['position_embedding'] = p['position_embedding'] + p['segment_embedding'][0]
  return out


def test_num_segments_is_validated():
  config = load_config('magvit_ucf101.py:B')
  config.tokenizer_workdir = 'runs/tok'
  config.model.num_segments = 2
  validate_config(config, 'transformer')
  config.model.num_segments = -1
  with pytest.raises(ValueError, match='model.num_segments=-1'):
    validate_config(config, 'transformer')


def test_official_configs_build_with_the_released_shapes(data):
  released = json.loads(str(data['released_shapes_json']))
  for name, base_arg in (
    ('ucf101_B', 'magvit_ucf101.py:B'),
    ('bair_multitask_B_segments', 'magvit_bair.py:B'),
  ):
    rc, shapes = released[name]['config'], released[name]['shapes']
    expected = conv.official_param_shapes(**rc)
    assert {f'params/{k}': tuple(v) for k, v in expected.items()} == {
      k: tuple(v) for k, v in shapes.items()
    }, name
    tree = official_tree.nest(
      {k: jax.ShapeDtypeStruct(tuple(v), jnp.float32) for k, v in shapes.items()}
    )
    base = load_config(base_arg)
    base.model.codebook_size = rc['codebook_size']
    config = conv.official_transformer_config(tree, base, rc['seq_len'])
    m = config.model
    assert (m.hidden_size, m.num_layers, m.num_heads, m.mlp_dim) == (
      rc['hidden_size'],
      rc['num_layers'],
      rc['num_heads'],
      rc['mlp_dim'],
    )
    got = jax.eval_shape(lambda t, c=config: conv.transformer_params_from_official(t, c), tree)
    model = build_transformer(m, rc['seq_len'])
    ours = jax.eval_shape(model.init, jax.random.PRNGKey(0), *model.dummy_inputs())['params']
    assert _shapes(got) == _shapes(nn.unbox(ours)), name


def _shapes(tree):
  return jax.tree_util.tree_map(lambda x: tuple(x.shape), tree)

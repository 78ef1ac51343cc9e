"""Parity with the released MaskGIT transformer (google-research/maskgit).

tests/data/maskgit_transformer_parity.npz was made by tools/parity/maskgit_transformer.py from
the official code (a tiny model with random weights, its logits and its parallel decoder);
regenerate with `python tools/make_parity_fixtures.py --maskgit=PATH --only=maskgit_transformer`.
"""

import json
import pathlib

from flax import serialization
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magvit_jax.config_loader import load_config
from magvit_jax.config_schema import validate_config
from magvit_jax.convert import maskgit_transformer as conv
from magvit_jax.convert import official_tree
from magvit_jax.decoding import maskgit as decoding
from magvit_jax.models.transformer import build_transformer

FIXTURE = pathlib.Path(__file__).resolve().parent / 'data' / 'maskgit_transformer_parity.npz'


@pytest.fixture(scope='module')
def fx():
  with np.load(FIXTURE) as z:
    data = {k: z[k] for k in z.files}
  cfg = json.loads(str(data['config_json']))
  tree = official_tree.nest({k: v for k, v in data.items() if k.startswith('params/')})
  model_cfg = load_config('maskgit_imagenet.py:official256').model.to_dict()
  model_cfg.update(
    {k: cfg[k] for k in ('codebook_size', 'num_classes', 'hidden_size', 'num_layers')},
    num_heads=cfg['num_heads'],
    mlp_dim=cfg['mlp_dim'],
    dropout_rate=0.0,
  )
  model = build_transformer(model_cfg, cfg['seq_len'])
  params = conv.transformer_params_from_official(tree, model_cfg)
  return dict(data=data, cfg=cfg, tree=tree, model_cfg=model_cfg, model=model, params=params)


def _shapes(tree):
  return jax.tree_util.tree_map(lambda x: tuple(x.shape), nn.unbox(tree))


def _apply_fn(model):
  def apply(params, tokens, labels):
    return model.apply({'params': params}, tokens, labels)

  return apply


def test_converted_params_match_our_init_tree(fx):
  model, params = fx['model'], fx['params']
  tokens = jnp.zeros((1, model.seq_len), jnp.int32)
  ours = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens, jnp.zeros((1,), jnp.int32))
  assert _shapes(params) == _shapes(ours['params'])
  assert 'ln_final' not in params  # post-LN: no final LayerNorm


def test_logits_match_official(fx):
  data, cfg, model = fx['data'], fx['cfg'], fx['model']
  K, C = cfg['codebook_size'], cfg['num_classes']
  tokens, labels = conv.official_inputs_to_ours(data['input_ids'], K, C)
  assert int(jnp.sum(tokens == K)) == int(np.sum(data['input_ids'] == -1)) > 0
  np.testing.assert_array_equal(
    np.asarray(conv.ours_to_official_inputs(tokens, labels, K)), data['input_ids']
  )
  ours = model.apply({'params': fx['params']}, tokens, labels)
  want = conv.official_logits_to_ours(data['logits'], K)
  assert ours.shape == want.shape == (4, cfg['seq_len'], K)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(want), rtol=1e-5, atol=1e-5)
  # The official mask can also be spelled K + C (the row -1 selects).
  alt = np.where(data['input_ids'] == -1, K + C, data['input_ids'])
  np.testing.assert_array_equal(np.asarray(conv.official_inputs_to_ours(alt, K, C)[0]), tokens)


def test_a_model_scanned_over_its_layers_gives_the_official_logits(fx):
  data, cfg = fx['data'], fx['cfg']
  K, C = cfg['codebook_size'], cfg['num_classes']
  model_cfg = dict(fx['model_cfg'], scan_layers=True)
  params = conv.transformer_params_from_official(fx['tree'], model_cfg)
  assert 'blocks' in params and 'block_0' not in params
  model = build_transformer(model_cfg, cfg['seq_len'])
  tokens, labels = conv.official_inputs_to_ours(data['input_ids'], K, C)
  ours = model.apply({'params': params}, tokens, labels)
  want = conv.official_logits_to_ours(data['logits'], K)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_decoder_matches_official_masked_counts_and_greedy_tokens(fx):
  data, cfg, model = fx['data'], fx['cfg'], fx['model']
  K, C, T = cfg['codebook_size'], cfg['num_classes'], cfg['num_steps']
  init, labels = conv.official_inputs_to_ours(data['decode_input_ids'], K, C)
  out = decoding.decode(
    _apply_fn(model),
    fx['params'],
    jax.random.PRNGKey(cfg['decode_seed']),
    init,
    labels,
    mask_token_id=K,
    num_steps=T,
    schedule=cfg['schedule'],
    choice_temperature=cfg['choice_temperature'],
    temperature=0.0,
  )
  # Official: unknown tokens in the input of step t (t = 0..T-1); ours: after step t.
  before = data['decode_greedy_masked_before_step']  # [T, b]
  np.testing.assert_array_equal(before, data['decode_sampled_masked_before_step'])
  ours_after = np.asarray(jnp.sum(out.history == K, axis=-1))  # [T, b]
  np.testing.assert_array_equal(np.asarray(jnp.sum(init == K, axis=-1)), before[0])
  np.testing.assert_array_equal(ours_after[:-1], before[1:])
  assert (ours_after[-1] == 0).all()
  # Greedy sampling + zero choice noise: same final tokens as the official decoder.
  want_tokens, want_labels = conv.official_inputs_to_ours(data['decode_greedy_seqs'][:, -1], K, C)
  np.testing.assert_array_equal(np.asarray(want_labels), np.asarray(labels))
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(want_tokens))


def test_wrong_shape_or_key_is_refused_by_name(fx):
  tree, model_cfg = fx['tree'], fx['model_cfg']
  params = tree['params']
  bad = {**params, 'MlmLayer_0': {**params['MlmLayer_0'], 'mlm_bias': {'bias': np.zeros(5)}}}
  with pytest.raises(ValueError, match=r'params/MlmLayer_0/mlm_bias/bias: expected shape \(27,\)'):
    conv.transformer_params_from_official({'params': bad}, model_cfg)
  missing = {k: v for k, v in params.items() if k != 'TransformerLayer_1'}
  with pytest.raises(
    ValueError, match='missing keys: .*TransformerLayer_1/Mlp_0/layer_output/bias'
  ):
    conv.transformer_params_from_official(missing, model_cfg)
  extra = {**params, 'TransformerLayer_2': params['TransformerLayer_1']}
  with pytest.raises(ValueError, match="unexpected keys: \\['TransformerLayer_2/Attention_0"):
    conv.transformer_params_from_official(extra, model_cfg)
  with pytest.raises(ValueError, match='norm_layout'):
    conv.transformer_params_from_official(tree, dict(model_cfg, norm_layout='pre'))
  with pytest.raises(ValueError, match=r'position_embeddings/embedding: expected shape \(65, 32\)'):
    conv.transformer_params_from_official(tree, model_cfg, seq_len=64)


def test_load_official_tree_reads_flax_msgpack(fx, tmp_path):
  path = tmp_path / 'maskgit_tiny_checkpoint'
  path.write_bytes(serialization.to_bytes(fx['tree']))
  tree = conv.load_official_tree(str(path))
  params = conv.transformer_params_from_official(tree, fx['model_cfg'])
  np.testing.assert_array_equal(
    np.asarray(params['block_1']['mlp_in']['kernel']),
    fx['tree']['params']['TransformerLayer_1']['Mlp_0']['intermediate_output']['kernel'],
  )
  (tmp_path / 'junk').write_bytes(b'not a checkpoint')
  with pytest.raises(ValueError, match='junk'):
    conv.load_official_tree(str(tmp_path / 'junk'))


def test_norm_layout_is_validated():
  config = load_config('maskgit_imagenet.py:official256')
  config.tokenizer_workdir = 'runs/tok'
  validate_config(config, 'transformer')
  config.model.norm_layout = 'middle'
  with pytest.raises(ValueError, match='model.norm_layout'):
    validate_config(config, 'transformer')


@pytest.mark.parametrize(
  'variant,image_size,seq_len', [('official256', 256, 256), ('official512', 512, 1024)]
)
def test_official_variant_builds_with_the_released_shapes(fx, variant, image_size, seq_len):
  released = json.loads(str(fx['data'][f'{variant}_shapes_json']))
  config = load_config(f'maskgit_imagenet.py:{variant}')
  m, rc = config.model, released['config']
  assert config.data.image_size == image_size and rc['seq_len'] == seq_len
  for key in ('codebook_size', 'num_classes', 'hidden_size', 'num_layers', 'num_heads'):
    assert m[key] == rc[key], key
  assert m.mlp_dim == rc['mlp_dim'] and m.dropout_rate == rc['dropout_rate']
  assert m.norm_layout == 'post'
  assert config.sampling.schedule == rc['mask_scheduling_method']
  assert config.sampling.choice_temperature == rc['choice_temperature']
  shapes = {k: tuple(v) for k, v in released['shapes'].items()}
  expected = conv.official_param_shapes(
    **{
      k: rc[k]
      for k in (
        'codebook_size',
        'num_classes',
        'seq_len',
        'hidden_size',
        'num_layers',
        'num_heads',
        'mlp_dim',
      )
    }
  )
  assert {f'params/{k}': v for k, v in expected.items()} == shapes
  # The converter maps the released tree (shapes only) onto exactly our model's tree.
  tree = official_tree.nest({k: jax.ShapeDtypeStruct(v, jnp.float32) for k, v in shapes.items()})
  got = jax.eval_shape(lambda t: conv.transformer_params_from_official(t, config), tree)
  model = build_transformer(config.model, seq_len)
  ours = jax.eval_shape(model.init, jax.random.PRNGKey(0), *model.dummy_inputs())
  assert _shapes(got) == _shapes(ours['params'])

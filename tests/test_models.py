"""Tests for the VQGAN tokenizer, its building blocks and the MaskGIT transformer."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magvit_jax.config_loader import load_config
from magvit_jax.models import layers, tokenizers
from magvit_jax.models.transformer import (
  Transformer,
  build_transformer,
  count_params,
  forward_flops,
)
from magvit_jax.models.vqgan import VQGAN


def _numpy_params(shapes, seed=0):
  """Random params from eval_shape shapes without compiling an init (fan-in scaled)."""
  rng = np.random.default_rng(seed)

  def make(path, x):
    name = jax.tree_util.keystr(path)
    if name.endswith("['scale']"):
      return jnp.ones(x.shape, jnp.float32)
    if name.endswith("['bias']"):
      return jnp.asarray(0.1 * rng.standard_normal(x.shape), jnp.float32)
    fan_in = int(np.prod(x.shape[:-1]))
    return jnp.asarray(rng.standard_normal(x.shape) / np.sqrt(fan_in), jnp.float32)

  return jax.tree_util.tree_map_with_path(make, nn.unbox(shapes))


# ----------------------------------------------------------------------------- VQGAN

TINY_VQGAN = dict(
  filters=16,
  channel_multipliers=(1, 2),
  num_res_blocks=1,
  embedding_dim=8,
  codebook_size=32,
  num_groups=4,
)


@pytest.fixture(scope='module')
def vqgan():
  model = VQGAN(**TINY_VQGAN)
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 16, 16, 3), minval=-1, maxval=1)
  variables = _numpy_params(jax.eval_shape(model.init, jax.random.PRNGKey(1), x))
  return model, variables, x


@pytest.mark.slow  # over 4 s on 2 cores; the full suite runs it
def test_vqgan_shapes_and_token_range(vqgan):
  model, variables, x = vqgan
  recon, aux = model.apply(variables, x)
  assert recon.shape == (2, 16, 16, 3)
  assert recon.dtype == jnp.float32
  assert aux['tokens'].shape == (2, 8, 8)
  assert aux['tokens'].dtype == jnp.int32
  t = np.asarray(aux['tokens'])
  assert t.min() >= 0 and t.max() < 32
  assert np.isfinite(np.asarray(recon)).all()
  assert model.downsample_factor == 2


def test_vqgan_encode_decode_roundtrip_equals_call(vqgan):
  model, variables, x = vqgan
  recon, aux = model.apply(variables, x)
  quantized, aux_e = model.apply(variables, x, method=VQGAN.encode)
  assert quantized.shape == (2, 8, 8, 8)
  np.testing.assert_array_equal(np.asarray(aux_e['tokens']), np.asarray(aux['tokens']))
  decoded = model.apply(variables, quantized, method=VQGAN.decode)
  np.testing.assert_allclose(np.asarray(decoded), np.asarray(recon), rtol=1e-6, atol=1e-6)
  from_tokens = model.apply(variables, aux['tokens'], method=VQGAN.decode_tokens)
  np.testing.assert_allclose(np.asarray(from_tokens), np.asarray(decoded), rtol=1e-5, atol=1e-5)
  # quantized vectors are the codebook rows of the tokens.
  codebook = np.asarray(variables['params']['quantizer']['codebook'])
  np.testing.assert_allclose(np.asarray(quantized), codebook[np.asarray(aux['tokens'])], atol=1e-6)


def test_vqgan_input_errors(vqgan):
  model, variables, _ = vqgan
  with pytest.raises(ValueError, match='divisible'):
    model.apply(variables, jnp.zeros((1, 15, 16, 3)))
  with pytest.raises(ValueError, match='divisible'):
    model.apply(variables, jnp.zeros((1, 16, 17, 3)), method=VQGAN.encode)
  with pytest.raises(ValueError, match=r'\[batch, height, width, 3\]'):
    model.apply(variables, jnp.zeros((16, 16, 3)))
  with pytest.raises(ValueError, match=r'\[batch, height, width, 3\]'):
    model.apply(variables, jnp.zeros((1, 16, 16, 4)))


# ----------------------------------------------------------------------------- ResBlock


@pytest.mark.slow  # over 4 s on 2 cores; the full suite runs it
def test_resblock_shortcut_only_when_channels_change():
  x8 = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 8))
  block = layers.ResBlock(16, num_groups=4)
  params = nn.unbox(jax.eval_shape(block.init, jax.random.PRNGKey(1), x8))['params']
  assert 'shortcut' in params
  assert params['shortcut']['kernel'].shape == (1, 1, 8, 16)
  same = layers.ResBlock(8, num_groups=4)
  params_same = nn.unbox(jax.eval_shape(same.init, jax.random.PRNGKey(1), x8))['params']
  assert 'shortcut' not in params_same
  assert set(params_same) == {'norm_0', 'conv_0', 'norm_1', 'conv_1'}


def test_resblock_shortcut_applies_to_input():
  """With the residual branch zeroed (conv_1 = 0), the output is exactly shortcut(x)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 8))
  block = layers.ResBlock(16, num_groups=4)
  params = _numpy_params(jax.eval_shape(block.init, jax.random.PRNGKey(1), x))['params']
  params['conv_1'] = jax.tree_util.tree_map(jnp.zeros_like, params['conv_1'])
  params['shortcut']['bias'] = jax.random.normal(jax.random.PRNGKey(2), (16,))
  out = block.apply({'params': params}, x)
  w = np.asarray(params['shortcut']['kernel'])[0, 0]
  expected = np.asarray(x) @ w + np.asarray(params['shortcut']['bias'])
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)
  # Same channels: identity shortcut.
  same = layers.ResBlock(8, num_groups=4)
  p2 = _numpy_params(jax.eval_shape(same.init, jax.random.PRNGKey(1), x))['params']
  p2['conv_1'] = jax.tree_util.tree_map(jnp.zeros_like, p2['conv_1'])
  np.testing.assert_allclose(np.asarray(same.apply({'params': p2}, x)), np.asarray(x), atol=1e-6)


# ----------------------------------------------------------------------------- Transformer

TINY_TF = dict(
  codebook_size=32,
  num_classes=10,
  seq_len=16,
  hidden_size=32,
  num_layers=2,
  num_heads=2,
  mlp_dim=64,
  dropout_rate=0.0,
)


@pytest.fixture(scope='module')
def transformer():
  model = Transformer(**TINY_TF)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (3, 16), 0, 33)
  labels = jnp.array([0, 4, 10], jnp.int32)
  boxed = jax.eval_shape(model.init, jax.random.PRNGKey(1), tokens, labels)
  return model, boxed, _numpy_params(boxed), tokens, labels


@pytest.mark.slow  # over 6 s on 2 cores; the full suite runs it
def test_transformer_logits_shape(transformer):
  model, _, variables, tokens, labels = transformer
  logits = model.apply(variables, tokens, labels)
  assert logits.shape == (3, 16, 32)
  assert logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()
  assert model.mask_token_id == 32 and model.null_label == 10


def test_transformer_is_bidirectional(transformer):
  model, _, variables, tokens, labels = transformer
  logits = model.apply(variables, tokens, labels)
  changed = tokens.at[:, -1].set((tokens[:, -1] + 1) % 33)
  logits2 = model.apply(variables, changed, labels)
  diff0 = np.abs(np.asarray(logits2[:, 0]) - np.asarray(logits[:, 0])).max(axis=-1)
  assert np.all(diff0 > 1e-6), diff0
  # Changing the class label changes every position's output.
  logits3 = model.apply(variables, tokens, (labels + 1) % 11)
  diff = np.abs(np.asarray(logits3) - np.asarray(logits)).max(axis=-1)
  assert np.all(diff > 1e-6), diff
  # Deterministic: same inputs give the same logits.
  np.testing.assert_array_equal(
    np.asarray(model.apply(variables, tokens, labels)), np.asarray(logits)
  )


def test_transformer_input_errors(transformer):
  model, _, variables, tokens, labels = transformer
  with pytest.raises(ValueError, match='16'):
    model.apply(variables, tokens[:, :15], labels)
  with pytest.raises(ValueError):
    model.apply(variables, tokens.reshape(3, 4, 4), labels)
  with pytest.raises(ValueError, match='labels'):
    model.apply(variables, tokens, labels[:2])


def test_transformer_params_are_logically_partitioned(transformer):
  _, boxed, _, _, _ = transformer
  leaves = jax.tree_util.tree_leaves(
    boxed['params'], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
  )
  assert len(leaves) > 10
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), type(leaf)
  specs = nn.get_partition_spec(boxed['params'])
  values = nn.unbox(boxed['params'])
  flat_specs = jax.tree_util.tree_leaves_with_path(
    specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
  )
  flat_vals = dict(jax.tree_util.tree_leaves_with_path(values))
  assert len(flat_specs) == len(flat_vals)
  for path, spec in flat_specs:
    assert isinstance(spec, jax.sharding.PartitionSpec)
    assert len(spec) == flat_vals[path].ndim, (path, spec, flat_vals[path].shape)
    assert all(isinstance(name, str) for name in spec), (path, spec)
  # A couple of named ones.
  p = boxed['params']
  assert p['token_embedding'].names == ('vocab', 'embed')
  assert p['block_0']['attn']['query']['kernel'].names == ('embed', 'heads', 'kv')
  assert p['block_0']['attn']['out']['kernel'].names == ('heads', 'kv', 'embed')
  assert p['block_1']['mlp_in']['kernel'].names == ('embed', 'mlp')


def test_forward_flops_hand_count():
  model = Transformer(**TINY_TF)
  b = 3
  n, d, m, L, K = 17, 32, 64, 2, 32  # n = 16 tokens + 1 class token
  qkvo = 4 * (2 * d * d)  # q, k, v, out projections: 8192
  mlp = 2 * (2 * d * m)  # mlp_in + mlp_out: 8192
  attn = 2 * n * d + 2 * n * d  # QK^T scores + AV: 2176
  per_token_layer = qkvo + mlp + attn  # 18560
  assert per_token_layer == 18560
  head = 2 * d * d + 2 * d * K  # head dense + tied logits: 4096
  per_example = n * L * per_token_layer + 16 * head  # 631040 + 65536
  assert per_example == 696576
  assert forward_flops(model, b) == float(b * per_example) == 2089728.0


# ----------------------------------------------------------------------------- paper sizes


def test_maskgit_imagenet_param_count():
  config = load_config('maskgit_imagenet.py:imagenet')
  model = build_transformer(config.model, 256)
  assert (model.hidden_size, model.num_layers, model.num_heads, model.mlp_dim) == (
    768,
    24,
    16,
    3072,
  )
  shapes = jax.eval_shape(
    model.init, jax.random.PRNGKey(0), jnp.zeros((1, 256), jnp.int32), jnp.zeros((1,), jnp.int32)
  )
  n = count_params(shapes['params'])
  print(f'MaskGIT imagenet transformer parameters: {n:,}')
  assert 170_000_000 <= n <= 175_000_000, n
  # Exact hand count: 24 blocks + embeddings + LayerNorms + MLM head.
  d, m, L = 768, 3072, 24
  block = 4 * (d * d + d) + (d * m + m) + (m * d + d) + 2 * 2 * d
  embeddings = (1024 + 1) * d + (1000 + 1) * d + (256 + 1) * d
  head = d * d + d + 2 * d + 1024
  assert n == L * block + embeddings + 2 * d + 2 * d + head


def test_vqgan_imagenet_token_shape():
  config = load_config('vqgan_imagenet.py:imagenet')
  model = tokenizers.build_tokenizer(config.model)
  assert model.downsample_factor == 16
  assert tokenizers.token_shape(config) == (16, 16) and not tokenizers.is_causal(config.model)
  x = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
  (recon, aux), variables = jax.eval_shape(
    lambda x: model.init_with_output(jax.random.PRNGKey(0), x), x
  )
  assert aux['tokens'].shape == (1, 16, 16)
  assert aux['tokens'].dtype == jnp.int32
  assert recon.shape == (1, 256, 256, 3)
  assert nn.unbox(variables)['params']['quantizer']['codebook'].shape == (1024, 256)


@pytest.mark.slow  # over 6 s on 2 cores; the full suite runs it
def test_factorised_transformer_sub_token_heads():
  """num_sub_tokens=2 over a 64-code vocabulary: two 8-way heads, one table each, mask row."""
  model = Transformer(**dict(TINY_TF, codebook_size=64, num_sub_tokens=2))
  tokens = jnp.array([[0, 9, 63, 64] * 4], jnp.int32)  # 64 is [MASK]
  labels = jnp.array([1], jnp.int32)
  variables = _numpy_params(jax.eval_shape(model.init, jax.random.PRNGKey(1), tokens, labels))
  params = variables['params']
  assert params['token_embedding_0'].shape == (8, 32)
  assert params['token_embedding_1'].shape == (8, 32)
  assert params['mask_embedding'].shape == (1, 32)
  assert 'token_embedding' not in params
  logits = model.apply(variables, tokens, labels)
  assert logits.shape == (1, 16, 2, 8)
  # Tokens 1 and 9 share sub-token 0 (= 1) and differ in sub-token 1 (0 vs 1): with table 1
  # rows 0 and 1 made equal they embed identically, otherwise not.
  t1, t9 = tokens.at[0, 0].set(1), tokens.at[0, 0].set(9)
  assert not np.allclose(model.apply(variables, t1, labels), model.apply(variables, t9, labels))
  tied = jax.tree_util.tree_map(lambda x: x, variables)
  tied['params']['token_embedding_1'] = (
    params['token_embedding_1'].at[1].set(params['token_embedding_1'][0])
  )
  np.testing.assert_allclose(
    model.apply(tied, t1, labels), model.apply(tied, t9, labels), rtol=1e-5, atol=1e-6
  )
  with pytest.raises(ValueError, match='not a power'):
    Transformer(**dict(TINY_TF, codebook_size=60, num_sub_tokens=2)).sub_codebook_size

"""Our VQGAN3D with the official options == the official MAGVIT 3D-VQ (google-research/magvit).

The fixture tests/data/magvit_3dvq_parity.npz holds a small official 3D-VQ's random params,
fixed videos in [0, 1] and the official codes and reconstructions, plus the param shapes of the
official B / L configs; it is written by `tools/make_parity_fixtures.py --only=magvit_3dvq`
(tools/parity/magvit_3dvq.py), so these tests need no official code. Tolerances: codes equal
exactly, reconstructions within 1e-5.
"""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization, traverse_util

from magvit_jax.config_loader import load_config
from magvit_jax.config_schema import config_from_dict, tokenizer_model, validate_config
from magvit_jax.convert import magvit_3dvq, official_tree
from magvit_jax.magvit_presets import OFFICIAL_3DVQ_OPTIONS
from magvit_jax.models import tokenizers

FIXTURE = pathlib.Path(__file__).parent / 'data' / 'magvit_3dvq_parity.npz'
OPTIONS = {k: v for k, v in magvit_3dvq.OFFICIAL_OPTIONS.items() if k != 'name'}
NOT_MODEL = ('config/image_size', 'config/num_frames')


@pytest.fixture(scope='module')
def fixture():
  with np.load(FIXTURE, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def _official_tree(data):
  """The nested {'params': ...} tree the official code had."""
  return official_tree.nest({k: v for k, v in data.items() if k.startswith('params/')})


def _model_config(data):
  small = {
    k.split('/', 1)[1]: data[k] for k in data if k.startswith('config/') and k not in NOT_MODEL
  }
  small = {k: tuple(v.tolist()) if v.ndim else v.item() for k, v in small.items()}
  return tokenizer_model('vqgan3d', **small, **OPTIONS)


def _shapes(entries):
  out = {}
  for entry in entries:
    path, _, dims = str(entry).partition(':')
    out[path] = tuple(int(d) for d in dims.split(','))
  return out


@pytest.fixture(scope='module')
def converted(fixture):
  config = _model_config(fixture)
  params = magvit_3dvq.tokenizer_params_from_official(_official_tree(fixture), config)
  return tokenizers.build_tokenizer(config), params


def _outputs(module, params, videos, codes):
  """One jitted run: encode's tokens, decode_tokens(codes), the whole forward pass."""

  def run(params, videos, codes):
    variables = {'params': params}
    _, aux = module.apply(variables, videos, method='encode')
    recon = module.apply(variables, codes, method='decode_tokens')
    full, aux_full = module.apply(variables, videos)
    return aux['tokens'], recon, full, aux_full['tokens']

  return jax.jit(run)(params, videos, codes)


def test_codes_and_reconstructions_match_official(fixture, converted):
  module, params = converted
  videos01 = fixture['videos'].astype(np.float32)
  assert videos01.shape == (2, 8, 16, 16, 3)
  videos = jnp.asarray(videos01 * 2.0 - 1.0)  # Our convention: [-1, 1] (exact on k / 256).
  tokens, recon, full, full_tokens = _outputs(module, params, videos, fixture['codes'])
  np.testing.assert_array_equal(np.asarray(tokens), fixture['codes'])
  assert len(np.unique(fixture['codes'])) > 16  # The codes are not trivially constant.
  assert fixture['min_code_margin'] > 1e-4  # ... nor decided by float rounding.
  np.testing.assert_allclose((np.asarray(recon) + 1.0) / 2.0, fixture['reconstructions'], atol=1e-5)
  # The whole forward pass (straight-through quantization) gives the same pixels.
  np.testing.assert_array_equal(np.asarray(full_tokens), fixture['codes'])
  np.testing.assert_allclose((np.asarray(full) + 1.0) / 2.0, fixture['reconstructions'], atol=1e-5)


def test_each_official_option_matters(fixture, converted):
  """With today's default instead of an official option, the same params compute otherwise."""
  _, params = converted
  videos = jnp.asarray(fixture['videos'].astype(np.float32) * 2.0 - 1.0)
  for key, default in (('temporal_padding', 'edge'), ('pixel_range', 'signed')):
    module = tokenizers.build_tokenizer(dict(_model_config(fixture), **{key: default}))
    encode = jax.jit(lambda p, x, module=module: module.apply({'params': p}, x, method='encode'))
    _, aux = encode(params, videos)
    assert not np.array_equal(np.asarray(aux['tokens']), fixture['codes']), key


def test_load_official_tree_reads_msgpack_checkpoints_and_npz(fixture, tmp_path):
  tree = _official_tree(fixture)
  config = _model_config(fixture)
  reference = traverse_util.flatten_dict(
    magvit_3dvq.tokenizer_params_from_official(tree['params'], config)  # 'params' optional.
  )
  variables = tmp_path / 'variables.msgpack'
  variables.write_bytes(serialization.to_bytes(tree))
  # An official training checkpoint's state: the EMA generator params are used.
  state = {
    'global_step': np.asarray(7),
    'ema_params': tree['params'],
    'g_params': {'encoder': {}},
    'd_params': {'Conv_0': {'kernel': np.zeros((3, 3, 3, 3, 4), np.float32)}},
  }
  checkpoint = tmp_path / 'checkpoint_7'
  checkpoint.write_bytes(serialization.to_bytes(state))
  npz = tmp_path / 'params.npz'
  np.savez(npz, **{k: v for k, v in fixture.items() if k.startswith('params/')})
  for path in (variables, checkpoint, npz):
    loaded = magvit_3dvq.load_official_tree(path)
    got = traverse_util.flatten_dict(magvit_3dvq.tokenizer_params_from_official(loaded, config))
    assert got.keys() == reference.keys(), path.name
    for key in got:
      np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(reference[key]))
  (tmp_path / 'junk').write_bytes(b'\xc1 not msgpack')
  with pytest.raises(ValueError, match='msgpack'):
    magvit_3dvq.load_official_tree(tmp_path / 'junk')
  (tmp_path / 'bad.npz').write_bytes(b'PK\x03\x04 broken zip')
  with pytest.raises(ValueError, match='npz'):
    magvit_3dvq.load_official_tree(tmp_path / 'bad.npz')


def test_wrong_shape_missing_and_unexpected_keys_are_refused(fixture):
  config = _model_config(fixture)
  tree = _official_tree(fixture)
  kernel = tree['params']['decoder']['ResBlock_3']['Conv_0']['kernel']
  tree['params']['decoder']['ResBlock_3']['Conv_0']['kernel'] = kernel[..., :-1]
  with pytest.raises(ValueError) as e:
    magvit_3dvq.tokenizer_params_from_official(tree, config)
  want = (
    f'params/decoder/ResBlock_3/Conv_0/kernel: expected shape {kernel.shape}, '
    f'got {kernel[..., :-1].shape}'
  )
  assert want in str(e.value)

  tree = _official_tree(fixture)
  del tree['params']['encoder']['GroupNorm_0']['scale']
  tree['params']['encoder']['Conv_0']['bias'] = np.zeros((4,), np.float32)
  with pytest.raises(ValueError) as e:
    magvit_3dvq.tokenizer_params_from_official(tree, config)
  assert "missing keys: ['params/encoder/GroupNorm_0/scale']" in str(e.value)
  assert "unexpected keys: ['params/encoder/Conv_0/bias']" in str(e.value)

  # A tree of another size (the fixture's params for a wider config).
  wider = dict(config, filters=8)
  with pytest.raises(ValueError, match=r'params/encoder/Conv_0/kernel: expected shape'):
    magvit_3dvq.tokenizer_params_from_official(_official_tree(fixture), wider)


def test_config_without_the_official_options_is_refused(fixture):
  config = dict(_model_config(fixture), temporal_padding='edge')
  with pytest.raises(ValueError, match="'temporal_padding': 'edge'.*official_B"):
    magvit_3dvq.tokenizer_params_from_official(_official_tree(fixture), config)


@pytest.mark.parametrize('dataset', ['ucf101', 'bair', 'k600'])
@pytest.mark.parametrize('size', ['B', 'L'])
def test_official_variants_have_the_official_param_shapes(fixture, dataset, size):
  config = load_config(f'magvit_{dataset}.py:official_{size}')
  validate_config(config, 'tokenizer')
  assert {k: config.model[k] for k in OFFICIAL_3DVQ_OPTIONS} == OFFICIAL_3DVQ_OPTIONS
  assert tokenizers.token_shape(config) == (4, 16, 16)
  assert config.data.image_size == (64 if dataset == 'bair' else 128)
  # K600 has no official config; the released K600 3D-VQ has UCF-101's shapes.
  official = _shapes(fixture[f'official_shapes/{"bair" if dataset == "bair" else "ucf101"}_{size}'])
  assert len(official) > 100
  # Our init's shapes (jax.eval_shape of VQGAN3D), named as the official tree.
  assert magvit_3dvq.official_shapes(config.model) == official


def test_official_variant_converts_to_our_init_tree(fixture):
  """A full-size official tree (zeros of the official B shapes) converts to our init's tree."""
  config = load_config('magvit_bair.py:official_B')
  official = _shapes(fixture['official_shapes/bair_B'])
  zero = np.zeros((), np.float32)
  tree = traverse_util.unflatten_dict(
    {tuple(k.split('/')): np.broadcast_to(zero, s) for k, s in official.items()}
  )
  params = magvit_3dvq.tokenizer_params_from_official(tree, config)
  module = tokenizers.build_tokenizer(config.model)
  init = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 4, 3)))
  want = {k: v.shape for k, v in traverse_util.flatten_dict(nn.unbox(init['params'])).items()}
  got = {k: v.shape for k, v in traverse_util.flatten_dict(params).items()}
  assert got == want
  assert all(v.dtype == jnp.float32 for v in traverse_util.flatten_dict(params).values())


def test_official_options_are_validated():
  config = load_config('magvit_ucf101.py:official_B')
  for key, bad in (
    ('temporal_padding', 'reflect'),
    ('pixel_range', '0-255'),
    ('res_conv_bias', 'no'),
    ('encoder_in_bias', 1),
  ):
    saved = config.to_dict()
    saved['model'][key] = bad  # As a hand-edited config.json would have it.
    with pytest.raises(ValueError, match=f'config.model.{key}='):
      validate_config(config_from_dict(saved), 'tokenizer')
  module = tokenizers.build_tokenizer(dict(config.model, pixel_range='sideways'))
  with pytest.raises(ValueError, match='pixel_range'):
    jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 4, 8, 8, 3)))


def test_default_3d_vq_is_unchanged():
  """Without the official options every conv keeps its bias (this project's 3D-VQ)."""
  config = load_config('magvit_ucf101.py:tokenizer_B')
  assert all(config.model[k] != v for k, v in OFFICIAL_3DVQ_OPTIONS.items())
  module = tokenizers.build_tokenizer(config.model)
  init = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 4, 8, 8, 3)))
  flat = traverse_util.flatten_dict(init['params'], sep='/')
  kernels = {k.rsplit('/', 1)[0] for k in flat if k.endswith('/kernel')}
  biases = {k.rsplit('/', 1)[0] for k in flat if k.endswith('/bias') and 'norm' not in k}
  assert kernels == biases

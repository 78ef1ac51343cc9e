"""Our VQGAN with the official options == the released MaskGIT tokenizer (google-research/maskgit).

The fixture tests/data/maskgit_vqgan_parity.npz holds a small official tokenizer's random
params, fixed images in [0, 1] and the official codes and reconstructions; it is written by
`tools/make_parity_fixtures.py --only=maskgit_vqgan` (tools/parity/maskgit_vqgan.py), so these
tests need no official code. Tolerances: codes equal exactly, reconstructions within 1e-5.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization, traverse_util

from magvit_jax.config_loader import load_config
from magvit_jax.config_schema import config_from_dict, tokenizer_model, validate_config
from magvit_jax.convert import maskgit_vqgan, official_tree
from magvit_jax.models import tokenizers

FIXTURE = pathlib.Path(__file__).parent / 'data' / 'maskgit_vqgan_parity.npz'
OPTIONS = {k: v for k, v in maskgit_vqgan.OFFICIAL_OPTIONS.items() if k != 'name'}


@pytest.fixture(scope='module')
def fixture():
  with np.load(FIXTURE, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def _official_tree(data):
  """The nested {'params': ...} tree the official code had (as in the released files)."""
  return official_tree.nest({k: v for k, v in data.items() if k.startswith('params/')})


def _model_config(data):
  small = {
    k.split('/', 1)[1]: data[k]
    for k in data
    if k.startswith('config/') and k != 'config/image_size'
  }
  small = {k: tuple(int(x) for x in v) if v.ndim else int(v) for k, v in small.items()}
  return tokenizer_model('vqgan', **small, **OPTIONS)


@pytest.fixture(scope='module')
def converted(fixture):
  config = _model_config(fixture)
  params = maskgit_vqgan.tokenizer_params_from_official(_official_tree(fixture), config)
  return tokenizers.build_tokenizer(config), params


def test_codes_and_reconstructions_match_official(fixture, converted):
  module, params = converted
  images01 = fixture['images']
  images = jnp.asarray(images01 * 2.0 - 1.0)  # Our convention: [-1, 1] (exact on k / 256).
  _, aux = module.apply({'params': params}, images, method='encode')
  np.testing.assert_array_equal(np.asarray(aux['tokens']), fixture['codes'])
  assert len(np.unique(fixture['codes'])) > 8  # The codes are not trivially constant.
  recon = module.apply({'params': params}, jnp.asarray(fixture['codes']), method='decode_tokens')
  np.testing.assert_allclose((np.asarray(recon) + 1.0) / 2.0, fixture['reconstructions'], atol=1e-5)
  # The whole forward pass (straight-through quantization) gives the same pixels.
  full, aux_full = module.apply({'params': params}, images)
  np.testing.assert_array_equal(np.asarray(aux_full['tokens']), fixture['codes'])
  np.testing.assert_allclose((np.asarray(full) + 1.0) / 2.0, fixture['reconstructions'], atol=1e-5)


def test_load_official_tree_reads_flax_msgpack(fixture, tmp_path):
  tree = _official_tree(fixture)
  path = tmp_path / 'tokenizer_checkpoint'
  path.write_bytes(serialization.to_bytes(tree))
  loaded = maskgit_vqgan.load_official_tree(path)
  config = _model_config(fixture)
  a = maskgit_vqgan.tokenizer_params_from_official(loaded, config)
  b = maskgit_vqgan.tokenizer_params_from_official(tree['params'], config)  # 'params' optional.
  flat_a, flat_b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:
    np.testing.assert_array_equal(np.asarray(flat_a[key]), np.asarray(flat_b[key]))
  (tmp_path / 'junk').write_bytes(b'\xc1 not msgpack')
  with pytest.raises(ValueError, match='msgpack'):
    maskgit_vqgan.load_official_tree(tmp_path / 'junk')


def test_wrong_shape_missing_and_unexpected_keys_are_refused(fixture):
  config = _model_config(fixture)
  tree = _official_tree(fixture)
  kernel = tree['params']['decoder']['ResBlock_1']['Conv_0']['kernel']
  tree['params']['decoder']['ResBlock_1']['Conv_0']['kernel'] = kernel[..., :-1]
  with pytest.raises(ValueError) as e:
    maskgit_vqgan.tokenizer_params_from_official(tree, config)
  want = (
    f'params/decoder/ResBlock_1/Conv_0/kernel: expected shape {kernel.shape}, '
    f'got {kernel[..., :-1].shape}'
  )
  assert want in str(e.value)

  tree = _official_tree(fixture)
  del tree['params']['encoder']['GroupNorm_0']['scale']
  tree['params']['encoder']['Conv_0']['bias'] = np.zeros((8,), np.float32)
  with pytest.raises(ValueError) as e:
    maskgit_vqgan.tokenizer_params_from_official(tree, config)
  assert "missing keys: ['params/encoder/GroupNorm_0/scale']" in str(e.value)
  assert "unexpected keys: ['params/encoder/Conv_0/bias']" in str(e.value)

  # A tree of another size (the fixture's params for a wider config).
  wider = dict(config, filters=16)
  with pytest.raises(ValueError, match=r'params/encoder/Conv_0/kernel: expected shape'):
    maskgit_vqgan.tokenizer_params_from_official(_official_tree(fixture), wider)


def test_config_without_the_official_options_is_refused(fixture):
  config = dict(_model_config(fixture), shortcut='input')
  with pytest.raises(ValueError, match="'shortcut': 'input'.*official256"):
    maskgit_vqgan.tokenizer_params_from_official(_official_tree(fixture), config)


@pytest.mark.parametrize('variant,size', [('official256', 256), ('official512', 512)])
def test_official_configs_have_the_released_param_shapes(fixture, variant, size):
  config = load_config(f'vqgan_imagenet.py:{variant}')
  validate_config(config, 'tokenizer')
  assert config.data.image_size == size
  assert tokenizers.token_shape(config) == (size // 16, size // 16)
  released = {}
  for entry in fixture['official256_shapes']:
    path, _, dims = str(entry).partition(':')
    released[path] = tuple(int(d) for d in dims.split(','))
  assert len(released) > 100
  assert maskgit_vqgan.official_shapes(config.model) == released


def test_official_options_are_validated():
  config = load_config('vqgan_imagenet.py:official256')
  for key, bad in (('shortcut', 'sideways'), ('pixel_range', '0-255'), ('res_conv_bias', 'no')):
    saved = config.to_dict()
    saved['model'][key] = bad  # As a hand-edited config.json would have it.
    with pytest.raises(ValueError, match=f'config.model.{key}='):
      validate_config(config_from_dict(saved), 'tokenizer')
  module = tokenizers.build_tokenizer(dict(config.model, shortcut='sideways'))
  with pytest.raises(ValueError, match='shortcut'):
    jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))

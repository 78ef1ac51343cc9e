"""Our Magvit2Tokenizer with Open-MAGVIT2's options == TencentARC's Open-MAGVIT2 image tokenizer.

The fixture tests/data/open_magvit2_parity.npz holds a small official tokenizer's random state
dict (PyTorch layouts), fixed images in [-1, 1], and the official latents, LFQ codes and decoded
pixels; it is written by `tools/make_parity_fixtures.py --only=open_magvit2`
(tools/parity/open_magvit2.py, run with torch), so these tests need no official code and no
torch. Tolerances: codes equal exactly; latents and pixels within 1e-5 (float32; the observed
differences between PyTorch and XLA on CPU are about 2e-6).
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from magvit_jax.config_loader import load_config
from magvit_jax.config_schema import config_from_dict, tokenizer_model, validate_config
from magvit_jax.convert import open_magvit2
from magvit_jax.models import tokenizers

FIXTURE = pathlib.Path(__file__).parent / 'data' / 'open_magvit2_parity.npz'
OPTIONS = {k: v for k, v in open_magvit2.OFFICIAL_OPTIONS.items() if k != 'name'}
ATOL = 1e-5


@pytest.fixture(scope='module')
def fixture():
  with np.load(FIXTURE, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def _state_dict(data):
  return {k[len('sd/') :]: v for k, v in data.items() if k.startswith('sd/')}


def _model_config(data, **overrides):
  mults = tuple(int(x) for x in data['config/ch_mult'])
  kwargs = dict(
    filters=int(data['config/ch']),
    channel_multipliers=mults,
    num_res_blocks=int(data['config/num_res_blocks']),
    num_bits=int(data['config/z_channels']),
    num_groups=int(data['config/num_groups']),
    temporal_downsample=(False,) * (len(mults) - 1),
    temporal_kernel_size=1,
    **OPTIONS,
  )
  kwargs.update(overrides)
  return tokenizer_model('magvit2', **kwargs)


def _check_outputs(module, params, data):
  variables = {'params': params}
  images = jnp.asarray(data['images'])
  latents = jax.jit(lambda v, x: module.apply(v, x, method=lambda m, y: m.encoder(y)))(
    variables, images[:, None]
  )
  np.testing.assert_allclose(np.asarray(latents)[:, 0], data['latents'], atol=ATOL)
  tokens = jnp.asarray(data['codes'])[:, None]
  from_codes = jax.jit(lambda v, t: module.apply(v, t, method='decode_tokens'))(variables, tokens)
  np.testing.assert_allclose(np.asarray(from_codes)[:, 0], data['code_reconstructions'], atol=ATOL)
  full, aux_full = jax.jit(module.apply)(variables, images)  # [b, H, W, 3] in and out.
  np.testing.assert_array_equal(np.asarray(aux_full['tokens'])[:, 0], data['codes'])
  np.testing.assert_allclose(np.asarray(full), data['reconstructions'], atol=ATOL)


def test_codes_and_pixels_match_official(fixture):
  config = _model_config(fixture)
  params = open_magvit2.tokenizer_params_from_open_magvit2(_state_dict(fixture), config)
  assert len(np.unique(fixture['codes'])) > 8  # The codes are not trivially constant.
  assert float(fixture['min_abs_latent']) > 1e-4  # No sign is decided by rounding.
  _check_outputs(tokenizers.build_tokenizer(config), params, fixture)


def test_inflated_3d_kernels_code_images_the_same(fixture):
  """temporal_kernel_size=3: the 2D kernels go to the causal conv's last tap, zeros elsewhere."""
  config = _model_config(fixture, temporal_kernel_size=3)
  params = open_magvit2.tokenizer_params_from_open_magvit2(_state_dict(fixture), config)
  kernel = params['encoder']['conv_in']['conv']['kernel']
  assert kernel.shape[0] == 3 and not np.any(np.asarray(kernel[:2]))
  _check_outputs(tokenizers.build_tokenizer(config), params, fixture)


def _with_ema_and_losses(state):
  """A checkpoint-like state dict: raw tensors, EMA copies (different values), loss keys."""
  out = dict(state)
  out.update({f'model_ema.{k.replace(".", "")}': v + 1.0 for k, v in state.items()})
  out['model_ema.decay'] = np.float32(0.999)
  out['model_ema.num_updates'] = np.int32(7)
  out['model_ema.lossdiscriminatormain0weight'] = np.zeros((2, 3, 4, 4), np.float32)
  out['loss.discriminator.main.0.weight'] = np.zeros((2, 3, 4, 4), np.float32)
  out['loss.perceptual_loss.net.lin0.model.1.weight'] = np.zeros((1, 64, 1, 1), np.float32)
  return out


def test_ema_rule_and_ignored_keys(fixture):
  config = _model_config(fixture)
  state = _state_dict(fixture)
  full = _with_ema_and_losses(state)
  raw_bias = state['encoder.norm_out.bias']
  by_default = open_magvit2.tokenizer_params_from_open_magvit2(full, config)  # EMA when present.
  np.testing.assert_array_equal(by_default['encoder']['norm_out']['bias'], raw_bias + 1.0)
  raw = open_magvit2.tokenizer_params_from_open_magvit2(full, config, ema=False)
  np.testing.assert_array_equal(raw['encoder']['norm_out']['bias'], raw_bias)
  with pytest.raises(ValueError, match='no model_ema'):
    open_magvit2.tokenizer_params_from_open_magvit2(state, config, ema=True)
  # An EMA tensor missing is named by its EMA key and its parameter name.
  del full['model_ema.decoderconv_outweight']
  with pytest.raises(ValueError, match=r'model_ema\.decoderconv_outweight \(decoder\.conv_out'):
    open_magvit2.tokenizer_params_from_open_magvit2(full, config)


def test_wrong_shape_missing_and_unexpected_keys_are_refused(fixture):
  config = _model_config(fixture)
  state = _state_dict(fixture)
  weight = state['decoder.up.1.block.0.conv1.weight']
  state['decoder.up.1.block.0.conv1.weight'] = weight[:-1]
  with pytest.raises(ValueError) as e:
    open_magvit2.tokenizer_params_from_open_magvit2(state, config)
  want = (
    f'decoder.up.1.block.0.conv1.weight: expected shape {weight.shape}, got {weight[:-1].shape}'
  )
  assert want in str(e.value)

  state = _state_dict(fixture)
  del state['decoder.adaptive.0.gamma.weight']
  state['encoder.conv_in.bias'] = np.zeros((8,), np.float32)
  state['something.else'] = np.zeros((1,), np.float32)
  with pytest.raises(ValueError) as e:
    open_magvit2.tokenizer_params_from_open_magvit2(state, config)
  assert "missing keys: ['decoder.adaptive.0.gamma.weight']" in str(e.value)
  assert "unexpected keys: ['encoder.conv_in.bias', 'something.else']" in str(e.value)

  wider = _model_config(fixture, filters=16)
  with pytest.raises(ValueError, match=r'encoder\.conv_in\.weight: expected shape \(16, 3, 3, 3\)'):
    open_magvit2.tokenizer_params_from_open_magvit2(_state_dict(fixture), wider)
  with pytest.raises(ValueError, match="'adaptive_norm': 'every_norm'.*open_magvit2_256"):
    open_magvit2.tokenizer_params_from_open_magvit2(
      _state_dict(fixture), _model_config(fixture, adaptive_norm='every_norm')
    )


def _write_safetensors(path, arrays):
  """A .safetensors file (8-byte little-endian header size, JSON header, raw data)."""
  header, chunks, offset = {}, [], 0
  for key, value in arrays.items():
    data = np.ascontiguousarray(value, np.float32).tobytes()
    header[key] = {
      'dtype': 'F32',
      'shape': list(value.shape),
      'data_offsets': [offset, offset + len(data)],
    }
    chunks.append(data)
    offset += len(data)
  text = json.dumps(header).encode()
  path.write_bytes(len(text).to_bytes(8, 'little') + text + b''.join(chunks))


def test_load_state_dict_reads_safetensors_and_npz_and_refuses_pickle(fixture, tmp_path):
  state = _state_dict(fixture)
  _write_safetensors(tmp_path / 'tok.safetensors', state)
  np.savez(tmp_path / 'tok.npz', **state)
  for name in ('tok.safetensors', 'tok.npz'):
    loaded = open_magvit2.load_state_dict(tmp_path / name)
    assert loaded.keys() == state.keys()
    for k in state:
      np.testing.assert_array_equal(loaded[k], state[k])
  (tmp_path / 'tok.ckpt').write_bytes(b'not opened')
  with pytest.raises(ValueError, match='pickle.*allow_pickle=True'):
    open_magvit2.load_state_dict(tmp_path / 'tok.ckpt')
  with pytest.raises(ValueError, match='safetensors or .npz'):
    open_magvit2.load_state_dict(tmp_path / 'tok.bin')


def test_open_magvit2_256_config_has_the_released_shapes(fixture):
  config = load_config('magvit2_tokenizer_imagenet.py:open_magvit2_256')
  validate_config(config, 'tokenizer')
  assert config.data.image_size == 256
  assert tokenizers.token_shape(config)[-2:] == (16, 16)
  assert tokenizers.build_tokenizer(config.model).codebook_size == 2**18
  released = {}
  for entry in fixture['official256_shapes']:
    key, _, dims = str(entry).partition(':')
    released[key] = tuple(int(d) for d in dims.split(','))
  assert len(released) > 200
  assert open_magvit2.official_shapes(config.model) == released


def test_architecture_options_are_validated():
  config = load_config('magvit2_tokenizer_imagenet.py:open_magvit2_256')
  for key, bad in (
    ('spatial_padding', 'valid'),
    ('adaptive_norm', 'sometimes'),
    ('res_conv_bias', 'no'),
    ('zero_sign', 0),
    ('temporal_kernel_size', 0),
  ):
    saved = config.to_dict()
    saved['model'][key] = bad  # As a hand-edited config.json would have it.
    with pytest.raises(ValueError, match=f'config.model.{key}='):
      validate_config(config_from_dict(saved), 'tokenizer')
  module = tokenizers.build_tokenizer(dict(config.model, spatial_padding='valid', filters=32))
  with pytest.raises(ValueError, match='spatial_padding'):
    jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
  flat = traverse_util.flatten_dict  # The default layout still has every bias.
  defaults = tokenizers.build_tokenizer(tokenizer_model('magvit2', filters=32, num_bits=4))
  shapes = jax.eval_shape(defaults.init, jax.random.PRNGKey(0), jnp.zeros((1, 1, 16, 16, 3)))
  assert ('encoder', 'conv_in', 'conv', 'bias') in flat(shapes['params'])


def test_zero_sign_of_the_quantizer():
  from magvit_jax.quantizers import lfq  # pylint: disable=g-import-not-at-top

  z = jnp.asarray([[0.0, 0.5, -0.5, 0.0]])
  for zero_sign, code, token in ((1, [1, 1, -1, 1], 0b1011), (-1, [-1, 1, -1, -1], 0b0010)):
    z_q, aux = lfq.LookupFreeQuantizer(num_bits=4, zero_sign=zero_sign).apply({}, z)
    np.testing.assert_array_equal(np.asarray(z_q), [code])
    assert int(aux['tokens'][0]) == token

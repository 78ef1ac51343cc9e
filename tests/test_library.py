"""The tokenizer library, the params-only loader and the one config source.

- `models/tokenizers.py` builds every tokenizer from its config; the token grid it reports is
  the grid the module really produces; causal-ness is the module's.
- Config defaults live in `base_config` (from the modules' own defaults); a saved config of an
  older run is completed by them; `load_config` names what is wrong.
- `pretrained` restores evaluation parameters only (the optimizer state is never read).
- `DecodeSettings` resolves decoding flags against `config.sampling`.
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magvit_jax import checkpoint as ckpt_lib
from magvit_jax import pretrained
from magvit_jax.config_loader import load_config
from magvit_jax.config_schema import base_config, config_from_dict, tokenizer_model
from magvit_jax.inference.settings import DecodeSettings
from magvit_jax.models import tokenizers
from magvit_jax.trainers import train_state as ts

TINY = {
  'vqgan': dict(filters=8, channel_multipliers=(1, 2), embedding_dim=4, codebook_size=16),
  'vqgan3d': dict(
    filters=8,
    channel_multipliers=(1, 2),
    embedding_dim=4,
    codebook_size=16,
    temporal_downsample=(True,),
  ),
  'magvit2': dict(
    filters=8, channel_multipliers=(1, 2), temporal_downsample=(True,), num_bits=4, num_groups=4
  ),
}
FRAMES = {'vqgan': None, 'vqgan3d': 4, 'magvit2': 5}


def tiny_config(name):
  c = base_config('tokenizer', name)
  c.model.update(dict(TINY[name], num_res_blocks=1))
  if name != 'magvit2':
    c.model.num_groups = 4
  c.data.image_size = 8
  c.data.num_frames = FRAMES[name]
  return c


@pytest.mark.parametrize('name', tokenizers.NAMES)
def test_reported_token_grid_is_the_modules(name):
  config = tiny_config(name)
  module = tokenizers.build_tokenizer(config.model)
  x = jax.ShapeDtypeStruct((2,) + tokenizers.input_shape(config), jnp.float32)
  (_, aux), _ = jax.eval_shape(lambda x: module.init_with_output(jax.random.PRNGKey(0), x), x)
  assert aux['tokens'].shape == (2,) + tokenizers.token_shape(config)
  assert tokenizers.num_tokens(config) == int(np.prod(aux['tokens'].shape[1:]))
  assert tokenizers.is_causal(config.model) == (name == 'magvit2')
  expected_vocab = 2**4 if name == 'magvit2' else 16
  assert tokenizers.codebook_size(config.model) == expected_vocab


def test_model_defaults_are_the_module_defaults():
  from magvit_jax.models.vqgan import VQGAN  # pylint: disable=g-import-not-at-top

  defaults = tokenizers.model_defaults('vqgan')
  assert defaults['codebook_size'] == VQGAN.codebook_size == 1024
  assert defaults['channel_multipliers'] == tuple(VQGAN.channel_multipliers)
  assert tokenizers.model_defaults('vqgan3d')['inflation'] == 'central'


def test_unknown_model_keys_are_refused():
  with pytest.raises(ValueError, match=r"'nonexistent'.*valid keys"):
    tokenizers.build_tokenizer(dict(tokenizer_model('vqgan').to_dict(), nonexistent=3))
  with pytest.raises(ValueError, match='config.model.name=.vq.: expected one of'):
    tokenizers.build_tokenizer({'name': 'vq'})
  with pytest.raises(ValueError, match='unknown keys'):
    tokenizer_model('magvit2', codebook_size=8)


def test_old_saved_config_is_completed_by_todays_defaults():
  """A config.json written before `model.name`, `data.num_frames` and `image_every` existed."""
  saved = load_config('vqgan_imagenet.py:digits').to_dict()
  del saved['model']['name'], saved['data']['num_frames'], saved['image_every']
  config = config_from_dict(json.loads(json.dumps(saved)))
  assert config.model.name == 'vqgan' and config.data.num_frames is None
  assert config.image_every == 0
  assert tokenizers.token_shape(config) == (8, 8)


def test_load_config_names_what_is_wrong():
  with pytest.raises(FileNotFoundError, match='did you mean vqgan_imagenet.py'):
    load_config('vqgan_imagnet.py:digits')
  with pytest.raises(ValueError, match='variants of maskgit_imagenet.py: imagenet, digits'):
    load_config('maskgit_imagenet.py:tiny')
  with pytest.raises(KeyError, match="'model.filter' does not exist; did you mean model.filters"):
    load_config('vqgan_imagenet.py:digits', {'model.filter': 3})
  config = load_config('configs/vqgan_imagenet.py:digits', {'model.filters': 16, 'seed': 3})
  assert (config.model.filters, config.seed) == (16, 3)


def _save_run(workdir, config, state):
  os.makedirs(workdir)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(config.to_dict(), f)
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), config.to_dict())
  checkpointer.save(int(state.step), state)
  checkpointer.close()


@pytest.mark.slow  # over 6 s on 2 cores; the full suite runs it
def test_params_only_restore_never_reads_the_optimizer_state(tmp_path):
  """The checkpoint's optimizer state has a tree no optimizer of this config makes: a full
  restore would fail on it, the params-only loader does not look at it."""
  config = tiny_config('vqgan')
  config.stage = 'tokenizer'
  module = tokenizers.build_tokenizer(config.model)
  params = jax.jit(lambda r: nn.unbox(module.init(r, jnp.zeros((1, 8, 8, 3)))['params']))(
    jax.random.PRNGKey(0)
  )
  ema = jax.tree_util.tree_map(lambda p: p + 1.0, params)
  state = ts.TrainState(
    step=jnp.int32(7),
    params=params,
    opt_state={'unrelated': jnp.zeros((3, 3))},
    rng=jax.random.PRNGKey(1),
    ema_params=ema,
  )
  workdir = str(tmp_path / 'tok')
  _save_run(workdir, config, state)
  loaded = pretrained.load_tokenizer(workdir)
  assert loaded.step == 7 and loaded.config.model.name == 'vqgan'
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.params, ema)  # EMA preferred
  # Without an EMA the live parameters are the evaluation parameters.
  workdir2 = str(tmp_path / 'tok2')
  _save_run(workdir2, config, state.replace(ema_params=None))
  jax.tree_util.tree_map(
    np.testing.assert_array_equal, pretrained.load_tokenizer(workdir2).params, params
  )
  with pytest.raises(ValueError, match="holds a 'tokenizer' run; expected a 'transformer'"):
    pretrained.load_transformer(workdir)


def test_decode_settings_take_overrides_and_validate():
  sampling = load_config('maskgit_imagenet.py:digits').sampling
  s = DecodeSettings.from_config(sampling, num_steps=3, schedule=None, temperature=0.5)
  assert (s.num_steps, s.schedule, s.temperature) == (3, 'cosine', 0.5)
  assert s.guidance_scale == sampling.guidance_scale == 1.0
  with pytest.raises(ValueError, match='schedule='):
    DecodeSettings.from_config(sampling, schedule='zigzag')
  with pytest.raises(ValueError, match='decoding steps=0'):
    DecodeSettings.from_config(sampling, num_steps=0)
  with pytest.raises(TypeError, match='unknown decoding settings'):
    DecodeSettings.from_config(sampling, steps=3)

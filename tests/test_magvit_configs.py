"""MAGVIT configs (configs/magvit_*.py): variants, validation and the paper's parameter counts.

The paper's counts (MAGVIT-B 128M, MAGVIT-L 464M) match transformer + 3D-VQ tokenizer: the
transformers alone are ~87M / ~304M and the 3D-VQ B / L ~41M / ~158M.
"""

import math
import os

import jax
import jax.numpy as jnp
import pytest

from magvit_jax.config_schema import validate_config
from magvit_jax.magvit_presets import ARGS
from magvit_jax.models.transformer import count_params
from magvit_jax.config_loader import load_config
from magvit_jax.models import tokenizers
from magvit_jax.models.transformer import build_transformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_PARAMS = {'B': 128e6, 'L': 464e6}


def tokenizer_params(config) -> int:
  model = tokenizers.build_tokenizer(config.model)
  shapes = jax.eval_shape(
    model.init, jax.random.PRNGKey(0), jnp.zeros((1,) + tokenizers.input_shape(config))
  )
  return count_params(shapes['params'])


def transformer_params(config, tok_config) -> int:
  model = build_transformer(config.model, math.prod(tokenizers.token_shape(tok_config)))
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), *model.dummy_inputs())
  return count_params(shapes['params'])


@pytest.mark.parametrize('size', ['B', 'L'])
def test_paper_parameter_counts(size):
  tok = load_config(f'magvit_ucf101.py:tokenizer_{size}')
  tr = load_config(f'magvit_ucf101.py:{size}')
  assert tokenizers.token_shape(tok) == (4, 16, 16)
  n_tok, n_tr = tokenizer_params(tok), transformer_params(tr, tok)
  total = n_tok + n_tr
  print(
    f'MAGVIT-{size}: transformer {n_tr / 1e6:.2f}M + 3D-VQ {n_tok / 1e6:.2f}M = '
    f'{total / 1e6:.2f}M (paper {PAPER_PARAMS[size] / 1e6:.0f}M)'
  )
  assert abs(total - PAPER_PARAMS[size]) / PAPER_PARAMS[size] < 0.05


@pytest.mark.parametrize('name', ['magvit_ucf101', 'magvit_bair', 'magvit_k600'])
def test_every_variant_validates(name):
  for arg in ARGS:
    c = load_config(f'{name}.py:{arg}')
    if c.stage == 'transformer':
      c.tokenizer_workdir = '/tmp/tok'
    validate_config(c, c.stage)
    if c.stage == 'tokenizer':
      frames = c.data.num_frames
      t, h, w = tokenizers.token_shape(c)
      assert t * tokenizers.build_tokenizer(c.model).temporal_downsample_factor == frames
  with pytest.raises(ValueError, match='does not exist; variants of'):
    load_config(f'{name}.py:XL')


def test_bad_commit_task_is_refused():
  c = load_config('magvit_ucf101.py:digits')
  c.tokenizer_workdir = '/tmp/tok'
  c.commit.tasks = ('FP', 'XY')
  with pytest.raises(ValueError, match='commit.tasks'):
    validate_config(c, 'transformer')

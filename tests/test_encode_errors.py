"""Pixels of the wrong size, rank or dtype, or with NaN / Inf, are refused on the host, naming
the shape the tokenizer takes, before anything is compiled (`tokenizers.check_pixels`, used by
`make_tokenize_fn` and `Sampler.encode` / `Sampler.edit`). Randomly initialised tiny models: no
trained checkpoint is needed.
"""

import jax
import ml_collections
import numpy as np
import pytest
import tiny_configs

from magvit_jax import pretrained
from magvit_jax.inference.sampler import Sampler
from magvit_jax.models import tokenizers
from magvit_jax.models.transformer import build_transformer

WRONG_SIZE = (
  r'pixels: expected uint8 \(or float in \[-1, 1\]\) \[batch, 16, 16, 3\] for this tokenizer '
  r'\(data.image_size=16\), got uint8 \[2, 28, 28, 3\]'
)


@pytest.fixture(scope='module')
def tokenizer():
  """A tiny VQGAN at 16 x 16 (4 x 4 tokens) with random parameters, and its config."""
  config = tiny_configs.vqgan()
  module = tokenizers.build_tokenizer(config.model)
  params = jax.jit(tokenizers.init_params(module, config))(jax.random.PRNGKey(0))
  return module, params, config


def _pixels(shape, dtype=np.uint8):
  return np.random.default_rng(0).integers(0, 256, shape).astype(dtype)


def test_tokenize_fn_checks_shape_rank_and_dtype(tokenizer):
  module, params, config = tokenizer
  tokenize = tokenizers.make_tokenize_fn(module, config)
  assert tokenize(params, _pixels((2, 16, 16, 3))).shape == (2, 16)
  floats = _pixels((2, 16, 16, 3)) / 127.5 - 1.0
  assert tokenize(params, floats.astype(np.float32)).shape == (2, 16)
  with pytest.raises(ValueError, match=WRONG_SIZE):
    tokenize(params, _pixels((2, 28, 28, 3)))
  with pytest.raises(ValueError, match=r'got uint8 \[16, 16, 3\]'):  # No batch axis.
    tokenize(params, _pixels((16, 16, 3)))
  with pytest.raises(ValueError, match=r'\[batch, 16, 16, 3\] .* got int32 \[2, 16, 16, 3\]'):
    tokenize(params, _pixels((2, 16, 16, 3), np.int32))
  # Shapes are static: under jit the same error comes when tracing, before compiling.
  with pytest.raises(ValueError, match=WRONG_SIZE):
    jax.jit(tokenize)(params, _pixels((2, 28, 28, 3)))


def test_tokenize_fn_counts_non_finite_values(tokenizer):
  module, params, config = tokenizer
  tokenize = tokenizers.make_tokenize_fn(module, config)
  pixels = np.zeros((2, 16, 16, 3), np.float32)
  pixels[0, 0, 0] = np.nan  # 3 values
  pixels[1, 5, 5, 1] = -np.inf
  with pytest.raises(ValueError, match=r'pixels: 4 of 1536 values are NaN or Inf'):
    tokenize(params, pixels)
  with pytest.raises(ValueError, match='4 of 1536 values are NaN or Inf'):
    tokenize(params, jax.numpy.asarray(pixels))  # A device array is checked on the host too.


def test_check_pixels_without_config_and_for_videos(tokenizer):
  module = tokenizer[0]
  with pytest.raises(ValueError, match=r'expected uint8 \(or float in \[-1, 1\]\) \[batch, H, W'):
    tokenizers.check_pixels(_pixels((1, 4, 16, 16, 3)), module=module)  # A video to a VQGAN.
  tokenizers.check_pixels(_pixels((1, 4, 16, 16, 3)))  # Any tokenizer: either rank.
  video = ml_collections.ConfigDict({'data': {'image_size': 16, 'num_frames': 4}})
  with pytest.raises(
    ValueError,
    match=r'videos: expected uint8 \[batch, 4, 16, 16, 3\] for this tokenizer '
    r'\(data.num_frames=4, data.image_size=16\), got uint8 \[1, 16, 16, 3\]',
  ):
    tokenizers.check_pixels(_pixels((1, 16, 16, 3)), video, name='videos', allow_float=False)


@pytest.fixture(scope='module')
def sampler(tokenizer):
  """A Sampler over the random tokenizer; its transformer is never run by these tests."""
  module, params, tok_config = tokenizer
  config = tiny_configs.maskgit('unused-tokenizer-workdir')
  transformer = build_transformer(config.model, tokenizers.num_tokens(tok_config))
  loaded = {
    'transformer': pretrained.Loaded(transformer, None, config, 0),
    'tokenizer': pretrained.Loaded(module, params, tok_config, 0),
  }
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(pretrained, 'load_transformer', lambda *a, **k: loaded['transformer'])
    patch.setattr(pretrained, 'load_tokenizer', lambda *a, **k: loaded['tokenizer'])
    return Sampler('unused-workdir')


def test_sampler_encode_checks_on_the_host(sampler):
  assert sampler.encode(_pixels((3, 16, 16, 3))).shape == (3, 4, 4)
  compiled = sampler._encode
  sampler._encode = None  # Nothing below may reach the jitted encoder.
  try:
    with pytest.raises(ValueError, match=WRONG_SIZE.replace('pixels', 'images')):
      sampler.encode(_pixels((2, 28, 28, 3)))
    with pytest.raises(ValueError, match=WRONG_SIZE.replace('pixels', 'images')):
      sampler.edit(_pixels((2, 28, 28, 3)), np.ones((4, 4), bool), [0, 1])
    bad = np.full((1, 16, 16, 3), np.inf, np.float32)
    with pytest.raises(ValueError, match='images: 768 of 768 values are NaN or Inf'):
      sampler.to_tokens(bad)
  finally:
    sampler._encode = compiled

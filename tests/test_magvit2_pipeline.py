"""MAGVIT-v2 end to end on tiny settings: the causal LFQ tokenizer trains jointly on videos and
images, the MaskGIT transformer trains on its tokens with a factorised vocabulary, and the
sampler decodes videos. Also prints the parameter counts of the configs."""

import importlib.util
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magvit_jax.models.transformer import count_params
from magvit_jax.sampling import Sampler
from magvit_jax.trainers import metrics_writer as mw
from magvit_jax.trainers import tokenizer as tokenizer_trainer
from magvit_jax.trainers import transformer as transformer_trainer

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(filename, arg):
  spec = importlib.util.spec_from_file_location(filename, REPO / 'configs' / filename)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def tiny_tokenizer_config():
  c = load_config('magvit2_tokenizer_video.py', 'digits')
  c.data.image_size = 16
  c.image_data.image_size = 16
  c.image_every = 2
  c.model.update(
    dict(
      filters=8,
      channel_multipliers=(1, 2, 2),
      num_res_blocks=1,
      num_groups=4,
      num_bits=6,
      entropy_chunk_size=16,
    )
  )
  c.batch_size = 8
  c.eval_batch_size = 100
  c.num_train_steps = 4
  c.log_every = 1
  c.checkpoint_every = 2
  c.optimizer.update(dict(warmup_steps=1, decay_steps=4))
  return c


@pytest.fixture(scope='module')
def tokenizer_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('v2tok') / 'run')
  return workdir, tokenizer_trainer.train_and_evaluate(tiny_tokenizer_config(), workdir)


def test_joint_tokenizer_trains_on_videos_and_images(tokenizer_run):
  workdir, result = tokenizer_run
  metrics = mw.read_metrics(workdir)
  assert all(np.isfinite(metrics[s]['loss']) for s in range(1, 5))
  # Held-out evaluation on both the videos (5 frames -> 2 x 4 x 4 tokens) and the images.
  assert result['eval_examples'] == 300 and result['eval_image_examples'] == 300
  for key in ('eval_psnr', 'eval_image_psnr'):
    assert 3.0 < result[key] < 60.0
  assert 0 < result['eval_codebook_usage'] <= 1.0
  assert tokenizer_trainer.token_shape(tiny_tokenizer_config()) == (2, 4, 4)


def test_joint_schedule_resumes_on_the_same_steps():
  """Step s is an image step iff s % image_every == 0, also after a restart at any step."""
  config = tiny_tokenizer_config()
  config.image_every = 3
  full = tokenizer_trainer.mixed_batches(config, 2, start_step=0)
  kinds = ['video' if 'video' in next(full) else 'image' for _ in range(9)]
  assert kinds == ['video', 'video', 'image'] * 3
  resumed = tokenizer_trainer.mixed_batches(config, 2, start_step=4)
  again = tokenizer_trainer.mixed_batches(config, 2, start_step=0)
  reference = [next(again) for _ in range(9)][4:]
  for expected in reference:
    got = next(resumed)
    assert got.keys() == expected.keys()
    for k in got:
      np.testing.assert_array_equal(got[k], expected[k])


def test_transformer_trains_and_decodes_videos_on_lfq_tokens(tokenizer_run, tmp_path):
  c = load_config('magvit2_transformer.py', 'digits')
  c.tokenizer_workdir = tokenizer_run[0]
  c.data.image_size = 16
  c.model.update(
    dict(codebook_size=64, num_sub_tokens=2, hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64)
  )
  c.batch_size = 8
  c.num_train_steps = 3
  c.log_every = 1
  c.sampling.num_steps = 4
  workdir = str(tmp_path / 'run')
  transformer_trainer.train_and_evaluate(c, workdir)
  metrics = mw.read_metrics(workdir)
  # Factorised loss starts near the token NLL of a uniform guess, 2 * ln(8) = ln(64).
  assert abs(metrics[1]['loss'] - math.log(64)) < 1.0
  sampler = Sampler(workdir)
  assert sampler.model.num_sub_tokens == 2 and sampler.model.seq_len == 32
  out = sampler.generate([3, 7], num_steps=4, batch_size=2)
  assert out['images'].shape == (2, 5, 16, 16, 3) and out['images'].dtype == np.uint8
  assert out['tokens'].shape == (2, 32) and int(out['tokens'].max()) < 64
  assert [int((h == 64).sum()) for h in out['history'][:, 0]][-1] == 0
  # Editing a video: the first latent frame (the first video frame) is kept exactly.
  video = out['images']
  region = np.zeros((2, 4, 4), bool)
  region[1] = True
  edited = sampler.edit(video, region, [3, 7], num_steps=2, batch_size=2)
  np.testing.assert_array_equal(edited['tokens'][:, :16], edited['original_tokens'][:, :16])


@pytest.mark.parametrize(
  'filename,arg,expected_millions',
  [
    ('magvit2_tokenizer_video.py', 'kinetics', (360, 380)),
    ('magvit2_tokenizer_video.py', 'digits', (0.5, 1.2)),
    ('magvit2_tokenizer_imagenet.py', 'imagenet', (370, 390)),
    ('magvit2_tokenizer_imagenet.py', 'digits', (0.5, 1.2)),
  ],
)
def test_magvit2_tokenizer_config_parameter_counts(filename, arg, expected_millions):
  c = load_config(filename, arg)
  model = tokenizer_trainer.build_model(c.model)
  shapes = jax.eval_shape(
    model.init, jax.random.PRNGKey(0), jnp.zeros((1,) + tokenizer_trainer.input_shape(c))
  )
  n = count_params(shapes['params']) / 1e6
  print(
    f'{filename}:{arg}: {n:.2f}M parameters, tokens '
    f'{tokenizer_trainer.token_shape(c)} of input {tokenizer_trainer.input_shape(c)}'
  )
  assert expected_millions[0] < n < expected_millions[1]

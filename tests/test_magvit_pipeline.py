"""MAGVIT end to end on tiny settings: a 2D VQGAN inflates into the 3D-VQ tokenizer, which
trains on moving-digit clips; the COMMIT transformer trains on its tokens with all ten tasks;
`video_tasks` runs a task with known pixels unchanged and scores FP against its baseline; the
sample CLI writes the task outputs."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from magvit_jax.inference import video_tasks
from magvit_jax.masking import commit
from magvit_jax.models import vqgan3d
from magvit_jax.inference.sampler import Sampler
from magvit_jax import metrics_writer as mw
from magvit_jax.trainers import tokenizer as tokenizer_trainer
from magvit_jax.trainers import transformer as transformer_trainer
from magvit_jax import pretrained
from magvit_jax.models import tokenizers
import tiny_configs  # tests/tiny_configs.py

# Trains or runs subprocesses: the full suite (CI) runs it, the fast lane (-m 'not slow') skips it.
pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('magvit')
  tokenizer_trainer.train_and_evaluate(tiny_configs.vqgan_2d_for_inflation(), str(root / 'vqgan2d'))
  c3d = tiny_configs.vqgan3d(inflate_from=str(root / 'vqgan2d'))
  tok = tokenizer_trainer.train_and_evaluate(c3d, str(root / 'vqgan3d'))
  transformer_trainer.train_and_evaluate(
    tiny_configs.commit(str(root / 'vqgan3d')), str(root / 'commit')
  )
  return root, c3d, tok


def test_inflated_init_is_the_2d_vqgan(runs):
  root, c3d, _ = runs
  model = tokenizers.build_tokenizer(c3d.model)
  shape = (1,) + tokenizers.input_shape(c3d)
  base = lambda rng: model.init(rng, jax.numpy.zeros(shape))['params']  # pylint: disable=unnecessary-lambda-assignment
  init = tokenizer_trainer.inflated_init(base, c3d.model, None)
  params = init(jax.random.PRNGKey(0))
  params_2d = pretrained.load_tokenizer(str(root / 'vqgan2d')).params
  expected = vqgan3d.inflate_params(params_2d, base(jax.random.PRNGKey(0)), 'central')
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_array_equal(a, b)
  kernel = params['encoder']['conv_in']['kernel']
  kernel = getattr(kernel, 'value', kernel)
  assert kernel.shape == (3, 3, 3, 3, 8)
  np.testing.assert_array_equal(kernel[0], 0.0)  # central: only the middle slice is non-zero


def test_3d_tokenizer_trains_on_clips(runs):
  root, c3d, tok = runs
  metrics = mw.read_metrics(str(root / 'vqgan3d'))
  assert all(np.isfinite(metrics[s]['loss']) for s in range(1, 4))
  assert tokenizers.token_shape(c3d) == (2, 8, 8)
  assert tok['eval_examples'] == 300 and 5.0 < tok['eval_psnr'] < 60.0


def test_commit_transformer_trains_with_all_tasks(runs):
  root = runs[0]
  metrics = mw.read_metrics(str(root / 'commit'))
  for s in range(1, 5):
    m = metrics[s]
    assert np.isfinite(m['loss']) and m['num_masked'] >= 1
    assert {'mask_ce', 'refine_ce', 'recon_ce', 'num_refine'} <= m.keys()
  sampler = Sampler(str(root / 'commit'))
  assert sampler.model.num_tasks == len(commit.TASKS) and sampler.model.seq_len == 128


@pytest.mark.parametrize('task', ['FP', 'IPD', 'CFP'])
def test_task_keeps_known_pixels(runs, task):
  root = runs[0]
  sampler = Sampler(str(root / 'commit'))
  rng = np.random.default_rng(0)
  videos = rng.integers(0, 256, (3, 4, 16, 16, 3), dtype=np.uint8)
  out = video_tasks.run_task(sampler, task, videos, labels=[1, 2, 3], num_steps=3, batch_size=4)
  assert out['videos'].shape == videos.shape and out['videos'].dtype == np.uint8
  known = out['known']
  assert known.any() and (~known).any()
  np.testing.assert_array_equal(out['videos'][known], videos[known])
  np.testing.assert_array_equal(out['videos'][~known], out['generated'][~known])
  expected_labels = [1, 2, 3] if task == 'CFP' else [sampler.model.null_label] * 3
  np.testing.assert_array_equal(out['labels'], expected_labels)
  assert int((out['history'][-1] == sampler.model.mask_token_id).sum()) == 0


def test_evaluate_task_and_baselines(runs):
  root = runs[0]
  sampler = Sampler(str(root / 'commit'))
  videos, labels = video_tasks.load_clips(sampler.config, 4)
  assert videos.shape == (4, 4, 16, 16, 3)
  metrics, _ = video_tasks.evaluate_task(sampler, 'FP', videos, labels, num_steps=3)
  assert set(metrics) == {'FP/psnr', 'FP/baseline_psnr', 'FP/examples'}
  assert 3.0 < metrics['FP/psnr'] < 60.0 and 3.0 < metrics['FP/baseline_psnr'] < 60.0
  # Baselines by hand: FP repeats the last known frame, FI blends the known frames.
  known = np.zeros((4, 4, 16, 16), bool)
  known[:, :2] = True
  fp = video_tasks.baseline('FP', videos, known)
  np.testing.assert_array_equal(fp[:, 2], videos[:, 1])
  np.testing.assert_array_equal(fp[:, 3], videos[:, 1])
  known = np.zeros((4, 4, 16, 16), bool)
  known[:, [0, 3]] = True
  fi = video_tasks.baseline('FI', videos, known).astype(float)
  want = videos[:, 0] + (videos[:, 3].astype(float) - videos[:, 0]) / 3
  np.testing.assert_allclose(fi[:, 1], np.clip(np.round(want), 0, 255))
  with pytest.raises(ValueError, match='no baseline'):
    video_tasks.baseline('OPC', videos, known)


def test_sample_cli_task(runs, tmp_path):
  root = runs[0]
  out = tmp_path / 'fi'
  env = dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu')
  subprocess.run(
    [
      sys.executable,
      '-m',
      'magvit_jax.sample',
      f'--workdir={root / "commit"}',
      f'--output={out}',
      '--task=FI',
      '--num_samples=3',
      '--steps=2',
    ],
    check=True,
    env=env,
    cwd=REPO,
    timeout=300,
    capture_output=True,
  )
  with np.load(out / 'samples.npz') as f:
    images, known, targets = f['images'], f['known'], f['targets']
  assert images.shape == (3, 4, 16, 16, 3)
  np.testing.assert_array_equal(known[:, 0], True)
  np.testing.assert_array_equal(known[:, 1:3], False)
  np.testing.assert_array_equal(images[known], targets[known])
  assert (out / 'grid.png').stat().st_size > 0 and (out / 'samples.gif').stat().st_size > 0

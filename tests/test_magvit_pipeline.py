"""MAGVIT end to end on tiny settings: a 2D VQGAN inflates into the 3D-VQ tokenizer, which
trains on moving-digit clips; the COMMIT transformer trains on its tokens with all ten tasks;
`video_tasks` runs a task with known pixels unchanged and scores FP against its baseline; the
sample CLI writes the task outputs."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from magvit_jax import video_tasks
from magvit_jax.masking import commit
from magvit_jax.models import vqgan3d
from magvit_jax.sampling import Sampler
from magvit_jax.trainers import metrics_writer as mw
from magvit_jax.trainers import tokenizer as tokenizer_trainer
from magvit_jax.trainers import transformer as transformer_trainer

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(
  filters=8,
  channel_multipliers=(1, 2),
  num_res_blocks=1,
  embedding_dim=8,
  codebook_size=32,
  num_groups=4,
)


def load_config(filename, arg):
  spec = importlib.util.spec_from_file_location(filename, REPO / 'configs' / filename)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def shrink(c, steps):
  c.data.image_size = 16
  c.batch_size = 8
  c.eval_batch_size = 100
  c.num_train_steps = steps
  c.log_every = 1
  c.checkpoint_every = steps
  c.optimizer.update(dict(warmup_steps=1, decay_steps=steps))
  return c


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('magvit')
  c2d = shrink(load_config('vqgan_imagenet.py', 'digits'), 2)
  c2d.model.update(TINY)
  tokenizer_trainer.train_and_evaluate(c2d, str(root / 'vqgan2d'))

  c3d = shrink(load_config('magvit_ucf101.py', 'tokenizer_digits'), 3)
  c3d.data.num_frames = 4
  c3d.model.update(dict(TINY, temporal_downsample=(True,)))
  c3d.model.inflate_from = str(root / 'vqgan2d')
  tok = tokenizer_trainer.train_and_evaluate(c3d, str(root / 'vqgan3d'))

  ct = shrink(load_config('magvit_ucf101.py', 'digits'), 4)
  ct.data.num_frames = 4
  ct.tokenizer_workdir = str(root / 'vqgan3d')
  ct.commit.update(dict(fp_frames=2, fi_frames=1))
  ct.model.update(dict(codebook_size=32, hidden_size=32, num_layers=1, num_heads=2, mlp_dim=64))
  ct.sampling.num_steps = 3
  transformer_trainer.train_and_evaluate(ct, str(root / 'commit'))
  return root, c3d, tok


def test_inflated_init_is_the_2d_vqgan(runs):
  root, c3d, _ = runs
  model = tokenizer_trainer.build_model(c3d.model)
  shape = (1,) + tokenizer_trainer.input_shape(c3d)
  base = lambda rng: model.init(rng, jax.numpy.zeros(shape))['params']  # pylint: disable=unnecessary-lambda-assignment
  init = tokenizer_trainer.inflated_init(base, c3d.model, None)
  params = init(jax.random.PRNGKey(0))
  _, params_2d, _ = tokenizer_trainer.load_tokenizer(str(root / 'vqgan2d'))
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
  assert tokenizer_trainer.token_shape(c3d) == (2, 8, 8)
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

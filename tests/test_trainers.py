"""Trainer-level tests: learning, exact kill-and-resume, NaN stop, config and checkpoint errors,
and the sample CLI, on tiny versions of the digits configs."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magvit_jax import checkpoint as ckpt_lib
from magvit_jax import parallel
from magvit_jax.trainers import loop
from magvit_jax import metrics_writer as mw
from magvit_jax.trainers import tokenizer as tokenizer_trainer
from magvit_jax.trainers import transformer as transformer_trainer
from magvit_jax import pretrained
from magvit_jax.models import tokenizers
from magvit_jax.models.transformer import build_transformer
import tiny_configs  # tests/tiny_configs.py

# Trains or runs subprocesses: the full suite (CI) runs it, the fast lane (-m 'not slow') skips it.
pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]


def losses(workdir):
  metrics = mw.read_metrics(workdir)
  return np.asarray([metrics[s]['loss'] for s in sorted(metrics) if 'loss' in metrics[s]])


@pytest.fixture(scope='module')
def tokenizer_run(tmp_path_factory):
  """An uninterrupted 6-step tiny tokenizer run (also the frozen tokenizer for stage 2)."""
  workdir = str(tmp_path_factory.mktemp('tok') / 'run')
  result = tokenizer_trainer.train_and_evaluate(tiny_configs.vqgan(), workdir)
  return workdir, result


@pytest.fixture(scope='module')
def transformer_run(tmp_path_factory, tokenizer_run):
  workdir = str(tmp_path_factory.mktemp('mg') / 'run')
  transformer_trainer.train_and_evaluate(tiny_configs.maskgit(tokenizer_run[0]), workdir)
  return workdir


def test_tokenizer_run_writes_workdir_and_evaluates(tokenizer_run):
  workdir, result = tokenizer_run
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4', '6']
  assert json.load(open(os.path.join(workdir, 'config.json')))['stage'] == 'tokenizer'
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  assert result['eval_examples'] == 300  # the whole test split
  assert 5.0 < result['eval_psnr'] < 60.0
  assert 0.0 < result['eval_codebook_usage'] <= 1.0
  assert len(losses(workdir)) == 6


def test_tokenizer_kill_and_resume_matches_uninterrupted(tokenizer_run, tmp_path):
  workdir = str(tmp_path / 'run')
  config = tiny_configs.vqgan()
  # "Killed" after step 5: the last checkpoint is step 4, step 5 is lost and redone.
  tokenizer_trainer.train_and_evaluate(config, workdir, max_steps=5)
  assert ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), {}).latest_step() == 4
  tokenizer_trainer.train_and_evaluate(config, workdir)
  np.testing.assert_allclose(losses(workdir), losses(tokenizer_run[0]), rtol=1e-6, atol=0)


def test_transformer_kill_and_resume_matches_uninterrupted(
  transformer_run, tokenizer_run, tmp_path
):
  workdir = str(tmp_path / 'run')
  config = tiny_configs.maskgit(tokenizer_run[0])
  transformer_trainer.train_and_evaluate(config, workdir, max_steps=3)
  transformer_trainer.train_and_evaluate(config, workdir)
  expected = losses(transformer_run)
  assert len(expected) == 6
  np.testing.assert_allclose(losses(workdir), expected, rtol=1e-6, atol=0)


def test_transformer_resumes_across_a_scan_layers_switch(
  transformer_run, tokenizer_run, tmp_path, capsys
):
  """Unrolled -> scanned (with remat) -> unrolled: same losses as one uninterrupted run."""
  workdir = str(tmp_path / 'run')
  config = tiny_configs.maskgit(tokenizer_run[0])
  config.checkpoint_every = 2
  transformer_trainer.train_and_evaluate(config, workdir, max_steps=3)  # checkpoint 2
  scanned = tiny_configs.maskgit(tokenizer_run[0])
  scanned.checkpoint_every = 2
  scanned.model.update(dict(scan_layers=True, remat_policy='full'))
  transformer_trainer.train_and_evaluate(scanned, workdir, max_steps=5)  # 2 -> checkpoint 4
  assert 'checkpoint 2 has model.scan_layers=False; converted to scan_layers=True' in (
    capsys.readouterr().out
  )
  transformer_trainer.train_and_evaluate(config, workdir)  # 4 -> 6, unrolled again
  assert 'checkpoint 4 has model.scan_layers=True; converted to scan_layers=False' in (
    capsys.readouterr().out
  )
  np.testing.assert_allclose(losses(workdir), losses(transformer_run), rtol=2e-5, atol=0)


def test_checkpoint_of_another_architecture_is_refused(tokenizer_run, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(tokenizer_run[0], workdir)
  config = tiny_configs.vqgan()
  config.model.filters = 32
  config.model.num_groups = 8
  with pytest.raises(ckpt_lib.IncompatibleCheckpointError, match=r'model\.filters: checkpoint=16'):
    tokenizer_trainer.train_and_evaluate(config, workdir)


def test_transformer_needs_a_trained_tokenizer(tmp_path):
  config = tiny_configs.maskgit(str(tmp_path / 'nowhere'))
  with pytest.raises(FileNotFoundError, match='not a training workdir'):
    transformer_trainer.train_and_evaluate(config, str(tmp_path / 'run'))


def test_transformer_codebook_must_match_tokenizer(tokenizer_run, tmp_path):
  config = tiny_configs.maskgit(tokenizer_run[0])
  config.model.codebook_size = 64
  with pytest.raises(ValueError, match='codebook_size=64 but the tokenizer'):
    transformer_trainer.train_and_evaluate(config, str(tmp_path / 'run'))


def test_invalid_config_values_name_the_field(tmp_path):
  config = tiny_configs.vqgan()
  config.data.image_size = 18
  with pytest.raises(ValueError, match=r'config\.data\.image_size=18: expected a multiple of'):
    tokenizer_trainer.train_and_evaluate(config, str(tmp_path / 'run'))


def test_unknown_config_override_is_rejected(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'magvit_jax.train',
      '--config=configs/vqgan_imagenet.py:digits',
      f'--workdir={tmp_path}',
      '--config.model.filterz=3',
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode != 0
  assert 'filterz' in proc.stderr
  assert not os.path.exists(tmp_path / 'config.json')


def test_nan_loss_stops_with_step_and_last_checkpoint(tmp_path):
  """The loop's NaN guard, with a step function whose loss turns NaN at step 5."""
  config = tiny_configs.vqgan(steps=8)
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])
  state = {'w': jnp.zeros(())}

  @jax.jit
  def step(state, batch):
    w = state['w'] + 1.0
    loss = jnp.where(w == 5.0, jnp.nan, w)
    return {'w': w}, {'loss': loss}

  batches = iter([{'image': np.zeros((1,), np.float32)}] * 8)
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / 'checkpoints'), {'stage': 'test'})
  writer = mw.MetricsWriter(str(tmp_path))
  with pytest.raises(mw.NonFiniteLossError, match=r'at step 5.*Last good checkpoint: .*/4'):
    loop.run_loop(
      state=state,
      train_step=step,
      batches=batches,
      mesh=mesh,
      checkpointer=checkpointer,
      writer=writer,
      config=config,
      start_step=0,
      stage='test',
    )
  assert checkpointer.all_steps() == [2, 4]  # nothing written after the NaN


def _repeat_same_batch(step_fn, state, batch, n):
  out = []
  for _ in range(n):
    state, metrics = step_fn(state, batch)
    out.append(float(metrics['loss']))
  return np.asarray(out)


def test_tokenizer_overfits_one_batch():
  """Loss on one repeated batch falls by at least 5x in 60 steps."""
  config = tiny_configs.vqgan(steps=60)
  config.optimizer.update(dict(warmup_steps=5, decay='constant', lr=3e-3))
  model = tokenizers.build_tokenizer(config.model)
  tx, _, state, _ = tiny_configs.init_train_state(config, model, (jnp.zeros((1, 16, 16, 3)),))
  images = np.random.RandomState(0).randint(0, 256, (8, 16, 16, 3)).astype(np.uint8)
  images = np.repeat(np.repeat(images[:, ::4, ::4], 4, 1), 4, 2)  # smooth-ish content
  step = jax.jit(tokenizer_trainer.make_train_step(model, tx, config.losses))
  curve = _repeat_same_batch(step, state, {'image': images}, 60)
  assert curve[-5:].mean() < curve[:3].mean() / 5, curve


def test_transformer_learns_tokens_of_one_batch(tokenizer_run):
  """Masked-token loss on one repeated batch falls by at least 2x in 60 steps."""
  config = tiny_configs.maskgit(tokenizer_run[0], steps=60)
  config.masking.label_smoothing = 0.0
  config.model.dropout_rate = 0.0
  config.optimizer.update(dict(warmup_steps=5, decay='constant', lr=3e-3, weight_decay=0.0))
  frozen = pretrained.load_tokenizer(tokenizer_run[0])
  tokenizer, tok_params = frozen.module, frozen.params
  model = build_transformer(config.model, 16)
  example = (jnp.zeros((1, 16), jnp.int32), jnp.zeros((1,), jnp.int32))
  tx, _, state, _ = tiny_configs.init_train_state(config, model, example)
  rs = np.random.RandomState(1)
  batch = {
    'image': rs.randint(0, 256, (8, 16, 16, 3)).astype(np.uint8),
    'label': rs.randint(0, 10, (8,)).astype(np.int32),
  }
  step = jax.jit(
    transformer_trainer.make_train_step(
      model, tokenizers.make_tokenize_fn(tokenizer), tok_params, tx, config
    )
  )
  curve = _repeat_same_batch(step, state, batch, 60)
  assert curve[-5:].mean() < curve[:3].mean() / 2, curve


def test_sample_cli_writes_grid_and_npz(transformer_run, tmp_path):
  out = tmp_path / 'samples'
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'magvit_jax.sample',
      f'--workdir={transformer_run}',
      f'--output={out}',
      '--num_samples=6',
      '--classes=3,5',
      '--steps=4',
      '--seed=1',
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  data = np.load(out / 'samples.npz')
  assert data['images'].dtype == np.uint8 and data['images'].shape == (6, 16, 16, 3)
  assert data['labels'].tolist() == [3, 3, 3, 5, 5, 5]
  assert (out / 'grid.png').stat().st_size > 0
  assert (out / 'decoding_steps.png').stat().st_size > 0


def test_editing_keeps_tokens_outside_the_region(transformer_run):
  from magvit_jax.inference.sampler import Sampler

  sampler = Sampler(transformer_run)
  images = np.random.RandomState(2).randint(0, 256, (3, 16, 16, 3)).astype(np.uint8)
  region = np.zeros((4, 4), bool)
  region[1:3, 1:3] = True  # inpaint the centre 2x2 tokens
  out = sampler.edit(images, region, labels=[1, 2, 3], num_steps=3, batch_size=4)
  keep = ~region.reshape(-1)
  np.testing.assert_array_equal(out['tokens'][:, keep], out['original_tokens'][:, keep])
  assert out['images'].shape == (3, 16, 16, 3) and out['images'].dtype == np.uint8
  assert (out['tokens'] < 32).all() and (out['history'][-1] < 32).all()
  # The region is regenerated from [MASK]: 4 masked tokens at the start, 0 at the end.
  assert ((out['history'][0] == 32).sum(axis=1) < 4).all()
  with pytest.raises(ValueError, match='token grid'):
    sampler.edit(images, np.zeros((16, 16), bool), labels=[1, 2, 3])

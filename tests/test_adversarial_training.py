"""Adversarial tokenizer training: discriminator frozen before its start step, gradients reach
both networks, generator EMA, and exact kill-and-resume with the discriminator state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magvit_jax import parallel
from magvit_jax import metrics_writer as mw
from magvit_jax.trainers import tokenizer as tokenizer_trainer
from magvit_jax.trainers import train_state as ts
from magvit_jax.trainers.adversarial import Adversarial
from magvit_jax import pretrained
from magvit_jax.config_loader import load_config
from magvit_jax.models import tokenizers
import tiny_configs  # tests/tiny_configs.py

# Trains or runs subprocesses: the full suite (CI) runs it, the fast lane (-m 'not slow') skips it.
pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def setup():
  config = tiny_configs.vqgan_gan()
  model = tokenizers.build_tokenizer(config.model)
  tx = ts.make_optimizer(config.optimizer)
  adv = Adversarial(config, (16, 16, 3))
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])
  init_fn, shardings, _ = ts.state_layout(
    lambda r: model.init(r, jnp.zeros((1, 16, 16, 3)))['params'],
    tx,
    mesh,
    config.logical_axis_rules,
    adv.init_extra,
  )
  state = jax.jit(init_fn, out_shardings=shardings)(jax.random.PRNGKey(0))
  step = jax.jit(tokenizer_trainer.make_train_step(model, tx, config.losses, adv))
  images = np.random.RandomState(0).randint(0, 256, (8, 16, 16, 3)).astype(np.uint8)
  states, metrics = [state], []
  for _ in range(3):
    state, m = step(state, {'image': images})
    states.append(state)
    metrics.append(jax.device_get(m))
  return config, states, metrics


def _max_diff(a, b):
  return max(
    float(jnp.max(jnp.abs(x - y)))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
  )


def test_discriminator_frozen_before_start_step(setup):
  _, states, metrics = setup
  # Steps 0 and 1 (state.step < disc_start_step=2): no discriminator update, no G adv term.
  assert _max_diff(states[0].disc, states[1].disc) == 0.0
  assert _max_diff(states[1].disc, states[2].disc) == 0.0
  assert metrics[0]['gan_g_loss'] == 0.0 and metrics[1]['gan_g_loss'] == 0.0
  # Step 2: the discriminator moves and the generator gets an adversarial term.
  assert _max_diff(states[2].disc['params'], states[3].disc['params']) > 1e-4
  assert metrics[2]['gan_g_loss'] != 0.0
  for key in ('d_loss', 'd_adv_loss', 'lecam_loss', 'r1_penalty'):
    assert np.isfinite(metrics[2][key])


def test_generator_ema(setup):
  config, states, _ = setup
  d = config.ema_decay
  # (The first step has learning rate 0 in warmup, so compare the second and third.)
  expected = jax.tree_util.tree_map(
    lambda e, p: d * e + (1 - d) * p, states[2].ema_params, states[3].params
  )
  assert _max_diff(expected, states[3].ema_params) < 1e-6
  assert _max_diff(states[3].ema_params, states[3].params) > 1e-6
  assert states[3].eval_params is states[3].ema_params


def test_adversarial_gradient_reaches_generator():
  """After the start step the generator's gradient depends on the discriminator term."""
  config = tiny_configs.vqgan_gan()
  model = tokenizers.build_tokenizer(config.model)
  adv = Adversarial(config, (16, 16, 3))
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 16, 16, 3), minval=-1, maxval=1)
  params = model.init(jax.random.PRNGKey(0), x)['params']
  disc = adv.init_extra(jax.random.PRNGKey(2), params)['disc']

  def g_adv(p, step):
    recon, _ = model.apply({'params': p}, x)
    return adv.generator_terms(disc, jnp.int32(step), x, recon)['gan_g_loss']

  before = jax.grad(g_adv)(params, 0)
  after = jax.grad(g_adv)(params, 5)
  assert _max_diff(before, jax.tree_util.tree_map(jnp.zeros_like, before)) == 0.0
  assert _max_diff(after, jax.tree_util.tree_map(jnp.zeros_like, after)) > 0.0


def test_gan_kill_and_resume_matches_uninterrupted(tmp_path):
  config = tiny_configs.vqgan_gan(steps=4)
  full, resumed = str(tmp_path / 'full'), str(tmp_path / 'resumed')
  tokenizer_trainer.train_and_evaluate(config, full)
  tokenizer_trainer.train_and_evaluate(config, resumed, max_steps=3)
  result = tokenizer_trainer.train_and_evaluate(config, resumed)
  a, b = mw.read_metrics(full), mw.read_metrics(resumed)
  for step in range(1, 5):
    for key in ('loss', 'd_loss', 'gan_g_loss'):
      np.testing.assert_allclose(b[step][key], a[step][key], rtol=1e-6)
  assert np.isfinite(result['eval_psnr'])
  # A frozen tokenizer loaded from the workdir comes with the EMA parameters.
  params = pretrained.load_tokenizer(resumed).params
  assert _max_diff(params, result['state'].ema_params) == 0.0


def test_joint_image_video_gan_uses_a_time_pooled_discriminator():
  """Joint training (tests/test_joint_gan.py trains it) gets the time-pooled 3D discriminator and
  image LeCAM EMAs; a video-only run keeps the unpooled one and its state layout."""
  c = load_config('magvit2_tokenizer_video.py:digits')
  c.losses.update(dict(gan_weight=0.1, lecam_weight=0.05))
  adv = Adversarial(c, (5, 32, 32, 3))
  assert adv.joint and adv.disc.pool_time
  c.image_every = 0
  adv = Adversarial(c, (5, 32, 32, 3))
  assert not adv.joint and not adv.disc.pool_time
  params = {'w': jnp.zeros(())}
  disc = jax.eval_shape(adv.init_extra, jax.random.PRNGKey(0), params)['disc']
  assert sorted(disc) == ['lecam_fake', 'lecam_real', 'opt_state', 'params']

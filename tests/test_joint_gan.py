"""Joint image-video GAN training of the MAGVIT-v2 tokenizer: one time-pooled 3D discriminator
scores clips of any length, images as 1-frame clips, with a LeCAM EMA pair per kind."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magvit_jax.models import discriminator as disc_lib
from magvit_jax.models import tokenizers
from magvit_jax.trainers import tokenizer as tokenizer_trainer
from magvit_jax.trainers import train_state as ts
from magvit_jax.trainers.adversarial import Adversarial
import tiny_configs  # tests/tiny_configs.py

LEAVES = ('params', 'opt_state', 'lecam_real', 'lecam_fake', 'lecam_real_image', 'lecam_fake_image')


def _joint_gan_config():
  c = tiny_configs.magvit2_tokenizer()  # 5-frame 16x16 clips, 16x16 images every 2nd step.
  c.losses.update(
    dict(
      gan_weight=0.1,
      gan_loss='non_saturating',
      disc_start_step=0,
      lecam_weight=0.05,
      r1_gamma=1.0,
    )
  )
  c.discriminator.update(dict(filters=4, channel_multipliers=(1, 2)))
  c.disc_optimizer.lr = 1e-2
  return c


def _max_diff(a, b):
  return max(
    float(jnp.max(jnp.abs(x - y)))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
  )


def _values(abstract, rng):
  """numpy values for an abstract (eval_shape) tree: He-normal float matrices, 0.1-normal
  vectors. `init` itself would compile one truncated-normal sampler per parameter shape."""

  def value(leaf):
    shape = leaf.shape
    if len(shape) == 1:
      return jnp.asarray(rng.standard_normal(shape, np.float32) * 0.1)
    return jnp.asarray(rng.standard_normal(shape, np.float32) * np.sqrt(1.0 / np.prod(shape[:-1])))

  return jax.tree_util.tree_map(value, nn.unbox(abstract))


def _zeros(abstract):
  return jax.tree_util.tree_map(lambda l: jnp.zeros(l.shape, l.dtype), nn.unbox(abstract))


@pytest.fixture(scope='module')
def joint():
  config = _joint_gan_config()
  model = tokenizers.build_tokenizer(config.model)
  tx = ts.make_optimizer(config.optimizer)
  adv = Adversarial(config, tokenizers.input_shape(config))
  rng = np.random.default_rng(0)
  key = jax.random.PRNGKey(0)
  params = _values(jax.eval_shape(tokenizers.init_params(model, config), key), rng)
  # The disc state's layout from init_extra itself; values as above (Adam moments and EMAs 0).
  disc = _zeros(jax.eval_shape(adv.init_extra, key, params)['disc'])
  disc['params'] = _values(jax.eval_shape(adv.disc.init, key, jnp.zeros((1, 5, 16, 16, 3))), rng)[
    'params'
  ]
  state = ts.TrainState(
    step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=key, disc=disc
  )
  step = jax.jit(tokenizer_trainer.make_train_step(model, tx, config.losses, adv))
  data = np.random.RandomState(0)
  video = data.randint(0, 256, (4, 5, 16, 16, 3)).astype(np.uint8)
  image = data.randint(0, 256, (4, 16, 16, 3)).astype(np.uint8)
  s0 = state
  s1, m_video = step(s0, {'video': video})
  s2, m_image = step(s1, {'image': image})
  return adv, (s0, s1, s2), jax.device_get(m_video), jax.device_get(m_image)


@pytest.mark.slow  # compiles the tokenizer step for both kinds; the full suite runs it
def test_joint_gan_steps_train_both_kinds(joint):
  adv, (s0, s1, s2), m_video, m_image = joint
  assert adv.joint and adv.disc.pool_time
  assert sorted(s0.disc) == sorted(LEAVES)
  for m in (m_video, m_image):
    for key in ('loss', 'gan_g_loss', 'd_loss', 'd_adv_loss', 'lecam_loss', 'r1_penalty'):
      assert np.isfinite(m[key]), key
    assert m['gan_g_loss'] != 0.0
  # The discriminator moves on the video step and again on the image step.
  assert _max_diff(s0.disc['params'], s1.disc['params']) > 1e-4
  assert _max_diff(s1.disc['params'], s2.disc['params']) > 1e-4
  # Each step updates only its own kind's LeCAM EMAs: ema <- 0.999 * 0 + 0.001 * mean logits.
  np.testing.assert_allclose(s1.disc['lecam_real'], 0.001 * m_video['logits_real'], rtol=1e-5)
  np.testing.assert_allclose(s1.disc['lecam_fake'], 0.001 * m_video['logits_fake'], rtol=1e-5)
  assert s1.disc['lecam_real_image'] == 0.0 and s1.disc['lecam_fake_image'] == 0.0
  np.testing.assert_allclose(s2.disc['lecam_real_image'], 0.001 * m_image['logits_real'], rtol=1e-5)
  np.testing.assert_allclose(s2.disc['lecam_fake_image'], 0.001 * m_image['logits_fake'], rtol=1e-5)
  assert s2.disc['lecam_real'] == s1.disc['lecam_real']
  assert s2.disc['lecam_fake'] == s1.disc['lecam_fake']
  # The generator trains on both kinds too.
  assert _max_diff(s1.params, s2.params) > 0.0


def test_pooled_discriminator_scores_any_clip_length():
  model = disc_lib.StyleGANDiscriminator3D(filters=4, channel_multipliers=(1, 2), pool_time=True)
  key = jax.random.PRNGKey(0)
  # One set of weights for every T: the parameter shapes do not depend on the clip length.
  shapes = {
    t: jax.tree_util.tree_map(
      lambda l: l.shape, nn.unbox(jax.eval_shape(model.init, key, jnp.zeros((2, t, 16, 16, 3))))
    )
    for t in (1, 5)
  }
  assert shapes[1] == shapes[5]
  # Without pooling the head is tied to T (T' * H' * W' * C inputs).
  unpooled = disc_lib.StyleGANDiscriminator3D(filters=4, channel_multipliers=(1, 2))
  head = lambda t: (
    nn.unbox(  # pylint: disable=g-long-lambda
      jax.eval_shape(unpooled.init, key, jnp.zeros((2, t, 16, 16, 3)))
    )['params']['dense_0']['kernel'].shape
  )
  assert head(1) != head(5)
  params = _values(
    jax.eval_shape(model.init, key, jnp.zeros((2, 5, 16, 16, 3))), np.random.default_rng(0)
  )
  rng = np.random.default_rng(1)
  apply = jax.jit(lambda v: model.apply(params, v))
  outs = {}
  for t in (1, 3, 5):
    x = jnp.asarray(rng.uniform(-1, 1, (2, t, 16, 16, 3)), jnp.float32)
    outs[t] = apply(x)
    assert outs[t].shape == (2,) and outs[t].dtype == jnp.float32, t
    assert np.all(np.isfinite(outs[t])) and np.all(np.asarray(outs[t]) != 0.0), t
  assert not np.allclose(outs[3], outs[5])


def test_joint_gan_needs_one_spatial_size():
  c = _joint_gan_config()
  c.image_data.image_size = 8
  with pytest.raises(ValueError, match=r'image_data.image_size=8: expected 16'):
    Adversarial(c, tokenizers.input_shape(c))

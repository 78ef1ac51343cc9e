"""The adversarial and perceptual part of tokenizer training (VQGAN / MAGVIT recipe).

Config (`config.losses` unless noted):
  gan_weight: weight of the generator's adversarial loss (0 disables the discriminator).
  gan_loss: 'hinge' or 'non_saturating'.
  disc_start_step: before it the discriminator is frozen (no update) and the generator's
    adversarial term is 0.
  lecam_weight: LeCAM regularisation of the discriminator (EMA of real/fake logits).
  r1_gamma: R1 gradient penalty, added to the discriminator loss as 0.5 * gamma * R1.
  perceptual_weight, perceptual_weights, perceptual_required, perceptual_network: the
    perceptual loss ('vgg16_lpips': VGG-16 LPIPS-style; 'resnet50_logits': squared distance of
    ResNet-50 logits, MAGVIT's) with weights from a user-supplied .npz (missing: one warning
    and the term is off, or an error when required).
  config.discriminator: filters, channel_multipliers; config.disc_optimizer: lr, b1, b2.
  config.ema_decay: EMA of the generator parameters (0 = off), used for eval and sampling.

The discriminator state lives in `TrainState.disc` = {'params', 'opt_state', 'lecam_real',
'lecam_fake'}; the generator EMA in `TrainState.ema_params`.

Joint image-video training (`config.image_every > 0`, a video tokenizer): one 3D discriminator
scores both kinds. Its time axis is averaged before the dense head (`pool_time`), so the same
weights score a T-frame clip and an image, fed as a 1-frame clip [b, 1, H, W, 3]; images and
videos must share H, W (`image_data.image_size == data.image_size`). An image step trains G and
D on the image batch, a video step on the video batch; both steps share D's params and Adam
state. The LeCAM anchors are kept per kind (`lecam_real_image`, `lecam_fake_image` next to the
video ones): D's logits on single frames and on clips have different typical values, and a
shared EMA would pull each kind towards an anchor mixed in the image_every ratio.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from magvit_jax.losses import gan
from magvit_jax.losses import perceptual
from magvit_jax.models.discriminator import StyleGANDiscriminator2D, StyleGANDiscriminator3D


class Adversarial:
  """Discriminator, its optimizer, GAN/perceptual losses and the generator EMA of one run.

  Args:
    config: the run's config.
    example_input_shape: per-example input, (H, W, 3) for images or (T, H, W, 3) for videos.
    load_perceptual: False when only the state layout is needed (restoring a checkpoint).
  """

  def __init__(self, config, example_input_shape: tuple[int, ...], load_perceptual: bool = True):
    losses = config.losses
    self.gan_weight = float(losses.gan_weight)
    self.disc_start_step = int(losses.disc_start_step)
    self.lecam_weight = float(losses.lecam_weight)
    self.r1_gamma = float(losses.r1_gamma)
    self.ema_decay = float(config.ema_decay)
    self.input_shape = tuple(example_input_shape)
    self.disc = None
    self.joint = False
    if self.gan_weight:
      d = config.discriminator
      kwargs = dict(filters=int(d.filters), channel_multipliers=tuple(d.channel_multipliers))
      if config.image_every:
        self.joint = True
        _check_joint_shapes(config, self.input_shape)
        self.disc = StyleGANDiscriminator3D(pool_time=True, **kwargs)
      elif len(self.input_shape) == 4:
        self.disc = StyleGANDiscriminator3D(**kwargs)
      else:
        self.disc = StyleGANDiscriminator2D(**kwargs)
      self.d_loss_fn, self.g_loss_fn = gan.get_gan_losses(losses.gan_loss)
      o = config.disc_optimizer
      self.disc_tx = optax.adam(o.lr, b1=o.b1, b2=o.b2)
    self.perceptual = None
    self.perceptual_weight = float(losses.perceptual_weight)
    if self.perceptual_weight and load_perceptual:
      self.perceptual = perceptual.make_perceptual_loss(
        losses.perceptual_weights,
        required=bool(losses.perceptual_required),
        network=str(losses.get('perceptual_network', 'vgg16_lpips')),
      )

  @property
  def enabled(self) -> bool:
    return self.disc is not None or self.ema_decay > 0

  def init_extra(self, rng: jax.Array, params: Any) -> dict:
    """Extra TrainState fields: ema_params and the discriminator state."""
    extra = {}
    if self.ema_decay:
      extra['ema_params'] = jax.tree_util.tree_map(lambda p: p, params)
    if self.disc is not None:
      disc_params = self.disc.init(rng, jnp.zeros((1,) + self.input_shape, jnp.float32))['params']
      extra['disc'] = {
        'params': disc_params,
        'opt_state': self.disc_tx.init(disc_params),
        'lecam_real': jnp.zeros((), jnp.float32),
        'lecam_fake': jnp.zeros((), jnp.float32),
      }
      if self.joint:
        extra['disc']['lecam_real_image'] = jnp.zeros((), jnp.float32)
        extra['disc']['lecam_fake_image'] = jnp.zeros((), jnp.float32)
    return extra

  def _disc_input(self, v: jax.Array) -> jax.Array:
    """An image batch [b, H, W, 3] of joint training as 1-frame clips [b, 1, H, W, 3]."""
    return v[:, None] if self.joint and v.ndim == 4 else v

  def _lecam_keys(self, x: jax.Array) -> tuple[str, str]:
    """The disc-state keys of the LeCAM EMAs for this batch's kind (static: its rank)."""
    if self.joint and x.ndim == 4:
      return 'lecam_real_image', 'lecam_fake_image'
    return 'lecam_real', 'lecam_fake'

  def generator_terms(
    self, disc_state: Any, step: jax.Array, x: jax.Array, recon: jax.Array
  ) -> dict[str, jax.Array]:
    """Weighted adversarial and perceptual terms of the generator loss (differentiable in recon)."""
    terms = {}
    if self.disc is not None:
      fake_logits = self.disc.apply({'params': disc_state['params']}, self._disc_input(recon))
      weight = gan.generator_gan_weight(step, self.disc_start_step, self.gan_weight)
      terms['gan_g_loss'] = weight * self.g_loss_fn(fake_logits)
    if self.perceptual is not None:
      terms['perceptual_loss'] = self.perceptual_weight * self.perceptual.apply(
        self.perceptual.params, recon, x
      )
    return terms

  def discriminator_update(
    self, disc_state: Any, step: jax.Array, x: jax.Array, recon: jax.Array
  ) -> tuple[Any, dict[str, jax.Array]]:
    """One discriminator step on real x vs stop_gradient(recon); frozen before the start step.

    x, recon: [b, H, W, 3] images or [b, T, H, W, 3] videos (both kinds in joint training, where
    images go through the video discriminator as 1-frame clips and keep their own LeCAM EMAs).
    """
    key_real, key_fake = self._lecam_keys(x)
    x = self._disc_input(x)
    fake = jax.lax.stop_gradient(self._disc_input(recon))
    apply = lambda p, v: self.disc.apply({'params': p}, v)  # pylint: disable=g-long-lambda

    def loss_fn(params):
      real_logits, fake_logits = apply(params, x), apply(params, fake)
      loss = self.d_loss_fn(real_logits, fake_logits)
      terms = {'d_adv_loss': loss}
      if self.lecam_weight:
        terms['lecam_loss'] = gan.lecam_loss(
          real_logits, fake_logits, disc_state[key_real], disc_state[key_fake]
        )
        loss = loss + self.lecam_weight * terms['lecam_loss']
      if self.r1_gamma:
        terms['r1_penalty'] = gan.r1_penalty(lambda v: apply(params, v), x)
        loss = loss + 0.5 * self.r1_gamma * terms['r1_penalty']
      return loss, (real_logits, fake_logits, terms)

    (loss, (real, fake_l, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      disc_state['params']
    )
    updates, opt_state = self.disc_tx.update(grads, disc_state['opt_state'], disc_state['params'])
    lecam_real, lecam_fake = gan.update_lecam_ema(
      disc_state[key_real], disc_state[key_fake], real, fake_l
    )
    updated = dict(
      disc_state,
      params=optax.apply_updates(disc_state['params'], updates),
      opt_state=opt_state,
      **{key_real: lecam_real, key_fake: lecam_fake},
    )
    active = step >= self.disc_start_step
    new_state = jax.tree_util.tree_map(
      lambda new, old: jnp.where(active, new, old), updated, disc_state
    )
    metrics = dict(terms, d_loss=loss, logits_real=jnp.mean(real), logits_fake=jnp.mean(fake_l))
    return new_state, metrics

  def update_ema(self, ema_params: Any, params: Any) -> Any:
    d = self.ema_decay
    return jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p, ema_params, params)


def _check_joint_shapes(config, input_shape: tuple[int, ...]) -> None:
  """Joint image-video GAN training needs a video tokenizer and images of the videos' H, W."""
  if len(input_shape) != 4:
    raise ValueError(
      f'config.image_every={config.image_every} with config.losses.gan_weight > 0: joint '
      f'image-video training needs a video tokenizer (config.data.num_frames set); the input is '
      f'{input_shape}'
    )
  image_size = int(config.image_data.image_size)
  if image_size != int(config.data.image_size):
    raise ValueError(
      f'config.image_data.image_size={image_size}: expected {int(config.data.image_size)} '
      '(config.data.image_size) with config.losses.gan_weight > 0 and config.image_every > 0; '
      "the joint discriminator's head is tied to one spatial size"
    )

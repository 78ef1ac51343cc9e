"""Adversarial losses and regularizers for tokenizer (VQGAN / MAGVIT) training.

Pure functions of arrays: logits are float arrays of any shape (usually `[b]`),
reductions are means over every element. Nothing here owns optimizer state;
the LeCAM EMA values are carried by the trainer and updated with
`update_lecam_ema`.

Conventions used by the trainer:
  * discriminator loss = d_loss(real, fake) + lecam_weight * lecam_loss(...)
                         + 0.5 * r1_gamma * r1_penalty(...)
  * generator loss     = recon + perceptual
                         + generator_gan_weight(step, disc_start, w)
                           * [adaptive_generator_weight(...)] * g_loss(fake)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax


# ---------------------------------------------------------------------------
# GAN objectives.


def hinge_d_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """Hinge discriminator loss: mean(relu(1 - real)) + mean(relu(1 + fake)). Scalar float32."""
  real = jnp.asarray(real_logits, jnp.float32)
  fake = jnp.asarray(fake_logits, jnp.float32)
  return jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake))


def hinge_g_loss(fake_logits: jax.Array) -> jax.Array:
  """Hinge generator loss: -mean(fake). Scalar float32."""
  return -jnp.mean(jnp.asarray(fake_logits, jnp.float32))


def non_saturating_d_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """Non-saturating (logistic) discriminator loss.

  mean(softplus(-real)) + mean(softplus(fake)), i.e. -log sigmoid(real) - log(1 - sigmoid(fake)).
  Scalar float32.
  """
  real = jnp.asarray(real_logits, jnp.float32)
  fake = jnp.asarray(fake_logits, jnp.float32)
  return jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake))


def non_saturating_g_loss(fake_logits: jax.Array) -> jax.Array:
  """Non-saturating generator loss: mean(softplus(-fake)) = -log sigmoid(fake). Scalar float32."""
  return jnp.mean(jax.nn.softplus(-jnp.asarray(fake_logits, jnp.float32)))


_GAN_LOSSES = {
  'hinge': (hinge_d_loss, hinge_g_loss),
  'non_saturating': (non_saturating_d_loss, non_saturating_g_loss),
}


def get_gan_losses(name: str) -> tuple[Callable[..., jax.Array], Callable[..., jax.Array]]:
  """`(d_loss_fn, g_loss_fn)` by name: 'hinge' (MaskGIT/VQGAN) or 'non_saturating' (MAGVIT)."""
  if name not in _GAN_LOSSES:
    raise ValueError(f'gan loss {name!r}; expected one of {sorted(_GAN_LOSSES)}')
  return _GAN_LOSSES[name]


# ---------------------------------------------------------------------------
# LeCAM regularization (Tseng et al., CVPR 2021).


def lecam_loss(
  real_logits: jax.Array, fake_logits: jax.Array, ema_real: jax.Array, ema_fake: jax.Array
) -> jax.Array:
  """LeCAM regularizer for the discriminator.

  mean(relu(real - ema_fake)^2) + mean(relu(ema_real - fake)^2), where `ema_real` /
  `ema_fake` are scalar EMAs of the mean real / fake logits (no gradient flows into
  them). Scalar float32; multiply by the LeCAM weight in the trainer.
  """
  real = jnp.asarray(real_logits, jnp.float32)
  fake = jnp.asarray(fake_logits, jnp.float32)
  ema_real = jax.lax.stop_gradient(jnp.asarray(ema_real, jnp.float32))
  ema_fake = jax.lax.stop_gradient(jnp.asarray(ema_fake, jnp.float32))
  return jnp.mean(jnp.square(jax.nn.relu(real - ema_fake))) + jnp.mean(
    jnp.square(jax.nn.relu(ema_real - fake))
  )


def update_lecam_ema(
  ema_real: jax.Array,
  ema_fake: jax.Array,
  real_logits: jax.Array,
  fake_logits: jax.Array,
  decay: float = 0.999,
) -> tuple[jax.Array, jax.Array]:
  """One EMA step: ema <- decay * ema + (1 - decay) * mean(logits).

  Returns `(new_ema_real, new_ema_fake)`, scalar float32, gradient-free. The trainer
  keeps both scalars in its state (initialise them to 0).
  """
  real = jax.lax.stop_gradient(jnp.mean(jnp.asarray(real_logits, jnp.float32)))
  fake = jax.lax.stop_gradient(jnp.mean(jnp.asarray(fake_logits, jnp.float32)))
  new_real = decay * jnp.asarray(ema_real, jnp.float32) + (1.0 - decay) * real
  new_fake = decay * jnp.asarray(ema_fake, jnp.float32) + (1.0 - decay) * fake
  return new_real, new_fake


# ---------------------------------------------------------------------------
# R1 gradient penalty (Mescheder et al., 2018).


def r1_penalty(disc_apply: Callable[[jax.Array], jax.Array], real_x: jax.Array) -> jax.Array:
  """Mean over the batch of the squared gradient norm of D at real data.

  penalty = mean_i || d/dx_i sum_j D(x)_j ||^2, the norm taken over every non-batch axis.

  Convention: this returns the *raw* expectation E||grad D||^2. The regularization
  term added to the discriminator loss is `0.5 * gamma * r1_penalty(...)` (the
  R1 definition of Mescheder et al. and StyleGAN2's `r1_gamma / 2`), so a config
  "R1 penalty 10" means gamma = 10, i.e. 5 * r1_penalty.

  `disc_apply` maps x `[b, ...]` -> logits (any shape, summed); it should close over
  the discriminator params so that the penalty is differentiable w.r.t. them
  (second-order gradients through `jax.grad`). With a minibatch-stddev layer the
  logits of one example depend on the others; the gradient of the summed logits
  then includes those cross terms, as in StyleGAN2.
  Returns a float32 scalar.
  """
  x = jax.lax.stop_gradient(jnp.asarray(real_x, jnp.float32))
  grads = jax.grad(lambda inp: jnp.sum(jnp.asarray(disc_apply(inp), jnp.float32)))(x)
  per_example = jnp.sum(jnp.square(grads).reshape(grads.shape[0], -1), axis=-1)
  return jnp.mean(per_example)


# ---------------------------------------------------------------------------
# Generator-side weighting.


def _global_norm(tree: Any) -> jax.Array:
  if not jax.tree_util.tree_leaves(tree):
    raise ValueError('empty gradient tree passed to adaptive_generator_weight')
  return optax.tree.norm(jax.tree_util.tree_map(lambda l: jnp.asarray(l, jnp.float32), tree))


def adaptive_generator_weight(
  nll_grads_last_layer: Any, g_grads_last_layer: Any, max_weight: float = 1e4
) -> jax.Array:
  """VQGAN's adaptive adversarial weight.

  w = ||grad_last nll|| / (||grad_last g_loss|| + 1e-4), clipped to [0, max_weight] and
  stop-gradient. Each argument is the gradient of the respective loss w.r.t. the
  decoder's last layer (an array or a pytree of arrays, e.g. the last conv's
  {'kernel', 'bias'}; the global L2 norm over the tree is used). Scalar float32;
  multiply it with the GAN weight and the generator's adversarial loss.
  """
  w = _global_norm(nll_grads_last_layer) / (_global_norm(g_grads_last_layer) + 1e-4)
  return jax.lax.stop_gradient(jnp.clip(w, 0.0, max_weight))


def generator_gan_weight(step: jax.Array | int, disc_start_step: int, weight: float) -> jax.Array:
  """The adversarial weight at `step`: 0 before `disc_start_step`, `weight` from it on.

  Before the start step the discriminator is neither used for the generator loss
  nor updated (the trainer should skip / zero its update). Works with a traced
  `step`. Scalar float32.
  """
  step = jnp.asarray(step)
  return jnp.where(step >= disc_start_step, jnp.float32(weight), jnp.float32(0.0))

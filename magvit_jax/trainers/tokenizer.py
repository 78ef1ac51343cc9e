"""Stage 1 trainer: the 2D VQGAN tokenizer.

Read top to bottom: config checks -> mesh -> data -> model + optimizer ->
sharded state (fresh or restored) -> jitted step -> loop -> held-out eval.

Loss = l2_weight * MSE + l1_weight * L1 + VQ loss (commitment + codebook).
The adversarial and perceptual terms of the papers plug into
`generator_loss_terms` (their own issue); the step sums whatever that returns.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from magvit_jax import checkpoint as ckpt_lib
from magvit_jax import parallel
from magvit_jax.config_schema import config_from_dict, validate_config
from magvit_jax.models.vqgan import VQGAN
from magvit_jax.trainers import loop
from magvit_jax.trainers import metrics_writer as mw
from magvit_jax.trainers import train_state as ts


def build_model(model_config) -> VQGAN:
  return VQGAN(
      filters=int(model_config.filters),
      channel_multipliers=tuple(model_config.channel_multipliers),
      num_res_blocks=int(model_config.num_res_blocks),
      embedding_dim=int(model_config.embedding_dim),
      codebook_size=int(model_config.codebook_size),
      commitment_cost=float(model_config.commitment_cost),
      num_groups=int(model_config.num_groups))


def to_float(images: jax.Array) -> jax.Array:
  """uint8 [..., 3] in [0, 255] -> float32 in [-1, 1]."""
  return images.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(images: jax.Array) -> jax.Array:
  """float in [-1, 1] -> uint8 [0, 255] (clipped)."""
  return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def psnr(x: jax.Array, y: jax.Array) -> jax.Array:
  """Per-example PSNR in dB of images in [-1, 1] (peak = full range). x, y: [b, ...] -> [b]."""
  x01, y01 = (jnp.clip(x, -1, 1) + 1) / 2, (jnp.clip(y, -1, 1) + 1) / 2
  mse = jnp.mean((x01 - y01) ** 2, axis=tuple(range(1, x.ndim)))
  return 10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10))


def generator_loss_terms(images: jax.Array, recon: jax.Array, aux: dict, loss_config) -> dict:
  """Weighted loss terms of the generator (encoder, quantizer, decoder)."""
  terms = {'vq_loss': aux['loss']}
  if loss_config.l2_weight:
    terms['l2_loss'] = loss_config.l2_weight * jnp.mean((recon - images) ** 2)
  if loss_config.l1_weight:
    terms['l1_loss'] = loss_config.l1_weight * jnp.mean(jnp.abs(recon - images))
  return terms


def make_train_step(model: VQGAN, tx, loss_config):
  def train_step(state: ts.TrainState, batch: dict) -> tuple[ts.TrainState, dict]:
    images = to_float(batch['image'])

    def loss_fn(params):
      recon, aux = model.apply({'params': params}, images)
      terms = generator_loss_terms(images, recon, aux, loss_config)
      return sum(terms.values()), (recon, aux, terms)

    (loss, (recon, aux, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = ts.apply_gradients(state, grads, tx)
    metrics = {'loss': loss, 'psnr': jnp.mean(psnr(images, recon)),
               'codebook_usage': aux['usage'], 'perplexity': aux['perplexity'], **terms}
    return new_state, metrics
  return train_step


def evaluate(model: VQGAN, params: Any, config, mesh) -> dict[str, float]:
  """Held-out reconstruction: mean PSNR (dB) and codebook usage over the eval split."""
  from magvit_jax.data import pipeline  # TF is imported only here.

  @jax.jit
  def recon_fn(params, images):
    images = to_float(images)
    recon, aux = model.apply({'params': params}, images)
    return psnr(images, recon), aux['tokens']

  psnrs, tokens = [], []
  for batch in pipeline.create_dataset(config.data, split=config.data.eval_split,
                                       batch_size=int(config.eval_batch_size), train=False,
                                       drop_remainder=False):
    p, t = recon_fn(params, batch['image'])
    psnrs.append(np.asarray(p))
    tokens.append(np.asarray(t))
  tokens_all = np.concatenate(tokens)
  used = np.unique(tokens_all).size
  return {'eval_psnr': float(np.mean(np.concatenate(psnrs))),
          'eval_codebook_usage': used / int(config.model.codebook_size),
          'eval_examples': float(tokens_all.shape[0])}


def train_and_evaluate(config, workdir: str, *, max_steps: int | None = None) -> dict[str, Any]:
  """Trains (or resumes) the tokenizer in `workdir`; returns final state and eval metrics."""
  from magvit_jax.data import pipeline  # TF is imported only here.

  validate_config(config, stage='tokenizer')
  os.makedirs(workdir, exist_ok=True)
  ckpt_lib.write_workdir_config(workdir, config)

  # Mesh.
  mesh = parallel.make_mesh(config.mesh)
  local_batch = parallel.check_batch_size(int(config.batch_size), mesh)

  # Model and optimizer.
  model = build_model(config.model)
  tx = ts.make_optimizer(config.optimizer)
  size = int(config.data.image_size)

  def init_params(rng):
    return model.init(rng, jnp.zeros((1, size, size, 3), jnp.float32))['params']

  # Sharded state: restored from the latest checkpoint, or fresh.
  init_fn, shardings, abstract = ts.state_layout(init_params, tx, mesh, config.logical_axis_rules)
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), config.to_dict(),
                                       int(config.max_checkpoints))
  start_step = checkpointer.latest_step() or 0
  if start_step:
    state = checkpointer.restore(abstract)
    print(f'[tokenizer] resumed from {checkpointer.directory}/{start_step}', flush=True)
  else:
    state = jax.jit(init_fn, out_shardings=shardings)(jax.random.PRNGKey(int(config.seed)))

  # Data, positioned after the last completed step.
  batches = pipeline.create_dataset(config.data, split=config.data.train_split,
                                    batch_size=local_batch, train=True, seed=int(config.seed),
                                    start_step=start_step)

  # Step.
  step_fn = jax.jit(make_train_step(model, tx, config.losses),
                    in_shardings=(shardings, parallel.batch_sharding(mesh)),
                    out_shardings=(shardings, parallel.replicated(mesh)),
                    donate_argnums=(0,))

  # Loop.
  writer = mw.MetricsWriter(workdir, enabled=jax.process_index() == 0)
  state = loop.run_loop(state=state, train_step=step_fn, batches=batches, mesh=mesh,
                        checkpointer=checkpointer, writer=writer, config=config,
                        start_step=start_step, stage='tokenizer', max_steps=max_steps)
  result = {'state': state}
  if max_steps is None:
    result.update(evaluate(model, state.params, config, mesh))
    writer.write(int(config.num_train_steps), {k: v for k, v in result.items() if k != 'state'})
    print(f"[tokenizer] held-out PSNR {result['eval_psnr']:.2f} dB, codebook usage "
          f"{result['eval_codebook_usage']:.1%} on {int(result['eval_examples'])} images", flush=True)
  writer.close()
  checkpointer.close()
  return result


def load_tokenizer(workdir: str, mesh=None) -> tuple[VQGAN, Any, dict]:
  """Frozen tokenizer from a tokenizer workdir: (model, params, config dict)."""
  config = ckpt_lib.read_workdir_config(workdir)
  if config.get('stage') != 'tokenizer':
    raise ValueError(f"{workdir} holds a {config.get('stage')!r} run; expected a 'tokenizer' workdir")
  cfg = config_from_dict(config)
  model = build_model(cfg.model)
  size = int(cfg.data.image_size)
  mesh = mesh or parallel.make_mesh({'data': -1})
  tx = ts.make_optimizer(cfg.optimizer)
  _, _, abstract = ts.state_layout(
      lambda rng: model.init(rng, jnp.zeros((1, size, size, 3), jnp.float32))['params'],
      tx, mesh, cfg.logical_axis_rules)
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), config)
  if checkpointer.latest_step() is None:
    raise FileNotFoundError(f'no tokenizer checkpoint in {workdir}/checkpoints; train it first with '
                            f'`python -m magvit_jax.train --config=configs/vqgan_imagenet.py:digits '
                            f'--workdir={workdir}`')
  state = checkpointer.restore(abstract)
  checkpointer.close()
  return model, state.params, config

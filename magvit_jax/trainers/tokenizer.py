"""Stage 1 trainer: the tokenizers (2D VQGAN of MaskGIT, 3D-VQ of MAGVIT, causal CNN + LFQ of
MAGVIT-v2).

Read top to bottom: config checks -> mesh -> data -> model + optimizer ->
sharded state (fresh or restored) -> jitted step -> loop -> held-out eval.

`config.model.name` picks the tokenizer: 'vqgan' (images [b, H, W, 3]),
'vqgan3d' (MAGVIT's 3D-VQ, videos [b, T, H, W, 3]; with `model.inflate_from` set
to a trained 2D VQGAN workdir a fresh run starts from its weights inflated to 3D
by `model.inflation` = 'central' or 'average') or 'magvit2' (videos
[b, T, H, W, 3]; images are 1-frame videos). With
`config.image_data` set and `config.image_every = k`, every k-th step of a
video tokenizer trains on an image batch instead (joint image-video training,
one set of weights); which steps are image steps is fixed by the step number,
so a resumed run replays exactly. With the GAN on, the discriminator trains on the same batch
(images as 1-frame clips of the time-pooled video discriminator: trainers/adversarial.py).

Loss = l2_weight * MSE + l1_weight * L1 + quantizer loss (VQ: commitment +
codebook; LFQ: commitment + entropy penalty).
The adversarial and perceptual terms of the papers plug into
`generator_loss_terms` (their own issue); the step sums whatever that returns.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from magvit_jax import checkpoint as ckpt_lib
from magvit_jax import fileio
from magvit_jax import parallel
from magvit_jax import pretrained
from magvit_jax.config_schema import validate_config
from magvit_jax.data import skipped_records
from magvit_jax.metrics import image as image_metrics
from magvit_jax.models import tokenizers, vqgan3d
from magvit_jax.quantizers import lfq
from magvit_jax.trainers import loop
from magvit_jax.trainers.adversarial import Adversarial
from magvit_jax import metrics_writer as mw
from magvit_jax.trainers import train_state as ts


def generator_loss_terms(images: jax.Array, recon: jax.Array, aux: dict, loss_config) -> dict:
  """Weighted loss terms of the generator (encoder, quantizer, decoder)."""
  terms = {'vq_loss': aux['loss']}
  if loss_config.l2_weight:
    terms['l2_loss'] = loss_config.l2_weight * jnp.mean((recon - images) ** 2)
  if loss_config.l1_weight:
    terms['l1_loss'] = loss_config.l1_weight * jnp.mean(jnp.abs(recon - images))
  return terms


def lfq_entropy_weight(model, loss_config) -> tuple[Callable[[Any], jax.Array], bool] | None:
  """The LFQ entropy weight per step, or None for a VQ tokenizer.

  Returns (weight_fn, annealed): weight_fn(step) is `lfq.entropy_weight_at` with
  `model.entropy_weight` and `loss_config.entropy_weight_*`; annealed is False for the
  'constant' schedule (the model's aux['loss'] then already holds the right weight).
  """
  if not hasattr(model, 'entropy_weight'):
    return None
  schedule = str(loss_config.get('entropy_weight_schedule', 'constant'))

  def weight_fn(step):
    return lfq.entropy_weight_at(
      step,
      float(model.entropy_weight),
      schedule,
      float(loss_config.get('entropy_weight_start_factor', 1.0)),
      int(loss_config.get('entropy_weight_steps', 0)),
    )

  weight_fn(0)  # Raises now, naming the schedule, rather than inside the jitted step.
  return weight_fn, schedule != 'constant'


def lfq_metrics(aux: dict, entropy_weight: jax.Array) -> dict[str, jax.Array]:
  """Scalars of the LFQ quantizer to log: its loss terms, the weight used and the bit usage."""
  bits = aux['bit_usage']
  return {
    'entropy_weight': entropy_weight,
    'entropy_loss': aux['entropy_loss'],
    'per_token_entropy': aux['per_token_entropy'],
    'batch_entropy': aux['batch_entropy'],
    'commitment_loss': aux['commitment_loss'],
    'dead_bits': aux['dead_bits'],
    'bit_usage_min': jnp.min(bits),
    'bit_usage_max': jnp.max(bits),
  }


def make_train_step(model, tx, loss_config, adv: Adversarial | None = None):
  """The jitted-to-be step: generator update (+ EMA), then the discriminator's when adv has one.

  LFQ tokenizers: the entropy term is weighted by the annealed weight of `state.step`
  (`lfq_entropy_weight`), and `lfq_metrics` are logged.
  """
  entropy = lfq_entropy_weight(model, loss_config)

  def train_step(state: ts.TrainState, batch: dict) -> tuple[ts.TrainState, dict]:
    x = tokenizers.to_float(tokenizers.model_input(batch))
    entropy_weight = entropy[0](state.step) if entropy is not None else None

    def loss_fn(params):
      recon, aux = model.apply({'params': params}, x)
      terms = generator_loss_terms(x, recon, aux, loss_config)
      if entropy is not None and entropy[1]:  # aux['loss'] has model.entropy_weight: correct it.
        extra = entropy_weight - float(model.entropy_weight)
        terms['vq_loss'] = terms['vq_loss'] + extra * aux['entropy_loss']
      if adv is not None:
        terms.update(adv.generator_terms(state.disc, state.step, x, recon))
      return sum(terms.values()), (recon, aux, terms)

    (loss, (recon, aux, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = ts.apply_gradients(state, grads, tx)
    metrics = {
      'loss': loss,
      'psnr': jnp.mean(image_metrics.model_space_psnr(x, recon)),
      'codebook_usage': aux['usage'],
      'perplexity': aux['perplexity'],
      **terms,
    }
    if entropy is not None:
      metrics.update(lfq_metrics(aux, entropy_weight))
    if adv is not None and adv.ema_decay:
      new_state = new_state.replace(ema_params=adv.update_ema(state.ema_params, new_state.params))
    if adv is not None and adv.disc is not None:
      disc, d_metrics = adv.discriminator_update(state.disc, state.step, x, recon)
      new_state = new_state.replace(disc=disc)
      metrics.update(d_metrics)
    return new_state, metrics

  return train_step


def evaluate(
  model, params: Any, config, data_config=None, prefix: str = 'eval'
) -> dict[str, float]:
  """Held-out reconstruction over the eval split of `data_config` (default config.data).

  Returns {prefix_psnr: mean per-example PSNR in dB (a video's PSNR is over all its frames),
  prefix_codebook_usage: distinct tokens used / codebook size, prefix_examples}; for LFQ
  also prefix_dead_bits, prefix_bit_usage_min and prefix_bit_usage_max over all eval tokens
  (`lfq.histogram_bit_usage`).
  """
  from magvit_jax.data import pipeline  # TF is imported only here.

  data_config = data_config or config.data

  @jax.jit
  def recon_fn(params, pixels):
    x = tokenizers.to_float(pixels)
    recon, aux = model.apply({'params': params}, x)
    return image_metrics.model_space_psnr(x, recon), aux['tokens']

  vocab = tokenizers.codebook_size(config.model)
  psnr_sum, count = 0.0, 0
  histogram = np.zeros((vocab,), np.int64)
  for batch in pipeline.create_dataset(
    data_config,
    split=data_config.eval_split,
    batch_size=int(config.eval_batch_size),
    train=False,
    drop_remainder=False,
  ):
    p, t = recon_fn(params, tokenizers.model_input(batch))
    psnr_sum += float(np.sum(p))
    count += int(p.shape[0])
    histogram += np.bincount(np.asarray(t).reshape(-1), minlength=vocab)
  totals = np.array([psnr_sum, count], np.float64)
  if jax.process_count() > 1:  # Each process evaluated its own shard of the split.
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    totals = np.asarray(multihost_utils.process_allgather(totals)).sum(0)
    histogram = np.asarray(multihost_utils.process_allgather(histogram)).sum(0)
  out = {
    f'{prefix}_psnr': float(totals[0] / totals[1]),
    f'{prefix}_codebook_usage': float(np.count_nonzero(histogram)) / vocab,
    f'{prefix}_examples': float(totals[1]),
  }
  if config.model.name == 'magvit2':
    usage = lfq.histogram_bit_usage(histogram, int(config.model.num_bits))
    out[f'{prefix}_dead_bits'] = float(lfq.count_dead_bits(usage))
    out[f'{prefix}_bit_usage_min'] = float(usage.min())
    out[f'{prefix}_bit_usage_max'] = float(usage.max())
  return out


class MixedBatches:
  """Training batches for steps start_step+1, ...: videos/images of config.data, and with
  `config.image_every = k > 0` an image batch of `config.image_data` at every k-th step.

  data_state: what the checkpoint of `start_step` stored about the streams (None: a checkpoint
  without it, or a fresh run; the streams then start at `start_step`'s batch). `streams`
  maps each config section ('data', 'image_data') to its `skipped_records.GoodBatches`, whose
  positions and skip counts the training loop stores in every checkpoint.
  """

  def __init__(self, config, local_batch: int, start_step: int, data_state: dict | None = None):
    from magvit_jax.data import pipeline  # TF is imported only here.

    self._every = int(config.image_every)
    self._step = int(start_step)

    def stream(section: str, consumed: int):
      return pipeline.create_dataset(
        config[section],
        split=config[section].train_split,
        batch_size=local_batch,
        train=True,
        seed=int(config.seed),
        start_step=consumed,
        resume=skipped_records.resume_position(
          data_state, section, jax.process_index(), jax.process_count()
        ),
        stream=section,
      )

    image_steps = start_step // self._every if self._every else 0
    self.streams = {'data': stream('data', start_step - image_steps)}
    if self._every:
      self.streams['image_data'] = stream('image_data', image_steps)

  def __iter__(self) -> 'MixedBatches':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    self._step += 1
    if self._every and self._step % self._every == 0:
      return next(self.streams['image_data'])
    return next(self.streams['data'])


def inflated_init(init_params, model_config, mesh):
  """init_params of a 3D-VQ whose weights come from the 2D VQGAN in `model.inflate_from`
  (its EMA weights when it kept them), inflated by `model.inflation`."""
  source = str(model_config.inflate_from)
  source_model = pretrained.read_config(source, 'tokenizer').model.name
  if source_model != 'vqgan':
    raise ValueError(
      f'config.model.inflate_from={source!r} holds a {source_model!r} tokenizer; expected a 2D '
      "'vqgan' run"
    )
  params_2d = jax.device_get(pretrained.load_tokenizer(source, mesh).params)
  method = str(model_config.inflation)

  def init(rng):
    return vqgan3d.inflate_params(params_2d, init_params(rng), method)

  return init


def train_and_evaluate(
  config,
  workdir: str,
  *,
  max_steps: int | None = None,
  restore_step: int | None = None,
  strict_restore: bool = False,
) -> dict[str, Any]:
  """Trains (or resumes) the tokenizer in `workdir`; returns final state and eval metrics.

  Resumes from the newest readable checkpoint (or `restore_step`; `strict_restore` refuses a
  damaged one instead of falling back, see `train_state.init_or_restore`).
  """
  validate_config(config, stage='tokenizer')
  fileio.makedirs(workdir)  # Local or gs://.
  ckpt_lib.write_workdir_config(workdir, config)

  # Mesh.
  mesh = parallel.make_mesh(config.mesh)
  local_batch = parallel.check_batch_size(int(config.batch_size), mesh)

  # Model and optimizer.
  model = tokenizers.build_tokenizer(config.model)
  tx = ts.make_optimizer(config.optimizer)
  init_params = tokenizers.init_params(model, config)

  # Sharded state: restored from the latest checkpoint, or fresh.
  checkpointer = ckpt_lib.Checkpointer(
    os.path.join(workdir, 'checkpoints'), config.to_dict(), int(config.max_checkpoints)
  )
  if config.model.name == 'vqgan3d' and config.model.inflate_from:
    init_params = inflated_init(init_params, config.model, mesh)
  adv = Adversarial(config, tokenizers.input_shape(config))
  state, shardings, start_step = ts.init_or_restore(
    init_params,
    tx,
    config,
    mesh,
    checkpointer,
    'tokenizer',
    adv.init_extra,
    restore_step=restore_step,
    strict_restore=strict_restore,
  )

  # Data, positioned after the last completed step (where its checkpoint says the streams stood).
  data_state = checkpointer.data_state(start_step) if start_step else None
  batches = MixedBatches(config, local_batch, start_step, data_state)

  # Step.
  step_fn = jax.jit(
    make_train_step(model, tx, config.losses, adv),
    in_shardings=(shardings, parallel.batch_sharding(mesh)),
    out_shardings=(shardings, parallel.replicated(mesh)),
    donate_argnums=(0,),
  )

  # Loop.
  writer = mw.MetricsWriter(workdir, enabled=jax.process_index() == 0)
  state = loop.run_loop(
    state=state,
    train_step=step_fn,
    batches=batches,
    mesh=mesh,
    checkpointer=checkpointer,
    writer=writer,
    config=config,
    start_step=start_step,
    stage='tokenizer',
    max_steps=max_steps,
  )
  result = {'state': state}
  if max_steps is None:
    result.update(evaluate(model, state.eval_params, config))
    if config.image_every:
      result.update(evaluate(model, state.eval_params, config, config.image_data, 'eval_image'))
    writer.write(int(config.num_train_steps), {k: v for k, v in result.items() if k != 'state'})
    for prefix in ('eval', 'eval_image'):
      if f'{prefix}_psnr' in result:
        print(
          f'[tokenizer] held-out PSNR {result[f"{prefix}_psnr"]:.2f} dB, codebook usage '
          f'{result[f"{prefix}_codebook_usage"]:.1%} on {int(result[f"{prefix}_examples"])} '
          f'{"images" if prefix == "eval_image" or len(tokenizers.input_shape(config)) == 3 else "videos"}',
          flush=True,
        )
  writer.close()
  checkpointer.close()
  return result

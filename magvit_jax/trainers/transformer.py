"""Stage 2 trainer: masked visual token modeling (MVTM) with a frozen tokenizer.

Read top to bottom: config checks -> frozen tokenizer -> mesh -> data ->
model + optimizer -> sharded state (fresh or restored) -> jitted step -> loop.

Step: images -> tokens (frozen tokenizer, inside the jitted step) -> per
example r ~ U(0, 1), mask ceil(gamma(r) * N) tokens -> transformer ->
label-smoothed cross-entropy on the masked positions. With
`masking.class_dropout > 0` the class is replaced by the null class at that
rate, which enables classifier-free guidance at sampling time.

With `config.commit.tasks` set (MAGVIT's COMMIT, `magvit_jax/masking/commit.py`)
the step is multi-task: per example a task is drawn from the list, its known
pixels are padded to a condition video and tokenized too, the input mixes
[MASK], condition tokens and original tokens, a task prompt token is
prepended, and the loss weighs the three kinds of positions by
`commit.{mask,refine,recon}_weight`.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import optax

from magvit_jax import checkpoint as ckpt_lib
from magvit_jax import fileio
from magvit_jax import metrics_writer as mw
from magvit_jax import parallel
from magvit_jax import pretrained
from magvit_jax.config_schema import validate_config
from magvit_jax.data import skipped_records
from magvit_jax.masking import commit
from magvit_jax.masking import mvtm
from magvit_jax.models import tokenizers
from magvit_jax.models.transformer import Transformer, build_transformer, forward_flops
from magvit_jax.trainers import loop
from magvit_jax.trainers import train_state as ts

# Peak dense bf16 FLOP/s per chip, for the MFU column of the step log.
PEAK_FLOPS = {
  'TPU v4': 275e12,
  'TPU v5 lite': 197e12,
  'TPU v5e': 197e12,
  'TPU v5p': 459e12,
  'TPU v6 lite': 918e12,
  'TPU v6e': 918e12,
  'NVIDIA H100 80GB HBM3': 989e12,
  'NVIDIA H200': 989e12,
  'NVIDIA A100-SXM4-80GB': 312e12,
  'NVIDIA A100-SXM4-40GB': 312e12,
}


def commit_tasks(config) -> tuple[str, ...]:
  """The COMMIT tasks this run trains on (empty: plain MVTM)."""
  return tuple(config.commit.tasks)


def check_commit(config, tokenizer_config) -> None:
  """COMMIT needs a video tokenizer and a model with one task token per COMMIT task."""
  tasks = commit_tasks(config)
  num_tasks = int(config.model.num_tasks)
  if not tasks:
    if num_tasks:
      raise ValueError(
        f'config.model.num_tasks={num_tasks} but config.commit.tasks is empty: '
        f'set commit.tasks or model.num_tasks=0'
      )
    return
  if num_tasks != len(commit.TASKS):
    raise ValueError(
      f'config.model.num_tasks={num_tasks}: expected {len(commit.TASKS)} (one '
      f'task token per COMMIT task {commit.TASKS}) when commit.tasks is set'
    )
  if len(tokenizers.token_shape(tokenizer_config)) != 3 or not tokenizer_config.data.num_frames:
    raise ValueError(
      f'config.commit.tasks={tasks} needs a video tokenizer; the tokenizer in '
      f'{config.tokenizer_workdir} is an image tokenizer'
    )
  if any(t in commit.CLASS_TASKS for t in tasks) and int(config.data.num_classes) < 1:
    raise ValueError(
      f'config.commit.tasks includes class-conditional tasks {commit.CLASS_TASKS} '
      f'but config.data.num_classes={config.data.num_classes}'
    )


def check_tokenizer_matches(config, tokenizer_config) -> None:
  """The transformer's vocabulary and inputs must be the tokenizer's."""
  vocab = tokenizers.codebook_size(tokenizer_config.model)
  if int(config.model.codebook_size) != vocab:
    raise ValueError(
      f'config.model.codebook_size={config.model.codebook_size} but the tokenizer in '
      f'{config.tokenizer_workdir} has codebook_size={vocab}'
    )
  if int(config.data.image_size) != int(tokenizer_config.data.image_size):
    raise ValueError(
      f'config.data.image_size={config.data.image_size} but the tokenizer in '
      f'{config.tokenizer_workdir} was trained at image_size={tokenizer_config.data.image_size}'
    )
  frames, tok_frames = config.data.num_frames, tokenizer_config.data.num_frames
  if frames != tok_frames:
    raise ValueError(
      f'config.data.num_frames={frames} but the tokenizer in '
      f'{config.tokenizer_workdir} was trained with num_frames={tok_frames}'
    )


def drop_classes(labels: jax.Array, rng: jax.Array, rate: float, null_label: int) -> jax.Array:
  """labels [b] int32 with each replaced by the null class with probability `rate` (CFG)."""
  if not rate:
    return labels
  return jnp.where(jax.random.uniform(rng, labels.shape) < rate, null_label, labels)


def gradient_step(state: ts.TrainState, loss_fn, tx, config) -> tuple[ts.TrainState, dict]:
  """One optimizer update from loss_fn(params) -> (loss, metrics); adds loss, grad_norm, lr."""
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = ts.apply_gradients(state, grads, tx)
  metrics = dict(
    metrics,
    loss=loss,
    grad_norm=optax.tree.norm(grads),
    lr=ts.learning_rate_schedule(config.optimizer)(state.step),
  )
  return new_state, metrics


def make_train_step(model: Transformer, tokenize, tokenizer_params, tx, config):
  masking = config.masking

  def train_step(state: ts.TrainState, batch: dict) -> tuple[ts.TrainState, dict]:
    rng = jax.random.fold_in(state.rng, state.step)
    mask_rng, drop_rng, class_rng = jax.random.split(rng, 3)
    tokens = jax.lax.stop_gradient(tokenize(tokenizer_params, tokenizers.model_input(batch)))
    b, n = tokens.shape
    mask = mvtm.sample_mask(mask_rng, b, n, masking.schedule)
    inputs = mvtm.apply_mask(tokens, mask, model.mask_token_id)
    labels = batch['label'].astype(jnp.int32)
    labels = drop_classes(labels, class_rng, masking.class_dropout, model.null_label)

    def loss_fn(params):
      logits = model.apply(
        {'params': params}, inputs, labels, deterministic=False, rngs={'dropout': drop_rng}
      )
      return mvtm.masked_token_loss(logits, tokens, mask, masking.label_smoothing)

    return gradient_step(state, loss_fn, tx, config)

  return train_step


def make_commit_train_step(
  model: Transformer,
  tokenize,
  tokenizer_params,
  tx,
  config,
  grid: tuple[int, int, int],
  causal: bool,
):
  """COMMIT multi-task step on videos [b, T, H, W, 3] (see magvit_jax/masking/commit.py)."""
  masking, cc = config.masking, config.commit
  allowed = jnp.asarray(commit.task_ids(commit_tasks(config)), jnp.int32)
  settings = commit.TaskSettings.from_config(cc)
  weights = dict(
    mask_weight=float(cc.mask_weight),
    refine_weight=float(cc.refine_weight),
    recon_weight=float(cc.recon_weight),
  )

  def train_step(state: ts.TrainState, batch: dict) -> tuple[ts.TrainState, dict]:
    rng = jax.random.fold_in(state.rng, state.step)
    task_rng, box_rng, mask_rng, drop_rng, class_rng = jax.random.split(rng, 5)
    videos = tokenizers.to_float(batch['video'])
    b, t, h, w, _ = videos.shape
    tasks = allowed[jax.random.randint(task_rng, (b,), 0, allowed.shape[0])]
    known = commit.known_pixels(tasks, box_rng, t, h, w, settings)
    tokens = jax.lax.stop_gradient(tokenize(tokenizer_params, videos))
    cond_tokens = jax.lax.stop_gradient(
      tokenize(tokenizer_params, commit.pad_condition(videos, known))
    )
    region = commit.condition_region(known, grid, causal)
    mask = mvtm.sample_mask(mask_rng, b, tokens.shape[1], masking.schedule)
    inputs = commit.compose_inputs(tokens, cond_tokens, region, mask, model.mask_token_id)
    labels = jnp.where(commit.uses_class(tasks), batch['label'].astype(jnp.int32), model.null_label)
    labels = drop_classes(labels, class_rng, masking.class_dropout, model.null_label)

    def loss_fn(params):
      logits = model.apply(
        {'params': params}, inputs, labels, tasks, deterministic=False, rngs={'dropout': drop_rng}
      )
      return commit.commit_loss(
        logits, tokens, mask, region, label_smoothing=masking.label_smoothing, **weights
      )

    return gradient_step(state, loss_fn, tx, config)

  return train_step


def mfu_scalars(model: Transformer, global_batch: int):
  """Analytic training FLOPs (3x forward) -> achieved TFLOP/s and MFU where the peak is known."""
  flops_per_step = 3.0 * forward_flops(model, global_batch)
  kind = jax.devices()[0].device_kind
  peak = PEAK_FLOPS.get(kind)

  def scalars(_, steps_per_sec: float) -> dict[str, float]:
    achieved = flops_per_step * steps_per_sec / jax.device_count()
    out = {'tflops_per_device': achieved / 1e12}
    if peak:
      out['mfu'] = achieved / peak
    return out

  return scalars


def train_and_evaluate(
  config,
  workdir: str,
  *,
  max_steps: int | None = None,
  restore_step: int | None = None,
  strict_restore: bool = False,
) -> dict[str, Any]:
  """Trains (or resumes) the transformer in `workdir` on tokens of a frozen tokenizer.

  Resuming: as the tokenizer trainer (`restore_step`, `strict_restore`).
  """
  from magvit_jax.data import pipeline  # TF is imported only here.

  validate_config(config, stage='transformer')
  fileio.makedirs(workdir)  # Local or gs://.
  ckpt_lib.write_workdir_config(workdir, config)

  # Mesh.
  mesh = parallel.make_mesh(config.mesh)
  local_batch = parallel.check_batch_size(int(config.batch_size), mesh)

  # Frozen tokenizer, replicated on the mesh.
  frozen = pretrained.load_tokenizer(config.tokenizer_workdir, mesh)
  tok_cfg = frozen.config
  check_tokenizer_matches(config, tok_cfg)
  check_commit(config, tok_cfg)
  tokenizer_params = jax.device_put(frozen.params, parallel.replicated(mesh))
  tokenize = tokenizers.make_tokenize_fn(frozen.module)

  # Model and optimizer.
  model = build_transformer(config.model, tokenizers.num_tokens(tok_cfg))
  tx = ts.make_optimizer(config.optimizer)

  def init_params(rng):
    return model.init(rng, *model.dummy_inputs())['params']

  # Sharded state: restored from the latest checkpoint, or fresh.
  checkpointer = ckpt_lib.Checkpointer(
    os.path.join(workdir, 'checkpoints'), config.to_dict(), int(config.max_checkpoints)
  )
  state, shardings, start_step = ts.init_or_restore(
    init_params,
    tx,
    config,
    mesh,
    checkpointer,
    'transformer',
    None,
    restore_step=restore_step,
    strict_restore=strict_restore,
  )

  # Data, positioned after the last completed step (where its checkpoint says the stream stood).
  data_state = checkpointer.data_state(start_step) if start_step else None
  batches = pipeline.create_dataset(
    config.data,
    split=config.data.train_split,
    batch_size=local_batch,
    train=True,
    seed=int(config.seed),
    start_step=start_step,
    resume=skipped_records.resume_position(
      data_state, 'data', jax.process_index(), jax.process_count()
    ),
  )

  # Step.
  if commit_tasks(config):
    step = make_commit_train_step(
      model,
      tokenize,
      tokenizer_params,
      tx,
      config,
      tokenizers.token_shape(tok_cfg),
      causal=tokenizers.is_causal(tok_cfg.model),
    )
  else:
    step = make_train_step(model, tokenize, tokenizer_params, tx, config)
  jitted_step = jax.jit(
    step,
    in_shardings=(shardings, parallel.batch_sharding(mesh)),
    out_shardings=(shardings, parallel.replicated(mesh)),
    donate_argnums=(0,),
  )

  def step_fn(state, batch):
    # Activations constrained by the same rule table as the params (traced on the first call).
    with parallel.activation_sharding(mesh, config.logical_axis_rules):
      return jitted_step(state, batch)

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
    stage='transformer',
    max_steps=max_steps,
    extra_scalars=mfu_scalars(model, int(config.batch_size)),
  )
  writer.close()
  checkpointer.close()
  return {'state': state}

"""Train state, optimizer and its sharded creation (shared by both stage trainers).

The state is created directly in its sharded layout: `jax.eval_shape` gives
the abstract state with logical axis annotations, the config's rule table
turns them into `NamedSharding`s, and the init function is jitted with those
`out_shardings`, so no device ever holds an unsharded copy.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from magvit_jax import parallel


@flax.struct.dataclass
class TrainState:
  """step: int32 scalar; params/opt_state: pytrees; rng: uint32 [2] base key.

  ema_params: exponential moving average of `params` (None when disabled), used for
  evaluation and sampling. disc: the discriminator's state of adversarial tokenizer training
  ({'params', 'opt_state', 'lecam_real', 'lecam_fake'}), None otherwise.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  ema_params: Any = None
  disc: Any = None

  @property
  def eval_params(self) -> Any:
    """The parameters to evaluate / sample with: the EMA when kept, else the live ones."""
    return self.params if self.ema_params is None else self.ema_params


def learning_rate_schedule(opt_config) -> optax.Schedule:
  """Linear warmup to `lr`, then constant or cosine decay to 0 at `decay_steps`."""
  warmup = int(opt_config.warmup_steps)
  if opt_config.decay == 'constant':
    return optax.join_schedules(
      [
        optax.linear_schedule(0.0, opt_config.lr, max(warmup, 1)),
        optax.constant_schedule(opt_config.lr),
      ],
      [warmup],
    )
  if opt_config.decay == 'cosine':
    return optax.warmup_cosine_decay_schedule(
      0.0, opt_config.lr, max(warmup, 1), max(int(opt_config.decay_steps), warmup + 1)
    )
  raise ValueError(f"config.optimizer.decay={opt_config.decay!r}; expected 'constant' or 'cosine'")


def make_optimizer(opt_config) -> optax.GradientTransformation:
  """AdamW with gradient clipping; weight decay on matrices/kernels only."""

  def decay_mask(params):
    # Matrices and kernels are decayed, biases and norm scales not. A transformer scanned over
    # its layers (model.scan_layers) stacks every leaf under 'blocks' along a leading layer
    # axis, which does not count.
    def decayed(path, p):
      stacked = any(getattr(k, 'key', None) == 'blocks' for k in path)
      return p.ndim - int(stacked) >= 2

    return jax.tree_util.tree_map_with_path(decayed, params)

  parts = []
  if opt_config.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(opt_config.grad_clip_norm))
  parts.append(
    optax.adamw(
      learning_rate_schedule(opt_config),
      b1=opt_config.b1,
      b2=opt_config.b2,
      weight_decay=opt_config.weight_decay,
      mask=decay_mask,
    )
  )
  return optax.chain(*parts)


def state_layout(
  init_params: Callable[[jax.Array], Any],
  tx: optax.GradientTransformation,
  mesh,
  rules,
  init_extra: Callable[[jax.Array, Any], dict] | None = None,
) -> tuple[Callable[[jax.Array], TrainState], Any, Any]:
  """The state's init function, shardings and abstract (restore-target) tree.

  init_params: rng -> params, possibly boxed with `nn.LogicallyPartitioned`.
  init_extra: (rng, params) -> extra TrainState fields ('ema_params', 'disc'), or None.
  Returns (init_fn, shardings, abstract): `jax.jit(init_fn, out_shardings=shardings)(rng)`
  creates the state already sharded; `abstract` holds ShapeDtypeStructs with
  those shardings (the target for a checkpoint restore).
  """

  def boxed_init(rng):
    init_rng, state_rng, extra_rng = jax.random.split(rng, 3)
    params = init_params(init_rng)
    extra = init_extra(extra_rng, params) if init_extra is not None else {}
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      rng=state_rng,
      **extra,
    )

  def init_fn(rng):
    return nn.unbox(boxed_init(rng))

  abstract, shardings = parallel.sharded_abstract(
    jax.eval_shape(boxed_init, jax.random.PRNGKey(0)), mesh, rules
  )
  return init_fn, shardings, abstract


def apply_gradients(state: TrainState, grads: Any, tx: optax.GradientTransformation) -> TrainState:
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return state.replace(
    step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state
  )


def init_or_restore(
  init_params: Callable[[jax.Array], Any],
  tx: optax.GradientTransformation,
  config,
  mesh,
  checkpointer,
  stage: str,
  init_extra: Callable[[jax.Array, Any], dict] | None = None,
  restore_step: int | None = None,
  strict_restore: bool = False,
) -> tuple[TrainState, Any, int]:
  """The run's sharded state: restored from the latest readable checkpoint, or fresh.

  A damaged newest checkpoint is reported and the next older one is used (`strict_restore`
  refuses instead); `restore_step` picks a checkpoint explicitly. Checkpoints newer than the
  one resumed from are set aside (`Checkpointer.set_aside`), so the run saves those steps anew.
  Returns (state, state_shardings, start_step); start_step is 0 for a fresh run.
  """
  init_fn, shardings, abstract = state_layout(
    init_params, tx, mesh, config.logical_axis_rules, init_extra
  )
  start_step = checkpointer.latest_step() or 0
  if start_step:
    state, start_step, damaged = checkpointer.restore_readable(
      lambda s: restore_any_layout(checkpointer, abstract, shardings, config, mesh, s, stage),
      restore_step,
      strict_restore,
    )
    checkpointer.set_aside(damaged, 'damaged')
    checkpointer.set_aside([s for s in checkpointer.all_steps() if s > start_step], 'superseded')
    print(f'[{stage}] resumed from {checkpointer.directory}/{start_step}', flush=True)
  else:
    state = jax.jit(init_fn, out_shardings=shardings)(jax.random.PRNGKey(int(config.seed)))
  return state, shardings, start_step


def restore_any_layout(checkpointer, abstract, shardings, config, mesh, step: int, stage: str):
  """`checkpointer.restore(abstract, step)`, also across a `model.scan_layers` switch.

  A transformer saved unrolled (`block_i`) resumes scanned (`blocks`, stacked on a leading
  layer axis) and the other way round: the checkpoint is read in its own layout (replicated
  over the mesh for this one read) and converted with `stack_layers` / `unstack_layers`
  (params, EMA and the optimizer moments alike), then placed with the run's shardings. The
  values are the same; only the layout changes.
  """
  saved_model = checkpointer.saved_config(step).get('model', {})
  saved = bool(saved_model.get('scan_layers', False))
  current = bool(config.model.get('scan_layers', False))
  if saved == current:
    return checkpointer.restore(abstract, step)
  from magvit_jax.models.transformer import stack_layers, unstack_layers  # pylint: disable=g-import-not-at-top

  to_saved, from_saved = (stack_layers, unstack_layers) if saved else (unstack_layers, stack_layers)
  rep = parallel.replicated(mesh)
  saved_abstract = jax.tree_util.tree_map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
    jax.eval_shape(to_saved, abstract),
  )
  from magvit_jax.checkpoint import LAYOUT_KEYS  # pylint: disable=g-import-not-at-top

  state = checkpointer.restore(saved_abstract, step, ignore=LAYOUT_KEYS)
  print(
    f'[{stage}] checkpoint {step} has model.scan_layers={saved}; converted to '
    f'scan_layers={current}',
    flush=True,
  )
  return jax.device_put(from_saved(state), shardings)

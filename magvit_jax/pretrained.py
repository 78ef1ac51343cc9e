"""Trained models from their workdirs, parameters only.

What every consumer of a trained run uses (sampling, video tasks, evaluation, the transformer
trainer's frozen tokenizer, notebooks, benchmarks): the module built from the run's saved
config and the parameters it should be evaluated with (the generator EMA when the run kept
one, else the live weights). Only those parameters are read from the orbax checkpoint: no
optimizer state, no discriminator, no data iterator, so restoring is cheap and a damaged
optimizer file does not stop sampling.

  tok = pretrained.load_tokenizer('runs/vqgan_digits')
  tok.module, tok.params, tok.config   # VQGAN, params tree, locked ConfigDict
  tf = pretrained.load_transformer('runs/maskgit_digits')   # also loads its tokenizer config
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import ml_collections

from magvit_jax import checkpoint as ckpt_lib
from magvit_jax import parallel
from magvit_jax.config_schema import config_from_dict
from magvit_jax.models import tokenizers
from magvit_jax.models.transformer import Transformer, build_transformer


@dataclasses.dataclass(frozen=True)
class Loaded:
  """A trained module: `module.apply({'params': params}, ...)`; config: the run's, locked."""

  module: Any
  params: Any
  config: ml_collections.ConfigDict
  step: int


def read_config(workdir: str, stage: str) -> ml_collections.ConfigDict:
  """The locked config of the `stage` run in `workdir` (today's defaults for missing keys)."""
  config = config_from_dict(ckpt_lib.read_workdir_config(workdir))
  if config.stage != stage:
    raise ValueError(f'{workdir} holds a {config.stage!r} run; expected a {stage!r} workdir')
  return config


def restore_params(
  workdir: str,
  config: ml_collections.ConfigDict,
  init_params: Callable[[jax.Array], Any],
  mesh: jax.sharding.Mesh | None = None,
  train_command: str = 'python -m magvit_jax.train --config=... --workdir=WORKDIR',
  step: int | None = None,
  strict: bool = False,
) -> tuple[Any, int]:
  """Evaluation parameters of checkpoint `step` in `<workdir>/checkpoints`; by default the
  newest readable one (a damaged newer one is reported with its reason and skipped, unless
  `strict`).

  init_params: rng -> params (possibly logically boxed); only its shapes are used, to lay the
  restored arrays out on `mesh` (default: all devices along 'data') by the run's rule table.
  Returns (params, step): the EMA parameters when the checkpoint holds them, else `params`.
  train_command: named in the error when there is no checkpoint.
  """
  mesh = mesh or parallel.make_mesh({'data': -1})
  abstract, _ = parallel.sharded_abstract(
    jax.eval_shape(init_params, jax.random.PRNGKey(0)), mesh, config.logical_axis_rules
  )
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), config.to_dict())
  try:
    if checkpointer.latest_step() is None:
      raise FileNotFoundError(
        f'no checkpoint in {workdir}/checkpoints; train it first with `{train_command}`'
      )
    params, step, _ = checkpointer.restore_readable(
      lambda s: checkpointer.restore_subtree(abstract, ('ema_params', 'params'), s), step, strict
    )
    return params, step
  finally:
    checkpointer.close()


def load_tokenizer(
  workdir: str,
  mesh: jax.sharding.Mesh | None = None,
  step: int | None = None,
  strict: bool = False,
) -> Loaded:
  """The frozen tokenizer of a tokenizer run: module, evaluation params, config, step."""
  config = read_config(workdir, 'tokenizer')
  module = tokenizers.build_tokenizer(config.model)
  params, step = restore_params(
    workdir,
    config,
    tokenizers.init_params(module, config),
    mesh,
    f'python -m magvit_jax.train --config=configs/<tokenizer config>.py --workdir={workdir}',
    step,
    strict,
  )
  return Loaded(module, params, config, step)


def transformer_module(config: ml_collections.ConfigDict) -> Transformer:
  """The transformer of a transformer run's config (its sequence length comes from the config
  of the tokenizer run it names)."""
  tok_config = read_config(config.tokenizer_workdir, 'tokenizer')
  return build_transformer(config.model, tokenizers.num_tokens(tok_config))


def load_transformer(
  workdir: str,
  mesh: jax.sharding.Mesh | None = None,
  step: int | None = None,
  strict: bool = False,
) -> Loaded:
  """A trained transformer: module, evaluation params, config, step."""
  config = read_config(workdir, 'transformer')
  module = transformer_module(config)
  params, step = restore_params(
    workdir,
    config,
    lambda rng: module.init(rng, *module.dummy_inputs())['params'],
    mesh,
    f'python -m magvit_jax.train --config=configs/<transformer config>.py '
    f'--config.tokenizer_workdir={config.tokenizer_workdir} --workdir={workdir}',
    step,
    strict,
  )
  return Loaded(module, params, config, step)

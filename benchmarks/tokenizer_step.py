"""Tokenizer train-step time with and without the discriminator (and EMA), in one run.

    python benchmarks/tokenizer_step.py [--config configs/vqgan_imagenet.py:digits --repeats 10]
    python benchmarks/tokenizer_step.py --remat [--remat_policies none,full,dots_saveable]

Builds the config's tokenizer step twice, (a) reconstruction + VQ losses only and (b) with the
StyleGAN discriminator active (past its start step), LeCAM, R1 and the generator EMA; jits both,
warms them up and prints the median step time over --repeats and the ratio b / a, plus the
machine. Perceptual loss is off (its VGG weights are a user-supplied file).

``--remat`` prints another table instead: step (a) once per ``model.remat_policy`` of
``--remat_policies`` (each residual block of the tokenizer in ``nn.remat``), with the median
step time and the compiled step's memory (``jax`` ``compiled.memory_analysis()``: temp =
activations and other scratch buffers XLA allocates for the step, the figure remat lowers;
arguments / outputs are the train state and batch, the same for every policy).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from magvit_jax import parallel
from magvit_jax.config_loader import load_config
from magvit_jax.models import tokenizers
from magvit_jax.trainers import tokenizer as tokenizer_trainer
from magvit_jax.trainers import train_state as ts
from magvit_jax.trainers.adversarial import Adversarial


def time_step(config, repeats: int, memory: dict | None = None) -> float:
  """Median seconds of one jitted train step; `memory` (if given) gets the compiled step's
  `memory_analysis()` sizes in bytes (keys temp, argument, output; absent if unreported)."""
  model = tokenizers.build_tokenizer(config.model)
  tx = ts.make_optimizer(config.optimizer)
  shape = tokenizers.input_shape(config)
  adv = Adversarial(config, shape)
  mesh = parallel.make_mesh({'data': -1})
  init_fn, shardings, _ = ts.state_layout(
    tokenizers.init_params(model, config),
    tx,
    mesh,
    config.logical_axis_rules,
    adv.init_extra,
  )
  state = jax.jit(init_fn, out_shardings=shardings)(jax.random.PRNGKey(0))
  state = state.replace(step=jnp.asarray(config.losses.disc_start_step, jnp.int32))
  key = 'video' if len(shape) == 4 else 'image'
  batch = parallel.shard_batch(
    {key: np.random.RandomState(0).randint(0, 256, (config.batch_size,) + shape, np.uint8)}, mesh
  )
  step = jax.jit(
    tokenizer_trainer.make_train_step(model, tx, config.losses, adv),
    in_shardings=(shardings, parallel.batch_sharding(mesh)),
    out_shardings=(shardings, parallel.replicated(mesh)),
    donate_argnums=(0,),
  )
  step = step.lower(state, batch).compile()
  if memory is not None:
    stats = step.memory_analysis()
    for k in ('temp', 'argument', 'output'):
      if stats is not None and hasattr(stats, f'{k}_size_in_bytes'):
        memory[k] = int(getattr(stats, f'{k}_size_in_bytes'))
  state, m = step(state, batch)
  jax.block_until_ready(m)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _mib(memory: dict, key: str) -> str:
  return f'{memory[key] / 2**20:.1f}' if key in memory else 'n/a'


def remat_table(args) -> None:
  policies = [v.strip() for v in args.remat_policies.split(',') if v.strip()]
  rows = []
  for policy in policies:
    config = load_config(args.config)
    config.model.remat_policy = policy
    memory: dict = {}
    t = time_step(config, args.repeats, memory)
    rows.append((policy, t, memory))
    print(f'[remat] {policy}: {t * 1e3:.1f} ms, {memory}', flush=True)
  device = jax.devices()[0]
  print(
    f'machine: {platform.machine()} {os.cpu_count()} CPUs, jax {jax.__version__}, '
    f'device {device.platform}/{device.device_kind} x{jax.device_count()}'
  )
  config = load_config(args.config)
  print(
    f'config: {args.config} (reconstruction + VQ step), batch {config.batch_size}, median of '
    f'{args.repeats} steps'
  )
  t0, m0 = rows[0][1], rows[0][2]
  print(
    f'| model.remat_policy | ms/step | time vs {rows[0][0]} | temp MiB | temp vs {rows[0][0]} '
    '| arguments MiB | outputs MiB |'
  )
  print('| --- | --- | --- | --- | --- | --- | --- |')
  for policy, t, m in rows:
    rel = f'{m["temp"] / m0["temp"]:.2f}' if 'temp' in m and m0.get('temp') else 'n/a'
    print(
      f'| {policy} | {t * 1e3:.1f} | {t / t0:.2f} | {_mib(m, "temp")} | {rel} | '
      f'{_mib(m, "argument")} | {_mib(m, "output")} |'
    )


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default='configs/vqgan_imagenet.py:digits')
  p.add_argument('--repeats', type=int, default=10)
  p.add_argument(
    '--remat',
    action='store_true',
    help='compare model.remat_policy values (step time, compiled temp memory) instead',
  )
  p.add_argument('--remat_policies', default='none,full,dots_saveable')
  args = p.parse_args()
  if args.remat:
    remat_table(args)
    return
  plain = load_config(args.config)
  adversarial = load_config(args.config)
  adversarial.losses.update(dict(gan_weight=0.1, lecam_weight=0.001, r1_gamma=10.0))
  adversarial.ema_decay = 0.999
  t_plain = time_step(plain, args.repeats)
  t_adv = time_step(adversarial, args.repeats)
  device = jax.devices()[0]
  print(
    f'machine: {platform.machine()} {os.cpu_count()} CPUs, jax {jax.__version__}, '
    f'device {device.platform}/{device.device_kind} x{jax.device_count()}'
  )
  print(f'config: {args.config}, batch {plain.batch_size}, median of {args.repeats} steps')
  print('| step | ms/step | ratio |')
  print('| --- | --- | --- |')
  print(f'| reconstruction + VQ | {t_plain * 1e3:.1f} | 1.00 |')
  print(f'| + discriminator (LeCAM, R1) + EMA | {t_adv * 1e3:.1f} | {t_adv / t_plain:.2f} |')


if __name__ == '__main__':
  main()

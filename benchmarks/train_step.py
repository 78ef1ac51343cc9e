"""Training-step benchmark: compile time, step time, throughput, FLOPs, MFU and memory.

    python benchmarks/train_step.py [--which=transformer,tokenizer] [--configs=NAME,...]
                                    [--paper] [--batch=N] [--steps=10 --warmup=1]
                                    [--dtype=float32|bfloat16]

For every selected config it builds the trainers' real jitted step (the `make_train_step` /
`make_commit_train_step` functions, AdamW from `ts.make_optimizer`, the sharded `TrainState`,
`donate_argnums=(0,)`), compiles it ahead of time (`jit(...).lower(...).compile()`, timed as
"compile s"), runs --warmup untimed steps and reports the median wall time of --steps more
(`block_until_ready` on the new state and metrics).

  * transformer: the step runs on pre-made random tokens. The frozen tokenizer is replaced by a
    trivial tokenize fn that returns the batch's tokens (plain MVTM: the batch's 'image' entry
    holds the tokens; COMMIT: the batch carries real-size random uint8 videos for the task
    masks and a 'tokens' entry that both tokenize calls return), so the time is the
    transformer's alone: masking, forward, backward, AdamW. FLOPs: analytic, 3 x
    `forward_flops` (bidirectional attention counted in full).
  * tokenizer: the config's full step on random uint8 pixels: reconstruction + quantizer loss,
    and whatever the config turns on of the discriminator (with LeCAM / R1), generator EMA and
    the perceptual loss (off when its VGG-16 weights file is absent). FLOPs: XLA's
    `compiled.cost_analysis()['flops']` (what the compiler counts; loops such as the chunked
    LFQ entropy may be under-counted).

Both FLOP counts are per step; "XLA GFLOP" shows the compiler's count for every row as a
cross-check. MFU = achieved FLOP/s per device / the device's peak dense bf16 FLOP/s
(`PEAK_FLOPS` in magvit_jax/trainers/transformer.py, keyed by `device_kind`; '-' where unknown,
e.g. CPU). Memory: "plan GiB" is the compiled program's buffers (temp + arguments + outputs
- aliased, from `memory_analysis()`); "peak GiB" is the device allocator's peak
(`device.memory_stats()['peak_bytes_in_use']`, a process-wide high-water mark, so run one
config per process for an exact per-config figure; '-' where the backend reports none, as on
CPU). A config that does not fit prints its error in its row and the run goes on.

Configs are `file[:arg]` of configs/ (without .py). Defaults: the tiny `:digits` variants at
their own batch size; with --paper also the paper configs at --paper_batch (default 1 on CPU,
8 on accelerators: "one step, where memory allows"). The transformer's tokenizer config (which
fixes its sequence length) is the matching one: maskgit_imagenet -> vqgan_imagenet,
magvit_<data>:B -> magvit_<data>:tokenizer_B, magvit2_transformer -> magvit2_tokenizer_video.

On GPU/TPU: python benchmarks/train_step.py --paper --dtype=bfloat16 [--batch=32]
(--dtype sets the transformer's activation dtype, config.model.dtype; the tokenizers have no
dtype option and always run float32; the table has a dtype column).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
import warnings

import jax
import numpy as np

from magvit_jax import parallel
from magvit_jax.config_loader import load_config
from magvit_jax.models import tokenizers
from magvit_jax.models.transformer import build_transformer, count_params, forward_flops
from magvit_jax.trainers import tokenizer as tokenizer_trainer
from magvit_jax.trainers import train_state as ts
from magvit_jax.trainers import transformer as transformer_trainer
from magvit_jax.trainers.adversarial import Adversarial

TINY = {
  'transformer': ('maskgit_imagenet:digits', 'magvit_ucf101:digits', 'magvit2_transformer:digits'),
  'tokenizer': (
    'vqgan_imagenet:digits',
    'magvit_ucf101:tokenizer_digits',
    'magvit2_tokenizer_video:digits',
  ),
}
PAPER = {
  'transformer': ('maskgit_imagenet', 'magvit_ucf101:B', 'magvit_ucf101:L', 'magvit2_transformer'),
  'tokenizer': ('vqgan_imagenet', 'magvit_ucf101:tokenizer_B', 'magvit2_tokenizer_video'),
}
GIB = 2.0**30


def config_of(name: str):
  """The locked config `get_config(arg)` of configs/<file>.py for name = 'file[:arg]'."""
  stem, _, arg = name.partition(':')
  return load_config(stem.removesuffix('.py') + '.py' + (f':{arg}' if arg else ''))


def tokenizer_config_name(name: str) -> str:
  """The tokenizer config whose token grid the transformer config `name` is trained on."""
  stem, _, arg = name.partition(':')
  if stem == 'maskgit_imagenet':
    return 'vqgan_imagenet' + (f':{arg}' if arg else '')
  if stem == 'magvit2_transformer':
    return 'magvit2_tokenizer_video' + (f':{arg}' if arg else '')
  if stem.startswith('magvit_'):
    return f'{stem}:tokenizer_{arg or "B"}'
  raise ValueError(f'no known tokenizer config for the transformer config {name!r}')


def one_device_mesh():
  return parallel.make_mesh({'data': -1}, devices=jax.devices()[:1])


def memory_plan_bytes(compiled) -> float | None:
  try:
    m = compiled.memory_analysis()
    return float(
      m.temp_size_in_bytes
      + m.argument_size_in_bytes
      + m.output_size_in_bytes
      - m.alias_size_in_bytes
    )
  except Exception:  # pylint: disable=broad-except
    return None


def xla_flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0] if cost else None
    flops = cost.get('flops') if cost else None
    return float(flops) if flops and flops > 0 else None
  except Exception:  # pylint: disable=broad-except
    return None


def peak_memory_bytes() -> float | None:
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  return float(stats['peak_bytes_in_use']) if stats and 'peak_bytes_in_use' in stats else None


# --layers: transformer layer variants, each (suffix of the row name, config.model overrides).
LAYER_VARIANTS = {
  'unrolled': ('', {}),
  'scan': (' +scan', {'scan_layers': True}),
  'scan_remat': (' +scan+remat(full)', {'scan_layers': True, 'remat_policy': 'full'}),
}


def transformer_step(name: str, batch: int | None, dtype: str, layers: str = 'unrolled'):
  """(jitted step, state, batch dict, analytic FLOPs/step, params, batch size, notes)."""
  config = config_of(name)
  config.model.dtype = dtype
  config.model.update(LAYER_VARIANTS[layers][1])
  tok_config = config_of(tokenizer_config_name(name))
  grid = tokenizers.token_shape(tok_config)
  model = build_transformer(config.model, math.prod(grid))
  b = batch or int(config.batch_size)
  tx = ts.make_optimizer(config.optimizer)
  mesh = one_device_mesh()
  init_fn, shardings, _ = ts.state_layout(
    lambda r: model.init(r, *model.dummy_inputs())['params'],
    tx,
    mesh,
    config.logical_axis_rules,
  )
  state = jax.jit(init_fn, out_shardings=shardings)(jax.random.PRNGKey(0))
  rng = np.random.RandomState(0)
  tokens = rng.randint(0, model.codebook_size, (b, model.seq_len)).astype(np.int32)
  labels = rng.randint(0, model.num_classes, (b,)).astype(np.int32)
  if transformer_trainer.commit_tasks(config):
    causal = tokenizers.is_causal(tok_config.model)
    videos = rng.randint(0, 256, (b,) + tokenizers.input_shape(tok_config), np.uint8)
    data = {'video': videos, 'tokens': tokens, 'label': labels}

    def step(state, batch):
      inner = transformer_trainer.make_commit_train_step(
        model, lambda _params, _pixels: batch['tokens'], None, tx, config, grid, causal
      )
      return inner(state, batch)

    num_tasks = len(transformer_trainer.commit_tasks(config))
    notes = f'COMMIT ({num_tasks} task{"s" if num_tasks > 1 else ""}), random tokens'
  else:
    data = {'image': tokens, 'label': labels}  # tokenize = identity on 'image'.
    step = transformer_trainer.make_train_step(model, lambda _params, x: x, None, tx, config)
    notes = 'MVTM, random tokens'
  data = parallel.shard_batch(data, mesh)
  jitted = jax.jit(
    step,
    in_shardings=(shardings, parallel.batch_sharding(mesh)),
    out_shardings=(shardings, parallel.replicated(mesh)),
    donate_argnums=(0,),
  )
  flops = 3.0 * forward_flops(model, b)
  return jitted, state, data, flops, count_params(state.params), b, notes


def tokenizer_step(name: str, batch: int | None):
  """(jitted step, state, batch dict, None (XLA counts FLOPs), params, batch size, notes)."""
  config = config_of(name)
  model = tokenizers.build_tokenizer(config.model)
  b = batch or int(config.batch_size)
  tx = ts.make_optimizer(config.optimizer)
  shape = tokenizers.input_shape(config)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # "Perceptual loss disabled": reported in the notes.
    adv = Adversarial(config, shape)
  mesh = one_device_mesh()
  init_fn, shardings, _ = ts.state_layout(
    tokenizers.init_params(model, config),
    tx,
    mesh,
    config.logical_axis_rules,
    adv.init_extra,
  )
  state = jax.jit(init_fn, out_shardings=shardings)(jax.random.PRNGKey(0))
  key = 'video' if len(shape) == 4 else 'image'
  data = parallel.shard_batch(
    {key: np.random.RandomState(0).randint(0, 256, (b,) + shape, np.uint8)}, mesh
  )
  jitted = jax.jit(
    tokenizer_trainer.make_train_step(model, tx, config.losses, adv),
    in_shardings=(shardings, parallel.batch_sharding(mesh)),
    out_shardings=(shardings, parallel.replicated(mesh)),
    donate_argnums=(0,),
  )
  parts = [f'{"x".join(map(str, shape[:-1]))} {key}s']
  if adv.disc is not None:
    parts.append('D' + ('+LeCAM' if adv.lecam_weight else '') + ('+R1' if adv.r1_gamma else ''))
    parts.append(f'D {count_params(state.disc["params"]) / 1e6:.1f}M')
  if adv.ema_decay:
    parts.append('EMA')
  if adv.perceptual_weight:
    parts.append('perceptual ' + ('on' if adv.perceptual is not None else 'off (no VGG file)'))
  return jitted, state, data, None, count_params(state.params), b, ', '.join(parts)


def run_one(
  which: str,
  name: str,
  batch: int | None,
  dtype: str,
  steps: int,
  warmup: int,
  layers: str = 'unrolled',
) -> dict:
  row = {'config': name + LAYER_VARIANTS[layers][0], 'which': which}
  try:
    if which == 'transformer':
      jitted, state, data, flops, params, b, notes = transformer_step(name, batch, dtype, layers)
      row['dtype'] = dtype
    else:
      jitted, state, data, flops, params, b, notes = tokenizer_step(name, batch)
      row['dtype'] = 'float32'
    row.update(params=params, batch=b, notes=notes)
    t0 = time.perf_counter()
    compiled = jitted.lower(state, data).compile()
    row['compile_s'] = time.perf_counter() - t0
    row['xla_flops'] = xla_flops(compiled)
    row['flops'], row['flops_src'] = (
      (flops, 'analytic') if flops is not None else (row['xla_flops'], 'XLA')
    )
    row['plan_bytes'] = memory_plan_bytes(compiled)
    for _ in range(warmup):
      state, metrics = compiled(state, data)
      jax.block_until_ready((state, metrics))
    times = []
    for _ in range(steps):
      t0 = time.perf_counter()
      state, metrics = compiled(state, data)
      jax.block_until_ready((state, metrics))
      times.append(time.perf_counter() - t0)
    row['step_s'] = statistics.median(times)
    row['peak_bytes'] = peak_memory_bytes()
    loss = float(metrics['loss'])
    if not math.isfinite(loss):
      row['notes'] += f', loss {loss}'
  except Exception as e:  # pylint: disable=broad-except
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    row['error'] = f'{type(e).__name__}: {msg[:120]}'
  return row


def fmt(v, spec: str) -> str:
  return '-' if v is None else format(v, spec)


def print_table(rows: list[dict]) -> None:
  peak = transformer_trainer.PEAK_FLOPS.get(jax.devices()[0].device_kind)
  print(
    '| stage | config | params (M) | dtype | batch | compile s | step ms | ex/s | GFLOP/step '
    '| FLOP source | XLA GFLOP | TFLOP/s | MFU | plan GiB | peak GiB | notes |'
  )
  print('|' + '---|' * 16)
  for r in rows:
    head = f'| {r["which"]} | `{r["config"]}` | {fmt(r.get("params") and r["params"] / 1e6, ".1f")}'
    if 'error' in r:
      print(
        f'{head} | {r.get("dtype", "-")} | {r.get("batch", "-")} |'
        + ' - |' * 10
        + f' {r["error"]} |'
      )
      continue
    s = r['step_s']
    achieved = r['flops'] / s if r['flops'] else None
    mfu = achieved / peak if achieved and peak else None
    print(
      f'{head} | {r["dtype"]} | {r["batch"]} | {r["compile_s"]:.1f} | {s * 1e3:.1f} '
      f'| {r["batch"] / s:.2f} | {fmt(r["flops"] and r["flops"] / 1e9, ",.1f")} '
      f'| {r["flops_src"] if r["flops"] else "-"} '
      f'| {fmt(r["xla_flops"] and r["xla_flops"] / 1e9, ",.1f")} '
      f'| {fmt(achieved and achieved / 1e12, ".3f")} | {fmt(mfu, ".1%")} '
      f'| {fmt(r["plan_bytes"] and r["plan_bytes"] / GIB, ".2f")} '
      f'| {fmt(r["peak_bytes"] and r["peak_bytes"] / GIB, ".2f")} | {r["notes"]} |'
    )


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument(
    '--which', default='transformer,tokenizer', help='comma list of transformer, tokenizer'
  )
  p.add_argument(
    '--configs',
    default='',
    help='comma list of configs (file[:arg] in configs/); default: the tiny '
    'digits configs (+ the paper configs with --paper)',
  )
  p.add_argument('--paper', action='store_true', help='also the paper configs')
  p.add_argument(
    '--batch',
    type=int,
    default=None,
    help='batch size for every config (default: tiny configs at their own '
    'batch, paper configs at --paper_batch)',
  )
  p.add_argument(
    '--paper_batch',
    type=int,
    default=None,
    help='batch of the paper configs (default 1 on CPU, 8 on accelerators)',
  )
  p.add_argument('--steps', type=int, default=10, help='timed steps (median reported)')
  p.add_argument('--warmup', type=int, default=1, help='untimed steps after compiling')
  p.add_argument(
    '--dtype',
    default='float32',
    choices=('float32', 'bfloat16'),
    help='transformer activation dtype (config.model.dtype)',
  )
  p.add_argument(
    '--layers',
    default='unrolled',
    help='comma list of transformer layer variants, each a row: '
    f'{", ".join(LAYER_VARIANTS)} (scan = model.scan_layers, remat = model.remat_policy)',
  )
  args = p.parse_args()
  layers = [v.strip() for v in args.layers.split(',') if v.strip()]
  for v in layers:
    if v not in LAYER_VARIANTS:
      p.error(f'--layers: {v!r} is not one of {tuple(LAYER_VARIANTS)}')

  which = [w.strip() for w in args.which.split(',') if w.strip()]
  for w in which:
    if w not in TINY:
      p.error(f'--which: {w!r} is not one of {tuple(TINY)}')
  dev = jax.devices()[0]
  paper_batch = args.paper_batch or (1 if dev.platform == 'cpu' else 8)
  jobs = []
  for w in which:
    if args.configs:
      names = [c.strip() for c in args.configs.split(',') if c.strip()]
      names = [n for n in names if config_of(n).stage == w]
    else:
      names = list(TINY[w]) + (list(PAPER[w]) if args.paper else [])
    for n in names:
      paper = ':digits' not in n and ':tokenizer_digits' not in n
      jobs.append((w, n, args.batch or (paper_batch if paper else None)))
  if not jobs:
    p.error('no config selected (is each --configs entry of a stage in --which?)')

  try:
    cpus = len(os.sched_getaffinity(0))
  except AttributeError:
    cpus = os.cpu_count()
  print(
    f'machine: {jax.device_count()} x {dev.platform}/{dev.device_kind} '
    f'(jax.devices()[0]={dev}), {cpus} CPUs ({platform.processor() or platform.machine()}), '
    f'jax {jax.__version__}; peak bf16 FLOP/s for MFU: '
    f'{transformer_trainer.PEAK_FLOPS.get(dev.device_kind, "unknown")}'
  )
  print(
    f'one device; median of {args.steps} steps after {args.warmup} warm-up step(s); '
    f'transformer: real train step on pre-made random tokens (trivial tokenize fn, '
    f'tokenizer cost excluded), FLOPs 3 x forward (analytic); tokenizer: real train step on '
    f'random pixels, FLOPs from XLA cost_analysis'
  )
  rows = []
  for w, n, b in jobs:
    for v in layers if w == 'transformer' else ['unrolled']:
      row = run_one(w, n, b, args.dtype, args.steps, args.warmup, v)
      rows.append(row)
      status = row.get('error') or f'{row["step_s"] * 1e3:.1f} ms/step'
      print(f'[train_step] {w} {row["config"]}: {status}', flush=True)
  print()
  print_table(rows)


if __name__ == '__main__':
  main()

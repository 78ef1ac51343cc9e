"""Decoding benchmarks: loop overhead, images/s vs batch size, and steps vs quality.

    python benchmarks/decode.py [--tables overhead,batch,steps] [--workdir runs/demo/transformer]

Three tables (``--tables`` picks them; all by default):

* ``overhead``: T-step MaskGIT decoding vs T forward passes of the transformer
  (``--batch 32 --seq_len 256 --hidden 256 --layers 4 --heads 4 --mlp 1024 --codebook 1024
  --steps 8 --repeats 5``). Times one jitted forward pass and the full jitted ``decode`` (one
  ``lax.fori_loop``), both warmed up, as the minimum over ``--repeats`` runs
  (``block_until_ready``), and prints ``ratio = decode / (T * forward)``; the goal is
  ``ratio <= 1.10`` (the sampling, confidence and re-masking work adds at most 10% to the
  model calls).
* ``batch``: images/s of token decoding vs batch size (``--sweep_batches 1,8,32,64``) at the
  model's own T and guidance, with the tiny digits transformer: the trained one of
  ``--workdir`` (then also images/s including the tokenizer's pixel decoder), else
  ``configs/maskgit_imagenet.py:digits`` with random weights (same shapes, same cost).
* ``steps``: decode time for T in ``--sweep_steps 1,2,4,8,12,16`` at ``--sweep_batch``, and,
  with ``--workdir`` (a trained transformer, e.g. ``runs/demo/transformer`` of
  ``python -m magvit_jax.demo``), sample quality per T: ``--num_samples`` class-conditional
  samples (classes spread evenly, seed 0, same for every T) scored by
  ``magvit_jax.evaluation.evaluate`` with the digits network (digits FID / FVD, precision,
  recall, digits-network accuracy) and, for images, the independent sklearn digit classifier.
  Without ``--workdir`` only the timing columns are printed (a random model's samples carry no
  quality signal).

Timings: minimum over ``--repeats`` (overhead) / ``--sweep_repeats`` (sweeps) runs after one
warm-up call that compiles. ``--dtype bfloat16`` sets the transformer's activation dtype of the
timed models (on GPU/TPU: ``python benchmarks/decode.py --dtype bfloat16``); the quality
samples always use the trained model as configured.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TF is imported for --workdir's metrics.

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from magvit_jax.config_loader import load_config
from magvit_jax.decoding import maskgit
from magvit_jax.inference.settings import DecodeSettings
from magvit_jax.masking import commit
from magvit_jax.models import tokenizers
from magvit_jax.models.transformer import Transformer, build_transformer


def _time(fn, repeats: int) -> float:
  """Minimum wall time of ``fn()`` in seconds over ``repeats`` runs (after one warm-up)."""
  jax.block_until_ready(fn())
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best


def _print_rows(header: list[str], rows: list[list[str]]) -> None:
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  for r in rows:
    print('| ' + ' | '.join(r) + ' |')
  print()


def overhead_table(args) -> None:
  """T-step decode vs T forward passes (the original table of this script)."""
  model = Transformer(
    codebook_size=args.codebook,
    num_classes=args.classes,
    seq_len=args.seq_len,
    hidden_size=args.hidden,
    num_layers=args.layers,
    num_heads=args.heads,
    mlp_dim=args.mlp,
    dropout_rate=0.0,
    dtype=jnp.dtype(args.dtype),
  )
  mask_id = args.codebook
  b, n = args.batch, args.seq_len
  init_rng, label_rng, decode_rng = jax.random.split(jax.random.PRNGKey(0), 3)
  tokens = jnp.full((b, n), mask_id, jnp.int32)
  labels = jax.random.randint(label_rng, (b,), 0, args.classes, jnp.int32)
  params = nn.meta.unbox(jax.jit(model.init)(init_rng, tokens, labels)['params'])

  def apply_fn(params, tokens, labels):
    return model.apply({'params': params}, tokens, labels, deterministic=True)

  # The forward pass of one decoding step (with guidance: the doubled batch).
  fwd_tokens, fwd_labels = tokens, labels
  if args.guidance:
    fwd_tokens = jnp.concatenate([tokens, tokens])
    fwd_labels = jnp.concatenate([labels, jnp.full_like(labels, args.classes)])
  forward = jax.jit(apply_fn)

  def run_decode():
    return maskgit.decode(
      apply_fn,
      params,
      decode_rng,
      tokens,
      labels,
      mask_token_id=mask_id,
      num_steps=args.steps,
      schedule=args.schedule,
      guidance_scale=args.guidance,
      null_label=args.classes if args.guidance else None,
    )

  fwd_s = _time(lambda: forward(params, fwd_tokens, fwd_labels), args.repeats)
  dec_s = _time(run_decode, args.repeats)
  out = run_decode()
  assert not bool(jnp.any(out.tokens == mask_id)), 'decode left mask tokens'

  dev = jax.devices()[0]
  ratio = dec_s / (args.steps * fwd_s)
  config = (
    f'b={b} n={n} d={args.hidden} L={args.layers} heads={args.heads} '
    f'mlp={args.mlp} K={args.codebook} cfg={args.guidance} dtype={args.dtype}'
  )
  rows = [
    ('device', f'{dev.device_kind} ({dev.platform}, {jax.device_count()} device(s))'),
    ('config', config),
    ('forward ms', f'{fwd_s * 1e3:.2f}'),
    ('decode ms', f'{dec_s * 1e3:.2f}'),
    ('T', str(args.steps)),
    (
      'ratio decode / (T * forward)',
      f'{ratio:.3f}  (goal <= 1.10: {"met" if ratio <= 1.10 else "NOT met"})',
    ),
  ]
  width = max(len(k) for k, _ in rows)
  print('Decode overhead: T-step decode vs T forward passes')
  print(f'| {"quantity".ljust(width)} | value |')
  print(f'|{"-" * (width + 2)}|-------|')
  for k, v in rows:
    print(f'| {k.ljust(width)} | {v} |')
  print()


class SweepModel:
  """The transformer of the batch / steps tables: trained (``--workdir``) or tiny random.

  Attributes: model, params, settings (num_steps, schedule, guidance_scale,
  choice_temperature, temperature), sampler (``magvit_jax.inference.sampler.Sampler`` or None),
  name.
  """

  def __init__(self, workdir: str | None, dtype: str):
    self.sampler = None
    if workdir:
      from magvit_jax.inference import sampler as sampler_lib  # pylint: disable=g-import-not-at-top

      self.sampler = sampler_lib.Sampler(workdir)
      self.model, self.params = self.sampler.model, self.sampler.params
      self.settings = self.sampler.settings().as_kwargs()
      self.name = f'trained transformer of {workdir}'
    else:
      config = load_config('maskgit_imagenet.py:digits')
      tok_config = load_config('vqgan_imagenet.py:digits')
      self.model = build_transformer(config.model, tokenizers.num_tokens(tok_config))
      self.params = nn.meta.unbox(
        jax.jit(self.model.init)(jax.random.PRNGKey(0), *self.model.dummy_inputs())['params']
      )
      self.settings = DecodeSettings.from_config(config.sampling).as_kwargs()
      self.name = 'configs/maskgit_imagenet.py:digits, random weights'
    # Activation dtype of the timing runs (the quality samples use the sampler's own model).
    self.model = self.model.clone(dtype=jnp.dtype(dtype))
    model = self.model

    def apply_fn(p, tokens, labels, tasks=None):
      return model.apply({'params': p}, tokens, labels, tasks, deterministic=True)

    self.apply_fn = apply_fn  # One object: decode compiles once per setting.

  def describe(self) -> str:
    m, s = self.model, self.settings
    return (
      f'{self.name}: n={m.seq_len} tokens, d={m.hidden_size}, L={m.num_layers}, '
      f'K={m.codebook_size}, dtype={jnp.dtype(m.dtype).name}, schedule={s["schedule"]}, '
      f'guidance={s["guidance_scale"]} '
      f"(doubles each model call's batch when != 0), choice temperature "
      f'{s["choice_temperature"]}'
    )

  def decode_fn(self, batch: int, num_steps: int):
    """() -> DecodeOutput of one batch of class-conditional generation from all-[MASK]."""
    m = self.model
    init = jnp.full((batch, m.seq_len), m.mask_token_id, jnp.int32)
    labels = jnp.asarray(np.arange(batch) % m.num_classes, jnp.int32)
    extra = {}
    if m.num_tasks:
      extra['tasks'] = jnp.full((batch,), commit.TASKS.index('CG'), jnp.int32)
    settings = dict(self.settings, num_steps=num_steps)
    rng = jax.random.PRNGKey(0)
    return lambda: maskgit.decode(
      self.apply_fn,
      self.params,
      rng,
      init,
      labels,
      mask_token_id=m.mask_token_id,
      null_label=m.null_label,
      **settings,
      **extra,
    )


def batch_table(sm: SweepModel, batches: list[int], repeats: int) -> None:
  t = sm.settings['num_steps']
  print(
    f'Images/s vs batch size (T={t}; token decoding'
    + (", and with the tokenizer's pixel decoder" if sm.sampler else '')
    + ')'
  )
  print(sm.describe())
  header = ['batch', 'decode ms / batch', 'ms / image', 'images/s (tokens)']
  if sm.sampler:
    header += ['+ pixel decode ms', 'images/s (pixels)']
  rows = []
  for b in batches:
    fn = sm.decode_fn(b, t)
    dec_s = _time(fn, repeats)
    row = [str(b), f'{dec_s * 1e3:.1f}', f'{dec_s * 1e3 / b:.2f}', f'{b / dec_s:.1f}']
    if sm.sampler:
      to_pixels, tokens = sm.sampler.to_pixels, fn().tokens
      pix_s = _time(lambda: to_pixels(tokens), repeats)  # pylint: disable=cell-var-from-loop
      row += [f'{pix_s * 1e3:.1f}', f'{b / (dec_s + pix_s):.1f}']
    rows.append(row)
    print(f'[decode] batch {b}: {dec_s * 1e3:.1f} ms', flush=True)
  _print_rows(header, rows)


def steps_table(
  sm: SweepModel, steps: list[int], batch: int, repeats: int, workdir: str | None, num_samples: int
) -> None:
  print(
    'Decoding steps T vs time'
    + (' and sample quality' if workdir else '')
    + f' (timing: batch {batch}, token decoding)'
  )
  print(sm.describe())
  header = ['T', 'decode ms / batch', 'images/s']
  if workdir:
    from magvit_jax import evaluation  # pylint: disable=g-import-not-at-top

    labels = evaluation.spread_labels(num_samples, sm.model.num_classes)
    classifier = None
    if not sm.sampler.is_video:
      from magvit_jax.metrics import digits_classifier  # pylint: disable=g-import-not-at-top

      classifier = digits_classifier.DigitsClassifier()
    fid = 'digits FVD' if sm.sampler.is_video else 'digits FID'
    header += [f'{fid} (lower better)', 'precision', 'recall', 'digits-net accuracy']
    if classifier:
      header += ['sklearn classifier agreement']
    print(
      f'quality: {num_samples} samples (classes spread evenly, seed 0) per T, digits '
      f'network of magvit_jax.evaluation vs the test split'
    )
  else:
    print(
      'quality columns omitted: pass --workdir=<trained transformer workdir> (e.g. '
      'runs/demo/transformer from `python -m magvit_jax.demo`)'
    )
  rows = []
  for t in steps:
    dec_s = _time(sm.decode_fn(batch, t), repeats)
    row = [str(t), f'{dec_s * 1e3:.1f}', f'{batch / dec_s:.1f}']
    if workdir:
      result = sm.sampler.generate(labels, seed=0, num_steps=t, batch_size=min(num_samples, 100))
      metrics = evaluation.evaluate(workdir, result['images'], result['labels'], network='digits')
      key = 'eval/digits_fvd' if sm.sampler.is_video else 'eval/digits_fid'
      row += [
        f'{metrics[key]:.2f}',
        f'{metrics["eval/precision"]:.2f}',
        f'{metrics["eval/recall"]:.2f}',
        f'{metrics["eval/classifier_accuracy"]:.1%}',
      ]
      if classifier:
        row += [f'{classifier.agreement(result["images"], result["labels"]):.1%}']
    rows.append(row)
    print(f'[decode] T={t}: {dec_s * 1e3:.1f} ms', flush=True)
  _print_rows(header, rows)


def _ints(s: str) -> list[int]:
  return [int(v) for v in s.split(',') if v.strip()]


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument(
    '--tables', default='overhead,batch,steps', help='comma list of overhead, batch, steps'
  )
  # Overhead table.
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--seq_len', type=int, default=256)
  p.add_argument('--hidden', type=int, default=256)
  p.add_argument('--layers', type=int, default=4)
  p.add_argument('--heads', type=int, default=4)
  p.add_argument('--mlp', type=int, default=1024)
  p.add_argument('--codebook', type=int, default=1024)
  p.add_argument('--classes', type=int, default=10)
  p.add_argument('--steps', type=int, default=8)
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--schedule', default='cosine')
  p.add_argument(
    '--guidance',
    type=float,
    default=0.0,
    help='classifier-free guidance scale (doubles the batch of each model call)',
  )
  p.add_argument(
    '--dtype',
    default='float32',
    choices=('float32', 'bfloat16'),
    help='transformer activation dtype of the timed models (bfloat16 on GPU/TPU)',
  )
  # Batch and steps tables.
  p.add_argument(
    '--workdir',
    default=None,
    help='trained transformer workdir (e.g. runs/demo/transformer): batch/steps '
    'tables use it, and the steps table adds sample quality',
  )
  p.add_argument('--sweep_batches', default='1,8,32,64')
  p.add_argument('--sweep_steps', default='1,2,4,8,12,16')
  p.add_argument('--sweep_batch', type=int, default=32, help='batch of the steps table')
  p.add_argument('--sweep_repeats', type=int, default=3)
  p.add_argument(
    '--num_samples',
    type=int,
    default=100,
    help='samples per T for the quality columns (needs --workdir)',
  )
  args = p.parse_args()
  tables = [t.strip() for t in args.tables.split(',') if t.strip()]
  for t in tables:
    if t not in ('overhead', 'batch', 'steps'):
      p.error(f'--tables: {t!r} is not one of overhead, batch, steps')

  dev = jax.devices()[0]
  try:
    cpus = len(os.sched_getaffinity(0))
  except AttributeError:
    cpus = os.cpu_count()
  print(
    f'machine: {jax.device_count()} x {dev.platform}/{dev.device_kind}, {cpus} CPUs '
    f'({platform.processor() or platform.machine()}), jax {jax.__version__}\n'
  )
  if 'overhead' in tables:
    overhead_table(args)
  if 'batch' in tables or 'steps' in tables:
    sm = SweepModel(args.workdir, args.dtype)
    if 'batch' in tables:
      batch_table(sm, _ints(args.sweep_batches), args.sweep_repeats)
    if 'steps' in tables:
      steps_table(
        sm,
        _ints(args.sweep_steps),
        args.sweep_batch,
        args.sweep_repeats,
        args.workdir,
        args.num_samples,
      )


if __name__ == '__main__':
  main()

"""Side by side with the released MaskGIT code: transformer forward and T-step decode.

    python benchmarks/peer_maskgit.py --official=/work/scratch/maskgit \
        [--layers 24 --hidden 768 --heads 16 --mlp 3072 --batch 2 --steps 8 --repeats 5]

``--official`` is a folder holding the extracted google-research/maskgit sources (the folder
with the ``maskgit`` package; see ../shared/REFERENCES.md); it is put on ``sys.path`` and run
as is (after the one shim it needs, ``jnp.DeviceArray = jax.Array``), never copied here.

Both sides compute the same function: the official ``maskgit_transformer.Transformer`` is
initialised with its own initialisers (seed 0) and the tree is converted to this project's
transformer (``configs/maskgit_imagenet.py:official256``, ``norm_layout='post'``) with
``magvit_jax.convert.maskgit_transformer.transformer_params_from_official``. The default sizes
are the official ImageNet 256 transformer (``maskgit/configs/maskgit_class_cond_config.py``:
24 layers, hidden 768, 16 heads, MLP 3072, codebook 1024, 1000 classes, 16x16 tokens).

Printed:

* the max abs difference of the two forwards' logits on one half-masked batch (the official
  logits mapped to ours with ``official_logits_to_ours``);
* images/s of (a) one jitted forward pass and (b) the full ``--steps``-step decode from an
  all-[MASK] map: the official ``parallel_decode.decode`` (its ``lax.while_loop``, with the
  ``tokens_to_logits`` of ``maskgit/inference.py``: apply, then ``logits[..., :K]``) inside
  ``jax.jit``, vs this project's ``magvit_jax.decoding.maskgit.decode`` (jitted
  ``lax.fori_loop``); cosine schedule, choice temperature 4.5, sampling temperature 1, no
  guidance on both.

Timings: one warm-up call (compilation) per function, then ``--repeats`` timed calls of each,
the two sides interleaved (so that load from other processes hits both alike), median.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from magvit_jax.config_loader import load_config
from magvit_jax.convert.maskgit_transformer import (
  official_inputs_to_ours,
  official_logits_to_ours,
  ours_to_official_inputs,
  transformer_params_from_official,
)
from magvit_jax.decoding import maskgit
from magvit_jax.models.transformer import build_transformer


def _import_official(path: str):
  """(maskgit_transformer, parallel_decode) modules of the official sources under ``path``."""
  if not os.path.isdir(os.path.join(path, 'maskgit')):
    raise SystemExit(f'--official={path}: no maskgit/ package there (extract the sources first)')
  jnp.DeviceArray = jax.Array  # The one shim the official code needs on jax >= 0.4.
  sys.path.insert(0, os.path.abspath(path))
  from maskgit.libml import parallel_decode  # pylint: disable=g-import-not-at-top
  from maskgit.nets import maskgit_transformer  # pylint: disable=g-import-not-at-top

  return maskgit_transformer, parallel_decode


def _timed(fn) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def _median_times(fns: dict, repeats: int) -> dict:
  """Median seconds per call of each ``fn()`` after one warm-up each; calls interleaved."""
  for fn in fns.values():
    jax.block_until_ready(fn())
  times = {k: [] for k in fns}
  for _ in range(repeats):
    for k, fn in fns.items():
      times[k].append(_timed(fn))
  return {k: statistics.median(v) for k, v in times.items()}


def _machine() -> str:
  model = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          model = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  try:
    cpus = len(os.sched_getaffinity(0))
  except AttributeError:
    cpus = os.cpu_count()
  dev = jax.devices()[0]
  return f'{dev.platform}/{dev.device_kind}, {cpus} CPU cores ({model}), jax {jax.__version__}'


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--official', required=True, help='folder with the maskgit package')
  p.add_argument('--layers', type=int, default=24)
  p.add_argument('--hidden', type=int, default=768)
  p.add_argument('--heads', type=int, default=16)
  p.add_argument('--mlp', type=int, default=3072)
  p.add_argument('--codebook', type=int, default=1024)
  p.add_argument('--classes', type=int, default=1000)
  p.add_argument('--seq_len', type=int, default=256, help='image tokens (16x16 at 256x256)')
  p.add_argument('--batch', type=int, default=2)
  p.add_argument('--steps', type=int, default=8)
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--choice_temperature', type=float, default=4.5)
  p.add_argument('--attention_impl', default='auto', help='our model.attention_impl')
  args = p.parse_args()

  official_tf, parallel_decode = _import_official(args.official)
  K, C, n, b = args.codebook, args.classes, args.seq_len, args.batch

  # The official model (its own initialisers) and the same weights in ours.
  official = official_tf.Transformer(
    vocab_size=K + C + 1,
    hidden_size=args.hidden,
    num_hidden_layers=args.layers,
    num_attention_heads=args.heads,
    intermediate_size=args.mlp,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    max_position_embeddings=n + 1,
  )
  dummy = jnp.zeros((1, n + 1), jnp.int32)
  official_params = jax.jit(lambda r: official.init(r, dummy, deterministic=True))(
    jax.random.PRNGKey(0)
  )['params']
  config = load_config('maskgit_imagenet.py:official256')
  config.model.update(
    dict(
      codebook_size=K,
      num_classes=C,
      hidden_size=args.hidden,
      num_layers=args.layers,
      num_heads=args.heads,
      mlp_dim=args.mlp,
      dropout_rate=0.0,
      attention_impl=args.attention_impl,
    )
  )
  ours = build_transformer(config.model, n)
  our_params = transformer_params_from_official(official_params, config, seq_len=n)
  # Same tree structure as our own init (the converter checks shapes; this checks names).
  our_init = jax.eval_shape(ours.init, jax.random.PRNGKey(0), *ours.dummy_inputs())['params']
  assert jax.tree_util.tree_structure(nn.unbox(our_init)) == jax.tree_util.tree_structure(
    our_params
  ), 'converted tree differs from our init tree'

  def official_logits(params, ids):
    return official.apply({'params': params}, ids, deterministic=True)

  def our_apply(params, tokens, labels):
    return ours.apply({'params': params}, tokens, labels, deterministic=True)

  official_fwd = jax.jit(official_logits)
  our_fwd = jax.jit(our_apply)

  # (0) Same function: logits on one half-masked batch.
  k_tok, k_mask, k_lab, k_dec = jax.random.split(jax.random.PRNGKey(1), 4)
  labels = jax.random.randint(k_lab, (b,), 0, C, jnp.int32)
  tokens = jax.random.randint(k_tok, (b, n), 0, K, jnp.int32)
  tokens = jnp.where(jax.random.bernoulli(k_mask, 0.5, (b, n)), K, tokens)
  ids = ours_to_official_inputs(tokens, labels, K)
  t2, l2 = official_inputs_to_ours(ids, K, C)
  assert bool(jnp.all(t2 == tokens)) and bool(jnp.all(l2 == labels))
  ref = official_logits_to_ours(official_fwd(official_params, ids), K)
  got = our_fwd(our_params, tokens, labels)
  diff = float(jnp.max(jnp.abs(ref - got)))
  scale = float(jnp.max(jnp.abs(ref)))
  print(f'machine: {_machine()}')
  print(
    f'config: L={args.layers} d={args.hidden} heads={args.heads} mlp={args.mlp} K={K} C={C} '
    f'n={n} batch={b} T={args.steps} float32, repeats={args.repeats} (median)'
  )
  print(f'forward logits max |official - ours| = {diff:.3g} (max |logit| {scale:.3g})', flush=True)

  # (a) Forward passes.
  fwd = _median_times(
    {
      'official': lambda: official_fwd(official_params, ids),
      'ours': lambda: our_fwd(our_params, tokens, labels),
    },
    args.repeats,
  )
  print(f'[forward] {fwd}', flush=True)

  # (b) Full decode from all-[MASK] (label token first, as maskgit/inference.py builds it).
  all_masked = jnp.full((b, n), K, jnp.int32)
  official_init = ours_to_official_inputs(all_masked, labels, K)

  @jax.jit
  def official_decode(params, inputs, rng):
    def tokens_to_logits(seq):
      return official.apply({'params': params}, seq, deterministic=True)[..., :K]

    return parallel_decode.decode(
      inputs,
      rng,
      tokens_to_logits,
      mask_token_id=-1,
      num_iter=args.steps,
      choice_temperature=args.choice_temperature,
      mask_scheduling_method='cosine',
    )

  def run_ours():
    return maskgit.decode(
      our_apply,
      our_params,
      k_dec,
      all_masked,
      labels,
      mask_token_id=K,
      num_steps=args.steps,
      schedule='cosine',
      choice_temperature=args.choice_temperature,
      temperature=1.0,
    ).tokens

  out_official = official_decode(official_params, official_init, k_dec)
  out_ours = run_ours()
  assert not bool(jnp.any(out_official[:, -1, 1:] == -1)), 'official decode left masks'
  assert not bool(jnp.any(out_ours == K)), 'our decode left masks'
  dec = _median_times(
    {'official': lambda: official_decode(official_params, official_init, k_dec), 'ours': run_ours},
    args.repeats,
  )
  print(f'[decode] {dec}', flush=True)

  rows = []
  for name, t in (('forward pass', fwd), (f'{args.steps}-step decode', dec)):
    ratio = t['official'] / t['ours']
    rows.append(
      [
        name,
        f'{t["official"] * 1e3:.0f}',
        f'{t["ours"] * 1e3:.0f}',
        f'{b / t["official"]:.3f}',
        f'{b / t["ours"]:.3f}',
        f'{ratio:.2f}x',
      ]
    )
  header = [
    'batch of ' + str(b),
    'official ms',
    'ours ms',
    'official images/s',
    'ours images/s',
    'ours / official (images/s)',
  ]
  print()
  print(f'date: {datetime.date.today().isoformat()}')
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  for r in rows:
    print('| ' + ' | '.join(r) + ' |')
  goal = dec['official'] / dec['ours']
  print(f'\ndecode goal ours >= 1.2x official: {"met" if goal >= 1.2 else "NOT met"} ({goal:.2f}x)')


if __name__ == '__main__':
  main()

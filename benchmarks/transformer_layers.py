"""Transformer layers: step time and compiled memory of unrolled / scan / scan+remat, f32 / bf16.

    python benchmarks/transformer_layers.py [--layers=4 --hidden=128 --heads=4 --mlp=512]
                                            [--seq_len=256 --batch=8 --steps=3]
                                            [--variants=unrolled,scan,scan+full,scan+dots_saveable]
                                            [--dtypes=float32,bfloat16]

One jitted training step per row (forward, cross-entropy on all tokens, backward, AdamW update,
state donated) of `magvit_jax.models.transformer.Transformer` built with the row's options
(`scan_layers`, `remat_policy`, `dtype`; everything else equal). Columns: "compile s" (lower +
compile), "step ms" (median wall time of --steps steps after one warm-up step), "temp MiB" (the
compiled program's scratch buffers, `compiled.memory_analysis().temp_size_in_bytes`: the
activations kept for the backward pass live here), "args MiB" (parameters + optimizer state +
batch), and both as ratios to the first row. On CPU, XLA runs bf16 arithmetic in f32 (converts
around each op), so bf16 rows show neither the speed nor the memory gain there; compare them on a
GPU/TPU. The defaults take a few minutes on a 2-core CPU, mostly compiling (8 rows).
"""

from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from magvit_jax.models import transformer as tfm

VARIANTS = {
  'unrolled': dict(scan_layers=False, remat_policy='none'),
  'scan': dict(scan_layers=True, remat_policy='none'),
  'unrolled+full': dict(scan_layers=False, remat_policy='full'),
  'scan+full': dict(scan_layers=True, remat_policy='full'),
  'scan+dots_saveable': dict(scan_layers=True, remat_policy='dots_saveable'),
  'scan+dots_with_no_batch_dims_saveable': dict(
    scan_layers=True, remat_policy='dots_with_no_batch_dims_saveable'
  ),
}


def measure(model: tfm.Transformer, batch: int, steps: int) -> dict[str, float]:
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, model.codebook_size, (batch, model.seq_len)), jnp.int32)
  labels = jnp.asarray(rng.integers(0, model.num_classes, (batch,)), jnp.int32)
  tx = optax.adamw(1e-4)

  def init(key):
    params = nn.unbox(model.init(key, tokens, labels)['params'])
    return params, tx.init(params)

  def step(state, tokens, labels, key):
    params, opt_state = state

    def loss_fn(p):
      logits = model.apply(
        {'params': p}, tokens, labels, deterministic=False, rngs={'dropout': key}
      )
      logp = jax.nn.log_softmax(logits)
      return -jnp.mean(jnp.take_along_axis(logp, tokens[..., None], -1))

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  state = jax.jit(init)(jax.random.key(0))
  key = jax.random.key(1)
  t0 = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=(0,)).lower(state, tokens, labels, key).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  times = []
  for i in range(steps + 1):
    t0 = time.perf_counter()
    state, loss = compiled(state, tokens, labels, jax.random.fold_in(key, i))
    jax.block_until_ready((state, loss))
    if i:  # The first step is a warm-up.
      times.append(time.perf_counter() - t0)
  if not np.isfinite(float(loss)):
    raise FloatingPointError(f'non-finite loss {float(loss)}')
  return dict(
    compile_s=compile_s,
    step_ms=1e3 * statistics.median(times),
    temp_mib=(mem.temp_size_in_bytes if mem else float('nan')) / 2**20,
    args_mib=(mem.argument_size_in_bytes if mem else float('nan')) / 2**20,
  )


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--layers', type=int, default=4)
  p.add_argument('--hidden', type=int, default=128)
  p.add_argument('--heads', type=int, default=4)
  p.add_argument('--mlp', type=int, default=512)
  p.add_argument('--seq_len', type=int, default=256)
  p.add_argument('--codebook', type=int, default=1024)
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--variants', default='unrolled,scan,scan+full,scan+dots_saveable')
  p.add_argument('--dtypes', default='float32,bfloat16')
  args = p.parse_args()
  variants = args.variants.split(',')
  unknown = set(variants) - set(VARIANTS)
  if unknown:
    p.error(f'unknown --variants {sorted(unknown)}; choose from {list(VARIANTS)}')
  print(
    f'{jax.devices()[0].platform} {jax.devices()[0].device_kind}: {args.layers} layers, '
    f'hidden {args.hidden}, mlp {args.mlp}, {args.heads} heads, seq_len {args.seq_len}, '
    f'batch {args.batch}, codebook {args.codebook}; jax {jax.__version__}'
  )
  header = (
    f'{"variant":<22} {"dtype":<9} {"compile s":>9} {"step ms":>9} {"temp MiB":>9} '
    f'{"args MiB":>9} {"step x":>7} {"temp x":>7}'
  )
  print(header)
  print('-' * len(header))
  first = None
  for dtype in args.dtypes.split(','):
    for name in variants:
      model = tfm.Transformer(
        codebook_size=args.codebook,
        num_classes=10,
        seq_len=args.seq_len,
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=args.heads,
        mlp_dim=args.mlp,
        dropout_rate=0.1,
        dtype=jnp.dtype(dtype),
        **VARIANTS[name],
      )
      r = measure(model, args.batch, args.steps)
      first = first or r
      print(
        f'{name:<22} {dtype:<9} {r["compile_s"]:>9.2f} {r["step_ms"]:>9.1f} '
        f'{r["temp_mib"]:>9.2f} {r["args_mib"]:>9.2f} {r["step_ms"] / first["step_ms"]:>7.2f} '
        f'{r["temp_mib"] / first["temp_mib"]:>7.2f}',
        flush=True,
      )


if __name__ == '__main__':
  main()

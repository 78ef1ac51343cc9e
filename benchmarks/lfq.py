"""LFQ entropy loss at MAGVIT-v2 scale: chunked (ours) vs naive [N, 2^d] materialisation.

    python benchmarks/lfq.py [--bits 18 --tokens 16384 --chunk_sizes 4096,1024
                              --naive_bits 14 --repeats 2 --warmup 1]

For the loss (``aux['loss']`` of ``LookupFreeQuantizer``) and for its gradient w.r.t. z:
  * memory: XLA's compiled plan, ``memory_analysis()`` temp + argument + output bytes
    (compiling allocates nothing, so this is measured even for the 16 GiB naive program),
    and for the naive form also the analytic floor N * 2^d * 4 bytes (at least one live
    [N, 2^d] float32 buffer; XLA's plan for the naive gradient also keeps just one);
  * time: wall time of the jitted function (minimum over ``--repeats`` runs after a
    warm-up, ``block_until_ready``). The naive form cannot run at d = 18 on a small machine
    (16 GiB per buffer), so it is timed at ``--naive_bits`` and extrapolated linearly in
    2^d (its cost is proportional to N * 2^d); ours is timed at both sizes.
Every number is labelled ``measured`` / ``compiled`` / ``estimated``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import jax
import jax.numpy as jnp

from magvit_jax.quantizers.lfq import LookupFreeQuantizer, binary_entropy_from_logits

MIB = 2.0**20


def naive_loss(
  z: jax.Array,
  entropy_weight: float = 0.1,
  commitment_weight: float = 0.25,
  temperature: float = 1.0,
) -> jax.Array:
  """Same loss as LookupFreeQuantizer, with all 2^d codes at once: [N, 2^d] log q.

  z: [N, d] float32. Returns a float32 scalar.
  """
  n, d = z.shape
  logits = (4.0 / temperature) * z
  per_token = jnp.mean(jnp.sum(binary_entropy_from_logits(logits), axis=-1))
  codes = jnp.arange(2**d, dtype=jnp.int32)
  bits = (jnp.right_shift(codes[:, None], jnp.arange(d, dtype=jnp.int32)) & 1).astype(z.dtype)
  log_q = jnp.sum(jax.nn.log_sigmoid(-logits), axis=-1, keepdims=True) + jnp.matmul(
    logits, bits.T, precision=jax.lax.Precision.HIGHEST
  )  # [N, 2^d]
  log_m = jax.nn.logsumexp(log_q, axis=0) - math.log(n)
  batch = -jnp.sum(jnp.exp(log_m) * log_m)
  quantized = jnp.where(z >= 0, 1.0, -1.0)
  commitment = jnp.mean((z - jax.lax.stop_gradient(quantized)) ** 2)
  return entropy_weight * (per_token - batch) + commitment_weight * commitment


def ours_loss_fn(chunk_size: int):
  def loss(z: jax.Array) -> jax.Array:
    model = LookupFreeQuantizer(num_bits=z.shape[-1], chunk_size=chunk_size)
    return model.apply({}, z)[1]['loss']

  return loss


def compiled_bytes(fn, n: int, d: int) -> tuple[int, object]:
  """(temp + argument + output bytes of the compiled plan, compiled executable)."""
  compiled = jax.jit(fn).lower(jax.ShapeDtypeStruct((n, d), jnp.float32)).compile()
  stats = compiled.memory_analysis()
  total = stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
  return total, compiled


def wall_time(compiled, z: jax.Array, repeats: int, warmup: int = 1) -> float:
  """Minimum wall seconds of ``compiled(z)`` over ``repeats`` runs after ``warmup`` runs."""
  for _ in range(warmup):
    jax.block_until_ready(compiled(z))
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(z))
    best = min(best, time.perf_counter() - start)
  return best


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--bits', type=int, default=18)
  p.add_argument('--tokens', type=int, default=16384)
  p.add_argument('--chunk_sizes', default='4096,1024')
  p.add_argument('--naive_bits', type=int, default=14)
  p.add_argument('--repeats', type=int, default=2)
  p.add_argument(
    '--warmup', type=int, default=1, help='untimed runs before timing (compilation is never timed)'
  )
  args = p.parse_args()
  n, d, dn = args.tokens, args.bits, args.naive_bits
  dev = jax.devices()[0]
  print(
    f'machine: platform={dev.platform} device_kind={dev.device_kind} '
    f'cpu_count={os.cpu_count()} ({platform.processor() or platform.machine()}), '
    f'jax {jax.__version__}'
  )
  print(f'N={n} tokens, d={d} bits (K=2^{d}={2**d}); naive timed at d={dn}\n')
  rows = []
  key = jax.random.PRNGKey(0)
  z_d = jax.random.normal(key, (n, d), jnp.float32)
  z_dn = jax.random.normal(key, (n, dn), jnp.float32)
  passes = {'loss': lambda f: f, 'grad': jax.grad}

  naive_time = {}
  for name, wrap in passes.items():
    _, compiled = compiled_bytes(wrap(naive_loss), n, dn)
    naive_time[name] = wall_time(compiled, z_dn, args.repeats, args.warmup)
    rows.append(
      (
        'naive',
        dn,
        n,
        '-',
        name,
        compiled_bytes(wrap(naive_loss), n, dn)[0] / MIB,
        'compiled',
        naive_time[name],
        'measured',
      )
    )
  for chunk in [int(c) for c in args.chunk_sizes.split(',')]:
    for name, wrap in passes.items():
      mem, compiled = compiled_bytes(wrap(ours_loss_fn(chunk)), n, dn)
      rows.append(
        (
          'ours',
          dn,
          n,
          chunk,
          name,
          mem / MIB,
          'compiled',
          wall_time(compiled, z_dn, args.repeats, args.warmup),
          'measured',
        )
      )
  naive_mem = {}
  for name, wrap in passes.items():
    mem, _ = compiled_bytes(wrap(naive_loss), n, d)
    naive_mem[name] = mem
    live = 1
    floor = live * n * 2**d * 4
    rows.append(
      (
        'naive',
        d,
        n,
        '-',
        name,
        mem / MIB,
        'compiled (not run)',
        naive_time[name] * 2 ** (d - dn),
        f'estimated (x2^{d - dn} from d={dn})',
      )
    )
    rows.append(
      (
        'naive floor',
        d,
        n,
        '-',
        name,
        floor / MIB,
        f'estimated ({live} x N*2^d*4 B)',
        float('nan'),
        '-',
      )
    )
  for chunk in [int(c) for c in args.chunk_sizes.split(',')]:
    for name, wrap in passes.items():
      mem, compiled = compiled_bytes(wrap(ours_loss_fn(chunk)), n, d)
      rows.append(
        (
          'ours',
          d,
          n,
          chunk,
          name,
          mem / MIB,
          'compiled',
          wall_time(compiled, z_d, args.repeats, args.warmup),
          'measured',
          naive_mem[name] / mem,
        )
      )

  print(
    '| impl | d | N | chunk | pass | memory (MiB) | memory source | time (s) | time source '
    '| naive/ours memory |'
  )
  print('|---|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    ratio = f'{r[9]:.0f}x' if len(r) > 9 else ''
    t = '-' if math.isnan(r[7]) else f'{r[7]:.3f}'
    print(
      f'| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:,.1f} | {r[6]} | {t} | {r[8]} '
      f'| {ratio} |'
    )


if __name__ == '__main__':
  main()

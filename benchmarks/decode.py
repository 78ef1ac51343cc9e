"""Decode overhead: T-step MaskGIT decoding vs T forward passes of the transformer.

    python benchmarks/decode.py [--batch 32 --seq_len 256 --hidden 256 --layers 4 --heads 4
                                 --mlp 1024 --codebook 1024 --steps 8 --repeats 5]

Times one jitted forward pass and the full jitted ``decode`` (one ``lax.fori_loop``), both
warmed up, as the minimum over ``--repeats`` runs (``block_until_ready``), and prints a
table with ``ratio = decode / (T * forward)``; the goal is ``ratio <= 1.10`` (the sampling,
confidence and re-masking work adds at most 10% to the model calls).
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import flax.linen as nn

from magvit_jax.decoding import maskgit
from magvit_jax.models.transformer import Transformer


def _time(fn, repeats: int) -> float:
  """Minimum wall time of ``fn()`` in seconds over ``repeats`` runs (after one warm-up)."""
  jax.block_until_ready(fn())
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--seq_len", type=int, default=256)
  p.add_argument("--hidden", type=int, default=256)
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--mlp", type=int, default=1024)
  p.add_argument("--codebook", type=int, default=1024)
  p.add_argument("--classes", type=int, default=10)
  p.add_argument("--steps", type=int, default=8)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--schedule", default="cosine")
  p.add_argument("--guidance", type=float, default=0.0,
                 help="classifier-free guidance scale (doubles the batch of each model call)")
  args = p.parse_args()

  model = Transformer(codebook_size=args.codebook, num_classes=args.classes,
                      seq_len=args.seq_len, hidden_size=args.hidden, num_layers=args.layers,
                      num_heads=args.heads, mlp_dim=args.mlp, dropout_rate=0.0)
  mask_id = args.codebook
  b, n = args.batch, args.seq_len
  init_rng, label_rng, decode_rng = jax.random.split(jax.random.PRNGKey(0), 3)
  tokens = jnp.full((b, n), mask_id, jnp.int32)
  labels = jax.random.randint(label_rng, (b,), 0, args.classes, jnp.int32)
  params = nn.meta.unbox(jax.jit(model.init)(init_rng, tokens, labels)["params"])

  def apply_fn(params, tokens, labels):
    return model.apply({"params": params}, tokens, labels, deterministic=True)

  # The forward pass of one decoding step (with guidance: the doubled batch).
  fwd_tokens, fwd_labels = tokens, labels
  if args.guidance:
    fwd_tokens = jnp.concatenate([tokens, tokens])
    fwd_labels = jnp.concatenate([labels, jnp.full_like(labels, args.classes)])
  forward = jax.jit(apply_fn)

  def run_decode():
    return maskgit.decode(apply_fn, params, decode_rng, tokens, labels,
                          mask_token_id=mask_id, num_steps=args.steps,
                          schedule=args.schedule, guidance_scale=args.guidance,
                          null_label=args.classes if args.guidance else None)

  fwd_s = _time(lambda: forward(params, fwd_tokens, fwd_labels), args.repeats)
  dec_s = _time(run_decode, args.repeats)
  out = run_decode()
  assert not bool(jnp.any(out.tokens == mask_id)), "decode left mask tokens"

  dev = jax.devices()[0]
  ratio = dec_s / (args.steps * fwd_s)
  config = (f"b={b} n={n} d={args.hidden} L={args.layers} heads={args.heads} "
            f"mlp={args.mlp} K={args.codebook} cfg={args.guidance}")
  rows = [
      ("device", f"{dev.device_kind} ({dev.platform}, {jax.device_count()} device(s))"),
      ("config", config),
      ("forward ms", f"{fwd_s * 1e3:.2f}"),
      ("decode ms", f"{dec_s * 1e3:.2f}"),
      ("T", str(args.steps)),
      ("ratio decode / (T * forward)", f"{ratio:.3f}  (goal <= 1.10: "
                                       f"{'met' if ratio <= 1.10 else 'NOT met'})"),
  ]
  width = max(len(k) for k, _ in rows)
  print(f"| {'quantity'.ljust(width)} | value |")
  print(f"|{'-' * (width + 2)}|-------|")
  for k, v in rows:
    print(f"| {k.ljust(width)} | {v} |")


if __name__ == "__main__":
  main()

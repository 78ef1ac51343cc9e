"""Training-data throughput: decode + augment rate per CPU core, host_sharding 'rows' vs 'files'.

    python benchmarks/data_throughput.py [--process_count 4] [--batch 16] [--batches 40]

Simulates process 0 of `--process_count` processes (`create_dataset(process_index=0,
process_count=N)`, nothing else running) on the embedded datasets: `magvit_digits` (images,
`--image_size`) and `magvit_moving_digits` (video clips of `--num_frames` frames), each with
`data.host_sharding='rows'` (every process reads the whole split and keeps its rows of each
global batch) and `'files'` (every process reads only its own shard). Per configuration, after
`--warmup` batches:

* examples/s: training examples yielded per second of wall time;
* per core: examples per CPU second (user + system time of this process, all tf.data
  threads), i.e. the rate one core sustains;
* raw reads/example: encoded records read from disk per example yielded (the advance of the
  stream position: N for 'rows', 1 for 'files'); the IO a pod pays per host.

Decoding dominates and is the same per example in both modes (each process decodes only its
own rows either way); 'files' removes the (N - 1) / N of the raw reads that 'rows' throws away.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import ml_collections  # noqa: E402

from magvit_jax.data import pipeline  # noqa: E402


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def measure(
  name: str,
  host_sharding: str,
  *,
  process_count: int,
  batch: int,
  batches: int,
  warmup: int,
  image_size: int,
  num_frames: int | None,
) -> dict[str, float]:
  """Rates of process 0's training stream; see the module docstring."""
  config = ml_collections.ConfigDict(
    dict(
      name=name,
      image_size=image_size,
      num_frames=num_frames,
      shuffle_buffer=1000,
      host_sharding=host_sharding,
    )
  )
  stream = pipeline.create_dataset(
    config,
    split='train',
    batch_size=batch,
    train=True,
    seed=0,
    process_index=0,
    process_count=process_count,
  )
  for _ in range(warmup):
    next(stream)
  position, cpu, wall = stream.position(), _cpu_seconds(), time.perf_counter()
  for _ in range(batches):
    next(stream)
  wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
  examples = batches * batch
  return {
    'examples_per_s': examples / wall,
    'examples_per_cpu_s': examples / cpu,
    'reads_per_example': (stream.position() - position) / examples,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--process_count', type=int, default=4)
  parser.add_argument('--batch', type=int, default=16, help='per-process batch')
  parser.add_argument('--batches', type=int, default=40)
  parser.add_argument('--warmup', type=int, default=5)
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--num_frames', type=int, default=8)
  args = parser.parse_args()
  print(
    f'# {platform.processor() or platform.machine()}, {os.cpu_count()} cores; process 0 of '
    f'{args.process_count}, batch {args.batch}, {args.batches} batches after {args.warmup}'
  )
  print('| data | host_sharding | examples/s | examples per CPU-s (per core) | raw reads/example |')
  print('|---|---|---|---|---|')
  for name, frames, kind in (
    ('magvit_digits', None, f'images {args.image_size}x{args.image_size}'),
    (
      'magvit_moving_digits',
      args.num_frames,
      f'clips {args.num_frames}x{args.image_size}x{args.image_size}',
    ),
  ):
    for sharding in ('rows', 'files'):
      r = measure(
        name,
        sharding,
        process_count=args.process_count,
        batch=args.batch,
        batches=args.batches,
        warmup=args.warmup,
        image_size=args.image_size,
        num_frames=frames,
      )
      print(
        f'| {name} ({kind}) | {sharding} | {r["examples_per_s"]:.0f} | '
        f'{r["examples_per_cpu_s"]:.0f} | {r["reads_per_example"]:.2f} |',
        flush=True,
      )


if __name__ == '__main__':
  main()

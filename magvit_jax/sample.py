r"""Class-conditional sampling from a trained transformer workdir.

  python -m magvit_jax.sample --workdir=runs/maskgit_digits --output=runs/samples \
      [--num_samples=100 --classes=0,1,2 --steps=8 --schedule=cosine --seed=0 \
       --guidance_scale=1.0 --choice_temperature=4.5 --temperature=1.0]

Writes `<output>/grid.png` (one row per requested class),
`<output>/samples.npz` with `images` uint8 [N, H, W, 3] and `labels` int32 [N]
(the class asked for), and `<output>/decoding_steps.png` (the token map after
each decoding step, first sample of each class, masked positions grey).

MAGVIT video tasks (a transformer trained with COMMIT tasks):

  python -m magvit_jax.sample --workdir=runs/magvit_digits --output=runs/fp --task=FP \
      [--num_samples=16 --split=test]

conditions on the first `--num_samples` clips of the eval split and writes
`samples.npz` (images = generated videos uint8 [N, T, H, W, 3] with the known
pixels unchanged, labels, condition, known, targets), `grid.png` (per clip:
condition, generated, ground truth rows) and `samples.gif`.
"""

from __future__ import annotations

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app
from absl import flags
from absl import logging

from magvit_jax import cli_errors

from magvit_jax import cli_flags
from magvit_jax import pretrained

_OUTPUT = flags.DEFINE_string('output', None, 'Directory for grid.png and samples.npz.')
_CLASSES = flags.DEFINE_list(
  'classes',
  [],
  'Classes to generate; the samples are split evenly over them in order (default: all classes).',
)
flags.mark_flags_as_required(['workdir', 'output'])


def check_classes(values: list[str], num_classes: int, workdir: str) -> list[int]:
  """--classes as class ids (all classes when empty); ValueError on a non-integer or an id
  outside [0, num_classes)."""
  flag = f'--classes={",".join(values)}'
  try:
    classes = [int(c) for c in values]
  except ValueError as e:
    raise ValueError(f'{flag}: expected comma-separated integer class ids') from e
  if any(c < 0 or c >= num_classes for c in classes):
    raise ValueError(
      f'{flag}: class ids must be in [0, {num_classes}) '
      f'(model.num_classes={num_classes} of {workdir})'
    )
  return classes or list(range(num_classes))


def run_task() -> None:
  from magvit_jax.inference import video_tasks  # pylint: disable=g-import-not-at-top
  from magvit_jax.inference.sampler import Sampler  # pylint: disable=g-import-not-at-top

  workdir, task = cli_flags.WORKDIR.value, cli_flags.TASK.value
  config = pretrained.read_config(workdir, 'transformer')
  videos, labels = video_tasks.load_clips(config, cli_flags.num_samples(100), cli_flags.SPLIT.value)
  result = video_tasks.run_task(
    Sampler(workdir, **cli_flags.sampler_kwargs()),
    task,
    videos,
    labels,
    seed=cli_flags.SEED.value,
    batch_size=cli_flags.BATCH.value,
    **cli_flags.decode_overrides(),
  )
  video_tasks.write_task_samples(_OUTPUT.value, result)
  print(
    f'[sample] {task} on {len(videos)} clips: wrote {_OUTPUT.value}/grid.png, '
    f'samples.gif, samples.npz',
    flush=True,
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  if cli_flags.TASK.value:
    run_task()
    return
  from magvit_jax.inference import sampler as sampler_lib  # pylint: disable=g-import-not-at-top

  workdir = cli_flags.WORKDIR.value
  num = cli_flags.num_samples(100)
  # Checked against the saved config before any checkpoint is read.
  num_classes = int(pretrained.read_config(workdir, 'transformer').model.num_classes)
  classes = check_classes(_CLASSES.value, num_classes, workdir)
  # Sample i gets class classes[i // per_class] so the grid has one row per class.
  per_class = max(1, num // len(classes))
  labels = [classes[min(i // per_class, len(classes) - 1)] for i in range(num)]
  sampler = sampler_lib.Sampler(workdir, **cli_flags.sampler_kwargs())
  result = sampler.generate(
    labels,
    seed=cli_flags.SEED.value,
    batch_size=cli_flags.BATCH.value,
    **cli_flags.decode_overrides(),
  )
  sampler_lib.write_samples(_OUTPUT.value, result, sampler, ncols=per_class)
  print(f'[sample] wrote {_OUTPUT.value}/grid.png, samples.npz, decoding_steps.png', flush=True)


if __name__ == '__main__':
  cli_errors.run(main)

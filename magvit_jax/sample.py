r"""Class-conditional sampling from a trained transformer workdir.

  python -m magvit_jax.sample --workdir=runs/maskgit_digits --output=runs/samples \
      [--num_samples=100 --classes=0,1,2 --steps=8 --seed=0 --guidance_scale=1.0]

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

from magvit_jax import sampling
from magvit_jax.checkpoint import read_workdir_config
from magvit_jax.masking import commit

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir of a trained transformer run.')
_OUTPUT = flags.DEFINE_string('output', None, 'Directory for grid.png and samples.npz.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 100, 'Number of images to generate.')
_CLASSES = flags.DEFINE_list(
  'classes',
  [],
  'Classes to generate; the samples are split evenly over them in order (default: all classes).',
)
_STEPS = flags.DEFINE_integer('steps', None, 'Decoding steps T (default: config.sampling).')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed.')
_BATCH = flags.DEFINE_integer('batch_size', 50, 'Images decoded per jitted call.')
_GUIDANCE = flags.DEFINE_float('guidance_scale', None, 'Classifier-free guidance scale.')
_CHOICE_T = flags.DEFINE_float('choice_temperature', None, 'Gumbel scale of the confidence.')
_TEMPERATURE = flags.DEFINE_float('temperature', None, 'Token sampling temperature.')
_TASK = flags.DEFINE_enum(
  'task', None, list(commit.TASKS), 'MAGVIT COMMIT task to run on eval clips (FP, FI, OPC, ...).'
)
_SPLIT = flags.DEFINE_string(
  'split', None, 'Split of the condition clips for --task (default: config.data.eval_split).'
)
flags.mark_flags_as_required(['workdir', 'output'])


def run_task() -> None:
  from magvit_jax import video_tasks  # pylint: disable=g-import-not-at-top

  config = read_workdir_config(_WORKDIR.value)
  videos, labels = video_tasks.load_clips(config, _NUM_SAMPLES.value, _SPLIT.value)
  sampler = sampling.Sampler(_WORKDIR.value)
  result = video_tasks.run_task(
    sampler,
    _TASK.value,
    videos,
    labels,
    seed=_SEED.value,
    num_steps=_STEPS.value,
    guidance_scale=_GUIDANCE.value,
    choice_temperature=_CHOICE_T.value,
    temperature=_TEMPERATURE.value,
    batch_size=_BATCH.value,
  )
  video_tasks.write_task_samples(_OUTPUT.value, result)
  print(
    f'[sample] {_TASK.value} on {len(videos)} clips: wrote {_OUTPUT.value}/grid.png, '
    f'samples.gif, samples.npz',
    flush=True,
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  if _NUM_SAMPLES.value <= 0:
    raise app.UsageError(f'--num_samples must be positive, got {_NUM_SAMPLES.value}')
  if _TASK.value:
    run_task()
    return
  num_classes = int(read_workdir_config(_WORKDIR.value)['model']['num_classes'])
  try:
    classes = [int(c) for c in _CLASSES.value] or list(range(num_classes))
  except ValueError as e:
    raise app.UsageError(f'--classes must be integers, got {_CLASSES.value}') from e
  if _NUM_SAMPLES.value <= 0:
    raise app.UsageError(f'--num_samples must be positive, got {_NUM_SAMPLES.value}')
  # Sample i gets class classes[i // per_class] so the grid has one row per class.
  per_class = max(1, _NUM_SAMPLES.value // len(classes))
  labels = [classes[min(i // per_class, len(classes) - 1)] for i in range(_NUM_SAMPLES.value)]
  sampler = sampling.Sampler(_WORKDIR.value)
  result = sampler.generate(
    labels,
    seed=_SEED.value,
    num_steps=_STEPS.value,
    guidance_scale=_GUIDANCE.value,
    choice_temperature=_CHOICE_T.value,
    temperature=_TEMPERATURE.value,
    batch_size=_BATCH.value,
  )
  sampling.write_samples(_OUTPUT.value, result, sampler, ncols=per_class)
  print(f'[sample] wrote {_OUTPUT.value}/grid.png, samples.npz, decoding_steps.png', flush=True)


if __name__ == '__main__':
  app.run(main)

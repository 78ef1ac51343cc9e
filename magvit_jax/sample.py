r"""Class-conditional sampling from a trained transformer workdir.

  python -m magvit_jax.sample --workdir=runs/maskgit_digits --output=runs/samples \
      [--num_samples=100 --classes=0,1,2 --steps=8 --seed=0 --guidance_scale=1.0]

Writes `<output>/grid.png` (one row per requested class),
`<output>/samples.npz` with `images` uint8 [N, H, W, 3] and `labels` int32 [N]
(the class asked for), and `<output>/decoding_steps.png` (the token map after
each decoding step, first sample of each class, masked positions grey).
"""
from __future__ import annotations

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app
from absl import flags
from absl import logging

from magvit_jax import sampling
from magvit_jax.checkpoint import read_workdir_config

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir of a trained transformer run.')
_OUTPUT = flags.DEFINE_string('output', None, 'Directory for grid.png and samples.npz.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 100, 'Number of images to generate.')
_CLASSES = flags.DEFINE_list(
    'classes', [], 'Classes to generate; the samples are split evenly over them in order '
    '(default: all classes).')
_STEPS = flags.DEFINE_integer('steps', None, 'Decoding steps T (default: config.sampling).')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed.')
_BATCH = flags.DEFINE_integer('batch_size', 50, 'Images decoded per jitted call.')
_GUIDANCE = flags.DEFINE_float('guidance_scale', None, 'Classifier-free guidance scale.')
_CHOICE_T = flags.DEFINE_float('choice_temperature', None, 'Gumbel scale of the confidence.')
_TEMPERATURE = flags.DEFINE_float('temperature', None, 'Token sampling temperature.')
flags.mark_flags_as_required(['workdir', 'output'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
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
  result = sampler.generate(labels, seed=_SEED.value, num_steps=_STEPS.value,
                            guidance_scale=_GUIDANCE.value, choice_temperature=_CHOICE_T.value,
                            temperature=_TEMPERATURE.value, batch_size=_BATCH.value)
  sampling.write_samples(_OUTPUT.value, result, sampler, ncols=per_class)
  print(f'[sample] wrote {_OUTPUT.value}/grid.png, samples.npz, decoding_steps.png', flush=True)


if __name__ == '__main__':
  app.run(main)

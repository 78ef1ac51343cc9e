"""Flags shared by the `sample` and `evaluate` CLIs, defined once.

Both CLIs generate with the same decoding settings, so the flags that choose them live here
(and are therefore spelled and documented once); importing both CLIs in one process works
because neither defines a flag of the other. A flag left unset takes the run's
`config.sampling` value (`magvit_jax.inference.settings.DecodeSettings`).
"""

from __future__ import annotations

from typing import Any

from absl import flags

from magvit_jax.masking.commit import TASKS
from magvit_jax.masking.schedules import ALL_SCHEDULES

WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir of a trained transformer run.')
NUM_SAMPLES = flags.DEFINE_integer(
  'num_samples',
  None,
  'Samples (or, with --task, clips) to generate (default: per CLI).',
  lower_bound=1,
)
SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed.')
BATCH = flags.DEFINE_integer('batch_size', 50, 'Samples decoded per jitted call.', lower_bound=1)
TASK = flags.DEFINE_enum(
  'task', None, list(TASKS), 'MAGVIT COMMIT task to run on eval clips (FP, FI, OPC, ...).'
)
SPLIT = flags.DEFINE_string(
  'split', None, 'Split of the condition clips / reference data (default: config.data.eval_split).'
)

RESTORE_STEP = flags.DEFINE_integer(
  'restore_step', None, 'Transformer checkpoint step to use (default: the newest readable one).'
)
STRICT_RESTORE = flags.DEFINE_bool(
  'strict_restore', False, 'Refuse a damaged newest checkpoint instead of using an older one.'
)

# Decoding settings (default: the run's config.sampling). The bounds are those of
# `DecodeSettings`, checked here when the flags are parsed so that a bad value is reported
# before any checkpoint is read.
STEPS = flags.DEFINE_integer('steps', None, 'Decoding steps T.', lower_bound=1)
SCHEDULE = flags.DEFINE_enum('schedule', None, list(ALL_SCHEDULES), 'Mask schedule of decoding.')
GUIDANCE = flags.DEFINE_float(
  'guidance_scale', None, 'Classifier-free guidance scale.', lower_bound=0.0
)
CHOICE_T = flags.DEFINE_float(
  'choice_temperature', None, 'Gumbel scale of the confidence.', lower_bound=0.0
)
TEMPERATURE = flags.DEFINE_float(
  'temperature', None, 'Token sampling temperature.', lower_bound=0.0
)


def decode_overrides() -> dict[str, Any]:
  """The decoding flags as keyword arguments of `Sampler.generate` / `decode_tokens`."""
  return dict(
    num_steps=STEPS.value,
    schedule=SCHEDULE.value,
    guidance_scale=GUIDANCE.value,
    choice_temperature=CHOICE_T.value,
    temperature=TEMPERATURE.value,
  )


def sampler_kwargs() -> dict[str, Any]:
  """Which checkpoint a `Sampler` restores (--restore_step, --strict_restore)."""
  return dict(step=RESTORE_STEP.value, strict=STRICT_RESTORE.value)


def num_samples(default: int) -> int:
  """--num_samples, or `default` when unset (a value < 1 is refused when the flags are parsed)."""
  value = default if NUM_SAMPLES.value is None else NUM_SAMPLES.value
  if value < 1:
    raise ValueError(f'--num_samples={value}: expected a positive integer')
  return value

"""Decoding settings: the run's `config.sampling` with a caller's overrides, validated once.

Every way of generating (the `sample` and `evaluate` CLIs, `Sampler.generate`, video tasks,
notebooks, benchmarks) resolves its settings here, so a flag means the same thing everywhere.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from magvit_jax.masking.schedules import ALL_SCHEDULES


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  """Arguments of `magvit_jax.decoding.maskgit.decode` that a user chooses.

  num_steps: T decoding steps (>= 1); schedule: mask schedule name (`ALL_SCHEDULES`);
  guidance_scale: classifier-free guidance (0 = off); choice_temperature: scale of the Gumbel
  noise on the confidence (annealed to 0 over the steps); temperature: token sampling temperature.
  """

  num_steps: int
  schedule: str
  guidance_scale: float
  choice_temperature: float
  temperature: float

  def __post_init__(self):
    if self.num_steps < 1:
      raise ValueError(
        f'decoding steps={self.num_steps} (num_steps, --steps): expected a positive integer'
      )
    if self.schedule not in ALL_SCHEDULES:
      raise ValueError(f'schedule={self.schedule!r}: expected one of {ALL_SCHEDULES}')
    for name in ('guidance_scale', 'choice_temperature', 'temperature'):
      if getattr(self, name) < 0:
        raise ValueError(f'{name}={getattr(self, name)}: expected a float >= 0')

  @classmethod
  def from_config(cls, sampling: Mapping[str, Any], **overrides: Any) -> DecodeSettings:
    """`config.sampling` of a transformer run, with every override that is not None."""
    unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise TypeError(f'unknown decoding settings {sorted(unknown)}')
    values = {f.name: sampling[f.name] for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(
      num_steps=int(values['num_steps']),
      schedule=str(values['schedule']),
      guidance_scale=float(values['guidance_scale']),
      choice_temperature=float(values['choice_temperature']),
      temperature=float(values['temperature']),
    )

  def as_kwargs(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

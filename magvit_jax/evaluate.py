r"""Sample-quality metrics of a trained transformer run (FID/FVD, IS, precision/recall).

  python -m magvit_jax.evaluate --workdir=runs/maskgit_digits \
      [--samples=runs/samples/samples.npz] [--num_samples=1000] \
      [--network=digits|inception|i3d] [--weights=inception_fid.npz]

Samples: `--samples` (a `samples.npz` of `magvit_jax.sample`: images uint8
[N, (T,) H, W, 3], labels int [N]) or, without it, `--num_samples` generated
now with the run's `Sampler`, classes spread evenly.

Networks:
  digits     (default for the embedded digits datasets) a tiny CNN trained
             offline on magvit_digits/train (`metrics.digits_features`, cached):
             eval/digits_fid (digits_fvd for videos) vs the reference split,
             eval/inception_score, eval/precision, eval/recall,
             eval/classifier_accuracy (predicted class == class asked for).
  inception  InceptionV3 (FID) from --weights: eval/fid, eval/inception_score.
  i3d        I3D Kinetics-400 from --weights: eval/fvd (on logits),
             eval/i3d_score (IS of the I3D predictions).
Numbers are only comparable between runs evaluated with the same network,
reference split and number of samples.

MAGVIT video tasks: `--task=FP` (or FI, OPC, ...) conditions on the first
--num_samples clips of the eval split and reports `<task>/psnr` over the
generated pixels and, for FP/FI, `<task>/baseline_psnr` of copying the last
known frame / blending the two known frames.

The metrics are appended to `<workdir>/metrics.jsonl` (a new file under
`<workdir>/metrics/` for gs:// workdirs; step: the run's latest
checkpoint, else 0) and printed as a table. Reference statistics are cached in
--cache_dir.
"""

from __future__ import annotations

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from magvit_jax.checkpoint import read_workdir_config
from magvit_jax.masking.commit import TASKS
from magvit_jax.evaluation import evaluate, format_table, latest_step, load_samples, spread_labels

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir of a trained transformer run.')
_SAMPLES = flags.DEFINE_string('samples', None, 'samples.npz to score (default: generate).')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 1000, 'Samples to generate without --samples.')
_NETWORK = flags.DEFINE_enum(
  'network',
  None,
  ['digits', 'inception', 'i3d'],
  'Feature network (default: digits for the embedded datasets, else '
  'inception for images / i3d for videos).',
)
_WEIGHTS = flags.DEFINE_string('weights', None, '.npz weights of the inception/i3d network.')
_SPLIT = flags.DEFINE_string(
  'split', None, 'Reference split (default: config.data.eval_split, else test).'
)
_CACHE_DIR = flags.DEFINE_string(
  'cache_dir',
  None,
  'Cache of reference statistics and of the digits network (default: ~/.cache/magvit_jax/eval).',
)
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed.')
_BATCH = flags.DEFINE_integer('batch_size', 50, 'Samples per decoding / featurizing call.')
_TASK = flags.DEFINE_enum(
  'task',
  None,
  list(TASKS),
  'MAGVIT COMMIT task to score by PSNR on '
  'eval clips (vs a baseline for FP/FI) instead of sample quality.',
)
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  workdir = _WORKDIR.value
  config = read_workdir_config(workdir)
  if _NETWORK.value in ('inception', 'i3d') and not _WEIGHTS.value:
    raise app.UsageError(
      f'--network={_NETWORK.value} needs --weights=path/to/weights.npz '
      '(see magvit_jax/metrics/convert_weights.py)'
    )
  if _TASK.value:
    from magvit_jax import sampling, video_tasks  # pylint: disable=g-import-not-at-top

    videos, labels = video_tasks.load_clips(config, _NUM_SAMPLES.value, _SPLIT.value)
    print(f'[evaluate] {_TASK.value} on {len(videos)} clips', flush=True)
    metrics, _ = video_tasks.evaluate_task(
      sampling.Sampler(workdir),
      _TASK.value,
      videos,
      labels,
      seed=_SEED.value,
      batch_size=_BATCH.value,
    )
    metrics = {f'eval/{k}': v for k, v in metrics.items()}
  elif _SAMPLES.value:
    images, labels = load_samples(_SAMPLES.value)
    print(f'[evaluate] {len(images)} samples from {_SAMPLES.value}', flush=True)
  else:
    if _NUM_SAMPLES.value < 4:
      raise app.UsageError(f'--num_samples must be >= 4, got {_NUM_SAMPLES.value}')
    from magvit_jax import sampling  # pylint: disable=g-import-not-at-top

    labels = spread_labels(_NUM_SAMPLES.value, int(config['model']['num_classes']))
    print(f'[evaluate] generating {len(labels)} samples', flush=True)
    result = sampling.Sampler(workdir).generate(labels, seed=_SEED.value, batch_size=_BATCH.value)
    images, labels = result['images'], result['labels']
  if not _TASK.value:
    metrics = evaluate(
      workdir,
      images,
      labels,
      _NETWORK.value,
      _WEIGHTS.value,
      _SPLIT.value,
      _CACHE_DIR.value,
      _BATCH.value,
    )
  from magvit_jax.trainers.metrics_writer import MetricsWriter  # pylint: disable=g-import-not-at-top

  step = latest_step(workdir)
  writer = MetricsWriter(workdir)
  writer.write(step, metrics)
  writer.close()
  print(f'[evaluate] step {step}, written to {writer.path}')
  print(format_table(metrics), flush=True)


if __name__ == '__main__':
  app.run(main)

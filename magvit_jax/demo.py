r"""Demos on the embedded digits: both stages, then samples, in one command.

  python -m magvit_jax.demo --workdir=runs/demo                     # MaskGIT (images)
  python -m magvit_jax.demo --model=magvit --workdir=runs/magvit    # MAGVIT (videos)

MaskGIT:

1. trains the VQGAN tokenizer (configs/vqgan_imagenet.py:digits) and prints
   its held-out reconstruction PSNR;
2. trains the class-conditional transformer (configs/maskgit_imagenet.py:digits)
   on the frozen tokenizer's tokens;
3. samples 10 images of every digit class with 8-step iterative decoding and
   writes `<workdir>/samples/{grid.png,samples.npz,decoding_steps.png}`;
4. scores the samples with an independent digit classifier (logistic
   regression on the original 8x8 digits) and with the project's digits feature
   network (digits FID vs the test split, precision/recall), and writes
   `<workdir>/results.json`.

MAGVIT (`--model=magvit`, moving digits at 16 x 16, 8 frames):
1. trains a 2D VQGAN on single frames (configs/vqgan_imagenet.py:digits at 16 x 16);
2. inflates it into the 3D-VQ tokenizer (configs/magvit_ucf101.py:tokenizer_digits, central
   inflation) and trains that on clips;
3. trains the COMMIT transformer on frame prediction (4 -> 4 frames) and interpolation
   (2 + 2 -> 4 frames) (configs/magvit_k600.py:digits; `--magvit_tasks=all` trains
   configs/magvit_ucf101.py:digits on all ten tasks instead);
4. on held-out clips: frame prediction (FP) vs copying the last known frame and frame
   interpolation (FI) vs blending the two known frames, PSNR of the generated frames; writes
   `<workdir>/tasks/<TASK>/{samples.gif,grid.png,samples.npz}` for every trained task and
   `<workdir>/results.json`.

Re-running resumes whatever was left unfinished.
"""

from __future__ import annotations

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import json
import time

from absl import app
from absl import flags
from absl import logging

from magvit_jax import cli_errors

from magvit_jax.config_loader import load_config

_WORKDIR = flags.DEFINE_string('workdir', 'runs/demo', 'Directory for both runs and the samples.')
_SAMPLES_PER_CLASS = flags.DEFINE_integer('samples_per_class', 10, 'Images per digit class.')
_MODEL = flags.DEFINE_enum('model', 'maskgit', ['maskgit', 'magvit'], 'Which demo to run.')
_EVAL_CLIPS = flags.DEFINE_integer('eval_clips', 100, 'MAGVIT: held-out clips per scored task.')
_MAGVIT_TASKS = flags.DEFINE_enum(
  'magvit_tasks',
  'temporal',
  ['temporal', 'all'],
  'MAGVIT: train FP + FI (k600 digits config) or all ten tasks (ucf101 digits config).',
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  from magvit_jax.trainers import loop  # pylint: disable=g-import-not-at-top

  try:
    if _MODEL.value == 'magvit':
      magvit_demo(
        os.path.abspath(_WORKDIR.value),
        _EVAL_CLIPS.value,
        'magvit_ucf101.py' if _MAGVIT_TASKS.value == 'all' else 'magvit_k600.py',
      )
    else:
      maskgit_demo()
  except loop.Preempted as e:
    # SIGTERM (or a stopped job): the checkpoint of e.step is complete; re-running resumes.
    print(f'Demo stopped at step {e.step}; re-run the same command to resume.', flush=True)


def magvit_demo(workdir: str, eval_clips: int, config_file: str = 'magvit_k600.py') -> dict:
  """MAGVIT on the moving digits (see the module docstring); returns the results dict."""
  from magvit_jax.inference import video_tasks  # pylint: disable=g-import-not-at-top
  from magvit_jax.inference.sampler import Sampler  # pylint: disable=g-import-not-at-top
  from magvit_jax.trainers import tokenizer as tokenizer_trainer  # pylint: disable=g-import-not-at-top
  from magvit_jax.trainers import transformer as transformer_trainer  # pylint: disable=g-import-not-at-top

  t0 = time.perf_counter()
  seconds = {}

  tok3d = load_config(f'{config_file}:tokenizer_digits')
  c2d = load_config('vqgan_imagenet.py:digits')
  with c2d.unlocked():
    c2d.data.image_size = tok3d.data.image_size
  dir2d = os.path.join(workdir, 'vqgan2d')
  tokenizer_trainer.train_and_evaluate(c2d, dir2d)
  seconds['vqgan2d'] = time.perf_counter() - t0

  dir3d = os.path.join(workdir, 'tokenizer3d')
  with tok3d.unlocked():
    tok3d.model.inflate_from = dir2d
  tok = tokenizer_trainer.train_and_evaluate(tok3d, dir3d)
  seconds['tokenizer3d'] = time.perf_counter() - t0 - sum(seconds.values())

  ct = load_config(f'{config_file}:digits')
  tasks = tuple(ct.commit.tasks)
  with ct.unlocked():
    ct.tokenizer_workdir = dir3d
  tf_dir = os.path.join(workdir, 'transformer')
  transformer_trainer.train_and_evaluate(ct, tf_dir)
  seconds['transformer'] = time.perf_counter() - t0 - sum(seconds.values())

  sampler = Sampler(tf_dir)
  videos, labels = video_tasks.load_clips(sampler.config, eval_clips)
  summary = {
    'tokenizer_eval_psnr_db': tok['eval_psnr'],
    'tokenizer_eval_codebook_usage': tok['eval_codebook_usage'],
    'eval_clips': len(videos),
    'decoding_steps': int(ct.sampling.num_steps),
  }
  for task in tasks:
    metrics, result = video_tasks.evaluate_task(sampler, task, videos, labels, seed=0)
    summary.update({k: v for k, v in metrics.items() if not k.endswith('examples')})
    video_tasks.write_task_samples(os.path.join(workdir, 'tasks', task), result, max_clips=8)
  seconds['tasks'] = time.perf_counter() - t0 - sum(seconds.values())
  summary.update({f'seconds_{k}': v for k, v in seconds.items()})
  summary['seconds_total'] = time.perf_counter() - t0
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  print('\n== magvit_jax MAGVIT demo (embedded moving digits) ==')
  print(f'3D-VQ held-out clip PSNR     {summary["tokenizer_eval_psnr_db"]:.2f} dB')
  for task in ('FP', 'FI'):
    if task in tasks:
      print(
        f'{task}: PSNR of generated frames {summary[f"{task}/psnr"]:.2f} dB vs baseline '
        f'({video_tasks.BASELINES[task]}) {summary[f"{task}/baseline_psnr"]:.2f} dB'
      )
  others = [t for t in tasks if t not in ('FP', 'FI')]
  if others:
    print(
      'other tasks (PSNR of generated pixels): '
      + ', '.join(f'{t} {summary[f"{t}/psnr"]:.1f}' for t in others)
    )
  print(f'time: {", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items())}')
  print(f'GIFs: {workdir}/tasks/<TASK>/samples.gif')
  return summary


def maskgit_demo():
  from magvit_jax.inference import sampler as sampler_lib  # pylint: disable=g-import-not-at-top
  from magvit_jax.metrics.digits_classifier import DigitsClassifier
  from magvit_jax.trainers import tokenizer as tokenizer_trainer
  from magvit_jax.trainers import transformer as transformer_trainer

  workdir = os.path.abspath(_WORKDIR.value)
  t0 = time.perf_counter()

  tok_config = load_config('vqgan_imagenet.py:digits')
  tok_dir = os.path.join(workdir, 'tokenizer')
  tok = tokenizer_trainer.train_and_evaluate(tok_config, tok_dir)
  t_tok = time.perf_counter() - t0

  mg_config = load_config('maskgit_imagenet.py:digits')
  mg_config.tokenizer_workdir = tok_dir
  mg_dir = os.path.join(workdir, 'transformer')
  transformer_trainer.train_and_evaluate(mg_config, mg_dir)
  t_mg = time.perf_counter() - t0 - t_tok

  labels = [c for c in range(10) for _ in range(_SAMPLES_PER_CLASS.value)]
  sampler = sampler_lib.Sampler(mg_dir)
  result = sampler.generate(labels, seed=0)
  sample_dir = os.path.join(workdir, 'samples')
  sampler_lib.write_samples(sample_dir, result, sampler, ncols=_SAMPLES_PER_CLASS.value)

  classifier = DigitsClassifier()
  agreement = classifier.agreement(result['images'], result['labels'])
  from magvit_jax import evaluation  # pylint: disable=g-import-not-at-top

  gen_metrics = evaluation.evaluate(mg_dir, result['images'], result['labels'], network='digits')
  summary = {
    'tokenizer_eval_psnr_db': tok['eval_psnr'],
    'tokenizer_eval_codebook_usage': tok['eval_codebook_usage'],
    'classifier_test_accuracy': classifier.test_accuracy,
    'sample_class_agreement': agreement,
    'digits_fid': gen_metrics['eval/digits_fid'],
    'digits_net_accuracy_on_samples': gen_metrics['eval/classifier_accuracy'],
    'precision': gen_metrics['eval/precision'],
    'recall': gen_metrics['eval/recall'],
    'num_samples': len(labels),
    'decoding_steps': int(mg_config.sampling.num_steps),
    'guidance_scale': float(mg_config.sampling.guidance_scale),
    'seconds_tokenizer': t_tok,
    'seconds_transformer': t_mg,
    'seconds_total': time.perf_counter() - t0,
  }
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  print('\n== magvit_jax demo (embedded digits) ==')
  print(f'tokenizer held-out PSNR      {summary["tokenizer_eval_psnr_db"]:.2f} dB')
  print(f'tokenizer codebook usage     {summary["tokenizer_eval_codebook_usage"]:.1%}')
  print(
    f'samples classified as asked  {agreement:.1%} of {len(labels)} '
    f'(classifier test accuracy {classifier.test_accuracy:.1%})'
  )
  print(
    f'digits FID (100 samples vs test split) {summary["digits_fid"]:.2f}, precision '
    f'{summary["precision"]:.2f}, recall {summary["recall"]:.2f}'
  )
  print(
    f'time: tokenizer {t_tok / 60:.1f} min, transformer {t_mg / 60:.1f} min, '
    f'total {summary["seconds_total"] / 60:.1f} min'
  )
  print(f'samples: {sample_dir}/grid.png, {sample_dir}/samples.npz')


if __name__ == '__main__':
  cli_errors.run(main)

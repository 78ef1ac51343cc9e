r"""The MaskGIT demo on the embedded digits: both stages, then samples, in one command.

  python -m magvit_jax.demo --workdir=runs/demo

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

Re-running resumes whatever was left unfinished.
"""
from __future__ import annotations

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import importlib.util
import json
import pathlib
import time

from absl import app
from absl import flags
from absl import logging

_WORKDIR = flags.DEFINE_string('workdir', 'runs/demo', 'Directory for both runs and the samples.')
_SAMPLES_PER_CLASS = flags.DEFINE_integer('samples_per_class', 10, 'Images per digit class.')

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / 'configs'


def load_config(filename: str, arg: str):
  """get_config(arg) of a file in configs/ (what --config=configs/FILE:ARG does)."""
  path = CONFIG_DIR / filename
  if not path.exists():
    raise FileNotFoundError(f'{path} not found: run the demo from a checkout of magvit_jax')
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  config.lock()
  return config


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  from magvit_jax import sampling
  from magvit_jax.metrics.digits_classifier import DigitsClassifier
  from magvit_jax.trainers import tokenizer as tokenizer_trainer
  from magvit_jax.trainers import transformer as transformer_trainer

  workdir = os.path.abspath(_WORKDIR.value)
  t0 = time.perf_counter()

  tok_config = load_config('vqgan_imagenet.py', 'digits')
  tok_dir = os.path.join(workdir, 'tokenizer')
  tok = tokenizer_trainer.train_and_evaluate(tok_config, tok_dir)
  t_tok = time.perf_counter() - t0

  mg_config = load_config('maskgit_imagenet.py', 'digits')
  mg_config.tokenizer_workdir = tok_dir
  mg_dir = os.path.join(workdir, 'transformer')
  transformer_trainer.train_and_evaluate(mg_config, mg_dir)
  t_mg = time.perf_counter() - t0 - t_tok

  labels = [c for c in range(10) for _ in range(_SAMPLES_PER_CLASS.value)]
  sampler = sampling.Sampler(mg_dir)
  result = sampler.generate(labels, seed=0)
  sample_dir = os.path.join(workdir, 'samples')
  sampling.write_samples(sample_dir, result, sampler, ncols=_SAMPLES_PER_CLASS.value)

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
  print(f"tokenizer held-out PSNR      {summary['tokenizer_eval_psnr_db']:.2f} dB")
  print(f"tokenizer codebook usage     {summary['tokenizer_eval_codebook_usage']:.1%}")
  print(f"samples classified as asked  {agreement:.1%} of {len(labels)} "
        f"(classifier test accuracy {classifier.test_accuracy:.1%})")
  print(f"digits FID (100 samples vs test split) {summary['digits_fid']:.2f}, precision "
        f"{summary['precision']:.2f}, recall {summary['recall']:.2f}")
  print(f"time: tokenizer {t_tok / 60:.1f} min, transformer {t_mg / 60:.1f} min, "
        f"total {summary['seconds_total'] / 60:.1f} min")
  print(f'samples: {sample_dir}/grid.png, {sample_dir}/samples.npz')


if __name__ == '__main__':
  app.run(main)

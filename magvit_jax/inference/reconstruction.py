"""How well a trained tokenizer reconstructs held-out data (library side of `evaluate` on a
tokenizer workdir).

  clips uint8 [N, T, H, W, 3] of the eval split -> encode -> tokens -> decode -> uint8 clips

and scores the reconstructions against their own inputs:

  eval/recon_psnr        mean per-clip PSNR in dB over all frames (uint8 pixels, peak 255)
  eval/codebook_usage    distinct tokens used / codebook size, over all N clips
  eval/dead_bits, eval/bit_usage_min, eval/bit_usage_max   (LFQ tokenizers)
  eval/rfvd              (network 'i3d') FVD between the I3D logits of the N inputs and of
                         their N reconstructions: the reconstruction FVD of the MAGVIT papers
  eval/digits_rfvd       (network 'digits') the same with the embedded digits feature network

The causal MAGVIT-v2 tokenizer is convolutional in time, so `num_frames` may differ from the
length it was trained on (1 + 4k frames); the 3D-VQ and VQGAN tokenizers take their own input
shape only. Images (a 2D tokenizer) are scored with PSNR and codebook usage only.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from magvit_jax import pretrained
from magvit_jax.metrics import frechet
from magvit_jax.metrics import image as image_metrics
from magvit_jax.models import tokenizers
from magvit_jax.quantizers import lfq

NETWORKS = ('i3d', 'digits', 'none')
# I3D's temporal strides (8 in all) and final 2-frame pooling need at least 9 frames.
I3D_MIN_FRAMES = 9


def load_eval_clips(
  config: Any, num: int, split: str | None = None, num_frames: int | None = None
) -> np.ndarray:
  """The first `num` examples (uint8 [N, (T,) H, W, 3]) of a tokenizer run's eval split.

  `num_frames` overrides the run's `data.num_frames` (eval clips are the first frames).
  """
  from magvit_jax.data import pipeline  # TF is imported only here.

  data = config.data.copy_and_resolve_references()
  if num_frames is not None:
    if not data.get('num_frames'):
      raise ValueError(
        f'--num_frames={num_frames} is for video tokenizers; this run reads images ({data.name!r})'
      )
    data.num_frames = int(num_frames)
  out, key = [], None
  for batch in pipeline.create_dataset(
    data, split=split or data.eval_split, batch_size=min(num, 64), train=False, drop_remainder=False
  ):
    key = key or ('video' if 'video' in batch else 'image')
    out.append(np.asarray(batch[key]))
    if sum(len(v) for v in out) >= num:
      break
  if not out:
    raise ValueError(f'no examples in split {split or data.eval_split} of {data.name}')
  return np.concatenate(out)[:num]


def reconstruct(
  loaded: pretrained.Loaded, pixels: np.ndarray, batch_size: int = 16
) -> tuple[np.ndarray, np.ndarray]:
  """(reconstructions uint8 like `pixels`, tokens int32 [N, *grid]) of uint8 `pixels`.

  One jitted encode+decode per batch; the last batch is padded to `batch_size` (static shapes).
  """
  pixels = np.asarray(pixels)
  if pixels.dtype != np.uint8 or pixels.ndim not in (4, 5) or pixels.shape[-1] != 3:
    raise ValueError(f'pixels must be uint8 [N, (T,) H, W, 3], got {pixels.dtype} {pixels.shape}')

  @jax.jit
  def fn(params, x):
    recon, aux = loaded.module.apply({'params': params}, tokenizers.to_float(x))
    return tokenizers.to_uint8(recon), aux['tokens']

  recons, tokens, t0 = [], [], time.perf_counter()
  for start in range(0, len(pixels), batch_size):
    chunk = pixels[start : start + batch_size]
    pad = batch_size - len(chunk)
    padded = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], np.uint8)]) if pad else chunk
    r, t = fn(loaded.params, padded)
    recons.append(np.asarray(r)[: len(chunk)])
    tokens.append(np.asarray(t)[: len(chunk)])
    done = start + len(chunk)
    print(
      f'[evaluate] reconstructed {done}/{len(pixels)}, {done / (time.perf_counter() - t0):.1f}/s',
      flush=True,
    )
  return np.concatenate(recons), np.concatenate(tokens)


def token_metrics(tokens: np.ndarray, model_config: Any) -> dict[str, float]:
  """Codebook usage over `tokens` int [...]; for LFQ also dead bits and per-bit usage range."""
  vocab = tokenizers.codebook_size(model_config)
  histogram = np.bincount(np.asarray(tokens).reshape(-1), minlength=vocab)
  out = {'codebook_usage': float(np.count_nonzero(histogram)) / vocab}
  if model_config.name == 'magvit2':
    usage = lfq.histogram_bit_usage(histogram, int(model_config.num_bits))
    out['dead_bits'] = float(lfq.count_dead_bits(usage))
    out['bit_usage_min'] = float(usage.min())
    out['bit_usage_max'] = float(usage.max())
  return out


def evaluate_reconstruction(
  workdir: str,
  num: int,
  network: str = 'i3d',
  weights: str | None = None,
  split: str | None = None,
  num_frames: int | None = None,
  batch_size: int = 16,
  cache_dir: str | None = None,
  protocol: dict | None = None,
  step: int | None = None,
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
  """Metrics of the tokenizer run in `workdir` on its first `num` eval examples (module doc).

  Returns (metrics 'eval/...' -> value, inputs uint8, reconstructions uint8). `protocol`, if
  given, is filled with how the FVD was computed (`evaluation.fvd_protocol`'s keys).
  """
  from magvit_jax import evaluation  # pylint: disable=g-import-not-at-top

  if network not in NETWORKS:
    raise ValueError(f'network={network!r}: expected one of {NETWORKS}')
  if num < 2:
    raise ValueError(f'--num_samples must be >= 2, got {num}')
  loaded = pretrained.load_tokenizer(workdir, step=step)
  frames = num_frames or loaded.config.data.get('num_frames')
  if network == 'i3d' and frames and frames < I3D_MIN_FRAMES:
    raise ValueError(
      f"the I3D FVD needs clips of >= {I3D_MIN_FRAMES} frames; this run's clips have "
      f'{frames} (data.num_frames): pass --num_frames=17 (the causal MAGVIT-v2 tokenizer '
      'takes any 1 + 4k frames) or --network=digits|none'
    )
  pixels = load_eval_clips(loaded.config, num, split, num_frames)
  print(f'[evaluate] tokenizer step {loaded.step}: {pixels.shape} from the eval split', flush=True)
  recons, tokens = reconstruct(loaded, pixels, batch_size)
  psnr = image_metrics.psnr(pixels.astype(np.float64), recons.astype(np.float64), 255.0)
  metrics = {'num_samples': float(len(pixels)), 'recon_psnr': float(np.mean(psnr))}
  metrics.update(token_metrics(tokens, loaded.config.model))
  is_video = pixels.ndim == 5
  if network != 'none' and not is_video:
    raise ValueError(f'network={network!r} scores videos; this tokenizer reads images')
  if network == 'i3d':
    from magvit_jax.metrics import i3d  # pylint: disable=g-import-not-at-top

    if len(pixels) < 4:
      raise ValueError(f'FVD needs at least 4 clips, got --num_samples={len(pixels)}')
    variables, source, _ = evaluation.load_fvd_weights(weights)
    bs = max(1, min(batch_size, 8))
    fn = lambda x: i3d.i3d_features(variables, x, bs)  # pylint: disable=unnecessary-lambda-assignment
    real = evaluation.featurize(fn, pixels, bs, 'i3d features of the inputs')[2]
    fake = evaluation.featurize(fn, recons, bs, 'i3d features of the reconstructions')[2]
    metrics['rfvd'] = frechet.frechet_distance_from_features(real, fake)
    if protocol is not None:
      split_name = split or loaded.config.data.eval_split
      data_config = {'image_size': pixels.shape[2], 'num_frames': pixels.shape[1]}
      protocol.update(
        evaluation.fvd_protocol(
          recons.shape,
          data_config,
          f'{loaded.config.data.name}/{split_name}: the same clips, not reconstructed',
          len(real),
          source,
        )
      )
      protocol['metric'] = 'rfvd (reconstruction FVD: inputs vs their reconstructions)'
  elif network == 'digits':
    from magvit_jax.metrics import digits_features as dfeat  # pylint: disable=g-import-not-at-top

    params = dfeat.load_or_train_digits_features(
      cache_dir or evaluation.default_cache_dir(), loaded.config.data.get('data_dir')
    )
    real = dfeat.digits_features(params, pixels)[0]
    fake = dfeat.digits_features(params, recons)[0]
    metrics['digits_rfvd'] = frechet.frechet_distance_from_features(real, fake)
  return {evaluation.PREFIX + k: float(v) for k, v in metrics.items()}, pixels, recons

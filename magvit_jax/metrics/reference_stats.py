"""Feature statistics of a real dataset split, computed once and cached.

FID/FVD compare generated samples against the Gaussian (mu, sigma) of a
network's features on real data. Featurizing a split is the slow part, so the
result is cached as an .npz in `cache_dir`, one file per
(dataset, split, image size, num_frames, network id). Each file records the
dataset fingerprint (TFDS builder version and number of examples of the split)
and the network id; a mismatch with the current ones recomputes it, so a
rebuilt dataset or a retrained network never reuses stale statistics.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from typing import Any, Callable

import numpy as np

from magvit_jax.metrics import frechet

FeatureFn = Callable[[np.ndarray], np.ndarray]

# Number of times statistics were (re)computed in this process (cache misses); for tests/logs.
compute_count = 0


def _cfg_get(config: Any, key: str, default: Any = None) -> Any:
  if hasattr(config, 'get'):
    return config.get(key, default)
  return getattr(config, key, default)


def dataset_fingerprint(
  name: str, split: str, data_dir: str | None = None, folder: str | None = None
) -> str:
  """'<builder version>:<number of examples of split>' of a prepared TFDS dataset; for a video
  folder (`data.name='video_folder'`) 'folder:<number of clips>:<hash of the clip paths>'."""
  from magvit_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  if name == pipeline.VIDEO_FOLDER:
    paths, _, _ = pipeline.scan_video_folder(folder, split)
    digest = hashlib.sha1('\n'.join(paths).encode()).hexdigest()[:16]
    return f'folder:{len(paths)}:{digest}'
  info = pipeline.get_builder(name, data_dir).info
  return f'{info.version}:{info.splits[split].num_examples}'


def cache_path(
  cache_dir: str, name: str, split: str, image_size: int, num_frames: int | None, network_id: str
) -> str:
  """The .npz file holding the statistics of one (dataset, split, size, frames, network)."""
  key = f'{name}_{split}_{image_size}px_{num_frames or 0}f_{network_id}'
  return os.path.join(cache_dir, re.sub(r'[^A-Za-z0-9_.\-]+', '-', key) + '.npz')


def _featurize(feature_fn: FeatureFn, data_config: dict, split: str, batch_size: int) -> np.ndarray:
  """feature_fn over the whole split, one pass in file order -> float [n, d]."""
  from magvit_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  features, done, t0 = [], 0, time.perf_counter()
  for batch in pipeline.create_dataset(
    data_config,
    split=split,
    batch_size=batch_size,
    train=False,
    drop_remainder=False,
    process_index=0,
    process_count=1,
  ):
    x = batch['video'] if 'video' in batch else batch['image']
    features.append(np.asarray(feature_fn(x)))
    done += len(x)
    print(
      f'[reference] {data_config["name"]}/{split}: featurized {done} examples, '
      f'{done / (time.perf_counter() - t0):.1f}/s',
      flush=True,
    )
  return np.concatenate(features)


def reference_statistics(
  name: str,
  feature_fn: FeatureFn,
  data_config: Any,
  split: str,
  cache_dir: str,
  network_id: str,
  batch_size: int = 256,
  return_features: bool = False,
):
  """(mu, sigma) of `feature_fn` over a dataset split, cached in `cache_dir`.

  Args:
    name: TFDS dataset name (overrides `data_config.name`).
    feature_fn: uint8 [B, H, W, 3] images (or [B, T, H, W, 3] videos) ->
      float [B, d] features.
    data_config: mapping/ConfigDict with `image_size`, optional `data_dir`,
      `num_frames` (videos), as for `pipeline.create_dataset`.
    split: TFDS split, e.g. 'test'.
    cache_dir: directory of the cached .npz files (created if needed).
    network_id: identifies the network and its weights; part of the cache key.
    batch_size: examples per `feature_fn` call.
    return_features: also return (and cache) the per-example features
      float32 [n, d] (e.g. for precision/recall); only for small splits.

  Returns:
    (mu float64 [d], sigma float64 [d, d]), or (mu, sigma, features) with
    `return_features`.
  """
  global compute_count
  image_size = int(_cfg_get(data_config, 'image_size'))
  num_frames = _cfg_get(data_config, 'num_frames', None)
  data_dir = _cfg_get(data_config, 'data_dir', None)
  folder = _cfg_get(data_config, 'folder', None)
  video_key = _cfg_get(data_config, 'video_key', None)
  fingerprint = dataset_fingerprint(name, split, data_dir, folder)
  path = cache_path(cache_dir, name, split, image_size, num_frames, network_id)
  if os.path.exists(path):
    with np.load(path) as f:
      valid = (
        str(f['fingerprint']) == fingerprint
        and str(f['network_id']) == network_id
        and (not return_features or 'features' in f.files)
      )
      if valid:
        if return_features:
          return f['mu'], f['sigma'], f['features']
        return f['mu'], f['sigma']
    print(f'[reference] {path} is stale (dataset or network changed): recomputing', flush=True)

  config = {'name': name, 'data_dir': data_dir, 'image_size': image_size}
  if folder:
    config['folder'] = folder
  if video_key:
    config['video_key'] = video_key
  if num_frames is not None:
    config['num_frames'] = int(num_frames)
  features = _featurize(feature_fn, config, split, batch_size)
  mu, sigma = frechet.feature_statistics(features)
  compute_count += 1
  os.makedirs(cache_dir, exist_ok=True)
  arrays = dict(
    mu=mu, sigma=sigma, fingerprint=np.asarray(fingerprint), network_id=np.asarray(network_id)
  )
  if return_features:
    arrays['features'] = np.asarray(features, np.float32)
  tmp = path + '.tmp.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, path)
  if return_features:
    return mu, sigma, arrays['features']
  return mu, sigma

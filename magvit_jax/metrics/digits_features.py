"""A small feature network for the embedded digits: offline "digits FID".

InceptionV3 / I3D weights cannot be downloaded on a fresh machine, so the
embedded digits datasets are scored with a tiny CNN classifier trained here, on
the `magvit_digits` *train* split, in a few seconds on CPU:

  uint8 [N, 32, 32, 3] -> float in [-1, 1] -> 2x2 average pool (the digits are
  8x8 originals upsampled, so 16x16 keeps all their detail) -> 3 x (3x3 conv,
  ReLU, 2x2 average pool): 16, 32, 64 channels -> dense 64 + ReLU (the feature)
  -> dense 10 (logits).

The 64-d penultimate activation plays the role of Inception's pool features
(Frechet distance, precision/recall) and the softmax of the logits that of
Inception's predictions (Inception Score, classifier accuracy). Videos
([N, T, 32, 32, 3]) are scored frame by frame and features/probabilities are
averaged over frames.

Numbers from this network are only comparable with numbers from the same
network (same `VERSION` and training settings), never with published FIDs.
"""

from __future__ import annotations

import os
import time
from typing import Any, Tuple

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from magvit_jax.metrics.batching import apply_in_batches

VERSION = 'v1'
IMAGE_SIZE = 32
FEATURE_DIM = 64
NUM_CLASSES = 10
DEFAULT_STEPS = 300
BATCH_SIZE = 64
LEARNING_RATE = 3e-3

Params = Any


class DigitsFeatureNet(nn.Module):
  """Tiny CNN: float32 [b, 32, 32, 3] in [-1, 1] -> (features [b, 64], logits [b, 10])."""

  @nn.compact
  def __call__(self, x: jax.Array) -> Tuple[jax.Array, jax.Array]:
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))  # [b, 16, 16, 3]
    for i, channels in enumerate((16, 32, 64)):
      x = nn.relu(nn.Conv(channels, (3, 3), name=f'conv{i}')(x))
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))  # 8, 4, 2
    x = x.reshape((x.shape[0], -1))  # [b, 2 * 2 * 64]
    features = nn.relu(nn.Dense(FEATURE_DIM, name='feature')(x))
    logits = nn.Dense(NUM_CLASSES, name='logits')(features)
    return features, logits


_NET = DigitsFeatureNet()


def _to_float(images: jax.Array) -> jax.Array:
  """uint8 [b, 32, 32, 3] -> float32 in [-1, 1]."""
  return images.astype(jnp.float32) / 127.5 - 1.0


def load_digits_split(split: str, data_dir: str | None = None) -> Tuple[np.ndarray, np.ndarray]:
  """The whole `magvit_digits` split as numpy: (images uint8 [n, 32, 32, 3], labels int32 [n])."""
  from magvit_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  config = {'name': 'magvit_digits', 'data_dir': data_dir, 'image_size': IMAGE_SIZE}
  images, labels = [], []
  for batch in pipeline.create_dataset(
    config,
    split=split,
    batch_size=512,
    train=False,
    drop_remainder=False,
    process_index=0,
    process_count=1,
  ):
    images.append(batch['image'])
    labels.append(batch['label'])
  return np.concatenate(images), np.concatenate(labels).astype(np.int32)


def train_digits_features(
  data_dir: str | None = None, steps: int = DEFAULT_STEPS, seed: int = 0, verbose: bool = False
) -> Params:
  """Trains the feature network on the `magvit_digits` train split.

  Adam (lr 3e-3), batch 64 drawn with replacement from the 1497 train images,
  `steps` steps, cross-entropy; no augmentation. About 300 steps reach ~95%
  test accuracy. Deterministic for a given `seed` on a given platform.

  Args:
    data_dir: TFDS data_dir (None -> `pipeline.default_data_dir()`).
    steps: optimizer steps.
    seed: initialisation and batch-order seed.
    verbose: print a line with the train loss/time when done.

  Returns:
    The network's params (a pytree of float32 arrays).
  """
  images, labels = load_digits_split('train', data_dir)
  rng = np.random.default_rng(seed)
  params = _NET.init(
    jax.random.PRNGKey(seed), jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32)
  )['params']
  tx = optax.adam(LEARNING_RATE)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      _, logits = _NET.apply({'params': p}, _to_float(x))
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  t0 = time.perf_counter()
  loss = jnp.nan
  for _ in range(steps):
    idx = rng.integers(0, len(images), BATCH_SIZE)
    params, opt_state, loss = step(
      params, opt_state, jnp.asarray(images[idx]), jnp.asarray(labels[idx])
    )
  if verbose:
    print(
      f'[digits_features] trained {steps} steps in {time.perf_counter() - t0:.1f}s, '
      f'last loss {float(loss):.3f}',
      flush=True,
    )
  return jax.device_get(params)


def network_id(steps: int = DEFAULT_STEPS, seed: int = 0) -> str:
  """Identifier of the trained network (cache key of its params and of reference statistics)."""
  return f'digits_features-{VERSION}-steps{steps}-bs{BATCH_SIZE}-lr{LEARNING_RATE:g}-seed{seed}'


def load_or_train_digits_features(
  cache_dir: str, data_dir: str | None = None, steps: int = DEFAULT_STEPS, seed: int = 0
) -> Params:
  """Params from `<cache_dir>/<network_id>.npz`, training and writing them on a miss.

  The file name holds `VERSION` and the training settings, so changing either
  trains a new network instead of reusing a stale one.
  """
  path = os.path.join(cache_dir, network_id(steps, seed) + '.npz')
  if os.path.exists(path):
    with np.load(path) as f:
      flat = {tuple(k.split('/')): jnp.asarray(f[k]) for k in f.files}
    return traverse_util.unflatten_dict(flat)
  print(
    f'[digits_features] training the digits feature network ({steps} steps), cached in {path}',
    flush=True,
  )
  params = train_digits_features(data_dir, steps, seed, verbose=True)
  os.makedirs(cache_dir, exist_ok=True)
  flat = {'/'.join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
  tmp = path + '.tmp.npz'
  np.savez(tmp, **flat)
  os.replace(tmp, path)
  return params


@jax.jit
def _apply(params: Params, images: jax.Array) -> Tuple[jax.Array, jax.Array]:
  features, logits = _NET.apply({'params': params}, _to_float(images))
  return features, jax.nn.softmax(logits)


def digits_features(
  params: Params, images: np.ndarray, batch_size: int = 500
) -> Tuple[np.ndarray, np.ndarray]:
  """Features and class probabilities of digit images or videos.

  Args:
    params: from `train_digits_features` / `load_or_train_digits_features`.
    images: uint8 [N, 32, 32, 3] images or [N, T, 32, 32, 3] videos (other
      square sizes are resized bilinearly to 32x32 first).
    batch_size: frames per jitted call (the last call is padded, so at most two
      shapes compile).

  Returns:
    (features float32 [N, 64], probs float32 [N, 10]); for videos both are the
    mean over the T frames.

  Raises:
    ValueError: if `images` is not [N, (T,) S, S, 3].
  """
  images = np.asarray(images)
  if images.ndim not in (4, 5) or images.shape[-1] != 3 or images.shape[-2] != images.shape[-3]:
    raise ValueError(
      f'images must be uint8 [N, S, S, 3] or [N, T, S, S, 3] (S = 32), got {images.shape}'
    )
  n = images.shape[0]
  frames = images.reshape((-1,) + images.shape[-3:])
  if frames.shape[1] != IMAGE_SIZE:
    resized = jax.image.resize(
      jnp.asarray(frames, jnp.float32), (frames.shape[0], IMAGE_SIZE, IMAGE_SIZE, 3), 'bilinear'
    )
    frames = np.asarray(jnp.clip(jnp.round(resized), 0, 255)).astype(np.uint8)
  feats, probs = apply_in_batches(lambda x: _apply(params, x), frames, batch_size)
  feats = feats.reshape(n, -1, FEATURE_DIM).mean(axis=1)
  probs = probs.reshape(n, -1, NUM_CLASSES).mean(axis=1)
  return feats.astype(np.float32), probs.astype(np.float32)

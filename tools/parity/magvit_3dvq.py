"""Parity fixture of the MAGVIT 3D-VQ tokenizer: tests/data/magvit_3dvq_parity.npz.

  python tools/make_parity_fixtures.py --magvit=/path/to/google-research/magvit --only=magvit_3dvq

Runs the official code (google-research/magvit, videogvt/models/vqvae.py `VQVAE` with
architecture '3dcnn', videogvt/models/enc_dec_3dcnn.py; on sys.path, nothing of it is copied
here) at a small size with random weights from a fixed seed: `encode_to_indices` of fixed
videos in [0, 1] (the official range) and `decode_from_indices` of those codes. The .npz holds:

  params/<official path>   every official param, '/'-joined flax names; stored as float16,
                           but every value is a float16 number and the official code ran on
                           exactly these values in float32
  config/<key>             the small tokenizer's sizes (our config.model names), num_groups,
                           num_frames, image_size
  videos                   [2, 8, 16, 16, 3] in [0, 1] (multiples of 1/256; float16, exact)
  codes                    [2, 4, 4, 4] int32, the official tokens
  reconstructions          [2, 8, 16, 16, 3] float32, the official decoder output ([0, 1] range)
  official_shapes/<name>   'params/<path>:<d0>,<d1>,...' of the official 3D-VQ of the official
                           configs (jax.eval_shape of the official code, no weights): ucf101_B,
                           ucf101_L (vqgan3d_ucf101_config B / L, 16 x 128 x 128) and bair_B,
                           bair_L (vqgan3d_bair_config, 16 x 64 x 64)
  min_code_margin          smallest gap between the best and second-best code distance

Changes to the official code while it runs, both undone on exit: flax GroupNorm's group count
(the official code uses its default, 32) is set to config/num_groups, since the small widths
(4, 8) are not multiples of 32; and `videogvt.train_lib.pretrained_model_utils` (imported by
the losses module for the perceptual loss only; it needs TensorFlow) is an empty stub module.
The official shapes are taken without the first change.
"""

from __future__ import annotations

import contextlib
import functools
import pathlib
import sys
import types
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

NAME = 'magvit_3dvq_parity.npz'
SEED = 13
# Three levels (temporal downsampling on, then off) and two residual blocks per level, so the
# fixture pins the order of the official blocks and upsampling convs.
SMALL = dict(
  filters=4,
  channel_multipliers=(1, 2, 2),
  num_res_blocks=2,
  temporal_downsample=(True, False),
  embedding_dim=8,
  codebook_size=32,
)
NUM_GROUPS = 2
NUM_FRAMES = 8
IMAGE_SIZE = 16
BATCH = 2
# name -> (official config module, config string, input frames, image size).
OFFICIAL_CONFIGS = {
  'ucf101_B': ('vqgan3d_ucf101_config', 'B', 16, 128),
  'ucf101_L': ('vqgan3d_ucf101_config', 'L', 16, 128),
  'bair_B': ('vqgan3d_bair_config', 'B', 16, 64),
  'bair_L': ('vqgan3d_bair_config', 'L', 16, 64),
}
_STUB = 'videogvt.train_lib.pretrained_model_utils'


@contextlib.contextmanager
def _official_modules() -> Iterator[Any]:
  """Imports the official `vqvae` module (with the TensorFlow-only import stubbed)."""
  saved = sys.modules.get(_STUB)
  stubbed = saved is None
  if stubbed:
    sys.modules[_STUB] = types.ModuleType(_STUB)
  try:
    from videogvt.models import vqvae  # pylint: disable=g-import-not-at-top

    yield vqvae
  finally:
    if stubbed:
      sys.modules.pop(_STUB, None)


@contextlib.contextmanager
def _group_norm_groups(num_groups: int) -> Iterator[None]:
  """The official GroupNorm layers with `num_groups` groups (restored on exit)."""
  from videogvt.models import model_utils  # pylint: disable=g-import-not-at-top

  original = model_utils.get_norm_layer

  def get_norm_layer(norm_type, dtype):
    norm_fn = original(norm_type, dtype)
    return functools.partial(norm_fn, num_groups=num_groups) if norm_type == 'GN' else norm_fn

  model_utils.get_norm_layer = get_norm_layer
  try:
    yield
  finally:
    model_utils.get_norm_layer = original


def _official_config(module: str = 'vqgan3d_ucf101_config', arg: str = 'B', **vqvae: Any) -> Any:
  import importlib  # pylint: disable=g-import-not-at-top

  config = importlib.import_module(f'videogvt.configs.{module}').get_config(arg)
  mapping = {'num_res_blocks': ('num_enc_res_blocks', 'num_dec_res_blocks')}
  for key, value in vqvae.items():
    for name in mapping.get(key, (key,)):
      config.vqvae[name] = tuple(value) if isinstance(value, (tuple, list)) else value
  return config


def _roundtrip(module: nn.Module, videos: jax.Array) -> jax.Array:
  return module.decode_from_indices(module.encode_to_indices(videos))


def official_shapes(vqvae: Any) -> dict[str, list[str]]:
  """name -> 'params/<path>:<dims>' of the official 3D-VQ of each OFFICIAL_CONFIGS entry."""
  out = {}
  for name, (module, arg, frames, size) in OFFICIAL_CONFIGS.items():
    model = vqvae.VQVAE(config=_official_config(module, arg), dtype=jnp.float32)
    videos = jax.ShapeDtypeStruct((1, frames, size, size, 3), jnp.float32)
    shapes = jax.eval_shape(
      lambda x, model=model: model.init(jax.random.PRNGKey(0), x, method=_roundtrip), videos
    )
    flat = traverse_util.flatten_dict(shapes, sep='/')
    out[name] = sorted(f'{k}:{",".join(map(str, v.shape))}' for k, v in flat.items())
  return out


def _random_params(shapes: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Every leaf random (GroupNorm scales around 1, biases small, kernels fan-in scaled).

  Rounded to float16 numbers (kept as float32), so the fixture can store them in float16.
  """
  out = {}
  for path, leaf in sorted(shapes.items()):
    shape = tuple(leaf.shape)
    if path.endswith('/scale'):
      value = 1.0 + 0.2 * rng.standard_normal(shape)
    elif path.endswith('/bias'):
      value = 0.1 * rng.standard_normal(shape)
    else:
      value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
    out[path] = value.astype(np.float16).astype(np.float32)
  return out


def _videos(rng: np.random.Generator) -> np.ndarray:
  """Smooth moving patterns plus noise, in [0, 1], multiples of 1/256 (exact in float16)."""
  t, y, x = np.meshgrid(
    np.arange(NUM_FRAMES) / NUM_FRAMES,
    np.linspace(0, 1, IMAGE_SIZE),
    np.linspace(0, 1, IMAGE_SIZE),
    indexing='ij',
  )
  phase = rng.uniform(0, 2 * np.pi, (BATCH, 1, 1, 1, 3))
  speed = rng.uniform(-4, 4, (BATCH, 1, 1, 1, 1))
  wave = 3 * x[None, ..., None] + 2 * y[None, ..., None] + speed * t[None, ..., None]
  smooth = 0.5 + 0.35 * np.sin(wave + phase)
  noisy = smooth + 0.1 * rng.standard_normal(smooth.shape)
  return (np.round(np.clip(noisy, 0, 1) * 256) / 256).astype(np.float32)


def make(out_dir: pathlib.Path) -> pathlib.Path:
  rng = np.random.default_rng(SEED)
  videos = _videos(rng)
  with _official_modules() as vqvae:
    shapes_official = official_shapes(vqvae)
    config = _official_config(**SMALL)
    model = vqvae.VQVAE(config=config, dtype=jnp.float32)
    with _group_norm_groups(NUM_GROUPS):
      shapes = jax.eval_shape(
        lambda x: model.init(jax.random.PRNGKey(0), x, method=_roundtrip), videos
      )
      params = _random_params(traverse_util.flatten_dict(shapes, sep='/'), rng)
      # A codebook of encoder outputs (plus noise), so the codes spread over the codebook.
      unflat = traverse_util.unflatten_dict
      variables = unflat({tuple(k.split('/')): v for k, v in params.items()})
      latents = np.asarray(
        model.apply(variables, videos, method=lambda m, x: m.encoder(x)), np.float64
      ).reshape(-1, SMALL['embedding_dim'])
      picks = rng.choice(len(latents), SMALL['codebook_size'], replace=False)
      codebook = latents[picks] + 0.05 * latents.std() * rng.standard_normal(
        (SMALL['codebook_size'], SMALL['embedding_dim'])
      )
      params['params/quantizer/codebook'] = codebook.astype(np.float16).astype(np.float32)
      variables = unflat({tuple(k.split('/')): v for k, v in params.items()})
      codes = np.asarray(model.apply(variables, videos, method=model.encode_to_indices), np.int32)
      recon = np.asarray(
        model.apply(variables, codes, method=model.decode_from_indices), np.float32
      )

  distances = ((latents[:, None, :] - params['params/quantizer/codebook'][None]) ** 2).sum(-1)
  best2 = np.sort(distances, axis=1)[:, :2]
  margin = float((best2[:, 1] - best2[:, 0]).min())
  if not np.array_equal(np.argmin(distances, axis=1), codes.reshape(-1)):
    raise AssertionError('official codes differ from a float64 nearest-code search')

  fields = {
    **{k: v.astype(np.float16) for k, v in params.items()},
    **{f'config/{k}': np.asarray(v) for k, v in SMALL.items()},
    'config/num_groups': np.asarray(NUM_GROUPS),
    'config/num_frames': np.asarray(NUM_FRAMES),
    'config/image_size': np.asarray(IMAGE_SIZE),
    'videos': videos.astype(np.float16),
    'codes': codes,
    'reconstructions': recon,
    **{f'official_shapes/{k}': np.asarray(v) for k, v in shapes_official.items()},
    'min_code_margin': np.asarray(margin, np.float32),
  }
  path = pathlib.Path(out_dir) / NAME
  np.savez_compressed(path, **fields)
  print(
    f'{path.name}: {len(params)} params ({sum(v.size for v in params.values())} values), '
    f'{len(np.unique(codes))} distinct codes, min code margin {margin:.3g}, '
    f'{path.stat().st_size} bytes'
  )
  return path

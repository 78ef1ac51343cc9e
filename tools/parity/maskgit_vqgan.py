"""Parity fixture of the MaskGIT VQGAN tokenizer: tests/data/maskgit_vqgan_parity.npz.

  PYTHONPATH=/path/to/maskgit python tools/make_parity_fixtures.py --maskgit=/path/to/maskgit \
    --only=maskgit_vqgan

Runs the official code (google-research/maskgit, maskgit/nets/vqgan_tokenizer.py; on sys.path,
nothing of it is copied here) at a small size with random weights from a fixed seed:
`encode_to_indices` of fixed images in [0, 1] (the official range) and `decode_from_indices`
of those codes. The .npz holds:

  params/<official path>   every official param (float32), '/'-joined flax names
  config/<key>             the small tokenizer's vqvae config values (and num_groups, image_size)
  images                   [2, 16, 16, 3] float32 in [0, 1] (multiples of 1/256)
  codes                    [2, 8, 8] int32, the official tokens
  reconstructions          [2, 16, 16, 3] float32, the official decoder output ([0, 1] range)
  official256_shapes       'params/<path>:<d0>,<d1>,...' of the released 256x256 tokenizer
                           (jax.eval_shape of the official code at its vqgan_config)
  min_code_margin          smallest gap between the best and second-best code distance (the
                           codes are robust to float rounding when it is not tiny)

The only change to the official code while it runs: flax GroupNorm's group count (the official
code uses its default, 32) is set to config/num_groups, since the small widths (8, 16) are not
multiples of 32. The 256 shapes are taken without that change.
"""

from __future__ import annotations

import contextlib
import functools
import pathlib
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

NAME = 'maskgit_vqgan_parity.npz'
SEED = 13
SMALL = dict(
  filters=8, channel_multipliers=(1, 2), num_res_blocks=2, embedding_dim=8, codebook_size=32
)
NUM_GROUPS = 4
IMAGE_SIZE = 16
BATCH = 2


@contextlib.contextmanager
def _group_norm_groups(num_groups: int) -> Iterator[None]:
  """The official GroupNorm layers with `num_groups` groups (restored on exit)."""
  from maskgit.nets import layers  # pylint: disable=g-import-not-at-top

  original = layers.get_norm_layer

  def get_norm_layer(train, dtype, norm_type='BN'):
    norm_fn = original(train, dtype, norm_type)
    return functools.partial(norm_fn, num_groups=num_groups) if norm_type == 'GN' else norm_fn

  layers.get_norm_layer = get_norm_layer
  try:
    yield
  finally:
    layers.get_norm_layer = original


def _official_config(**vqvae: Any) -> Any:
  from maskgit.configs import vqgan_config  # pylint: disable=g-import-not-at-top

  config = vqgan_config.get_config()
  for key, value in vqvae.items():
    config.vqvae[key] = list(value) if isinstance(value, tuple) else value
  return config


def _roundtrip(module: nn.Module, images: jax.Array) -> jax.Array:
  return module.decode_from_indices(module.encode_to_indices(images))


def _tokenizer(config: Any) -> nn.Module:
  from maskgit.nets import vqgan_tokenizer  # pylint: disable=g-import-not-at-top

  return vqgan_tokenizer.VQVAE(config=config, train=False, dtype=jnp.float32)


def official256_shapes() -> list[str]:
  """'params/<path>:<dims>' of the released 256x256 tokenizer (official config, no weights)."""
  model = _tokenizer(_official_config())
  images = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, method=_roundtrip), images)
  flat = traverse_util.flatten_dict(shapes, sep='/')
  return sorted(f'{k}:{",".join(map(str, v.shape))}' for k, v in flat.items())


def _random_params(shapes: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Every leaf random (GroupNorm scales around 1, biases small, kernels fan-in scaled)."""
  out = {}
  for path, leaf in sorted(shapes.items()):
    shape = tuple(leaf.shape)
    if path.endswith('/scale'):
      value = 1.0 + 0.2 * rng.standard_normal(shape)
    elif path.endswith('/bias'):
      value = 0.1 * rng.standard_normal(shape)
    else:
      value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
    out[path] = value.astype(np.float32)
  return out


def make(out_dir: pathlib.Path) -> pathlib.Path:
  rng = np.random.default_rng(SEED)
  config = _official_config(**SMALL)
  model = _tokenizer(config)
  # Smooth images plus noise, in [0, 1] and exactly representable (multiples of 1/256), so that
  # the [-1, 1] <-> [0, 1] maps of our model are exact on them.
  yy, xx = np.meshgrid(np.linspace(0, 1, IMAGE_SIZE), np.linspace(0, 1, IMAGE_SIZE), indexing='ij')
  phase = rng.uniform(0, 2 * np.pi, (BATCH, 1, 1, 3))
  smooth = 0.5 + 0.35 * np.sin(3 * xx[None, ..., None] + 2 * yy[None, ..., None] + phase)
  noisy = smooth + 0.1 * rng.standard_normal(smooth.shape)
  images = (np.round(np.clip(noisy, 0, 1) * 256) / 256).astype(np.float32)

  with _group_norm_groups(NUM_GROUPS):
    shapes = jax.eval_shape(
      lambda x: model.init(jax.random.PRNGKey(0), x, method=_roundtrip), images
    )
    params = _random_params(traverse_util.flatten_dict(shapes, sep='/'), rng)
    # A codebook of encoder outputs (plus noise), so the codes spread over the codebook.
    variables = traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in params.items()})
    latents = np.asarray(
      model.apply(variables, images, method=lambda m, x: m.encoder(x)), np.float64
    ).reshape(-1, SMALL['embedding_dim'])
    picks = rng.choice(len(latents), SMALL['codebook_size'], replace=False)
    codebook = latents[picks] + 0.05 * latents.std() * rng.standard_normal(
      (SMALL['codebook_size'], SMALL['embedding_dim'])
    )
    params['params/quantizer/codebook'] = codebook.astype(np.float32)
    variables = traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in params.items()})
    codes = np.asarray(model.apply(variables, images, method=model.encode_to_indices), np.int32)
    recon = np.asarray(model.apply(variables, codes, method=model.decode_from_indices), np.float32)

  distances = ((latents[:, None, :] - params['params/quantizer/codebook'][None]) ** 2).sum(-1)
  best2 = np.sort(distances, axis=1)[:, :2]
  margin = float((best2[:, 1] - best2[:, 0]).min())
  if not np.array_equal(np.argmin(distances, axis=1), codes.reshape(-1)):
    raise AssertionError('official codes differ from a float64 nearest-code search')

  fields = {
    **params,
    **{f'config/{k}': np.asarray(v) for k, v in SMALL.items()},
    'config/num_groups': np.asarray(NUM_GROUPS),
    'config/image_size': np.asarray(IMAGE_SIZE),
    'images': images,
    'codes': codes,
    'reconstructions': recon,
    'official256_shapes': np.asarray(official256_shapes()),
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

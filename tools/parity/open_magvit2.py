"""Parity fixture of the Open-MAGVIT2 image tokenizer: tests/data/open_magvit2_parity.npz.

  /path/to/torch/python tools/make_parity_fixtures.py --open_magvit2=/path/to/Open-MAGVIT2 \
    --only=open_magvit2

Runs the official PyTorch code (github.com/TencentARC/Open-MAGVIT2, its checkout on sys.path,
nothing of it copied here; needs torch, numpy and einops, not jax):
`src/Open_MAGVIT2/modules/diffusionmodules/improved_model.py` (Encoder, Decoder) and
`src/Open_MAGVIT2/modules/vqvae/lookup_free_quantize.py` (LFQ) at a small size, in eval mode,
with random weights from a fixed seed (GroupNorm affine params and biases random too), on
fixed images in [-1, 1] (the official range). The .npz holds:

  sd/<official key>        every encoder./decoder. tensor of the state dict (float32, PyTorch
                           layouts), keys as in the official checkpoints' 'state_dict'
  config/<key>             ch, ch_mult, num_res_blocks, z_channels, codebook_size, num_groups,
                           image_size
  images                   [2, 16, 16, 3] float32 in [-1, 1] (multiples of 1/128), NHWC
  latents                  [2, 4, 4, 6] float32, the official encoder output (NHWC)
  codes                    [2, 4, 4] int32, the official LFQ indices
  reconstructions          [2, 16, 16, 3] float32, decoder(quantizer(encoder(images))), NHWC
  code_reconstructions     [2, 16, 16, 3] float32, decoder of the codes' exact +-1 vectors
  official256_shapes       '<key>:<d0>,<d1>,...' of the released 256x256 tokenizer's
                           encoder./decoder. tensors (built on torch's meta device, no weights)
  min_abs_latent           smallest |latent| (the codes are robust to float rounding when it
                           is not tiny)

The only change to the official code while it runs: GroupNorm's group count (hard-coded 32
there) is config/num_groups, since the small widths (8, 16) are not multiples of 32. The 256
shapes are taken without that change.
"""

from __future__ import annotations

import contextlib
import importlib
import pathlib
import types
from typing import Iterator

import numpy as np

NAME = 'open_magvit2_parity.npz'
SEED = 13
SMALL = dict(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=6)
NUM_GROUPS = 4
IMAGE_SIZE = 16
BATCH = 2
# The released 256x256 tokenizer (configs/Open-MAGVIT2/gpu/imagenet_lfqgan_256_L.yaml).
OFFICIAL256 = dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=4, z_channels=18)
MODEL = 'src.Open_MAGVIT2.modules.diffusionmodules.improved_model'
QUANTIZER = 'src.Open_MAGVIT2.modules.vqvae.lookup_free_quantize'


def _ddconfig(**kw) -> dict:
  kw = dict(kw, ch_mult=list(kw['ch_mult']))
  return dict(double_z=False, resolution=IMAGE_SIZE, in_channels=3, out_ch=3, **kw)


@contextlib.contextmanager
def _group_norm_groups(module: types.ModuleType, num_groups: int) -> Iterator[None]:
  """`module`'s GroupNorm layers with `num_groups` groups (its `nn` restored on exit)."""
  import torch  # pylint: disable=g-import-not-at-top

  original = module.nn

  class GroupNorm(torch.nn.GroupNorm):
    def __init__(self, *args, **kwargs):
      kwargs.pop('num_groups', None)
      if 'num_channels' not in kwargs:
        args, kwargs['num_channels'] = args[2:], args[1]
      super().__init__(num_groups, *args, **kwargs)

  shim = types.SimpleNamespace(**{k: getattr(torch.nn, k) for k in dir(torch.nn)})
  shim.GroupNorm = GroupNorm
  module.nn = shim
  try:
    yield
  finally:
    module.nn = original


def official256_shapes() -> list[str]:
  """'<key>:<dims>' of the released 256x256 tokenizer's encoder and decoder (no weights)."""
  import torch  # pylint: disable=g-import-not-at-top

  model = importlib.import_module(MODEL)
  out = []
  with torch.device('meta'):
    for prefix, cls in (('encoder', model.Encoder), ('decoder', model.Decoder)):
      net = cls(**_ddconfig(**OFFICIAL256))
      for k, v in net.state_dict().items():
        out.append(f'{prefix}.{k}:{",".join(map(str, v.shape))}')
  return sorted(out)


def _randomize(net, rng: np.random.Generator) -> None:
  """Every parameter random: norms' scales around 1, biases small, weights fan-in scaled;
  the adaptive norms' gamma biases around 1 (their output is a scale)."""
  import torch  # pylint: disable=g-import-not-at-top

  with torch.no_grad():
    for name, p in net.named_parameters():
      shape = tuple(p.shape)
      leaf = name.rsplit('.', 1)[-1]
      is_norm = 'norm' in name.rsplit('.', 2)[-2]
      if leaf == 'weight' and is_norm:
        value = 1.0 + 0.2 * rng.standard_normal(shape)
      elif leaf == 'bias' and '.gamma.' in name:
        value = 1.0 + 0.1 * rng.standard_normal(shape)
      elif leaf == 'bias':
        value = 0.1 * rng.standard_normal(shape)
      else:
        value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
      p.copy_(torch.from_numpy(value.astype(np.float32)))


def make(out_dir: pathlib.Path) -> pathlib.Path:
  import torch  # pylint: disable=g-import-not-at-top

  torch.use_deterministic_algorithms(True)
  model = importlib.import_module(MODEL)
  lfq = importlib.import_module(QUANTIZER)
  rng = np.random.default_rng(SEED)
  # Smooth images plus noise in [-1, 1], multiples of 1/128 (exact in float32).
  yy, xx = np.meshgrid(np.linspace(0, 1, IMAGE_SIZE), np.linspace(0, 1, IMAGE_SIZE), indexing='ij')
  phase = rng.uniform(0, 2 * np.pi, (BATCH, 1, 1, 3))
  smooth = 0.7 * np.sin(3 * xx[None, ..., None] + 2 * yy[None, ..., None] + phase)
  noisy = smooth + 0.2 * rng.standard_normal(smooth.shape)
  images = (np.round(np.clip(noisy, -1, 1) * 128) / 128).astype(np.float32)

  codebook_size = 2 ** SMALL['z_channels']
  with _group_norm_groups(model, NUM_GROUPS):
    encoder = model.Encoder(**_ddconfig(**SMALL)).eval()
    decoder = model.Decoder(**_ddconfig(**SMALL)).eval()
  quantizer = lfq.LFQ(dim=SMALL['z_channels'], codebook_size=codebook_size).eval()
  _randomize(encoder, rng)
  _randomize(decoder, rng)

  with torch.no_grad():
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    h = encoder(x)
    quant, _, indices = quantizer(h)
    recon = decoder(quant)
    exact = torch.where(h > 0, 1.0, -1.0)
    code_recon = decoder(exact)
  latents = h.permute(0, 2, 3, 1).numpy().astype(np.float32)
  side = IMAGE_SIZE // 2 ** (len(SMALL['ch_mult']) - 1)
  codes = indices.numpy().astype(np.int32).reshape(BATCH, side, side)
  bits = (latents > 0).astype(np.int64) << np.arange(SMALL['z_channels'])
  if not np.array_equal(bits.sum(-1), codes):
    raise AssertionError('official codes differ from sum_i 2^i [latent_i > 0]')

  state = {f'sd/encoder.{k}': v.numpy() for k, v in encoder.state_dict().items()}
  state.update({f'sd/decoder.{k}': v.numpy() for k, v in decoder.state_dict().items()})
  margin = float(np.abs(latents).min())
  fields = {
    **{k: v.astype(np.float32) for k, v in state.items()},
    **{f'config/{k}': np.asarray(v) for k, v in SMALL.items()},
    'config/codebook_size': np.asarray(codebook_size),
    'config/num_groups': np.asarray(NUM_GROUPS),
    'config/image_size': np.asarray(IMAGE_SIZE),
    'images': images,
    'latents': latents,
    'codes': codes,
    'reconstructions': recon.permute(0, 2, 3, 1).numpy().astype(np.float32),
    'code_reconstructions': code_recon.permute(0, 2, 3, 1).numpy().astype(np.float32),
    'official256_shapes': np.asarray(official256_shapes()),
    'min_abs_latent': np.asarray(margin, np.float32),
  }
  path = pathlib.Path(out_dir) / NAME
  np.savez_compressed(path, **fields)
  print(
    f'{path.name}: {len(state)} tensors ({sum(v.size for v in state.values())} values), '
    f'{len(np.unique(codes))} distinct codes of {codes.size}, min |latent| {margin:.3g}, '
    f'{path.stat().st_size} bytes'
  )
  return path

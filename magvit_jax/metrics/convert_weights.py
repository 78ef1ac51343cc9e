r"""Converts public PyTorch weights of the metric networks to magvit_jax .npz files.

  python -m magvit_jax.metrics.convert_weights inception \
      pt_inception-2015-12-05-6726825d.pth inception_fid.npz

Input: pytorch-fid's FID InceptionV3 state_dict, either the .pth itself (read
with a lazily imported `torch`, CPU only) or an .npz holding its raw arrays
under the same names (for machines without torch: `np.savez(out, **{k:
v.numpy() for k, v in torch.load(pth).items()})` elsewhere). No network access.

Mapping (torch name -> Flax name, see `magvit_jax/metrics/inception.py`):
  <L>.conv.weight [out, in, kh, kw] -> params/<L>/conv/kernel [kh, kw, in, out]
  <L>.bn.weight / .bn.bias          -> params/<L>/bn/scale / bn/bias
  <L>.bn.running_mean / _var        -> batch_stats/<L>/bn/mean / var
  fc.weight [1008, 2048] / fc.bias  -> params/fc/kernel [2048, 1008] / params/fc/bias
with <L> the module path, '.' -> '/'. `num_batches_tracked` and an auxiliary
head (`AuxLogits.*`, only in torchvision checkpoints) are dropped. The output
is validated with `load_inception_weights` before this returns.

I3D: not converted here yet (see `magvit_jax/metrics/i3d.py` for the layout).
"""
from __future__ import annotations

import argparse
import os
from typing import Dict

import numpy as np

from magvit_jax.metrics import inception


def read_state_dict(path: str) -> Dict[str, np.ndarray]:
  """A PyTorch state_dict as name -> float32 numpy array, from .pth (needs torch) or .npz."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found. {inception.INCEPTION_HOW_TO_GET}')
  if path.endswith('.npz'):
    with np.load(path) as f:
      return {k: np.asarray(f[k]) for k in f.files}
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f'reading {path} needs torch (pip install torch), or convert it elsewhere to an .npz of '
        'its raw arrays: np.savez(out, **{k: v.numpy() for k, v in torch.load(pth).items()})'
    ) from e
  state = torch.load(path, map_location='cpu')
  if isinstance(state, dict) and 'state_dict' in state:
    state = state['state_dict']
  return {k: v.detach().cpu().numpy() for k, v in state.items()}


def inception_from_torch(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """pytorch-fid FID InceptionV3 state_dict -> flat Flax names (see the module docstring)."""
  out = {}
  for name, value in state.items():
    if name.endswith('num_batches_tracked') or name.startswith('AuxLogits.'):
      continue
    value = np.asarray(value, np.float32)
    if name == 'fc.weight':
      out['params/fc/kernel'] = value.T
    elif name == 'fc.bias':
      out['params/fc/bias'] = value
    else:
      layer, _, leaf = name.rpartition('.')
      module, _, part = layer.rpartition('.')
      path = module.replace('.', '/')
      if part == 'conv' and leaf == 'weight':
        out[f'params/{path}/conv/kernel'] = value.transpose(2, 3, 1, 0)
      elif part == 'bn' and leaf in ('weight', 'bias'):
        out[f'params/{path}/bn/{"scale" if leaf == "weight" else "bias"}'] = value
      elif part == 'bn' and leaf in ('running_mean', 'running_var'):
        out[f'batch_stats/{path}/bn/{leaf[len("running_"):]}'] = value
      else:
        raise ValueError(f'unexpected name {name!r} (shape {value.shape}) in the InceptionV3 '
                         'state_dict: not a pytorch-fid FID InceptionV3 checkpoint?')
  return out


def convert_inception(src: str, dst: str) -> None:
  """Writes `dst` (.npz, Flax names) from pytorch-fid's `src` (.pth or .npz), then validates it."""
  arrays = inception_from_torch(read_state_dict(src))
  os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
  np.savez(dst, **arrays)
  inception.load_inception_weights(dst)  # Raises, naming the layer, if anything is off.


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('network', choices=['inception'])
  parser.add_argument('src', help='pytorch-fid pt_inception-2015-12-05-*.pth (or .npz of it)')
  parser.add_argument('dst', help='output .npz for --weights of magvit_jax.evaluate')
  args = parser.parse_args()
  convert_inception(args.src, args.dst)
  print(f'wrote {args.dst}')


if __name__ == '__main__':
  main()

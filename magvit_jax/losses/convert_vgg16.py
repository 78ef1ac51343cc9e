"""Converts torchvision's VGG-16 checkpoint to the npz read by `load_vgg16_weights`.

  python -m magvit_jax.losses.convert_vgg16 --input vgg16-397923af.pth --output vgg16.npz
      [--lpips vgg.pth]

`--input` is torchvision's public `vgg16` state_dict (`features.{0,2,5,...,28}.weight`
[out, in, 3, 3] and `.bias` [out]; `classifier.*` is ignored) as a `.pth` (read
with torch, which must be installed: it is imported only here) or an `.npz`
holding the same raw torch arrays under the same keys (no torch needed).
`--lpips` optionally adds the LPIPS v0.1 linear layers (`lin{k}.model.1.weight`
[1, C, 1, 1], same .pth/.npz rule) as `lin{k}` [C]. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Mapping, Sequence

import numpy as np

from magvit_jax.losses.perceptual import STAGE_CHANNELS, VGG16_LAYERS, load_vgg16_weights

# torchvision vgg16.features indices of the 13 convs, in VGG16_LAYERS order.
TORCH_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Raw arrays from a torch `.pth`/`.pt` state_dict or an `.npz` of the same keys."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist')
  if path.endswith('.npz'):
    with np.load(path, allow_pickle=False) as data:
      return {k: np.asarray(data[k]) for k in data.files}
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
      f'Reading {path} needs PyTorch (`pip install torch`, CPU build is enough). '
      'Alternatively pass an .npz holding the state_dict arrays under the same keys.'
    ) from e
  state = torch.load(path, map_location='cpu', weights_only=True)
  if isinstance(state, Mapping) and 'state_dict' in state:
    state = state['state_dict']
  return {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, 'detach')}


def _strip_prefix(raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  # DataParallel checkpoints prefix keys with 'module.'.
  return {k[len('module.') :] if k.startswith('module.') else k: v for k, v in raw.items()}


def convert_state_dict(
  raw: Mapping[str, np.ndarray], lpips: Mapping[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
  """torch-layout arrays -> flat `{'conv1_1/kernel': [3,3,in,out], ..., 'lin0': [C]}` float32."""
  raw = _strip_prefix(raw)
  out: dict[str, np.ndarray] = {}
  for (name, cin, cout), idx in zip(VGG16_LAYERS, TORCH_CONV_INDICES):
    wkey, bkey = f'features.{idx}.weight', f'features.{idx}.bias'
    for key, shape in ((wkey, (cout, cin, 3, 3)), (bkey, (cout,))):
      if key not in raw:
        raise ValueError(
          f'{key!r} ({name}) missing from the input state_dict; expected '
          "torchvision's vgg16 (features.{0,2,5,7,10,12,14,17,19,21,24,26,28})"
        )
      if tuple(raw[key].shape) != shape:
        raise ValueError(f'{key!r} ({name}): expected shape {shape}, found {tuple(raw[key].shape)}')
    # torch [out, in, kh, kw] -> flax [kh, kw, in, out].
    out[f'{name}/kernel'] = np.ascontiguousarray(
      np.transpose(raw[wkey].astype(np.float32), (2, 3, 1, 0))
    )
    out[f'{name}/bias'] = raw[bkey].astype(np.float32)
  if lpips is not None:
    lpips = _strip_prefix(lpips)
    for k, c in enumerate(STAGE_CHANNELS):
      key = f'lin{k}.model.1.weight'
      if key not in lpips:
        raise ValueError(f'{key!r} missing from the LPIPS weights (expected LPIPS v0.1 vgg.pth)')
      if tuple(lpips[key].shape) != (1, c, 1, 1):
        raise ValueError(f'{key!r}: expected shape {(1, c, 1, 1)}, found {tuple(lpips[key].shape)}')
      out[f'lin{k}'] = lpips[key].reshape(c).astype(np.float32)
  return out


def convert_file(input_path: str, output_path: str, lpips_path: str | None = None) -> None:
  """Reads, converts, writes `output_path` and re-validates it with `load_vgg16_weights`."""
  if not output_path.endswith('.npz'):
    raise ValueError(f'--output must end with .npz; got {output_path!r}')
  lpips = read_state_dict(lpips_path) if lpips_path else None
  arrays = convert_state_dict(read_state_dict(input_path), lpips)
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  np.savez(output_path, **arrays)
  load_vgg16_weights(output_path)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--input', required=True, help='torchvision vgg16 .pth or raw .npz')
  parser.add_argument('--output', required=True, help='output .npz')
  parser.add_argument('--lpips', default=None, help='optional LPIPS v0.1 vgg.pth (or .npz)')
  args = parser.parse_args(argv)
  convert_file(args.input, args.output, args.lpips)
  print(f'wrote {args.output}')
  return 0


if __name__ == '__main__':
  sys.exit(main())

"""Converts torchvision's VGG-16 checkpoint to the npz read by `load_vgg16_weights`.

  python -m magvit_jax.losses.convert_vgg16 --input vgg16-397923af.npz --output vgg16.npz
      [--lpips vgg.npz]
  python -m magvit_jax.losses.convert_vgg16 --allow_pickle --input vgg16-397923af.pth \
      --output vgg16.npz [--lpips vgg.pth]

`--input` is torchvision's public `vgg16` state_dict (`features.{0,2,5,...,28}.weight`
[out, in, 3, 3] and `.bias` [out]; `classifier.*` is ignored): by default an `.npz` or
`.safetensors` (needs `pip install safetensors`) holding the raw torch arrays under the same
keys (no torch needed). The `.pth` itself is read only with `--allow_pickle`: `torch.load`
(torch must be installed; imported only then) unpickles it, and a pickle can execute arbitrary
code, so pass the flag only for a file you trust. The error without it prints the command
that makes the `.npz` on a machine with torch.
`--lpips` optionally adds the LPIPS v0.1 linear layers (`lin{k}.model.1.weight`
[1, C, 1, 1], same file rules) as `lin{k}` [C]. Nothing is downloaded.
"""

from __future__ import annotations

import sys
from typing import Mapping, Sequence

import numpy as np

from magvit_jax import weight_files
from magvit_jax.losses.perceptual import STAGE_CHANNELS, VGG16_LAYERS, load_vgg16_weights

# torchvision vgg16.features indices of the 13 convs, in VGG16_LAYERS order.
TORCH_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def read_state_dict(path: str, allow_pickle: bool = False) -> dict[str, np.ndarray]:
  """`weight_files.read_state_dict` (.npz / .safetensors; a .pth/.pt only with `allow_pickle`)."""
  return weight_files.read_state_dict(path, allow_pickle=allow_pickle)


def convert_state_dict(
  raw: Mapping[str, np.ndarray], lpips: Mapping[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
  """torch-layout arrays -> flat `{'conv1_1/kernel': [3,3,in,out], ..., 'lin0': [C]}` float32."""
  raw = weight_files.strip_module_prefix(raw)
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
    lpips = weight_files.strip_module_prefix(lpips)
    for k, c in enumerate(STAGE_CHANNELS):
      key = f'lin{k}.model.1.weight'
      if key not in lpips:
        raise ValueError(f'{key!r} missing from the LPIPS weights (expected LPIPS v0.1 vgg.pth)')
      if tuple(lpips[key].shape) != (1, c, 1, 1):
        raise ValueError(f'{key!r}: expected shape {(1, c, 1, 1)}, found {tuple(lpips[key].shape)}')
      out[f'lin{k}'] = lpips[key].reshape(c).astype(np.float32)
  return out


def convert_file(
  input_path: str, output_path: str, lpips_path: str | None = None, allow_pickle: bool = False
) -> None:
  """Reads, converts, writes `output_path` and re-validates it with `load_vgg16_weights`.

  allow_pickle: also read .pth/.pt inputs (Python pickle: only for files you trust)."""
  lpips = read_state_dict(lpips_path, allow_pickle) if lpips_path else None
  arrays = convert_state_dict(read_state_dict(input_path, allow_pickle), lpips)
  weight_files.write_npz(output_path, arrays, load_vgg16_weights)


def main(argv: Sequence[str] | None = None) -> int:
  parser = weight_files.converter_parser(
    __doc__, 'torchvision vgg16 arrays: .npz, .safetensors (.pth: see below)'
  )
  parser.add_argument(
    '--lpips', default=None, help='optional LPIPS v0.1 vgg weights (.npz, .safetensors, .pth)'
  )
  args = parser.parse_args(argv)
  return weight_files.run_converter(
    lambda: convert_file(args.input, args.output, args.lpips, args.allow_pickle),
    args.output,
    args.verbose,
  )


if __name__ == '__main__':
  sys.exit(main())

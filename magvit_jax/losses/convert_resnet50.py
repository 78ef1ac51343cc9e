"""Converts torchvision's ResNet-50 checkpoint to the npz read by `load_resnet50_weights`.

  python -m magvit_jax.losses.convert_resnet50 --input resnet50.npz --output resnet50_flax.npz
  python -m magvit_jax.losses.convert_resnet50 --allow_pickle --input resnet50-0676ba61.pth \
      --output resnet50_flax.npz

`--input` is torchvision's `resnet50` state_dict (`conv1.weight`, `bn1.{weight,bias,
running_mean,running_var}`, `layer{1-4}.{i}.conv{1,2,3}.weight`, `.bn{1,2,3}.*`,
`.downsample.{0,1}.*`, `fc.weight` [1000, 2048], `fc.bias`; `num_batches_tracked` is ignored): by
default an `.npz` or `.safetensors` (needs `pip install safetensors`) of the raw torch arrays
under those keys (no torch needed). The `.pth` itself is read only with `--allow_pickle`
(torch.load unpickles it, and a pickle can execute arbitrary code: only for a file you trust).
Any other key (e.g. a ResNet-101's `layer3.6.*`) is refused, naming it. Nothing is downloaded.
"""

from __future__ import annotations

import sys
from typing import Mapping, Sequence

import numpy as np

from magvit_jax import weight_files
from magvit_jax.losses.resnet50 import expected_shapes, load_resnet50_weights

_BN_TORCH = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}


def torch_name(flax_key: str) -> str:
  """'layer1_0/downsample_bn/mean' -> 'layer1.0.downsample.1.running_mean' (and so on)."""
  parts = flax_key.split('/')
  if parts[0].startswith('layer'):
    parts[0] = parts[0].replace('_', '.')
  leaf = parts[-1]
  module = parts[-2]
  if module == 'downsample_conv':
    parts[-2] = 'downsample.0'
  elif module == 'downsample_bn':
    parts[-2] = 'downsample.1'
  if leaf == 'kernel':
    parts[-1] = 'weight'
  elif module.startswith('bn') or module == 'downsample_bn':
    parts[-1] = _BN_TORCH[leaf]
  return '.'.join(parts)


def convert_state_dict(raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """torch-layout arrays -> flat flax-layout float32 arrays under `expected_shapes()` keys."""
  raw = {
    k: v
    for k, v in weight_files.strip_module_prefix(raw).items()
    if not k.endswith('num_batches_tracked')
  }
  names = {torch_name(k): k for k in expected_shapes()}
  extra = sorted(set(raw) - set(names))
  if extra:
    raise ValueError(
      f'unexpected entries {extra[:5]}{"..." if len(extra) > 5 else ""} in the input '
      "state_dict; expected torchvision's resnet50 (layer1..layer4 of 3, 4, 6, 3 bottlenecks)"
    )
  out: dict[str, np.ndarray] = {}
  for tkey, key in names.items():
    shape = expected_shapes()[key]
    if tkey not in raw:
      raise ValueError(f'{tkey!r} missing from the input state_dict (torchvision resnet50 naming)')
    value = np.asarray(raw[tkey], np.float32)
    if key.endswith('kernel') and key != 'fc/kernel':
      value = np.transpose(value, (2, 3, 1, 0))  # torch [out, in, kh, kw] -> flax [kh, kw, in, out]
    elif key == 'fc/kernel':
      value = value.T  # torch [out, in] -> flax [in, out]
    if tuple(value.shape) != shape:
      raise ValueError(
        f'{tkey!r}: expected shape {torch_shape(key, shape)}, found {tuple(raw[tkey].shape)}'
      )
    out[key] = np.ascontiguousarray(value)
  return out


def torch_shape(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The torch-layout shape of the flax-layout `shape` of `key`."""
  if key == 'fc/kernel':
    return shape[::-1]
  if key.endswith('kernel'):
    return (shape[3], shape[2], shape[0], shape[1])
  return shape


def convert_file(input_path: str, output_path: str, allow_pickle: bool = False) -> None:
  """Reads, converts, writes `output_path` and re-validates it with `load_resnet50_weights`."""
  raw = weight_files.read_state_dict(input_path, allow_pickle=allow_pickle)
  weight_files.write_npz(output_path, convert_state_dict(raw), load_resnet50_weights)


def main(argv: Sequence[str] | None = None) -> int:
  parser = weight_files.converter_parser(
    __doc__, 'torchvision resnet50 arrays: .npz, .safetensors (.pth: see --allow_pickle)'
  )
  args = parser.parse_args(argv)
  return weight_files.run_converter(
    lambda: convert_file(args.input, args.output, args.allow_pickle), args.output, args.verbose
  )


if __name__ == '__main__':
  sys.exit(main())

"""Open-MAGVIT2's image tokenizer (TencentARC, PyTorch) -> this project's `Magvit2Tokenizer` params.

TencentARC/Open-MAGVIT2 released LFQ image tokenizers (2^18 codes, 16 x 16 tokens):
`imagenet_256_L.ckpt` (HuggingFace TencentARC/Open-MAGVIT2-Tokenizer-256-resolution) and
`imagenet_128_L.ckpt` (...-128-resolution), PyTorch Lightning checkpoints whose 'state_dict'
holds `encoder.*`, `decoder.*` (the tokenizer), `model_ema.*` (EMA copies of every trained
parameter, named with the dots removed: `model_ema.encoderconv_inweight`), `loss.*`
(discriminator, LPIPS) and nothing for the quantizer (LFQ has no parameters). Our
`Magvit2Tokenizer` with the options of `configs/magvit2_tokenizer_imagenet.py:open_magvit2_256`
(OFFICIAL_OPTIONS: a per-frame 2D CNN, PyTorch's symmetric padding, no biases in the residual
blocks and the encoder's first conv, the decoder's per-level adaptive GroupNorm on pooled latent
statistics, sign(0) = -1) computes the same function on images `[b, H, W, 3]` in [-1, 1].

  state = load_state_dict('imagenet_256_L.safetensors')     # or .npz; a .ckpt: allow_pickle=True
  config = load_config('magvit2_tokenizer_imagenet.py:open_magvit2_256')
  params = tokenizer_params_from_open_magvit2(state, config)
  module = tokenizers.build_tokenizer(config.model)
  _, aux = module.apply({'params': params}, images, method='encode')   # aux['tokens']

Key rule: the tokenizer is read from `encoder.*` / `decoder.*`, or (ema=True, and by default
when the file has `model_ema.*` keys, as the official evaluation uses them) from the EMA copies
`model_ema.<key without dots>`. A leading `state_dict.` or `module.` is dropped. Ignored: every
other `model_ema.*` key (the EMA's `decay` / `num_updates`, the loss modules' EMA copies),
`loss.*`, `quantize.*`, and, with EMA, the raw `encoder.*` / `decoder.*`. Any other key, a
missing tensor or a wrong shape is a ValueError naming the key and the shapes.

Layouts: conv weights [out, in, kh, kw] -> kernels [kt, kh, kw, in, out], the 2D kernel in the
last temporal slot and zeros in the others (a causal conv on one frame sees only that slot, so
with temporal_kernel_size > 1 the images are coded the same: the weights are "inflated" for
video); Linear [out, in] -> Dense [in, out]; GroupNorm weight/bias -> scale/bias. LFQ tokens
are `sum_i 2^i [z_i > 0]` in both. Parity with the official code:
tests/test_parity_open_magvit2.py (fixture by tools/parity/open_magvit2.py).
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from magvit_jax import fileio
from magvit_jax.models import tokenizers

# The config.model options that make our Magvit2Tokenizer compute the official function.
OFFICIAL_OPTIONS = {
  'name': 'magvit2',
  'spatial_padding': 'symmetric',
  'res_conv_bias': False,
  'encoder_in_bias': False,
  'adaptive_norm': 'level_start',
  'zero_sign': -1,
}
_IGNORED_PREFIXES = ('loss.', 'quantize.')
_SAFETENSORS_DTYPES = {
  'F64': np.float64,
  'F32': np.float32,
  'F16': np.float16,
  'I64': np.int64,
  'I32': np.int32,
  'I16': np.int16,
  'I8': np.int8,
  'U8': np.uint8,
  'BOOL': np.bool_,
}
_MODULES = [  # (our module name pattern, the official one); \1, \2 are level and block.
  (r'down_(\d+)_res_(\d+)', r'down.\1.block.\2'),
  (r'down_(\d+)_conv', r'down.\1.downsample'),
  (r'mid_res_(\d+)', r'mid_block.\1'),
  (r'up_(\d+)_res_(\d+)', r'up.\1.block.\2'),
  (r'up_(\d+)_conv', r'up.\1.upsample.conv1'),
  (r'up_(\d+)_norm', r'adaptive.\1'),
  (r'(conv_in|conv_out|norm_out|gamma|beta)', r'\1'),
  (r'norm_0', 'norm1'),
  (r'norm_1', 'norm2'),
  (r'conv_0', 'conv1'),
  (r'conv_1', 'conv2'),
  (r'shortcut', 'nin_shortcut'),
]
_LEAVES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}


def _read_safetensors(path: fileio.PathLike) -> dict[str, np.ndarray]:
  """A .safetensors file's tensors (read with numpy: 8-byte header size, JSON header, data)."""
  data = fileio.as_path(path).read_bytes()
  try:
    size = int.from_bytes(data[:8], 'little')
    header = json.loads(data[8 : 8 + size])
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f'{path}: not a .safetensors file ({e})') from e
  body = memoryview(data)[8 + size :]
  out = {}
  for key, info in header.items():
    if key == '__metadata__':
      continue
    begin, end = info['data_offsets']
    raw = body[begin:end]
    if info['dtype'] == 'BF16':  # bfloat16 = the high half of a float32.
      array = (np.frombuffer(raw, '<u2').astype(np.uint32) << 16).view(np.float32)
    elif info['dtype'] in _SAFETENSORS_DTYPES:
      array = np.frombuffer(raw, np.dtype(_SAFETENSORS_DTYPES[info['dtype']]).newbyteorder('<'))
    else:
      raise ValueError(f'{path}: {key} has unsupported dtype {info["dtype"]}')
    out[key] = array.reshape(info['shape'])
  return out


def load_state_dict(path: fileio.PathLike, allow_pickle: bool = False) -> dict[str, np.ndarray]:
  """An Open-MAGVIT2 state dict as name -> numpy array.

  path: a .safetensors or .npz of the checkpoint's 'state_dict' tensors (read without pickle),
    or, only with `allow_pickle=True`, the official .ckpt/.pt/.pth itself: that runs Python
    pickle (`torch.load`, needs torch), which can execute arbitrary code from the file, so only
    for a file you trust. `torch.load(weights_only=True)` is tried first, then (a Lightning
    checkpoint also pickles its hyper-parameters) `weights_only=False`.
  A checkpoint dict's 'state_dict' entry is taken when present.
  """
  name = str(path)
  ext = name.rsplit('.', 1)[-1].lower() if '.' in name else ''
  if ext == 'safetensors':
    return _read_safetensors(path)
  if ext == 'npz':
    with fileio.as_path(path).open('rb') as f, np.load(f, allow_pickle=False) as z:
      return {k: np.asarray(z[k]) for k in z.files}
  if ext not in ('ckpt', 'pt', 'pth'):
    raise ValueError(f'{path}: expected a .safetensors or .npz (or a .ckpt with allow_pickle=True)')
  if not allow_pickle:
    raise ValueError(
      f'refusing to read {path}: a .{ext} is Python pickle (torch.load), which can execute '
      'arbitrary code from the file. Pass allow_pickle=True if you trust it, or convert it to '
      '.safetensors on a machine with torch (docs/pretrained.md).'
    )
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'reading {path} needs torch (pip install torch)') from e
  try:
    state = torch.load(name, map_location='cpu', weights_only=True)
  except Exception:  # pylint: disable=broad-except
    state = torch.load(name, map_location='cpu', weights_only=False)
  if isinstance(state, Mapping) and 'state_dict' in state:
    state = state['state_dict']
  return {
    k: v.detach().float().numpy() if v.is_floating_point() else v.detach().numpy()
    for k, v in state.items()
    if hasattr(v, 'detach')
  }


def _model_config(config: Any) -> Mapping[str, Any]:
  """config.model of a run config, or a model config itself."""
  return config['model'] if 'model' in config else config


def _our_shapes(model_config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  module = tokenizers.build_tokenizer(model_config)
  f = 2 ** (len(model_config['channel_multipliers']) - 1)
  images = jax.ShapeDtypeStruct((1, 2 * f, 2 * f, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x), images)
  flat = traverse_util.flatten_dict(nn.unbox(shapes['params']), sep='/')
  return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def _official_key(path: str) -> str:
  """Our param path ('decoder/up_1_res_0/conv_0/conv/kernel') -> the official key."""
  *modules, leaf = [p for p in path.split('/') if p != 'conv']
  out = []
  for part in modules:
    for pattern, repl in _MODULES:
      if re.fullmatch(pattern, part):
        out.append(re.sub(pattern, repl, part))
        break
    else:
      if part in ('encoder', 'decoder'):
        out.append(part)
      else:
        raise AssertionError(f'{path}: no official name for {part!r}')
  return '.'.join(out + [_LEAVES[leaf]])


def _official_shape(path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The official tensor's shape for our leaf `path` of `shape`."""
  if path.endswith('/kernel') and len(shape) == 5:  # Conv [kt, kh, kw, in, out].
    return (shape[4], shape[3], shape[1], shape[2])
  if path.endswith('/kernel'):  # Dense [in, out].
    return (shape[1], shape[0])
  return shape


def _to_ours(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  value = np.asarray(value, np.float32)
  if len(shape) == 5:
    out = np.zeros(shape, np.float32)
    out[-1] = value.transpose(2, 3, 1, 0)  # The current frame is the causal conv's last tap.
    return out
  if len(shape) == 2:
    return value.T
  return value


def official_shapes(model_config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  """Official key ('encoder.conv_in.weight') -> shape, of the tokenizer `config.model` expresses."""
  model_config = _model_config(model_config)
  return {_official_key(p): _official_shape(p, s) for p, s in _our_shapes(model_config).items()}


def tokenizer_params_from_open_magvit2(
  state_dict: Mapping[str, Any], config: Any, ema: bool | None = None
) -> dict[str, Any]:
  """Our `Magvit2Tokenizer` params (plain arrays) from an Open-MAGVIT2 state dict.

  state_dict: name -> array (numpy or anything np.asarray takes), e.g. from `load_state_dict`.
  config: a run config or its `config.model`, with OFFICIAL_OPTIONS (e.g.
    `magvit2_tokenizer_imagenet.py:open_magvit2_256`).
  ema: True: read the `model_ema.*` copies; False: the raw `encoder.*`/`decoder.*`; None: the
    EMA copies when the state dict has any (see the module docstring for the ignored keys).
  Raises ValueError for a config without the official options, and for missing, unexpected
  or wrongly shaped tensors (each named with the expected and the got shape).
  """
  model_config = _model_config(config)
  wrong = {k: model_config.get(k) for k, v in OFFICIAL_OPTIONS.items() if model_config.get(k) != v}
  if wrong:
    raise ValueError(
      f'config.model has {wrong}; an Open-MAGVIT2 tokenizer needs {OFFICIAL_OPTIONS} '
      '(use configs/magvit2_tokenizer_imagenet.py:open_magvit2_256)'
    )
  if not isinstance(state_dict, Mapping):
    raise ValueError(f'expected a dict of tensors, got {type(state_dict).__name__}')
  state = {re.sub(r'^(state_dict\.|module\.)+', '', str(k)): v for k, v in state_dict.items()}
  has_ema = any(k.startswith('model_ema.') for k in state)
  use_ema = has_ema if ema is None else bool(ema)
  if use_ema and not has_ema:
    raise ValueError('ema=True, but the state dict has no model_ema.* keys')
  ours = _our_shapes(model_config)
  names = {path: _official_key(path) for path in ours}
  expected = {names[p]: _official_shape(p, s) for p, s in ours.items()}
  got, unexpected = {}, []
  ema_names = {k.replace('.', ''): k for k in expected}
  for k, v in state.items():
    if k.startswith(('encoder.', 'decoder.')):
      if not use_ema:
        got[k] = v
      elif k not in expected:
        unexpected.append(k)  # A tensor of another architecture, even when EMA is read.
    elif k.startswith('model_ema.'):
      short = k[len('model_ema.') :]
      if use_ema and short.startswith(('encoder', 'decoder')):
        if short in ema_names:
          got[ema_names[short]] = v
        else:
          unexpected.append(k)
    elif not k.startswith(_IGNORED_PREFIXES):
      unexpected.append(k)
  if not use_ema:
    unexpected += [k for k in got if k not in expected]
  prefix = 'model_ema.' if use_ema else ''
  problems = []
  for key in sorted(set(expected) & set(got)):
    shape = tuple(np.shape(got[key]))
    if shape != expected[key]:
      name = prefix + key.replace('.', '') if use_ema else key
      problems.append(f'{name}: expected shape {expected[key]}, got {shape}')
  missing = sorted(set(expected) - set(got))
  if missing:
    if use_ema:
      missing = [f'{prefix}{k.replace(".", "")} ({k})' for k in missing]
    problems.append(f'missing keys: {missing}')
  if unexpected:
    problems.append(f'unexpected keys: {sorted(unexpected)}')
  if problems:
    arch = {
      k: model_config.get(k)
      for k in ('filters', 'channel_multipliers', 'num_res_blocks', 'num_bits', 'num_groups')
    }
    raise ValueError(
      f'the Open-MAGVIT2 state dict does not match config.model ({arch}):\n  '
      + '\n  '.join(problems)
    )
  params = {
    tuple(path.split('/')): jnp.asarray(_to_ours(got[names[path]], shape))
    for path, shape in ours.items()
  }
  return traverse_util.unflatten_dict(params)

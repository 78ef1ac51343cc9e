"""Official checkpoints -> this project's workdirs: `python -m magvit_jax.convert maskgit ...`.

  python -m magvit_jax.convert maskgit \
      --tokenizer=tokenizer_imagenet256_checkpoint \
      --transformer=maskgit_imagenet256_checkpoint --workdir=runs/maskgit256

writes two normal workdirs (config.json + an orbax checkpoint of the parameters, step 0):
`<workdir>/tokenizer` (the VQGAN, config `vqgan_imagenet.py:official256`) and `<workdir>`
itself (the transformer, config `maskgit_imagenet.py:official256`, its `tokenizer_workdir`
pointing at the first). `sample`, `evaluate`, editing and the notebooks then use them
unchanged (`python -m magvit_jax.sample --workdir=runs/maskgit256 --classes=1,7,282`).
With only `--tokenizer`, `<workdir>` is the tokenizer workdir. The resolution (256 / 512) is
read from the transformer's position table, else `--resolution`. `--tokenizer_config` /
`--transformer_config` replace the default configs (e.g. for a smaller model of the official
architecture: `--transformer_config=configs/maskgit_imagenet.py:official256
--transformer_config.model.num_layers=2`).

  python -m magvit_jax.convert magvit --tokenizer=checkpoint_37000 --workdir=runs/magvit_3dvq \
      [--tokenizer_config=configs/magvit_ucf101.py:official_L]

writes the official MAGVIT 3D-VQ (google-research/magvit; no weights are public, so a
checkpoint of your own training of it) as a tokenizer workdir (default config
`magvit_ucf101.py:official_B`). With `--transformer=FILE` (the official MAGVIT transformer,
`maskgvt`'s simplified BERT) the tokenizer goes to `<workdir>/tokenizer` and the transformer
to `<workdir>`: its layout (single-task class-conditional / multi-task, segments) and sizes
are read from the file, the rest of its config from `--transformer_config` (default
`magvit_ucf101.py:B` for a model with classes, `magvit_bair.py:B` without);
`--inpainting_token` for a model trained with `bug_patches.inpainting_token`
(see `magvit_transformer`).

  python -m magvit_jax.convert open_magvit2 --tokenizer=imagenet_256_L.safetensors \
      --workdir=runs/open_magvit2_256

writes an Open-MAGVIT2 image tokenizer (TencentARC; .safetensors / .npz of its state dict;
the Lightning .ckpt only with --allow_pickle, which runs pickle) as a MAGVIT-v2 tokenizer
workdir (default config `magvit2_tokenizer_imagenet.py:open_magvit2_256`).

The MaskGIT/MAGVIT files are msgpack (`flax.serialization`), read without pickle. A file of the wrong model
size or tree is refused naming the key paths (see `maskgit_vqgan`, `maskgit_transformer`).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from magvit_jax import checkpoint as ckpt_lib
from magvit_jax import cli_errors
from magvit_jax import fileio
from magvit_jax.config_loader import load_config
from magvit_jax.config_schema import validate_config
from magvit_jax.convert import magvit_3dvq, maskgit_transformer, maskgit_vqgan, official_tree
from magvit_jax.convert import magvit_transformer, open_magvit2

COMMANDS = ('maskgit', 'magvit', 'open_magvit2')
RESOLUTIONS = {257: 256, 1025: 512}  # Position-table rows (class token + tokens) -> pixels.

_TOKENIZER = flags.DEFINE_string('tokenizer', None, 'Official tokenizer checkpoint file.')
_TRANSFORMER = flags.DEFINE_string('transformer', None, 'Official transformer checkpoint file.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where to write the workdir(s).')
_RESOLUTION = flags.DEFINE_enum(
  'resolution', None, ['256', '512'], 'Image size, when there is no transformer to read it from.'
)
_ALLOW_PICKLE = flags.DEFINE_bool(
  'allow_pickle',
  False,
  'open_magvit2: also read a .ckpt/.pt with torch.load, which runs Python pickle from the file '
  '(arbitrary code): only for files you trust. Default: .safetensors / .npz only.',
)
_INPAINTING_TOKEN = flags.DEFINE_bool(
  'inpainting_token',
  False,
  'magvit --transformer: the official model was trained with bug_patches.inpainting_token '
  '(its inpainting tasks use TASK_INPAINTING, not TASK_OUTPAINTING).',
)
_TOKENIZER_CONFIG = config_flags.DEFINE_config_file(
  'tokenizer_config', None, 'Tokenizer config (default configs/vqgan_imagenet.py:official<res>).'
)
_TRANSFORMER_CONFIG = config_flags.DEFINE_config_file(
  'transformer_config',
  None,
  'Transformer config (default configs/maskgit_imagenet.py:official<res>; magvit: '
  'configs/magvit_ucf101.py:B or magvit_bair.py:B, model sizes read from the file).',
)


def write_params_workdir(workdir: str, config: ml_collections.ConfigDict, params: Any) -> None:
  """A workdir holding `config` (config.json) and `params` as checkpoint step 0, readable by
  `pretrained.load_tokenizer` / `load_transformer` (which read only the parameters)."""
  if fileio.exists(os.path.join(workdir, 'checkpoints')):
    raise ValueError(
      f'--workdir: {workdir}/checkpoints exists: convert into a new --workdir (nothing was overwritten)'
    )
  ckpt_lib.write_workdir_config(workdir, config)
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), config.to_dict(), 1)
  try:
    checkpointer.save(0, {'params': params, 'step': np.int32(0)})
  finally:
    checkpointer.close()


def convert_maskgit(
  workdir: str,
  tokenizer_file: str | None,
  transformer_file: str | None,
  resolution: int | None = None,
  tokenizer_config: ml_collections.ConfigDict | None = None,
  transformer_config: ml_collections.ConfigDict | None = None,
) -> dict[str, str]:
  """Converts the official MaskGIT files into workdirs; returns {'tokenizer': dir,
  'transformer': dir} of what was written. See the module docstring."""
  if not tokenizer_file:
    raise ValueError('--tokenizer: the official tokenizer checkpoint file is required')
  transformer_tree = None
  if transformer_file:
    transformer_tree = official_tree.load_official_tree(transformer_file)
    rows = _position_rows(transformer_tree)
    if resolution is None and rows in RESOLUTIONS and transformer_config is None:
      resolution = RESOLUTIONS[rows]
  resolution = resolution or 256
  tok_config = tokenizer_config or load_config(f'vqgan_imagenet.py:official{resolution}')
  validate_config(tok_config, 'tokenizer')
  tok_params = maskgit_vqgan.tokenizer_params_from_official(
    official_tree.load_official_tree(tokenizer_file), tok_config.model
  )
  tok_dir = os.path.join(workdir, 'tokenizer') if transformer_tree is not None else workdir
  tf_config = tf_params = None
  if transformer_tree is not None:  # Converted (and checked) before anything is written.
    from magvit_jax.models import tokenizers  # pylint: disable=g-import-not-at-top

    tf_config = transformer_config or load_config(f'maskgit_imagenet.py:official{resolution}')
    with tf_config.unlocked():
      tf_config.tokenizer_workdir = os.path.abspath(tok_dir)
    validate_config(tf_config, 'transformer')
    codes = tokenizers.codebook_size(tok_config.model)
    if int(tf_config.model.codebook_size) != codes:
      raise ValueError(
        f'transformer config model.codebook_size={tf_config.model.codebook_size} but the '
        f'tokenizer config has {codes} codes: pass matching --tokenizer_config / '
        '--transformer_config'
      )
    tf_params = maskgit_transformer.transformer_params_from_official(
      transformer_tree, tf_config, seq_len=tokenizers.num_tokens(tok_config)
    )
  write_params_workdir(tok_dir, tok_config, jax.device_get(tok_params))
  written = {'tokenizer': tok_dir}
  if tf_config is not None:
    write_params_workdir(workdir, tf_config, jax.device_get(tf_params))
    written['transformer'] = workdir
  return written


def convert_magvit(
  workdir: str,
  tokenizer_file: str | None,
  config: ml_collections.ConfigDict | None = None,
  transformer_file: str | None = None,
  transformer_config: ml_collections.ConfigDict | None = None,
  inpainting_token: bool = False,
) -> dict[str, str]:
  """The official MAGVIT 3D-VQ params in `tokenizer_file` -> a tokenizer workdir; with
  `transformer_file`, also the official MAGVIT transformer -> a transformer workdir (see the
  module docstring). Everything is converted (and checked) before anything is written."""
  if not tokenizer_file:
    raise ValueError('--tokenizer: the official 3D-VQ checkpoint file is required')
  config = config or load_config('magvit_ucf101.py:official_B')
  validate_config(config, 'tokenizer')
  tok_tree = official_tree.load_official_tree(tokenizer_file)
  if not transformer_file:
    params = magvit_3dvq.tokenizer_params_from_official(tok_tree, config)
    write_params_workdir(workdir, config, jax.device_get(params))
    return {'tokenizer': workdir}
  from magvit_jax.models import tokenizers  # pylint: disable=g-import-not-at-top

  tok_dir = os.path.join(workdir, 'tokenizer')
  tree = official_tree.load_official_tree(transformer_file)
  seq_len = tokenizers.num_tokens(config)
  codes = tokenizers.codebook_size(config.model)
  multi_task = (_position_rows(tree) or 0) - seq_len == 2
  if transformer_config is None:
    classes = magvit_transformer.official_num_classes(tree, codes, multi_task)
    transformer_config = load_config('magvit_ucf101.py:B' if classes else 'magvit_bair.py:B')
  with transformer_config.unlocked():
    transformer_config.model.codebook_size = codes
    transformer_config.tokenizer_workdir = os.path.abspath(tok_dir)
  tf_config = magvit_transformer.official_transformer_config(tree, transformer_config, seq_len)
  validate_config(tf_config, 'transformer')
  params = magvit_3dvq.tokenizer_params_from_official(tok_tree, config)
  tf_params = magvit_transformer.transformer_params_from_official(
    tree, tf_config, seq_len=seq_len, inpainting_token=inpainting_token
  )
  write_params_workdir(tok_dir, config, jax.device_get(params))
  write_params_workdir(workdir, tf_config, jax.device_get(tf_params))
  return {'tokenizer': tok_dir, 'transformer': workdir}


def convert_open_magvit2(
  workdir: str,
  tokenizer_file: str | None,
  config: ml_collections.ConfigDict | None = None,
  allow_pickle: bool = False,
) -> dict[str, str]:
  """An Open-MAGVIT2 state dict in `tokenizer_file` -> a MAGVIT-v2 tokenizer workdir."""
  if not tokenizer_file:
    raise ValueError('--tokenizer: the Open-MAGVIT2 .safetensors / .npz file is required')
  config = config or load_config('magvit2_tokenizer_imagenet.py:open_magvit2_256')
  validate_config(config, 'tokenizer')
  params = open_magvit2.tokenizer_params_from_open_magvit2(
    open_magvit2.load_state_dict(tokenizer_file, allow_pickle=allow_pickle), config
  )
  write_params_workdir(workdir, config, jax.device_get(params))
  return {'tokenizer': workdir}


def _position_rows(tree: dict) -> int | None:
  """Rows of the official position-embedding table (None if the tree has no such leaf)."""
  flat = official_tree.flatten(tree.get('params', tree))
  rows = [v.shape[0] for k, v in flat.items() if 'position' in k.lower() and np.ndim(v) == 2]
  return rows[0] if rows else None


def main(argv: list[str]) -> None:
  commands = argv[1:]
  if len(commands) != 1 or commands[0] not in COMMANDS:
    raise ValueError(
      f'expected one command, one of {list(COMMANDS)} (e.g. `python -m magvit_jax.convert maskgit '
      f'--tokenizer=FILE --transformer=FILE --workdir=DIR`), got {commands}'
    )
  if not _WORKDIR.value:
    raise ValueError('--workdir: where to write the converted workdir is required')
  tok_config = cli_errors.config_value(_TOKENIZER_CONFIG) if _TOKENIZER_CONFIG.present else None
  tf_config = cli_errors.config_value(_TRANSFORMER_CONFIG) if _TRANSFORMER_CONFIG.present else None
  if commands[0] == 'magvit':
    written = convert_magvit(
      _WORKDIR.value,
      _TOKENIZER.value,
      tok_config,
      _TRANSFORMER.value,
      tf_config,
      _INPAINTING_TOKEN.value,
    )
  elif commands[0] == 'open_magvit2':
    written = convert_open_magvit2(
      _WORKDIR.value, _TOKENIZER.value, tok_config, _ALLOW_PICKLE.value
    )
  else:
    written = convert_maskgit(
      _WORKDIR.value,
      _TOKENIZER.value,
      _TRANSFORMER.value,
      int(_RESOLUTION.value) if _RESOLUTION.value else None,
      tok_config,
      tf_config,
    )
  for kind, path in written.items():
    print(f'[convert] wrote the {kind} workdir {path}', flush=True)
  if 'transformer' in written and commands[0] == 'maskgit':
    print(
      f'[convert] sample with: python -m magvit_jax.sample --workdir={written["transformer"]} '
      f'--classes=1,7,282',
      flush=True,
    )


if __name__ == '__main__':
  cli_errors.run(main)

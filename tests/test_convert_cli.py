"""`python -m magvit_jax.convert maskgit|magvit|open_magvit2`: official files -> workdirs.

The transformer file is the small official model of the parity fixture
(tests/data/maskgit_transformer_parity.npz, made by the official code); the tokenizer file is
an official-layout tree of random values of a matching small size (4 x 4 tokens, codebook 16).
That the converted values compute what the official code computes is tests/test_parity_*.py;
here: the CLI writes loadable workdirs whose parameters are exactly the converters' output,
sampling runs on them, and bad input ends in one line.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from flax import serialization, traverse_util

from magvit_jax import pretrained
from magvit_jax.config_loader import load_config
from magvit_jax.convert import magvit_3dvq, magvit_transformer, maskgit_transformer, maskgit_vqgan

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = REPO / 'tests' / 'data' / 'maskgit_transformer_parity.npz'
# The small official tokenizer: 16 x 16 pixels -> 4 x 4 tokens of a 16-code book.
TOKENIZER = dict(
  filters=8, channel_multipliers=(1, 2, 2), num_res_blocks=1, embedding_dim=8, codebook_size=16
)

pytestmark = pytest.mark.slow  # Subprocesses that import jax and compile.


def _flags(prefix: str, values: dict) -> list[str]:
  out = []
  for k, v in values.items():
    v = f'({",".join(map(str, v))},)' if isinstance(v, tuple) else v
    out.append(f'--{prefix}.{k}={v}')
  return out


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp('official')
  with np.load(FIXTURE) as z:
    data = {k: z[k] for k in z.files}
  cfg = json.loads(str(data['config_json']))
  flat = {tuple(k.split('/')): v for k, v in data.items() if k.startswith('params/')}
  (root / 'transformer').write_bytes(serialization.to_bytes(traverse_util.unflatten_dict(flat)))
  tok_config = load_config('vqgan_imagenet.py:official256')
  tok_config.model.update(dict(TOKENIZER, num_groups=4))
  rng = np.random.default_rng(0)
  tree = {
    tuple(path.split('/')): rng.normal(0, 0.1, shape).astype(np.float32)
    for path, shape in maskgit_vqgan.official_shapes(tok_config.model).items()
  }
  (root / 'tokenizer').write_bytes(serialization.to_bytes(traverse_util.unflatten_dict(tree)))
  tok_flags = _flags('tokenizer_config.model', dict(TOKENIZER, num_groups=4))
  tok_flags.append('--tokenizer_config.data.image_size=16')
  tf_values = {k: cfg[k] for k in ('codebook_size', 'num_classes', 'hidden_size', 'num_layers')}
  tf_values.update(num_heads=cfg['num_heads'], mlp_dim=cfg['mlp_dim'])
  tf_flags = _flags('transformer_config.model', tf_values) + [
    '--transformer_config.data.image_size=16',
    f'--transformer_config.data.num_classes={cfg["num_classes"]}',
  ]
  return root, tok_config, tok_flags, tf_flags


def _run(*args, cwd=REPO) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.run(
    [sys.executable, '-m', *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
  )


def test_convert_writes_workdirs_that_sample_uses(files, tmp_path):
  root, tok_config, tok_flags, tf_flags = files
  workdir = tmp_path / 'maskgit'
  result = _run(
    'magvit_jax.convert',
    'maskgit',
    f'--tokenizer={root / "tokenizer"}',
    f'--transformer={root / "transformer"}',
    f'--workdir={workdir}',
    '--tokenizer_config=configs/vqgan_imagenet.py:official256',
    *tok_flags,
    '--transformer_config=configs/maskgit_imagenet.py:official256',
    *tf_flags,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'wrote the transformer workdir {workdir}' in result.stdout

  tok = pretrained.load_tokenizer(str(workdir / 'tokenizer'))
  want = maskgit_vqgan.tokenizer_params_from_official(
    maskgit_vqgan.load_official_tree(root / 'tokenizer'), tok.config.model
  )
  got, want = traverse_util.flatten_dict(tok.params), traverse_util.flatten_dict(want)
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]))
  transformer = pretrained.load_transformer(str(workdir))
  assert transformer.config.tokenizer_workdir == str(workdir / 'tokenizer')
  assert transformer.config.model.norm_layout == 'post'
  want = maskgit_transformer.transformer_params_from_official(
    maskgit_transformer.load_official_tree(root / 'transformer'), transformer.config, seq_len=16
  )
  got, want = traverse_util.flatten_dict(transformer.params), traverse_util.flatten_dict(want)
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]))

  sample = _run(
    'magvit_jax.sample',
    f'--workdir={workdir}',
    f'--output={tmp_path / "samples"}',
    '--classes=1,7',
    '--num_samples=2',
    '--steps=4',
  )
  assert sample.returncode == 0, sample.stderr[-3000:]
  with np.load(tmp_path / 'samples' / 'samples.npz') as z:
    assert z['images'].shape == (2, 16, 16, 3) and z['labels'].tolist() == [1, 7]

  again = _run(
    'magvit_jax.convert',
    'maskgit',
    f'--tokenizer={root / "tokenizer"}',
    f'--workdir={workdir}',
    '--tokenizer_config=configs/vqgan_imagenet.py:official256',
    *tok_flags,
  )
  assert again.returncode == 2, again.stderr[-3000:] and again.stderr.strip().splitlines()[
    -1
  ].startswith('error: ')
  assert 'checkpoints exists' in again.stderr


def test_a_file_of_another_size_is_refused_naming_the_key(files, tmp_path):
  root, _, _, _ = files
  # The small tokenizer file against the full-size official256 config.
  result = _run(
    'magvit_jax.convert', 'maskgit', f'--tokenizer={root / "tokenizer"}', f'--workdir={tmp_path}'
  )
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr[-2000:]
  assert 'expected shape' in lines[0] and 'params/' in lines[0]
  assert not (tmp_path / 'checkpoints').exists()


def test_convert_magvit_3dvq_writes_a_tokenizer_workdir_with_the_official_codes(tmp_path):
  """The small official 3D-VQ of tests/data/magvit_3dvq_parity.npz (made by the official code)
  -> a tokenizer workdir whose tokenizer gives the official codes."""
  with np.load(REPO / 'tests' / 'data' / 'magvit_3dvq_parity.npz') as z:
    data = {k: z[k] for k in z.files}
  flat = {
    tuple(k.split('/')): v.astype(np.float32) for k, v in data.items() if k.startswith('params/')
  }
  path = tmp_path / 'checkpoint_37000'
  path.write_bytes(serialization.to_bytes(traverse_util.unflatten_dict(flat)))
  model = {
    k.split('/', 1)[1]: data[k]
    for k in data
    if k.startswith('config/') and k not in ('config/image_size', 'config/num_frames')
  }
  overrides = []
  for key, value in model.items():
    if value.dtype == bool:
      value = f'({",".join(str(bool(v)) for v in value)},)'
    elif value.ndim:
      value = f'({",".join(str(int(v)) for v in value)},)'
    overrides.append(f'--tokenizer_config.model.{key}={value}')
  workdir = tmp_path / 'magvit'
  result = _run(
    'magvit_jax.convert',
    'magvit',
    f'--tokenizer={path}',
    f'--workdir={workdir}',
    '--tokenizer_config=configs/magvit_ucf101.py:official_B',
    *overrides,
    f'--tokenizer_config.data.image_size={int(data["config/image_size"])}',
    f'--tokenizer_config.data.num_frames={int(data["config/num_frames"])}',
  )
  assert result.returncode == 0, result.stderr[-3000:]
  tok = pretrained.load_tokenizer(str(workdir))
  videos = np.asarray(data['videos'], np.float32) * 2.0 - 1.0  # Official [0, 1] -> ours.
  _, aux = tok.module.apply({'params': tok.params}, videos, method='encode')
  np.testing.assert_array_equal(np.asarray(aux['tokens']), data['codes'])


def test_convert_open_magvit2_writes_a_tokenizer_workdir_with_the_official_codes(tmp_path):
  """The small Open-MAGVIT2 state dict of tests/data/open_magvit2_parity.npz (made by the
  official PyTorch code) -> a MAGVIT-v2 tokenizer workdir giving the official codes; a .ckpt
  without --allow_pickle is refused in one line."""
  with np.load(REPO / 'tests' / 'data' / 'open_magvit2_parity.npz') as z:
    data = {k: z[k] for k in z.files}
  state = {k[len('sd/') :]: v for k, v in data.items() if k.startswith('sd/')}
  path = tmp_path / 'tok.npz'
  np.savez(path, **state)
  mults = tuple(int(x) for x in data['config/ch_mult'])
  overrides = {
    'filters': int(data['config/ch']),
    'channel_multipliers': f'({",".join(map(str, mults))},)',
    'num_res_blocks': int(data['config/num_res_blocks']),
    'num_bits': int(data['config/z_channels']),
    'num_groups': int(data['config/num_groups']),
    'temporal_downsample': f'({",".join(["False"] * (len(mults) - 1))},)',
  }
  workdir = tmp_path / 'omg'
  result = _run(
    'magvit_jax.convert',
    'open_magvit2',
    f'--tokenizer={path}',
    f'--workdir={workdir}',
    '--tokenizer_config=configs/magvit2_tokenizer_imagenet.py:open_magvit2_256',
    *[f'--tokenizer_config.model.{k}={v}' for k, v in overrides.items()],
    f'--tokenizer_config.data.image_size={int(data["config/image_size"])}',
  )
  assert result.returncode == 0, result.stderr[-3000:]
  tok = pretrained.load_tokenizer(str(workdir))
  _, aux = tok.module.apply({'params': tok.params}, data['images'][:, None], method='encode')
  np.testing.assert_array_equal(np.asarray(aux['tokens'])[:, 0], data['codes'])

  ckpt = tmp_path / 'imagenet_256_L.ckpt'
  ckpt.write_bytes(b'not read')
  refused = _run(
    'magvit_jax.convert', 'open_magvit2', f'--tokenizer={ckpt}', f'--workdir={tmp_path / "x"}'
  )
  assert refused.returncode == 2
  lines = refused.stderr.strip().splitlines()
  assert len(lines) == 1 and 'pickle' in lines[0], refused.stderr[-2000:]


def _magvit_files(tmp_path):
  """A small official-layout 3D-VQ file (random values; 4 x 16 x 16 frames -> 2 x 4 x 4 tokens
  of a 64-code book) and its config flags, matching the transformers of
  tests/data/magvit_transformer_parity.npz (made by the official code)."""
  sizes = dict(
    filters=4,
    channel_multipliers=(1, 2, 2),
    num_res_blocks=1,
    temporal_downsample=(True, False),
    embedding_dim=8,
    codebook_size=64,
    num_groups=2,
  )
  tok_config = load_config('magvit_ucf101.py:official_B')
  tok_config.model.update(sizes)
  tok_config.data.update(dict(image_size=16, num_frames=4))
  rng = np.random.default_rng(0)
  tree = {
    tuple(path.split('/')): rng.normal(0, 0.1, shape).astype(np.float32)
    for path, shape in magvit_3dvq.official_shapes(tok_config.model).items()
  }
  (tmp_path / 'tok').write_bytes(serialization.to_bytes(traverse_util.unflatten_dict(tree)))
  flags = [
    f'--tokenizer_config.model.{k}={v}' for k, v in sizes.items() if not isinstance(v, tuple)
  ]
  flags += [
    '--tokenizer_config.model.channel_multipliers=(1,2,2)',
    '--tokenizer_config.model.temporal_downsample=(True,False)',
    '--tokenizer_config.data.image_size=16',
    '--tokenizer_config.data.num_frames=4',
  ]
  with np.load(REPO / 'tests' / 'data' / 'magvit_transformer_parity.npz') as z:
    data = {k: z[k] for k in z.files}
  for layout in ('single', 'multi'):
    flat = {
      tuple(k.split('/')[1:]): v for k, v in data.items() if k.startswith(f'{layout}/params/')
    }
    (tmp_path / layout).write_bytes(serialization.to_bytes(traverse_util.unflatten_dict(flat)))
  return tok_config, flags, data


def test_convert_magvit_transformer_writes_workdirs_giving_the_official_logits(tmp_path):
  """`convert magvit --transformer`: the official multi-task transformer with segments (BAIR
  layout) -> a transformer workdir whose model gives the official logits; the single-task
  class-conditional one (UCF-101 layout) through the same function in-process."""
  tok_config, tok_flags, data = _magvit_files(tmp_path)
  workdir = tmp_path / 'magvit'
  result = _run(
    'magvit_jax.convert',
    'magvit',
    f'--tokenizer={tmp_path / "tok"}',
    f'--transformer={tmp_path / "multi"}',
    '--inpainting_token',
    f'--workdir={workdir}',
    '--tokenizer_config=configs/magvit_ucf101.py:official_B',
    *tok_flags,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'wrote the transformer workdir {workdir}' in result.stdout
  # The CLI module defines absl flags (e.g. --tokenizer_config, as compile_check does): run it
  # as a command, never imported beside the other CLIs in this process.
  single_dir = tmp_path / 'single_run'
  result = _run(
    'magvit_jax.convert',
    'magvit',
    f'--tokenizer={tmp_path / "tok"}',
    f'--transformer={tmp_path / "single"}',
    f'--workdir={single_dir}',
    '--tokenizer_config=configs/magvit_ucf101.py:official_B',
    *tok_flags,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert (single_dir / 'tokenizer' / 'config.json').exists() and (
    single_dir / 'config.json'
  ).exists()
  for layout, path in (('multi', workdir), ('single', single_dir)):
    loaded = pretrained.load_transformer(str(path))
    m = loaded.config.model
    assert loaded.config.tokenizer_workdir == str(path / 'tokenizer')
    assert m.norm_layout == 'post' and m.codebook_size == 64
    assert (m.num_tasks, m.num_segments) == ((10, 2) if layout == 'multi' else (0, 0))
    if layout == 'single':
      assert m.num_classes == 3 and tuple(loaded.config.commit.tasks) == ()
    cfg = json.loads(str(data[f'{layout}/config_json']))
    inputs = magvit_transformer.official_inputs_to_ours(
      data[f'{layout}/input_ids'],
      loaded.config,
      data.get(f'{layout}/segment_ids'),
      official_classes=cfg['num_classes'],
      inpainting_token=True,
    )
    logits = loaded.module.apply({'params': loaded.params}, **inputs)
    want = magvit_transformer.official_logits_to_ours(data[f'{layout}/logits'], loaded.config)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(want), rtol=1e-5, atol=1e-5)
    tok = pretrained.load_tokenizer(str(path / 'tokenizer'))
    assert tok.config.model.codebook_size == 64


def test_convert_magvit_transformer_of_another_size_is_refused(tmp_path):
  _, tok_flags, _ = _magvit_files(tmp_path)
  # The 2 x 4 x 4-token transformer against a tokenizer of 16 frames (8 x 4 x 4 tokens).
  result = _run(
    'magvit_jax.convert',
    'magvit',
    f'--tokenizer={tmp_path / "tok"}',
    f'--transformer={tmp_path / "single"}',
    f'--workdir={tmp_path / "w"}',
    '--tokenizer_config=configs/magvit_ucf101.py:official_B',
    *[f for f in tok_flags if 'num_frames' not in f],
  )
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr[-2000:]
  assert 'position_embeddings/embedding has 33 rows' in lines[0]
  assert not (tmp_path / 'w').exists()

"""compile_check: the real train step (and decode loop) compiled for a fake topology on CPU."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import tiny_configs
from magvit_jax import compile_check

# Compiles the tiny transformer step (with its frozen tokenizer) three times: over 20 s on 2 cores.
pytestmark = pytest.mark.slow

FIELDS = (
  'params / device',
  'optimizer / device',
  'frozen tokenizer / device',
  'batch / device',
  'temp / device',
  'total / device',
  'XLA FLOPs / device / step',
  'collective bytes / device / step',
)


def _value(text: str, field: str) -> str:
  m = re.search(r'^\| ' + re.escape(field) + r' +\| (.*) \|$', text, re.M)
  assert m, f'{field!r} missing from:\n{text}'
  return m.group(1)


def _bytes(text: str) -> float:
  number, unit = text.split()[:2]
  return float(number.replace(',', '')) * {'KiB': 2.0**10, 'MiB': 2.0**20, 'GiB': 2.0**30}[unit]


def test_cli_prints_the_table_for_a_small_topology(tmp_path):
  tok = tiny_configs.write_config_file(tmp_path / 'vq.py', 'vqgan')
  cfg = tiny_configs.write_config_file(tmp_path / 'mg.py', 'maskgit', tokenizer_workdir='unused')
  out = subprocess.run(
    [
      sys.executable,
      '-m',
      'magvit_jax.compile_check',
      f'--config={cfg}',
      f'--tokenizer_config={tok}',
      '--topology=cpu-8',
    ],
    capture_output=True,
    text=True,
    timeout=600,
    env=dict(os.environ, XLA_FLAGS=''),  # The CLI fakes the topology's 8 devices itself.
  )
  assert out.returncode == 0, out.stderr[-3000:]
  text = out.stdout
  assert '8 fake cpu devices' in _value(text, 'devices')
  assert _value(text, 'mesh') == 'data=2 fsdp=2 tensor=2'
  assert _value(text, 'global batch') == '16 (4 per device)'
  for field in FIELDS:
    if field == 'XLA FLOPs / device / step':
      assert float(_value(text, field)) > 0
    else:
      assert _bytes(_value(text, field)) > 0, field
  total = _bytes(_value(text, 'total / device'))
  assert total >= _bytes(_value(text, 'params / device'))
  assert re.search(
    r'decode \(4 steps, guidance 1.0\): XLA FLOPs +\| [0-9.e+]+ \(loop body once\) \|', text
  )
  assert re.search(r'^fits: yes \([0-9.]+ [KMG]iB of 2 GiB\)$', text, re.M)
  assert 'caveat:' in text


def test_per_device_memory_falls_as_fsdp_grows(tmp_path):
  tok = tiny_configs.vqgan()
  config = tiny_configs.maskgit(str(tmp_path / 'unused'))
  topology = compile_check.TOPOLOGIES['cpu-8']
  # Same global batch (16) on the first 4 and on all 8 fake CPU devices (tests/conftest.py).
  four = compile_check.Topology('cpu', 4, topology.hbm_bytes, None)
  small = compile_check.check(config, four, 'fsdp=4', tokenizer_config=tok, decode=False)
  large = compile_check.check(config, topology, 'fsdp=8', tokenizer_config=tok, decode=False)
  assert small['mesh'] == {'data': 1, 'fsdp': 4, 'tensor': 1}
  assert large['mesh'] == {'data': 1, 'fsdp': 8, 'tensor': 1}
  assert small['global_batch'] == large['global_batch'] == 16
  sm, lg = small['memory'], large['memory']
  assert sm['params'] + sm['optimizer'] > lg['params'] + lg['optimizer'] > 0
  assert sm['batch'] > lg['batch']
  assert sm['total'] > lg['total']
  assert small['flops'] > 0 and large['flops'] > 0
  assert sum(large['collectives'].values()) > 0
  assert large['fits']


def test_num_devices_scales_the_global_batch():
  config = tiny_configs.maskgit('unused')
  with pytest.raises(ValueError, match='not a whole batch'):
    compile_check.check(config, compile_check.TOPOLOGIES['v5e-256'], num_devices=8)


@pytest.mark.parametrize(
  'text, expected',
  [
    ('fsdp=8', {'data': -1, 'fsdp': 8, 'tensor': 1}),
    ('data=-1,fsdp=4,tensor=2', {'data': -1, 'fsdp': 4, 'tensor': 2}),
    ('data=2, fsdp=-1', {'data': 2, 'fsdp': -1, 'tensor': 1}),
  ],
)
def test_parse_mesh(text, expected):
  base = {'data': 2, 'fsdp': 2, 'tensor': 2, 'num_slices': 1}
  assert compile_check.parse_mesh(text, base) == dict(expected, num_slices=1)


def test_parse_mesh_rejects_unknown_axes():
  with pytest.raises(ValueError, match='axis=size'):
    compile_check.parse_mesh('model=4', {'data': -1})


def test_collective_bytes_of_hlo_text():
  hlo = '\n'.join(
    [
      '  %all-reduce.1 = f32[128,64]{1,0} all-reduce(f32[128,64]{1,0} %p), replica_groups={}',
      '  %ag = (bf16[4,8]{1,0}, bf16[32,8]{1,0}) all-gather-start(bf16[4,8]{1,0} %x)',
      '  %agd = bf16[32,8]{1,0} all-gather-done((bf16[4,8]{1,0}, bf16[32,8]{1,0}) %ag)',
      '  %t = (f32[2]{0}, s32[3]{0}) all-reduce(f32[2]{0} %a, s32[3]{0} %b)',
      '  %add = f32[2]{0} add(f32[2]{0} %a, f32[2]{0} %a)',
    ]
  )
  got = compile_check.collective_bytes(hlo)
  assert got['all-reduce'] == 128 * 64 * 4 + 2 * 4 + 3 * 4
  assert got['all-gather'] == 32 * 8 * 2
  assert got['reduce-scatter'] == 0

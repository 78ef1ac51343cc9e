r"""Will this config fit on that machine? Compile the real train step ahead of time and look.

  python -m magvit_jax.compile_check --config=configs/maskgit_imagenet.py --topology=v5e-256
  python -m magvit_jax.compile_check --config=configs/magvit_ucf101.py:L --topology=v4-64 \
      --mesh=data=-1,fsdp=8
  python -m magvit_jax.compile_check --config=configs/magvit2_tokenizer_video.py \
      --topology=v5p-128 --num_devices=16      # a 16-chip slice of it, same per-chip layout

Builds the trainers' own jitted step (`make_train_step` of trainers/transformer.py or
trainers/tokenizer.py, `ts.make_optimizer`, the sharded `TrainState` layout of
`ts.state_layout`, the same in/out shardings and state donation as `train_and_evaluate`) for the
config's global batch on a mesh over the topology's chips, lowers it with abstract inputs
(`jax.ShapeDtypeStruct`s carrying their shardings: no parameter is ever allocated) and compiles
it. For transformer configs the frozen tokenizer runs inside the step, as in training, and the
MaskGIT decode loop (`decoding.maskgit.decode`, the config's sampling settings, the same global
batch) is compiled too (`--decode=false` skips it). Printed per device:

  * memory: params, optimizer state, other state (EMA, discriminator), frozen tokenizer, batch
    (from the sharded abstract shapes: each array's shard size), temp (XLA's scratch:
    activations kept for the backward pass, gradients, fusion buffers) and the compiled total
    (arguments + outputs - donated aliases + temp); `fits: yes/no (X of Y GiB)` against the
    topology's HBM per chip;
  * FLOPs of one step (XLA's `cost_analysis`; for transformers also the analytic 3 x forward
    of the global batch / devices) and the step time they take at the chip's peak bf16 rate;
  * collective bytes: the output bytes of every all-reduce / all-gather / reduce-scatter /
    all-to-all / collective-permute of the optimized HLO, by kind (each op counted once as it
    appears in the program; one inside a loop body is counted once, not per trip).

The decode loop's rows: its temp and total memory, and FLOPs and collectives of one decoding
step (XLA's cost analysis counts the body of the `fori_loop` once).

How the devices are made: the CLI runs JAX on its CPU backend with the topology's chip count
(or `--num_devices`) of fake CPU devices (`jax_platforms=cpu` and `jax_num_cpu_devices`, set
before JAX starts a backend, so no re-exec is needed; they override
`XLA_FLAGS=--xla_force_host_platform_device_count`), and compiles for them. When libtpu is
installed, a TPU topology is compiled for through `jax.experimental.topologies.get_topology_desc`
instead (`--tpu_topology=false` turns that off; untested so far: it needs libtpu, and on failure
the fake CPU devices are used). In-process (`check`), the first devices of `jax.devices()` are
used (tests: the 8 fake devices of tests/conftest.py).

With `--num_devices=N` smaller than the topology, the global batch is scaled by N / chips so
the per-device batch, and with the same `fsdp` / `tensor` sizes the per-device shards, stay
those of the full topology; the printout says so.

Caveat: memory and FLOPs from a CPU compile approximate the TPU/GPU program (other fusion,
layouts, padding, rematerialisation and collective algorithms); use them for planning, and
confirm on the hardware.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import time
import warnings
from typing import Any

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags
from ml_collections import config_flags

from magvit_jax import cli_errors

GIB = 2.0**30


@dataclasses.dataclass(frozen=True)
class Topology:
  """A machine to plan for: `chips` devices of `hbm_bytes` memory and `peak_flops` bf16 FLOP/s.

  tpu_topology / chip_config: the topology name and chip config that
  `jax.experimental.topologies.get_topology_desc` takes (with chips_per_host_bounds=(2, 2, 1),
  as MaxText's accelerator_to_spec_map); None for GPUs and test machines, always faked on CPU.
  """

  device_kind: str
  chips: int
  hbm_bytes: float
  peak_flops: float | None
  tpu_topology: str | None = None
  chip_config: str = 'default'


# Cloud TPU names count TensorCores for v4 / v5p (2 per chip, 'megacore') and chips for v5e.
TOPOLOGIES = {
  'v5e-256': Topology('TPU v5 lite', 256, 16 * GIB, 197e12, 'v5e:16x16'),
  'v4-64': Topology('TPU v4', 32, 32 * GIB, 275e12, 'v4:2x4x4', 'megacore'),
  'v5p-128': Topology('TPU v5p', 64, 95 * GIB, 459e12, 'v5:4x4x4', 'megacore'),
  'h100x8': Topology('NVIDIA H100 80GB HBM3', 8, 80 * GIB, 989e12),
  # A small machine for tests and quick looks.
  'cpu-8': Topology('cpu', 8, 2 * GIB, None),
}

COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute')

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Config file (path[:variant]).', lock_config=True
)
_TOPOLOGY = flags.DEFINE_enum('topology', None, list(TOPOLOGIES), 'The machine to plan for.')
_MESH = flags.DEFINE_string(
  'mesh',
  None,
  "Mesh override, e.g. 'fsdp=8' or 'data=-1,fsdp=4,tensor=2' (default: config.mesh).",
)
_NUM_DEVICES = flags.DEFINE_integer(
  'num_devices',
  None,
  'Compile for this many of the topology chips (default: all), the global batch scaled by '
  'num_devices / chips.',
)
_TOKENIZER_CONFIG = flags.DEFINE_string(
  'tokenizer_config',
  None,
  'Transformer configs: the tokenizer config (path[:variant]) whose token grid it is trained on '
  '(default: config.tokenizer_workdir when it holds a run, else the matching config file: '
  'maskgit_imagenet -> vqgan_imagenet, magvit_<data>:B -> magvit_<data>:tokenizer_B, '
  'magvit2_transformer -> magvit2_tokenizer_video).',
)
_DECODE = flags.DEFINE_bool('decode', True, 'Transformer configs: also compile the decode loop.')
_TPU_TOPOLOGY = flags.DEFINE_bool(
  'tpu_topology',
  True,
  "Compile against jax's TPU topology description when libtpu is installed (else fake CPU "
  'devices).',
)


# ---------------------------------------------------------------------------------------------
# Measuring a compiled program.


def shard_bytes(tree: Any) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs / arrays (largest shard)."""
  import jax  # pylint: disable=g-import-not-at-top

  total = 0
  for x in jax.tree_util.tree_leaves(tree):
    sharding = getattr(x, 'sharding', None)
    shape = sharding.shard_shape(x.shape) if sharding is not None else x.shape
    total += math.prod(shape) * x.dtype.itemsize
  return total


_DTYPE_BYTES = {
  'pred': 1,
  's8': 1,
  'u8': 1,
  's16': 2,
  'u16': 2,
  'f16': 2,
  'bf16': 2,
  's32': 4,
  'u32': 4,
  'f32': 4,
  's64': 8,
  'u64': 8,
  'f64': 8,
  'c64': 8,
  'c128': 16,
}
_SHAPE = re.compile(r'\b(' + '|'.join(_DTYPE_BYTES) + r')\[([\d,]*)\]')
_OP = re.compile(r'=\s*(.*?)\s(' + '|'.join(COLLECTIVES) + r')(-start)?\(')


def collective_bytes(hlo_text: str) -> dict[str, int]:
  """{kind: output bytes} of the collectives of an optimized HLO module's text.

  Async pairs are counted at their `-start` (whose tuple holds the operand and the result for
  all-gather / collective-permute: only the result is counted); `-done` ops are skipped.
  """
  out = {k: 0 for k in COLLECTIVES}
  for line in hlo_text.splitlines():
    m = _OP.search(line)
    if not m:
      continue
    shapes = [
      math.prod(int(d) for d in dims.split(',') if d) * _DTYPE_BYTES[dt]
      for dt, dims in _SHAPE.findall(m.group(1))
    ]
    if m.group(3) and m.group(2) in ('all-gather', 'collective-permute') and len(shapes) >= 2:
      shapes = [shapes[1]]
    out[m.group(2)] += sum(shapes)
  return out


def program_stats(compiled) -> dict[str, Any]:
  """Per-device memory (XLA's plan), FLOPs and collective bytes of a compiled program."""
  m = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  cost = cost or {}
  return {
    'argument_bytes': int(m.argument_size_in_bytes),
    'output_bytes': int(m.output_size_in_bytes),
    'alias_bytes': int(m.alias_size_in_bytes),
    'temp_bytes': int(m.temp_size_in_bytes),
    'total_bytes': int(
      m.argument_size_in_bytes
      + m.output_size_in_bytes
      - m.alias_size_in_bytes
      + m.temp_size_in_bytes
    ),
    'flops': float(cost.get('flops', 0.0)),
    'bytes_accessed': float(cost.get('bytes accessed', 0.0)),
    'collectives': collective_bytes(compiled.as_text()),
  }


# ---------------------------------------------------------------------------------------------
# The programs, built from the trainers' functions.


def parse_mesh(text: str | None, config_mesh: Any) -> dict[str, int]:
  """config.mesh with the `--mesh` 'axis=size,...' entries applied (other axes then 1)."""
  mesh = dict(config_mesh)
  if not text:
    return mesh
  given = {}
  for part in text.split(','):
    key, sep, value = part.partition('=')
    key = key.strip()
    if not sep or key not in ('data', 'fsdp', 'tensor', 'num_slices'):
      raise ValueError(
        f"--mesh={text!r}: expected comma-separated 'axis=size' with axis in data, fsdp, tensor, "
        'num_slices'
      )
    try:
      given[key] = int(value)
    except ValueError:
      raise ValueError(f'--mesh={text!r}: {key} size {value!r} is not an integer') from None
  for axis in ('data', 'fsdp', 'tensor'):
    mesh[axis] = given.get(axis, 1)
  if -1 not in mesh.values() and 'data' not in given:
    mesh['data'] = -1
  if 'num_slices' in given:
    mesh['num_slices'] = given['num_slices']
  return mesh


def tokenizer_config_spec(config_spec: str) -> str:
  """The tokenizer config file whose token grid the transformer config `config_spec` uses."""
  name, _, arg = config_spec.partition(':')
  stem = os.path.basename(name).removesuffix('.py')
  if stem == 'maskgit_imagenet':
    return 'vqgan_imagenet.py' + (f':{arg}' if arg else '')
  if stem == 'magvit2_transformer':
    return 'magvit2_tokenizer_video.py' + (f':{arg}' if arg else '')
  if stem.startswith('magvit_'):
    return f'{stem}.py:tokenizer_{arg or "B"}'
  raise ValueError(
    f'no known tokenizer config for the transformer config {config_spec!r}; pass '
    '--tokenizer_config=FILE[:VARIANT]'
  )


def resolve_tokenizer_config(config, config_spec: str | None, tokenizer_spec: str | None):
  """--tokenizer_config, else the run in config.tokenizer_workdir, else the matching file."""
  from magvit_jax import pretrained  # pylint: disable=g-import-not-at-top
  from magvit_jax.config_loader import load_config  # pylint: disable=g-import-not-at-top

  if tokenizer_spec:
    return load_config(tokenizer_spec)
  workdir = config.get('tokenizer_workdir')
  if workdir and os.path.exists(os.path.join(str(workdir), 'config.json')):
    return pretrained.read_config(str(workdir), 'tokenizer')
  if not config_spec:
    raise ValueError('transformer config: pass --tokenizer_config=FILE[:VARIANT]')
  return load_config(tokenizer_config_spec(config_spec))


def _abstract_batch(example_shapes: dict[str, tuple[Any, tuple[int, ...]]], batch: int, mesh):
  import jax  # pylint: disable=g-import-not-at-top

  from magvit_jax import parallel  # pylint: disable=g-import-not-at-top

  return {
    k: jax.ShapeDtypeStruct((batch,) + shape, dtype, sharding=parallel.batch_sharding(mesh))
    for k, (dtype, shape) in example_shapes.items()
  }


def _replicated_abstract(tree, mesh):
  import jax  # pylint: disable=g-import-not-at-top

  from magvit_jax import parallel  # pylint: disable=g-import-not-at-top

  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  rep = parallel.replicated(mesh)
  return jax.tree_util.tree_map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), nn.unbox(tree)
  )


def build_programs(config, mesh, global_batch: int, tokenizer_config=None, decode: bool = True):
  """[(name, jitted fn, abstract args, kwargs)], the state / tokenizer / batch parts, and notes."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from magvit_jax import parallel  # pylint: disable=g-import-not-at-top
  from magvit_jax.models import tokenizers  # pylint: disable=g-import-not-at-top
  from magvit_jax.trainers import train_state as ts  # pylint: disable=g-import-not-at-top

  tx = ts.make_optimizer(config.optimizer)
  rules = config.logical_axis_rules
  parts: dict[str, Any] = {}
  notes: list[str] = []
  programs = []
  if config.stage == 'tokenizer':
    from magvit_jax.trainers import tokenizer as trainer  # pylint: disable=g-import-not-at-top
    from magvit_jax.trainers.adversarial import Adversarial  # pylint: disable=g-import-not-at-top

    model = tokenizers.build_tokenizer(config.model)
    shape = tokenizers.input_shape(config)
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # "Perceptual loss disabled": said in the notes.
      adv = Adversarial(config, shape)
    _, shardings, abstract = ts.state_layout(
      tokenizers.init_params(model, config), tx, mesh, rules, adv.init_extra
    )
    key = 'video' if len(shape) == 4 else 'image'
    batch = _abstract_batch({key: (jnp.uint8, shape), 'label': (jnp.int32, ())}, global_batch, mesh)
    step = trainer.make_train_step(model, tx, config.losses, adv)
    if adv.perceptual_weight and adv.perceptual is None:
      notes.append('perceptual loss off (its weights file, VGG or ResNet-50, is absent)')
    if config.get('image_every'):
      notes.append('video step only (the image steps of joint training are a smaller program)')
  else:
    from magvit_jax.decoding import maskgit  # pylint: disable=g-import-not-at-top
    from magvit_jax.models import transformer as transformer_model
    from magvit_jax.trainers import transformer as trainer  # pylint: disable=g-import-not-at-top

    tok_cfg = tokenizer_config
    trainer.check_tokenizer_matches(config, tok_cfg)
    trainer.check_commit(config, tok_cfg)
    tok_module = tokenizers.build_tokenizer(tok_cfg.model)
    tok_params = _replicated_abstract(
      jax.eval_shape(tokenizers.init_params(tok_module, tok_cfg), jax.random.PRNGKey(0)), mesh
    )
    parts['tokenizer'] = tok_params
    tokenize = tokenizers.make_tokenize_fn(tok_module)
    model = transformer_model.build_transformer(config.model, tokenizers.num_tokens(tok_cfg))
    _, shardings, abstract = ts.state_layout(
      lambda rng: model.init(rng, *model.dummy_inputs())['params'], tx, mesh, rules
    )
    shape = tokenizers.input_shape(tok_cfg)
    key = 'video' if len(shape) == 4 else 'image'
    batch = _abstract_batch({key: (jnp.uint8, shape), 'label': (jnp.int32, ())}, global_batch, mesh)
    if trainer.commit_tasks(config):
      notes.append(f'COMMIT step, tasks {", ".join(trainer.commit_tasks(config))}')

    # The trainers close over the tokenizer's params; here they are an argument (abstract).
    def with_tokenizer(make):
      def fn(state, batch, tok_params):
        return make(tok_params)(state, batch)

      return fn

    if trainer.commit_tasks(config):
      train_fn = with_tokenizer(
        lambda p: trainer.make_commit_train_step(
          model,
          tokenize,
          p,
          tx,
          config,
          tokenizers.token_shape(tok_cfg),
          causal=tokenizers.is_causal(tok_cfg.model),
        )
      )
    else:
      train_fn = with_tokenizer(lambda p: trainer.make_train_step(model, tokenize, p, tx, config))
    rep = parallel.replicated(mesh)
    jitted = jax.jit(
      train_fn,
      in_shardings=(shardings, parallel.batch_sharding(mesh), rep),
      out_shardings=(shardings, rep),
      donate_argnums=(0,),
    )
    programs.append(('train step', jitted, (abstract, batch, tok_params), {}))
    parts.update(state=abstract, batch=batch, model=model)
    if decode:
      s = config.sampling

      def apply_fn(p, tokens, y, tasks=None):
        return model.apply({'params': p}, tokens, y, tasks, deterministic=True)

      bs = parallel.batch_sharding(mesh)
      tokens = jax.ShapeDtypeStruct((global_batch, model.seq_len), jnp.int32, sharding=bs)
      labels = jax.ShapeDtypeStruct((global_batch,), jnp.int32, sharding=bs)
      extra = {}
      if model.num_tasks:
        extra['tasks'] = labels
        extra['condition_tokens'] = tokens
        notes.append('decode: with COMMIT task ids and condition tokens')
      rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep)

      def decode_fn(params, rng, tokens, labels, **extra):
        return maskgit.decode(
          apply_fn,
          params,
          rng,
          tokens,
          labels,
          mask_token_id=model.mask_token_id,
          num_steps=int(s.num_steps),
          schedule=str(s.schedule),
          choice_temperature=float(s.choice_temperature),
          temperature=float(s.temperature),
          guidance_scale=float(s.guidance_scale),
          null_label=model.null_label,
          **extra,
        )

      programs.append(
        (
          f'decode ({int(s.num_steps)} steps, guidance {float(s.guidance_scale)})',
          jax.jit(decode_fn),
          (abstract.params, rng, tokens, labels),
          extra,
        )
      )
    return programs, parts, notes
  jitted = jax.jit(
    step,
    in_shardings=(shardings, parallel.batch_sharding(mesh)),
    out_shardings=(shardings, parallel.replicated(mesh)),
    donate_argnums=(0,),
  )
  programs.append(('train step', jitted, (abstract, batch), {}))
  parts.update(state=abstract, batch=batch, model=model)
  return programs, parts, notes


# ---------------------------------------------------------------------------------------------
# The check.


def topology_devices(topology: Topology, num_devices: int, use_tpu_topology: bool = True):
  """(devices to compile for, how they were made): a TPU topology description when libtpu can
  give one, else the first `num_devices` of JAX's (fake) CPU devices."""
  import jax  # pylint: disable=g-import-not-at-top

  if use_tpu_topology and topology.tpu_topology:
    try:
      from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

      desc = topologies.get_topology_desc(
        topology.tpu_topology,
        'tpu',
        chip_config_name=topology.chip_config,
        chips_per_host_bounds=(2, 2, 1),
        num_slices=1,
      )
      devices = list(desc.devices)
      if len(devices) >= num_devices:
        return devices[:num_devices], f'TPU topology description {topology.tpu_topology}'
    except Exception:  # pylint: disable=broad-except  # No libtpu: fake CPU devices below.
      pass
  devices = jax.devices()
  if len(devices) < num_devices:
    raise ValueError(
      f'{num_devices} devices needed, {len(devices)} {devices[0].platform} devices available: '
      'run the compile_check CLI (it sets jax_num_cpu_devices before JAX starts) or pass '
      '--num_devices'
    )
  return devices[:num_devices], f'{num_devices} fake {devices[0].platform} devices'


def check(
  config,
  topology: Topology,
  mesh_text: str | None = None,
  num_devices: int | None = None,
  tokenizer_config=None,
  decode: bool = True,
  use_tpu_topology: bool = True,
) -> dict[str, Any]:
  """Compiles the config's train step (and decode loop) for `topology`; returns the report.

  Report keys: devices, device_source, device_kind, mesh, global_batch, batch_per_device,
  memory (per-device bytes: params, optimizer, other_state, tokenizer, batch, temp, total),
  hbm_bytes, fits,
  flops, analytic_flops (transformers), collectives ({kind: bytes}), compile_s, programs
  ({name: program_stats}), notes.
  """
  from magvit_jax import parallel  # pylint: disable=g-import-not-at-top

  n = int(num_devices or topology.chips)
  if n < 1 or n > topology.chips:
    raise ValueError(f'--num_devices={n}: expected 1..{topology.chips} (the topology)')
  global_batch = int(config.batch_size)
  notes = []
  if n != topology.chips:
    scaled = global_batch * n / topology.chips
    if scaled != int(scaled) or scaled < 1:
      raise ValueError(
        f'--num_devices={n}: config.batch_size={global_batch} x {n} / {topology.chips} chips '
        'is not a whole batch'
      )
    notes.append(
      f'{n} of {topology.chips} chips: global batch {global_batch} scaled to {int(scaled)} '
      '(same per-device batch)'
    )
    global_batch = int(scaled)
  devices, source = topology_devices(topology, n, use_tpu_topology)
  mesh_shape = parse_mesh(mesh_text, config.mesh)
  mesh = parallel.make_mesh(mesh_shape, devices=devices)
  dp = parallel.data_parallel_size(mesh)
  if global_batch % dp:
    raise ValueError(
      f'global batch {global_batch} is not divisible by the data-parallel size data*fsdp={dp} '
      f'of the mesh {dict(mesh.shape)}'
    )
  if config.stage == 'transformer' and tokenizer_config is None:
    raise ValueError('a transformer config needs its tokenizer config (tokenizer_config=...)')
  programs, parts, more_notes = build_programs(config, mesh, global_batch, tokenizer_config, decode)
  notes += more_notes
  report: dict[str, Any] = {
    'devices': n,
    'device_source': source,
    'device_kind': topology.device_kind,
    'mesh': dict(mesh.shape),
    'global_batch': global_batch,
    'batch_per_device': global_batch // dp,
    'hbm_bytes': topology.hbm_bytes,
    'peak_flops': topology.peak_flops,
    'programs': {},
    'notes': notes,
  }
  from magvit_jax import parallel  # pylint: disable=g-import-not-at-top

  for name, fn, args, kwargs in programs:
    t0 = time.perf_counter()
    # Traced under the same activation-sharding rules as training (trainers/transformer.py).
    with parallel.activation_sharding(mesh, config.logical_axis_rules):
      lowered = fn.lower(*args, **kwargs)
    compiled = lowered.compile()
    stats = program_stats(compiled)
    stats['compile_s'] = time.perf_counter() - t0
    report['programs'][name] = stats
  train = report['programs']['train step']
  state = parts['state']
  memory = {
    'params': shard_bytes(state.params),
    'optimizer': shard_bytes(state.opt_state),
    'other_state': shard_bytes((state.step, state.rng, state.ema_params, state.disc)),
    'tokenizer': shard_bytes(parts.get('tokenizer')),
    'batch': shard_bytes(parts['batch']),
    'temp': train['temp_bytes'],
    'total': train['total_bytes'],
  }
  report['memory'] = memory
  report['fits'] = memory['total'] <= topology.hbm_bytes
  report['flops'] = train['flops']
  report['collectives'] = train['collectives']
  report['compile_s'] = train['compile_s']
  if config.stage == 'transformer':
    from magvit_jax.models.transformer import forward_flops  # pylint: disable=g-import-not-at-top

    report['analytic_flops'] = 3.0 * forward_flops(parts['model'], global_batch) / n
  return report


def _gib(x: float) -> str:
  if x < 2**20:
    return f'{x / 2**10:,.2f} KiB'
  if x < GIB:
    return f'{x / 2**20:,.2f} MiB'
  return f'{x / GIB:,.2f} GiB'


def format_report(report: dict[str, Any], title: str) -> str:
  """The printed table of `check`'s report."""
  m = report['memory']
  rows = [
    ('devices', f'{report["devices"]} x {report["device_kind"]} ({report["device_source"]})'),
    ('mesh', ' '.join(f'{k}={v}' for k, v in report['mesh'].items())),
    ('global batch', f'{report["global_batch"]} ({report["batch_per_device"]} per device)'),
    ('params / device', _gib(m['params'])),
    ('optimizer / device', _gib(m['optimizer'])),
    ('other state / device', _gib(m['other_state'])),
    ('frozen tokenizer / device', _gib(m['tokenizer'])),
    ('batch / device', _gib(m['batch'])),
    ('temp / device', _gib(m['temp'])),
    ('total / device', _gib(m['total'])),
  ]
  flops = report['flops']
  rows.append(('XLA FLOPs / device / step', f'{flops:.4g}'))
  if 'analytic_flops' in report:
    rows.append(('analytic FLOPs / device / step', f'{report["analytic_flops"]:.4g} (3 x forward)'))
  if report['peak_flops']:
    best = max(flops, report.get('analytic_flops', 0.0))
    rows.append(('step time at peak', f'{best / report["peak_flops"] * 1e3:.1f} ms (100% MFU)'))
  coll = report['collectives']
  rows.append(('collective bytes / device / step', _gib(sum(coll.values()))))
  for kind, b in coll.items():
    if b:
      rows.append((f'  {kind}', _gib(b)))
  rows.append(('compile s', f'{report["compile_s"]:.1f}'))
  for name, stats in report['programs'].items():
    if name == 'train step':
      continue
    rows.append(
      (f'{name}: temp / total', f'{_gib(stats["temp_bytes"])} / {_gib(stats["total_bytes"])}')
    )
    rows.append((f'{name}: XLA FLOPs', f'{stats["flops"]:.4g} (loop body once)'))
    rows.append((f'{name}: collective bytes', _gib(sum(stats['collectives'].values()))))
  width = max(len(k) for k, _ in rows)
  lines = [title, f'| {"quantity".ljust(width)} | value |', f'|{"-" * (width + 2)}|-------|']
  lines += [f'| {k.ljust(width)} | {v} |' for k, v in rows]
  verdict = 'yes' if report['fits'] else 'NO'
  lines.append(f'fits: {verdict} ({_gib(m["total"])} of {report["hbm_bytes"] / GIB:,.0f} GiB)')
  for note in report['notes']:
    lines.append(f'note: {note}')
  lines.append(
    'caveat: memory and FLOPs of a CPU compile approximate the TPU/GPU program (other fusion, '
    'layouts, collective algorithms): numbers for planning.'
  )
  return '\n'.join(lines)


def _config_spec(argv: list[str]) -> str | None:
  return next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)


def main(argv):
  if len(argv) > 1:
    raise ValueError(f'unexpected arguments: {argv[1:]}')
  import jax  # pylint: disable=g-import-not-at-top

  topology = TOPOLOGIES[_TOPOLOGY.value]
  n = int(_NUM_DEVICES.value or topology.chips)
  try:  # Before JAX starts a backend (then final); where one has started, its devices are used.
    jax.config.update('jax_platforms', 'cpu')
    jax.config.update('jax_num_cpu_devices', n)
  except RuntimeError:
    pass
  config = cli_errors.config_value(_CONFIG)
  spec = _config_spec(sys.argv)
  tok_cfg = None
  if config.stage == 'transformer':
    tok_cfg = resolve_tokenizer_config(config, spec, _TOKENIZER_CONFIG.value)
  report = check(
    config,
    topology,
    _MESH.value,
    n,
    tok_cfg,
    decode=_DECODE.value,
    use_tpu_topology=_TPU_TOPOLOGY.value,
  )
  print(format_report(report, f'compile_check: {spec} on {_TOPOLOGY.value}'), flush=True)


if __name__ == '__main__':
  # Required only when run as the command: tests import this module beside other CLIs' flags.
  flags.mark_flags_as_required(['config', 'topology'])
  cli_errors.run(main)

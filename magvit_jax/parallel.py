"""Device mesh, logical-axis sharding rules and batch placement.

Sharding is declared once: modules annotate parameters with logical axis names
(`nn.with_logical_partitioning`); the config's `logical_axis_rules` table maps
each logical name to mesh axes ('data', 'fsdp', 'tensor'). The same code runs
on one CPU, 8 fake CPU devices, one GPU and a TPU pod.

Multi-host: `initialize_distributed` starts `jax.distributed` when the launch
asks for it (`--multihost` or `MAGVIT_MULTIHOST=1`); every process then runs
the same program on its own slice of the global batch. `describe_runtime`
is the line each process logs at the start of training, and
`any_process` is how the processes agree on a host-side flag (preemption).
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import math
import os
import socket
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
from jax.experimental import mesh_utils
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')


def _resolve_sizes(shape: dict[str, int], num_devices: int) -> list[int]:
  """Axis sizes in MESH_AXES order with a -1 replaced; validates against `num_devices`."""
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(
      f'config.mesh has unknown axes {sorted(unknown)}; expected {MESH_AXES} (and num_slices)'
    )
  sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f'config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(
        f'config.mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices are '
        f'not divisible by {known}'
      )
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(
      f'config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, '
      f'{num_devices} are available'
    )
  return sizes


class _SliceTagged:
  """A device seen through `slice_of`: `.slice_index` from it, everything else forwarded."""

  def __init__(self, device: Any, slice_index: int):
    self.device = device
    self.slice_index = slice_index

  def __getattr__(self, name: str) -> Any:
    return getattr(self.device, name)


def multislice_device_array(
  devices: Sequence[Any],
  sizes: Sequence[int],
  num_slices: int,
  slice_of: Callable[[Any], int] | None = None,
) -> np.ndarray:
  """Devices arranged [data, fsdp, tensor] with `data` across slices (DCN), the rest within.

  Device `i` of axis `data` lies in slice `i // (data / num_slices)`; within a slice the
  [data / num_slices, fsdp, tensor] block is laid out by
  `jax.experimental.mesh_utils.create_hybrid_device_mesh` (topology-aware on TPU).

  Args:
    devices: every device of the job.
    sizes: resolved (data, fsdp, tensor) sizes; their product is len(devices).
    num_slices: `config.mesh.num_slices` (> 1).
    slice_of: device -> slice id; default the device's `slice_index` (set on multislice TPU
      jobs). Tests inject fake ids here; a multi-node GPU job could pass
      `lambda d: d.process_index`.

  Raises:
    ValueError: naming the mesh.* fields when the shape does not fit the slices.
  """
  data, fsdp, tensor = sizes
  if data % num_slices:
    raise ValueError(
      f'config.mesh.data={data} must be a multiple of config.mesh.num_slices='
      f'{num_slices}: `data` is the axis that spans the slices (DCN)'
    )
  if slice_of is None and not all(hasattr(d, 'slice_index') for d in devices):
    raise ValueError(
      f'config.mesh.num_slices={num_slices} but the devices have no `slice_index` '
      f'({devices[0].platform} {devices[0].device_kind}): not a multislice TPU job. '
      'Set config.mesh.num_slices=1.'
    )
  ids = [int(d.slice_index if slice_of is None else slice_of(d)) for d in devices]
  per_slice = collections.Counter(ids)
  if len(per_slice) != num_slices or len(set(per_slice.values())) != 1:
    found = ', '.join(f'slice {k}: {v}' for k, v in sorted(per_slice.items()))
    raise ValueError(
      f'config.mesh.num_slices={num_slices}, but the {len(devices)} devices come '
      f'from {len(per_slice)} slice(s) of sizes ({found}); set '
      f'config.mesh.num_slices={len(per_slice)} (slices must be equal in size)'
    )
  ici_shape, dcn_shape = (data // num_slices, fsdp, tensor), (num_slices, 1, 1)
  if slice_of is None:  # Real multislice devices: hand them over untouched.
    return mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices)
  tagged = [_SliceTagged(d, i) for d, i in zip(devices, ids)]
  arranged = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, tagged)
  return np.vectorize(lambda t: t.device, otypes=[object])(arranged)


def make_mesh(
  mesh_shape: dict[str, int] | Any,
  devices: Sequence[jax.Device] | None = None,
  slice_of: Callable[[Any], int] | None = None,
) -> Mesh:
  """Builds a ('data', 'fsdp', 'tensor') mesh.

  mesh_shape: mapping from axis name to size; at most one size may be -1,
    meaning "all remaining devices". An optional `num_slices` (default 1;
    absent in older configs) > 1 makes a multislice mesh: `data` spans the
    slices over DCN, `fsdp` and `tensor` stay within a slice (ICI); see
    `multislice_device_array`. With 1 the devices are reshaped in order.
  slice_of: device -> slice id, only used with num_slices > 1 (default: the
    device's `slice_index`).
  """
  devices = list(devices if devices is not None else jax.devices())
  shape = dict(mesh_shape)
  num_slices = shape.pop('num_slices', 1)
  num_slices = 1 if num_slices is None else int(num_slices)
  if num_slices < 1:
    raise ValueError(f'config.mesh.num_slices must be >= 1, got {num_slices}')
  if len(devices) % num_slices:
    raise ValueError(
      f'config.mesh.num_slices={num_slices}: {len(devices)} devices are not '
      f'divisible by {num_slices}'
    )
  sizes = _resolve_sizes(shape, len(devices))
  if num_slices == 1:
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)
  return Mesh(multislice_device_array(devices, sizes, num_slices, slice_of), MESH_AXES)


def rules_tuple(rules: Any) -> tuple[tuple[str, Any], ...]:
  """Config rule table (list of [logical, mesh axes or None]) -> tuple of pairs."""
  out = []
  for logical, mesh_axes in rules:
    if isinstance(mesh_axes, list):
      mesh_axes = tuple(mesh_axes)
    out.append((logical, mesh_axes))
  return tuple(out)


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules: Any) -> Any:
  """NamedShardings for a tree whose leaves may be `nn.LogicallyPartitioned`.

  Leaves without logical annotations are replicated.
  """
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules_tuple(rules))


def sharded_abstract(boxed_tree: Any, mesh: Mesh, rules: Any) -> tuple[Any, Any]:
  """(abstract tree, shardings) of an `eval_shape`d tree whose leaves may be logically boxed:
  ShapeDtypeStructs carrying the NamedShardings of the rule table (a restore target)."""
  shardings = logical_shardings(boxed_tree, mesh, rules)
  abstract = jax.tree_util.tree_map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
    nn.unbox(boxed_tree),
    shardings,
  )
  return abstract, shardings


_ACTIVATION_SHARDING: contextvars.ContextVar[tuple[Mesh, tuple] | None] = contextvars.ContextVar(
  'activation_sharding', default=None
)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Any) -> Iterator[None]:
  """Context in which `constrain` constrains activations on `mesh` by the rule table `rules`.

  Enter it around the first call (the trace) of a jitted function whose model calls
  `constrain`; outside it `constrain` is the identity. jit's trace cache does not key on this
  context: a function traced outside it keeps its unconstrained trace. The mesh is handed to
  the constraints directly rather than set globally (`jax.set_mesh`): with a global mesh, flax
  would also constrain parameter initialisers and trip on DenseGeneral's flattened kernels.
  """
  token = _ACTIVATION_SHARDING.set((mesh, rules_tuple(rules)))
  try:
    yield
  finally:
    _ACTIVATION_SHARDING.reset(token)


def constrain(x: jax.Array, logical_axes: tuple[str | None, ...]) -> jax.Array:
  """Sharding constraint on an activation by logical axis names, e.g. ('batch', 'length', 'embed').

  Mapped to mesh axes by the rule table of `activation_sharding`: the `batch` rule gives the
  leading axis; a mesh axis already taken under an earlier rule leaves the axis unsharded (with
  the default table `embed` -> 'fsdp' stays unsharded because `batch` uses 'fsdp'). Outside
  `activation_sharding` this is flax's `nn.with_logical_constraint` (the identity unless flax's
  own rules and a global mesh are set).
  """
  active = _ACTIVATION_SHARDING.get()
  if active is None:
    return nn.with_logical_constraint(x, logical_axes)
  mesh, rules = active
  return nn.with_logical_constraint(x, logical_axes, rules=rules, mesh=mesh)


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """Leading (batch) axis split over ('data', 'fsdp'), the rest replicated."""
  return NamedSharding(mesh, P(('data', 'fsdp'), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Per-process numpy batch -> global jax.Arrays sharded over ('data', 'fsdp').

  Each process passes its own slice of the global batch (`[local_batch, ...]`);
  the global batch is their concatenation in process order.
  """

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)

  return jax.tree_util.tree_map(put, batch)


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape['data'] * mesh.shape['fsdp']


def check_batch_size(global_batch: int, mesh: Mesh, field: str = 'config.batch_size') -> int:
  """Validates the global batch against the mesh and process count; returns the per-process batch."""
  dp = data_parallel_size(mesh)
  if global_batch % dp:
    raise ValueError(
      f'{field}={global_batch} must be divisible by the data-parallel size data*fsdp={dp}'
    )
  if global_batch % jax.process_count():
    raise ValueError(
      f'{field}={global_batch} must be divisible by the process count {jax.process_count()}'
    )
  return global_batch // jax.process_count()


MULTIHOST_ENV = 'MAGVIT_MULTIHOST'


def multihost_requested(flag: bool = False) -> bool:
  """True when `flag` is set or the environment has `MAGVIT_MULTIHOST` = 1/true/yes."""
  env = os.environ.get(MULTIHOST_ENV, '').strip().lower()
  return bool(flag) or env in ('1', 'true', 'yes')


def initialize_distributed(
  multihost: bool = False,
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> bool:
  """Joins this process to a multi-process JAX job when asked to; a no-op otherwise.

  Must run before anything touches a JAX backend (first device query or
  computation). With `multihost` false and `MAGVIT_MULTIHOST` unset nothing
  happens (one machine). Otherwise `jax.distributed.initialize` is called with
  the arguments that were given; the missing ones are auto-detected by JAX
  (TPU VM pod slices, SLURM, Open MPI; or the `JAX_COORDINATOR_ADDRESS` env).
  JAX's own SIGTERM preemption service is turned off: the training loop
  handles SIGTERM itself (see `magvit_jax.trainers.loop`).

  Args:
    multihost: the `--multihost` flag.
    coordinator_address: 'host:port' of process 0's coordinator, or None.
    num_processes: total number of processes, or None.
    process_id: this process's index in [0, num_processes), or None.

  Returns:
    True when `jax.distributed` is (now) initialized, False on one machine.
  """
  if not multihost_requested(multihost):
    return False
  if jax.distributed.is_initialized():
    return True
  if (num_processes is None) != (process_id is None):
    raise ValueError(
      '--num_processes and --process_id must be given together '
      f'(got num_processes={num_processes}, process_id={process_id})'
    )
  if process_id is not None and not 0 <= process_id < num_processes:
    raise ValueError(f'--process_id={process_id} not in [0, --num_processes={num_processes})')
  jax.config.update('jax_enable_preemption_service', False)
  jax.distributed.initialize(
    coordinator_address=coordinator_address or None,
    num_processes=num_processes,
    process_id=process_id,
  )
  return True


def describe_runtime(mesh: Mesh) -> str:
  """One line: process index/count, host, local/global devices and the mesh shape."""
  devices = jax.devices()
  local = jax.local_devices()
  mesh_shape = ' '.join(f'{k}={v}' for k, v in mesh.shape.items())
  local_ids = {d.id for d in local}
  in_mesh = sum(1 for d in mesh.devices.flat if d.id in local_ids)
  return (
    f'process {jax.process_index()}/{jax.process_count()} on {socket.gethostname()}: '
    f'{len(local)} local / {len(devices)} global {devices[0].platform} devices '
    f'({local[0].device_kind}); mesh {mesh_shape} ({mesh.devices.size} devices, '
    f'{in_mesh} of them local); data-parallel size {data_parallel_size(mesh)}'
  )


def gather_ints(values: list[int]) -> np.ndarray:
  """int64 [process_count, len(values)]: every process's `values`, on every process.

  A collective (every process calls it at the same point); on one process no device work.
  """
  local = np.asarray(values, np.int64).reshape(1, -1)
  if jax.process_count() == 1:
    return local
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  # Sent as two int32 halves: without jax_enable_x64 an int64 would be cut to 32 bits.
  halves = np.concatenate([local[0] >> 31, local[0] & (2**31 - 1)]).astype(np.int32)
  got = np.asarray(multihost_utils.process_allgather(halves), np.int64)
  got = got.reshape(jax.process_count(), 2, -1)
  return (got[:, 0] << 31) | got[:, 1]


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is true on any process.

  A collective: every process must call it at the same point of the program.
  On one process it is just `flag` (no device work).
  """
  return bool(gather_ints([int(bool(flag))]).max())

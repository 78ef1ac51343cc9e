"""Device mesh, logical-axis sharding rules and batch placement.

Sharding is declared once: modules annotate parameters with logical axis names
(`nn.with_logical_partitioning`); the config's `logical_axis_rules` table maps
each logical name to mesh axes ('data', 'fsdp', 'tensor'). The same code runs
on one CPU, 8 fake CPU devices, one GPU and a TPU pod.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')


def make_mesh(mesh_shape: dict[str, int] | Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a ('data', 'fsdp', 'tensor') mesh.

  mesh_shape: mapping from axis name to size; at most one size may be -1,
    meaning "all remaining devices".
  """
  devices = list(devices if devices is not None else jax.devices())
  shape = dict(mesh_shape)
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f'config.mesh has unknown axes {sorted(unknown)}; expected {MESH_AXES}')
  sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f'config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f'config.mesh {dict(zip(MESH_AXES, sizes))}: {len(devices)} devices are '
                       f'not divisible by {known}')
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f'config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, '
                     f'{len(devices)} are available')
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


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
    raise ValueError(f'{field}={global_batch} must be divisible by the data-parallel size '
                     f'data*fsdp={dp}')
  if global_batch % jax.process_count():
    raise ValueError(f'{field}={global_batch} must be divisible by the process count '
                     f'{jax.process_count()}')
  return global_batch // jax.process_count()

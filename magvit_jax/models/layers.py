"""Convolutional building blocks shared by the tokenizers.

All modules take channels-last activations: images `[batch, h, w, c]` float32.
Parameters carry logical axis names (`conv_h`, `conv_w`, `conv_in`, `conv_out`,
`norm`), mapped to the mesh by the rule table in the config.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from magvit_jax.models.transformer import remat_policy as _remat_policy


def conv(
  features: int,
  kernel_size: Sequence[int],
  name: str | None = None,
  strides: Sequence[int] | None = None,
  dtype=jnp.float32,
) -> nn.Conv:
  """Conv with SAME padding and logically-partitioned kernel/bias."""
  spatial = tuple(f'conv_{i}' for i in range(len(kernel_size)))
  return nn.Conv(
    features,
    tuple(kernel_size),
    strides=strides,
    padding='SAME',
    dtype=dtype,
    kernel_init=nn.with_logical_partitioning(
      nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal'),
      spatial + ('conv_in', 'conv_out'),
    ),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ('conv_out',)),
    name=name,
  )


def remat(module_cls: type, policy: str, static_argnums: tuple[int, ...] = ()) -> type:
  """`module_cls` rematerialised under `model.remat_policy` (a key of the transformer's
  `REMAT_POLICIES`): 'none' returns `module_cls` itself (the model is unchanged); any other
  policy returns `nn.remat(module_cls)` with that `jax.checkpoint` policy, which keeps the
  module's name and so its parameter tree. `static_argnums` counts `self` as 0 (Python
  bools / ints of `__call__` must be static).
  """
  checkpoint_policy = _remat_policy(policy)  # ValueError naming the valid policies.
  if policy == 'none':
    return module_cls
  return nn.remat(module_cls, policy=checkpoint_policy, static_argnums=static_argnums)


def group_norm(num_groups: int = 32, name: str | None = None, dtype=jnp.float32) -> nn.GroupNorm:
  return nn.GroupNorm(
    num_groups=num_groups,
    epsilon=1e-6,
    dtype=dtype,
    scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ('norm',)),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ('norm',)),
    name=name,
  )


class ResBlock(nn.Module):
  """GroupNorm -> swish -> conv3x3 -> GroupNorm -> swish -> conv3x3, plus a shortcut.

  When the channel count changes, the shortcut is a 1x1 conv applied to the
  block's *input* (the MaskGIT reference applies it to the residual branch's
  output, a known bug).  x: [b, h, w, c_in] -> [b, h, w, features].
  """

  features: int
  num_groups: int = 32
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    residual = x
    x = nn.swish(group_norm(self.num_groups, 'norm_0', self.dtype)(x))
    x = conv(self.features, (3, 3), 'conv_0', dtype=self.dtype)(x)
    x = nn.swish(group_norm(self.num_groups, 'norm_1', self.dtype)(x))
    x = conv(self.features, (3, 3), 'conv_1', dtype=self.dtype)(x)
    if residual.shape[-1] != self.features:
      residual = conv(self.features, (1, 1), 'shortcut', dtype=self.dtype)(residual)
    return x + residual


def downsample_2x(x: jax.Array) -> jax.Array:
  """2x2 average pooling. [b, h, w, c] -> [b, h/2, w/2, c]."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def upsample_2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2x upsampling. [b, h, w, c] -> [b, 2h, 2w, c]."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)

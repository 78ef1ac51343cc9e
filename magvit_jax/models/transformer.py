"""Bidirectional transformer for masked visual token modeling (MaskGIT stage 2).

The input is a flat token sequence `tokens: [batch, n] int32` with values in
`[0, codebook_size]` (`codebook_size` itself is the [MASK] id) and a class
label per example `labels: [batch] int32` in `[0, num_classes]`
(`num_classes` itself is the "null" class used for classifier-free guidance).
The class is embedded as one extra token prepended to the sequence, as in
MaskGIT. With `num_tasks > 0` (MAGVIT's COMMIT multi-task model) a task prompt
token `tasks: [batch] int32` in `[0, num_tasks)` is prepended before the class
token. Output: `logits: [batch, n, codebook_size] float32` (the mask id is
never predicted).

Layout follows BERT / the MaskGIT reference: token + learned position
embeddings -> LayerNorm -> dropout -> pre-LN encoder blocks -> final LayerNorm
-> MLM head (dense, GELU, LayerNorm) -> logits tied to the token embedding
table plus a bias. `norm_layout='post'` gives the released MaskGIT
transformer's exact layout instead (BERT's post-LN blocks, no final LayerNorm;
see magvit_jax/convert/maskgit_transformer.py).

Every parameter carries logical axis names (`vocab`, `embed`, `mlp`, `heads`,
`kv`, `length`); `magvit_jax.parallel` maps them to the mesh with the rule
table from the config.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = jnp.dtype


def _dense(features, axes, name, dtype, use_bias=True):
  return nn.DenseGeneral(
    features,
    dtype=dtype,
    use_bias=use_bias,
    kernel_init=nn.with_logical_partitioning(nn.initializers.truncated_normal(0.02), axes),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[1:]),
    name=name,
  )


def _layer_norm(name, dtype):
  return nn.LayerNorm(
    epsilon=1e-12,
    dtype=dtype,
    scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ('embed',)),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ('embed',)),
    name=name,
  )


class Attention(nn.Module):
  """Full (bidirectional) multi-head self-attention. x: [b, n, d] -> [b, n, d]."""

  num_heads: int
  dropout_rate: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    d = x.shape[-1]
    if d % self.num_heads:
      raise ValueError(f'hidden_size={d} must be divisible by num_heads={self.num_heads}')
    head_dim = d // self.num_heads
    qkv_axes = ('embed', 'heads', 'kv')
    q = _dense((self.num_heads, head_dim), qkv_axes, 'query', self.dtype)(x)
    k = _dense((self.num_heads, head_dim), qkv_axes, 'key', self.dtype)(x)
    v = _dense((self.num_heads, head_dim), qkv_axes, 'value', self.dtype)(x)
    # [b, n, heads, head_dim]; jax.nn.dot_product_attention picks the fused
    # kernel where the backend has one (cuDNN flash attention on GPU).
    out = jax.nn.dot_product_attention(q, k, v)
    out = nn.Dropout(self.dropout_rate)(out, deterministic=deterministic)
    return nn.DenseGeneral(
      d,
      axis=(-2, -1),
      dtype=self.dtype,
      kernel_init=nn.with_logical_partitioning(
        nn.initializers.truncated_normal(0.02), ('heads', 'kv', 'embed')
      ),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ('embed',)),
      name='out',
    )(out)


NORM_LAYOUTS = ('pre', 'post')


class EncoderBlock(nn.Module):
  """Transformer block. x: [b, n, d] -> [b, n, d].

  norm_layout 'pre': x + f(LN(x)) for f = attention, then MLP. 'post' (BERT, the released
  MaskGIT transformer): LN(x + f(x)). The LayerNorms are `ln_attn` and `ln_mlp` either way.
  """

  num_heads: int
  mlp_dim: int
  dropout_rate: float
  dtype: Dtype = jnp.float32
  norm_layout: str = 'pre'

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    d = x.shape[-1]
    pre = self.norm_layout == 'pre'
    y = _layer_norm('ln_attn', self.dtype)(x) if pre else x
    y = Attention(self.num_heads, self.dropout_rate, self.dtype, name='attn')(y, deterministic)
    x = x + nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    if not pre:
      x = _layer_norm('ln_attn', self.dtype)(x)
    y = _layer_norm('ln_mlp', self.dtype)(x) if pre else x
    y = _dense(self.mlp_dim, ('embed', 'mlp'), 'mlp_in', self.dtype)(y)
    y = nn.gelu(y)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    y = _dense(d, ('mlp', 'embed'), 'mlp_out', self.dtype)(y)
    x = x + nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    return x if pre else _layer_norm('ln_mlp', self.dtype)(x)


class Transformer(nn.Module):
  """MaskGIT bidirectional transformer.

  Attributes:
    codebook_size: K, number of visual tokens; K is also the [MASK] id.
    num_classes: C; label C is the null class (classifier-free guidance).
    seq_len: n, number of image tokens (h * w, or t * h * w).
    hidden_size, num_layers, num_heads, mlp_dim, dropout_rate: as in BERT.
    num_tasks: T > 0 adds a task prompt token (COMMIT); 0 = no task token (MaskGIT).
    norm_layout: 'pre' (default): pre-LN blocks and a final LayerNorm `ln_final` before the
      MLM head; 'post': BERT's post-LN blocks and no `ln_final` (the last block's output is
      already normalised), as in the released MaskGIT checkpoints.
    num_sub_tokens: s > 1 factorises each token into s sub-tokens of k_sub = K^(1/s) values
      (MAGVIT-v2: 2^18 -> 2 x 2^9), each with its own embedding table (summed) and output
      head; the output is then [b, n, s, k_sub] and token = sum_j sub_j * k_sub^j.
    dtype: activation dtype (parameters stay float32).
  """

  codebook_size: int
  num_classes: int
  seq_len: int
  hidden_size: int = 768
  num_layers: int = 24
  num_heads: int = 16
  mlp_dim: int = 3072
  dropout_rate: float = 0.1
  num_sub_tokens: int = 1
  num_tasks: int = 0
  norm_layout: str = 'pre'
  dtype: Dtype = jnp.float32

  def dummy_inputs(self) -> tuple[jax.Array, ...]:
    """(tokens [1, n], labels [1][, tasks [1]]) int32 zeros, for `init`."""
    args = (jnp.zeros((1, self.seq_len), jnp.int32), jnp.zeros((1,), jnp.int32))
    return args + ((jnp.zeros((1,), jnp.int32),) if self.num_tasks else ())

  @property
  def num_prefix(self) -> int:
    """Prefix tokens before the visual tokens: [task,] class."""
    return 2 if self.num_tasks else 1

  @property
  def sub_codebook_size(self) -> int:
    """k_sub with k_sub ** num_sub_tokens == codebook_size."""
    k_sub = int(round(self.codebook_size ** (1.0 / self.num_sub_tokens)))
    if k_sub**self.num_sub_tokens != self.codebook_size:
      raise ValueError(
        f'codebook_size={self.codebook_size} is not a power k_sub^s with '
        f's=num_sub_tokens={self.num_sub_tokens}'
      )
    return k_sub

  @property
  def mask_token_id(self) -> int:
    return self.codebook_size

  @property
  def null_label(self) -> int:
    return self.num_classes

  @nn.compact
  def __call__(
    self,
    tokens: jax.Array,
    labels: jax.Array,
    tasks: jax.Array | None = None,
    deterministic: bool = True,
  ) -> jax.Array:
    """tokens: [b, n] int32 in [0, K]; labels: [b] int32 in [0, C]; tasks: [b] int32 in
    [0, num_tasks) when num_tasks > 0 (else None).

    Returns logits [b, n, K] float32, or [b, n, s, k_sub] when num_sub_tokens = s > 1.
    """
    if tokens.ndim != 2 or tokens.shape[1] != self.seq_len:
      raise ValueError(f'tokens must be [batch, {self.seq_len}], got shape {tokens.shape}')
    if labels.shape != tokens.shape[:1]:
      raise ValueError(f'labels must be [batch]={tokens.shape[:1]}, got shape {labels.shape}')
    if self.num_tasks and (tasks is None or tasks.shape != tokens.shape[:1]):
      raise ValueError(
        f'this model has num_tasks={self.num_tasks}: tasks must be '
        f'[batch]={tokens.shape[:1]} int32, got '
        f'{None if tasks is None else tasks.shape}'
      )
    if not self.num_tasks and tasks is not None:
      raise ValueError('tasks were given but the model has num_tasks=0 (no task token)')
    if self.norm_layout not in NORM_LAYOUTS:
      raise ValueError(f'norm_layout must be one of {NORM_LAYOUTS}, got {self.norm_layout!r}')
    d = self.hidden_size
    init = nn.initializers.truncated_normal(0.02)
    class_table = self.param(
      'class_embedding',
      nn.with_logical_partitioning(init, ('classes', 'embed')),
      (self.num_classes + 1, d),
      jnp.float32,
    )
    pos_table = self.param(
      'position_embedding',
      nn.with_logical_partitioning(init, ('length', 'embed')),
      (self.seq_len + self.num_prefix, d),
      jnp.float32,
    )
    # Output tables: [vocab, d] per head; the head logits are tied to them.
    if self.num_sub_tokens == 1:
      token_table = self.param(
        'token_embedding',
        nn.with_logical_partitioning(init, ('vocab', 'embed')),
        (self.codebook_size + 1, d),
        jnp.float32,
      )
      x_tokens = token_table[tokens]
      heads = [(token_table[: self.codebook_size], 'head_bias')]
    else:
      k_sub = self.sub_codebook_size
      mask_row = self.param(
        'mask_embedding', nn.with_logical_partitioning(init, (None, 'embed')), (1, d), jnp.float32
      )
      x_tokens = jnp.zeros(tokens.shape + (d,), jnp.float32)
      heads = []
      for j in range(self.num_sub_tokens):
        table = self.param(
          f'token_embedding_{j}',
          nn.with_logical_partitioning(init, ('vocab', 'embed')),
          (k_sub, d),
          jnp.float32,
        )
        x_tokens = x_tokens + table[(tokens // k_sub**j) % k_sub]
        heads.append((table, f'head_bias_{j}'))
      x_tokens = jnp.where((tokens == self.mask_token_id)[..., None], mask_row[0], x_tokens)

    prefix = [class_table[labels][:, None]]
    if self.num_tasks:
      task_table = self.param(
        'task_embedding',
        nn.with_logical_partitioning(init, ('classes', 'embed')),
        (self.num_tasks, d),
        jnp.float32,
      )
      prefix.insert(0, task_table[tasks][:, None])
    x = jnp.concatenate(prefix + [x_tokens], axis=1)
    x = (x + pos_table[None]).astype(self.dtype)
    x = _layer_norm('ln_embed', self.dtype)(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    for i in range(self.num_layers):
      x = EncoderBlock(
        self.num_heads,
        self.mlp_dim,
        self.dropout_rate,
        self.dtype,
        norm_layout=self.norm_layout,
        name=f'block_{i}',
      )(x, deterministic)
    if self.norm_layout == 'pre':
      x = _layer_norm('ln_final', self.dtype)(x)
    # MLM head.
    x = _dense(d, ('embed', 'embed_out'), 'head_dense', self.dtype)(x[:, self.num_prefix :])
    x = _layer_norm('head_ln', self.dtype)(nn.gelu(x))
    logits = []
    for table, bias_name in heads:
      bias = self.param(
        bias_name,
        nn.with_logical_partitioning(nn.initializers.zeros_init(), ('vocab',)),
        (table.shape[0],),
        jnp.float32,
      )
      logits.append(jnp.einsum('bnd,vd->bnv', x, table.astype(self.dtype)) + bias)
    if self.num_sub_tokens == 1:
      return logits[0].astype(jnp.float32)
    return jnp.stack(logits, axis=2).astype(jnp.float32)


def count_params(params) -> int:
  """Total number of parameters of a (possibly boxed) params pytree."""
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(nn.unbox(params)))


def forward_flops(model: Transformer, batch: int) -> float:
  """Analytic FLOPs of one forward pass (matmuls; full bidirectional attention).

  Counts 2 FLOPs per multiply-add: projections 4 d^2, MLP 2 d m, attention scores and
  values 2 n d per token and layer, plus the MLM head.
  """
  n = model.seq_len + model.num_prefix
  d, m, L = model.hidden_size, model.mlp_dim, model.num_layers
  K = model.num_sub_tokens * model.sub_codebook_size  # output units per position
  per_token_layer = 2 * (4 * d * d + 2 * d * m) + 2 * 2 * n * d
  head = 2 * (d * d + d * K)
  return float(batch * (n * L * per_token_layer + model.seq_len * head))


def model_defaults() -> dict[str, Any]:
  """The full transformer `config.model` (MaskGIT ImageNet sizes) at the module's defaults."""
  out: dict[str, Any] = {'codebook_size': 1024, 'num_classes': 1000}
  for f in dataclasses.fields(Transformer):
    if f.init and f.name not in ('parent', 'name', 'seq_len', 'codebook_size', 'num_classes'):
      out[f.name] = f.default
  out['dtype'] = jnp.dtype(out['dtype']).name
  return out


def build_transformer(model_config: Any, seq_len: int) -> Transformer:
  """The transformer of `config.model` over `seq_len` visual tokens."""
  unknown = set(model_config) - set(model_defaults())
  if unknown:
    raise ValueError(
      f'config.model has keys {sorted(unknown)} that the transformer does not take; valid '
      f'keys: {sorted(model_defaults())}'
    )
  m = model_config
  return Transformer(
    codebook_size=int(m['codebook_size']),
    num_classes=int(m['num_classes']),
    seq_len=int(seq_len),
    hidden_size=int(m['hidden_size']),
    num_layers=int(m['num_layers']),
    num_heads=int(m['num_heads']),
    mlp_dim=int(m['mlp_dim']),
    dropout_rate=float(m['dropout_rate']),
    num_sub_tokens=int(m['num_sub_tokens']),
    num_tasks=int(m['num_tasks']),
    norm_layout=str(m.get('norm_layout', 'pre')),
    dtype=jnp.dtype(m['dtype']),
  )

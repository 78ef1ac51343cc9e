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
table from the config. Activations are constrained to ('batch', 'length',
'embed') after the embeddings and after every block, through the same table
(`parallel.constrain`; a no-op unless `parallel.activation_sharding` is active).

Scaling options (all off by default, giving the original model bit for bit):
`scan_layers` runs the blocks under `nn.scan` (one compiled block; params stacked
on a leading 'layers' axis under `blocks`, see `stack_layers` / `unstack_layers`),
`remat_policy` rematerialises each block with a named `jax.checkpoint_policies`
policy, `dtype='bfloat16'` computes in bf16 with float32 params, and
`attention_impl` picks the attention kernel.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from magvit_jax import parallel

Dtype = jnp.dtype

# Logical axes of the residual stream [batch, length, embed] (sharding constraints).
ACTIVATION_AXES = ('batch', 'length', 'embed')

# model.attention_impl: 'auto' = jax.nn.dot_product_attention with implementation=None (XLA
# today; JAX's choice once it picks backends itself), 'xla' / 'cudnn' force that implementation
# of it ('cudnn': cuDNN flash attention, GPU with bf16/fp16 activations only), 'einsum' = an
# explicit einsum-softmax-einsum (the BERT / MaskGIT reference formulation).
ATTENTION_IMPLS = ('auto', 'xla', 'cudnn', 'einsum')

# model.remat_policy -> jax.checkpoint policy of each block ('none': no rematerialisation;
# 'full': save nothing, recompute the whole block in the backward pass).
REMAT_POLICIES = {
  'none': None,
  'full': jax.checkpoint_policies.nothing_saveable,
  'dots_saveable': jax.checkpoint_policies.dots_saveable,
  'dots_with_no_batch_dims_saveable': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  'everything_saveable': jax.checkpoint_policies.everything_saveable,
}

# model.dtype: the activation / matmul dtype. Parameters (and so gradients and the optimizer
# state) are float32 under every policy.
COMPUTE_DTYPES = ('float32', 'bfloat16', 'float16')


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
  attention_impl: str = 'auto'

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
    # [b, n, heads, head_dim]; full bidirectional attention, no mask (no padding).
    out = attention(q, k, v, self.attention_impl)
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


def attention(q: jax.Array, k: jax.Array, v: jax.Array, impl: str = 'auto') -> jax.Array:
  """Bidirectional softmax attention. q, k, v: [b, n, heads, head_dim] -> [b, n, heads, head_dim].

  impl: one of ATTENTION_IMPLS. On the 'einsum' path the logits are accumulated and the softmax
  taken in float32 (as jax.nn.dot_product_attention's XLA implementation does).
  """
  if impl == 'einsum':
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits * jnp.float32(q.shape[-1] ** -0.5), axis=-1)
    return jnp.einsum('bhqk,bkhd->bqhd', weights.astype(v.dtype), v)
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f'attention_impl must be one of {ATTENTION_IMPLS}, got {impl!r}')
  return jax.nn.dot_product_attention(q, k, v, implementation=None if impl == 'auto' else impl)


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
  attention_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    d = x.shape[-1]
    pre = self.norm_layout == 'pre'
    y = _layer_norm('ln_attn', self.dtype)(x) if pre else x
    y = Attention(self.num_heads, self.dropout_rate, self.dtype, self.attention_impl, name='attn')(
      y, deterministic
    )
    x = x + nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    if not pre:
      x = _layer_norm('ln_attn', self.dtype)(x)
    y = _layer_norm('ln_mlp', self.dtype)(x) if pre else x
    y = _dense(self.mlp_dim, ('embed', 'mlp'), 'mlp_in', self.dtype)(y)
    y = nn.gelu(y)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    y = _dense(d, ('mlp', 'embed'), 'mlp_out', self.dtype)(y)
    x = x + nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    x = x if pre else _layer_norm('ln_mlp', self.dtype)(x)
    return parallel.constrain(x, ACTIVATION_AXES)


class _ScannedBlock(EncoderBlock):
  """EncoderBlock in `nn.scan`'s (carry, out) -> (carry, out) form."""

  def __call__(self, x: jax.Array, deterministic: bool):  # -> (x, None)
    return super().__call__(x, deterministic), None


def remat_policy(name: str) -> Any:
  """The jax.checkpoint policy of `model.remat_policy`; None for 'none' (no remat)."""
  if name not in REMAT_POLICIES:
    raise ValueError(f'remat_policy must be one of {sorted(REMAT_POLICIES)}, got {name!r}')
  return REMAT_POLICIES[name]


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
    dtype: activation / matmul dtype, one of COMPUTE_DTYPES; parameters, their gradients and
      the logits stay float32.
    scan_layers: run the blocks under `nn.scan` as one module `blocks` whose params carry a
      leading layer axis (logical name 'layers'); False: `block_0` ... `block_{L-1}`. The two
      layouts convert with `stack_layers` / `unstack_layers`.
    remat_policy: a key of REMAT_POLICIES; not 'none': each block is wrapped in `nn.remat`
      with that `jax.checkpoint_policies` policy (activations recomputed in the backward pass).
    attention_impl: one of ATTENTION_IMPLS (see `attention`).
    num_segments: S > 0 adds a segment table `segment_embedding` [S, d], looked up by
      `segments` [b, n] (one id per visual token; the prefix tokens get segment 0) and added
      with the position embedding before `ln_embed`; 0 (default) = no segments, bit for bit
      the model without the option. For converted official MAGVIT transformers trained with
      `transformer.use_condition_segment` (S = 2: 1 marks condition tokens placed at masked
      positions; magvit_jax/convert/magvit_transformer.py). Our COMMIT trainer does not feed
      segments.
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
  scan_layers: bool = False
  remat_policy: str = 'none'
  attention_impl: str = 'auto'
  num_segments: int = 0

  def dummy_inputs(self) -> tuple[jax.Array | None, ...]:
    """(tokens [1, n], labels [1][, tasks [1] or None][, segments [1, n]]) int32 zeros, for
    `init`."""
    args = (jnp.zeros((1, self.seq_len), jnp.int32), jnp.zeros((1,), jnp.int32))
    if self.num_tasks:
      args += (jnp.zeros((1,), jnp.int32),)
    if self.num_segments:
      args = args[:2] + (args[2] if self.num_tasks else None, jnp.zeros_like(args[0]))
    return args

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
    segments: jax.Array | None = None,
    deterministic: bool = True,
  ) -> jax.Array:
    """tokens: [b, n] int32 in [0, K]; labels: [b] int32 in [0, C]; tasks: [b] int32 in
    [0, num_tasks) when num_tasks > 0 (else None); segments: [b, n] int32 in
    [0, num_segments) when num_segments > 0 (else None).

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
    if self.num_segments and (segments is None or segments.shape != tokens.shape):
      raise ValueError(
        f'this model has num_segments={self.num_segments}: segments must be '
        f'[batch, n]={tokens.shape} int32, got {None if segments is None else segments.shape}'
      )
    if not self.num_segments and segments is not None:
      raise ValueError('segments were given but the model has num_segments=0 (no segment table)')
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
    x = x + pos_table[None]
    if self.num_segments:
      seg_table = self.param(
        'segment_embedding',
        nn.with_logical_partitioning(init, (None, 'embed')),
        (self.num_segments, d),
        jnp.float32,
      )
      prefix_segments = jnp.zeros((segments.shape[0], self.num_prefix), jnp.int32)
      x = x + seg_table[jnp.concatenate([prefix_segments, segments.astype(jnp.int32)], axis=1)]
    x = x.astype(self.dtype)
    x = _layer_norm('ln_embed', self.dtype)(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    x = parallel.constrain(x, ACTIVATION_AXES)
    x = self._blocks(x, deterministic)
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

  def _blocks(self, x: jax.Array, deterministic: bool) -> jax.Array:
    """The encoder blocks: unrolled `block_i`, or one scanned `blocks`; optionally remat."""
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(
        f'attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}'
      )
    policy = remat_policy(self.remat_policy)
    block_cls = _ScannedBlock if self.scan_layers else EncoderBlock
    if self.remat_policy != 'none':
      # static_argnums counts `self` as 0: `deterministic` is a Python bool. Under scan, CSE
      # across iterations cannot happen, so prevent_cse (which blocks optimisations) is off.
      block_cls = nn.remat(
        block_cls, policy=policy, prevent_cse=not self.scan_layers, static_argnums=(2,)
      )
    kwargs = dict(
      num_heads=self.num_heads,
      mlp_dim=self.mlp_dim,
      dropout_rate=self.dropout_rate,
      dtype=self.dtype,
      norm_layout=self.norm_layout,
      attention_impl=self.attention_impl,
    )
    if self.scan_layers:
      stack = nn.scan(
        block_cls,
        variable_axes={'params': 0},
        split_rngs={'params': True, 'dropout': True},
        in_axes=nn.broadcast,
        length=self.num_layers,
        metadata_params={nn.PARTITION_NAME: 'layers'},
      )
      x, _ = stack(**kwargs, name='blocks')(x, deterministic)
      return x
    for i in range(self.num_layers):
      x = block_cls(**kwargs, name=f'block_{i}')(x, deterministic)
    return x


def count_params(params) -> int:
  """Total number of parameters of a (possibly boxed) params pytree."""
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(nn.unbox(params)))


def _block_names(tree: Any) -> list[str]:
  names = []
  while f'block_{len(names)}' in tree:
    names.append(f'block_{len(names)}')
  return names


def _holds_blocks(x: Any) -> bool:
  return isinstance(x, Mapping) and ('block_0' in x or 'blocks' in x)


def stack_layers(tree: Any) -> Any:
  """The unrolled layout -> the `scan_layers=True` layout, anywhere in a pytree.

  Every mapping in `tree` holding `block_0` ... `block_{L-1}` (the Transformer's params, also
  inside `{'params': ...}`, a TrainState's params / EMA / optimizer moments) gets them replaced
  by one `blocks` whose leaves are the blocks' leaves stacked on a new leading axis of size L.
  Everything else is kept. Boxed (`nn.LogicallyPartitioned`) leaves are unboxed first; mappings
  come back as plain dicts. Works under `jax.eval_shape` (abstract trees) too.
  """

  def convert(x):
    if not _holds_blocks(x):
      return x
    names = _block_names(x)
    if 'blocks' in x:
      if names:
        raise ValueError('params have both block_0 and blocks: not one layout')
      return dict(x)
    out = {k: v for k, v in x.items() if k not in names}
    out['blocks'] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[x[n] for n in names])
    return out

  return jax.tree_util.tree_map(convert, nn.unbox(tree), is_leaf=_holds_blocks)


def unstack_layers(tree: Any) -> Any:
  """The `scan_layers=True` layout -> the unrolled layout (inverse of `stack_layers`).

  Every mapping holding `blocks` gets it replaced by `block_0` ... `block_{L-1}`, slice i of
  each stacked leaf. Boxed leaves are unboxed first; mappings come back as plain dicts.
  """

  def convert(x):
    if not _holds_blocks(x):
      return x
    if 'blocks' not in x:
      return dict(x)
    if _block_names(x):
      raise ValueError('params have both block_0 and blocks: not one layout')
    stacked = x['blocks']
    num_layers = {leaf.shape[0] for leaf in jax.tree_util.tree_leaves(stacked)}
    if len(num_layers) != 1:
      raise ValueError(f'blocks leaves disagree on the layer count: {sorted(num_layers)}')
    out = {k: v for k, v in x.items() if k != 'blocks'}
    for i in range(num_layers.pop()):
      out[f'block_{i}'] = jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], stacked)
    return out

  return jax.tree_util.tree_map(convert, nn.unbox(tree), is_leaf=_holds_blocks)


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
    scan_layers=bool(m.get('scan_layers', False)),
    remat_policy=str(m.get('remat_policy', 'none')),
    attention_impl=str(m.get('attention_impl', 'auto')),
    num_segments=int(m.get('num_segments', 0)),
  )

"""The released MaskGIT transformer (google-research/maskgit) as this project's transformer.

  tree = load_official_tree('maskgit_imagenet256_checkpoint')
  config = load_config('maskgit_imagenet.py:official256')
  params = transformer_params_from_official(tree, config)
  model = build_transformer(config.model, 256)
  logits = model.apply({'params': params}, tokens, labels)   # tokens [b, 256], labels [b]

The official network (`maskgit/nets/maskgit_transformer.py`) is BERT: one word-embedding
table of ``K + C + 1`` rows (``K`` codebook entries, ``C`` class tokens, then the mask token),
learned position embeddings over ``1 + n`` positions, post-LN blocks and an MLM head whose
logits are tied to the whole word-embedding table. Its input sequence is
``[K + label, t_1, ..., t_n]`` with masked positions ``-1`` (``config.transformer.
mask_token_id``; -1 indexes the table's last row, ``K + C``), and its sampler keeps the logits
``[..., :K]``. This project's transformer (``norm_layout='post'``) takes ``tokens [b, n]``
with mask id ``K`` and ``labels [b]``, and returns ``[b, n, K]``: ``official_inputs_to_ours``
/ ``ours_to_official_inputs`` / ``official_logits_to_ours`` map between the two.

Table split: ``token_embedding`` = rows ``[:K]`` + row ``K + C`` (mask);
``class_embedding`` = rows ``[K:K + C]`` + one zero row for our null label ``C``, which the
official model does not have (it was trained without classifier-free guidance: keep
``guidance_scale = 0``); ``head_bias`` = ``mlm_bias[:K]`` (the class and mask logits are
never used by the official sampler either).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

from magvit_jax.convert.official_tree import flatten, load_official_tree  # noqa: F401
from magvit_jax.convert.official_tree import model_config as _model_config
from magvit_jax.convert.official_tree import bert_layer_shapes, raise_problems, strip_params
from magvit_jax.convert.official_tree import tree_problems
from magvit_jax.models.transformer import build_transformer, stack_layers

OFFICIAL_MASK_TOKEN_ID = -1  # maskgit_class_cond_config: transformer.mask_token_id


def official_param_shapes(
  *,
  codebook_size: int,
  num_classes: int,
  seq_len: int,
  hidden_size: int,
  num_layers: int,
  num_heads: int,
  mlp_dim: int,
) -> dict[str, tuple[int, ...]]:
  """Every parameter of the official transformer: 'Embed_0/word_embeddings/embedding' -> shape."""
  d, h, m = hidden_size, num_heads, mlp_dim
  if d % h:
    raise ValueError(f'hidden_size={d} must be divisible by num_heads={h}')
  shapes = {
    'Embed_0/word_embeddings/embedding': (codebook_size + num_classes + 1, d),
    'Embed_0/position_embeddings/embedding': (seq_len + 1, d),
    'Embed_0/embeddings_ln/scale': (d,),
    'Embed_0/embeddings_ln/bias': (d,),
    'MlmLayer_0/mlm_dense/kernel': (d, d),
    'MlmLayer_0/mlm_dense/bias': (d,),
    'MlmLayer_0/mlm_ln/scale': (d,),
    'MlmLayer_0/mlm_ln/bias': (d,),
    'MlmLayer_0/mlm_bias/bias': (codebook_size + num_classes + 1,),
  }
  for i in range(num_layers):
    shapes.update(
      bert_layer_shapes(f'TransformerLayer_{i}/Attention_0', f'TransformerLayer_{i}/Mlp_0', d, h, m)
    )
  return shapes


def transformer_params_from_official(
  tree: Mapping[str, Any], config: Any, seq_len: int | None = None
) -> dict:
  """Our transformer's params (plain float32 arrays, for ``{'params': params}``) from an
  official params tree.

  Args:
    tree: the official tree, with or without the top-level ``'params'`` key (as
      ``load_official_tree`` returns it, or ``variables['params']``).
    config: the full config (``config.model`` is used) or the model section; its transformer
      must have ``norm_layout='post'``, ``num_sub_tokens=1`` and ``num_tasks=0``
      (``configs/maskgit_imagenet.py:official256`` / ``:official512``).
    seq_len: ``n`` image tokens (256 at 256x256, 1024 at 512x512); default: taken from the
      tree's position table (``rows - 1``).

  Raises:
    ValueError: the config cannot express the official model, or the tree has missing or
      unexpected keys or a wrong shape (each named by its key path, expected vs got).
  """
  m = _model_config(config)
  model_issues = []
  if m.get('norm_layout', 'pre') != 'post':
    model_issues.append(f"model.norm_layout={m.get('norm_layout', 'pre')!r} (needs 'post')")
  if int(m.get('num_sub_tokens', 1)) != 1:
    model_issues.append(f'model.num_sub_tokens={m["num_sub_tokens"]} (needs 1)')
  if int(m.get('num_tasks', 0)) != 0:
    model_issues.append(f'model.num_tasks={m["num_tasks"]} (needs 0)')
  if model_issues:
    raise ValueError(
      'this config cannot hold the official MaskGIT transformer: ' + ', '.join(model_issues)
    )
  tree, prefix = strip_params(tree)
  flat = flatten(tree)
  pos_key = 'Embed_0/position_embeddings/embedding'
  if seq_len is None:
    if pos_key not in flat or len(getattr(flat[pos_key], 'shape', ())) != 2:
      raise ValueError(f'missing key {prefix}{pos_key} (or not a 2-d table): pass seq_len')
    seq_len = int(flat[pos_key].shape[0]) - 1
  K, C = int(m['codebook_size']), int(m['num_classes'])
  dims = dict(
    codebook_size=K,
    num_classes=C,
    seq_len=int(seq_len),
    hidden_size=int(m['hidden_size']),
    num_layers=int(m['num_layers']),
    num_heads=int(m['num_heads']),
    mlp_dim=int(m['mlp_dim']),
  )
  what = 'the config (' + ', '.join(f'{k}={v}' for k, v in dims.items()) + ')'
  raise_problems(
    tree_problems(flat, official_param_shapes(**dims), lambda k: prefix + k),
    f'the official MaskGIT transformer tree does not match {what}',
  )

  def get(key):
    return jnp.asarray(flat[key], jnp.float32)

  def dense(key):
    return {'kernel': get(f'{key}/kernel'), 'bias': get(f'{key}/bias')}

  def ln(key):
    return {'scale': get(f'{key}/scale'), 'bias': get(f'{key}/bias')}

  word = get('Embed_0/word_embeddings/embedding')
  d = word.shape[1]
  params: dict[str, Any] = {
    'token_embedding': jnp.concatenate([word[:K], word[K + C :]], axis=0),
    'class_embedding': jnp.concatenate([word[K : K + C], jnp.zeros((1, d), jnp.float32)]),
    'position_embedding': get(pos_key),
    'ln_embed': ln('Embed_0/embeddings_ln'),
    'head_dense': dense('MlmLayer_0/mlm_dense'),
    'head_ln': ln('MlmLayer_0/mlm_ln'),
    'head_bias': get('MlmLayer_0/mlm_bias/bias')[:K],
  }
  for i in range(dims['num_layers']):
    a, p = f'TransformerLayer_{i}/Attention_0', f'TransformerLayer_{i}/Mlp_0'
    params[f'block_{i}'] = {
      'attn': {
        name: dense(f'{a}/self_attention/{name}') for name in ('query', 'key', 'value', 'out')
      },
      'ln_attn': ln(f'{a}/attention_output_ln'),
      'mlp_in': dense(f'{p}/intermediate_output'),
      'mlp_out': dense(f'{p}/layer_output'),
      'ln_mlp': ln(f'{p}/layer_output_ln'),
    }
  # The built module must accept what we made (same check the trainer's init would do).
  build_transformer(m, int(seq_len))
  if m.get('scan_layers', False):  # The layout of a model scanned over its layers.
    params = stack_layers(params)
  return params


def official_inputs_to_ours(input_ids: Any, codebook_size: int, num_classes: int):
  """Official input sequence [b, 1 + n] -> (tokens [b, n], labels [b]) int32 for our model.

  Official: ``input_ids[:, 0] = K + label``; masked positions hold ``-1`` (its
  ``mask_token_id``) or, equivalently, ``K + C`` (the row ``-1`` selects). Ours: mask id ``K``.
  """
  ids = jnp.asarray(input_ids).astype(jnp.int32)
  K, C = codebook_size, num_classes
  if ids.ndim != 2 or ids.shape[1] < 2:
    raise ValueError(f'input_ids must be [batch, 1 + n], got shape {ids.shape}')
  labels = ids[:, 0] - K
  tokens = ids[:, 1:]
  tokens = jnp.where((tokens == OFFICIAL_MASK_TOKEN_ID) | (tokens == K + C), K, tokens)
  return tokens, labels


def ours_to_official_inputs(tokens: Any, labels: Any, codebook_size: int) -> Any:
  """(tokens [b, n] with mask id K, labels [b]) -> official input_ids [b, 1 + n] (mask -1)."""
  tokens = jnp.asarray(tokens).astype(jnp.int32)
  labels = jnp.asarray(labels).astype(jnp.int32)
  tokens = jnp.where(tokens == codebook_size, OFFICIAL_MASK_TOKEN_ID, tokens)
  return jnp.concatenate([(labels + codebook_size)[:, None], tokens], axis=1)


def official_logits_to_ours(logits: Any, codebook_size: int) -> Any:
  """Official logits [b, 1 + n, K + C + 1] -> ours [b, n, K] (drop the class position and the
  class / mask columns, as the official sampler does with ``logits[..., :K]``)."""
  return jnp.asarray(logits)[:, 1:, :codebook_size]

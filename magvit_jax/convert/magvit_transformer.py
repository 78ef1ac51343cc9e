"""The official MAGVIT transformer (google-research/magvit `maskgvt`) as this project's transformer.

  tree = load_official_tree('checkpoint_500000')     # msgpack variables / params, or an .npz
  config = official_transformer_config(tree, load_config('magvit_ucf101.py:B'), seq_len=1024)
  params = transformer_params_from_official(tree, config)
  model = build_transformer(config.model, 1024)
  batch = official_inputs_to_ours(input_ids, config, segment_ids)   # tokens, labels[, tasks, ...]
  logits = model.apply({'params': params}, **batch)                  # [b, n, K]

The official network is `videogvt/models/simplified_bert.py` `Bert`, built by
`videogvt/train_lib/maskgvt_train_lib.py` `get_bert_model`: BERT with one word-embedding table
of ``V = K + (C + 1) + S`` rows (``K`` codebook entries; ``C`` class tokens ``K + label`` and
UNCOND ``K + C``; ``S`` special tokens addressed by NEGATIVE ids from the end of the table:
``S = 1`` (MASK = -1) for a single-task model, 16 for a multi-task one, whose task tokens are
`task_registry.SpecialTokens`: FULL_GENERATION -3, FRAME_PREDICTION -4, FRAME_INTERPOLATION -5,
OUTPAINTING -6, INPAINTING -7), learned positions over the whole sequence, optional segment
embeddings (2 rows with `transformer.use_condition_segment`: 1 marks condition tokens placed at
masked positions, `mask_utils.random_mask` 'cond->input'), post-LN blocks and an MLM head tied to
the whole word table plus a bias. Its input is ``[task token (multi-task only), class token,
t * h * w latent tokens]`` with masked latents ``-1``.

This project's `Transformer` (``norm_layout='post'``) holds the same function:

* ``token_embedding`` = word rows ``[:K]`` + row ``V - 1`` (MASK; our mask id is ``K``);
* ``class_embedding`` = rows ``[K : K + C + 1]`` (our null label ``C`` is UNCOND); an official
  model without classes (``C = 0``, e.g. BAIR) has only UNCOND, then every one of our class
  rows is UNCOND;
* ``task_embedding`` (multi-task: ``model.num_tasks = len(commit.TASKS)``): row ``i`` = the
  official row of the task token of ``commit.TASKS[i]`` (`task_tokens`: FP / CFP -> FRAME_
  PREDICTION, FI -> FRAME_INTERPOLATION, OP* -> OUTPAINTING, CG -> FULL_GENERATION, IP* ->
  OUTPAINTING as `task_registry.get_inpainting_task` does unless the official config set
  ``bug_patches.inpainting_token``, then INPAINTING: pass ``inpainting_token=True``);
* ``segment_embedding`` (``model.num_segments = 2``) = ``segment_embeddings``;
* ``head_bias`` = ``mlm_bias[:K]`` (the official sampler only uses the codebook logits).

The MASK, SEP and PAD rows and the logits of non-codebook rows have no counterpart (never
predicted). Parity with the official code: tests/test_parity_magvit_transformer.py.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from magvit_jax.convert.official_tree import flatten, load_official_tree  # noqa: F401
from magvit_jax.convert.official_tree import model_config as _model_config
from magvit_jax.convert.official_tree import bert_layer_shapes, raise_problems, strip_params
from magvit_jax.convert.official_tree import tree_problems
from magvit_jax.masking.commit import TASKS
from magvit_jax.models.transformer import build_transformer, stack_layers

# videogvt/train_lib/task_registry.py SpecialTokens.
SPECIAL_TOKENS = {
  'MASK': -1,
  'SEP': -2,
  'TASK_FULL_GENERATION': -3,
  'TASK_FRAME_PREDICTION': -4,
  'TASK_FRAME_INTERPOLATION': -5,
  'TASK_OUTPAINTING': -6,
  'TASK_INPAINTING': -7,
  'PAD': -15,
}
OFFICIAL_MASK_TOKEN_ID = SPECIAL_TOKENS['MASK']
# maskgvt_train_lib.get_num_special_tokens: MASK only, or 16 slots for a multi-task model.
NUM_SPECIAL = {False: 1, True: 16}
_WORD = 'BertEmbed_0/word_embeddings/embedding'
_POSITION = 'BertEmbed_0/position_embeddings/embedding'
_SEGMENT = 'BertEmbed_0/segment_embeddings/embedding'


def task_tokens(inpainting_token: bool = False) -> dict[str, int]:
  """Our COMMIT task name (commit.TASKS) -> the official task token (a negative id).

  inpainting_token: the official config's ``bug_patches.inpainting_token`` (default False:
  the official inpainting tasks use the OUTPAINTING token, task_registry.get_inpainting_task).
  """
  inpaint = 'TASK_INPAINTING' if inpainting_token else 'TASK_OUTPAINTING'
  names = {
    'FP': 'TASK_FRAME_PREDICTION',
    'CFP': 'TASK_FRAME_PREDICTION',
    'FI': 'TASK_FRAME_INTERPOLATION',
    'OPC': 'TASK_OUTPAINTING',
    'OPV': 'TASK_OUTPAINTING',
    'OPH': 'TASK_OUTPAINTING',
    'OPD': 'TASK_OUTPAINTING',
    'IPC': inpaint,
    'IPD': inpaint,
    'CG': 'TASK_FULL_GENERATION',
  }
  return {task: SPECIAL_TOKENS[names[task]] for task in TASKS}


def official_param_shapes(
  *,
  codebook_size: int,
  num_classes: int,
  multi_task: bool,
  seq_len: int,
  hidden_size: int,
  num_layers: int,
  num_heads: int,
  mlp_dim: int,
  num_segments: int = 0,
) -> dict[str, tuple[int, ...]]:
  """Every parameter of the official Bert: 'BertEmbed_0/word_embeddings/embedding' -> shape.

  num_classes: the official dataset's classes ``C`` (0 for an unconditional dataset); seq_len:
  the latent tokens ``t * h * w``.
  """
  d, h, m = hidden_size, num_heads, mlp_dim
  if d % h:
    raise ValueError(f'hidden_size={d} must be divisible by num_heads={h}')
  vocab = codebook_size + num_classes + 1 + NUM_SPECIAL[bool(multi_task)]
  shapes = {
    _WORD: (vocab, d),
    _POSITION: (seq_len + (2 if multi_task else 1), d),
    'BertEmbed_0/embeddings_ln/scale': (d,),
    'BertEmbed_0/embeddings_ln/bias': (d,),
    'BertMlmLayer_0/mlm_dense/kernel': (d, d),
    'BertMlmLayer_0/mlm_dense/bias': (d,),
    'BertMlmLayer_0/mlm_ln/scale': (d,),
    'BertMlmLayer_0/mlm_ln/bias': (d,),
    'BertMlmLayer_0/mlm_bias/bias': (vocab,),
  }
  if num_segments:
    shapes[_SEGMENT] = (num_segments, d)
  for i in range(num_layers):
    shapes.update(
      bert_layer_shapes(f'BertLayer_{i}/BertAttention_0', f'BertLayer_{i}/BertMlp_0', d, h, m)
    )
  return shapes


def _table(flat: Mapping[str, Any], key: str, prefix: str) -> tuple[int, int]:
  if key not in flat or len(np.shape(flat[key])) != 2:
    raise ValueError(f'missing key {prefix}{key} (or not a 2-d table)')
  return tuple(int(x) for x in np.shape(flat[key]))  # type: ignore[return-value]


def official_num_classes(tree: Mapping[str, Any], codebook_size: int, multi_task: bool) -> int:
  """The official dataset's class count ``C`` read from the word table (``V - K - 1 - S``)."""
  params, prefix = strip_params(tree)
  rows, _ = _table(flatten(params), _WORD, prefix)
  classes = rows - codebook_size - 1 - NUM_SPECIAL[bool(multi_task)]
  if classes < 0:
    raise ValueError(
      f'{prefix}{_WORD} has {rows} rows: fewer than codebook_size={codebook_size} + 1 (UNCOND) '
      f'+ {NUM_SPECIAL[bool(multi_task)]} special tokens ({"multi" if multi_task else "single"}'
      '-task): the codebook size or the task layout does not match'
    )
  return classes


def official_transformer_config(tree: Mapping[str, Any], base: Any, seq_len: int) -> Any:
  """A copy of the run config `base` whose model is the official transformer in `tree`.

  Read from the tree: the layout (multi-task when the position table has ``2 + seq_len``
  rows, single-task for ``1 + seq_len``), the class count, the segment table, hidden size,
  layers, heads and MLP width. Kept from `base`: codebook_size (the tokenizer's) and the rest
  (data, sampling, ...). Sets norm_layout='post', num_sub_tokens=1, and for a single-task
  model ``commit.tasks = ()`` (a class-conditional model without task token).
  """
  params, prefix = strip_params(tree)
  flat = flatten(params)
  rows, d = _table(flat, _POSITION, prefix)
  if rows - seq_len not in (1, 2):
    raise ValueError(
      f'{prefix}{_POSITION} has {rows} rows; expected {seq_len + 1} (single-task) or '
      f'{seq_len + 2} (multi-task) for {seq_len} latent tokens: the tokenizer does not match'
    )
  multi_task = rows - seq_len == 2
  config = copy.deepcopy(base)
  m = _model_config(config)
  classes = official_num_classes(tree, int(m['codebook_size']), multi_task)
  layers = 0
  while f'BertLayer_{layers}/BertMlp_0/intermediate_output/kernel' in flat:
    layers += 1
  query = 'BertLayer_0/BertAttention_0/self_attention/query/kernel'
  if not layers or query not in flat:
    raise ValueError(f'missing key {prefix}{query}: not an official MAGVIT transformer tree')
  updates = dict(
    num_classes=max(classes, 1),
    num_tasks=len(TASKS) if multi_task else 0,
    num_segments=_table(flat, _SEGMENT, prefix)[0] if _SEGMENT in flat else 0,
    hidden_size=d,
    num_layers=layers,
    num_heads=int(np.shape(flat[query])[1]),
    mlp_dim=int(np.shape(flat['BertLayer_0/BertMlp_0/intermediate_output/kernel'])[1]),
    norm_layout='post',
    num_sub_tokens=1,
  )
  if hasattr(m, 'unlocked'):
    with m.unlocked():
      m.update(updates)
  else:
    m.update(updates)
  if not multi_task and 'commit' in config:  # One task (class-conditional generation).
    config['commit']['tasks'] = ()
  return config


def transformer_params_from_official(
  tree: Mapping[str, Any],
  config: Any,
  seq_len: int | None = None,
  inpainting_token: bool = False,
) -> dict:
  """Our transformer's params (float32 arrays, for ``{'params': params}``) from an official
  MAGVIT params tree.

  Args:
    tree: the official tree, with or without the top-level ``'params'`` key.
    config: the full config (``config.model`` is used) or the model section, with
      ``norm_layout='post'``, ``num_sub_tokens=1``, ``num_tasks`` 0 (single-task official
      model) or ``len(commit.TASKS)`` (multi-task), ``num_segments`` 0 or the official
      segment table's rows, ``num_classes`` the official class count (or any, when the
      official model has none). `official_transformer_config` makes one.
    seq_len: latent tokens ``t * h * w``; default: the tree's position table rows minus the
      prefix (1 single-task, 2 multi-task).
    inpainting_token: see `task_tokens`.

  Raises:
    ValueError: the config cannot express the official model, or the tree has missing or
      unexpected keys or a wrong shape (each named by its key path, expected vs got).
  """
  m = _model_config(config)
  num_tasks = int(m.get('num_tasks', 0))
  issues = []
  if m.get('norm_layout', 'pre') != 'post':
    issues.append(f"model.norm_layout={m.get('norm_layout', 'pre')!r} (needs 'post')")
  if int(m.get('num_sub_tokens', 1)) != 1:
    issues.append(f'model.num_sub_tokens={m["num_sub_tokens"]} (needs 1)')
  if num_tasks not in (0, len(TASKS)):
    issues.append(f'model.num_tasks={num_tasks} (needs 0 or len(commit.TASKS)={len(TASKS)})')
  if issues:
    raise ValueError(
      'this config cannot hold the official MAGVIT transformer: ' + ', '.join(issues)
    )
  multi_task = num_tasks > 0
  params, prefix = strip_params(tree)
  flat = flatten(params)
  prefix_len = 2 if multi_task else 1
  if seq_len is None:
    seq_len = _table(flat, _POSITION, prefix)[0] - prefix_len
  K, C = int(m['codebook_size']), int(m['num_classes'])
  official_c = official_num_classes(params, K, multi_task)
  if official_c not in (0, C):
    raise ValueError(
      f'{prefix}{_WORD}: the official model has {official_c} classes (rows = K + C + 1 + '
      f'{NUM_SPECIAL[multi_task]}) but model.num_classes={C}'
    )
  segments = int(m.get('num_segments', 0))
  dims = dict(
    codebook_size=K,
    num_classes=official_c,
    multi_task=multi_task,
    seq_len=int(seq_len),
    hidden_size=int(m['hidden_size']),
    num_layers=int(m['num_layers']),
    num_heads=int(m['num_heads']),
    mlp_dim=int(m['mlp_dim']),
    num_segments=segments,
  )
  what = 'the config (' + ', '.join(f'{k}={v}' for k, v in dims.items()) + ')'
  raise_problems(
    tree_problems(flat, official_param_shapes(**dims), lambda k: prefix + k),
    f'the official MAGVIT transformer tree does not match {what}',
  )

  def get(key):
    return jnp.asarray(flat[key], jnp.float32)

  def dense(key):
    return {'kernel': get(f'{key}/kernel'), 'bias': get(f'{key}/bias')}

  def ln(key):
    return {'scale': get(f'{key}/scale'), 'bias': get(f'{key}/bias')}

  word = get(_WORD)
  vocab = word.shape[0]
  if official_c:
    classes = word[K : K + C + 1]
  else:  # Only UNCOND: every label (and our null label) is the unconditional token.
    classes = jnp.tile(word[K : K + 1], (C + 1, 1))
  out: dict[str, Any] = {
    'token_embedding': jnp.concatenate([word[:K], word[vocab + OFFICIAL_MASK_TOKEN_ID :]]),
    'class_embedding': classes,
    'position_embedding': get(_POSITION),
    'ln_embed': ln('BertEmbed_0/embeddings_ln'),
    'head_dense': dense('BertMlmLayer_0/mlm_dense'),
    'head_ln': ln('BertMlmLayer_0/mlm_ln'),
    'head_bias': get('BertMlmLayer_0/mlm_bias/bias')[:K],
  }
  if multi_task:
    rows = [vocab + token for token in task_tokens(inpainting_token).values()]
    out['task_embedding'] = word[jnp.asarray(rows)]
  if segments:
    out['segment_embedding'] = get(_SEGMENT)
  for i in range(dims['num_layers']):
    a, p = f'BertLayer_{i}/BertAttention_0', f'BertLayer_{i}/BertMlp_0'
    out[f'block_{i}'] = {
      'attn': {
        name: dense(f'{a}/self_attention/{name}') for name in ('query', 'key', 'value', 'out')
      },
      'ln_attn': ln(f'{a}/attention_output_ln'),
      'mlp_in': dense(f'{p}/intermediate_output'),
      'mlp_out': dense(f'{p}/layer_output'),
      'ln_mlp': ln(f'{p}/layer_output_ln'),
    }
  build_transformer(m, int(seq_len))  # The config must build (unknown keys raise).
  if m.get('scan_layers', False):
    out = stack_layers(out)
  return out


def official_inputs_to_ours(
  input_ids: Any,
  config: Any,
  segment_ids: Any = None,
  official_classes: int | None = None,
  inpainting_token: bool = False,
) -> dict[str, np.ndarray]:
  """Official input ids ``[b, prefix + n]`` (and segment ids) -> our model's keyword inputs.

  Returns {'tokens': [b, n], 'labels': [b], 'tasks': [b] (multi-task), 'segments': [b, n]
  (model.num_segments > 0)} int32, for ``model.apply(variables, **inputs)``. Masked latents
  (``-1``) become our mask id ``K``; UNCOND (``K + C``) becomes our null label ``C``; a task
  token becomes the first of our tasks that uses it (`task_tokens`; their rows are equal).
  official_classes: the official model's class count (default model.num_classes; 0 for an
  unconditional official model, whose UNCOND token becomes our null label).

  Raises:
    ValueError: an id that is not a codebook entry / MASK, a class token out of range, an
      unknown task token, or segment ids where the model has none (or missing / nonzero on
      the prefix).
  """
  m = _model_config(config)
  K, C = int(m['codebook_size']), int(m['num_classes'])
  oc = C if official_classes is None else int(official_classes)
  multi_task = int(m.get('num_tasks', 0)) > 0
  n_prefix = 2 if multi_task else 1
  ids = np.asarray(input_ids).astype(np.int32)
  if ids.ndim != 2 or ids.shape[1] <= n_prefix:
    raise ValueError(f'input_ids must be [batch, {n_prefix} + n], got shape {ids.shape}')
  latents = ids[:, n_prefix:]
  bad = ~(((latents >= 0) & (latents < K)) | (latents == OFFICIAL_MASK_TOKEN_ID))
  if bad.any():
    raise ValueError(
      f'input_ids: latent ids must be codebook entries [0, {K}) or MASK -1, got '
      f'{sorted(set(latents[bad].tolist()))[:8]}'
    )
  class_ids = ids[:, n_prefix - 1] - K
  if ((class_ids < 0) | (class_ids > oc)).any():
    raise ValueError(
      f'input_ids[:, {n_prefix - 1}]: class tokens must be in [{K}, {K + oc}] (K + label, '
      f'UNCOND = {K + oc}), got {sorted(set((class_ids + K).tolist()))}'
    )
  out = {
    'tokens': np.where(latents == OFFICIAL_MASK_TOKEN_ID, K, latents).astype(np.int32),
    'labels': np.where(class_ids == oc, C, class_ids).astype(np.int32),
  }
  if multi_task:
    ours = {}
    for i, token in enumerate(task_tokens(inpainting_token).values()):
      ours.setdefault(token, i)
    unknown = sorted(set(ids[:, 0].tolist()) - set(ours))
    if unknown:
      raise ValueError(
        f'input_ids[:, 0]: task tokens {unknown} have no COMMIT task (known: {sorted(ours)}; '
        'inpainting_token decides whether -7 is used)'
      )
    out['tasks'] = np.asarray([ours[t] for t in ids[:, 0].tolist()], np.int32)
  if int(m.get('num_segments', 0)):
    if segment_ids is None:
      raise ValueError('the model has num_segments > 0: segment_ids [batch, prefix + n] needed')
    seg = np.asarray(segment_ids).astype(np.int32)
    if seg.shape != ids.shape or seg[:, :n_prefix].any():
      raise ValueError(
        f'segment_ids must be {ids.shape} with 0 on the {n_prefix} prefix tokens, got '
        f'shape {seg.shape}'
      )
    out['segments'] = seg[:, n_prefix:]
  elif segment_ids is not None and np.asarray(segment_ids).any():
    raise ValueError('segment_ids were given but model.num_segments=0')
  return out


def ours_to_official_inputs(
  inputs: Mapping[str, Any],
  config: Any,
  official_classes: int | None = None,
  inpainting_token: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
  """Our keyword inputs (`official_inputs_to_ours`'s dict) -> official (input_ids, segment_ids),
  each [b, prefix + n] int32 (segment ids all 0 without model.num_segments)."""
  m = _model_config(config)
  K, C = int(m['codebook_size']), int(m['num_classes'])
  oc = C if official_classes is None else int(official_classes)
  tokens = np.asarray(inputs['tokens']).astype(np.int32)
  labels = np.asarray(inputs['labels']).astype(np.int32)
  class_ids = np.where((labels == C) | (oc == 0), K + oc, K + labels)
  parts = [class_ids[:, None]]
  if int(m.get('num_tasks', 0)):
    table = np.asarray(list(task_tokens(inpainting_token).values()), np.int32)
    parts.insert(0, table[np.asarray(inputs['tasks'])][:, None])
  parts.append(np.where(tokens == K, OFFICIAL_MASK_TOKEN_ID, tokens))
  ids = np.concatenate(parts, axis=1).astype(np.int32)
  segments = np.zeros_like(ids)
  if 'segments' in inputs:
    segments[:, len(parts) - 1 :] = np.asarray(inputs['segments'])
  return ids, segments


def official_logits_to_ours(logits: Any, config: Any) -> Any:
  """Official logits [b, prefix + n, V] -> ours [b, n, K] (the latent positions' codebook
  logits, the part the official sampler uses)."""
  m = _model_config(config)
  n_prefix = 2 if int(m.get('num_tasks', 0)) else 1
  return jnp.asarray(logits)[:, n_prefix:, : int(m['codebook_size'])]

"""Parity fixture for the MAGVIT transformer: tests/data/magvit_transformer_parity.npz.

Runs the official code (google-research/magvit on sys.path; see tools/make_parity_fixtures.py):
`videogvt/models/simplified_bert.py` `Bert` at a tiny size with random weights from a fixed
numpy seed, built with the arguments `videogvt/train_lib/maskgvt_train_lib.py`
`get_bert_model` gives it (that module needs clu / scenic / tensorflow, so its vocabulary
arithmetic is restated in `_official_model`, with the special-token count checked against
`task_registry.SpecialTokens`), in two layouts:

* ``single``: single-task class-conditional (UCF-101's `full_generation`): sequence
  ``[K + label | UNCOND, latents]``, latents masked with `mask_utils.random_mask`;
* ``multi``: multi-task (BAIR's `multi_task`, no classes) with segment embeddings
  (`transformer.use_condition_segment`): ``[task token, UNCOND, latents]``, latents masked with
  `mask_utils.random_mask(condition_mode='cond->input')`, which puts condition tokens (segment
  id 1) at masked positions of the condition region.

Saved per layout ``<layout>/...``: the params flattened with the official naming
(``<layout>/params/BertEmbed_0/word_embeddings/embedding``, ...), ``input_ids``,
``segment_ids`` (multi), the official ``logits`` and a config json; also the official param
shapes of UCF-101 B (single-task) and BAIR multi-task B with segments (``jax.eval_shape``).

The official MAGVIT decoder (`videogvt/train_lib/parallel_decode.py`) is run on the single-task
model as `maskgvt_train_lib` runs it for class-conditional generation (its `decode_fn` puts the
class token before the latents and keeps the codebook logits; full generation's mask function
`mask_utils.random_block_mask` with block (1, 1, 1), no condition), greedy: `sampling_topk=1`
and `mask_temperature=0` (no Gumbel noise on the confidences), cosine schedule, DECODE_STEPS
steps. Saved: ``decode/labels``, the masked count of each step's input (``decode/masked_before_
step`` [T, b], read by a ``jax.debug.callback`` in ``decode_fn``) and the final tokens
``decode/tokens`` [b, t, h, w]. The multi-task decoder is not run: it is driven by the task's
mask function, condition tokens and segment ids, which our COMMIT decoder does not take
(segments are a model option only, not wired into our sampler).

Compatibility shim for today's jax: ``jnp.DeviceArray`` aliased to ``jax.Array``.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from parity import common

NAME = 'magvit_transformer_parity.npz'
K, LATENT = 64, (2, 4, 4)
HIDDEN, LAYERS, HEADS, MLP = 32, 2, 2, 64
SEED = 0
DECODE_STEPS = 8  # 32 tokens: no step where cos(pi r / 2) * 32 is an integer (see the test)
# layout -> (dataset classes, multi_task, use_condition_segment)
LAYOUTS = {'single': (3, False, False), 'multi': (0, True, True)}


def _official_model(
  codebook, num_classes, multi_task, use_segment, latent, hidden, layers, heads, mlp
):
  """simplified_bert.Bert as maskgvt_train_lib.get_bert_model builds it."""
  from videogvt.models import simplified_bert
  from videogvt.train_lib import task_registry

  num_slots = 16 if multi_task else 1  # get_num_special_tokens
  if multi_task:
    assert -min(task_registry.SpecialTokens) < num_slots
  vocab = codebook + (num_classes + 1) + num_slots  # codebook + classes + UNCOND + special
  total = (2 if multi_task else 1) + int(np.prod(latent))  # [task,] class, latents
  return simplified_bert.Bert(
    vocab_size=vocab,
    hidden_size=hidden,
    num_hidden_layers=layers,
    num_attention_heads=heads,
    intermediate_size=mlp,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    max_position_embeddings=total,
    num_segments=2 if use_segment else 0,
    pad_token_id=task_registry.SpecialTokens.PAD,
  ), total


def _inputs(layout, rng):
  """(input_ids, segment_ids) [b, prefix + n] as maskgvt_train_lib.generate_masked_tokens
  makes them (its prefix tokens via mask_utils.no_mask, latents via mask_utils.random_mask)."""
  import jax
  import jax.numpy as jnp
  from videogvt.train_lib import mask_utils, task_registry

  num_classes, multi_task, _ = LAYOUTS[layout]
  st = task_registry.SpecialTokens
  b = 5 if multi_task else 4
  latents = jnp.asarray(rng.integers(0, K, (b, *LATENT)), jnp.int32)
  ratios = jnp.asarray([1.0, 0.5, 0.25, 0.7, 0.9][:b], jnp.float32)
  if multi_task:
    tasks = [
      st.TASK_FRAME_PREDICTION,
      st.TASK_FRAME_INTERPOLATION,
      st.TASK_OUTPAINTING,
      st.TASK_INPAINTING,
      st.TASK_FULL_GENERATION,
    ]
    # Condition regions: first latent frame (FP), first + last (FI), a border ring (OP),
    # the centre (IP), none (full generation).
    cond_mask = np.zeros((b, *LATENT), bool)
    cond_mask[0, 0] = True
    cond_mask[1, [0, -1]] = True
    cond_mask[2] = True
    cond_mask[2, :, 1:-1, 1:-1] = False
    cond_mask[3, :, 1:-1, 1:-1] = True
    batch = {
      'inputs': latents,
      'cond_inputs': jnp.asarray(rng.integers(0, K, (b, *LATENT)), jnp.int32),
      'cond_mask': jnp.asarray(cond_mask),
    }
    mode = 'cond->input'
    prefix = [jnp.asarray(tasks, jnp.int32)[:, None], jnp.full((b, 1), K + num_classes)]
  else:
    labels = jnp.asarray([0, 2, 1, 0], jnp.int32)
    class_tokens = (labels + K).at[3].set(K + num_classes)  # the last one UNCOND
    batch, mode, prefix = {'inputs': latents}, None, [class_tokens[:, None]]
  parts = [mask_utils.no_mask({'inputs': p.astype(jnp.int32)}) for p in prefix]
  parts.append(
    mask_utils.random_mask(batch, jax.random.PRNGKey(SEED + 1), ratios, condition_mode=mode)
  )
  tokens = mask_utils.concat_tokens(*parts)
  return np.asarray(tokens['masked_inputs'], np.int32), np.asarray(tokens['segment_ids'], np.int32)


def _decode(model, variables):
  """The official parallel decoder, greedy, on the single-task model (see the docstring)."""
  import functools

  import jax
  import jax.numpy as jnp
  from videogvt.train_lib import mask_utils, parallel_decode

  num_classes = LAYOUTS['single'][0]
  labels = np.asarray([1, 2, num_classes], np.int32)  # the last one UNCOND
  counts = []

  def record(c):
    counts.append(np.asarray(c))

  def decode_fn(cur_inputs, segment_ids, uncond_inputs):
    del segment_ids, uncond_inputs
    flat_inputs = cur_inputs.reshape(cur_inputs.shape[0], -1)
    jax.debug.callback(record, jnp.sum(flat_inputs == -1, axis=-1), ordered=True)
    ids = jnp.concatenate([jnp.asarray(labels + K)[:, None], flat_inputs], axis=1)
    logits = model.apply(variables, ids, deterministic=True)[:, 1:, :K]
    return logits.reshape(*cur_inputs.shape, K)

  mask_fn = functools.partial(mask_utils.random_block_mask, block_shape=(1, 1, 1))

  def mask_fn_with_cond(cur_inputs, *args, **kwargs):
    return mask_fn({'inputs': cur_inputs}, *args, **kwargs)

  out = parallel_decode.decode(
    jnp.zeros((3, *LATENT), jnp.int32),
    decode_fn,
    mask_fn_with_cond,
    jax.random.PRNGKey(SEED),
    num_iter=DECODE_STEPS,
    sampling_topk=1,
    mask_temperature=0.0,
    mask_scheduling_method='cosine',
  )
  tokens = np.asarray(jax.block_until_ready(out))[:, -1]
  jax.effects_barrier()
  counts = np.stack(counts)
  assert counts.shape == (DECODE_STEPS, 3), counts.shape
  assert (tokens >= 0).all() and len(np.unique(tokens)) > 1
  return {
    'decode/labels': labels,
    'decode/masked_before_step': counts.astype(np.int32),
    'decode/tokens': tokens.astype(np.int32),
  }


def _released_shapes():
  """{name: {path: shape}} of the official UCF-101 B and BAIR multi-task B transformers."""
  import jax
  import jax.numpy as jnp
  from videogvt.configs import maskgvt_bair_multitask_config, maskgvt_ucf101_config

  out = {}
  for name, cfg, segment in (
    ('ucf101_B', maskgvt_ucf101_config.get_config('B'), False),
    ('bair_multitask_B_segments', maskgvt_bair_multitask_config.get_config('B'), True),
  ):
    t = cfg.transformer
    codebook = cfg.vq_model_from.config.vqvae.codebook_size
    model, total = _official_model(
      codebook,
      cfg.dataset_configs.num_classes,
      bool(cfg.get('multi_task', False)),
      segment,
      tuple(t.latent_shape),
      t.hidden_size,
      t.num_layers,
      t.num_heads,
      t.mlp_dim,
    )
    ids = jnp.zeros((1, total), jnp.int32)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), ids, jnp.zeros_like(ids))
    out[name] = dict(
      shapes={k: list(v.shape) for k, v in common.flat(shapes).items()},
      config=dict(
        codebook_size=codebook,
        num_classes=cfg.dataset_configs.num_classes,
        multi_task=bool(cfg.get('multi_task', False)),
        seq_len=int(np.prod(t.latent_shape)),
        hidden_size=t.hidden_size,
        num_layers=t.num_layers,
        num_heads=t.num_heads,
        mlp_dim=t.mlp_dim,
        num_segments=2 if segment else 0,
      ),
    )
  return out


def make(out_dir: pathlib.Path) -> pathlib.Path:
  common.jax_shim()
  import jax
  import jax.numpy as jnp

  rng = np.random.default_rng(SEED)
  arrays = {}
  for layout, (num_classes, multi_task, segment) in LAYOUTS.items():
    model, total = _official_model(
      K, num_classes, multi_task, segment, LATENT, HIDDEN, LAYERS, HEADS, MLP
    )
    ids0 = jnp.zeros((1, total), jnp.int32)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), ids0, jnp.zeros_like(ids0))
    flat = common.random_bert_params(shapes['params'], rng)
    variables = {'params': jax.tree_util.tree_map(jnp.asarray, common.unflat(flat))}
    input_ids, segment_ids = _inputs(layout, rng)
    assert input_ids.shape[1] == total
    assert (input_ids == -1).any() and (input_ids[:, -int(np.prod(LATENT)) :] >= 0).any()
    if segment:
      assert segment_ids.any(), 'no condition token landed on a masked position'
    logits = model.apply(
      variables,
      jnp.asarray(input_ids),
      jnp.asarray(segment_ids) if segment else None,
      deterministic=True,
    )
    arrays.update({f'{layout}/params/{k}': v for k, v in flat.items()})
    arrays[f'{layout}/input_ids'] = input_ids
    if segment:
      arrays[f'{layout}/segment_ids'] = segment_ids
    arrays[f'{layout}/logits'] = np.asarray(logits, np.float32)
    arrays[f'{layout}/config_json'] = np.array(
      json.dumps(
        dict(
          codebook_size=K,
          num_classes=num_classes,
          multi_task=multi_task,
          num_segments=2 if segment else 0,
          latent_shape=list(LATENT),
          hidden_size=HIDDEN,
          num_layers=LAYERS,
          num_heads=HEADS,
          mlp_dim=MLP,
        )
      )
    )
    if layout == 'single':
      arrays.update(_decode(model, variables))
  arrays['released_shapes_json'] = np.array(json.dumps(_released_shapes()))
  path = pathlib.Path(out_dir) / NAME
  np.savez_compressed(path, **arrays)
  return path

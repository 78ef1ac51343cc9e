"""Parity fixture for the MaskGIT transformer: tests/data/maskgit_transformer_parity.npz.

Runs the official code (google-research/maskgit on sys.path; see tools/make_parity_fixtures.py):
`maskgit/nets/maskgit_transformer.py` at a tiny size with random weights from a fixed numpy
seed, on fixed input sequences (official convention: ``[K + label, t_1..t_n]``, masked
positions ``-1``), and `maskgit/libml/parallel_decode.py` (cosine schedule, T = 8, choice
temperature 0) on that model, twice:

* as released (categorical token sampling, fixed rng): masked counts per step, final tokens;
* greedy: ``jax.random.categorical`` swapped for an argmax while it runs, so that its final
  tokens do not depend on the rng stream (our decoder: ``temperature=0``).

The masked count per step is read inside the official loop by a ``jax.debug.callback`` in
``tokens_to_logits`` (the count of ``-1`` in each step's input). Also records the parameter
shapes of the released 256 / 512 models (``jax.eval_shape`` of the official model built as
`maskgit/inference.py` builds it), so tests need no official code.

Compatibility shim for today's jax (applied here at runtime, the checkout is not edited):
``jnp.DeviceArray`` (used as an annotation by parallel_decode.State) is aliased to
``jax.Array`` when absent.
"""

from __future__ import annotations

import contextlib
import json
import pathlib

import numpy as np

from parity import common

NAME = 'maskgit_transformer_parity.npz'
# Tiny official model.
K, C, H, W = 16, 10, 4, 4
HIDDEN, LAYERS, HEADS, MLP = 32, 2, 2, 64
NUM_STEPS, CHOICE_TEMPERATURE, SCHEDULE = 8, 0.0, 'cosine'
SEED = 0


@contextlib.contextmanager
def _greedy_categorical():
  """jax.random.categorical -> argmax of the logits, restored afterwards."""
  import jax
  import jax.numpy as jnp

  original = jax.random.categorical

  def argmax(key, logits, axis=-1, **kwargs):
    del key, kwargs
    return jnp.argmax(logits, axis=axis)

  jax.random.categorical = argmax
  try:
    yield
  finally:
    jax.random.categorical = original


def _official_model(mt, codebook, classes, seq_len, hidden, layers, heads, mlp, dropout=0.1):
  """The official Transformer as maskgit/inference.py builds it."""
  return mt.Transformer(
    vocab_size=codebook + classes + 1,
    hidden_size=hidden,
    num_hidden_layers=layers,
    num_attention_heads=heads,
    intermediate_size=mlp,
    hidden_dropout_prob=dropout,
    attention_probs_dropout_prob=dropout,
    max_position_embeddings=seq_len + 1,
  )


def _released_shapes(mt, image_size):
  """{path: shape} of the released model at image_size (maskgit/inference.py's sizes)."""
  import jax
  import jax.numpy as jnp
  from maskgit.configs import maskgit_class_cond_config

  cf = maskgit_class_cond_config.get_config()
  latent = image_size // cf.transformer.patch_size
  model = _official_model(
    mt,
    cf.vqvae.codebook_size,
    cf.num_class,
    latent**2,
    cf.transformer.num_embeds,
    cf.transformer.num_layers,
    cf.transformer.num_heads,
    cf.transformer.intermediate_size,
    cf.transformer.dropout_rate,
  )
  shapes = jax.eval_shape(
    model.init, jax.random.PRNGKey(0), jnp.zeros((1, latent**2 + 1), jnp.int32)
  )
  sizes = dict(
    codebook_size=cf.vqvae.codebook_size,
    num_classes=cf.num_class,
    seq_len=latent**2,
    hidden_size=cf.transformer.num_embeds,
    num_layers=cf.transformer.num_layers,
    num_heads=cf.transformer.num_heads,
    mlp_dim=cf.transformer.intermediate_size,
    dropout_rate=cf.transformer.dropout_rate,
    mask_token_id=cf.transformer.mask_token_id,
    choice_temperature=cf.sample_choice_temperature,
    mask_scheduling_method=cf.mask_scheduling_method,
  )
  return {k: list(v.shape) for k, v in common.flat(shapes).items()}, sizes


def make(out_dir: pathlib.Path) -> pathlib.Path:
  common.jax_shim()
  import jax
  import jax.numpy as jnp
  from maskgit.libml import parallel_decode
  from maskgit.nets import maskgit_transformer as mt

  n = H * W
  rng = np.random.default_rng(SEED)
  model = _official_model(mt, K, C, n, HIDDEN, LAYERS, HEADS, MLP)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, n + 1), jnp.int32))
  flat = common.random_bert_params(shapes['params'], rng)
  variables = {'params': jax.tree_util.tree_map(jnp.asarray, common.unflat(flat))}

  # Forward: 4 sequences, all / none / half / some positions masked.
  labels = np.array([0, 3, 7, 9], np.int32)
  tokens = rng.integers(0, K, (4, n)).astype(np.int32)
  masked = np.zeros((4, n), bool)
  masked[0] = True
  masked[2, ::2] = True
  masked[3] = rng.random(n) < 0.3
  tokens = np.where(masked, -1, tokens)
  input_ids = np.concatenate([(labels + K)[:, None], tokens], axis=1).astype(np.int32)
  logits = model.apply(variables, jnp.asarray(input_ids), deterministic=True)
  logits = np.asarray(logits, np.float32)

  # Decoding: 3 sequences with 16, 12 and 10 unknown tokens.
  d_labels = np.array([1, 5, 8], np.int32)
  d_tokens = rng.integers(0, K, (3, n)).astype(np.int32)
  d_tokens[0] = -1
  d_tokens[1, rng.permutation(n)[:12]] = -1
  d_tokens[2, rng.permutation(n)[:10]] = -1
  d_ids = np.concatenate([(d_labels + K)[:, None], d_tokens], axis=1).astype(np.int32)

  def run_decode(seed):
    counts = []

    def record(c):
      counts.append(np.asarray(c))

    def tokens_to_logits(seq):
      jax.debug.callback(record, jnp.sum(seq == -1, axis=-1), ordered=True)
      out = model.apply(variables, seq, deterministic=True)
      return out[..., :K]

    seqs = parallel_decode.decode(
      jnp.asarray(d_ids),
      jax.random.PRNGKey(seed),
      tokens_to_logits,
      mask_token_id=-1,
      num_iter=NUM_STEPS,
      choice_temperature=CHOICE_TEMPERATURE,
      mask_scheduling_method=SCHEDULE,
    )
    seqs = np.asarray(jax.block_until_ready(seqs))
    jax.effects_barrier()
    counts = np.stack(counts)  # [T, b]: unknown tokens in each step's input
    assert counts.shape == (NUM_STEPS, 3), counts.shape
    assert (seqs[:, -1] != -1).all(), 'official decode left masked tokens'
    return counts, seqs

  with _greedy_categorical():
    greedy_counts, greedy_seqs = run_decode(SEED)
  sampled_counts, sampled_seqs = run_decode(SEED)
  assert (greedy_counts == sampled_counts).all(), (greedy_counts, sampled_counts)

  s256, sizes256 = _released_shapes(mt, 256)
  s512, sizes512 = _released_shapes(mt, 512)
  arrays = {f'params/{k}': v for k, v in flat.items()}
  arrays.update(
    {
      'config_json': np.array(
        json.dumps(
          dict(
            codebook_size=K,
            num_classes=C,
            seq_len=n,
            hidden_size=HIDDEN,
            num_layers=LAYERS,
            num_heads=HEADS,
            mlp_dim=MLP,
            mask_token_id=-1,
            num_steps=NUM_STEPS,
            choice_temperature=CHOICE_TEMPERATURE,
            schedule=SCHEDULE,
            decode_seed=SEED,
          )
        )
      ),
      'input_ids': input_ids,
      'logits': logits,
      'decode_input_ids': d_ids,
      'decode_greedy_masked_before_step': greedy_counts.astype(np.int32),
      'decode_greedy_seqs': greedy_seqs.astype(np.int32),
      'decode_sampled_masked_before_step': sampled_counts.astype(np.int32),
      'decode_sampled_seqs': sampled_seqs.astype(np.int32),
      'official256_shapes_json': np.array(json.dumps(dict(shapes=s256, config=sizes256))),
      'official512_shapes_json': np.array(json.dumps(dict(shapes=s512, config=sizes512))),
    }
  )
  path = pathlib.Path(out_dir) / NAME
  np.savez_compressed(path, **arrays)
  return path

r"""Masked transformer on MAGVIT-v2 (LFQ) tokens, the large vocabulary factorised (stage 2).

  python -m magvit_jax.train --config=configs/magvit2_transformer.py \
      --config.tokenizer_workdir=runs/magvit2_video --workdir=runs/magvit2_transformer
  python -m magvit_jax.train --config=configs/magvit2_transformer.py:digits \
      --config.tokenizer_workdir=runs/magvit2_digits --workdir=runs/magvit2_transformer_digits

Argument: `kinetics` (default; 2^18 codes factorised into 2 sub-tokens of 2^9 with one embedding
table and one output head each, as MAGVIT-v2 does; 5 x 16 x 16 tokens of 17 x 128 x 128 clips;
the transformer body is MaskGIT's) or `digits` (tiny CPU variant on the tokens of
`configs/magvit2_tokenizer_video.py:digits`: 2^10 codes = 2 x 2^5, 2 x 8 x 8 tokens) or
`digits_fp` (the same model trained with MAGVIT's COMMIT on frame prediction from the causal
tokens: the first frame is known; MAGVIT-v2's causal tokenizer codes frame 0 alone as latent
frame 0, so the condition tokens of that frame are exactly the clip's own):

  python -m magvit_jax.train --config=configs/magvit2_transformer.py:digits_fp \
      --config.tokenizer_workdir=runs/magvit2_digits --workdir=runs/magvit2_fp
  python -m magvit_jax.evaluate --workdir=runs/magvit2_fp --task=FP
"""

import ml_collections

from magvit_jax.config_schema import base_config, check_variant, tiny_cpu_variant
from magvit_jax.masking.commit import TASKS

VARIANTS = ('kinetics', 'digits', 'digits_fp')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = check_variant(__file__, arg, VARIANTS)
  c = base_config('transformer')
  c.data.update(
    dict(
      name='kinetics600',
      image_size=128,
      num_frames=17,
      train_split='train',
      eval_split='test',
      num_classes=600,
    )
  )
  c.model.update(
    dict(
      codebook_size=2**18,
      num_sub_tokens=2,
      num_classes=600,
      hidden_size=768,
      num_layers=24,
      num_heads=16,
      mlp_dim=3072,
      dropout_rate=0.1,
    )
  )
  c.masking.update(dict(schedule='cosine', label_smoothing=0.1, class_dropout=0.1))
  c.sampling.update(dict(num_steps=12))
  c.optimizer.update(
    dict(
      lr=1e-4,
      b1=0.9,
      b2=0.96,
      weight_decay=0.045,
      warmup_steps=5000,
      decay='cosine',
      decay_steps=500_000,
    )
  )
  c.batch_size = 256
  c.num_train_steps = 500_000

  if variant in ('digits', 'digits_fp'):
    tiny_cpu_variant(
      c,
      dataset='magvit_moving_digits',
      image_size=32,
      num_frames=5,
      steps=600,
      batch_size=32,
      eval_batch_size=50,
      lr=1e-3,
    )
    c.model.update(
      dict(
        codebook_size=2**10,
        num_sub_tokens=2,
        num_classes=10,
        hidden_size=128,
        num_layers=4,
        num_heads=4,
        mlp_dim=512,
      )
    )
    c.sampling.update(dict(num_steps=8, guidance_scale=1.0))
    c.optimizer.weight_decay = 0.01
  if variant == 'digits_fp':
    # COMMIT (magvit_jax/masking/commit.py): one task token per COMMIT task; FP from frame 0.
    c.model.num_tasks = len(TASKS)
    c.commit.update(dict(tasks=('FP',), fp_frames=1))
    c.sampling.guidance_scale = 0.0
  return c

r"""MaskGIT class-conditional transformer (stage 2).

  python -m magvit_jax.train --config=configs/maskgit_imagenet.py \
      --config.tokenizer_workdir=runs/vqgan --workdir=runs/maskgit
  python -m magvit_jax.train --config=configs/maskgit_imagenet.py:digits \
      --config.tokenizer_workdir=runs/vqgan_digits --workdir=runs/maskgit_digits

Argument: `imagenet` (default; the paper's model: 24 layers, 16 heads, hidden
768, MLP 3072, dropout 0.1, codebook 1024, 16x16 tokens at 256x256, cosine
schedule, T=8, choice temperature 4.5, AdamW b1 0.9 b2 0.96, lr 1e-4 with 5k
warmup, label smoothing 0.1, batch 256) or `digits` (tiny CPU variant on the
embedded digits), or `official256` / `official512` (the released MaskGIT
transformer's exact architecture, 16x16 / 32x32 tokens at 256x256 / 512x512:
BERT post-LN blocks, `model.norm_layout='post'`, and the released sampler's
settings: cosine schedule, 16 steps, choice temperature 4.5), so that its
checkpoints maskgit_imagenet{256,512}_checkpoint load through
magvit_jax.convert.maskgit_transformer; see docs/pretrained.md.
"""

import ml_collections

from magvit_jax.config_schema import base_config, check_variant, tiny_cpu_variant

VARIANTS = ('imagenet', 'digits', 'official256', 'official512')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = check_variant(__file__, arg, VARIANTS)
  c = base_config('transformer')
  c.model.update(
    dict(
      codebook_size=1024,
      num_classes=1000,
      hidden_size=768,
      num_layers=24,
      num_heads=16,
      mlp_dim=3072,
      dropout_rate=0.1,
      num_sub_tokens=1,
    )
  )
  c.masking.update(dict(schedule='cosine', label_smoothing=0.1, class_dropout=0.0))
  c.sampling.update(
    dict(
      num_steps=8, schedule='cosine', choice_temperature=4.5, temperature=1.0, guidance_scale=0.0
    )
  )
  c.optimizer.update(
    dict(
      lr=1e-4,
      b1=0.9,
      b2=0.96,
      weight_decay=0.045,
      warmup_steps=5000,
      decay='cosine',
      decay_steps=1_500_000,
    )
  )
  c.batch_size = 256
  c.num_train_steps = 1_500_000  # ~300 epochs of ImageNet at batch 256.

  if variant == 'digits':
    tiny_cpu_variant(
      c,
      dataset='magvit_digits',
      image_size=32,
      steps=600,
      batch_size=64,
      eval_batch_size=128,
      lr=1e-3,
    )
    c.model.update(
      dict(
        codebook_size=256,
        num_classes=10,
        hidden_size=128,
        num_layers=4,
        num_heads=4,
        mlp_dim=512,
        dropout_rate=0.1,
      )
    )
    c.masking.class_dropout = 0.1
    c.sampling.update(dict(num_steps=8, choice_temperature=4.5, guidance_scale=1.0))
    c.optimizer.weight_decay = 0.01
  elif variant in ('official256', 'official512'):
    # maskgit/configs/maskgit_class_cond_config.py + maskgit/inference.py: the sizes above,
    # post-LN blocks; the released sampler runs 16 steps (num_iterations=16), cosine,
    # choice temperature 4.5, plain categorical sampling, no guidance.
    c.model.norm_layout = 'post'
    c.data.image_size = 256 if variant == 'official256' else 512
    c.sampling.num_steps = 16
  return c

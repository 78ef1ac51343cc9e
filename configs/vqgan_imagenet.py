r"""VQGAN tokenizer of MaskGIT (stage 1).

  python -m magvit_jax.train --config=configs/vqgan_imagenet.py --workdir=runs/vqgan
  python -m magvit_jax.train --config=configs/vqgan_imagenet.py:digits --workdir=runs/vqgan_digits

Argument: `imagenet` (default; 256x256, 16x16 tokens, codebook 1024 x 256,
filters 128, multipliers (1, 1, 2, 2, 4), 2 residual blocks: the MaskGIT
tokenizer) or `digits` (tiny CPU variant on the embedded 32x32 digits:
8x8 tokens), or `official256` / `official512` (the released MaskGIT tokenizer's exact
architecture at 256x256 -> 16x16 / 512x512 -> 32x32 tokens, so that its checkpoints
tokenizer_imagenet{256,512}_checkpoint load through magvit_jax.convert.maskgit_vqgan;
see docs/pretrained.md).
"""

import ml_collections

from magvit_jax.config_schema import base_config, check_variant, tiny_cpu_variant

VARIANTS = ('imagenet', 'digits', 'official256', 'official512')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = check_variant(__file__, arg, VARIANTS)
  c = base_config('tokenizer', 'vqgan')
  c.model.update(
    dict(
      filters=128,
      channel_multipliers=(1, 1, 2, 2, 4),
      num_res_blocks=2,
      embedding_dim=256,
      codebook_size=1024,
      commitment_cost=0.25,
      num_groups=32,
    )
  )
  c.losses.update(
    dict(  # MaskGIT never released its recipe; VQGAN-style values (check).
      gan_weight=0.1, gan_loss='hinge', disc_start_step=20_000, perceptual_weight=0.1
    )
  )
  c.ema_decay = 0.999
  c.optimizer.update(dict(lr=1e-4, b1=0.9, b2=0.99, warmup_steps=2000, decay='constant'))
  c.batch_size = 256
  c.num_train_steps = 1_000_000

  if variant == 'digits':
    tiny_cpu_variant(
      c,
      dataset='magvit_digits',
      image_size=32,
      steps=400,
      batch_size=64,
      eval_batch_size=128,
      lr=2e-3,
      disc_start_step=200,
    )
    c.model.update(
      dict(
        filters=32,
        channel_multipliers=(1, 2, 2),
        num_res_blocks=1,
        embedding_dim=32,
        codebook_size=256,
        num_groups=8,
      )
    )
  elif variant in ('official256', 'official512'):
    # google-research/maskgit configs/vqgan_config.py (vqvae section; the same tokenizer for
    # both sizes), plus the reference code's quirks (magvit_jax/models/vqgan.py).
    c.data.image_size = 256 if variant == 'official256' else 512
    c.model.update(
      dict(
        filters=128,
        channel_multipliers=(1, 1, 2, 2, 4),
        num_res_blocks=2,
        embedding_dim=256,
        codebook_size=1024,
        commitment_cost=0.25,
        num_groups=32,  # flax GroupNorm's default, as the reference code uses it.
        shortcut='output',
        res_conv_bias=False,
        encoder_in_bias=False,
        pixel_range='unit',
      )
    )
  return c

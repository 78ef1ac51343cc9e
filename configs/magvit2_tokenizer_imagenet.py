r"""MAGVIT-v2 image tokenizer: the causal 3D CNN + LFQ tokenizer applied to images (stage 1).

  python -m magvit_jax.train --config=configs/magvit2_tokenizer_imagenet.py --workdir=runs/magvit2_in
  python -m magvit_jax.train --config=configs/magvit2_tokenizer_imagenet.py:digits \
      --workdir=runs/magvit2_in_digits

Images are 1-frame videos, so the same weights also tokenize videos (the first frame is always
coded on its own). Argument: `imagenet` (default; 256 x 256 -> 16 x 16 tokens, 2^18 codes,
filters 128, channel multipliers (1, 1, 2, 2, 4), 4 residual blocks; the exact layer sizes of
the paper's image tokenizer are not published in full, these follow its video tokenizer with one
more 2x spatial level; LFQ recipe of docs/lfq.md: entropy weight 0.1, temperature 0.01,
commitment 0.25), `digits` (tiny CPU variant on the embedded 32 x 32 digits: 8 x 8
tokens, 2^10 codes) or `open_magvit2_256`: the architecture of TencentARC's Open-MAGVIT2
256 x 256 image tokenizer (configs/Open-MAGVIT2/gpu/imagenet_lfqgan_256_L.yaml: ch 128, ch_mult
(1, 1, 2, 2, 4), 4 residual blocks, z_channels 18, 2^18 codes) as options of our model: a
per-frame 2D CNN, PyTorch padding, no residual-block biases, per-level adaptive GroupNorm on
pooled latent statistics, sign(0) = -1; its LFQ entropy temperature 0.01 (`entropy_loss`'s)
and loss weights (codebook 0.1, commitment 0.25). Load the released weights with
`magvit_jax/convert/open_magvit2.py` (docs/pretrained.md).

Parameter counts (printed by tests/test_magvit2_pipeline.py): imagenet 380.35M, digits 0.85M.
"""

import ml_collections

from magvit_jax.config_schema import base_config, check_variant, tiny_cpu_variant

VARIANTS = ('imagenet', 'digits', 'open_magvit2_256')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = check_variant(__file__, arg, VARIANTS)
  c = base_config('tokenizer', 'magvit2')
  c.model.update(
    dict(
      filters=128,
      channel_multipliers=(1, 1, 2, 2, 4),
      num_res_blocks=4,
      temporal_downsample=(False, False, True, True),
      num_bits=18,
      num_groups=32,
      # LFQ recipe (docs/lfq.md): T = 0.01 as Open-MAGVIT2 and the official MAGVIT code (the
      # pre-recipe value: --config.model.entropy_temperature=1.0); no norm before LFQ; the
      # entropy weight is not annealed (losses.entropy_weight_schedule='constant', the
      # default, as the released Open-MAGVIT2 configs).
      entropy_weight=0.1,
      commitment_weight=0.25,
      entropy_temperature=0.01,
      entropy_chunk_size=1024,
      pre_quant_norm='none',
    )
  )
  c.losses.update(
    dict(  # As the video tokenizer (check).
      gan_weight=0.1,
      gan_loss='non_saturating',
      r1_gamma=10.0,
      lecam_weight=0.05,  # MAGVIT-v2's (check; MAGVIT's shipped configs have 0).
      disc_start_step=20_000,
      perceptual_weight=0.1,
      perceptual_network='resnet50_logits',  # Weights: convert_resnet50 (docs/tokenizer_training.md).
    )
  )
  c.ema_decay = 0.999
  c.optimizer.update(dict(lr=1e-4, b1=0.9, b2=0.99, warmup_steps=5000, decay='constant'))
  c.batch_size = 256
  c.num_train_steps = 1_000_000

  if variant == 'open_magvit2_256':
    c.model.update(
      dict(
        filters=128,
        channel_multipliers=(1, 1, 2, 2, 4),
        num_res_blocks=4,
        temporal_downsample=(False, False, False, False),
        num_bits=18,
        num_groups=32,
        entropy_weight=0.1,
        commitment_weight=0.25,
        entropy_temperature=0.01,
        temporal_kernel_size=1,
        spatial_padding='symmetric',
        res_conv_bias=False,
        encoder_in_bias=False,
        adaptive_norm='level_start',
        zero_sign=-1,
      )
    )
    c.data.image_size = 256

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
        filters=16,
        channel_multipliers=(1, 2, 2),
        num_res_blocks=1,
        temporal_downsample=(True, True),
        num_bits=10,
        num_groups=4,
      )
    )
  return c

"""MAGVIT config presets shared by configs/magvit_{ucf101,bair,k600}.py (Yu et al., CVPR 2023).

Each of those files calls `get_magvit_config(dataset, arg)` with `arg` one of

  B, L                 the COMMIT transformer of MAGVIT-B / -L (stage 2)
  tokenizer_B / _L     the 3D-VQ tokenizer of that size (stage 1)
  digits               tiny transformer on the embedded moving digits (CPU)
  tokenizer_digits     tiny 3D-VQ on the embedded moving digits (CPU)
  official_B / _L      the official MAGVIT 3D-VQ (google-research/magvit, videogvt/configs/
                       vqgan3d_{ucf101,bair}_config.py B / L): the architecture options that
                       make our VQGAN3D compute the official function (OFFICIAL_3DVQ_OPTIONS;
                       params via magvit_jax/convert/magvit_3dvq.py) and its training values

Paper facts (../shared/PAPERS.md): 3D-VQ B / L = filters 64 / 128, 2 residual blocks,
codebook 1024, embedding 256, channel multipliers (1, 2, 2, 4), temporal downsampling
(yes, yes, no), 16 x 128 x 128 -> 4 x 16 x 16; 3D StyleGAN discriminator (2, 4, 4, 4, 4),
non-saturating loss, adversarial weight 0.1, R1 10, perceptual 0.1, LeCAM 0, generator EMA
0.999, Adam b1 0 b2 0.99; transformers B = 12 layers, hidden 768; L = 24 layers, hidden 1024;
12 decoding steps. The paper's parameter counts (B 128M, L 464M) are transformer + 3D-VQ
(tests/test_magvit_configs.py checks both within 5%). Values the paper does not fix are marked
"check".
"""

from __future__ import annotations

import ml_collections

from magvit_jax.config_schema import base_config, check_variant, tiny_cpu_variant
from magvit_jax.masking.commit import TASKS

ARGS = ('B', 'L', 'tokenizer_B', 'tokenizer_L', 'digits', 'tokenizer_digits')
OFFICIAL_ARGS = ('official_B', 'official_L')

# config.model options of the official 3D-VQ (videogvt/models/enc_dec_3dcnn.py): flax 'SAME'
# convs (zeros in time too), no biases in the residual blocks nor on the encoder's first conv,
# pixels in [0, 1] (the official data pipeline's zero_centering=False).
OFFICIAL_3DVQ_OPTIONS = dict(
  temporal_padding='constant', res_conv_bias=False, encoder_in_bias=False, pixel_range='unit'
)
# Training values of the official configs, per dataset and size: (batch size, epochs, train
# clips). videogvt/configs/vqgan3d_ucf101_config.py / vqgan3d_bair_config.py. There is no
# official K600 3D-VQ config: the README's K600 3D-VQ has UCF-101's shapes (16 x 128 x 128 ->
# 4 x 16 x 16, 1024 codes), so K600 takes UCF-101's architecture and keeps the training values
# of `tokenizer_config` (check).
OFFICIAL_TRAINING = {
  'ucf101': {'B': (128, 500, 9_537), 'L': (256, 2000, 9_537)},
  'bair': {'B': (128, 400, 43_264), 'L': (256, 800, 43_264)},
}

# Per dataset: TFDS name/data fields, clip size, classes and the COMMIT tasks of the paper's
# benchmark on it.
DATASETS = {
  'ucf101': dict(
    data=dict(
      name='ucf101',
      image_size=128,
      num_frames=16,
      train_split='train',
      eval_split='test',
      num_classes=101,
    ),
    tasks=('CG',),
    fp_frames=1,
    fi_frames=1,
  ),  # UCF-101 class-conditional generation.
  'bair': dict(
    data=dict(
      name='bair_robot_pushing_small',
      video_key='image_main',
      image_size=64,
      num_frames=16,
      train_split='train',
      eval_split='test',
      num_classes=0,
    ),
    # BAIR frame prediction from 1 frame; `:B` with --config.commit.tasks for the 8-task
    # benchmark (all but the class-conditional ones).
    tasks=('FP',),
    fp_frames=1,
    fi_frames=1,
  ),
  'k600': dict(
    data=dict(
      name='video_folder',
      folder='',
      image_size=128,
      num_frames=16,
      train_split='train',
      eval_split='validation',
      num_classes=600,
    ),
    tasks=('FP',),
    fp_frames=5,
    fi_frames=1,
  ),  # K600: 5 frames -> 11 frames.
}

TRANSFORMERS = {
  'B': dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072),
  'L': dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096),
  'digits': dict(hidden_size=256, num_layers=6, num_heads=8, mlp_dim=1024),
}

TOKENIZERS = {
  'B': dict(
    filters=64,
    channel_multipliers=(1, 2, 2, 4),
    num_res_blocks=2,
    temporal_downsample=(True, True, False),
    embedding_dim=256,
    codebook_size=1024,
    num_groups=32,
  ),
  'L': dict(
    filters=128,
    channel_multipliers=(1, 2, 2, 4),
    num_res_blocks=2,
    temporal_downsample=(True, True, False),
    embedding_dim=256,
    codebook_size=1024,
    num_groups=32,
  ),
  # Matches configs/vqgan_imagenet.py:digits, so a 2D digits VQGAN inflates into it.
  'digits': dict(
    filters=32,
    channel_multipliers=(1, 2, 2),
    num_res_blocks=1,
    temporal_downsample=(True, False),
    embedding_dim=32,
    codebook_size=256,
    num_groups=8,
  ),
}

# Tiny CPU variants train on the embedded moving digits at 16 x 16 (the digits' native 8 x 8
# resolution on a 2x smaller canvas): 8 frames -> 4 x 4 x 4 tokens.
_DIGITS_DATA = dict(dataset='magvit_moving_digits', image_size=16, num_frames=8)


def tokenizer_config(dataset: str, size: str) -> ml_collections.ConfigDict:
  """The 3D-VQ tokenizer (stage 1) of MAGVIT-`size` on `dataset`."""
  c = base_config('tokenizer', 'vqgan3d')
  # model.inflate_from: workdir of a trained 2D VQGAN of the same widths; a fresh run starts
  # from its weights inflated by model.inflation.
  c.model.update(
    dict(commitment_cost=0.25, temporal_padding='edge', inflation='central', **TOKENIZERS[size])
  )
  c.losses.update(
    dict(
      gan_weight=0.1,
      gan_loss='non_saturating',
      r1_gamma=10.0,
      lecam_weight=0.0,
      perceptual_weight=0.1,
      disc_start_step=0,
    )
  )
  c.discriminator.update(dict(filters=64, channel_multipliers=(2, 4, 4, 4, 4)))
  c.disc_optimizer.update(dict(lr=1e-4, b1=0.0, b2=0.99))
  c.ema_decay = 0.999
  c.optimizer.update(dict(lr=1e-4, b1=0.0, b2=0.99, warmup_steps=0, decay='constant'))
  c.batch_size = 256  # check
  c.num_train_steps = 500_000  # check
  if size == 'digits':
    tiny_cpu_variant(
      c,
      **_DIGITS_DATA,
      steps=300,
      batch_size=16,
      eval_batch_size=50,
      lr=1e-3,
      warmup_steps=20,
      checkpoint_every=100,
    )
    c.optimizer.b1 = 0.9
  else:
    c.data.update(DATASETS[dataset]['data'])
    if dataset == 'bair':  # 64 x 64 -> 16 x 16: two spatial halvings (check).
      c.model.update(dict(channel_multipliers=(1, 2, 4), temporal_downsample=(True, True)))
  return c


def official_tokenizer_config(dataset: str, size: str) -> ml_collections.ConfigDict:
  """The official MAGVIT 3D-VQ of size `size` on `dataset`, as our VQGAN3D (docs/pretrained.md).

  Architecture: `tokenizer_config(dataset, size)` (the same sizes as the official config) plus
  OFFICIAL_3DVQ_OPTIONS. Training (UCF-101, BAIR): the official batch size, epochs, cosine
  decay after a one-epoch warmup; all: a discriminator as wide as the tokenizer
  (discriminator.filters = vqvae.filters; BAIR: channel multipliers (2, 4, 4, 4)). Not
  expressed: the official VQ's entropy loss (ratio 0.1, softmax, temperature 0.01). The
  official runs start from its 2D ImageNet VQGAN inflated 'central' (model.inflate_from with
  model.inflation='central' is the same method, given such a 2D run).
  """
  c = tokenizer_config(dataset, size)
  c.model.update(OFFICIAL_3DVQ_OPTIONS)
  if dataset in OFFICIAL_TRAINING:
    batch, epochs, clips = OFFICIAL_TRAINING[dataset][size]
    steps_per_epoch = clips // batch
    c.batch_size = batch
    c.eval_batch_size = batch // 4
    c.num_train_steps = epochs * steps_per_epoch
    c.optimizer.update(
      dict(warmup_steps=steps_per_epoch, decay='cosine', decay_steps=epochs * steps_per_epoch)
    )
  c.discriminator.filters = c.model.filters
  if dataset == 'bair':
    c.discriminator.channel_multipliers = (2, 4, 4, 4)
  return c


def transformer_config(dataset: str, size: str) -> ml_collections.ConfigDict:
  """The COMMIT transformer (stage 2) of MAGVIT-`size` on `dataset`."""
  spec = DATASETS[dataset]
  c = base_config('transformer')
  c.model.update(
    dict(
      codebook_size=1024,
      num_classes=max(int(spec['data']['num_classes']), 1),
      num_tasks=len(TASKS),
      num_sub_tokens=1,
      dropout_rate=0.1,
      **TRANSFORMERS[size],
    )
  )
  c.commit.update(
    dict(
      tasks=spec['tasks'],
      fp_frames=spec['fp_frames'],
      fi_frames=spec['fi_frames'],
      box_fraction=0.5,
      mask_weight=1.0,
      refine_weight=1.0,
      recon_weight=1.0,
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
  )  # check
  c.batch_size = 256  # check
  c.num_train_steps = 500_000  # check
  if size == 'digits':
    tiny_cpu_variant(
      c,
      **_DIGITS_DATA,
      steps=1200,
      batch_size=32,
      eval_batch_size=50,
      lr=1e-3,
      checkpoint_every=250,
    )
    c.model.update(dict(codebook_size=256, num_classes=10, dropout_rate=0.0))
    # UCF-101's tiny twin learns all ten tasks (the moving digits have labels); BAIR's and
    # K600's learn the temporal tasks: prediction of 4 frames from 4 and interpolation of the
    # 4 middle frames from 2 + 2.
    c.commit.update(
      dict(tasks=TASKS if dataset == 'ucf101' else ('FP', 'FI'), fp_frames=4, fi_frames=2)
    )
    c.sampling.update(dict(num_steps=8))
    c.optimizer.weight_decay = 0.01
  else:
    c.data.update(spec['data'])
  return c


def get_magvit_config(dataset: str, arg: str | None) -> ml_collections.ConfigDict:
  """Config of configs/magvit_<dataset>.py for `arg` in ARGS (default 'B')."""
  arg = check_variant(f'magvit_{dataset}.py', arg, ARGS + OFFICIAL_ARGS)
  if arg.startswith('official_'):
    return official_tokenizer_config(dataset, arg[len('official_') :])
  if arg.startswith('tokenizer_'):
    return tokenizer_config(dataset, arg[len('tokenizer_') :])
  return transformer_config(dataset, arg)

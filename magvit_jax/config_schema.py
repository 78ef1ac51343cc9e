"""The shape of a run's config: shared defaults and validation.

Config files in `configs/` build on `base_config(stage)` and fill in the
model; `validate_config` checks a finished config at the trainer boundary and
names the offending field and the expected value. Configs are locked, so an
override of a key that does not exist (`--config.modle.x=1`) is rejected by
ml_collections before a trainer runs.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import ml_collections

STAGES = ('tokenizer', 'transformer')

# One logical-axis rule table: logical name -> mesh axes.
LOGICAL_AXIS_RULES = [
  ['batch', ['data', 'fsdp']],
  ['embed', 'fsdp'],
  ['mlp', 'tensor'],
  ['heads', 'tensor'],
  ['kv', None],
  ['vocab', None],
  ['classes', None],
  ['length', None],
  ['embed_out', None],
  ['conv_0', None],
  ['conv_1', None],
  ['conv_2', None],
  ['conv_in', None],
  ['conv_out', None],
  ['norm', None],
  ['codes', None],
  ['code_dim', None],
]


def tokenizer_model(name: str = 'vqgan', **overrides: Any) -> ml_collections.ConfigDict:
  """`config.model` of tokenizer `name`: every field at the module's default, then overrides."""
  from magvit_jax.models import tokenizers  # pylint: disable=g-import-not-at-top

  fields = tokenizers.model_defaults(name)
  unknown = set(overrides) - set(fields)
  if unknown:
    raise ValueError(
      f'tokenizer_model({name!r}): unknown keys {sorted(unknown)}; valid: {sorted(fields)}'
    )
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def transformer_model(**overrides: Any) -> ml_collections.ConfigDict:
  """`config.model` of the transformer: every field at its default, then overrides."""
  from magvit_jax.models import transformer  # pylint: disable=g-import-not-at-top

  fields = transformer.model_defaults()
  unknown = set(overrides) - set(fields)
  if unknown:
    raise ValueError(f'transformer_model: unknown keys {sorted(unknown)}; valid: {sorted(fields)}')
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def base_config(stage: str, model: str = 'vqgan') -> ml_collections.ConfigDict:
  """Every field a run of `stage` has, at its default (the one place defaults live).

  model: the tokenizer (`'vqgan'`, `'vqgan3d'`, `'magvit2'`) whose `config.model` a tokenizer
  run starts from; ignored for the transformer stage.
  """
  if stage not in STAGES:
    raise ValueError(f'stage={stage!r}; expected one of {STAGES}')
  c = ml_collections.ConfigDict()
  c.stage = stage
  c.seed = 0
  c.data = ml_collections.ConfigDict(
    dict(
      name='imagenet2012',
      data_dir=ml_collections.config_dict.placeholder(str),
      image_size=256,
      shuffle_buffer=10_000,
      train_split='train',
      eval_split='validation',
      num_classes=1000,
      # Frames per clip for video data (None: images).
      num_frames=ml_collections.config_dict.placeholder(int),
      # Video datasets: the TFDS feature holding the frames (None: 'video'), and the folder of
      # data.name='video_folder'.
      video_key=ml_collections.config_dict.placeholder(str),
      folder=ml_collections.config_dict.placeholder(str),
      # data.name='video_folder', video files only: resample to this frame rate (nearest frame
      # per target time; None: every frame of the file). docs/data.md.
      fps=ml_collections.config_dict.placeholder(float),
      # Records that cannot be decoded (or hold NaN/Inf) are skipped and counted; the run stops
      # once more than this fraction of the records read was skipped (docs/data.md).
      max_skipped_fraction=0.01,
      # Training with several processes: 'files' = each process reads only its own shard of the
      # split (what pods need; the global batch then depends on the process count), 'rows' =
      # each reads the whole split and keeps its rows of each global batch (docs/data.md).
      host_sharding='files',
    )
  )
  c.batch_size = 256
  c.eval_batch_size = 256
  c.num_train_steps = 100_000
  c.log_every = 100
  c.checkpoint_every = 1000
  c.max_checkpoints = 3
  # True: checkpoints written in the background while the steps go on (docs/reliability.md);
  # False: each save blocks until the step is on disk.
  c.checkpoint_async = True
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, num_slices=1))
  c.logical_axis_rules = [list(r) for r in LOGICAL_AXIS_RULES]
  c.optimizer = ml_collections.ConfigDict(
    dict(
      lr=1e-4,
      b1=0.9,
      b2=0.99,
      weight_decay=0.0,
      warmup_steps=5000,
      decay='constant',
      decay_steps=100_000,
      grad_clip_norm=1.0,
    )
  )
  if stage == 'tokenizer':
    c.model = tokenizer_model(model)
    # Reconstruction, adversarial and perceptual terms (see magvit_jax/trainers/adversarial.py).
    c.losses = ml_collections.ConfigDict(
      dict(
        l2_weight=1.0,
        l1_weight=0.0,
        # LFQ (model.name='magvit2') only: annealing of the entropy-loss weight over the steps,
        # 'constant' | 'linear' | 'cosine' from entropy_weight_start_factor * model.entropy_weight
        # at step 0 to model.entropy_weight at step entropy_weight_steps (docs/lfq.md).
        entropy_weight_schedule='constant',
        entropy_weight_start_factor=1.0,
        entropy_weight_steps=0,
        gan_weight=0.0,
        gan_loss='hinge',
        disc_start_step=0,
        lecam_weight=0.0,
        r1_gamma=0.0,
        perceptual_weight=0.0,
        perceptual_weights=ml_collections.config_dict.placeholder(str),
        perceptual_required=False,
        # 'vgg16_lpips' (VQGAN/MaskGIT) or 'resnet50_logits' (MAGVIT: squared distance of
        # ResNet-50 logits); `perceptual_weights` is that network's converted .npz.
        perceptual_network='vgg16_lpips',
      )
    )
    c.discriminator = ml_collections.ConfigDict(
      dict(filters=64, channel_multipliers=(2, 4, 4, 4, 4))
    )
    c.disc_optimizer = ml_collections.ConfigDict(dict(lr=1e-4, b1=0.0, b2=0.99))
    c.ema_decay = 0.0  # EMA of the generator (0 = off); used for eval and sampling.
    # Joint image-video training of a video tokenizer: every `image_every`-th step trains on a
    # batch of `config.image_data` (a data section like `config.data`; 0 = off).
    c.image_every = 0
  else:
    c.model = transformer_model()
    # Workdir of the trained (frozen) tokenizer run; its config.json fixes the token grid.
    c.tokenizer_workdir = ml_collections.config_dict.placeholder(str)
    c.masking = ml_collections.ConfigDict(
      dict(schedule='cosine', label_smoothing=0.1, class_dropout=0.0)
    )
    c.sampling = ml_collections.ConfigDict(
      dict(
        num_steps=8, schedule='cosine', choice_temperature=4.5, temperature=1.0, guidance_scale=0.0
      )
    )
    # MAGVIT COMMIT multi-task training (magvit_jax/masking/commit.py); no tasks = plain MVTM.
    c.commit = ml_collections.ConfigDict(
      dict(
        tasks=(),
        fp_frames=1,
        fi_frames=1,
        box_fraction=0.5,
        mask_weight=1.0,
        refine_weight=1.0,
        recon_weight=1.0,
      )
    )
  return c


def check_variant(config_file: str, arg: str | None, variants: Sequence[str]) -> str:
  """The variant `arg` of a config file (default: its first), or an error listing them."""
  variant = arg or variants[0]
  if variant not in variants:
    name = os.path.basename(config_file)
    raise ValueError(
      f'configs/{name}:{variant} does not exist; variants of {name}: {", ".join(variants)}'
    )
  return variant


def tiny_cpu_variant(
  c: ml_collections.ConfigDict,
  *,
  dataset: str,
  image_size: int,
  num_frames: int | None = None,
  steps: int,
  batch_size: int,
  eval_batch_size: int,
  lr: float,
  warmup_steps: int = 50,
  checkpoint_every: int = 200,
  disc_start_step: int | None = None,
) -> ml_collections.ConfigDict:
  """Turns a paper config into its tiny CPU variant on an embedded dataset (in place).

  What every `:digits` variant shares: the embedded dataset `dataset` ('magvit_digits' or
  'magvit_moving_digits', 10 classes, train/test), a short warmup + cosine schedule over `steps`,
  small batches, a log line every 50 steps; tokenizers also turn the adversarial and perceptual
  terms and the EMA off (turn them on again with `--config.losses.gan_weight=0.1` etc.) and get a
  small discriminator. The model sizes stay the caller's.
  """
  c.data.update(
    dict(
      name=dataset,
      image_size=image_size,
      num_frames=num_frames,
      train_split='train',
      eval_split='test',
      num_classes=10,
      shuffle_buffer=2000,
    )
  )
  c.optimizer.update(dict(lr=lr, warmup_steps=warmup_steps, decay='cosine', decay_steps=steps))
  c.batch_size = batch_size
  c.eval_batch_size = eval_batch_size
  c.num_train_steps = steps
  c.log_every = 50
  c.checkpoint_every = checkpoint_every
  if c.stage == 'tokenizer':
    c.losses.update(dict(gan_weight=0.0, perceptual_weight=0.0, r1_gamma=0.0))
    if disc_start_step is not None:
      c.losses.disc_start_step = disc_start_step
    c.ema_decay = 0.0
    c.discriminator.update(dict(filters=16, channel_multipliers=(1, 2, 2)))
  return c


def with_defaults(saved: dict) -> dict:
  """A saved config.json dict completed with today's defaults for keys it lacks.

  Runs written before a field existed keep loading: the missing field takes the value that
  `base_config` gives it, which is the behaviour those runs had.
  """
  stage = saved.get('stage')
  if stage not in STAGES:
    raise ValueError(f'config.stage={stage!r}: expected one of {STAGES}')
  model = saved.get('model', {}).get('name', 'vqgan') if stage == 'tokenizer' else 'vqgan'

  def merge(default: Any, value: Any) -> Any:
    if isinstance(default, dict) and isinstance(value, dict):
      out = {k: merge(default[k], value[k]) if k in default else value[k] for k in value}
      out.update({k: v for k, v in default.items() if k not in value})
      return out
    return value

  return merge(base_config(stage, model).to_dict(), saved)


def _module(model_config: ml_collections.ConfigDict) -> Any:
  """The tokenizer module of `config.model` (its factors are the module's, not restated here)."""
  from magvit_jax.models import tokenizers  # pylint: disable=g-import-not-at-top

  return tokenizers.build_tokenizer(model_config)


def _require(cond: bool, field: str, expected: str, value: Any) -> None:
  if not cond:
    raise ValueError(f'config.{field}={value!r}: expected {expected}')


def _check_entropy_schedule(losses: ml_collections.ConfigDict, model_name: str) -> None:
  """losses.entropy_weight_*: the LFQ entropy-weight annealing (quantizers/lfq.py)."""
  from magvit_jax.quantizers import lfq  # pylint: disable=g-import-not-at-top

  schedule = losses.get('entropy_weight_schedule', 'constant')
  _require(
    schedule in lfq.ENTROPY_WEIGHT_SCHEDULES,
    'losses.entropy_weight_schedule',
    ' or '.join(map(repr, lfq.ENTROPY_WEIGHT_SCHEDULES)),
    schedule,
  )
  if schedule == 'constant':
    return
  _require(
    model_name == 'magvit2',
    'losses.entropy_weight_schedule',
    "'constant' (only the LFQ tokenizer, model.name='magvit2', has an entropy loss)",
    schedule,
  )
  steps = losses.get('entropy_weight_steps', 0)
  _require(
    isinstance(steps, int) and not isinstance(steps, bool) and steps > 0,
    'losses.entropy_weight_steps',
    f'a positive integer (the steps of the {schedule!r} annealing)',
    steps,
  )
  factor = losses.get('entropy_weight_start_factor', 1.0)
  _require(
    not isinstance(factor, bool) and isinstance(factor, (int, float)) and factor >= 0,
    'losses.entropy_weight_start_factor',
    'a float >= 0 (weight at step 0 = factor * model.entropy_weight)',
    factor,
  )


def validate_config(config: ml_collections.ConfigDict, stage: str) -> None:
  """Checks a finished config for `stage`; raises ValueError naming the field."""
  _require(config.stage == stage, 'stage', f"'{stage}' for this trainer", config.stage)
  _require(config.batch_size > 0, 'batch_size', 'a positive integer', config.batch_size)
  _require(
    config.num_train_steps > 0, 'num_train_steps', 'a positive integer', config.num_train_steps
  )
  _require(config.log_every > 0, 'log_every', 'a positive integer', config.log_every)
  _require(
    config.checkpoint_every > 0, 'checkpoint_every', 'a positive integer', config.checkpoint_every
  )
  _require(
    config.max_checkpoints > 0, 'max_checkpoints', 'a positive integer', config.max_checkpoints
  )
  _require(
    isinstance(config.get('checkpoint_async', False), bool),
    'checkpoint_async',
    'True or False',
    config.get('checkpoint_async', False),
  )
  _require(config.optimizer.lr > 0, 'optimizer.lr', 'a positive float', config.optimizer.lr)
  _require(
    config.optimizer.decay in ('constant', 'cosine'),
    'optimizer.decay',
    "'constant' or 'cosine'",
    config.optimizer.decay,
  )
  _require(
    config.data.image_size > 0, 'data.image_size', 'a positive integer', config.data.image_size
  )
  for section in ('data', 'image_data'):
    if section in config:
      limit = config[section].get('max_skipped_fraction', 0.01)
      _require(
        not isinstance(limit, bool) and isinstance(limit, (int, float)) and 0 <= limit <= 1,
        f'{section}.max_skipped_fraction',
        'a fraction in [0, 1]',
        limit,
      )
      sharding = config[section].get('host_sharding', 'files')
      _require(
        sharding in ('files', 'rows'),
        f'{section}.host_sharding',
        "'files' (each process reads its own shard) or 'rows' (each reads the whole split)",
        sharding,
      )
      fps = config[section].get('fps', None)
      _require(
        fps is None
        or (not isinstance(fps, bool) and isinstance(fps, (int, float)) and 0 < fps < float('inf')),
        f'{section}.fps',
        'a positive number (frames per second) or None',
        fps,
      )
  m = config.model
  if stage == 'tokenizer':
    name = m.name
    _require(
      name in ('vqgan', 'vqgan3d', 'magvit2'), 'model.name', "'vqgan', 'vqgan3d' or 'magvit2'", name
    )
    f = 2 ** (len(m.channel_multipliers) - 1)  # Every tokenizer halves once per extra level.
    _require(
      config.data.image_size % f == 0,
      'data.image_size',
      f'a multiple of the downsampling factor {f} (from model.channel_multipliers)',
      config.data.image_size,
    )
    _require(
      config.losses.gan_loss in ('hinge', 'non_saturating'),
      'losses.gan_loss',
      "'hinge' or 'non_saturating'",
      config.losses.gan_loss,
    )
    _require(0.0 <= config.ema_decay < 1.0, 'ema_decay', 'a float in [0, 1)', config.ema_decay)
    network = config.losses.get('perceptual_network', 'vgg16_lpips')
    _require(
      network in ('vgg16_lpips', 'resnet50_logits'),
      'losses.perceptual_network',
      "'vgg16_lpips' or 'resnet50_logits'",
      network,
    )
    if config.image_every:
      _require(
        'image_data' in config,
        'image_data',
        'a data section like config.data (the images of joint training) when image_every > 0',
        None,
      )
    from magvit_jax.models import transformer as tfm  # pylint: disable=g-import-not-at-top

    remat = m.get('remat_policy', 'none')
    _require(
      remat in tfm.REMAT_POLICIES, 'model.remat_policy', f'one of {list(tfm.REMAT_POLICIES)}', remat
    )
    if name in ('vqgan', 'vqgan3d'):
      _require(m.codebook_size > 1, 'model.codebook_size', 'an integer > 1', m.codebook_size)
    if name == 'vqgan':
      # The released MaskGIT tokenizer's options (magvit_jax/models/vqgan.py, docs/pretrained.md).
      _require(
        m.shortcut in ('input', 'output'), 'model.shortcut', "'input' or 'output'", m.shortcut
      )
      _require(
        m.pixel_range in ('signed', 'unit'),
        'model.pixel_range',
        "'signed' or 'unit'",
        m.pixel_range,
      )
      for key in ('res_conv_bias', 'encoder_in_bias'):
        _require(isinstance(m[key], bool), f'model.{key}', 'True or False', m[key])
    if name == 'vqgan3d':
      _require(
        len(m.temporal_downsample) == len(m.channel_multipliers) - 1,
        'model.temporal_downsample',
        f'{len(m.channel_multipliers) - 1} booleans (one per downsampling level)',
        m.temporal_downsample,
      )
      ft = _module(m).temporal_downsample_factor
      frames = config.data.num_frames
      _require(
        bool(frames) and frames % ft == 0,
        'data.num_frames',
        f'a multiple of the temporal downsampling factor {ft}',
        frames,
      )
      _require(
        m.inflation in ('central', 'average'),
        'model.inflation',
        "'central' or 'average'",
        m.inflation,
      )
      # The official MAGVIT 3D-VQ's options (magvit_jax/models/vqgan3d.py, docs/pretrained.md).
      _require(
        m.get('temporal_padding', 'edge') in ('edge', 'constant'),
        'model.temporal_padding',
        "'edge' or 'constant'",
        m.get('temporal_padding'),
      )
      _require(
        m.get('pixel_range', 'signed') in ('signed', 'unit'),
        'model.pixel_range',
        "'signed' or 'unit'",
        m.get('pixel_range'),
      )
      for key in ('res_conv_bias', 'encoder_in_bias'):
        _require(isinstance(m.get(key, True), bool), f'model.{key}', 'True or False', m.get(key))
    elif name == 'magvit2':
      _require(1 <= m.num_bits <= 30, 'model.num_bits', 'an integer in [1, 30]', m.num_bits)
      _require(
        len(m.temporal_downsample) == len(m.channel_multipliers) - 1,
        'model.temporal_downsample',
        f'{len(m.channel_multipliers) - 1} booleans (one per downsampling level)',
        m.temporal_downsample,
      )
      ft = _module(m).temporal_factor
      frames = config.data.num_frames or 1
      _require((frames - 1) % ft == 0, 'data.num_frames', f'1 + {ft}*k', frames)
      # Architecture options (Open-MAGVIT2's layout: magvit_jax/models/causal_cnn.py).
      kt = m.get('temporal_kernel_size', 3)
      need = 2 if any(m.temporal_downsample) else 1
      _require(
        isinstance(kt, int) and not isinstance(kt, bool) and kt >= need,
        'model.temporal_kernel_size',
        f'an integer >= {need} (>= 2 when model.temporal_downsample has a True)',
        kt,
      )
      for key, choices in (
        ('spatial_padding', ('same', 'symmetric')),
        ('adaptive_norm', ('every_norm', 'level_start')),
      ):
        value = m.get(key, choices[0])
        _require(value in choices, f'model.{key}', ' or '.join(map(repr, choices)), value)
      for key in ('res_conv_bias', 'encoder_in_bias'):
        _require(isinstance(m.get(key, True), bool), f'model.{key}', 'True or False', m.get(key))
      # The LFQ recipe's options (docs/lfq.md).
      from magvit_jax.models import magvit2_tokenizer  # pylint: disable=g-import-not-at-top

      pre_norm = m.get('pre_quant_norm', 'none')
      _require(
        pre_norm in magvit2_tokenizer.PRE_QUANT_NORMS,
        'model.pre_quant_norm',
        ' or '.join(map(repr, magvit2_tokenizer.PRE_QUANT_NORMS)),
        pre_norm,
      )
      groups = m.get('pre_quant_norm_groups', 1)
      _require(
        isinstance(groups, int)
        and not isinstance(groups, bool)
        and groups >= 1
        and m.num_bits % groups == 0,
        'model.pre_quant_norm_groups',
        f'a positive divisor of model.num_bits={m.num_bits}',
        groups,
      )
      for key in ('entropy_temperature', 'entropy_weight', 'commitment_weight'):
        value = m.get(key, 1.0)
        _require(
          not isinstance(value, bool)
          and isinstance(value, (int, float))
          and (value > 0 if key == 'entropy_temperature' else value >= 0),
          f'model.{key}',
          'a float > 0' if key == 'entropy_temperature' else 'a float >= 0',
          value,
        )
      zero_sign = m.get('zero_sign', 1)
      _require(
        not isinstance(zero_sign, bool) and zero_sign in (1, -1),
        'model.zero_sign',
        '1 or -1',
        zero_sign,
      )
    _check_entropy_schedule(config.losses, name)
    for mult in m.channel_multipliers:
      _require(
        (m.filters * mult) % m.num_groups == 0,
        'model.num_groups',
        f'a divisor of every level width filters*mult (e.g. {m.filters * mult})',
        m.num_groups,
      )
  else:
    from magvit_jax.masking.schedules import ALL_SCHEDULES  # pylint: disable=g-import-not-at-top

    _require(
      m.hidden_size % m.num_heads == 0,
      'model.num_heads',
      f'a divisor of model.hidden_size={m.hidden_size}',
      m.num_heads,
    )
    _require(
      m.get('norm_layout', 'pre') in ('pre', 'post'),
      'model.norm_layout',
      "'pre' or 'post'",
      m.get('norm_layout'),
    )
    segments = m.get('num_segments', 0)
    _require(
      isinstance(segments, int) and not isinstance(segments, bool) and segments >= 0,
      'model.num_segments',
      'an int >= 0 (0: no segment embedding; 2: a converted official MAGVIT transformer '
      'trained with use_condition_segment)',
      segments,
    )
    from magvit_jax.models import transformer as tfm  # pylint: disable=g-import-not-at-top

    scan = m.get('scan_layers', False)
    _require(isinstance(scan, bool), 'model.scan_layers', 'True or False', scan)
    remat = m.get('remat_policy', 'none')
    _require(
      remat in tfm.REMAT_POLICIES, 'model.remat_policy', f'one of {list(tfm.REMAT_POLICIES)}', remat
    )
    dtype = str(m.get('dtype', 'float32'))
    _require(
      dtype in tfm.COMPUTE_DTYPES,
      'model.dtype',
      f'one of {tfm.COMPUTE_DTYPES} (compute dtype; params stay float32)',
      m.get('dtype'),
    )
    impl = m.get('attention_impl', 'auto')
    _require(
      impl in tfm.ATTENTION_IMPLS, 'model.attention_impl', f'one of {tfm.ATTENTION_IMPLS}', impl
    )
    _require(
      impl != 'cudnn' or dtype in ('bfloat16', 'float16'),
      'model.attention_impl',
      "'cudnn' only with model.dtype='bfloat16' (cuDNN flash attention takes bf16/fp16)",
      impl,
    )
    _require(
      config.masking.schedule in ALL_SCHEDULES,
      'masking.schedule',
      f'one of {ALL_SCHEDULES}',
      config.masking.schedule,
    )
    _require(
      config.sampling.schedule in ALL_SCHEDULES,
      'sampling.schedule',
      f'one of {ALL_SCHEDULES}',
      config.sampling.schedule,
    )
    _require(
      config.sampling.num_steps >= 1,
      'sampling.num_steps',
      'an integer >= 1',
      config.sampling.num_steps,
    )
    _require(
      0.0 <= config.masking.label_smoothing < 1.0,
      'masking.label_smoothing',
      'a float in [0, 1)',
      config.masking.label_smoothing,
    )
    cc = config.commit
    if cc.tasks:
      from magvit_jax.masking import commit  # pylint: disable=g-import-not-at-top

      bad = [t for t in cc.tasks if t not in commit.TASKS]
      _require(not bad, 'commit.tasks', f'names from {commit.TASKS}', tuple(cc.tasks))
      for key in ('mask_weight', 'refine_weight', 'recon_weight'):
        _require(cc[key] >= 0, f'commit.{key}', 'a float >= 0', cc[key])
      _require(
        cc.mask_weight + cc.refine_weight > 0,
        'commit.mask_weight',
        'mask_weight + refine_weight > 0 (the masked positions must be trained)',
        cc.mask_weight,
      )
    _require(
      bool(config.tokenizer_workdir),
      'tokenizer_workdir',
      'the workdir of a trained tokenizer run (--config.tokenizer_workdir=DIR)',
      config.tokenizer_workdir,
    )


def config_from_dict(d: dict) -> ml_collections.ConfigDict:
  """A locked ConfigDict from a saved config.json dict, completed by `with_defaults`."""
  c = ml_collections.ConfigDict(with_defaults(d))
  c.lock()
  return c

"""Every tiny config the tests train, in one place: the shipped `:digits` variants, shrunk.

Each function returns a fresh, locked ConfigDict built from the real config file (so a test
exercises what a user runs, only smaller) and takes the few values its tests vary. Subprocess
tests (multi-host, preemption, CLIs) get the same configs as a config *file* from
`write_config_file`, loadable by path like a user's own config. The smallest model keyword
sets (`TINY_VQ`, `TINY_MAGVIT2`) and the train-state set-up of the step-level tests
(`init_train_state`) are here too.
"""

from __future__ import annotations

import pathlib
import textwrap
from typing import Any, Sequence

import ml_collections

from magvit_jax.config_loader import load_config

TESTS = pathlib.Path(__file__).resolve().parent

# A 2-level VQGAN of 8 filters: the smallest tokenizer every tokenizer test can share.
TINY_VQ = dict(
  filters=8,
  channel_multipliers=(1, 2),
  num_res_blocks=1,
  embedding_dim=8,
  codebook_size=32,
  num_groups=4,
)
# The smallest MAGVIT-v2 causal LFQ tokenizer: one downsampling level in space and time, 2^6 codes.
TINY_MAGVIT2 = dict(
  filters=8,
  channel_multipliers=(1, 2),
  num_res_blocks=1,
  temporal_downsample=(True,),
  num_bits=6,
  num_groups=4,
)


def shrink(
  c: ml_collections.ConfigDict,
  steps: int,
  batch_size: int = 8,
  checkpoint_every: int | None = None,
  image_size: int = 16,
  warmup_steps: int = 1,
) -> ml_collections.ConfigDict:
  """Few steps of small batches at 16 x 16, a log line every step (in place)."""
  c.data.image_size = image_size
  c.batch_size = batch_size
  c.eval_batch_size = 100
  c.num_train_steps = steps
  c.log_every = 1
  c.checkpoint_every = checkpoint_every or steps
  c.optimizer.update(dict(warmup_steps=warmup_steps, decay_steps=steps))
  return c


def vqgan(steps: int = 6, checkpoint_every: int = 2) -> ml_collections.ConfigDict:
  """MaskGIT's VQGAN on 16 x 16 digits (4 x 4 tokens, codebook 32) on a data=2 x fsdp=4 mesh."""
  c = shrink(load_config('vqgan_imagenet.py:digits'), steps, 16, checkpoint_every, warmup_steps=2)
  c.model.update(dict(TINY_VQ, filters=16, channel_multipliers=(1, 2, 2)))
  c.mesh.update(dict(data=2, fsdp=4))
  return c


def maskgit(tokenizer_workdir: str, steps: int = 6) -> ml_collections.ConfigDict:
  """The MaskGIT transformer (2 layers, hidden 32) on the tokens of `vqgan()`."""
  c = shrink(load_config('maskgit_imagenet.py:digits'), steps, 16, 2, warmup_steps=2)
  c.tokenizer_workdir = tokenizer_workdir
  c.model.update(dict(codebook_size=32, hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64))
  c.mesh.update(dict(data=2, fsdp=2, tensor=2))
  c.sampling.num_steps = 4
  return c


def vqgan_gan(steps: int = 4) -> ml_collections.ConfigDict:
  """`TINY_VQ` with every adversarial term on (hinge, LeCAM, R1, EMA) from step 2."""
  c = shrink(load_config('vqgan_imagenet.py:digits'), steps, 8, 2)
  c.model.update(dict(TINY_VQ, filters=16))
  c.losses.update(
    dict(gan_weight=0.5, gan_loss='hinge', disc_start_step=2, lecam_weight=0.1, r1_gamma=1.0)
  )
  c.discriminator.update(dict(filters=8, channel_multipliers=(1, 2)))
  c.disc_optimizer.lr = 1e-2
  c.ema_decay = 0.5
  c.mesh.data = 8
  return c


def magvit2_tokenizer(steps: int = 4) -> ml_collections.ConfigDict:
  """MAGVIT-v2's causal LFQ tokenizer (2^6 codes) on 5-frame clips, an image batch every 2nd step."""
  c = shrink(load_config('magvit2_tokenizer_video.py:digits'), steps, 8, 2)
  c.image_data.image_size = 16
  c.image_every = 2
  c.model.update(
    dict(
      filters=8,
      channel_multipliers=(1, 2, 2),
      num_res_blocks=1,
      num_groups=4,
      num_bits=6,
      entropy_chunk_size=16,
    )
  )
  return c


def magvit2_transformer(tokenizer_workdir: str, steps: int = 3) -> ml_collections.ConfigDict:
  """The factorised-vocabulary transformer (2 x 2^3 sub-tokens) on `magvit2_tokenizer()` tokens."""
  c = load_config('magvit2_transformer.py:digits')
  c.tokenizer_workdir = tokenizer_workdir
  c.data.image_size = 16
  c.model.update(
    dict(codebook_size=64, num_sub_tokens=2, hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64)
  )
  c.batch_size = 8
  c.num_train_steps = steps
  c.log_every = 1
  c.sampling.num_steps = 4
  return c


def magvit2_commit(tokenizer_workdir: str, steps: int = 4) -> ml_collections.ConfigDict:
  """`magvit2_transformer()` trained with COMMIT frame prediction (frame 0 known) on causal tokens."""
  c = magvit2_transformer(tokenizer_workdir, steps)
  base = load_config('magvit2_transformer.py:digits_fp')
  c.model.num_tasks = base.model.num_tasks
  c.commit = base.commit
  c.sampling.guidance_scale = 0.0
  return c


def vqgan_2d_for_inflation(steps: int = 2) -> ml_collections.ConfigDict:
  """`TINY_VQ` on single digits: the 2D VQGAN that `vqgan3d` inflates."""
  c = shrink(load_config('vqgan_imagenet.py:digits'), steps)
  c.model.update(TINY_VQ)
  return c


def vqgan3d(inflate_from: str | None, steps: int = 3) -> ml_collections.ConfigDict:
  """MAGVIT's 3D-VQ at `TINY_VQ` widths on 4-frame clips (2 x 8 x 8 tokens)."""
  c = shrink(load_config('magvit_ucf101.py:tokenizer_digits'), steps)
  c.data.num_frames = 4
  c.model.update(dict(TINY_VQ, temporal_downsample=(True,)))
  c.model.inflate_from = inflate_from
  return c


def commit(tokenizer_workdir: str, steps: int = 4) -> ml_collections.ConfigDict:
  """The COMMIT transformer (1 layer) on all ten tasks over `vqgan3d()` tokens."""
  c = shrink(load_config('magvit_ucf101.py:digits'), steps)
  c.data.num_frames = 4
  c.tokenizer_workdir = tokenizer_workdir
  c.commit.update(dict(fp_frames=2, fi_frames=1))
  c.model.update(dict(codebook_size=32, hidden_size=32, num_layers=1, num_heads=2, mlp_dim=64))
  c.sampling.num_steps = 3
  return c


def init_train_state(
  config: ml_collections.ConfigDict,
  model: Any,
  example_inputs: Sequence[Any],
  num_devices: int = 1,
) -> tuple[Any, Any, Any, Any]:
  """A tokenizer/transformer `model`'s first train state under `config`, as the trainers make it.

  example_inputs: the arrays `model.init` is traced with (e.g. `(jnp.zeros((1, 16, 16, 3)),)`).
  Returns (tx, mesh, state, shardings): the optimizer of `config.optimizer`, a `data` mesh of
  the first `num_devices` devices, the state initialised from PRNGKey(0) and laid out on that
  mesh by `config.logical_axis_rules`, and its shardings.
  """
  # Imported here, not at the top: the config files of `write_config_file` import this module.
  import jax  # pylint: disable=g-import-not-at-top

  from magvit_jax import parallel  # pylint: disable=g-import-not-at-top
  from magvit_jax.trainers import train_state as ts  # pylint: disable=g-import-not-at-top

  tx = ts.make_optimizer(config.optimizer)
  mesh = parallel.make_mesh({'data': num_devices}, devices=jax.devices()[:num_devices])
  init_fn, shardings, _ = ts.state_layout(
    lambda r: model.init(r, *example_inputs)['params'], tx, mesh, config.logical_axis_rules
  )
  state = jax.jit(init_fn, out_shardings=shardings)(jax.random.PRNGKey(0))
  return tx, mesh, state, shardings


_FILE_TEMPLATE = textwrap.dedent("""\
  '''tiny_configs.{name}({args}) of {tests} as a config file (written by a test).'''
  import sys

  sys.path.insert(0, {tests!r})
  import tiny_configs


  def get_config(arg=None):
    return tiny_configs.{name}({args})
  """)


def write_config_file(path: pathlib.Path, name: str, **kwargs) -> pathlib.Path:
  """Writes a config file whose get_config() returns `name(**kwargs)` of this module."""
  args = ', '.join(f'{k}={v!r}' for k, v in kwargs.items())
  path.write_text(_FILE_TEMPLATE.format(name=name, args=args, tests=str(TESTS)))
  return path

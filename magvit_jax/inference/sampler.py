"""Class-conditional generation from a trained transformer workdir (library side of sample.py).

`Sampler` loads the transformer and its frozen tokenizer and decodes images
with the jitted iterative decoder (class-conditional generation from
all-[MASK], or editing from a partial token map), returning pixels plus the
per-step token history; `write_samples` writes the PNG grid, `samples.npz` and a picture of
the decoding steps.
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from magvit_jax import pretrained
from magvit_jax.decoding import maskgit
from magvit_jax.inference import visualize
from magvit_jax.inference.settings import DecodeSettings
from magvit_jax.masking import commit
from magvit_jax.models import tokenizers


class Sampler:
  """A trained transformer and its frozen tokenizer, ready to decode.

  Args:
    workdir: a transformer run's workdir (its config names the tokenizer workdir).
  """

  def __init__(self, workdir: str, step: int | None = None, strict: bool = False):
    # step: the transformer checkpoint (default: newest readable; `strict` refuses a damaged
    # newest one instead of falling back).
    loaded = pretrained.load_transformer(workdir, step=step, strict=strict)
    self.model, self.params, self.config = loaded.module, loaded.params, loaded.config
    frozen = pretrained.load_tokenizer(self.config.tokenizer_workdir, strict=strict)
    self.tokenizer, self.tok_params = frozen.module, frozen.params
    self.tokenizer_config = frozen.config
    self.input_shape = tokenizers.input_shape(frozen.config)  # (H, W, 3) or (T, H, W, 3)
    self.token_shape = tokenizers.token_shape(frozen.config)  # (h, w) or (t, h, w)
    self.is_video = len(self.input_shape) == 4
    model, tokenizer, tok_params = self.model, self.tokenizer, self.tok_params

    def apply_fn(p, tokens, y, tasks=None):
      return model.apply({'params': p}, tokens, y, tasks, deterministic=True)

    self._apply_fn = apply_fn  # One object, so decode compiles once per setting.
    detokenize = tokenizers.make_detokenize_fn(tokenizer, self.token_shape)
    # tokens [..., n] -> uint8 pixels [N, *input_shape].
    self.to_pixels = jax.jit(lambda tokens: detokenize(tok_params, tokens))

    tokenize, grid = tokenizers.make_tokenize_fn(tokenizer, frozen.config), self.token_shape
    # pixels [N, *input_shape] -> tokens [N, *token_shape]; `encode` checks them first.
    self._encode = jax.jit(lambda pixels: tokenize(tok_params, pixels).reshape((-1,) + grid))

  def encode(self, images: Any) -> jax.Array:
    """Tokens int32 [N, *token_shape] of `images`: uint8 [N, *input_shape] (or float in
    [-1, 1]).

    Raises ValueError, before anything is compiled, on a wrong shape, rank or dtype (naming the
    shape this tokenizer takes) or on NaN / Inf values in a float input (counting them).
    """
    tokenizers.check_pixels(images, self.tokenizer_config, name='images')
    return self._encode(jnp.asarray(images))

  to_tokens = encode  # The name notebooks use.

  def settings(self, **overrides: Any) -> DecodeSettings:
    """The run's `config.sampling` with the given (non-None) overrides."""
    return DecodeSettings.from_config(self.config.sampling, **overrides)

  def _check_labels(self, labels, allow_null: bool = False) -> np.ndarray:
    labels = np.asarray(labels, np.int32)
    top = self.model.num_classes + int(allow_null)
    bad = labels[(labels < 0) | (labels >= top)]
    if bad.size:
      raise ValueError(f'classes {bad.tolist()} out of range [0, {top})')
    return labels

  def decode_tokens(
    self,
    init_tokens: np.ndarray,
    labels: Sequence[int],
    *,
    seed: int = 0,
    batch_size: int = 50,
    num_steps: int | None = None,
    schedule: str | None = None,
    guidance_scale: float | None = None,
    choice_temperature: float | None = None,
    temperature: float | None = None,
    tasks: np.ndarray | None = None,
    condition_tokens: np.ndarray | None = None,
  ) -> dict[str, np.ndarray]:
    """Iterative decoding from token maps in which mask ids mark the unknown positions.

    init_tokens: int32 [N, n]; labels: [N] (the null class num_classes is allowed when `tasks`
    are given: COMMIT's non-class tasks); tasks: int32 [N] COMMIT task ids for a multi-task
    model; condition_tokens: int32 [N, n], the condition token where the model sees it instead
    of [MASK] (mask id elsewhere; see `maskgit.decode`). num_steps, schedule, guidance_scale,
    choice_temperature, temperature: override the run's `config.sampling` (`DecodeSettings`).
    Returns {'images': uint8 [N, H, W, 3]
    (videos: [N, T, H, W, 3]), 'tokens': int32 [N, n], 'labels': int32 [N], 'history': int32
    [T, N, n]}.
    """
    labels = self._check_labels(labels, allow_null=tasks is not None)
    init_tokens = np.asarray(init_tokens, np.int32)
    if init_tokens.shape != (len(labels), self.model.seq_len):
      raise ValueError(
        f'init_tokens must be [{len(labels)}, {self.model.seq_len}], got {init_tokens.shape}'
      )
    if bool(self.model.num_tasks) != (tasks is not None):
      raise ValueError(
        f'this transformer has num_tasks={self.model.num_tasks}: pass tasks '
        f'exactly when it is > 0 (use magvit_jax.inference.video_tasks for COMMIT tasks)'
      )
    settings = self.settings(
      num_steps=num_steps,
      schedule=schedule,
      guidance_scale=guidance_scale,
      choice_temperature=choice_temperature,
      temperature=temperature,
    ).as_kwargs()
    images, tokens, histories = [], [], []
    rng = jax.random.PRNGKey(seed)
    t0 = time.perf_counter()
    for start in range(0, len(labels), batch_size):
      n = len(labels[start : start + batch_size])
      pad = ((0, batch_size - n), (0, 0))
      rows = slice(start, start + n)
      extra = {}
      if tasks is not None:
        extra['tasks'] = jnp.asarray(np.pad(np.asarray(tasks, np.int32)[rows], pad[0]))
      if condition_tokens is not None:
        extra['condition_tokens'] = jnp.asarray(
          np.pad(
            np.asarray(condition_tokens, np.int32)[rows],
            pad,
            constant_values=self.model.mask_token_id,
          )
        )
      out = maskgit.decode(
        self._apply_fn,
        self.params,
        jax.random.fold_in(rng, start),
        jnp.asarray(np.pad(init_tokens[rows], pad)),
        jnp.asarray(np.pad(labels[rows], pad[0])),
        mask_token_id=self.model.mask_token_id,
        null_label=self.model.null_label,
        **settings,
        **extra,
      )
      images.append(np.asarray(self.to_pixels(out.tokens))[:n])
      tokens.append(np.asarray(out.tokens)[:n])
      histories.append(np.asarray(out.history)[:, :n])
      done = start + n
      print(
        f'[sample] {done}/{len(labels)} images, {done / (time.perf_counter() - t0):.1f} img/s',
        flush=True,
      )
    return {
      'images': np.concatenate(images),
      'tokens': np.concatenate(tokens),
      'labels': labels,
      'history': np.concatenate(histories, axis=1),
    }

  def generate(self, labels: Sequence[int], **kwargs) -> dict[str, np.ndarray]:
    """Class-conditional generation from all-[MASK]: one image per label (see decode_tokens).
    A COMMIT multi-task model generates with its CG (class-conditional generation) task."""
    init = np.full((len(labels), self.model.seq_len), self.model.mask_token_id, np.int32)
    if self.model.num_tasks:
      kwargs['tasks'] = np.full((len(labels),), commit.TASKS.index('CG'), np.int32)
    return self.decode_tokens(init, labels, **kwargs)

  def edit(
    self, images: np.ndarray, region: np.ndarray, labels: Sequence[int], **kwargs
  ) -> dict[str, np.ndarray]:
    """Inpainting / outpainting / class-conditional editing.

    images: uint8 [N, *input_shape] (or float in [-1, 1]; checked as in `encode`); region: bool
    on the token grid ([h, w] / [t, h, w], or with a leading N), True where tokens are
    regenerated (inpainting: the hole; outpainting: everything outside the kept
    area); labels: [N] class to edit towards. Tokens outside `region` are kept exactly.
    """
    images = np.asarray(images)
    tokenizers.check_pixels(images, self.tokenizer_config, name='images')
    region = np.asarray(region, bool)
    if region.shape[-len(self.token_shape) :] != self.token_shape:
      raise ValueError(
        f'region must be bool [..., {", ".join(map(str, self.token_shape))}] on '
        f'the token grid, got {region.shape}'
      )
    tokens = self._encode(jnp.asarray(images))
    init = maskgit.mask_region(tokens, jnp.asarray(region), self.model.mask_token_id)
    out = self.decode_tokens(np.asarray(init), labels, **kwargs)
    out['original_tokens'] = np.asarray(tokens).reshape(len(images), -1)
    return out


def steps_picture(history: np.ndarray, sampler: Sampler, rows: Sequence[int]) -> np.ndarray:
  """Pixels of the token map after each decoding step for the samples `rows`.

  history: int32 [T, N, n]. Returns uint8 [len(rows) * T, H, W, 3] (row-major: one sample's
  T steps after another; for videos the first frame); still-masked token cells are grey.
  """
  t = history.shape[0]
  sel = history[:, list(rows)]  # [T, r, n]
  masked = sel == sampler.model.mask_token_id
  pixels = np.asarray(sampler.to_pixels(jnp.asarray(np.where(masked, 0, sel))))
  masked = masked.reshape((-1,) + sampler.token_shape)
  if sampler.is_video:
    pixels, masked = pixels[:, 0], masked[:, 0]
  cell = pixels.shape[1] // masked.shape[1]
  m = np.repeat(np.repeat(masked, cell, 1), cell, 2)[..., None]
  pixels = np.where(m, 128, pixels).astype(np.uint8)
  return (
    pixels.reshape(t, len(rows), *pixels.shape[1:])
    .transpose(1, 0, 2, 3, 4)
    .reshape(-1, *pixels.shape[1:])
  )


def write_samples(output: str, result: dict, sampler: Sampler, ncols: int) -> None:
  """samples.npz (images uint8 [N, (T,) H, W, 3], labels int32 [N]), grid.png (videos: one
  row of frames per sample), samples.gif for videos, and decoding_steps.png."""
  os.makedirs(output, exist_ok=True)
  images, labels = result['images'], result['labels']
  np.savez(os.path.join(output, 'samples.npz'), images=images, labels=labels)
  if images.ndim == 5:
    n, t = images.shape[:2]
    visualize.save_png(
      os.path.join(output, 'grid.png'),
      visualize.image_grid(images.reshape(n * t, *images.shape[2:]), ncols=t),
      scale=2,
    )
    frames = np.stack([visualize.image_grid(images[:, i], ncols=ncols) for i in range(t)])
    visualize.save_gif(os.path.join(output, 'samples.gif'), frames, fps=4, scale=2)
  else:
    visualize.save_png(
      os.path.join(output, 'grid.png'), visualize.image_grid(images, ncols=ncols), scale=2
    )
  firsts = [int(np.argmax(labels == c)) for c in np.unique(labels)]
  pic = steps_picture(result['history'], sampler, firsts)
  visualize.save_png(
    os.path.join(output, 'decoding_steps.png'),
    visualize.image_grid(pic, ncols=result['history'].shape[0]),
    scale=2,
  )

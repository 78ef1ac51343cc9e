"""Class-conditional generation from a trained transformer workdir (library side of sample.py).

`generate` loads the transformer and its frozen tokenizer, decodes images with
the jitted iterative decoder, and returns pixels plus the per-step token
history; `write_samples` writes the PNG grid, `samples.npz` and a picture of
the decoding steps.
"""
from __future__ import annotations

import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from magvit_jax import visualize
from magvit_jax.decoding import maskgit
from magvit_jax.models.vqgan import VQGAN
from magvit_jax.trainers import tokenizer as tokenizer_trainer
from magvit_jax.trainers import transformer as transformer_trainer


def generate(workdir: str, labels: Sequence[int], *, seed: int = 0, num_steps: int | None = None,
             guidance_scale: float | None = None, choice_temperature: float | None = None,
             temperature: float | None = None, batch_size: int = 50) -> dict[str, np.ndarray]:
  """Generates one image per label.

  Returns {'images': uint8 [N, H, W, 3], 'labels': int32 [N], 'history': int32 [T, N, n]}.
  """
  model, params, config = transformer_trainer.load_transformer(workdir)
  tokenizer, tok_params, tok_cfg = tokenizer_trainer.load_tokenizer(config['tokenizer_workdir'])
  s = config['sampling']
  num_steps = int(num_steps or s['num_steps'])
  guidance_scale = float(s['guidance_scale'] if guidance_scale is None else guidance_scale)
  choice_temperature = float(s['choice_temperature'] if choice_temperature is None
                             else choice_temperature)
  temperature = float(s['temperature'] if temperature is None else temperature)
  labels = np.asarray(labels, np.int32)
  bad = labels[(labels < 0) | (labels >= model.num_classes)]
  if bad.size:
    raise ValueError(f'--classes: {bad.tolist()} out of range [0, {model.num_classes})')
  f = 2 ** (len(tok_cfg['model']['channel_multipliers']) - 1)
  side = int(tok_cfg['data']['image_size']) // f

  def apply_fn(p, tokens, y):
    return model.apply({'params': p}, tokens, y, deterministic=True)

  @jax.jit
  def to_pixels(tokens):
    imgs = tokenizer.apply({'params': tok_params}, tokens.reshape(-1, side, side),
                           method=VQGAN.decode_tokens)
    return tokenizer_trainer.to_uint8(imgs)

  images, histories = [], []
  rng = jax.random.PRNGKey(seed)
  t0 = time.perf_counter()
  for start in range(0, len(labels), batch_size):
    chunk = labels[start:start + batch_size]
    padded = np.pad(chunk, (0, batch_size - len(chunk)))
    init = jnp.full((batch_size, model.seq_len), model.mask_token_id, jnp.int32)
    out = maskgit.decode(apply_fn, params, jax.random.fold_in(rng, start), init,
                         jnp.asarray(padded), mask_token_id=model.mask_token_id,
                         num_steps=num_steps, schedule=s['schedule'],
                         choice_temperature=choice_temperature, temperature=temperature,
                         guidance_scale=guidance_scale, null_label=model.null_label)
    images.append(np.asarray(to_pixels(out.tokens))[:len(chunk)])
    histories.append(np.asarray(out.history)[:, :len(chunk)])
    done = min(start + batch_size, len(labels))
    print(f'[sample] {done}/{len(labels)} images, {done / (time.perf_counter() - t0):.1f} img/s',
          flush=True)
  return {'images': np.concatenate(images), 'labels': labels,
          'history': np.concatenate(histories, axis=1), 'mask_token_id': model.mask_token_id,
          'token_side': side, 'tokenizer': (tokenizer, tok_params)}


def steps_picture(history: np.ndarray, mask_token_id: int, side: int, tokenizer, tok_params,
                  rows: Sequence[int]) -> np.ndarray:
  """Pixels of the token map after each step for the given sample indices: [len(rows)*T, H, W, 3].

  Still-masked tokens are shown as the decoded token 0 dimmed to grey.
  """
  t = history.shape[0]
  sel = history[:, list(rows)]  # [T, r, n]
  masked = sel == mask_token_id
  tokens = np.where(masked, 0, sel).reshape(-1, side, side)
  imgs = np.asarray(tokenizer_trainer.to_uint8(
      tokenizer.apply({'params': tok_params}, jnp.asarray(tokens), method=VQGAN.decode_tokens)))
  h = imgs.shape[1] // side
  m = np.repeat(np.repeat(masked.reshape(-1, side, side), h, 1), h, 2)[..., None]
  imgs = np.where(m, 128, imgs).astype(np.uint8)
  return imgs.reshape(t, len(rows), *imgs.shape[1:]).transpose(1, 0, 2, 3, 4).reshape(
      -1, *imgs.shape[1:])


def write_samples(output: str, result: dict, ncols: int) -> None:
  os.makedirs(output, exist_ok=True)
  np.savez(os.path.join(output, 'samples.npz'), images=result['images'], labels=result['labels'])
  visualize.save_png(os.path.join(output, 'grid.png'),
                     visualize.image_grid(result['images'], ncols=ncols), scale=2)
  labels = result['labels']
  firsts = [int(np.argmax(labels == c)) for c in np.unique(labels)]
  tokenizer, tok_params = result['tokenizer']
  pic = steps_picture(result['history'], result['mask_token_id'], result['token_side'],
                      tokenizer, tok_params, firsts)
  visualize.save_png(os.path.join(output, 'decoding_steps.png'),
                     visualize.image_grid(pic, ncols=result['history'].shape[0]), scale=2)

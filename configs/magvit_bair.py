r"""MAGVIT on BAIR robot pushing (frame prediction from 1 frame, FP; FVD 76 / 62 for B / L).

Stage 1, the 3D-VQ tokenizer (optionally inflated from a 2D VQGAN of the same widths):
  python -m magvit_jax.train --config=configs/magvit_bair.py:tokenizer_B \
      [--config.model.inflate_from=runs/vqgan2d] --workdir=runs/magvit_bair_tok
Stage 2, the COMMIT transformer on its tokens:
  python -m magvit_jax.train --config=configs/magvit_bair.py:B \
      --config.tokenizer_workdir=runs/magvit_bair_tok --workdir=runs/magvit_bair_B

Arguments: B, L (transformers), tokenizer_B, tokenizer_L, and the tiny CPU variants
digits / tokenizer_digits on the embedded moving digits. Sizes and paper values:
magvit_jax/magvit_presets.py.

official_B / official_L: the official MAGVIT 3D-VQ (google-research/magvit) as our 3D-VQ;
its params convert with magvit_jax/convert/magvit_3dvq.py (docs/pretrained.md).
"""

import ml_collections

from magvit_jax.magvit_presets import get_magvit_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return get_magvit_config('bair', arg)

#!/usr/bin/env bash
# One process on one GPU (or CPU): the CLI as it is.
#   CONFIG=configs/vqgan_imagenet.py:digits WORKDIR=runs/vqgan bash launch/gpu_single.sh [--config.x=y ...]
set -euo pipefail
: "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
exec python -m magvit_jax.train --config="${CONFIG}" --workdir="${WORKDIR}" "$@"

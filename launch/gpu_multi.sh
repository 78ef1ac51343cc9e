#!/usr/bin/env bash
# One process per GPU on one host, joined by jax.distributed over localhost.
#   NUM_GPUS=4 CONFIG=configs/vqgan_imagenet.py:digits WORKDIR=runs/vqgan \
#     bash launch/gpu_multi.sh [--config.x=y ...]
# Logs: $WORKDIR/logs/process_<i>.log. Ctrl-C / SIGTERM is forwarded to all processes
# (each saves a checkpoint at the same step and exits 0).
set -euo pipefail
: "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
NUM_GPUS="${NUM_GPUS:-$(nvidia-smi -L | wc -l)}"
PORT="${PORT:-12355}"
mkdir -p "${WORKDIR}/logs"
pids=()
for ((i = 0; i < NUM_GPUS; i++)); do
  CUDA_VISIBLE_DEVICES="${i}" python -m magvit_jax.train --multihost \
      --coordinator_address="localhost:${PORT}" --num_processes="${NUM_GPUS}" --process_id="${i}" \
      --config="${CONFIG}" --workdir="${WORKDIR}" "$@" > "${WORKDIR}/logs/process_${i}.log" 2>&1 &
  pids+=("$!")
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' INT TERM
echo "started ${NUM_GPUS} processes (${pids[*]}); logs in ${WORKDIR}/logs/"
status=0
for pid in "${pids[@]}"; do wait "${pid}" || status=$?; done
exit "${status}"

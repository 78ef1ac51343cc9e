#!/usr/bin/env bash
# Starts training on every worker of the TPU VM, in the background, logging to ~/LOG_NAME.
#   NAME=magvit ZONE=us-central2-b CONFIG=configs/vqgan_imagenet.py:digits \
#     WORKDIR=gs://BUCKET/runs/vqgan bash launch/tpu_run.sh [--config.mesh.fsdp=4 ...]
# Extra arguments are passed to `python -m magvit_jax.train`. Re-running resumes.
set -euo pipefail
: "${NAME:?set NAME}" "${ZONE:?set ZONE}" "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
REMOTE_DIR="${REMOTE_DIR:-magvit_jax}"
LOG_NAME="${LOG_NAME:-magvit_train.log}"
extra=""
for a in "$@"; do extra+=" $(printf '%q' "${a}")"; done
ssh=(gcloud compute tpus tpu-vm ssh "${NAME}" --zone="${ZONE}" --worker=all)
if [[ -n "${PROJECT:-}" ]]; then ssh+=(--project="${PROJECT}"); fi
"${ssh[@]}" --command="cd ${REMOTE_DIR} && nohup python3 -m magvit_jax.train --multihost \
--config=${CONFIG} --workdir=${WORKDIR}${extra} > ~/${LOG_NAME} 2>&1 < /dev/null &"
echo "started on all workers; follow with: NAME=${NAME} ZONE=${ZONE} bash launch/tpu_logs.sh"

#!/usr/bin/env bash
# Deletes the TPU VM (checkpoints on gs:// are kept).
#   NAME=magvit ZONE=us-central2-b bash launch/tpu_delete.sh
set -euo pipefail
: "${NAME:?set NAME}" "${ZONE:?set ZONE}"
args=(compute tpus tpu-vm delete "${NAME}" --zone="${ZONE}" --quiet)
if [[ -n "${PROJECT:-}" ]]; then args+=(--project="${PROJECT}"); fi
gcloud "${args[@]}"

#!/usr/bin/env bash
# Creates a TPU VM (single host or pod slice).
#   NAME=magvit ZONE=us-central2-b ACCELERATOR=v4-32 bash launch/tpu_create.sh
# Optional: VERSION (TPU software image), PROJECT, SPOT=1 (spot/preemptible capacity).
set -euo pipefail
: "${NAME:?set NAME}" "${ZONE:?set ZONE}" "${ACCELERATOR:?set ACCELERATOR, e.g. v4-32}"
VERSION="${VERSION:-tpu-ubuntu2204-base}"
args=(compute tpus tpu-vm create "${NAME}" --zone="${ZONE}"
      --accelerator-type="${ACCELERATOR}" --version="${VERSION}")
if [[ -n "${PROJECT:-}" ]]; then args+=(--project="${PROJECT}"); fi
if [[ "${SPOT:-0}" == "1" ]]; then args+=(--spot); fi
gcloud "${args[@]}"

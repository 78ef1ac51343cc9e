#!/usr/bin/env bash
# Copies this repository to every worker of the TPU VM and installs it (with JAX for TPU).
#   NAME=magvit ZONE=us-central2-b bash launch/tpu_install.sh
# REPO_URL=https://... clones instead of copying the local checkout. google-cloud-storage is
# for gs:// workdirs (orbax step listing, TensorBoard events).
set -euo pipefail
: "${NAME:?set NAME}" "${ZONE:?set ZONE}"
REMOTE_DIR="${REMOTE_DIR:-magvit_jax}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ssh=(gcloud compute tpus tpu-vm ssh "${NAME}" --zone="${ZONE}" --worker=all)
scp=(gcloud compute tpus tpu-vm scp --zone="${ZONE}" --worker=all)
if [[ -n "${PROJECT:-}" ]]; then ssh+=(--project="${PROJECT}"); scp+=(--project="${PROJECT}"); fi

if [[ -n "${REPO_URL:-}" ]]; then
  "${ssh[@]}" --command="rm -rf ${REMOTE_DIR} && git clone ${REPO_URL} ${REMOTE_DIR}"
else
  tarball="$(mktemp -d)/magvit_jax.tar.gz"
  tar -C "${ROOT}" --exclude=.git --exclude=.venv --exclude=runs -czf "${tarball}" .
  "${scp[@]}" "${tarball}" "${NAME}:~/magvit_jax.tar.gz"
  "${ssh[@]}" --command="rm -rf ${REMOTE_DIR} && mkdir -p ${REMOTE_DIR} && tar -xzf magvit_jax.tar.gz -C ${REMOTE_DIR}"
fi
"${ssh[@]}" --command="cd ${REMOTE_DIR} && python3 -m pip install -U pip && python3 -m pip install -U 'jax[tpu]' && python3 -m pip install -e . google-cloud-storage"
"${ssh[@]}" --command="python3 -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.device_count())'"

#!/usr/bin/env bash
# Shows the training log of one worker (default 0; WORKER=all for every worker).
#   NAME=magvit ZONE=us-central2-b [WORKER=0] [FOLLOW=1] bash launch/tpu_logs.sh
set -euo pipefail
: "${NAME:?set NAME}" "${ZONE:?set ZONE}"
LOG_NAME="${LOG_NAME:-magvit_train.log}"
if [[ "${FOLLOW:-1}" == "1" ]]; then cmd="tail -n 100 -f ~/${LOG_NAME}"; else cmd="tail -n 100 ~/${LOG_NAME}"; fi
ssh=(gcloud compute tpus tpu-vm ssh "${NAME}" --zone="${ZONE}" --worker="${WORKER:-0}")
if [[ -n "${PROJECT:-}" ]]; then ssh+=(--project="${PROJECT}"); fi
"${ssh[@]}" --command="${cmd}"

#!/usr/bin/env bash
# Cloud TPU VM slice(s), driven from your machine with gcloud:
#   launch/tpu_pod.sh create [options]                       # a slice, or NUM_SLICES>1: a queued resource
#   launch/tpu_pod.sh setup  [options]                       # jax[tpu] + this checkout on every worker
#   launch/tpu_pod.sh run    [options] CONFIG WORKDIR [training flags...]
# Options (or env): --tpu (TPU_NAME), --zone (ZONE), --project (PROJECT), --accelerator-type
# (ACCELERATOR_TYPE), --runtime-version (RUNTIME_VERSION), --num-slices (NUM_SLICES),
# --python (REMOTE_PYTHON), --init-timeout (INIT_TIMEOUT), --jax-version (JAX_VERSION),
# --megascale-coordinator (MEGASCALE_COORDINATOR). --dry-run or DRY_RUN=1 prints the commands only.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
launch tpu "$@"

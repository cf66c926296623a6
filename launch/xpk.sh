#!/usr/bin/env bash
# One xpk workload (JobSet on GKE TPUs) running maskjax train on every host of every slice:
#   launch/xpk.sh [options] CONFIG WORKDIR [training flags...]
# Options (or env): --cluster (CLUSTER), --tpu-type (TPU_TYPE), --num-slices (NUM_SLICES),
# --workload (WORKLOAD), --project (PROJECT), --zone (ZONE), --docker-image (DOCKER_IMAGE) or
# --base-docker-image (BASE_DOCKER_IMAGE), --python (REMOTE_PYTHON), --init-timeout (INIT_TIMEOUT).
# --dry-run or DRY_RUN=1 prints the command only.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
launch xpk "$@"

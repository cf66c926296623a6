#!/usr/bin/env bash
# N training processes on loopback, each with its own simulated CPU devices (a pod in miniature):
#   launch/local_multiprocess.sh [--devices-per-process K] [--port P] [--init-timeout S] \
#       N CONFIG WORKDIR [training flags...]
# Output lines are prefixed with [rank i]; the first process to fail stops the others and its
# exit status is this script's. Env: DEVICES_PER_PROCESS (4), COORDINATOR_PORT (a free one),
# INIT_TIMEOUT (120), PYTHON. --dry-run or DRY_RUN=1 prints the commands only.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
launch local-multiprocess "$@"

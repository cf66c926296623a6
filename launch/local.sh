#!/usr/bin/env bash
# Train on this machine, with all its devices:
#   launch/local.sh [--python PY] CONFIG WORKDIR [training flags...]
# --dry-run (anywhere) or DRY_RUN=1 prints the command instead of running it.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
launch local "$@"

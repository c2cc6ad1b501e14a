#!/usr/bin/env bash
# Train, then export, on this machine with the project's .venv.
#
# Usage: launch/local.sh CONFIG WORKDIR [--config.FIELD=VALUE ...]
#   e.g. launch/local.sh configs/pmc_oa_separate.py:small runs/separate
# The bundle goes to WORKDIR/export. Rerunning resumes the training run.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "Usage: $0 CONFIG WORKDIR [--config.FIELD=VALUE ...]" >&2
  exit 2
fi
config=$1
workdir=$2
shift 2
bin="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin"
if [[ ! -x "$bin/shared-encoder-train" ]]; then
  echo "$bin/shared-encoder-train not found; run 'make install' first." >&2
  exit 1
fi

"$bin/shared-encoder-train" --config="$config" --workdir="$workdir" "$@"
"$bin/shared-encoder-export" --workdir="$workdir" --output="$workdir/export" --overwrite

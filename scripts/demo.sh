#!/usr/bin/env bash
# Sets up .venv (if needed) and runs the end-to-end demo on the phantom cohort.
# Extra arguments go to `cclray demo` (e.g. --preset paper --gpus on a GPU cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec cclray demo --out "${CCLRAY_DEMO_OUT:-demo_out}" "$@"

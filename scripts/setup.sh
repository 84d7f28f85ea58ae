#!/usr/bin/env bash
# Creates .venv and installs cclray with everything (train, runtime, dev).
# torch: a CPU wheel pinned where this machine keeps one on disk; on a GPU cluster,
# install your CUDA torch first (any torch>=2.4) and this script leaves it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  # 2.13.0 is the CPU build on this machine's disk; elsewhere pip picks it from PyPI.
  python -m pip install -q "torch==${CCLRAY_TORCH_VERSION:-2.13.0}"
fi
# -c: the AWS client stack pinned to a set that resolves together (scripts/constraints.txt says why).
python -m pip install -q -e ".[all]" -c scripts/constraints.txt
python -c "import torch, ray, zarr, onnxruntime; print('cclray env ready: torch', torch.__version__, 'ray', ray.__version__, 'zarr', zarr.__version__, 'onnxruntime', onnxruntime.__version__)"

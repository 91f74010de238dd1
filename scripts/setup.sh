#!/usr/bin/env bash
# Creates .venv in the repository root and installs LatentDriftSlicer with its development tools.
# torch is installed first as the pinned CPU-friendly build so that pip never pulls a multi-GB CUDA
# build on a CPU machine; GPU users: see README "GPU set-up" (install your CUDA build of torch into
# .venv first and set LATENTDRIFT_TORCH=skip).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is required"'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if [ "${LATENTDRIFT_TORCH:-}" != "skip" ]; then
  .venv/bin/python -m pip install --quiet "torch==${LATENTDRIFT_TORCH:-2.13.0}"
fi
.venv/bin/python -m pip install --quiet -e ".[dev]"
echo "set-up done: $(.venv/bin/latentdrift --version)"

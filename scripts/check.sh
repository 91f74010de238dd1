#!/usr/bin/env bash
# The project's checks: lint, format, type check of the engine, then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUTF8=1  # read and write text as UTF-8 whatever the machine's locale
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy LatentDriftSlicer/Logic
.venv/bin/python -m pytest -n 2 "$@"

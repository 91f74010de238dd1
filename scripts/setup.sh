#!/usr/bin/env bash
# Creates .venv in the repository root and installs LatentDriftSlicer with its development tools.
#
# The interpreter is Python 3.12, the one 3D Slicer 5.10 and later ship: set PYTHON=/path/to/python
# to use another (3.10 or newer). torch is installed first, pinned, so that pip never resolves it to
# an untested release; GPU users: see README "GPU set-up" (install your CUDA build of torch into
# .venv first and set LATENTDRIFT_TORCH=skip).
set -euo pipefail
cd "$(dirname "$0")/.."

wanted="3.12"
python_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }

find_python() {
  if [ -n "${PYTHON:-}" ]; then
    echo "$PYTHON"
    return
  fi
  local candidate
  for candidate in "python$wanted" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$wanted"*/bin/python"$wanted" python3; do
    if [ "$(python_version "$candidate")" = "$wanted" ]; then
      echo "$candidate"
      return
    fi
  done
  echo "setup: no Python $wanted found (Slicer 5.10+'s interpreter); install it or set PYTHON=/path/to/python3.12" >&2
  exit 1
}

PYTHON="$(find_python)"
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is required"'
version="$(python_version "$PYTHON")"
if [ -x .venv/bin/python ] && [ "$(python_version .venv/bin/python)" != "$version" ]; then
  echo "setup: .venv holds Python $(python_version .venv/bin/python), not $version: making it anew"
  rm -rf .venv
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if [ "${LATENTDRIFT_TORCH:-}" != "skip" ]; then
  .venv/bin/python -m pip install --quiet "torch==${LATENTDRIFT_TORCH:-2.13.0}"
fi
.venv/bin/python -m pip install --quiet -e ".[dev]"
echo "set-up done: $(.venv/bin/latentdrift --version) on Python $(python_version .venv/bin/python)"

#!/usr/bin/env bash
# Everything of the default generative models in one command: pre-train the miniature Stable Diffusion,
# make the synthetic cohort, fine-tune the two brain models (scripts/train_default_generative.py), then
# regenerate the evidence tables and plots (benchmarks/evidence/run.py). Every stage is resumable: after
# an interruption, run the same command again. `--quick` runs both at toy size (into data/, not the repo).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python scripts/train_default_generative.py "$@"
.venv/bin/python benchmarks/evidence/run.py "$@"

#!/usr/bin/env bash
# The one-command GPU check (issue 17): installs .device/ (make device-bundle) with no package index, then runs the
# steps of benchmarks/gpu_check.py and writes $OUT/gpu_check.json and one log per step (OUT default ./gpu_check_out).
#   benchmarks/gpu_check.sh              on a GPU machine, about 8 minutes on one H100/H200
#   benchmarks/gpu_check.sh --dry-run    every step at toy size on CPU; installs only what the interpreter lacks
# PYTHON picks the interpreter: default .venv/bin/python where it exists (here; the dry run needs pytest, which the
# venv of `make test` has), else python3 (the GPU machine's).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" benchmarks/gpu_check.py --out "${OUT:-gpu_check_out}" "$@"

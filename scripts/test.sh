#!/usr/bin/env bash
# Set up (idempotent) and run the test suite on CPU, one thread per process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# Two processes (one per core), each test file in one of them (its module fixtures, DDP ports and
# timings stay together); every process single-threaded (OMP_NUM_THREADS=1).
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile --durations=20 "$@"

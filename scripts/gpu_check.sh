#!/usr/bin/env bash
# The GPU path in one command (see s3prl_adapters/gpu_check.py): bench on the Base+ shape (fp32/bf16/fp16),
# every method x task on the stand-ins, an fp16 kill + resume, NCCL DDP, the DDP tests; writes
# gpu_check_out/gpu_report.{md,json} after every step. Without CUDA it says so in one line and exits 1;
# --plan prints the plan and exits 0.
# On a machine without network access set S3PRL_ADAPTERS_PYTHON to an interpreter that has the
# pinned requirements and this package installed (setup.sh is then skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${S3PRL_ADAPTERS_PYTHON:-}" ]; then
  PY=$S3PRL_ADAPTERS_PYTHON
else
  bash scripts/setup.sh
  PY=.venv/bin/python
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUNBUFFERED=1
exec "$PY" -m s3prl_adapters.tools.gpu_check "$@"

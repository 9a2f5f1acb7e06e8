#!/usr/bin/env bash
# The methods x tasks experiment of Otake et al. through S3PRL's recipes (see README and --help).
# With no arguments: the embedded default (stand-in corpora, small pretrained WavLM, mini configs).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m s3prl_adapters.tools.benchmark "$@"

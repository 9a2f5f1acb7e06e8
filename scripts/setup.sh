#!/usr/bin/env bash
# Idempotent environment setup: system packages (libsox for S3PRL's ASV sox effects,
# espeak-ng/sox for the stand-in corpora, PostgreSQL for the test of tune's shared-study storage),
# then .venv with the pinned stack and this package.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pkg in libsox-dev libsox-fmt-base sox espeak-ng postgresql; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "[setup] apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.s3prl-adapters-installed
want="$(cat requirements.txt setup.py pyproject.toml | sha1sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # The pinned stack (torch with its CUDA libraries) takes ~8 GB: say so in one line, not pip's OSError.
  free_kb=$(df -Pk .venv | awk 'NR==2 {print $4}')
  if [ "$free_kb" -lt $((9 * 1024 * 1024)) ]; then
    echo "[setup] error: .venv needs ~9 GB free on its filesystem, $(df -Ph .venv | awk 'NR==2 {print $4}') left (df -h $(pwd))" >&2
    exit 1
  fi
  echo "[setup] installing pinned requirements into .venv (first time: a few minutes, torch is large)"
  pip_quiet() {  # this machine's pip config names local wheel folders that may not exist: drop that noise
    .venv/bin/python -m pip install -q "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2)
  }
  pip_quiet --upgrade pip
  pip_quiet -r requirements.txt
  pip_quiet --no-deps -e .
  echo "$want" > "$stamp"
fi

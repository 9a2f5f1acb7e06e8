#!/usr/bin/env bash
# PR and SF with all seven methods through run_downstream.py on the stand-ins: train a few steps,
# evaluate the test split, export. One line per run (exit codes, the test metric, seconds).
#   bash scripts/ctc_all_methods.sh OUT [STEPS]      (makes OUT/mini with make-mini-superb --tasks pr sf)
set -u
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=$(realpath -m "$1"); STEPS=${2:-6}
BIN=$REPO/.venv/bin
B=$REPO/s3prl_adapters/assets/wavlm_tiny_pretrained.pt
export OMP_NUM_THREADS=1
[ -d "$OUT/mini/SNIPS" ] || "$BIN/s3prl-adapters" make-mini-superb "$OUT/mini" --tasks pr sf > /dev/null
for task in pr sf; do
  O=$("$BIN/s3prl-adapters" corpus-overrides $task "$OUT/mini")
  mkdir -p "$OUT/$task"
  for m in wavlm_ladapter wavlm_ladapter_only wavlm_eadapter wavlm_houlsby wavlm_lora "wavlm_local -f" wavlm_local; do
    up=${m%% *}; extra=""; [ "$m" = "wavlm_local -f" ] && extra="-f"
    d=$OUT/$task/${m// /_}; rm -rf "$d"
    s=$(date +%s)
    "$BIN/run_downstream.py" -m train -u $up $extra -k "$B" -d ctc -c "$REPO/downstream_configs/$task/mini.yaml" -p "$d" \
      --device cpu -o "$O,,config.runner.total_steps=$STEPS,,config.runner.eval_step=$STEPS,,config.runner.save_step=$STEPS" \
      > "$d.train.log" 2>&1; rt=$?
    "$BIN/run_downstream.py" -m evaluate -e "$d/states-$STEPS.ckpt" -t test --device cpu > "$d.eval.log" 2>&1; re=$?
    "$BIN/s3prl-adapters" export "$d/states-$STEPS.ckpt" -o "$d.adapter" > "$d.export.log" 2>&1; rx=$?
    metric=$(grep -E "^test (per|slot_type_f1):" "$d.eval.log" | tail -1)
    echo "$task $m: train=$rt evaluate=$re export=$rx '$metric' $(( $(date +%s) - s )) s"
  done
done

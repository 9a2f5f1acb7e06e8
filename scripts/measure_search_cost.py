"""What `s3prl-adapters tune`'s shared caches and pruning save: a study's wall time against the same trials
with neither (issue 20's target: <= 0.4x).

For each method, two studies of the same N trials (same grid, seed, config, corpus), run side by side
(one process each, 1 thread; say with --conditions what else ran); when the shorter one ends, the other
has more of the machine, which favours the longer one (the plain study), so the ratio errs against the
caches:
- "as shipped": tune's defaults, a cache folder shared by the study's trials (frozen-prefix cache for the
  adapter upstreams, feature cache for the states of a frozen backbone; empty at the start, so the first
  trial fills it) and the median pruner on the intermediate dev evaluations;
- "plain": `--no-cache --pruner none`, every trial computed from the waveforms and run to its end.
It writes a Markdown table (with its command, git hash and CPU) to --markdown and prints it.

    .venv/bin/python scripts/measure_search_cost.py --mini-root benchmark_results/mini_superb \\
        --task fluent_commands --methods ladapter ladapter_only --trials 8 --markdown docs/data/search_cost.md
"""

import argparse
import csv
import os
import shutil
import subprocess
import sys
import time

from s3prl_adapters.paths import CONFIG_ROOT, DEFAULT_BACKBONE, REPO_ROOT
from s3prl_adapters.tasks import TASKS
from s3prl_adapters.tasks.base import overrides_string
from s3prl_adapters.tools.catalogue import METHODS
from s3prl_adapters.tools.search_record import cpu_name

VARIANTS = {"as shipped": [], "plain": ["--no-cache", "--pruner", "none"]}


def git_hash() -> str:
    out = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def run_study(method: str, variant: str, args, out: str) -> dict:
    spec = METHODS[method]
    task = TASKS[args.task]
    overrides = task.standin_overrides(args.mini_root)
    if task.folds:
        overrides.update(task.fold_overrides(1))
    command = [sys.executable, "-m", "s3prl_adapters.tools.cli", "tune", "-u", spec.upstream, "-d", args.task,
               "-c", os.path.join(CONFIG_ROOT, args.task, "mini.yaml"), "-k", DEFAULT_BACKBONE,
               "-o", overrides_string(overrides), "--trials", str(args.trials), "--seed", str(args.seed), "--out", out] + VARIANTS[variant]
    if spec.finetune:
        command.append("-f")
    if spec.upstream != "wavlm_local":
        command += ["-g", args.adapter_yaml]
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    start = time.monotonic()
    with open(f"{out}.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - start
    with open(os.path.join(out, "trials.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    return {"seconds": seconds, "trials": len(rows), "pruned": sum(r["state"] == "PRUNED" for r in rows),
            "best": max((float(r["dev_metric"]) for r in rows if r["dev_metric"]), default=float("nan"))
            if task.higher_is_better else min((float(r["dev_metric"]) for r in rows if r["dev_metric"]),
                                              default=float("nan"))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mini-root", required=True, help="make-mini-superb's stand-ins (run_benchmarks.sh's default)")
    p.add_argument("--task", default="fluent_commands")
    p.add_argument("--methods", nargs="+", default=["ladapter", "ladapter_only"])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--adapter-yaml", default=None, help="-g (default: the benchmark's width-256 adapters)")
    p.add_argument("--out", default="benchmark_results/search_cost")
    p.add_argument("--markdown", default=None)
    p.add_argument("--conditions", default="nothing else running",
                   help="what else ran on the machine meanwhile (said in the table's heading)")
    args = p.parse_args()
    args.mini_root = os.path.abspath(args.mini_root)
    os.makedirs(args.out, exist_ok=True)
    if args.adapter_yaml is None:
        args.adapter_yaml = os.path.join(args.out, "adapters_width256.yaml")
        with open(args.adapter_yaml, "w") as f:
            f.write("e_adapter_dim: 85\nl_adapter_dim: 171\n")
    from concurrent.futures import ThreadPoolExecutor

    rows = []
    for method in args.methods:
        with ThreadPoolExecutor(len(VARIANTS)) as pool:
            futures = {v: pool.submit(run_study, method, v, args, os.path.join(args.out, method, v.replace(" ", "_")))
                       for v in VARIANTS}
            result = {v: f.result() for v, f in futures.items()}
        print(f"[search-cost] {method}: {result}", file=sys.stderr, flush=True)
        rows.append((method, result))
    metric = TASKS[args.task].metric
    lines = [f"`python scripts/measure_search_cost.py --task {args.task} --methods {' '.join(args.methods)} "
             f"--trials {args.trials}` (stand-ins of `make-mini-superb`, size small, seed 0; the embedded backbone; "
             f"`downstream_configs/{args.task}/mini.yaml`), git {git_hash()}, {cpu_name()}, "
             f"{os.environ.get('OMP_NUM_THREADS', '?')} thread per process, the two studies of a method side by side, "
             f"{args.conditions}:", "",
             f"| method | upstream | trials | as shipped: s (pruned) | plain: s | × plain | best dev {metric}: shipped / plain |",
             "|---|---|---|---|---|---|---|"]
    for method, r in rows:
        a, b = r["as shipped"], r["plain"]
        up = METHODS[method].upstream + (" -f" if METHODS[method].finetune else "")
        lines.append(f"| {method} | `{up}` | {a['trials']} | {a['seconds']:.0f} ({a['pruned']}) | {b['seconds']:.0f} | "
                     f"{a['seconds'] / b['seconds']:.2f} | {a['best']:.4g} / {b['best']:.4g} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""GPU-hours of the paper's experiment per task and method, estimated (no GPU has run here).

From: each task's full config (`downstream_configs/<task>/config.yaml`: total_steps x
gradient_accumulate_steps = batches trained), the runs of the experiment (3 seeds; ER's 5 folds), and
each method's step time as a multiple of fine-tuning's, measured by `s3prl-adapters bench` (the table in
docs/results.md, or a `bench --json` file with --bench). The table is in hours per second of
fine-tuning's step on your GPU: measure that with `s3prl-adapters bench --device cuda --batch B
--seconds S` (the task's batch) and multiply. Evaluation and the rate search are not included.

    python scripts/estimate_gpu_hours.py [--bench bench.json] [--seeds 3]
"""

import argparse
import json
import os
import re
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from s3prl_adapters.paths import CONFIG_ROOT  # noqa: E402
from s3prl_adapters.tasks import PAPER_TASKS, TASKS  # noqa: E402
from s3prl_adapters.tools.catalogue import METHODS  # noqa: E402

ROWS = {"finetune": "finetune", "frozen": "frozen", "houlsby": "houlsby", "eadapter": "eadapter",
        "ladapter_only": "ladapter_only", "ladapter": "ladapter", "lora": "lora"}
"""Benchmark method -> the bench row measuring it (plain float32 rows)."""


def ratios_from_docs() -> dict:
    text = open(os.path.join(os.path.dirname(HERE), "docs", "results.md")).read()
    found = {}
    for line in text.splitlines():
        m = re.match(r"\| (\w+) \| `[^`]+` \| - \| ([\d.]+) \| ([\d.]+) \|", line)
        if m:
            found[m.group(1)] = float(m.group(3))
    return found


def ratios_from_bench(path: str) -> dict:
    results = [r for r in json.load(open(path))["results"] if "failed" not in r and not r.get("settings")]
    ft = next(r for r in results if r["method"] == "finetune")["step_seconds"]
    return {r["method"]: r["step_seconds"] / ft for r in results}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", help="a `s3prl-adapters bench --json` output (default: the table in docs/results.md)")
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    ratio = ratios_from_bench(args.bench) if args.bench else ratios_from_docs()
    head = ["Method", "x FT step"] + [f"{TASKS[t].title.split(' ')[0]} ({TASKS[t].name})" for t in PAPER_TASKS] + ["all"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    batches = {}
    for t in PAPER_TASKS:
        runner = yaml.safe_load(open(os.path.join(CONFIG_ROOT, t, "config.yaml")))["runner"]
        runs = args.seeds * (len(TASKS[t].folds) or 1)
        batches[t] = (runner["total_steps"] * runner.get("gradient_accumulate_steps", 1), runs)
    for m, row in ROWS.items():
        hours = [n * runs * ratio[row] / 3600 for n, runs in batches.values()]
        lines.append("| " + " | ".join([METHODS[m].title, f"{ratio[row]:.2f}"] + [f"{h:,.0f}" for h in hours]
                                        + [f"{sum(hours):,.0f}"]) + " |")
    lines += ["", "Batches per run (total_steps x gradient_accumulate_steps) and runs: " + "; ".join(
        f"{TASKS[t].title.split(' ')[0]} {n:,} x {runs}" for t, (n, runs) in batches.items()) + "."]
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Exact evaluation in batches, measured: for each task, one short L+E training on the stand-ins, then its
test split evaluated three ways with `run_downstream.py -m evaluate`:
  batch 1       every file alone (what the benchmark and `predict --batch-size 1` do);
  exact B       B files a batch, each utterance's CNN alone, the encoder batched with its mask, each
                file's own frames (`runner.exact_evaluation: true`, the default);
  padded B      B files a batch, S3PRL's padded pass (`runner.exact_evaluation: false`).
Prints, per task, how many test answers of each batched way equal batch 1's (ASV: the largest score
difference and the EER), and each evaluation's wall time (the process, imports included, and the
evaluation loop alone as S3PRL's progress bar times it).

    python scripts/measure_exact_evaluation.py OUT [--steps 40] [--batch 8] [--tasks ...]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from s3prl_adapters.paths import CONFIG_ROOT, DEFAULT_BACKBONE, code_version  # noqa: E402
from s3prl_adapters.tasks import TASKS, corpus_overrides, make_mini_superb  # noqa: E402
from s3prl_adapters.tasks.base import overrides_string  # noqa: E402
from s3prl_adapters.tools.search_record import cpu_name  # noqa: E402

BIN = os.path.dirname(sys.executable)


def run(argv, log):
    start = time.time()
    with open(log, "w") as f:
        proc = subprocess.run([os.path.join(BIN, "run_downstream.py"), *argv], stdout=f, stderr=subprocess.STDOUT,
                              env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): see {log}")
    return time.time() - start


def loop_seconds(log: str, split: str) -> float:
    """The evaluation loop's own time, from the last tqdm line of the split ('test: 100%|...| n/n [mm:ss<...')."""
    text = open(log).read().replace("\r", "\n")
    times = re.findall(rf"^{split}: 100%.*?\[(\d+):(\d+)(?:\.\d+)?<", text, re.M)
    return float(int(times[-1][0]) * 60 + int(times[-1][1])) if times else float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tasks", nargs="+", default=["fluent_commands", "emotion", "asr", "sv_voxceleb1", "voxceleb1"])
    p.add_argument("--upstream", default="wavlm_ladapter")
    args = p.parse_args()
    out = os.path.abspath(args.out)
    corpus = os.path.join(out, "mini_superb")
    if not os.path.exists(os.path.join(corpus, "manifest.json")):
        make_mini_superb(corpus, tasks=args.tasks)
    rows = []
    for name in args.tasks:
        task = TASKS[name]
        exp = os.path.join(out, name)
        fold = task.folds[0] if task.folds else None
        corpus_o = corpus_overrides(name, corpus) + (",," + overrides_string(task.fold_overrides(fold)) if fold else "")
        steps = (f"config.runner.total_steps={args.steps},,config.runner.eval_step={10 * args.steps},,"
                 f"config.runner.save_step={args.steps}")
        if not os.path.exists(os.path.join(exp, f"states-{args.steps}.ckpt")):
            upstream = ["-u", "wavlm_local", "-f"] if args.upstream == "wavlm_local" else ["-u", args.upstream]
            run(["-m", "train", *upstream, "-k", DEFAULT_BACKBONE, "-d", name, "-c",
                 os.path.join(CONFIG_ROOT, name, "mini.yaml"), "-p", exp, "-o",
                 f"{corpus_o},,{steps}"], os.path.join(exp + ".train.log"))
        ckpt = os.path.join(exp, f"states-{args.steps}.ckpt")
        found = {}
        for way, batch, exact in (("batch 1", 1, True), (f"exact {args.batch}", args.batch, True),
                                  (f"padded {args.batch}", args.batch, False)):
            folder = os.path.join(out, "eval", name, way.replace(" ", "_"))
            os.makedirs(folder, exist_ok=True)
            overrides = [f"args.expdir='{folder}'", f"config.runner.exact_evaluation={exact}"]
            if task.eval_batch_key:
                overrides.append(f"config.downstream_expert.datarc.{task.eval_batch_key}={batch}")
            elif batch != 1:
                overrides.append(f"config.downstream_expert.datarc.batch_size={batch}")
            log = os.path.join(folder, "evaluate.log")
            seconds = run(["-m", "evaluate", "-e", ckpt, "-t", task.evaluated_split, "-o", ",,".join(overrides)], log)
            for f in os.listdir(exp):  # the truth files and configs the task's readers expect beside predictions
                if f.startswith("config_") and not os.path.exists(os.path.join(folder, f)):
                    os.symlink(os.path.join(exp, f), os.path.join(folder, f))
            found[way] = {"answers": task.recorded_answers(folder, fold), "seconds": round(seconds, 1),
                          "loop_seconds": loop_seconds(log, task.evaluated_split),
                          "metric": task.parse_metric(open(log).read())}
        base = found["batch 1"]["answers"]
        row = {"task": name, "files": len(base)}
        for way, got in found.items():
            answers = got["answers"]
            if task.scores_pairs:
                diff = max(abs(float(answers[k]) - float(base[k])) for k in base)
                row[way] = {"max_score_difference": diff}
            else:
                row[way] = {"equal": sum(answers.get(k) == v for k, v in base.items())}
            row[way].update(seconds=got["seconds"], loop_seconds=got["loop_seconds"], metric=got["metric"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    record = {"command": "python scripts/measure_exact_evaluation.py " + " ".join(sys.argv[1:]), "git": code_version(),
              "cpu": cpu_name(), "threads": os.environ.get("OMP_NUM_THREADS", "1"), "upstream": args.upstream,
              "steps": args.steps, "batch": args.batch, "rows": rows}
    with open(os.path.join(out, "exact_evaluation.json"), "w") as f:
        json.dump(record, f, indent=1)
    with open(os.path.join(out, "exact_evaluation.md"), "w") as f:
        f.write(markdown(record))
    print(markdown(record))


def markdown(record: dict) -> str:
    b = record["batch"]
    lines = ["# Exact evaluation in batches, measured", "",
             f"`{record['command']}` (git {record['git']}, {record['cpu']}, {record['threads']} thread): for each task "
             f"one `{record['upstream']}` run of {record['steps']} steps on the stand-ins (the embedded 4×256 backbone, "
             f"`mini.yaml`), then its test split evaluated three ways with `run_downstream.py -m evaluate`: every file "
             f"alone (batch 1); batches of {b} with `runner.exact_evaluation: true` (each file's CNN alone, the encoder "
             f"batched with its mask, each file's own frames; the default); batches of {b} with it false (S3PRL's "
             f"padded pass). Answers are compared with batch 1's file by file (ASV: the score of every trial); time is "
             f"the evaluation loop as S3PRL's progress bar reports it (whole seconds), the process in brackets.", "",
             f"| task | files | exact {b}: answers equal to batch 1 | padded {b}: answers equal to batch 1 | metric: batch 1 / "
             f"exact / padded | loop s: batch 1 / exact {b} / padded {b} |", "|---|---|---|---|---|---|"]
    for r in record["rows"]:
        one, exact, padded = r["batch 1"], r[f"exact {b}"], r[f"padded {b}"]
        if "equal" in exact:
            same = [f"{exact['equal']} of {r['files']}", f"{padded['equal']} of {r['files']}"]
        else:
            same = [f"max score difference {exact['max_score_difference']:.1e}",
                    f"max score difference {padded['max_score_difference']:.1e}"]
        lines.append(f"| {r['task']} | {r['files']} | {same[0]} | {same[1]} | {one['metric']:.4g} / {exact['metric']:.4g} "
                     f"/ {padded['metric']:.4g} | {one['loop_seconds']:g} ({one['seconds']:g}) / {exact['loop_seconds']:g} "
                     f"({exact['seconds']:g}) / {padded['loop_seconds']:g} ({padded['seconds']:g}) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

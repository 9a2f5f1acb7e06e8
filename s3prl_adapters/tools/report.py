"""Benchmark outputs: results.{csv,json,md}, layer-weight heatmap, training-loss curves, predict.zip per method."""

import csv
import glob
import json
import os
import struct
import sys
from collections import defaultdict
from typing import Dict, List

from s3prl_adapters.errors import UserError
from s3prl_adapters.tasks import TASKS
from s3prl_adapters.tools.catalogue import METHODS
from s3prl_adapters.tools.submission import build_submission
from s3prl_adapters.tools.uncertainty import REFERENCE, analyse, run_interval

COLUMNS = ["task", "method", "upstream", "seed", "fold", "metric", "metric_value", "metric_percent", "ci_low", "ci_high",
           "trainable_params", "head_params", "total_params", "train_seconds", "peak_rss_mb", "checkpoint_bytes",
           "evaluated_checkpoint", "backbone", "git_commit", "expdir"]


def with_items(results: List[dict]) -> List[dict]:
    """Each run with its per-item test outcomes (result.json holds them; older ones are read from the run's folder)."""
    return [r if "items" in r else dict(r, items=TASKS[r["task"]].test_items(r["expdir"], r["fold"])) for r in results]


def _cell_text(cell: dict) -> str:
    spread = f" ± {cell['sd']:.2f}" if cell["sd"] is not None else ""
    same = " ≈" if cell.get("overlaps_reference") else ""
    return f"{cell['value']:.2f}{spread} [{cell['ci'][0]:.1f}, {cell['ci'][1]:.1f}]{same}"


def results_markdown(results: List[dict], wall_seconds: float = None, cells: Dict[tuple, dict] = None,
                     missing: List[str] = ()) -> str:
    cells = cells if cells is not None else analyse(with_items(results))
    tasks = [t for t in TASKS if any(r["task"] == t for r in results)]
    methods = [m for m in METHODS if any(r["method"] == m for r in results)]
    trainable = {m: max(r["trainable_params"] for r in results if r["method"] == m) for m in methods}
    ft = trainable.get("finetune")
    head = ["Method"] + [TASKS[t].title + (" ↑" if TASKS[t].higher_is_better else " ↓") for t in tasks]
    head += ["Trainable (excl. head)", "% of FT"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        row = [METHODS[m].title] + [_cell_text(cells[(t, m)]) if (t, m) in cells else "–" for t in tasks]
        row += [f"{trainable[m]:,}", f"{100 * trainable[m] / ft:.1f}" if ft else "–"]
        lines.append("| " + " | ".join(row) + " |")
    if REFERENCE in methods and len(methods) > 1:
        covers = "seeds and test items" if any(c.get("delta_covers") == "seeds and test items" for c in cells.values()) \
            else "test items"
        what = ("resampling seeds (the same seeds for both methods) and the same test items together"
                if covers != "test items" else "over the same test items")
        lines += ["", f"Difference to {METHODS[REFERENCE].title}, paired bootstrap {what} "
                      "(Δ [95 % interval]; * = the interval excludes 0):", "",
                  "| Method | " + " | ".join(f"Δ {TASKS[t].title}" for t in tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
        for m in methods:
            if m == REFERENCE:
                continue
            row = [METHODS[m].title]
            for t in tasks:
                c = cells.get((t, m))
                row.append("–" if c is None or "delta" not in c else
                           f"{c['delta']:+.2f} [{c['delta_ci'][0]:+.1f}, {c['delta_ci'][1]:+.1f}]"
                           + (" *" if c["delta_excludes_zero"] else ""))
            lines.append("| " + " | ".join(row) + " |")
    r0 = results[0]
    seeds = sorted({r["seed"] for r in results})
    notes = [
        "",
        f"Backbone `{os.path.basename(r0['backbone'])}`, git {r0['git_commit']}; seeds {seeds}; "
        "metrics are S3PRL's printed test values (WER in %, accuracy and EER converted from fractions)"
        + ("; SD: SUPERB's DER scored from the run's test posteriors (threshold 0.5, no median filter, "
           "pyannote.metrics, no collar), not the recipe's printed frame DER" if "diarization" in tasks else "") + ".",
        "Cells: value" + (" ± sd across seeds" if len(seeds) > 1 else "") + " [95 % bootstrap interval over the test "
        "items (utterances; ASV: trials), 1000 resamples" + (", pooled over seeds" if len(seeds) > 1 else "") + "]; "
        f"≈ = the interval overlaps {METHODS[REFERENCE].title}'s (not different by that rule).",
        "Trainable = parameters the optimizer updated, upstream + Featurizer weights, without the task head.",
        "Chance or majority level on the stand-in corpora: "
        + ", ".join(f"{TASKS[t].title.split(' %')[0]} {TASKS[t].chance_percent:.2f} %" for t in tasks) + ".",
    ]
    for cache, what in (("prefix_cache", "the frozen prefix (CNN, LayerNorm, projection) read from one cache "
                                         "shared by the runs once computed"),
                        ("feature_cache", "the frozen backbone's states read from a cache once computed")):
        on = [r for r in results if r.get(cache)]
        if on:
            titles = sorted({METHODS[r["method"]].title for r in on})
            where = [TASKS[t].title.split(" ")[0] for t in tasks if any(r["task"] == t for r in on)]
            notes.append(f"{', '.join(titles)}: {what} (float16 for training; dev and test read float32 entries "
                         f"computed per file alone, as computing them would give; `{cache}` in the README)"
                         + (f"; in {', '.join(where)}" if len(where) < len(tasks) else "") + ".")
    alone = [TASKS[t].title.split(" ")[0] for t in tasks if TASKS[t].eval_batch_key]
    batch = max((r.get("eval_batch") or 1) for r in results) if results else 1
    if alone and batch == 1:  # what the benchmark and tune pass (Task.exact_evaluation_overrides): no batch neighbours
        notes.append(f"Dev selection and test passes score every file alone (evaluation batch 1) in {', '.join(alone)}, "
                     "for every method.")
    elif alone:
        notes.append(f"Dev selection and test passes score files in batches of {batch} in {', '.join(alone)}, each as it "
                     "is alone (its CNN alone, its own frames: runner.exact_evaluation), for every method.")
    if missing:
        notes.append(f"Missing: {len(missing)} run(s) of this command have no record yet (not in the table): "
                     f"{', '.join(missing[:12])}{' ...' if len(missing) > 12 else ''}.")
    notes += reproduction_notes(results, tasks, methods) + rates_notes(results, tasks, methods)
    if wall_seconds is not None:
        kept = sum(1 for r in results if r.get("kept"))
        notes.append(f"Wall time of this benchmark invocation: {wall_seconds / 60:.1f} min" +
                     (f" ({kept} of {len(results)} runs kept from an earlier invocation, not rerun)." if kept else "."))
    return "\n".join(lines + notes) + "\n"


def reproduction_notes(results: List[dict], tasks: List[str], methods: List[str]) -> List[str]:
    """Whether each cell's test answers came out the same from `predict` of the run's exported set."""
    runs = [r for r in results if r.get("reproduction")]
    if not runs:
        return []
    bad = [r for r in runs if not r["reproduction"]["reproduced"]]
    total = sum(r["reproduction"]["answers"] for r in runs)
    if not bad:
        which = "every run's" if len(runs) == len(results) else f"{len(runs)} of the {len(results)} runs' (the others not checked)"
        return [f"Reproduced: {which} test answers ({total:,} files or trials in all) came out identical from "
                f"`s3prl-adapters export` of its selected checkpoint and `predict --batch-size 1`, and so did every "
                f"cell's metric, recomputed from predict's answers."]
    lines = ["", "Cells whose test answers `predict` of the exported set did not reproduce:", "",
             "| Task | Method | seed/fold | metric (run) | metric (predict) | same answers |", "|---|---|---|---|---|---|"]
    for r in bad:
        rep = r["reproduction"]
        lines.append(f"| {TASKS[r['task']].title} | {METHODS[r['method']].title} | {r['seed']}/{r['fold'] or '-'} | "
                     f"{r['metric_percent']:.2f} | {rep['metric_percent']:.2f} | {rep['answers_equal']} of "
                     f"{rep['answers']} {rep['what']} |")
    return lines


def rates_notes(results: List[dict], tasks: List[str], methods: List[str]) -> List[str]:
    """The learning rates (non-head groups) and backbone dropout each method trained with, and their source."""
    if not any("rates" in r for r in results):
        return []
    lines = ["", "Learning rates and backbone dropout of each method (head / other groups; where they come from):", "",
             "| Method | " + " | ".join(TASKS[t].title.split(" ")[0] for t in tasks) + " | source |",
             "|" + "---|" * (len(tasks) + 2)]
    for m in methods:
        row, sources = [METHODS[m].title], set()
        for t in tasks:
            r = next((x for x in results if x["task"] == t and x["method"] == m and "rates" in x), None)
            if r is None:
                row.append("–")
                continue
            sources.add(r["rates_source"])
            rates = ", ".join(f"{g} {v:g}" for g, v in r["rates"].items() if g != "featurizer" or "l_adapter" not in r["rates"])
            row.append(rates + ("; dropout on" if r["backbone_dropout"] else "; dropout off"))
        row.append("; ".join(sorted(sources)))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def read_scalars(expdir: str) -> Dict[str, List[tuple]]:
    """Scalars from the TensorBoard event files S3PRL wrote (TFRecord framing + tensorboardX's Event proto)."""
    from tensorboardX.proto.event_pb2 import Event

    scalars = defaultdict(list)
    for path in sorted(glob.glob(os.path.join(expdir, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                scalars[v.tag].append((event.step, v.simple_value))
    return scalars


def plot_layer_weights(results: List[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in results if r["seed"] == results[0]["seed"] and r["fold"] in (None, 1)]
    width = max(len(r["layer_weights"]) for r in rows)
    grid = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        grid[i, : len(r["layer_weights"])] = r["layer_weights"]
    fig, ax = plt.subplots(figsize=(max(9.0, 3.0 + 0.6 * width), 1.5 + 0.35 * len(rows)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(rows)), [f"{r['task']} / {r['method']}" for r in rows], fontsize=8)
    ax.set_xticks(range(width))
    ax.set_xlabel("hidden state index (L methods: L-adapter of layer i; others: input of layer 0, then layer outputs)", fontsize=8)
    ax.set_title("Learned layer weights (softmax of S3PRL's Featurizer weights)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_loss_curves(results: List[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in results})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for r in results:
            if r["task"] != task or r["seed"] != results[0]["seed"] or r["fold"] not in (None, 1):
                continue
            scalars = read_scalars(r["expdir"])
            tags = [t for t in scalars if "train" in t and "loss" in t]
            if tags:
                steps, values = zip(*sorted(scalars[tags[0]]))
                ax.plot(steps, values, label=r["method"])
        ax.set_title(task)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report_markdown(results: List[dict], wall_seconds: float = None, cells: Dict[tuple, dict] = None,
                    missing: List[str] = (), qbe: dict = None) -> str:
    """results.md: the trained tasks' table and notes, then QbE's sweep."""
    return ((results_markdown(results, wall_seconds, cells, missing) if results else "")
            + ("\n".join(qbe_lines(qbe)) + "\n" if qbe else ""))


def qbe_lines(qbe: dict) -> List[str]:
    """QbE's section of results.md: the backbone's layer sweep (no training, the same for every method)."""
    task = TASKS[qbe["task"]]
    dev = ", ".join(f"{layer}: {v:.3f}" for layer, v in qbe["dev_mtwv"].items())
    return ["", f"{task.title.split(' ')[0]} ({task.corpus}; no training, so one figure for every method: the "
                f"{'backbone' if qbe['hidden_states'] == 'backbone' else 'upstream'}'s hidden states, `s3prl-adapters "
                f"qbe`): best layer on dev **{qbe['best_layer']}**, test MTWV **{qbe['test_mtwv']:.4f}** (ATWV "
                f"{qbe['test_atwv']:.4f}). Dev MTWV per layer: {dev}. MTWV is one threshold over all queries (ours, "
                "tasks/query_by_example.py), so no bootstrap interval."]


def write_submissions(out: str, results: List[dict], qbe: dict = None) -> List[str]:
    """One predict.zip per method, from the first seed's runs of every task (and QbE's sweep, the same for
    every method); says which SUPERB members each lacks."""
    from s3prl_adapters.tools.submission import missing_members

    written = []
    for method in sorted({r["method"] for r in results}):
        experiments = {TASKS[qbe["task"]].key: qbe["test_expdir"]} if qbe else {}
        for r in results:
            if r["method"] == method and r["seed"] == min(x["seed"] for x in results):
                task = TASKS[r["task"]]
                if task.folds:
                    experiments.setdefault(task.key, {}).setdefault(r["fold"], r["expdir"])
                else:
                    experiments.setdefault(task.key, r["expdir"])
        path = os.path.join(out, "submission", method, "predict.zip")
        try:
            members = build_submission(path, **experiments)
            written.append(path)
            lacking = missing_members(members)
            if lacking:
                print(f"[benchmark] {path}: {len(members)} SUPERB members; not in it: {', '.join(lacking)}",
                      file=sys.stderr)
        except UserError as e:
            print(f"[benchmark] no predict.zip for {method}: {e}", file=sys.stderr)
    return written


def write_reports(out: str, results: List[dict], wall_seconds: float = None, args: dict = None,
                  missing: List[str] = (), qbe: dict = None) -> None:
    results = sorted(with_items(results), key=lambda r: (r["task"], r["method"], r["seed"], r["fold"] or 0))
    for r in results:
        r["ci_low"], r["ci_high"] = run_interval(r)
    cells = analyse(results)
    summary = [dict(task=t, method=m, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in c.items()})
               for (t, m), c in sorted(cells.items())]
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"cells": summary, "runs": results, "args": args, "wall_seconds": wall_seconds,
                   "missing": list(missing), "qbe": qbe}, f, indent=1,
                  default=str)
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(results)
    table = report_markdown(results, wall_seconds, cells, missing, qbe)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table)
    if results:
        plot_layer_weights(results, os.path.join(out, "layer_weights.png"))
        plot_loss_curves(results, os.path.join(out, "loss_curves.png"))
    write_submissions(out, results, qbe)
    print(table)

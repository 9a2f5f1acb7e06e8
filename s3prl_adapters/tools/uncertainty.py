"""How sure the benchmark's table is: bootstrap intervals over the test items.

Each run's test split gives one outcome per item (an utterance, or an ASV trial; tasks' `test_items`).
A cell (task x method) is the mean over seeds of each seed's mean over folds. Its 95 % interval
resamples the test items (with replacement, `resamples` times; per fold, the same draw for every seed
and method), so the interval is the test set's uncertainty about that seed-averaged value; the
spread across seeds is reported beside it (mean ± sd). The difference to the reference method
(the proposed one) is bootstrapped paired: both cells are scored on the same draw of items, which is
what a paired comparison on one test set needs. A cell whose interval overlaps the reference's is
"not different" by that rule; a Δ interval that excludes 0 is the stronger, paired, statement.

With several seeds the Δ interval resamples both: each replicate draws the seeds (with replacement,
the same draw for both methods: runs of one seed share its data order and initialisation) and the
test items, so it covers the seed-to-seed spread as well as the test set's sampling."""

from collections import defaultdict
from statistics import mean, stdev
from typing import Dict, List, Tuple

import numpy as np

from s3prl_adapters.tasks import TASKS

REFERENCE = "ladapter"
"""The method every other one is compared with (the proposed L+E adapters)."""


def _aligned(run: dict, ids: List[str]) -> dict:
    """The run's items reordered to `ids` (every run of a task and fold must have the same test items)."""
    items = run["items"]
    if items["ids"] != ids:
        if sorted(items["ids"]) != sorted(ids):
            raise ValueError(f"{run['task']}/{run['method']}: its test items differ from the other runs' of this fold")
        order = {item: k for k, item in enumerate(items["ids"])}
        index = [order[item] for item in ids]
        items = {k: (list(np.asarray(v)[index]) if k != "ids" else ids) for k, v in items.items()}
    return items


def analyse(results: List[dict], resamples: int = 1000, seed: int = 0, reference: str = REFERENCE) -> Dict[Tuple[str, str], dict]:
    """(task, method) -> {'value', 'sd' (across seeds, or None), 'seeds', 'ci': (lo, hi), and, for methods
    other than `reference` when it ran: 'delta', 'delta_ci', 'overlaps_reference', 'delta_excludes_zero'}."""
    rng = np.random.default_rng(seed)
    cells = defaultdict(list)
    for r in results:
        cells[(r["task"], r["method"])].append(r)
    out = {}
    for task_name in sorted({t for t, _ in cells}):
        task = TASKS[task_name]
        methods = {m: runs for (t, m), runs in cells.items() if t == task_name}
        folds = {}
        for runs in methods.values():
            for run in runs:
                folds.setdefault(run["fold"], run["items"]["ids"])
        identity = {f: np.arange(len(ids)) for f, ids in folds.items()}
        draws = {f: rng.integers(0, len(ids), size=(resamples, len(ids))) for f, ids in folds.items()}
        boots, per_seed_boots = {}, {}
        for method, runs in methods.items():
            items = {k: _aligned(run, folds[run["fold"]]) for k, run in enumerate(runs)}
            per_seed, per_seed_draws = defaultdict(list), defaultdict(list)
            for k, run in enumerate(runs):
                per_seed[run["seed"]].append(task.score(items[k], identity[run["fold"]]))
                per_seed_draws[run["seed"]].append(np.array([task.score(items[k], draws[run["fold"]][b])
                                                             for b in range(resamples)]))
            seed_values = [mean(v) for v in per_seed.values()]
            per_seed_boots[method] = {seed: np.mean(v, axis=0) for seed, v in per_seed_draws.items()}
            boots[method] = np.mean(list(per_seed_boots[method].values()), axis=0)
            lo, hi = np.nanpercentile(boots[method], [2.5, 97.5])
            out[(task_name, method)] = {"value": mean(seed_values), "sd": stdev(seed_values) if len(seed_values) > 1 else None,
                                        "seeds": len(seed_values), "ci": (float(lo), float(hi))}
        if reference not in methods:
            continue
        ref = out[(task_name, reference)]
        seeds = sorted(per_seed_boots[reference])
        seed_draw = rng.integers(0, len(seeds), size=(resamples, len(seeds))) if len(seeds) > 1 else None
        for method in methods:
            if method == reference:
                continue
            cell = out[(task_name, method)]
            delta = boots[method] - boots[reference]
            covers = "test items"
            if seed_draw is not None and sorted(per_seed_boots[method]) == seeds:
                # seeds and items resampled together, paired: replicate b draws seeds seed_draw[b] and items draws[b]
                by_seed = np.array([per_seed_boots[method][s] - per_seed_boots[reference][s] for s in seeds])
                delta = by_seed[seed_draw, np.arange(resamples)[:, None]].mean(axis=1)
                covers = "seeds and test items"
            lo, hi = np.nanpercentile(delta, [2.5, 97.5])
            cell.update(delta=cell["value"] - ref["value"], delta_ci=(float(lo), float(hi)), delta_covers=covers,
                        overlaps_reference=cell["ci"][0] <= ref["ci"][1] and ref["ci"][0] <= cell["ci"][1],
                        delta_excludes_zero=bool(lo > 0 or hi < 0))
    return out


def run_interval(run: dict, resamples: int = 1000, seed: int = 0) -> Tuple[float, float]:
    """One run's 95 % bootstrap interval over its own test items."""
    task = TASKS[run["task"]]
    n = len(run["items"]["ids"])
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    lo, hi = np.nanpercentile([task.score(run["items"], d) for d in draws], [2.5, 97.5])
    return float(lo), float(hi)

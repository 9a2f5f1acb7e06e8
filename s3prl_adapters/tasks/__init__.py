"""One module per SUPERB recipe of S3PRL, each a `Task` (tasks/base.py) stating everything the package
knows about it; this registry collects every module's `TASK`. Adding a recipe = adding a module here
plus `downstream_configs/<name>/{config,mini}.yaml`."""

import importlib
import pkgutil
from typing import Dict, List, Optional, Sequence

from s3prl_adapters.errors import UserError

from .base import Task, overrides_string


def _collect() -> Dict[str, Task]:
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "base":
            continue
        task = getattr(importlib.import_module(f"{__name__}.{info.name}"), "TASK", None)
        if isinstance(task, Task):
            found[task.name] = task
    # the paper's four first (their order in the results table), then the others by name
    order = ["asr", "fluent_commands", "emotion", "sv_voxceleb1"]
    return dict(sorted(found.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0])))


TASKS: Dict[str, Task] = _collect()
"""S3PRL downstream name -> Task."""

PAPER_TASKS: List[str] = [name for name, task in TASKS.items() if task.paper_task]
"""The four tasks of Otake et al.: the default of run_benchmarks.sh and make-mini-superb."""


def get_task(name: str, what: str = "task") -> Task:
    if name not in TASKS:
        raise UserError(f"{what} '{name}': unknown; valid: {list(TASKS)}")
    return TASKS[name]


def tasks_of_recipe(downstream: str) -> List[Task]:
    """The tasks S3PRL's recipe `downstream` (`-d`) runs: one, or several that its config tells apart (ctc)."""
    return [t for t in TASKS.values() if t.runs_as() == downstream]


def find_task(name: str, config: Optional[dict] = None) -> Optional[Task]:
    """The task of a task name or of an S3PRL downstream name (with `config`, the one whose corpus it
    names where the recipe runs several), or None for a recipe the package has no knowledge of."""
    if name in TASKS:
        return TASKS[name]
    candidates = tasks_of_recipe(name)
    if config is not None:
        candidates = [t for t in candidates if t.matches(config)]
    return candidates[0] if len(candidates) == 1 else None


def corpus_overrides(task: str, root: str) -> str:
    """The `-o` string that points a recipe's config at the stand-in corpus under `root`."""
    spec = get_task(task)
    return overrides_string(spec.standin_overrides(root), spec.data_section)


def make_mini_superb(out: str, size: str = "small", seed: int = 0, workers: int = 2,
                     tasks: Optional[Sequence[str]] = None) -> dict:
    """Generate the stand-in corpora of `tasks` (default: the paper's four) under `out`; a task reusing
    another's corpus gets that one generated too when it is missing."""
    from s3prl_adapters.data.mini_superb import make_standins

    names = list(tasks or PAPER_TASKS)
    wanted = [get_task(n) for n in names]
    for task in list(wanted):
        base = task.standin_base and TASKS[task.standin_base]
        if base and base not in wanted and not base.standin_ready(out):
            wanted.insert(wanted.index(task), base)
    # fixed order, and a base corpus before the tasks that reuse it
    ordered = [t for t in TASKS.values() if t in wanted and not t.standin_base]
    ordered += [t for t in TASKS.values() if t in wanted and t.standin_base]
    return make_standins(out, ordered, size=size, seed=seed, workers=workers)


__all__ = ["PAPER_TASKS", "TASKS", "Task", "corpus_overrides", "find_task", "get_task", "make_mini_superb",
           "tasks_of_recipe"]

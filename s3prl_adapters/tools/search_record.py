"""The learning-rate search shipped with the embedded default benchmark, and what reads it.

`./run_benchmarks.sh --tune N` on the embedded setup (stand-in corpora, embedded backbone, mini
configs) keeps its record beside the configs, in `downstream_configs/<task>/mini_search/`:
- `study.journal`: the Optuna journal of the task's studies (one per method), so the same command
  continues the search where it stopped (several sittings add up);
- `<method>.csv`: each study's trials (settings, dev metric, state, steps, seconds);
- `README.md`: one line per sitting (date, command, git hash, CPU, trials run).
The best trial of each study is written into the task's `mini.yaml` (the block between the markers:
`adapter_optimizer` and `backbone_dropout`), which is where the default benchmark reads its rates."""

import csv
import datetime
import io
import os
import platform
import re
import subprocess
from typing import Dict, Optional

import yaml

from s3prl_adapters.paths import CONFIG_ROOT, REPO_ROOT, SOURCE_CHECKOUT

BEGIN = "# ---- chosen on dev by ./run_benchmarks.sh --tune (record: mini_search/); written by it, do not edit ----"
END = "# ---- end of the rates chosen on dev ----"
RECORD_COLUMNS_DROPPED = ("folder",)
"""Trial columns left out of the shipped CSVs (paths of the machine that ran them)."""


def record_dir(task: str) -> str:
    return os.path.join(CONFIG_ROOT, task, "mini_search")


def journal(task: str) -> str:
    return os.path.join(record_dir(task), "study.journal")


def writable() -> bool:
    """The record is kept in a source checkout only (never inside an installed package)."""
    return SOURCE_CHECKOUT and os.path.exists(os.path.join(REPO_ROOT, ".git")) and os.access(CONFIG_ROOT, os.W_OK)


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = re.search(r"Model name:\s*(.+)", out)
        return name.group(1).strip() if name else platform.processor() or "unknown CPU"
    except OSError:
        return platform.processor() or "unknown CPU"


def study_rows(task: str, method: str) -> list:
    """The trials of one shipped study, as its CSV holds them."""
    path = os.path.join(record_dir(task), f"{method}.csv")
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def save_study_csv(task: str, method: str, trials_csv: str) -> None:
    with open(trials_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in (rows[0].keys() if rows else []) if c not in RECORD_COLUMNS_DROPPED]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    path = os.path.join(record_dir(task), f"{method}.csv")
    with open(path + ".tmp", "w") as f:
        f.write(buffer.getvalue())
    os.replace(path + ".tmp", path)


def log_sitting(task: str, command: str, commit: str, trials: int, minutes: float) -> None:
    path = os.path.join(record_dir(task), "README.md")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(f"# Learning-rate search of the embedded default benchmark: {task}\n\n"
                    "Written by `./run_benchmarks.sh --tune N` (tools/search_record.py); `study.journal` is the "
                    "Optuna journal (one study per method), `<method>.csv` its trials. The best trial of each "
                    "study is in `../mini.yaml`. One line per sitting:\n\n"
                    "| date (UTC) | command | git | CPU | trials run | minutes |\n|---|---|---|---|---|---|\n")
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    with open(path, "a") as f:
        f.write(f"| {date} | `{command}` | {commit} | {cpu_name()} | {trials} | {minutes:.1f} |\n")


def tuned_block(sections_by_method: Dict[str, dict]) -> str:
    """The mini.yaml block: every method's adapter_optimizer section and backbone dropout, in catalogue order."""
    optimizer, dropout = {}, {}
    for sections in sections_by_method.values():
        optimizer.update((sections or {}).get("adapter_optimizer", {}))
        dropout.update((sections or {}).get("backbone_dropout", {}))
    body = yaml.safe_dump({"adapter_optimizer": optimizer}, sort_keys=False, default_flow_style=None, width=120)
    if dropout:
        body += yaml.safe_dump({"backbone_dropout": dropout}, sort_keys=False, default_flow_style=None, width=120)
    return f"{BEGIN}\n{body}{END}\n"


def write_tuned_block(config_path: str, sections_by_method: Dict[str, dict]) -> None:
    """Replace the block between the markers of a mini.yaml (its other lines untouched)."""
    text = open(config_path).read()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < 0:
        raise ValueError(f"{config_path}: no '{BEGIN}' ... '{END}' block to write the chosen rates into")
    text = text[:start] + tuned_block(sections_by_method) + text[end + len(END) + 1:]
    yaml.safe_load(text)  # still a valid config
    with open(config_path + ".tmp", "w") as f:
        f.write(text)
    os.replace(config_path + ".tmp", config_path)


def shipped_trials(task: str, method: str) -> Optional[int]:
    """How many trials the shipped study of one method and task ran, None without a record."""
    if not os.path.exists(os.path.join(record_dir(task), f"{method}.csv")):
        return None
    return sum(1 for r in study_rows(task, method) if r["state"] in ("COMPLETE", "PRUNED", "FAIL")
               and not r.get("note", "").startswith(("killed", "surplus")))


def summary_markdown(root: str = None) -> str:
    """The shipped search in one table: per task and method, the settings of the best trial on dev (as
    tune.best_trial picks it, from the journal), its dev value and how the trials ended."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from s3prl_adapters.tasks import TASKS
    from s3prl_adapters.tools.catalogue import METHODS
    from s3prl_adapters.tools.tune import best_trial

    root = root or CONFIG_ROOT
    tasks = _recorded_tasks(root)
    lines = ["| Method | " + " | ".join(f"{TASKS[t].title.split(' ')[0]} (dev {TASKS[t].metric})" for t in tasks) + " |",
             "|" + "---|" * (len(tasks) + 1)]
    studies = {t: JournalStorage(JournalFileBackend(os.path.join(root, t, "mini_search", "study.journal"))) for t in tasks}
    for method in METHODS:
        row = [METHODS[method].title]
        for task in tasks:
            try:
                study = optuna.load_study(study_name=method, storage=studies[task])
            except KeyError:
                row.append("–")
                continue
            trials = [t for t in study.trials if not t.user_attrs.get("superseded")]
            best = best_trial(study)
            if best is None:
                row.append("no trial completed")
                continue
            settings = best.user_attrs.get("settings") or {}
            shown = [f"{k} {settings[k]:g}" for k in ("l_adapter", "e_adapter", "lora", "encoder") if settings.get(k)]
            if "backbone_dropout" in settings:
                shown.append("dropout " + ("on" if settings["backbone_dropout"] else "off"))
            counts = (f"{len(trials)} trial{'s' if len(trials) > 1 else ''}: "
                      f"{sum(t.state.name == 'COMPLETE' for t in trials)} complete, "
                      f"{sum(t.state.name == 'PRUNED' for t in trials)} pruned")
            row.append(f"{', '.join(shown) or 'nothing to search'} → {best.value:.2f} (trial {best.number}; {counts})")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _recorded_tasks(root: str):
    from s3prl_adapters.tasks import TASKS

    return [t for t in TASKS if os.path.isdir(os.path.join(root, t, "mini_search"))]

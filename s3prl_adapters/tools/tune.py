"""`s3prl-adapters tune`: an upstream's learning rates (and backbone dropout) for one S3PRL task, chosen on dev.

The pieces, each chosen apart (as in Optuna):
- the objective (tune_objective.py): one trial = one `run_downstream.py` training run in its own
  folder, scored by the recipe's dev metric at its dev-best selection;
- the space (tune_space.py): the paper's grid per learning-rate group, with its ties;
- the storage: Optuna's journal file in `--out` by default, or any Optuna RDB URL (`--storage
  postgresql://...`), so tune processes on one machine or on many share one study;
- the sampler: the grid, in an order shuffled by `--seed` (trial k gets grid point k: the same seed
  gives the same trial sequence, whichever worker runs it), or TPE;
- the pruner: the median of the earlier trials at the same dev evaluation.

`--trials N` is the study's total: the same command run again (after a kill, or with a larger N)
continues the study; trials whose process died are run again with the same settings. Trials of a
task share its caches (prefix cache for the adapter upstreams, feature cache for the frozen states).
Outputs in `--out`: best.yaml (the config sections to paste), best.txt (the -o string), trials.csv,
history.png and rates.png, space.yaml."""

import argparse
import csv
import io
import os
import socket
import sys
import time
from typing import List, Optional

import yaml

from s3prl_adapters.errors import UserError, require
from s3prl_adapters.tools.executors import Requeued
from s3prl_adapters.tools.tune_objective import Objective, TrialFailed, TrialSetup
from s3prl_adapters.tools.tune_space import DROPOUT, SearchSpace, Trainee, space_key

STALE_SECONDS = 600.0
"""A running trial whose heartbeat is older than this (its process died on some machine) is run again."""

STUDY_FACTS = ("upstream", "finetune", "task", "seed", "sampler", "steps", "space")
"""What a study is created with; continuing it with other values is refused (its trials would not compare)."""


# ---- storage, sampler, pruner ---------------------------------------------------------------------

def _redacted(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    return urlunsplit(parts)


def open_storage(url: Optional[str], out: str):
    """A journal file (the default: OUT/study.journal; or a path) or an Optuna RDB URL."""
    import optuna

    if not url or "://" not in url:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = url or os.path.join(out, "study.journal")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except Exception as e:  # the driver's own exception types: unreachable host, bad credentials, missing driver
            text = str(e).strip()
            # workers started together on an empty database race to create Optuna's tables: the loser retries
            if attempt < 4 and ("already exists" in text or "duplicate key" in text or "UniqueViolation" in text):
                time.sleep(1.0 + attempt)
                continue
            if isinstance(e, ImportError) and url.startswith("postgresql"):
                require(getattr(e, "name", None) or "psycopg", "postgres", f"--storage {_redacted(url)}")
            first = text.splitlines()[0] if text else type(e).__name__
            raise UserError(f"--storage {_redacted(url)}: cannot open ({first})") from None


def make_sampler(space: SearchSpace, seed: int, kind: str = "grid"):
    import optuna

    if kind == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(kind="median"):
    """'median', 'none', or an Optuna pruner object (chosen apart from the objective)."""
    import optuna

    if isinstance(kind, optuna.pruners.BasePruner):
        return kind
    if kind == "median":
        # from the third trial on, a trial whose dev value at an evaluation is worse than the median
        # of the earlier trials' values at that evaluation stops there
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def open_study(storage, name: str, setup: TrialSetup, space: SearchSpace, sampler, pruner, facts: dict):
    import optuna

    direction = "maximize" if setup.task.higher_is_better else "minimize"
    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner,
                                direction=direction, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise UserError(f"--study {name}: an existing study that {study.direction.name.lower()}s; this task's metric "
                        f"wants {direction}: use another --study name")
    stored = _settled_facts(study)
    differs = [k for k in STUDY_FACTS if k in stored and stored[k] != facts.get(k)]
    if differs:  # refused before anything of ours is written into the study
        k = differs[0]
        raise UserError(f"--study {name}: it was created with {k} {stored.get(k)!r}, not {facts.get(k)!r}; its "
                        f"trials would not compare with these (use another --study name)")
    for key in [k for k in facts if k not in stored]:  # a new study (or one whose creator died writing them)
        study.set_user_attr(key, facts[key])
    return study


def _settled_facts(study, wait_s: float = 30.0) -> dict:
    """The study's facts once its creator has written them all: a worker that loads the study between the
    creator's first and last set_user_attr (one write each) would otherwise see a fact missing."""
    deadline = time.monotonic() + wait_s
    stored = study.user_attrs  # read from the storage each time
    while stored and any(k not in stored for k in STUDY_FACTS) and time.monotonic() < deadline:
        time.sleep(0.5)
        stored = study.user_attrs
    return stored


# ---- the loop -------------------------------------------------------------------------------------

def _counts(trial) -> bool:
    """A trial that counts towards --trials: finished or running, not replaced by a retry."""
    from optuna.trial import TrialState

    return not trial.user_attrs.get("superseded") and trial.state in (
        TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _retry(study, trial, space: SearchSpace, why: str) -> bool:
    """Mark a trial that never reached an outcome as failed and superseded, and queue its settings
    again (the next trial of any worker takes them). False when another worker did it first."""
    from optuna.trial import TrialState

    storage = study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, "superseded", why)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except Exception:  # finished meanwhile (another worker recovered it)
        return False
    params = {k: trial.params[k] for k in space.grid() if k in trial.params}
    if len(params) == len(space.grid()):
        study.enqueue_trial(params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
    return True


def recover_dead_trials(study, space: SearchSpace, log=print) -> int:
    """Running trials whose process has died (this host: its pid is gone; any host: no heartbeat for
    STALE_SECONDS) are superseded by a retry with the same settings."""
    from optuna.trial import TrialState

    me, now, n = socket.gethostname(), time.time(), 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        beat = float(trial.user_attrs.get("heartbeat", started))
        dead = (host == me and pid.isdigit() and not _alive(int(pid))) or now - beat > STALE_SECONDS
        if dead and _retry(study, trial, space, f"killed: its process ({trial.user_attrs.get('worker', '?')}) "
                                                f"ended before the trial did"):
            log(f"[tune] trial {trial.number}: its process ended before it did; its settings run again")
            n += 1
    return n


def _tell(study, trial, *args, **kwargs) -> None:
    """study.tell, outside study.optimize: GridSampler asks the study to stop once the grid is done, which
    Optuna allows only inside optimize (the trial is stored first; run_trials checks the grid itself)."""
    try:
        study.tell(trial, *args, **kwargs)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise


def _describe(params: dict) -> str:
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items() if v is not None)


def run_trials(study, objective: Objective, space: SearchSpace, n_trials: int, log=print) -> int:
    """Trials until the study has `n_trials` (or the grid is done); returns how many ran here."""
    import optuna
    from optuna.trial import TrialState

    recover_dead_trials(study, space, log)
    grid_size = space.size() if isinstance(study.sampler, optuna.samplers.GridSampler) else None
    ran = 0
    while True:
        trials = study.get_trials(deepcopy=False)
        if sum(_counts(t) for t in trials) >= n_trials:
            break
        waiting = any(t.state == TrialState.WAITING for t in trials)
        visited = {t.system_attrs.get("grid_id") for t in trials if "grid_id" in t.system_attrs
                   and (t.state.is_finished() or t.state == TrialState.RUNNING)}
        if grid_size is not None and not waiting and len(visited) >= grid_size:
            log(f"[tune] the grid's {grid_size} point(s) have all run: the study is complete")
            break
        trial = study.ask()
        params = space.suggest(trial)  # at once: a trial killed from here on can be retried with these
        rank = sum(_counts(t) for t in study.get_trials(deepcopy=False) if t.number < trial.number)
        if rank >= n_trials:  # another worker took the last trial meanwhile: leave these settings queued
            _retry(study, trial, space, f"surplus: the study had its {n_trials} trials when this one started")
            break
        ran += 1
        storage = study._storage
        try:
            value = objective(trial)
        except optuna.TrialPruned as e:
            storage.set_trial_user_attr(trial._trial_id, "note", str(e))
            _tell(study, trial, state=TrialState.PRUNED)
            log(f"[tune] trial {trial.number}: {_describe(params)} -> {e}")
        except TrialFailed as e:
            storage.set_trial_user_attr(trial._trial_id, "note", f"failed: {e}")
            _tell(study, trial, state=TrialState.FAIL)
            log(f"[tune] trial {trial.number}: {_describe(params)} -> FAILED: {e}")
        else:
            _tell(study, trial, value)
            log(f"[tune] trial {trial.number}: {_describe(params)} -> dev {value:.4g}")
    return ran


# ---- outputs --------------------------------------------------------------------------------------

def trial_rows(study) -> List[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        note = t.user_attrs.get("superseded") or t.user_attrs.get("note") or ""
        if t.user_attrs.get("retry_of") is not None:
            note = (note + "; " if note else "") + f"retry of trial {t.user_attrs['retry_of']}"
        settings = t.user_attrs.get("settings") or dict(t.params)
        rows.append({"number": t.number, "state": t.state.name, "dev_metric": "" if t.value is None else round(t.value, 4),
                     **{k: ("" if v is None else v) for k, v in settings.items()},
                     "steps_run": t.user_attrs.get("steps_run", ""), "seconds": t.user_attrs.get("seconds", ""),
                     "folder": t.user_attrs.get("folder", ""), "note": note})
    return rows


def best_trial(study):
    """The completed trial with the best dev value; among equal values, the earliest (Optuna leaves ties
    to its storage's order). None while no trial has completed."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        return None
    sign = -1.0 if study.direction.name == "MAXIMIZE" else 1.0
    return min(done, key=lambda t: (sign * t.value, t.number))


def best_sections(study, space: SearchSpace, config: dict) -> Optional[dict]:
    """The config sections of the best trial: adapter_optimizer.<upstream> (every group, the head at the
    config's rate) and backbone_dropout.<upstream>; None while no trial has completed."""
    from s3prl_adapters.bridge.optimizer_groups import DROPOUT_SECTION

    best = best_trial(study)
    if best is None:
        return None
    settings = best.user_attrs.get("settings") or dict(best.params)
    trainee, up = space.trainee, space.trainee.upstream
    rates = {k: float(v) for k, v in settings.items() if k != DROPOUT and v is not None}
    if not trainee.grouped:
        return {"optimizer": {"lr": rates.get("head", float(config["optimizer"]["lr"]))}}
    configured = trainee.configured_rates(config)
    section = {g: rates.get(g, configured[g]) for g in trainee.groups if g in rates or g == "head"}
    sections = {"adapter_optimizer": {up: section}}
    if DROPOUT in settings:
        sections[DROPOUT_SECTION] = {up: bool(settings[DROPOUT])}
    return sections


def override_string(sections: dict) -> str:
    """Config sections as one `-o` string of run_downstream.py."""
    entries = []

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        else:
            entries.append(f"{prefix}={value!r}")

    walk("config", sections)
    return ",,".join(entries)


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_outputs(study, out: str, space: SearchSpace, setup: TrialSetup) -> Optional[dict]:
    rows = trial_rows(study)
    columns = ["number", "state", "dev_metric"] + sorted({k for r in rows for k in r} - {
        "number", "state", "dev_metric", "steps_run", "seconds", "folder", "note"}) + [
        "steps_run", "seconds", "folder", "note"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(os.path.join(out, "trials.csv"), buffer.getvalue())
    sections = best_sections(study, space, setup.config)
    if sections is not None:
        best = best_trial(study)
        head = (f"# s3prl-adapters tune: study {study.study_name}, best of {len(rows)} trials: trial {best.number}, "
                f"dev {setup.task.metric} {best.value:.4g} ({setup.task.name}); paste into the downstream config\n")
        _atomic_write(os.path.join(out, "best.yaml"), head + yaml.safe_dump(sections, sort_keys=False,
                                                                            default_flow_style=None))
        _atomic_write(os.path.join(out, "best.txt"), override_string(sections) + "\n")
        _plots(study, out, space)
    return sections


def _plots(study, out: str, space: SearchSpace) -> None:
    """Optuna's matplotlib views: the optimisation history, and the dev metric against each searched rate."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as views

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib views experimental
        ax = views.plot_optimization_history(study)
        ax.figure.savefig(os.path.join(out, "history.png"), dpi=100, bbox_inches="tight")
        plt.close(ax.figure)
        rates = [name for name in space.grid() if name != DROPOUT]
        if rates:
            axes = views.plot_slice(study, params=rates + ([DROPOUT] if DROPOUT in space.grid() else []))
            figure = (axes[0] if hasattr(axes, "__len__") else axes).figure
            figure.savefig(os.path.join(out, "rates.png"), dpi=100, bbox_inches="tight")
            plt.close(figure)


# ---- entry points ---------------------------------------------------------------------------------

def tune(setup: TrialSetup, space: SearchSpace, out: str, n_trials: int, storage_url: Optional[str] = None,
         study_name: Optional[str] = None, sampler: str = "grid", pruner: str = "median", log=print,
         run: bool = True):
    """Run (or continue) a study; returns (study, best config sections or None). `run=False`: only write the
    outputs of the trials its workers ran (after `--executor slurm`)."""
    storage = open_storage(storage_url, out)
    name = study_name or f"{space_key(setup.upstream, setup.finetune).replace(' -f', '_finetune')}_{setup.task.name}"
    facts = {"upstream": setup.upstream, "finetune": setup.finetune, "task": setup.task.name, "seed": setup.seed,
             "sampler": sampler, "steps": setup.steps, "space": space.entries}
    study = open_study(storage, name, setup, space, make_sampler(space, setup.seed, sampler), make_pruner(pruner),
                       facts)
    os.makedirs(out, exist_ok=True)
    _atomic_write(os.path.join(out, "space.yaml"), f"# the space of study {name} ({space.source})\n" + space.as_yaml())
    ran = run_trials(study, Objective(setup, space, out), space, n_trials, log) if run else 0
    sections = write_outputs(study, out, space, setup)
    log(f"[tune] study {name}: {len(study.trials)} trial(s), {ran} run now; outputs in {out}")
    return study, sections


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="s3prl-adapters tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-u", "--upstream", required=True, help="an adapter upstream (wavlm_ladapter, ...) or a stock one")
    p.add_argument("-d", "--downstream", required=True, help="the S3PRL task (-d of run_downstream.py)")
    p.add_argument("-c", "--config", help="downstream config (default: the shipped config.yaml of the task)")
    p.add_argument("-k", "--upstream_ckpt", help="the WavLM checkpoint (-k of run_downstream.py)")
    p.add_argument("-g", "--upstream_model_config", help="adapter settings YAML (-g of run_downstream.py)")
    p.add_argument("-o", "--override", default="", help="-o of run_downstream.py for every trial (corpus paths, ...)")
    p.add_argument("-f", "--upstream_trainable", action="store_true", help="fine-tune a stock upstream (wavlm_local -f)")
    p.add_argument("--trials", type=int, required=True, help="the study's total number of trials")
    p.add_argument("--steps", type=int, help="each trial's total_steps (dev evaluated halfway and at the end); "
                   "default: the config's schedule")
    p.add_argument("--storage", help="Optuna storage: a journal file (default: OUT/study.journal) or an RDB URL "
                   "(e.g. postgresql://user:pass@host/db) shared by tune processes on several machines")
    p.add_argument("--study", help="study name (default: UPSTREAM[_finetune]_TASK)")
    p.add_argument("--seed", type=int, default=1337, help="the runs' seed and the sampler's (default 1337)")
    p.add_argument("--space", help="YAML with a section per upstream (see tune_space.py); default: the paper's grid")
    p.add_argument("--sampler", choices=["grid", "tpe"], default="grid",
                   help="grid: the space's points in a seeded random order, each once (default); tpe: Optuna's TPE")
    p.add_argument("--pruner", choices=["median", "none"], default="median",
                   help="median: a trial worse than the median of earlier trials at a dev evaluation stops there")
    p.add_argument("--cache-dir", help="the caches trials share (default: OUT/cache)")
    p.add_argument("--no-cache", action="store_true", help="every trial computes its backbone states itself")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per trial")
    p.add_argument("--out", required=True, help="folder for the trials' runs and the outputs")
    p.add_argument("--executor", choices=["local", "slurm"], default="local",
                   help="local: this process runs the trials (default); slurm: --workers Slurm jobs through submitit "
                        "share the study (its storage: the journal in OUT, on a shared folder, or --storage URL), each "
                        "taking trials until the study has --trials")
    p.add_argument("--workers", type=int, default=1, help="processes sharing the study (with --executor local: on "
                   "this machine, --threads each)")
    p.add_argument("--slurm", metavar="KEY=VALUE,...|FILE.yaml", help="Slurm parameters for --executor slurm "
                   "(partition, gpus_per_node, cpus_per_task, mem_gb, timeout_min, account, ...)")
    return p


class TuneWorker(Requeued):
    """One worker of a shared study, as a job that runs elsewhere: `s3prl-adapters tune ARGV` with one worker.
    Preempted or timed out, submitit requeues it; the trial it was running is rerun by the next worker that
    opens the study (recover_dead_trials)."""

    def __init__(self, argv: List[str]):
        self.argv = list(argv)

    def __call__(self, env=None) -> int:
        os.environ.update(env or {})
        return main(self.argv)


def _worker_argv(argv: List[str]) -> List[str]:
    """This command's arguments for one worker that runs here: without --executor/--workers/--slurm."""
    out, skip = [], 0
    for a in argv:
        if skip:
            skip -= 1
            continue
        if a in ("--executor", "--workers", "--slurm"):
            skip = 1
            continue
        if a.startswith(("--executor=", "--workers=", "--slurm=")):
            continue
        out.append(a)
    return out


def run_workers(args, argv: List[str], setup: TrialSetup, space: SearchSpace, log) -> None:
    """--workers N processes (local) or Slurm jobs (--executor slurm) that share the study, then its outputs."""
    from s3prl_adapters.tools.executors import Outcome, make_executor

    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: expected >= 1")
    out = os.path.abspath(args.out)
    if args.storage and "://" not in args.storage:
        args.storage = os.path.abspath(args.storage)
    executor = make_executor(args.executor, out, args.workers, None, args.slurm, log)
    worker = _worker_argv(argv) + ["--out", out] + (["--storage", args.storage] if args.storage else [])
    jobs = [TuneWorker(worker) for _ in range(args.workers)]
    labels = [f"tune worker {k + 1}" for k in range(args.workers)]
    if args.executor == "slurm":
        executor.run(jobs, labels, ended=lambda k: Outcome(labels[k], True))
    else:
        import subprocess

        command = [sys.executable, "-m", "s3prl_adapters.tools.cli", "tune", *worker]
        executor.run([lambda env=None: subprocess.run(command, check=True) for _ in jobs], labels)
    tune(setup, space, out, args.trials, args.storage, args.study, args.sampler, args.pruner, log, run=False)


def setup_from_args(args) -> (TrialSetup, SearchSpace):
    """Check everything a user gave before anything is written."""
    from s3prl_adapters.bridge.launcher import available_tasks, shipped_config
    from s3prl_adapters.tasks import find_task

    if args.trials < 1:
        raise UserError(f"--trials {args.trials}: must be >= 1")
    if args.steps is not None and args.steps < 2:
        raise UserError(f"--steps {args.steps}: must be >= 2 (dev is evaluated halfway and at the end)")
    if args.downstream not in available_tasks():
        raise UserError(f"-d {args.downstream}: unknown task; valid: {available_tasks()}")
    _check_upstream(args.upstream)
    config_path = args.config or shipped_config(args.downstream)
    if config_path is None or not os.path.isfile(config_path):
        raise UserError(f"-c {args.config}: no such config file" if args.config else
                        f"-d {args.downstream}: no config shipped for this task; pass -c CONFIG.yaml")
    from s3prl_adapters.bridge.config_guard import load_config_file

    config = load_config_file(str(config_path), args.downstream)
    task = find_task(args.downstream, config)  # -d ctc: PR or SF, by the config's corpus
    if task is not None and not task.trains:
        raise UserError(f"-d {args.downstream}: {task.key.upper()} trains nothing, so it has no rates to tune; "
                        f"s3prl-adapters {task.key} chooses its layer on dev")
    if task is None or not task.dev_split:
        raise UserError(f"-d {args.downstream}: tune needs the task's dev split and metric, which only the tasks of "
                        f"s3prl_adapters/tasks/ with a dev split describe")
    if args.upstream_ckpt and "://" not in args.upstream_ckpt and not os.path.isfile(args.upstream_ckpt):
        raise UserError(f"-k {args.upstream_ckpt}: no such file")
    if args.upstream_model_config and not os.path.isfile(args.upstream_model_config):
        raise UserError(f"-g {args.upstream_model_config}: no such file")
    trainee = Trainee.of(args.upstream, args.upstream_trainable, args.upstream_model_config)
    space = SearchSpace.load(trainee, args.space)
    cache = None if args.no_cache else os.path.abspath(args.cache_dir or os.path.join(args.out, "cache"))
    setup = TrialSetup(
        upstream=args.upstream, finetune=args.upstream_trainable, task=task, config_path=os.path.abspath(config_path),
        config=config, ckpt=os.path.abspath(args.upstream_ckpt) if args.upstream_ckpt and "://" not in args.upstream_ckpt
        else args.upstream_ckpt, adapter_yaml=os.path.abspath(args.upstream_model_config) if args.upstream_model_config
        else None, user_overrides=args.override, steps=args.steps, seed=args.seed, device=args.device,
        threads=args.threads, prefix_cache=cache and os.path.join(cache, "prefix"),
        feature_cache=cache and os.path.join(cache, "features"))
    return setup, space


def _check_upstream(name: str) -> None:
    from s3prl_adapters.bridge import compat
    from s3prl_adapters.bridge.hubconf import UPSTREAMS

    compat.s3prl_hub_imports_every_upstream()
    from s3prl import hub

    if name not in UPSTREAMS and name not in dir(hub):
        raise UserError(f"-u {name}: unknown upstream; adapter upstreams: {sorted(UPSTREAMS)}, or a stock S3PRL one "
                        f"(wavlm_local, ...)")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for module in ("optuna", "matplotlib"):
        require(module, "tune", "s3prl-adapters tune")
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)  # before the fork server
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    setup, space = setup_from_args(args)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    log(f"[tune] {space_key(setup.upstream, setup.finetune)} on {setup.task.name}: {space.size()} grid point(s) "
        f"({space.source}); {args.trials} trial(s) in all")
    if args.executor != "local" or args.workers != 1:
        run_workers(args, list(sys.argv[2:] if argv is None else argv), setup, space, log)
        return 0
    tune(setup, space, os.path.abspath(args.out), args.trials, args.storage, args.study, args.sampler, args.pruner, log)
    return 0

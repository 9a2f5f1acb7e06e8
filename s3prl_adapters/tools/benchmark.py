"""The paper's experiment through S3PRL's own recipes: methods x tasks, results table, plots, submissions.

`run_benchmarks.sh` runs `python -m s3prl_adapters.tools.benchmark`. Every run is a real
`run_downstream.py` train + evaluate in its own folder; a run whose `result.json` exists is skipped
(`--force` redoes it) and an interrupted one resumes from its last checkpoint (S3PRL's `-a`)."""

import argparse
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from s3prl_adapters.tasks import PAPER_TASKS, TASKS, make_mini_superb
from s3prl_adapters.tasks.base import best_checkpoints, default_eval_batch, overrides_string
from s3prl_adapters.tools.catalogue import CACHEABLE, METHODS, PREFIX_CACHEABLE
from s3prl_adapters.tools import search_record
from s3prl_adapters.tools.launch import run_downstream
from s3prl_adapters.tools.report import write_reports
from s3prl_adapters.tools.reproduce import BATCHED_SCORE_TOLERANCE, reproduce
from s3prl_adapters.tools.tune import override_string
from s3prl_adapters.errors import UserError, require
from s3prl_adapters.tools.executors import Requeued

from s3prl_adapters.paths import CONFIG_ROOT, DEFAULT_BACKBONE, code_version


@dataclass
class Run:
    task: str
    method: str
    seed: int
    fold: Optional[int] = None
    expdir: str = ""

    @property
    def label(self) -> str:
        return f"{self.task}/{self.method}/seed{self.seed}" + (f"/fold{self.fold}" if self.fold else "")


class RunJob(Requeued):
    """One run as a job that runs elsewhere (a Slurm job): rebuilds the benchmark from the invocation's
    preparation and runs it. Preempted or timed out, submitit requeues it (`checkpoint`): it starts again
    and its training resumes from the run's last checkpoint (-a), bit-identically on the CPU."""

    def __init__(self, spec: dict, run: Run, index: int, total: int):
        self.spec, self.run, self.index, self.total = spec, run, index, total

    def __call__(self, env: Optional[Dict[str, str]] = None) -> str:
        job = os.environ.get("SLURM_JOB_ID")
        if os.environ.get("SLURM_ARRAY_JOB_ID"):
            job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
        if job:  # which job ran (or runs) it, beside its logs
            os.makedirs(self.run.expdir, exist_ok=True)
            with open(os.path.join(self.run.expdir, "slurm_job.txt"), "a") as f:
                f.write(f"{job} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        Benchmark.restore(self.spec).execute(self.run, self.index, self.total, env)
        return self.run.label


class QbeJob(Requeued):
    """QbE's layer sweep (tools/qbe.py) as a job: here in the pool, or a Slurm job. Requeued, it starts again
    and skips the passes already scored."""

    def __init__(self, settings: argparse.Namespace):
        self.settings = settings

    def __call__(self, env: Optional[Dict[str, str]] = None) -> dict:
        from s3prl_adapters.tools.qbe import sweep

        os.environ.update(env or {})
        return sweep(self.settings)


class StudyJob(Requeued):
    """One --tune study as a job that runs elsewhere (a Slurm job): its trials one after another. Preempted,
    it is requeued; the trial it was running is run again (tune's recovery of dead trials)."""

    def __init__(self, setup, space, out: str, trials: int, storage: str, name: str):
        self.setup, self.space, self.out, self.trials, self.storage, self.name = setup, space, out, trials, storage, name

    def __call__(self, env: Optional[Dict[str, str]] = None) -> str:
        from s3prl_adapters.tools.tune import tune

        os.environ.update(env or {})
        tune(self.setup, self.space, self.out, self.trials, storage_url=self.storage, study_name=self.name,
             log=lambda line: print(f"[{self.name}] {line}", file=sys.stderr, flush=True))
        return self.name


def _checkpoint_to_evaluate(expdir: str) -> str:
    best = best_checkpoints(expdir)
    if best:
        return best[0]
    states = sorted((f for f in os.listdir(expdir) if re.fullmatch(r"states-\d+\.ckpt", f)),
                    key=lambda f: int(f.split("-")[1].split(".")[0]))
    if not states:
        raise UserError(f"{expdir}: training wrote no checkpoint")
    return os.path.join(expdir, states[-1])


def _skipped_batches(expdir: str) -> int:
    """Training batches S3PRL skipped for CUDA out of memory in the run (runner_hook writes the file)."""
    from s3prl_adapters.bridge.compat import SKIPPED_BATCHES_FILE

    path = os.path.join(expdir, SKIPPED_BATCHES_FILE)
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return int(json.load(f).get("skipped_batches", 0))


def checkpoint_facts(ckpt_path: str, backbone: str) -> dict:
    """Parameter counts from what the run's checkpoint holds (the optimizer state says what trained)."""
    from s3prl_adapters.method.backbone import S3PRL_RUN, read_checkpoint

    ckpt = read_checkpoint(ckpt_path, what="checkpoint", allow=S3PRL_RUN)
    backbone_state = read_checkpoint(backbone)["model"]
    numel = lambda tensors: sum(t.numel() for t in tensors)  # noqa: E731
    head = numel(v for k, v in ckpt["Downstream"].items()
                 if v.is_floating_point() and not k.endswith(("best_score", "running_mean", "running_var")))
    featurizer = numel(ckpt["Featurizer"].values())
    updated = numel(s["exp_avg"] for s in ckpt["Optimizer"]["state"].values() if "exp_avg" in s)
    upstream = ckpt.get("Upstream", {})
    adapters = numel(v for k, v in upstream.items() if k.replace("model.", "", 1) not in backbone_state)
    weights = ckpt["Featurizer"]["weights"].float()
    return {
        "trainable_params": updated - head,  # upstream + featurizer weights that the optimizer updated
        "head_params": head,
        "total_params": numel(backbone_state.values()) + adapters + featurizer + head,
        "checkpoint_bytes": os.path.getsize(ckpt_path),
        "layer_weights": [round(x, 5) for x in weights.softmax(-1).tolist()],
    }


class Benchmark:
    def __init__(self, args):
        self.args = args = resolve_presets(args)
        args.eval_batch = args.eval_batch or default_eval_batch(args.device or "cpu")
        if args.eval_batch < 1:
            raise UserError(f"--eval-batch {args.eval_batch}: expected a number of files >= 1")
        self.out = os.path.abspath(args.output)
        self.lock = threading.Lock()
        self.done = 0
        self.started_at = time.time()
        self.prefix_cache = None if args.no_prefix_cache else os.path.abspath(
            args.prefix_cache or os.path.join(self.out, "prefix_cache"))
        """One folder for every adapter run: the prefix depends only on the frozen backbone and the audio,
        so after the first run of a task the others read it (keys include a hash of the prefix's weights)."""
        self.feature_cache = None if args.no_feature_cache else os.path.abspath(
            args.feature_cache or os.path.join(self.out, "feature_cache"))
        self.trials_run: Dict[Tuple[str, str], int] = {}
        self.failed: list = []
        self.tuned: Dict[Tuple[str, str], dict] = {}
        """(task, method) -> the config sections --tune chose (adapter_optimizer, backbone_dropout)."""
        """Backbone states of the frozen methods (CACHEABLE), for tasks whose training files are read
        whole: later epochs and the second dev evaluation skip the backbone. By default only on the
        stand-in corpora: states take ~12x the prefix's room (Base+: ~3.6 GB per hour of audio)."""

    # ---- setup ------------------------------------------------------------------------------
    def backbone(self) -> str:
        if self.args.backbone:
            if not os.path.isfile(self.args.backbone):
                raise UserError(f"--backbone {self.args.backbone}: no such file")
            return os.path.abspath(self.args.backbone)
        if os.path.isfile(DEFAULT_BACKBONE):
            return DEFAULT_BACKBONE
        from s3prl_adapters.method.backbone import make_tiny_wavlm

        path = os.path.join(self.out, "wavlm_tiny_random.pt")
        if not os.path.exists(path):
            make_tiny_wavlm(path, layers=4, dim=128, seed=0)
        return path

    def adapter_config(self, backbone: str) -> Optional[str]:
        """The paper's adapter sizes are for width 768; scale them to a smaller backbone's width."""
        if self.args.adapter_config:
            return os.path.abspath(self.args.adapter_config)
        from s3prl_adapters.method.backbone import read_checkpoint

        dim = read_checkpoint(backbone)["cfg"]["encoder_embed_dim"]
        if dim == 768:
            return None
        path = os.path.join(self.out, f"adapters_width{dim}.yaml")
        with open(path, "w") as f:
            f.write(f"# paper proportions (256/768, 512/768) scaled to width {dim}\n"
                    f"e_adapter_dim: {round(dim / 3)}\nl_adapter_dim: {round(2 * dim / 3)}\n")
        return path

    def overrides(self, task: str) -> str:
        spec = TASKS[task]
        return overrides_string(spec.real_corpus(self.args) or spec.standin_overrides(self.mini_root), spec.data_section)

    def ensure_corpus(self, tasks: List[str]) -> None:
        self.mini_root = os.path.abspath(self.args.mini_root or os.path.join(self.out, "mini_superb"))
        missing = [t for t in tasks if TASKS[t].real_corpus(self.args) is None and not TASKS[t].standin_ready(self.mini_root)]
        if missing:
            print(f"[benchmark] generating stand-in corpora for {missing} in {self.mini_root}", file=sys.stderr)
            make_mini_superb(self.mini_root, seed=0, tasks=missing)

    # ---- one run ----------------------------------------------------------------------------
    def execute_all(self, runs: List[Run]) -> List[dict]:
        """Every run through the executor (`--executor`), the longest first (so that a pool does not end with
        one long run alone); runs whose record exists are kept (not rerun) unless --force. Runs that share a
        cache may run at the same time: an entry's value does not depend on which run computed it
        (bridge/feature_cache.py). A failed run does not stop the others; the records of those that ended
        are returned, and failures are reported once all have ended."""
        from s3prl_adapters.tools.executors import Outcome

        from s3prl_adapters.tools.executors import make_executor

        a = self.args
        if getattr(self, "executor", None) is None:
            self.executor = make_executor(a.executor, self.out, a.jobs, a.gpus, a.slurm,
                                          log=lambda line: print(line, file=sys.stderr, flush=True))
        order = sorted(range(len(runs)), key=lambda i: -METHODS[runs[i].method].relative_cost)
        position = {i: n + 1 for n, i in enumerate(order)}
        if a.executor == "local":
            executor = self.executor
            jobs = [lambda env=None, i=i: self.execute(runs[i], position[i], len(runs), env) for i in order]
            outcomes = dict(zip(order, executor.run(jobs, [runs[i].label for i in order])))
        else:
            todo = [i for i in order if a.force or not os.path.exists(self.record_path(runs[i]))]
            outcomes = {i: Outcome(runs[i].label, True, value=self.execute(runs[i], position[i], len(runs)))
                        for i in order if i not in todo}  # kept: its record, as it is
            for i in todo:
                if a.force and os.path.isdir(runs[i].expdir):
                    import shutil

                    shutil.rmtree(runs[i].expdir)
            spec = self.prepared()
            jobs = [RunJob(spec, runs[i], position[i], len(runs)) for i in todo]
            ended = lambda k: self.ended(runs[todo[k]])  # noqa: E731
            if jobs:
                outcomes.update(zip(todo, self.executor.run(jobs, [runs[i].label for i in todo], ended)))
        self.failed = [outcomes[i] for i in range(len(runs)) if not outcomes[i].ok]
        return [outcomes[i].value for i in range(len(runs)) if outcomes[i].ok]

    # ---- records: what ended, wherever it ran ------------------------------------------------------
    @staticmethod
    def record_path(run: Run) -> str:
        return os.path.join(run.expdir, "result.json")

    def record(self, run: Run) -> dict:
        with open(self.record_path(run)) as f:
            return json.load(f)

    def ended(self, run: Run):
        """How a run that ran elsewhere ended: its record, or the last line of its logs."""
        from s3prl_adapters.tools.executors import Outcome

        if os.path.exists(self.record_path(run)):
            return Outcome(run.label, True, value=self.record(run))
        for log in ("evaluate.log", "train.log"):
            path = os.path.join(run.expdir, log)
            if os.path.exists(path):
                tail = open(path, errors="replace").read().strip().splitlines()[-1:] or ["(empty)"]
                return Outcome(run.label, False, f"no record; {log}: {tail[0][:200]}")
        return Outcome(run.label, False, "no record and no log: the job did not start or was cancelled before")

    def prepared(self) -> dict:
        """What a run needs from this invocation's preparation, for a job that runs elsewhere."""
        import copy

        args = copy.copy(self.args)
        args.force = False  # the submitter has cleared what --force redoes; a requeued job must resume, not restart
        return {"args": args, "backbone_path": self.backbone_path, "adapter_yaml": self.adapter_yaml,
                "mini_root": self.mini_root, "tuned": self.tuned, "commit": self.commit}

    @classmethod
    def restore(cls, spec: dict) -> "Benchmark":
        bench = cls(spec["args"])
        for key in ("backbone_path", "adapter_yaml", "mini_root", "tuned", "commit"):
            setattr(bench, key, spec[key])
        return bench

    def caches_of(self, run: Run) -> Tuple[bool, bool]:
        """Whether the run reads (prefix cache, feature cache)."""
        a, task = self.args, TASKS[run.task]
        # The prefix cache pays on the CPU's stand-ins (the CNN is a large share of a step there, and the
        # corpus fits its bound); on CUDA and on real corpora only when asked for with --prefix-cache DIR
        # (measured at LibriSpeech-100's size: docs/data/prefix_cache_at_scale.md).
        prefix = (self.prefix_cache is not None and run.method in PREFIX_CACHEABLE
                  and (a.prefix_cache is not None or (task.real_corpus(a) is None and not str(a.device).startswith("cuda"))))
        # A recipe that crops a random window of each training file every epoch would only fill it.
        feature = (self.feature_cache is not None and run.method in CACHEABLE and not task.random_train_crop
                   and (a.feature_cache is not None or task.real_corpus(a) is None)
                   and not self.backbone_dropout(run.task, run.method))
        return prefix, feature

    def execute(self, run: Run, index: int, total: int, env: Optional[Dict[str, str]] = None) -> dict:
        """One run, start to end (train with -a: it resumes from its last checkpoint; evaluate; reproduce),
        its record written last, in its own folder. `env`: the run's own variables (a GPU of its own)."""
        a, task, method = self.args, TASKS[run.task], METHODS[run.method]
        result_path = os.path.join(run.expdir, "result.json")
        if os.path.exists(result_path) and not a.force:
            with open(result_path) as f:
                result = json.load(f)
            now = self.rates_of(run)
            if "rates" in result and (now["rates"], now["backbone_dropout"]) != (result["rates"], result["backbone_dropout"]):
                print(f"[benchmark] {run.label}: kept result trained with other rates or dropout than the config now "
                      f"gives ({result['rates']}, dropout {result['backbone_dropout']}); --force redoes it", file=sys.stderr)
            elif "rates" in result:
                result["rates_source"] = now["rates_source"]  # a description: the current wording
            result["kept"] = True  # in this invocation's report only, not rewritten to the run's result.json
            self._progress(index, total, run, "cached", result)
            return result
        if a.force and os.path.isdir(run.expdir):
            import shutil

            shutil.rmtree(run.expdir)
        os.makedirs(run.expdir, exist_ok=True)
        self._progress(index, total, run, "start")
        config = self.config_path(run.task)
        overrides = self.overrides(run.task)
        if run.fold:
            overrides += ",," + overrides_string(task.fold_overrides(run.fold))
        # while training, only the split that selects the best checkpoint; the test split once, afterwards;
        # every file scored as it is alone (batch 1: WavLM's CNN normalises over the padded batch)
        overrides += f",,config.runner.eval_dataloaders={[task.dev_split] if task.dev_split else []}"
        overrides += "".join(f",,{k}={v!r}" for k, v in task.exact_evaluation_overrides(a.eval_batch).items())
        if a.steps:
            # A checkpoint halfway, so an interrupted run resumes from there.
            overrides += (f",,config.runner.total_steps={a.steps},,config.runner.eval_step={a.steps},,"
                          f"config.runner.save_step={max(1, a.steps // 2)},,config.runner.log_step={max(1, a.steps // 2)}")
        if (run.task, run.method) in self.tuned:
            overrides += ",," + override_string(self.tuned[(run.task, run.method)])
        train = ["-m", "train", "-u", method.upstream, "-k", self.backbone_path, "-d", TASKS[run.task].runs_as(),
                 "-c", config, "-p", run.expdir, "--seed", str(run.seed), "-a", "--device", a.device, "-o", overrides]
        if method.finetune:
            train.append("-f")
        if method.upstream != "wavlm_local" and self.adapter_yaml:
            train += ["-g", self.adapter_yaml]
        prefix_cached, feature_cached = self.caches_of(run)
        if feature_cached:
            train[train.index("-o") + 1] += f",,config.feature_cache.dir='{self.feature_cache}'"
        if prefix_cached:
            train[train.index("-o") + 1] += f",,config.prefix_cache.dir='{self.prefix_cache}'"
        stream = a.jobs == 1 and a.executor == "local" and not a.gpus
        trained = run_downstream(train, os.path.join(run.expdir, "train.log"), a.threads, stream, env=env,
                                 processes=a.gpus_per_run)
        ckpt = _checkpoint_to_evaluate(run.expdir)
        evaluate_log = os.path.join(run.expdir, "evaluate.log")
        if os.path.exists(evaluate_log):
            os.remove(evaluate_log)
        run_downstream(["-m", "evaluate", "-e", ckpt, "-t", task.evaluated_split, "--device", a.device],
                       evaluate_log, a.threads, stream, env=env)
        with open(evaluate_log) as f:
            value = task.table_value(run.expdir, f.read(), run.fold)
        result = {
            "task": run.task, "method": run.method, "upstream": method.upstream + (" -f" if method.finetune else ""),
            "seed": run.seed, "fold": run.fold, "metric": task.metric, "metric_value": value,
            "metric_percent": round(value * task.percent, 4), "evaluated_checkpoint": os.path.basename(ckpt),
            "train_seconds": round(trained["seconds"], 1), "peak_rss_mb": round(trained["peak_rss_mb"], 1),
            "backbone": self.backbone_path, "git_commit": self.commit, "expdir": run.expdir,
            **checkpoint_facts(ckpt, self.backbone_path),
            "prefix_cache": prefix_cached, "feature_cache": feature_cached,
            "skipped_batches": _skipped_batches(run.expdir), "eval_batch": a.eval_batch,
            **self.rates_of(run),
            "items": task.test_items(run.expdir, run.fold),  # per-item outcomes: the report's bootstrap
        }
        if not a.no_reproduce:  # the cell as users get it: export, then predict --batch-size 1 on the test split
            result["reproduction"] = reproduce(task, run.expdir, run.fold, ckpt, self.backbone_path,
                                               result["metric_percent"], a.threads, a.device,
                                               score_tolerance=0.0 if a.eval_batch == 1 else BATCHED_SCORE_TOLERANCE,
                                               env=env)
        tmp = result_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, result_path)
        self._progress(index, total, run, "done", result)
        return result

    def _progress(self, index, total, run, what, result=None):
        with self.lock:
            if what != "start":
                self.done += 1
            elapsed = time.time() - self.started_at
            eta = elapsed / self.done * (total - self.done) if self.done else float("nan")
            extra = ""
            if result:
                extra = f" {result['metric']}={result['metric_value']:.4g} train {result['train_seconds']:.0f}s"
            print(f"[{index}/{total}] {what:6s} {run.label}{extra} | elapsed {elapsed / 60:.1f} min, "
                  f"ETA {eta / 60:.1f} min", file=sys.stderr, flush=True)

    # ---- learning rates -------------------------------------------------------------------------
    def config_path(self, task: str) -> str:
        return os.path.join(CONFIG_ROOT, task, "config.yaml" if self.args.full_configs else "mini.yaml")

    def embedded_default(self) -> bool:
        """Stand-in corpora, the embedded backbone, mini configs, paper sizes: what the shipped search covers."""
        a = self.args
        return (not a.full_configs and not a.steps and self.backbone_path == DEFAULT_BACKBONE and not a.adapter_config
                and all(TASKS[t].real_corpus(a) is None for t in a.tasks) and self._default_standins())

    def _default_standins(self) -> bool:
        """The stand-in corpora are make-mini-superb's default (size small, seed 0)."""
        try:
            with open(os.path.join(self.mini_root, "manifest.json")) as f:
                manifest = json.load(f)
        except (OSError, ValueError):
            return False
        return manifest.get("size") == "small" and manifest.get("seed") == 0

    def sections_of(self, task: str, method: str) -> dict:
        """The rate sections a run of `method` uses: those --tune chose, else the config's."""
        if (task, method) in self.tuned:
            return self.tuned[(task, method)]
        import yaml

        config = yaml.safe_load(open(self.config_path(task)))
        up = METHODS[method].upstream
        return {k: {up: config[k][up]} for k in ("adapter_optimizer", "backbone_dropout")
                if up in (config.get(k) or {})}

    def backbone_dropout(self, task: str, method: str) -> bool:
        """Whether a run's backbone applies its dropout while training (the feature cache needs it off)."""
        up = METHODS[method].upstream
        setting = self.sections_of(task, method).get("backbone_dropout", {}).get(up)
        if up == "wavlm_local":
            return bool(METHODS[method].finetune and setting is not False)
        if setting is not None:
            return setting
        from s3prl_adapters.method.config import METHODS as UPSTREAM_METHODS, load_adapter_config

        cfg = load_adapter_config(UPSTREAM_METHODS[up], self.adapter_yaml).resolved(1 << 10)
        return bool(cfg.backbone_dropout)

    def rates_of(self, run: Run) -> dict:
        """What the report says of a run's rates: the groups and dropout it trained with, and their source."""
        sections = self.sections_of(run.task, run.method)
        up = METHODS[run.method].upstream
        rates = dict(sections.get("adapter_optimizer", {}).get(up, {}))
        if not rates or (up == "wavlm_local" and not METHODS[run.method].finetune):
            import yaml

            config = yaml.safe_load(open(self.config_path(run.task)))
            rates = {"head": float(config["optimizer"]["lr"])}  # S3PRL's one rate: head and Featurizer
        if (run.task, run.method) in self.tuned:
            source = f"tuned on dev now (--tune {self.args.tune})"
        elif self.embedded_default() and (shipped := search_record.shipped_trials(run.task, run.method)):
            source = ("nothing to search (one setting): downstream_configs/<task>/mini.yaml" if shipped == 1 else
                      f"tuned on dev, {shipped} trials: downstream_configs/<task>/mini_search")
        else:
            source = f"as in {os.path.relpath(self.config_path(run.task), CONFIG_ROOT)}"
        return {"rates": rates, "backbone_dropout": self.backbone_dropout(run.task, run.method), "rates_source": source}

    def search(self, runs: List[Run]) -> Dict[Tuple[str, str], dict]:
        """--tune N: a study per method and task (--tune-seed, the first fold), `--jobs` studies at a time, each
        running its trials one after another; returns each study's best sections."""
        studies = list(dict.fromkeys((r.task, r.method) for r in runs))
        studies.sort(key=lambda tm: -METHODS[tm[1]].relative_cost)
        record = self.embedded_default() and search_record.writable() and not self.args.tune_storage
        print(f"[benchmark] --tune {self.args.tune}: {len(studies)} studies, {self.args.jobs} at a time; "
              + ("record: downstream_configs/<task>/mini_search" if record else f"in {self.out}/search"),
              file=sys.stderr)
        started, pending, chosen, lock = time.time(), list(studies), {}, threading.Lock()
        failures = []
        if self.args.executor == "slurm":  # a Slurm job per study, its trials one after another as here
            from s3prl_adapters.tools.executors import Outcome

            jobs = [self.study(task, method, record, job=True) for task, method in studies]
            outcomes = self.executor.run(jobs, [f"study {t}/{m}" for t, m in studies],
                                         ended=lambda k: Outcome(f"study {studies[k][0]}/{studies[k][1]}", True))
            for (task, method), outcome in zip(studies, outcomes):
                chosen[(task, method)] = self.study(task, method, record, collect=True)
            pending = []

        def worker():
            while True:
                with lock:
                    if not pending:
                        return
                    task, method = pending.pop(0)
                try:
                    chosen[(task, method)] = self.study(task, method, record)
                except BaseException as e:  # noqa: BLE001 -- raised below, once the others have ended
                    failures.append(e)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, self.args.jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures:
            raise failures[0]
        missing = [f"{t}/{m}" for (t, m), sections in chosen.items() if sections is None]
        if missing:
            raise UserError(f"--tune: no trial completed for {missing}; see {self.out}/search/<task>/<method>/trials.csv")
        if record:
            minutes = (time.time() - started) / 60
            for task in dict.fromkeys(t for t, _ in studies):
                mine = {m: chosen[(t, m)] for t, m in studies if t == task}
                search_record.write_tuned_block(self.config_path(task), {
                    m: mine.get(m) or self.sections_of(task, m) for m in METHODS if m in mine or
                    (m != "frozen" and self.sections_of(task, m))})
                search_record.log_sitting(task, "./run_benchmarks.sh " + " ".join(sys.argv[1:]), self.commit,
                                          sum(self.trials_run.get((task, m), 0) for m in mine), minutes)
        return {key: sections for key, sections in chosen.items() if sections}

    def study(self, task_name: str, method_name: str, record: bool, job: bool = False,
              collect: bool = False) -> Optional[dict]:
        """One study of --tune: run here; or (`job`) the StudyJob that runs it elsewhere; or (`collect`) the
        best sections of the trials such a job ran (trials run since this invocation started are counted)."""
        from s3prl_adapters.tools.tune import tune
        from s3prl_adapters.tools.tune_objective import TrialSetup
        from s3prl_adapters.tools.tune_space import SearchSpace, Trainee, default_space

        import yaml

        a, task, method = self.args, TASKS[task_name], METHODS[method_name]
        adapter_yaml = self.adapter_yaml if method.upstream != "wavlm_local" else None
        overrides = self.overrides(task_name)
        if task.folds:
            overrides += ",," + overrides_string(task.fold_overrides(a.er_folds[0]))
        config_path = self.config_path(task_name)
        trainee = Trainee.of(method.upstream, method.finetune, adapter_yaml)
        space = SearchSpace(trainee, default_space(trainee))
        states_cached = (self.feature_cache is not None and method_name in CACHEABLE  # the trial decides on its dropout
                         and (a.feature_cache is not None or task.real_corpus(a) is None))
        setup = TrialSetup(upstream=method.upstream, finetune=method.finetune, task=task, config_path=config_path,
                           config=yaml.safe_load(open(config_path)), ckpt=self.backbone_path, adapter_yaml=adapter_yaml,
                           user_overrides=overrides, steps=a.steps, seed=a.tune_seed, device=a.device, threads=a.threads,
                           prefix_cache=self.prefix_cache, feature_cache=self.feature_cache if states_cached else None)
        out = os.path.join(self.out, "search", task_name, method_name)
        storage = a.tune_storage or (search_record.journal(task_name) if record else
                                     os.path.join(self.out, "search", task_name, "study.journal"))
        if record:
            os.makedirs(search_record.record_dir(task_name), exist_ok=True)
        if job:
            return StudyJob(setup, space, out, a.tune, storage, method_name)
        before = self.started_at if collect else time.time()
        study, sections = tune(setup, space, out, a.tune, storage_url=storage, study_name=method_name,
                               log=lambda line: print(f"[{task_name}/{method_name}] {line}", file=sys.stderr, flush=True),
                               run=not collect)
        with self.lock:
            self.trials_run[(task_name, method_name)] = sum(
                1 for t in study.trials if t.datetime_start and t.datetime_start.timestamp() >= before)
        if record:
            search_record.save_study_csv(task_name, method_name, os.path.join(out, "trials.csv"))
        return sections

    # ---- everything -------------------------------------------------------------------------
    def qbe_expdir(self, task: str) -> str:
        return os.path.join(self.out, "runs", task, "backbone")

    def read_qbe(self, task: str):
        """The Outcome of QbE's sweep from its summary (how a sweep that ran elsewhere ended)."""
        from s3prl_adapters.tools.executors import Outcome

        summary = os.path.join(self.qbe_expdir(task), "qbe.json")
        if not os.path.exists(summary):
            return Outcome(f"{task}/backbone", False, f"no {summary}; logs in {self.qbe_expdir(task)}/layer_*/log.txt")
        with open(summary) as f:
            return Outcome(f"{task}/backbone", True, value=json.load(f))

    def run_qbe(self):
        """QbE (trains nothing): SUPERB's layer sweep once per backbone, whatever the methods (their frozen
        backbone is the same; tools/qbe.py), as one job of the executor, in OUTPUT/runs/quesst14_dtw/backbone/.
        Passes already scored are read back (--force redoes them). Returns (summary or None, failed Outcomes)."""
        qbe = [t for t in self.args.tasks if not TASKS[t].trains]
        if not qbe:
            return None, []
        a, task = self.args, TASKS[qbe[0]]
        expdir = self.qbe_expdir(task.name)
        if a.force and os.path.isdir(expdir):
            import shutil

            shutil.rmtree(expdir)
        corpus = task.real_corpus(a) or task.standin_overrides(self.mini_root)
        print(f"[benchmark] {task.key.upper()}: every layer of the backbone on dev, the best on test ({expdir})",
              file=sys.stderr)
        job = QbeJob(argparse.Namespace(
            backbone=self.backbone_path, expdir=expdir, quesst=corpus["dataset_root"], adapters=None, layers=None,
            config=self.config_path(task.name), override="", device=a.device, threads=a.threads))
        if a.executor == "local":
            outcome = self.executor.run([job], [f"{task.name}/backbone"])[0]
        else:
            outcome = self.executor.run([job], [f"{task.name}/backbone"], ended=lambda k: self.read_qbe(task.name))[0]
        if not outcome.ok:
            return None, [outcome]
        return dict(outcome.value, task=task.name, git_commit=self.commit), []

    def plan(self) -> List[Run]:
        runs = []
        for task in [t for t in self.args.tasks if TASKS[t].trains]:
            for method in self.args.methods:
                for seed in self.args.seeds:
                    folds = self.args.er_folds if TASKS[task].folds else [None]
                    for fold in folds:
                        r = Run(task, method, seed, fold)
                        r.expdir = os.path.join(self.out, "runs", task, method, f"seed{seed}" + (f"_fold{fold}" if fold else ""))
                        runs.append(r)
        return runs

    def run(self) -> List[dict]:
        for t in self.args.tasks:
            if t not in TASKS:
                raise UserError(f"--tasks: unknown task '{t}'; valid: {list(TASKS)}")
        for m in self.args.methods:
            if m not in METHODS:
                raise UserError(f"--methods: unknown method '{m}'; valid: {list(METHODS)}")
        os.makedirs(self.out, exist_ok=True)
        runs = self.plan()
        if self.args.report_only:
            return self.report_only(runs)
        from s3prl_adapters.tools.executors import make_executor

        a = self.args
        if a.gpus_per_run < 1:
            raise UserError(f"--gpus-per-run {a.gpus_per_run}: expected a number of GPUs >= 1")
        self.executor = make_executor(a.executor, self.out, a.jobs, a.gpus, a.slurm,
                                      log=lambda line: print(line, file=sys.stderr, flush=True))
        self.backbone_path = self.backbone()
        self.adapter_yaml = self.adapter_config(self.backbone_path)
        self.ensure_corpus(self.args.tasks)
        self.commit = code_version()
        if self.args.tune:
            self.tuned = self.search(runs)
        where = (f"{len(self.executor.gpus)} GPU(s), one run each" if a.executor == "local" and a.gpus else
                 f"{a.jobs} at a time" if a.executor == "local" else "as Slurm jobs")
        print(f"[benchmark] {len(runs)} runs, backbone {self.backbone_path}, {where}; "
              f"logs in {self.out}/runs/<task>/<method>/", file=sys.stderr)
        started = time.time()
        qbe, qbe_failed = self.run_qbe()
        results = self.execute_all(runs)
        self.failed += qbe_failed
        missing = [r.label for r in runs if not any(x["expdir"] == r.expdir for x in results)]
        missing += [o.label for o in qbe_failed]
        if results or qbe:
            write_reports(self.out, results, wall_seconds=time.time() - started, args=vars(self.args), missing=missing,
                          qbe=qbe)
        if self.failed:
            details = "; ".join(f"{o.label}: {o.detail}" for o in self.failed[:3])
            planned = len(runs) + sum(1 for t in a.tasks if not TASKS[t].trains)  # and QbE's sweep
            raise UserError(f"{len(self.failed)} of {planned} runs did not end with a record ({details}"
                            f"{'; ...' if len(self.failed) > 3 else ''}); the table holds the others. Run the same "
                            f"command again: it redoes only those (each resumes from its last checkpoint)")
        return results

    def report_only(self, runs: List[Run]) -> List[dict]:
        """The table from the records that exist (runs that ended, wherever they ran), and which are missing."""
        done = [r for r in runs if os.path.exists(self.record_path(r))]
        missing = [r.label for r in runs if r not in done]
        qbe = None
        for t in [t for t in self.args.tasks if not TASKS[t].trains]:
            outcome = self.read_qbe(t)
            if outcome.ok:
                qbe = dict(outcome.value, task=t)
            else:
                missing.append(outcome.label)
        if not done and not qbe:
            raise UserError(f"--report-only: no run of this command has a record under {self.out}/runs yet")
        results = [self.record(r) for r in done]
        write_reports(self.out, results, wall_seconds=None, args=vars(self.args), missing=missing, qbe=qbe)
        print(f"[benchmark] --report-only: {len(done)} of {len(runs)} runs have a record"
              + (f"; missing: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}" if missing else ""),
              file=sys.stderr)
        return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_benchmarks.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=None,
                   help=f"any of {list(TASKS)} (default: the paper's four, {PAPER_TASKS}; with --superb all)")
    p.add_argument("--superb", action="store_true",
                   help="SUPERB's protocol for one method (--methods M, default ladapter: the proposed method): every task (or those of "
                        "--tasks), emotion's five folds, QbE's layer sweep; one results row and one predict.zip that "
                        "names the SUPERB members it lacks")
    p.add_argument("--methods", nargs="+", default=None, help=f"subset of {list(METHODS)} (default: all; with --superb "
                   "ladapter)")
    p.add_argument("--seeds", nargs="+", type=int, default=[1337])
    p.add_argument("--er-folds", nargs="+", type=int, default=None,
                   help="emotion folds (default 1; with --superb 1 2 3 4 5, SUPERB's protocol)")
    p.add_argument("--backbone", help="WavLM checkpoint (e.g. WavLM-Base+.pt); default: the embedded tiny pretrained one")
    p.add_argument("--adapter-config", help="-g YAML for the adapter upstreams (default: paper sizes, scaled to the width)")
    p.add_argument("--feature-cache", metavar="DIR", help=f"where {list(CACHEABLE)} cache the backbone's states "
                   "(config feature_cache; later epochs skip the backbone; not for recipes that crop training "
                   "files at random) (default: OUTPUT/feature_cache, for the stand-in corpora only)")
    p.add_argument("--no-feature-cache", action="store_true", help="the frozen methods run the backbone every step")
    p.add_argument("--prefix-cache", metavar="DIR", help=f"where {list(PREFIX_CACHEABLE)} cache the frozen prefix "
                   f"(CNN, its LayerNorm, the projection; config prefix_cache), one folder shared by every run "
                   f"(default: OUTPUT/prefix_cache on the CPU with the stand-in corpora; off on CUDA and for real "
                   f"corpora unless given)")
    p.add_argument("--no-prefix-cache", action="store_true", help="every run computes the prefix every step")
    p.add_argument("--steps", type=int, help="override every run's total_steps (save halfway and at the end, "
                   "evaluate at the end)")
    p.add_argument("--full-configs", action="store_true", help="downstream_configs/<task>/config.yaml instead of mini.yaml")
    p.add_argument("--tune", type=int, metavar="N", help="first choose every method's learning rates (and backbone "
                   "dropout) on dev: N trials per method and task, the same grid, seed and pruner for all "
                   "(s3prl-adapters tune); the table's runs then use the chosen ones. On the embedded default the "
                   "search continues the record shipped in downstream_configs/<task>/mini_search and writes the "
                   "chosen rates into mini.yaml; otherwise it lives in OUTPUT/search")
    p.add_argument("--tune-seed", type=int, default=1337, help="the search's seed (its runs' and its sampler's), "
                   "whatever --seeds the table uses")
    p.add_argument("--tune-storage", metavar="URL", help="Optuna storage for --tune (e.g. postgresql://... shared by "
                   "several machines; default: the shipped record, or OUTPUT/search/<task>/study.journal)")
    p.add_argument("-o", "--output", default="benchmark_results")
    p.add_argument("--mini-root", help="stand-in corpora folder (generated if missing)")
    flags = {}  # each task's flags pointing it at its real corpus; a flag two tasks share is added once
    for task in TASKS.values():
        for flag, help_text in task.corpus_flags():
            flags.setdefault(flag, [help_text, []])[1].append(task.name)
    for flag, (help_text, names) in flags.items():
        p.add_argument(flag, help=f"{help_text} [{', '.join(names)}]")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--executor", choices=["local", "slurm"], default="local",
                   help="local: this machine, --jobs runs at a time or one per GPU of --gpus (default); slurm: every "
                        "run (training, evaluation, reproduction) a Slurm job through submitit (the [cluster] extra), "
                        "records on the shared output folder")
    p.add_argument("--slurm", metavar="KEY=VALUE,...|FILE.yaml",
                   help="Slurm parameters for --executor slurm (submitit's: partition, gpus_per_node, cpus_per_task, "
                        "mem_gb, timeout_min, account, qos, constraint, array_parallelism, ...)")
    p.add_argument("--gpus", metavar="0,1,..", help="--executor local: one run per GPU at a time, each with its own "
                   "CUDA_VISIBLE_DEVICES")
    p.add_argument("--gpus-per-run", type=int, default=1, metavar="N",
                   help="each training run under torchrun with N processes (DDP, one GPU each)")
    p.add_argument("--report-only", action="store_true", help="render the table from the runs' records that exist "
                   "(run nothing), saying which cells are missing")
    p.add_argument("--eval-batch", type=int, default=None, metavar="N",
                   help="files per dev/test batch, each scored as it is alone (its CNN alone, its own frames; "
                        "runner.exact_evaluation) (default: 1 on the CPU, 16 on CUDA)")
    p.add_argument("--jobs", type=int, default=None, help="runs at a time (default: 2 on CPU, 1 on GPU)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--force", action="store_true", help="redo runs whose results exist")
    p.add_argument("--no-reproduce", action="store_true", help="skip reproducing each cell with export + predict "
                   "(by default every run's test answers are redone file by file by predict of its exported set)")
    return p


def resolve_presets(args) -> argparse.Namespace:
    """Fill --tasks/--methods/--er-folds from --superb or the paper's defaults."""
    if args.superb:
        args.tasks = args.tasks or list(TASKS)
        args.methods = args.methods or ["ladapter"]
        if len(args.methods) != 1:
            raise UserError(f"--superb: one method (one SUPERB row), got --methods {' '.join(args.methods)}")
        args.er_folds = args.er_folds or [1, 2, 3, 4, 5]
    args.tasks = args.tasks or list(PAPER_TASKS)
    args.methods = args.methods or list(METHODS)
    args.er_folds = args.er_folds or [1]
    return args


def main(argv=None):
    args = build_parser().parse_args(argv)
    # before torch is imported anywhere: the runs' fork server inherits this environment
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.jobs = args.jobs or (1 if args.device.startswith("cuda") else max(1, min(2, os.cpu_count() or 1)))
    try:
        for module in ("matplotlib", "optuna"):  # the reports' plots; the shipped search records and --tune
            require(module, "lab", "run_benchmarks.sh")
        Benchmark(args).run()
    except UserError as e:
        print(f"run_benchmarks.sh: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

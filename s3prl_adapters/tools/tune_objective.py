"""One trial of `s3prl-adapters tune`: a `run_downstream.py` training run, scored on dev.

The objective is one function of an Optuna trial (`Objective.__call__`): it takes the trial's
settings from the search space, trains one run in the trial's own folder with them, reports each
dev evaluation the recipe prints to the trial (so the study's pruner can stop it: the run is killed
at once), and returns the recipe's dev metric at its dev-best selection (the best dev value of the
run, in %). It knows nothing of storage, sampler or pruner: those are the study's (tools/tune.py)."""

import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import List, Optional

from s3prl_adapters.errors import UserError
from s3prl_adapters.tasks.base import Task, default_eval_batch
from s3prl_adapters.tools.tune_space import DROPOUT, SearchSpace


class TrialFailed(Exception):
    """The trial's run exited with an error (its log says why)."""


@dataclass
class TrialSetup:
    """What every trial of one study shares: the run's command line apart from the searched settings."""

    upstream: str
    finetune: bool
    task: Task
    config_path: str
    config: dict
    """The downstream config as loaded (rates the space leaves out, eval_step, total_steps)."""
    ckpt: Optional[str] = None
    adapter_yaml: Optional[str] = None
    user_overrides: str = ""
    """The user's -o (corpus paths, ...), applied before the trial's own settings."""
    steps: Optional[int] = None
    seed: int = 1337
    device: str = "cpu"
    threads: int = 1
    prefix_cache: Optional[str] = None
    feature_cache: Optional[str] = None
    extra_overrides: List[str] = field(default_factory=list)

    @property
    def total_steps(self) -> int:
        return self.steps or int(self.config["runner"]["total_steps"])

    @property
    def eval_step(self) -> int:
        return max(1, self.steps // 2) if self.steps else int(self.config["runner"]["eval_step"])

    def overrides(self, params: dict, space: SearchSpace) -> str:
        task = self.task
        entries = [self.user_overrides] if self.user_overrides else []
        entries += space.overrides(params, self.config)
        # dev only while training, every file scored alone (batch 1), as the benchmark does
        entries.append(f"config.runner.eval_dataloaders={[task.dev_split]!r}")
        entries += [f"{k}={v!r}" for k, v in task.exact_evaluation_overrides(default_eval_batch(self.device)).items()]
        if self.steps:
            entries += [f"config.runner.total_steps={self.steps}", f"config.runner.eval_step={self.eval_step}",
                        f"config.runner.save_step={self.steps}", f"config.runner.log_step={self.eval_step}"]
        if self.prefix_cache and self._adapter_upstream:
            entries.append(f"config.prefix_cache.dir={self.prefix_cache!r}")
        if self.feature_cache and self._frozen_states(params) and not task.random_train_crop:
            entries.append(f"config.feature_cache.dir={self.feature_cache!r}")
        return ",,".join(entries + self.extra_overrides)

    @property
    def _adapter_upstream(self) -> bool:
        from s3prl_adapters.method.config import METHODS

        return self.upstream in METHODS

    def _frozen_states(self, params: dict) -> bool:
        """The run's backbone states depend on the audio alone (the feature cache's condition)."""
        from s3prl_adapters.method.config import METHODS, load_adapter_config

        if not self._adapter_upstream:
            return not self.finetune
        cfg = load_adapter_config(METHODS[self.upstream], self.adapter_yaml)
        dropout = params.get(DROPOUT, cfg.backbone_dropout)
        return cfg.method == "l_only" and not cfg.train_layer_norms and dropout is not True

    def train_argv(self, params: dict, space: SearchSpace, folder: str) -> List[str]:
        argv = ["-m", "train", "-u", self.upstream, "-d", self.task.runs_as(), "-c", self.config_path, "-p", folder,
                "--seed", str(self.seed), "--device", self.device, "-o", self.overrides(params, space)]
        if self.ckpt:
            argv += ["-k", self.ckpt]
        if self.adapter_yaml:
            argv += ["-g", self.adapter_yaml]
        if self.finetune:
            argv.append("-f")
        return argv


class DevWatcher:
    """Reads a run's output as it is written: each dev metric line is one intermediate value."""

    def __init__(self, trial, task: Task, eval_step: int, total_steps: int):
        self.trial, self.task = trial, task
        self.pattern = re.compile(task.dev_metric_pattern)
        self.eval_step, self.total_steps = eval_step, total_steps
        self.values: List[float] = []
        self.pruned_at: Optional[int] = None

    @property
    def step(self) -> int:
        return min(len(self.values) * self.eval_step, self.total_steps)

    def __call__(self, text: str) -> bool:
        """True: stop the run (the pruner says so)."""
        for line in text.splitlines():
            match = self.pattern.match(line.strip())
            if not match:
                continue
            self.values.append(float(match.group(1)) * self.task.percent)
            self.trial.report(self.values[-1], self.step)
            # the last evaluation ends the run anyway: a trial that got there is complete, never pruned
            if self.step < self.total_steps and self.trial.should_prune():
                self.pruned_at = self.step
                return True
        return False

    @property
    def best(self) -> Optional[float]:
        if not self.values:
            return None
        return max(self.values) if self.task.higher_is_better else min(self.values)


class Heartbeat:
    """While a trial runs, its `heartbeat` attribute is refreshed every `interval` seconds, so another
    tune process can tell a trial whose process died (on any machine) from one still running."""

    def __init__(self, storage, trial_id: int, interval: float = 60.0):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        while not self._stop.wait(self.interval):
            try:
                self.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
            except Exception:  # the trial has finished meanwhile, or the storage hiccuped: next time
                pass

    def __enter__(self):
        self.storage.set_trial_user_attr(self.trial_id, "worker", f"{socket.gethostname()}:{os.getpid()}")
        self.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class Objective:
    """The objective of a study: `objective(trial) -> the trial's dev metric at its dev-best selection`."""

    def __init__(self, setup: TrialSetup, space: SearchSpace, out: str):
        self.setup, self.space, self.out = setup, space, out

    def folder(self, trial) -> str:
        return os.path.join(self.out, f"trial_{trial.number:03d}")

    def __call__(self, trial) -> float:
        import optuna

        from s3prl_adapters.tools.launch import run_downstream

        params = self.space.suggest(trial)
        folder = self.folder(trial)
        if os.path.isdir(folder):  # a folder left by a trial of the same number in another study (or storage)
            import shutil

            shutil.rmtree(folder)
        os.makedirs(folder)
        log = os.path.join(folder, "train.log")
        storage, trial_id = trial.storage, trial._trial_id
        for key, value in (("folder", folder), ("log", log), ("settings", params)):
            storage.set_trial_user_attr(trial_id, key, value)
        watcher = DevWatcher(trial, self.setup.task, self.setup.eval_step, self.setup.total_steps)
        started = time.time()
        try:
            with Heartbeat(storage, trial_id):
                outcome = run_downstream(self.setup.train_argv(params, self.space, folder), log, self.setup.threads,
                                         watch=watcher)
        except UserError as e:
            storage.set_trial_user_attr(trial_id, "seconds", round(time.time() - started, 1))
            storage.set_trial_user_attr(trial_id, "steps_run", watcher.step)
            raise TrialFailed(str(e)) from None
        storage.set_trial_user_attr(trial_id, "seconds", round(outcome["seconds"], 1))
        storage.set_trial_user_attr(trial_id, "steps_run", watcher.step)
        if outcome["stopped"]:
            raise optuna.TrialPruned(f"pruned at step {watcher.pruned_at} (dev {watcher.values[-1]:.4g})")
        if watcher.best is None:
            raise TrialFailed(f"the run printed no '{self.setup.task.dev_metric_pattern}' line (log: {log})")
        return watcher.best

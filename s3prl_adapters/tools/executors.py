"""Where the benchmark's runs and tune's workers execute, chosen apart from what they do.

A job is one picklable callable (`job()` does one run, or one tune worker) that writes its own record on
the shared output folder; an executor only starts jobs and waits for them to end:
- `LocalExecutor`: a small pool on this machine, `--jobs` at a time, or one run per GPU of `--gpus 0,1,..`
  (each job gets its own CUDA_VISIBLE_DEVICES);
- `SlurmExecutor`: every job a Slurm job through submitit (one job array per call), with the parameters
  of `--slurm key=value,...` or a YAML file. A job that Slurm preempts or times out is requeued by
  submitit (the callable's `checkpoint()`); the job then starts again and resumes from its run's last
  checkpoint. What ended well is read from the records, not from Slurm's job states (a cluster without
  accounting cannot tell them, and a cancelled job has none), so a second invocation of the same command
  submits exactly the jobs whose records are missing.
Nothing here schedules: Slurm does."""

import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

from s3prl_adapters.errors import UserError, require

GENERIC = ("timeout_min", "mem_gb", "cpus_per_task", "gpus_per_node", "nodes", "tasks_per_node", "name")
"""submitit's cluster-independent parameter names; any other `--slurm` key is submitit's `slurm_<key>`."""


def parse_settings(text: Optional[str]) -> Dict[str, object]:
    """`--slurm partition=gpu,gpus_per_node=1,...` or the path of a YAML mapping: {key: value} (numbers as numbers)."""
    if not text:
        return {}
    if os.path.isfile(text):
        import yaml

        with open(text) as f:
            settings = yaml.safe_load(f) or {}
        if not isinstance(settings, dict):
            raise UserError(f"--slurm {text}: expected a YAML mapping of Slurm parameters")
        return settings
    settings = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--slurm {text}: expected key=value[,key=value...] or a YAML file, got '{item}'")
        value = value.strip()
        settings[key.strip()] = int(value) if value.isdigit() else value
    return settings


def submitit_parameters(settings: Dict[str, object]) -> Dict[str, object]:
    """Our keys as submitit's AutoExecutor parameters; a key submitit does not know is refused in one line."""
    submitit = require("submitit", "cluster", "--executor slurm")
    known = set(submitit.SlurmExecutor._valid_parameters())
    out = {}
    for key, value in settings.items():
        name = key if key in GENERIC else (key if key.startswith("slurm_") else f"slurm_{key}")
        if name not in GENERIC and name[len("slurm_"):] not in known:
            valid = sorted(set(GENERIC) | {k for k in known if not k.startswith("_")})
            raise UserError(f"--slurm {key}={value}: not a Slurm parameter submitit knows; valid: {', '.join(valid)}")
        out[name] = value
    return out


def check_slurm(partition: Optional[str]) -> None:
    """Slurm is reachable (sbatch on PATH, the controller answering) and knows the partition."""
    for tool in ("sbatch", "squeue", "sinfo"):
        if shutil.which(tool) is None:
            raise UserError(f"--executor slurm: no '{tool}' on PATH: this machine is not a Slurm client "
                            f"(bash scripts/slurm.sh start runs a one-machine Slurm)")
    ping = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=60)
    if ping.returncode != 0:
        why = (ping.stderr.strip().splitlines() or ["no answer"])[-1]
        raise UserError(f"--executor slurm: the Slurm controller does not answer ({why})")
    partitions = [p.rstrip("*") for p in ping.stdout.split()]
    if partition and partition not in partitions:
        raise UserError(f"--slurm partition={partition}: no such partition; this cluster has {', '.join(partitions)}")


class Requeued:
    """A job that Slurm may preempt or time out: submitit then calls `checkpoint()` and requeues the same
    job, which starts again and resumes from its own records (a run's last checkpoint, a study's trials)."""

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


@dataclass
class Outcome:
    label: str
    ok: bool
    detail: str = ""
    value: object = None
    """What the job returned (local jobs), or its record (jobs that ran elsewhere)."""


class LocalExecutor:
    """`jobs` at a time on this machine; with `gpus`, one job per GPU at a time, each seeing only its own."""

    def __init__(self, jobs: int = 1, gpus: Optional[Sequence[str]] = None):
        self.gpus = list(gpus or [])
        self.jobs = len(self.gpus) or max(1, jobs)

    def run(self, jobs: List[Callable], labels: List[str]) -> List[Outcome]:
        pending, outcomes, lock = list(range(len(jobs))), {}, threading.Lock()

        def worker(slot: int):
            env = {"CUDA_VISIBLE_DEVICES": self.gpus[slot]} if self.gpus else None
            while True:
                with lock:
                    if not pending:
                        return
                    i = pending.pop(0)
                try:
                    outcomes[i] = Outcome(labels[i], True, value=jobs[i](env=env))
                except BaseException as e:  # noqa: BLE001 -- reported with the others once all have ended
                    outcomes[i] = Outcome(labels[i], False, f"{type(e).__name__}: {e}" if not isinstance(e, UserError)
                                          else str(e))

        threads = [threading.Thread(target=worker, args=(slot,), daemon=True) for slot in range(self.jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return [outcomes[i] for i in range(len(jobs))]


class SlurmExecutor:
    """Every job a Slurm job (one array per `run` call) through submitit; waits until none is queued or running."""

    POLL_SECONDS = 5.0

    def __init__(self, folder: str, settings: Dict[str, object], log=print):
        self.folder = os.path.abspath(folder)
        self.parameters = submitit_parameters(settings)
        check_slurm(self.parameters.get("slurm_partition"))
        self.log = log
        self.job_ids: List[str] = []

    def _executor(self):
        import submitit

        executor = submitit.AutoExecutor(folder=os.path.join(self.folder, "%j"), cluster="slurm")
        parameters = dict(self.parameters)
        parameters.setdefault("timeout_min", 24 * 60)
        parameters.setdefault("cpus_per_task", 1)
        executor.update_parameters(**parameters)
        return executor

    def submit(self, jobs: List[Callable]) -> List[str]:
        """Submit; returns Slurm's job ids (array tasks 'ID_i'). Submission failures end in one line."""
        import submitit

        executor = self._executor()
        try:
            with executor.batch():
                handles = [executor.submit(job) for job in jobs]
        except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError) as e:
            lines = [line for line in str(e).splitlines() if "error" in line.lower()] or str(e).splitlines() or ["?"]
            raise UserError(f"--executor slurm: sbatch refused the jobs: {lines[-1].strip()}") from None
        ids = [h.job_id for h in handles]
        self.job_ids += ids
        return ids

    @staticmethod
    def queued(ids: List[str]) -> List[str]:
        """Which of `ids` Slurm still lists as pending, running or completing."""
        arrays = sorted({i.split("_")[0] for i in ids})
        proc = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(arrays)], capture_output=True, text=True)
        listed = set()
        for line in proc.stdout.splitlines():
            job, _, state = line.partition(" ")
            if state.strip() in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "SUSPENDED",
                                 "RESIZING", "SIGNALING", "STAGE_OUT", "REQUEUE_HOLD", "REQUEUE_FED"):
                if "[" in job:  # a pending range of an array: 12_[3-7]
                    base, _, spec = job.partition("_[")
                    for part in spec.rstrip("]").split(","):
                        lo, _, hi = part.partition("-")
                        lo = lo.split("%")[0]
                        hi = (hi or lo).split("%")[0]
                        listed.update(f"{base}_{k}" for k in range(int(lo), int(hi) + 1))
                else:
                    listed.add(job)
        return [i for i in ids if i in listed or i.split("_")[0] in listed]

    def wait(self, ids: List[str], describe: Callable[[], str] = lambda: "") -> None:
        while True:
            left = self.queued(ids)
            if not left:
                return
            self.log(f"[slurm] {len(left)} of {len(ids)} job(s) queued or running{describe()}")
            time.sleep(self.POLL_SECONDS)

    def run(self, jobs: List[Callable], labels: List[str], ended: Callable[[int], Outcome]) -> List[Outcome]:
        """Submit `jobs`, wait for all, and ask `ended(i)` (the job's own record) how each ended."""
        ids = self.submit(jobs)
        self.log(f"[slurm] submitted {len(ids)} job(s): {ids[0]}{' .. ' + ids[-1] if len(ids) > 1 else ''} "
                 f"(logs in {self.folder}/<job id>/)")
        self.wait(ids)
        outcomes = [ended(i) for i in range(len(jobs))]
        for job_id, outcome in zip(ids, outcomes):
            if not outcome.ok:
                outcome.detail += f" (Slurm job {job_id}: {self.folder}/{job_id.split('_')[0]}*/)"
        return outcomes


def make_executor(kind: str, out: str, jobs: int = 1, gpus: Optional[str] = None, slurm: Optional[str] = None,
                  log=print):
    """The executor `--executor KIND` names, with its flags checked."""
    if kind == "local":
        if slurm:
            raise UserError("--slurm: only with --executor slurm")
        names = [g.strip() for g in gpus.split(",")] if gpus else []
        if gpus and (not all(names) or len(set(names)) != len(names)):
            raise UserError(f"--gpus {gpus}: expected distinct GPU indices, e.g. 0,1,2,3")
        return LocalExecutor(jobs, names)
    if kind == "slurm":
        if gpus:
            raise UserError("--gpus: for --executor local; with Slurm, --slurm gpus_per_node=N and --gpus-per-run N")
        return SlurmExecutor(os.path.join(out, "slurm"), parse_settings(slurm), log)
    raise UserError(f"--executor {kind}: expected local or slurm")

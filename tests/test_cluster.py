"""The experiment on a real Slurm (scripts/slurm.sh starts a one-machine Slurm here and stops it after):
`run_benchmarks.sh --executor slurm` gives the same table as `--executor local` on the same seeds, its
runs are Slurm's jobs (in Slurm's own records), a run cancelled mid-way is the only one the second
invocation submits again and ends with the weights of an uninterrupted run, `--report-only` renders what
exists, a tune study with two Slurm workers runs every trial once, and bad input ends in one line."""

import glob
import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO

SCRIPT = os.path.join(REPO, "scripts", "slurm.sh")
RUNS = ["--tasks", "fluent_commands", "--methods", "ladapter", "frozen", "--seeds", "1", "--no-reproduce"]
SLURM = ["--executor", "slurm", "--slurm", "cpus_per_task=1,timeout_min=30"]


@pytest.fixture(scope="module")
def slurm():
    proc = subprocess.run(["bash", SCRIPT, "start"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield
    subprocess.run(["bash", SCRIPT, "stop"], capture_output=True, text=True, timeout=120)


STEPS = 60  # long enough to cancel a run between its halfway checkpoint and its end


def _bench(*argv, out, corpus, ckpt, steps=STEPS, wait=True):
    command = ["bash", os.path.join(REPO, "run_benchmarks.sh"), *RUNS, "--steps", str(steps), "--mini-root", corpus,
               "--backbone", ckpt, "-o", str(out), *argv]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)


def _cells(out):
    return {(c["task"], c["method"]): (c["value"], c["ci"]) for c in json.load(open(out / "results.json"))["cells"]}


def _final_weights(out, method, steps=STEPS):
    from s3prl_adapters.method.backbone import S3PRL_RUN, read_checkpoint

    ckpt = read_checkpoint(str(out / "runs" / "fluent_commands" / method / "seed1" / f"states-{steps}.ckpt"),
                           allow=S3PRL_RUN)
    return {f"{part}.{k}": v for part in ("Upstream", "Featurizer", "Downstream") for k, v in ckpt.get(part, {}).items()}


@pytest.fixture(scope="module")
def local_table(mini_corpus, tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    proc = _bench(out=out, corpus=mini_corpus, ckpt=tiny_ckpt)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_slurm_gives_the_local_table_and_its_jobs_are_slurms(slurm, local_table, mini_corpus, tiny_ckpt, tmp_path):
    out = tmp_path / "slurm"
    proc = _bench(*SLURM, out=out, corpus=mini_corpus, ckpt=tiny_ckpt)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _cells(out) == _cells(local_table)  # CPU: equal cells, intervals included
    jobs = sorted(os.path.basename(p) for p in glob.glob(str(out / "slurm" / "*_*")))
    assert len(jobs) == 2, jobs  # one array, a task per run
    for job in jobs:  # Slurm's own record of each (scontrol keeps finished jobs for MinJobAge)
        shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
        assert "JobState=COMPLETED" in shown and "JobName=submitit" in shown, shown
    assert re.search(r"\[slurm\] submitted 2 job\(s\): \d+_0 \.\. \d+_1", proc.stderr), proc.stderr[-2000:]


def test_a_cancelled_run_is_redone_alone_and_resumes_to_the_same_weights(slurm, local_table, mini_corpus, tiny_ckpt,
                                                                         tmp_path):
    out = tmp_path / "cancelled"
    steps = STEPS
    first = _bench(*SLURM, out=out, corpus=mini_corpus, ckpt=tiny_ckpt, wait=False)
    halfway = out / "runs" / "fluent_commands" / "ladapter" / "seed1" / f"states-{steps // 2}.ckpt"
    deadline = time.time() + 600
    while not halfway.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert halfway.exists(), first.communicate()[1][-3000:]
    listed = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True).stdout  # while they run
    job = open(halfway.parent / "slurm_job.txt").read().split()[0]  # the job running it, as the run folder says
    assert f"{job} RUNNING" in listed, listed
    subprocess.run(["scancel", job], check=True)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 2, err[-3000:]
    assert "1 of 2 runs did not end with a record (fluent_commands/ladapter/seed1" in err.strip().splitlines()[-1]
    assert json.load(open(out / "results.json"))["missing"] == ["fluent_commands/ladapter/seed1"]

    report = _bench("--report-only", out=out, corpus=mini_corpus, ckpt=tiny_ckpt)
    assert report.returncode == 0 and "1 of 2 runs have a record; missing: fluent_commands/ladapter/seed1" in report.stderr
    assert "Missing: 1 run(s) of this command have no record yet" in (out / "results.md").read_text()

    second = _bench(*SLURM, out=out, corpus=mini_corpus, ckpt=tiny_ckpt)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "[slurm] submitted 1 job(s)" in second.stderr  # only the cancelled run
    assert _cells(out) == _cells(local_table)
    resumed, reference = _final_weights(out, "ladapter", steps), _final_weights(local_table, "ladapter", steps)
    assert resumed.keys() == reference.keys() and all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_two_slurm_workers_share_one_study(slurm, mini_corpus, tiny_ckpt, tmp_path):
    from s3prl_adapters.tasks import corpus_overrides

    out = tmp_path / "study"
    proc = subprocess.run([sys.executable, "-m", "s3prl_adapters.tools.cli", "tune", "-u", "wavlm_ladapter_only", "-k",
                           tiny_ckpt, "-d", "fluent_commands", "-c", os.path.join(REPO, "downstream_configs",
                                                                                    "fluent_commands", "mini.yaml"),
                           "-o", corpus_overrides("fluent_commands", mini_corpus), "--trials", "4", "--steps", "4",
                           "--pruner", "none", "--out", str(out), "--executor", "slurm", "--workers", "2", "--slurm",
                           "cpus_per_task=1,timeout_min=30"],
                          capture_output=True, text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[slurm] submitted 2 job(s)" in proc.stderr
    rows = open(out / "trials.csv").read().splitlines()[1:]
    assert len(rows) == 4 and all(",COMPLETE," in row for row in rows), rows
    settings = [tuple(row.split(",")[3:-4]) for row in rows]
    assert len(set(settings)) == 4  # every trial once: four grid points, none run twice
    assert (out / "best.yaml").exists()


def test_the_qbe_sweep_is_a_slurm_job(slurm, mini_corpus, tiny_ckpt, tmp_path):
    """QbE trains nothing: its layer sweep is one job of the executor, here a Slurm job, read back from its summary."""
    from s3prl_adapters.tasks.query_by_example import score_run

    out = tmp_path / "qbe"
    proc = subprocess.run(["bash", os.path.join(REPO, "run_benchmarks.sh"), "--tasks", "quesst14_dtw", "--mini-root",
                           mini_corpus, "--backbone", tiny_ckpt, "-o", str(out), *SLURM],
                          capture_output=True, text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    submitted = re.search(r"\[slurm\] submitted 1 job\(s\): (\d+)", proc.stderr)
    assert submitted, proc.stderr[-2000:]
    qbe = json.load(open(out / "results.json"))["qbe"]
    assert sorted(qbe["dev_mtwv"]) == ["0", "1", "2", "3"]  # the 3-layer backbone's 4 states
    assert score_run(qbe["test_expdir"])["mtwv"] == qbe["test_mtwv"]
    shown = subprocess.run(["scontrol", "show", "job", submitted.group(1)], capture_output=True, text=True).stdout
    assert "JobState=COMPLETED" in shown, shown


@pytest.mark.parametrize("flags, message", [
    (["--slurm", "colour=red"], "--slurm colour=red: not a Slurm parameter submitit knows; valid: "),
    (["--slurm", "partition=nowhere"], "--slurm partition=nowhere: no such partition; this cluster has debug"),
    (["--gpus", "0,0"], "--gpus 0,0: expected distinct GPU indices"),
])
def test_bad_cluster_input_is_one_line(slurm, flags, message, tmp_path):
    executor = [] if "--gpus" in flags else ["--executor", "slurm"]
    proc = subprocess.run(["bash", os.path.join(REPO, "run_benchmarks.sh"), *RUNS, *executor, *flags, "-o",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[-1].startswith(f"run_benchmarks.sh: error: {message}"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_no_slurm_reachable_is_one_line(slurm, tmp_path):
    """Without sbatch on PATH, and with the controller down (stopped here, started again after)."""
    bin_dir = tmp_path / "bin"  # a PATH without Slurm's tools
    bin_dir.mkdir()
    no_sbatch = subprocess.run([sys.executable, "-m", "s3prl_adapters.tools.benchmark", *RUNS, *SLURM, "-o",
                                str(tmp_path / "a")], capture_output=True, text=True, timeout=300,
                               env=dict(os.environ, PATH=str(bin_dir)))
    assert no_sbatch.returncode == 2 and "--executor slurm: no 'sbatch' on PATH" in no_sbatch.stderr.strip().splitlines()[-1]
    subprocess.run(["bash", SCRIPT, "stop"], capture_output=True, timeout=120, check=True)
    try:
        down = subprocess.run(["bash", os.path.join(REPO, "run_benchmarks.sh"), *RUNS, *SLURM, "-o", str(tmp_path / "b")],
                              capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run(["bash", SCRIPT, "start"], capture_output=True, timeout=600, check=True)
    last = down.stderr.strip().splitlines()[-1]
    assert down.returncode == 2 and last.startswith("run_benchmarks.sh: error: --executor slurm: the Slurm controller "
                                                    "does not answer"), down.stderr[-2000:]


def test_local_gpus_give_each_run_its_own_device():
    """--executor local --gpus 0,1,2: at most one run per GPU at a time, each seeing only its own."""
    import threading

    from s3prl_adapters.tools.executors import make_executor

    executor = make_executor("local", "unused", jobs=1, gpus="0,1,2")
    busy, seen, lock = set(), [], threading.Lock()

    def job(env=None):
        gpu = env["CUDA_VISIBLE_DEVICES"]
        with lock:
            assert gpu not in busy
            busy.add(gpu)
            seen.append(gpu)
        time.sleep(0.05)
        with lock:
            busy.remove(gpu)
        return gpu

    outcomes = executor.run([job] * 9, [f"run {k}" for k in range(9)])
    assert all(o.ok for o in outcomes) and sorted(set(seen)) == ["0", "1", "2"] and len(seen) == 9


def test_preempted_jobs_requeue_themselves():
    """submitit's preemption hook: each job kind answers `checkpoint()` with a resubmission of the same job
    and the same arguments (a requeued run resumes from its folder's records)."""
    import submitit

    from s3prl_adapters.tools.benchmark import Run, RunJob, StudyJob
    from s3prl_adapters.tools.tune import TuneWorker

    jobs = [RunJob({"unused": True}, Run("fluent_commands", "ladapter", 1), 0, 1),
            StudyJob(None, None, "out", 2, "journal", "study"), TuneWorker(["--task", "fluent_commands"])]
    for job in jobs:
        again = job.checkpoint({"CUDA_VISIBLE_DEVICES": "0"})
        assert isinstance(again, submitit.helpers.DelayedSubmission)
        assert again.function is job and again.args == ({"CUDA_VISIBLE_DEVICES": "0"},)

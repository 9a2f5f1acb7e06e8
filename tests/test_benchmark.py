"""run_benchmarks.sh end to end on one task x two methods with a tiny budget, and submission validation."""

import csv
import json
import os
import re
import shutil
import subprocess
import zipfile

import pytest

from conftest import REPO
from s3prl_adapters.errors import UserError
from s3prl_adapters.tools.report import COLUMNS
from s3prl_adapters.tools.submission import build_submission


@pytest.fixture(scope="module")
def smoke(tiny_ckpt, mini_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cmd = ["bash", os.path.join(REPO, "run_benchmarks.sh"), "--tasks", "emotion", "quesst14_dtw", "--methods", "frozen",
           "ladapter", "--steps", "6", "--mini-root", mini_corpus, "--backbone", tiny_ckpt, "-o", str(out), "--no-reproduce"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_outputs_and_columns(smoke):
    out, proc = smoke
    for name in ("results.md", "results.csv", "results.json", "layer_weights.png", "loss_curves.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert list(rows[0]) == COLUMNS and len(rows) == 2
    assert {r["method"] for r in rows} == {"frozen", "ladapter"}
    assert all(int(r["trainable_params"]) > 0 and int(r["total_params"]) > int(r["trainable_params"]) for r in rows)
    assert re.search(r"\[1/2\] (start|done) ", proc.stderr) and "ETA" in proc.stderr
    md = (out / "results.md").read_text()
    assert "| Frozen weighted sum (SUPERB) |" in md and "ER acc % ↑" in md
    runs = {r["method"]: r for r in json.load(open(out / "results.json"))["runs"]}
    assert (runs["ladapter"]["prefix_cache"], runs["frozen"]["prefix_cache"]) == (True, False)  # adapter runs only
    assert (runs["ladapter"]["feature_cache"], runs["frozen"]["feature_cache"]) == (False, True)  # frozen ones only
    assert "Frozen weighted sum (SUPERB): the frozen backbone's states read from a cache" in md
    # every entry the frozen run computed reached the disk: its forked process ran the cache's
    # flush at exit (a multiprocessing child skips atexit handlers unless told to run them)
    # (training prints its misses; the evaluation adds one entry per test utterance, written at exit)
    misses = [int(m.group(1)) for m in re.finditer(r"feature cache: \d+ hits, (\d+) misses",
                                                    open(os.path.join(runs["frozen"]["expdir"], "train.log")).read())]
    test_items = len(runs["frozen"]["items"]["correct"])
    assert len(list((out / "feature_cache").rglob("*.pt"))) == misses[-1] + test_items
    assert "L+E adapters (proposed): the frozen prefix (CNN, LayerNorm, projection) read from one cache" in md
    assert os.listdir(next((out / "prefix_cache").iterdir()))  # the shared folder holds the entries
    # QbE trains nothing: one layer sweep of the backbone (3 layers + 1 states), reported under the table
    qbe = json.load(open(out / "results.json"))["qbe"]
    assert sorted(qbe["dev_mtwv"]) == ["0", "1", "2", "3"] and qbe["test_expdir"].startswith(str(out / "runs" / "quesst14_dtw"))
    assert f"best layer on dev **{qbe['best_layer']}**, test MTWV **{qbe['test_mtwv']:.4f}**" in md


def test_table_numbers_are_the_metrics_s3prl_printed(smoke):
    out, _ = smoke
    for run in json.load(open(out / "results.json"))["runs"]:
        printed = [float(m.group(1)) for m in re.finditer(r"^test acc: ([\d.]+)$", open(os.path.join(run["expdir"], "evaluate.log")).read(), re.M)]
        assert run["metric_value"] == printed[-1]
        assert f"{run['metric_percent']:.2f}" in (out / "results.md").read_text()


def test_predict_zip_per_method_is_valid(smoke):
    out, _ = smoke
    for method in ("frozen", "ladapter"):
        with zipfile.ZipFile(out / "submission" / method / "predict.zip") as z:
            assert z.namelist() == ["predict/er_fold1_public/predict.txt", "predict/qbe_public/benchmark.stdlist.xml"]
            lines = z.read("predict/er_fold1_public/predict.txt").decode().splitlines()
        run = next(r for r in json.load(open(out / "results.json"))["runs"] if r["method"] == method)
        assert lines == open(os.path.join(run["expdir"], "test_fold1_predict.txt")).read().splitlines()


def test_rerun_skips_finished_runs(smoke, tiny_ckpt, mini_corpus):
    out, _ = smoke
    passes = {p: p.stat().st_mtime_ns for p in (out / "runs" / "quesst14_dtw").rglob("log.txt")}
    proc = subprocess.run(["bash", os.path.join(REPO, "run_benchmarks.sh"), "--tasks", "emotion", "quesst14_dtw",
                           "--methods", "frozen", "ladapter", "--steps", "6", "--mini-root", mini_corpus, "--backbone",
                           tiny_ckpt, "-o", str(out), "--no-reproduce"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr.count("cached") == 2 and " start " not in proc.stderr
    assert "(2 of 2 runs kept from an earlier invocation, not rerun)" in (out / "results.md").read_text()
    # QbE's passes read back from their scores, none run again
    assert passes and {p: p.stat().st_mtime_ns for p in (out / "runs" / "quesst14_dtw").rglob("log.txt")} == passes


def test_superb_preset_is_one_method_over_every_task(tmp_path):
    from s3prl_adapters.tasks import TASKS
    from s3prl_adapters.tools.benchmark import Benchmark, build_parser

    bench = Benchmark(build_parser().parse_args(["--superb", "-o", str(tmp_path)]))
    assert bench.args.tasks == list(TASKS) and bench.args.methods == ["ladapter"] and bench.args.er_folds == [1, 2, 3, 4, 5]
    planned = {(r.task, r.fold) for r in bench.plan()}
    assert {t for t, _ in planned} == set(TASKS) - {"quesst14_dtw"}  # QbE: a layer sweep, not a training run
    assert {f for t, f in planned if t == "emotion"} == {1, 2, 3, 4, 5} and len(planned) == len(TASKS) - 1 + 4
    with pytest.raises(UserError, match="--superb: one method"):
        Benchmark(build_parser().parse_args(["--superb", "--methods", "ladapter", "lora", "-o", str(tmp_path)]))
    assert Benchmark(build_parser().parse_args(["-o", str(tmp_path)])).args.tasks == [
        "asr", "fluent_commands", "emotion", "sv_voxceleb1"]  # without it: the paper's four, every method


def _er_expdir(smoke, tmp_path):
    out, _ = smoke
    run = json.load(open(out / "results.json"))["runs"][0]
    copy = tmp_path / "exp"
    shutil.copytree(run["expdir"], copy)
    return copy


def test_submission_rejects_missing_file(smoke, tmp_path):
    exp = _er_expdir(smoke, tmp_path)
    os.remove(exp / "test_fold1_predict.txt")
    with pytest.raises(UserError, match="missing prediction file .*test_fold1_predict.txt"):
        build_submission(str(tmp_path / "p.zip"), er={1: str(exp)})
    assert not (tmp_path / "p.zip").exists()


@pytest.mark.parametrize("mutate, message", [
    (lambda lines: [lines[0].replace(" ", "\t")] + lines[1:], "expected '<utt> <label>'"),
    (lambda lines: [lines[0].split(" ")[0] + " bored"] + lines[1:], "label 'bored' not in"),
    (lambda lines: lines[1:], "utterances differ from the corpus's test list: 1 of 272 missing"),
])
def test_submission_rejects_bad_predictions(smoke, tmp_path, mutate, message):
    exp = _er_expdir(smoke, tmp_path)
    path = exp / "test_fold1_predict.txt"
    path.write_text("\n".join(mutate(path.read_text().splitlines())) + "\n")
    with pytest.raises(UserError, match=message):
        build_submission(str(tmp_path / "p.zip"), er={1: str(exp)})
    assert not (tmp_path / "p.zip").exists()


def test_a_killed_benchmark_resumes_bit_identically(tiny_ckpt, mini_corpus, tmp_path):
    """SIGKILL the whole benchmark (it and its run_downstream.py child) once the run's halfway
    checkpoint exists; the rerun resumes that run from it and ends where an uninterrupted one does."""
    import glob
    import signal
    import time

    import torch

    from s3prl_adapters.bridge.compat import s3prl_checkpoints_fail_weights_only_load

    def cmd(out):
        return ["bash", os.path.join(REPO, "run_benchmarks.sh"), "--tasks", "fluent_commands", "--methods", "ladapter",
                "--steps", "8", "--mini-root", mini_corpus, "--backbone", tiny_ckpt, "-o", str(out), "--jobs", "1",
                "--no-reproduce"]

    reference = subprocess.run(cmd(tmp_path / "reference"), capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not glob.glob(str(out / "runs" / "*" / "*" / "*" / "states-4.ckpt")):
        assert proc.poll() is None and time.time() < deadline, "the benchmark ended before its halfway checkpoint"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not glob.glob(str(out / "runs" / "*" / "*" / "*" / "result.json"))

    resumed = subprocess.run(cmd(out), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    train_log = glob.glob(str(out / "runs" / "*" / "*" / "*" / "train.log"))[0]
    assert "Loading Upstream weights from the previous experiment" in open(train_log).read()

    s3prl_checkpoints_fail_weights_only_load()
    final = [torch.load(glob.glob(str(root / "runs" / "*" / "*" / "*" / "states-8.ckpt"))[0], weights_only=True)
             for root in (tmp_path / "reference", out)]
    for part in ("Upstream", "Featurizer", "Downstream"):
        assert final[0][part].keys() == final[1][part].keys()
        for key in final[0][part]:
            assert torch.equal(final[0][part][key], final[1][part][key]), f"{part}.{key}"
    results = [json.load(open(glob.glob(str(root / "runs" / "*" / "*" / "*" / "result.json"))[0]))
               for root in (tmp_path / "reference", out)]
    assert results[0]["metric_value"] == results[1]["metric_value"]


def test_runs_start_longest_first_and_a_failure_ends_only_its_run(tmp_path, monkeypatch):
    """`--jobs` runs at a time, the longest first; results come back in plan order; a failed run does
    not stop the others and is reported once they have ended. Runs that share a cache overlap: an entry's
    value does not depend on which run computed it (tests/test_feature_cache.py, test_prefix_cache.py)."""
    import threading
    import time

    from s3prl_adapters.tools.benchmark import Benchmark, build_parser
    from s3prl_adapters.tools.catalogue import METHODS

    args = build_parser().parse_args(["--tasks", "fluent_commands", "emotion", "--methods", "frozen", "ladapter",
                                      "eadapter", "houlsby", "finetune", "--seeds", "1", "2", "-o", str(tmp_path),
                                      "--jobs", "3"])
    bench = Benchmark(args)
    runs = bench.plan()
    events, lock = [], threading.Lock()

    def fake_execute(run, index, total, env=None):
        with lock:
            events.append(("start", run.label, index))
        time.sleep(0.02)
        with lock:
            events.append(("end", run.label, index))
        if run.label == "emotion/finetune/seed2/fold1":
            raise UserError("this run failed")
        return {"label": run.label}

    monkeypatch.setattr(bench, "execute", fake_execute)
    results = bench.execute_all(runs)
    assert [(o.label, o.detail) for o in bench.failed] == [("emotion/finetune/seed2/fold1", "this run failed")]
    assert len(results) == len(runs) - 1 and len([e for e in events if e[0] == "end"]) == len(runs)  # the others ran
    by_label = {r.label: r for r in runs}
    starts = sorted((e for e in events if e[0] == "start"), key=lambda e: e[2])
    costs = [METHODS[by_label[e[1]].method].relative_cost for e in starts]
    assert costs == sorted(costs, reverse=True) and by_label[starts[0][1]].method == "finetune"
    running = [sum(1 for e in events[:k] if e[0] == "start") - sum(1 for e in events[:k] if e[0] == "end")
               for k in range(len(events) + 1)]
    assert max(running) == 3  # --jobs 3, prefix-cached runs of one task included
    events.clear()
    monkeypatch.setattr(bench, "execute", lambda run, index, total, env=None: {"label": run.label})
    assert [r["label"] for r in bench.execute_all(runs)] == [r.label for r in runs]  # plan order


def test_which_runs_read_which_cache(tmp_path):
    from s3prl_adapters.tools.benchmark import Benchmark, Run, build_parser

    def caches(*flags):
        bench = Benchmark(build_parser().parse_args(["-o", str(tmp_path), *flags]))
        return {(t, m): bench.caches_of(Run(t, m, 1)) for t in ("fluent_commands", "sv_voxceleb1")
                for m in ("frozen", "ladapter_only", "ladapter", "finetune")}

    default = caches()
    assert default[("fluent_commands", "frozen")] == (False, True)
    assert default[("fluent_commands", "ladapter_only")] == (True, True)
    assert default[("fluent_commands", "ladapter")] == (True, False)
    assert default[("fluent_commands", "finetune")] == (False, False)
    assert default[("sv_voxceleb1", "frozen")] == (False, False)  # random training crops: never a hit
    real = caches("--fsc", str(tmp_path))  # a real corpus: caches only where asked for (~3.6 GB/h of states on Base+)
    assert real[("fluent_commands", "frozen")] == (False, False) and real[("fluent_commands", "ladapter")] == (False, False)
    asked = caches("--fsc", str(tmp_path), "--feature-cache", str(tmp_path / "fc"), "--prefix-cache", str(tmp_path / "pc"))
    assert asked[("fluent_commands", "frozen")] == (False, True) and asked[("fluent_commands", "ladapter")] == (True, False)
    cuda = caches("--device", "cuda")  # the stand-ins on a GPU: no prefix cache unless asked for
    assert cuda[("fluent_commands", "ladapter")] == (False, False) and cuda[("fluent_commands", "frozen")] == (False, True)
    assert caches("--device", "cuda", "--prefix-cache", str(tmp_path / "pc"))[("fluent_commands", "ladapter")] == (True, False)
    off = caches("--no-prefix-cache", "--no-feature-cache")
    assert set(off.values()) == {(False, False)}


def test_a_forked_run_that_started_joblib_workers_still_exits(tmp_path):
    """Interpreter exit order: threading's shutdown stops joblib's workers before multiprocessing's
    atexit handler joins the child processes (the other way round it waits forever)."""
    import threading

    from fabricate import start_joblib_workers
    from s3prl_adapters.tools.launch import run_in_child

    log, done = tmp_path / "child.log", []
    worker = threading.Thread(target=lambda: done.append(run_in_child(start_joblib_workers, [], str(log), threads=1)),
                              daemon=True)
    worker.start()
    worker.join(120)
    assert done, f"the child did not exit; its log: {log.read_text()[-500:]}"
    assert log.read_text().strip() == "28"


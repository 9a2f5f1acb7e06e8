"""Every benchmark cell is what users deploy: for every method on every task of a small benchmark,
`s3prl-adapters export` of the run's selected checkpoint and `predict --batch-size 1` on the test
split give the same answer for every file (ASV: the same score for every trial) as the recipe's own
test pass, and the same metric. LoRA sets are served (next to an L+E set, in one call), and a
missing input names where relative list entries were looked for."""

import json
import os
import subprocess

import pytest

from conftest import REPO, tool
from s3prl_adapters.tools.catalogue import METHODS

TASKS = ["asr", "fluent_commands", "emotion", "sv_voxceleb1"]


def _keep(path, rows, header=0):
    """Replace a linked list file by a real one holding its first `rows` entries (after `header` lines)."""
    lines = open(path).read().splitlines(keepends=True)
    os.remove(path)
    with open(path, "w") as f:
        f.writelines(lines[:header + rows])


@pytest.fixture(scope="module")
def small_corpus(mini_corpus, tmp_path_factory):
    """The default stand-ins with short evaluation lists (audio linked, lists cut): a small benchmark whose
    every run still trains, selects on dev, tests and is reproduced."""
    import json
    import shutil

    root = str(tmp_path_factory.mktemp("small") / "mini_superb")
    shutil.copytree(mini_corpus, root, copy_function=os.symlink)
    for split in ("dev-clean", "test-clean"):
        _keep(os.path.join(root, "LibriSpeech", "len_for_bucket", f"{split}.csv"), 12, header=1)
    for split in ("valid", "test"):
        _keep(os.path.join(root, "fluent_speech_commands", "data", f"{split}_data.csv"), 40, header=1)
    for part, rows in (("train", 100), ("test", 40)):  # ER's dev split is a fifth of its train list
        path = os.path.join(root, "IEMOCAP", "meta_data", "Session1", f"{part}_meta_data.json")
        meta = json.load(open(path))
        os.remove(path)
        meta["meta_data"] = meta["meta_data"][:rows]
        json.dump(meta, open(path, "w"))
    _keep(os.path.join(root, "VoxCeleb1", "test_trials.txt"), 60)
    _keep(os.path.join(root, "VoxCeleb1", "dev_trials.txt"), 30)
    return root


@pytest.fixture(scope="module")
def every_cell(tiny_ckpt, small_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("every_cell")
    proc = subprocess.run(["bash", os.path.join(REPO, "run_benchmarks.sh"), "--tasks", *TASKS, "--methods", *METHODS,
                           "--steps", "2", "--mini-root", small_corpus, "--backbone", tiny_ckpt, "-o", str(out)],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.load(open(out / "results.json"))["runs"]


def test_every_cell_is_reproduced_file_by_file(every_cell):
    out, runs = every_cell
    assert {(r["task"], r["method"]) for r in runs} == {(t, m) for t in TASKS for m in METHODS}
    for run in runs:
        rep = run["reproduction"]
        assert rep["answers"] > 0 and rep["answers_equal"] == rep["answers"], (run["task"], run["method"], rep)
        assert rep["metric_percent"] == round(run["metric_percent"], 4), (run["task"], run["method"], rep)
        assert rep["reproduced"] is True
    md = (out / "results.md").read_text()
    assert "Reproduced: every run's test answers" in md


def _set(runs, task, method):
    run = next(r for r in runs if r["task"] == task and r["method"] == method)
    folder = os.path.join(run["expdir"], "reproduction")
    return os.path.join(folder, "ic.adapter"), os.path.join(folder, "answers.jsonl"), os.path.join(folder, "test_files.txt")


def test_a_lora_set_is_served_next_to_an_l_e_set(every_cell, tiny_ckpt, tmp_path):
    """One predict call, one shared backbone: the LoRA set's pass runs on its own copy with PEFT's LoRA
    applied; each set's answers equal those it gave alone."""
    _, runs = every_cell
    lora, lora_answers, files = _set(runs, "fluent_commands", "lora")
    proposed, proposed_answers, _ = _set(runs, "fluent_commands", "ladapter")
    os.symlink(lora, tmp_path / "lora.adapter")
    os.symlink(proposed, tmp_path / "proposed.adapter")
    proc = subprocess.run([tool("s3prl-adapters"), "predict", "--backbone", tiny_ckpt, "--adapters",
                           str(tmp_path / "lora.adapter"), str(tmp_path / "proposed.adapter"), files, "--batch-size", "1",
                           "-o", str(tmp_path / "both.jsonl")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "one each for lora, proposed" in proc.stderr
    both = [json.loads(line) for line in open(tmp_path / "both.jsonl")]
    alone = {name: [json.loads(line)["ic"] for line in open(path)]
             for name, path in (("lora", lora_answers), ("proposed", proposed_answers))}
    assert [b["lora"] for b in both] == alone["lora"] and [b["proposed"] for b in both] == alone["proposed"]


def test_a_missing_input_says_where_it_was_looked_for(every_cell, tiny_ckpt, tmp_path):
    _, runs = every_cell
    adapter, _, files = _set(runs, "fluent_commands", "ladapter")
    listing = tmp_path / "lists" / "mine.txt"
    listing.parent.mkdir()
    first = open(files).readline().strip()
    listing.write_text(f"{first}\nrecordings/missing.wav\n")
    proc = subprocess.run([tool("s3prl-adapters"), "predict", "--backbone", tiny_ckpt, "--adapters", adapter,
                           str(listing), str(tmp_path / "gone.wav")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1  # one answer each; the missing ones are error lines
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert "ic" in lines[0] and "error" not in lines[0]
    assert lines[1]["error"] == (f"no such file: {listing.parent / 'recordings' / 'missing.wav'} "
                                 f"(relative entries of {listing} resolve against its folder)")
    assert lines[2]["error"] == f"no such file: {tmp_path / 'gone.wav'}"

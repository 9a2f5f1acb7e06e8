"""Slow (still in CI): IC and ER trained long enough through the real recipes to clearly beat the
majority-class baseline, with the proposed adapters on the embedded pretrained backbone."""

import collections
import json
import os
import re
import subprocess

import pandas as pd
import pytest

from conftest import REPO, tool
from s3prl_adapters.tasks import corpus_overrides

BACKBONE = os.path.join(REPO, "s3prl_adapters", "assets", "wavlm_tiny_pretrained.pt")
G = os.path.join(REPO, "tests", "adapters_width256.yaml")


def _majority(task, root):
    if task == "fluent_commands":
        test = pd.read_csv(os.path.join(root, "fluent_speech_commands", "data", "test_data.csv"))
        counts = collections.Counter(zip(test.action, test.object, test.location))
    else:
        meta = json.load(open(os.path.join(root, "IEMOCAP", "meta_data", "Session1", "test_meta_data.json")))
        counts = collections.Counter(x["label"] for x in meta["meta_data"])
    return max(counts.values()) / sum(counts.values())


@pytest.mark.slow
@pytest.mark.parametrize("task, margin, eval_step", [("fluent_commands", 3.0, 300), ("emotion", 1.3, 100)])
def test_adapters_beat_the_majority_baseline(task, margin, eval_step, mini_corpus, tmp_path, capsys):
    expdir = tmp_path / "exp"
    steps = f"config.runner.total_steps=300,,config.runner.eval_step={eval_step},,config.runner.save_step=300"
    train = subprocess.run([tool("run_downstream.py"), "-m", "train", "-u", "wavlm_ladapter", "-k", BACKBONE, "-g", G,
                            "-d", task, "-c", os.path.join(REPO, "downstream_configs", task, "mini.yaml"),
                            "-p", str(expdir), "--seed", "1337", "-o", f"{corpus_overrides(task, mini_corpus)},,{steps}"],
                           capture_output=True, text=True, timeout=900)
    assert train.returncode == 0, train.stderr[-3000:]
    accuracy = float(re.findall(r"^test acc: ([\d.]+)$", train.stdout, re.M)[-1])
    majority = _majority(task, mini_corpus)
    with capsys.disabled():
        print(f"\n[learning] {task}: test acc {accuracy:.3f} after 300 steps vs majority baseline {majority:.3f}")
    assert accuracy >= margin * majority

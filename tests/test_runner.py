"""Through S3PRL's own runner via our run_downstream.py: training moves exactly the adapters,
checkpoints hold no backbone weights, and -e evaluation rebuilds the backbone from -k."""

import argparse
import os
import subprocess
import sys

import pytest
import torch

from conftest import tool

OVERRIDES = (
    "config.runner.total_steps=6,,config.runner.log_step=3,,config.runner.eval_step=3,,config.runner.save_step=3,,"
    "config.downstream_expert.datarc.num_workers=0,,config.downstream_expert.datarc.train_batch_size=4,,"
    "config.downstream_expert.datarc.file_path='{root}'"
)

# Runs the real launcher in a fresh interpreter and records the upstream's full state around train().
_RECORDING_LAUNCHER = """
import sys, torch
from torch import nn
from s3prl_adapters.bridge import launcher, runner_hook
out = sys.argv[1]
original_train = runner_hook.AdapterRunner.train
def train(self):
    model = self.upstream.model
    before = {k: v.clone() for k, v in nn.Module.state_dict(model).items()}
    original_train(self)
    torch.save({"before": before, "after": nn.Module.state_dict(model),
                "trainable": model.trainable_parameter_names()}, out)
runner_hook.AdapterRunner.train = train
launcher.main(sys.argv[2:])
"""


def _load(path):
    torch.serialization.add_safe_globals([argparse.Namespace])
    return torch.load(path, map_location="cpu")


@pytest.fixture(scope="module")
def trained(tiny_ckpt, tiny_fsc, tmp_path_factory):
    expdir = tmp_path_factory.mktemp("exp") / "ic_ladapter"
    record = str(expdir.parent / "record.pt")
    argv = ["-m", "train", "-u", "wavlm_ladapter", "-k", tiny_ckpt, "-d", "fluent_commands",
            "-p", str(expdir), "-o", OVERRIDES.format(root=tiny_fsc)]
    proc = subprocess.run([sys.executable, "-c", _RECORDING_LAUNCHER, record] + argv,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return expdir, _load(record), proc


def test_training_moves_every_adapter_and_nothing_else(trained):
    _, record, proc = trained
    assert "-f is implied" in proc.stderr
    changed = {k for k in record["before"] if not torch.equal(record["before"][k], record["after"][k])}
    assert changed == set(record["trainable"])
    assert any(".e_adapter." in k for k in changed) and any(k.startswith("l_adapters.") for k in changed)


def test_checkpoint_holds_only_adapters_and_grouped_optimizer(trained):
    expdir, record, _ = trained
    ckpt = _load(expdir / "states-6.ckpt")
    assert set(ckpt["Upstream"]) == set(record["trainable"])
    assert all(torch.equal(ckpt["Upstream"][k], record["after"][k]) for k in ckpt["Upstream"])
    groups = {g["name"]: g["lr"] for g in ckpt["Optimizer"]["param_groups"]}
    # fluent_commands config, wavlm_ladapter row: head 5e-4, L 1e-5, E 1e-5, LN 1e-5; featurizer = L
    assert groups == {"head": 5e-4, "featurizer": 1e-5, "l_adapter": 1e-5, "e_adapter": 1e-5, "layer_norm": 1e-5}
    n_optimized = sum(len(g["params"]) for g in ckpt["Optimizer"]["param_groups"])
    assert n_optimized == len(record["trainable"]) + 1 + len(ckpt["Downstream"]) - 1  # featurizer: 1, head: all but best_score


def test_evaluate_from_checkpoint_rebuilds_backbone_from_k(trained):
    expdir, _, _ = trained
    os.remove(expdir / "test_predict.csv")
    proc = subprocess.run([tool("run_downstream.py"), "-m", "evaluate", "-e", str(expdir / "states-6.ckpt"), "-t", "test"],
                          capture_output=True, text=True, timeout=300, cwd=str(expdir.parent))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test acc:" in proc.stdout
    lines = (expdir / "test_predict.csv").read_text().splitlines()
    assert len(lines) == 4 and all(len(line.split(",")) == 4 for line in lines)

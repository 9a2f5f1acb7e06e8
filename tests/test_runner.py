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


def _train(argv, tmp_path, config=None):
    if config is not None:
        argv = argv + ["-c", str(config)]
    proc = subprocess.run([tool("run_downstream.py")] + argv, capture_output=True, text=True, timeout=300,
                          cwd=str(tmp_path), env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_lora_trains_saves_only_lora_and_resumes(tiny_ckpt, tiny_fsc, tmp_path):
    expdir = tmp_path / "lora"
    proc = _train(["-m", "train", "-u", "wavlm_lora", "-k", tiny_ckpt, "-d", "fluent_commands", "-p", str(expdir),
                   "-o", OVERRIDES.format(root=tiny_fsc) + ",,config.runner.max_keep=2"], tmp_path)
    assert "wavlm_lora: rank 224 on q, v of 3 layers: 129,024 trainable, against 128,867 for the proposed" in proc.stderr
    ckpt = _load(expdir / "states-6.ckpt")
    assert ckpt["Upstream"] and all(".lora_A." in k or ".lora_B." in k for k in ckpt["Upstream"])
    assert len(ckpt["Upstream"]) == 3 * 2 * 2  # 3 layers x (q, v) x (A, B)
    groups = {g["name"]: g["lr"] for g in ckpt["Optimizer"]["param_groups"]}
    assert groups == {"head": 5e-4, "featurizer": 5e-4, "lora": 1e-5}  # fluent_commands config, wavlm_lora row
    middle = _load(expdir / "states-3.ckpt")
    assert any(not torch.equal(middle["Upstream"][k], ckpt["Upstream"][k]) for k in ckpt["Upstream"] if ".lora_B." in k)
    os.remove(expdir / "states-6.ckpt")
    _train(["-m", "train", "-e", str(expdir / "states-3.ckpt")], tmp_path)
    resumed = _load(expdir / "states-6.ckpt")
    assert all(torch.equal(resumed["Upstream"][k], ckpt["Upstream"][k]) for k in ckpt["Upstream"])


def test_fine_tuning_gets_the_papers_head_and_encoder_rates(tiny_ckpt, tiny_fsc, tmp_path):
    import yaml

    argv = ["-m", "train", "-u", "wavlm_local", "-f", "-k", tiny_ckpt, "-d", "fluent_commands", "-o",
            OVERRIDES.format(root=tiny_fsc)]
    proc = _train(argv + ["-p", str(tmp_path / "ft")], tmp_path)
    groups = {g["name"]: g["lr"] for g in _load(tmp_path / "ft" / "states-6.ckpt")["Optimizer"]["param_groups"]}
    assert groups == {"head": 5e-4, "featurizer": 5e-4, "encoder": 1e-4}  # the paper's IC fine-tuning rates
    assert "optimizer groups: head" in proc.stderr and "encoder" in proc.stderr

    from s3prl_adapters.paths import CONFIG_ROOT

    stock = yaml.safe_load(open(os.path.join(CONFIG_ROOT, "fluent_commands", "config.yaml")))
    del stock["adapter_optimizer"]["wavlm_local"]
    config = tmp_path / "stock.yaml"
    config.write_text(yaml.safe_dump(stock))
    proc = _train(argv + ["-p", str(tmp_path / "stock")], tmp_path, config)  # no section: S3PRL's one rate
    groups = _load(tmp_path / "stock" / "states-6.ckpt")["Optimizer"]["param_groups"]
    assert len(groups) == 1 and groups[0]["lr"] == 1e-4 and "optimizer groups" not in proc.stderr

"""torchrun --nproc_per_node 2 through run_downstream.py: DDP (gloo on CPU) over exactly the adapters,
identical weights on both ranks, every rank exits 0, and a DDP checkpoint resumes."""

import os
import subprocess

import pytest
import torch

from conftest import REPO, tool
from s3prl_adapters.data.mini_superb import corpus_overrides

# Each rank records its upstream's DDP-reduced parameters and final state.
_RECORDING = """
import os, sys, torch
from torch import nn
from s3prl_adapters import launcher, runner_hook
out = os.environ["RECORD_PREFIX"] + os.environ["RANK"] + ".pt"
original_train = runner_hook.AdapterRunner.train
def train(self):
    ddp = self.upstream.model
    original_train(self)
    torch.save({"ddp": isinstance(ddp, nn.parallel.DistributedDataParallel),
                "reduced": [n for n, p in ddp.module.named_parameters() if p.requires_grad],
                "reduced_numel": sum(p.numel() for p in ddp._build_params_for_reducer()[0]),  # what DDP buckets
                "state": {k: v.clone() for k, v in nn.Module.state_dict(ddp.module).items()}}, out)
runner_hook.AdapterRunner.train = train
sys.argv[0] = "run_downstream.py"
launcher.main()
"""


def _torchrun(script, argv, env, tmp_path):
    cmd = [os.path.join(os.path.dirname(tool("run_downstream.py")), "torchrun"), "--nproc_per_node", "2",
           "--master_port", "29517", script] + argv
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def ddp_run(tiny_ckpt, mini_corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    script = tmp / "recording_launcher.py"
    script.write_text(_RECORDING)
    env = dict(os.environ, RECORD_PREFIX=str(tmp / "rank"), OMP_NUM_THREADS="1")
    expdir = tmp / "exp"
    steps = "config.runner.total_steps=4,,config.runner.eval_step=4,,config.runner.save_step=4,,config.runner.log_step=2"
    _torchrun(str(script), ["-m", "train", "-u", "wavlm_ladapter", "-k", tiny_ckpt, "-d", "emotion",
                            "-c", os.path.join(REPO, "downstream_configs", "emotion", "mini.yaml"), "-p", str(expdir),
                            "-o", f"{corpus_overrides('emotion', mini_corpus)},,{steps}"], env, tmp)
    return tmp, expdir, env, script


def test_ddp_reduces_only_adapters_and_ranks_agree(ddp_run):
    tmp, _, _, _ = ddp_run
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for rec in ranks:
        assert rec["ddp"]
        assert rec["reduced"] and all(".e_adapter." in n or n.startswith("l_adapters.") or "layer_norm" in n
                                      for n in rec["reduced"])
        assert rec["reduced_numel"] == sum(rec["state"][n].numel() for n in rec["reduced"])
    for key in ranks[0]["state"]:
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key


def test_ddp_checkpoint_records_world_size_and_resumes(ddp_run):
    tmp, expdir, env, script = ddp_run
    import argparse

    torch.serialization.add_safe_globals([argparse.Namespace])
    assert torch.load(expdir / "states-4.ckpt", weights_only=True)["WorldSize"] == 2
    _torchrun(str(script), ["-m", "train", "-e", str(expdir / "states-4.ckpt"),
                            "-o", "config.runner.total_steps=6,,config.runner.save_step=6,,config.runner.eval_step=6"], env, tmp)
    resumed = torch.load(expdir / "states-6.ckpt", weights_only=True)
    assert resumed["Step"] == 6 and resumed["WorldSize"] == 2

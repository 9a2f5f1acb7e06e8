"""torchrun --nproc_per_node 2 through run_downstream.py: DDP (gloo on CPU) over exactly the adapters,
identical weights on both ranks, every rank exits 0, and a DDP checkpoint resumes. Every run passes
`--device cpu`, so the tests hold on a host with one GPU as well as none."""

import os
import subprocess

import pytest
import torch

from conftest import REPO, tool
from s3prl_adapters.tasks import corpus_overrides

# Each rank records its upstream's DDP-reduced parameters and final state.
# Each rank records its upstream's DDP-reduced parameters and final state, and how often it waited
# at a barrier; with SLOW_EVAL_SECONDS, rank 0's evaluations take that much longer.
_RECORDING = """
import os, sys, time, torch
import torch.distributed as dist
from torch import nn
from s3prl_adapters.bridge import launcher, runner_hook
out = os.environ["RECORD_PREFIX"] + os.environ["RANK"] + ".pt"
barriers = []
real_barrier = dist.barrier
def barrier(*args, **kwargs):
    barriers.append(time.time())
    return real_barrier(*args, **kwargs)
dist.barrier = barrier
original_evaluate = runner_hook.AdapterRunner.evaluate
def evaluate(self, *args, **kwargs):
    time.sleep(float(os.environ.get("SLOW_EVAL_SECONDS", "0")))
    return original_evaluate(self, *args, **kwargs)
runner_hook.AdapterRunner.evaluate = evaluate
original_train = runner_hook.AdapterRunner.train
def train(self):
    ddp = self.upstream.model
    barriers.clear()  # count those inside training (S3PRL's runner has one around building the upstream)
    original_train(self)
    torch.save({"ddp": isinstance(ddp, nn.parallel.DistributedDataParallel),
                "reduced": [n for n, p in ddp.module.named_parameters() if p.requires_grad],
                "reduced_numel": sum(p.numel() for p in ddp._build_params_for_reducer()[0]),  # what DDP buckets
                "state": {k: v.clone() for k, v in nn.Module.state_dict(ddp.module).items()},
                "barriers": len(barriers)}, out)
runner_hook.AdapterRunner.train = train
sys.argv[0] = "run_downstream.py"
launcher.main()
"""


def _torchrun(script, argv, env, tmp_path, check=True):
    cmd = [os.path.join(os.path.dirname(tool("run_downstream.py")), "torchrun"), "--nproc_per_node", "2",
           "--master_port", "29517", script] + argv + ["--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0 or not check, proc.stderr[-4000:]
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
    assert ranks[0]["barriers"] == ranks[1]["barriers"] == 1  # step 4 evaluates and saves: one wait


def test_ddp_checkpoint_records_world_size_and_resumes(ddp_run):
    tmp, expdir, env, script = ddp_run
    import argparse

    torch.serialization.add_safe_globals([argparse.Namespace])
    assert torch.load(expdir / "states-4.ckpt", weights_only=True)["WorldSize"] == 2
    _torchrun(str(script), ["-m", "train", "-e", str(expdir / "states-4.ckpt"),
                            "-o", "config.runner.total_steps=6,,config.runner.save_step=6,,config.runner.eval_step=6"], env, tmp)
    resumed = torch.load(expdir / "states-6.ckpt", weights_only=True)
    assert resumed["Step"] == 6 and resumed["WorldSize"] == 2


def _short_emotion_run(tiny_ckpt, mini_corpus, expdir):
    steps = ("config.runner.total_steps=2,,config.runner.eval_step=2,,config.runner.save_step=2,,"
             "config.runner.log_step=2,,config.runner.eval_dataloaders=['dev']")
    return ["-m", "train", "-u", "wavlm_ladapter_only", "-k", tiny_ckpt, "-d", "emotion",
            "-c", os.path.join(REPO, "downstream_configs", "emotion", "mini.yaml"), "-p", str(expdir),
            "-o", f"{corpus_overrides('emotion', mini_corpus)},,{steps}"]


def test_other_ranks_wait_for_a_long_rank0_evaluation_within_the_configured_timeout(ddp_run, tiny_ckpt, mini_corpus):
    """Rank 0's evaluation takes 8 s: with --ddp_timeout 0.05 (3 s) the waiting rank times out at its
    barrier; with 1 minute the run completes, both ranks having met at that barrier after it."""
    tmp, _, env, script = ddp_run
    env = dict(env, SLOW_EVAL_SECONDS="8", RECORD_PREFIX=str(tmp / "slow"))
    short = _torchrun(str(script), _short_emotion_run(tiny_ckpt, mini_corpus, tmp / "short") + ["--ddp_timeout", "0.05"],
                      env, tmp, check=False)
    assert short.returncode != 0 and "Timed out" in short.stderr, short.stderr[-3000:]

    _torchrun(str(script), _short_emotion_run(tiny_ckpt, mini_corpus, tmp / "long") + ["--ddp_timeout", "1"], env, tmp)
    ranks = [torch.load(tmp / f"slow{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["barriers"] == ranks[1]["barriers"] == 1


def test_process_group_timeout_comes_from_the_flag_or_the_environment(monkeypatch):
    import datetime

    import torch.distributed as dist

    from s3prl_adapters.bridge import compat
    from s3prl_adapters.errors import UserError
    from s3prl_adapters.bridge.launcher import _take_ddp_timeout

    assert _take_ddp_timeout(["-m", "train"]) == (compat.DDP_TIMEOUT_MINUTES, ["-m", "train"])
    monkeypatch.setenv("S3PRL_ADAPTERS_DDP_TIMEOUT_MIN", "90")
    assert _take_ddp_timeout(["-m", "train"])[0] == 90.0
    assert _take_ddp_timeout(["--ddp_timeout", "7.5", "-m", "train"]) == (7.5, ["-m", "train"])
    with pytest.raises(UserError, match="--ddp_timeout 0: expected a number of minutes > 0"):
        _take_ddp_timeout(["--ddp_timeout=0"])

    seen = {}
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: seen.update(kw, backend=backend))
    compat.process_group_timeout_is_too_short_for_evaluation(42.0)
    dist.init_process_group("nccl")  # as S3PRL calls it: no timeout
    assert seen == {"backend": "nccl", "timeout": datetime.timedelta(minutes=42.0)}

"""scripts/gpu_check.sh: `--plan` prints the plan and runs nothing; without CUDA a plain call fails in one
line (exit 1) instead of passing for a check that never ran; the report holds each step's result as
soon as the step has ended."""

import json
import os
import subprocess

import pytest
import torch

from conftest import REPO


def _gpu_check(*args, tmp_path):
    return subprocess.run(["bash", os.path.join(REPO, "scripts", "gpu_check.sh"), "-o", str(tmp_path / "out"), *args],
                          capture_output=True, text=True, timeout=600)


def test_plan_prints_the_steps_and_runs_nothing(tmp_path):
    proc = _gpu_check("--plan", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for step in ("1. bench: s3prl-adapters bench --device cuda", "2. standins:", "3. qbe:", "4. fp16_resume:",
                 "5. nccl_ddp:", "6. ddp_tests:"):
        assert step in proc.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="asserts the behaviour of a machine without CUDA")
def test_without_cuda_it_fails_in_one_line(tmp_path):
    proc = _gpu_check(tmp_path=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("gpu_check: error: no CUDA device here"), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_each_step_is_reported_as_soon_as_it_ends(tmp_path, monkeypatch):
    """A step that fails and one that succeeds: after the first ends, the report on disk already holds it."""
    from s3prl_adapters.tools import gpu_check

    args = gpu_check.argparse.Namespace(output=str(tmp_path / "out"), budget_min=5, steps=1, bench_steps=1, fp16_steps=1,
                                        jobs=1, only=["bench", "standins"], device="cpu")
    check = gpu_check.GpuCheck(args)
    seen = {}

    def broken(self):
        raise RuntimeError("a broken bench")

    def standins(self):
        with open(os.path.join(self.out, "gpu_report.json")) as f:
            seen.update(json.load(f)["steps"])
        return {"rc": 0}

    monkeypatch.setattr(gpu_check.GpuCheck, "bench", broken)
    monkeypatch.setattr(gpu_check.GpuCheck, "standins", standins)
    for step in check.steps:
        step.run = {"bench": broken, "standins": standins}.get(step.name, step.run)
    assert check.run() == 1
    assert seen["bench"]["rc"] == "error: RuntimeError: a broken bench" and seen["standins"] == {"rc": "not run yet"}
    with open(tmp_path / "out" / "gpu_report.json") as f:
        final = json.load(f)["steps"]
    assert final["standins"]["rc"] == 0 and final["fp16_resume"] == {"rc": "not selected"}
    assert "| bench | error: RuntimeError: a broken bench |" in (tmp_path / "out" / "gpu_report.md").read_text()

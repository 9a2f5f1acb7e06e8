"""scripts/gpu_check.sh: without CUDA (CI) it prints its plan and exits 0 without running anything."""

import os
import subprocess

import torch

from conftest import REPO


def _gpu_check(*args, tmp_path):
    return subprocess.run(["bash", os.path.join(REPO, "scripts", "gpu_check.sh"), "-o", str(tmp_path / "out"), *args],
                          capture_output=True, text=True, timeout=600)


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    runs = [_gpu_check("--dry-run", tmp_path=tmp_path)]
    if not torch.cuda.is_available():
        runs.append(_gpu_check(tmp_path=tmp_path))  # the default without CUDA: the same dry run
    for proc in runs:
        assert proc.returncode == 0, proc.stderr[-2000:]
        for step in ("1. bench: s3prl-adapters bench --device cuda", "2. standins:", "3. fp16_resume:", "4. nccl_ddp:",
                     "5. ddp_tests:"):
            assert step in proc.stdout
        assert not (tmp_path / "out").exists()

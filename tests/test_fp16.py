"""fp16 that trains: one loss scaler for S3PRL's runner.fp16 path and for fp16 upstreams, its state
in every checkpoint and restored by -e (float16 autocast runs on CPU too, so all of it runs here)."""

import argparse
import os
import shutil
import subprocess

import torch

from conftest import REPO, tool
from s3prl_adapters.method.adapters import BottleneckAdapter
from s3prl_adapters.bridge.mixed_precision import Fp16Training


def test_a_gradient_below_float16_range_vanishes_unscaled_and_survives_scaled():
    torch.manual_seed(0)
    adapter = BottleneckAdapter(64, 16)  # N(0, 1e-3) weights, as every E-adapter starts
    z = torch.randn(4, 50, 64)
    weights = torch.randn(4, 50, 64)  # not uniform: a uniform gradient has no component through a LayerNorm

    def down_weight_grad(scaler):
        adapter.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            out = z + adapter(z)
        # d loss / d out = 1e-9 per element: below float16's smallest subnormal (~6e-8)
        loss = (out.float() * weights).sum() * 1e-9
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(torch.optim.SGD(adapter.parameters(), lr=0.0))
        return adapter.down.weight.grad.clone()

    unscaled = down_weight_grad(None)
    scaled = down_weight_grad(Fp16Training("cpu", autocast_forward=False).scaler)
    assert torch.count_nonzero(unscaled) == 0
    assert torch.count_nonzero(scaled) == scaled.numel() and torch.isfinite(scaled).all()


def test_scaler_state_round_trips():
    first = Fp16Training("cpu", autocast_forward=False)
    params = [torch.nn.Parameter(torch.ones(3))]
    optimizer = torch.optim.SGD(params, lr=0.1)
    for value in (float("inf"), 1.0, 1.0):  # one overflow (scale halves, step skipped), then two good steps
        first.scaler.scale(params[0].sum() * value).backward()
        first.scaler.step(optimizer)
        first.scaler.update()
        optimizer.zero_grad()
    saved = first.checkpoint_entry()
    assert saved["scale"] == 32768.0 and saved["_growth_tracker"] == 2
    resumed = Fp16Training("cpu", autocast_forward=False, saved_state=saved)
    assert resumed.scaler.get_scale() == 32768.0 and resumed.checkpoint_entry() == saved


def _load(path):
    torch.serialization.add_safe_globals([argparse.Namespace])
    return torch.load(path, weights_only=True)


_STEPS = ("config.runner.total_steps=6,,config.runner.log_step=3,,config.runner.eval_step=3,,config.runner.save_step=3,,"
          "config.runner.max_keep=2,,config.runner.eval_dataloaders=['dev'],,config.downstream_expert.datarc.num_workers=0,,"
          "config.downstream_expert.datarc.train_batch_size=4,,config.downstream_expert.datarc.file_path='{root}'")


def _train(argv, cwd):
    proc = subprocess.run([tool("run_downstream.py")] + argv, capture_output=True, text=True, timeout=600, cwd=str(cwd),
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_fp16_upstream_trains_scaled_and_resumes_with_its_scale(tiny_ckpt, tiny_fsc, tmp_path):
    yaml = tmp_path / "fp16.yaml"
    # Adapters inside fp16 too (the default keeps them in float32), so the tiny model overflows early.
    yaml.write_text("autocast: float16\nadapters_in_float32: false\n")
    expdir = tmp_path / "exp"
    proc = _train(["-m", "train", "-u", "wavlm_ladapter", "-k", tiny_ckpt, "-g", str(yaml), "-d", "fluent_commands",
                   "-c", os.path.join(REPO, "downstream_configs", "fluent_commands", "mini.yaml"), "-p", str(expdir),
                   "-o", _STEPS.format(root=tiny_fsc)], tmp_path)
    assert "fp16: loss scaling on" in proc.stderr
    middle, reference = _load(expdir / "states-3.ckpt"), _load(expdir / "states-6.ckpt")
    for ckpt in (middle, reference):
        assert set(ckpt["GradScaler"]) >= {"scale", "_growth_tracker"}
        assert ckpt["Config"]["runner"]["fp16_scaler_only"] is True  # the head stays out of autocast
    # The tiny model's first fp16 steps overflow at 65536: the scaler must have moved, so a fresh
    # scaler on resume would differ from the uninterrupted run.
    assert reference["GradScaler"]["scale"] < 65536.0

    shutil.copy(expdir / "states-3.ckpt", tmp_path / "resume-from.ckpt")
    os.remove(expdir / "states-6.ckpt")
    _train(["-m", "train", "-e", str(expdir / "states-3.ckpt")], tmp_path)
    resumed = _load(expdir / "states-6.ckpt")
    assert resumed["GradScaler"] == reference["GradScaler"]
    for part in ("Upstream", "Featurizer", "Downstream"):
        for key, value in reference[part].items():
            assert torch.equal(value, resumed[part][key]), f"{part}.{key}"


def test_stock_runner_fp16_uses_the_same_scaler_and_keeps_its_state(tiny_ckpt, tiny_fsc, tmp_path):
    expdir = tmp_path / "exp"
    _train(["-m", "train", "-u", "wavlm_local", "-f", "-k", tiny_ckpt, "-d", "fluent_commands",
            "-c", os.path.join(REPO, "downstream_configs", "fluent_commands", "mini.yaml"), "-p", str(expdir),
            "-o", _STEPS.format(root=tiny_fsc) + ",,config.runner.fp16=True"], tmp_path)
    ckpt = _load(expdir / "states-6.ckpt")
    assert "scale" in ckpt["GradScaler"]  # S3PRL's own scaler is never stored
    assert "fp16_scaler_only" not in ckpt["Config"]["runner"]

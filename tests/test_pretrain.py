"""Offline WavLM pretraining on a toy corpus, and the committed pretrained checkpoint."""

import hashlib
import os
import re

import pytest
import torch

from conftest import REPO
from s3prl_adapters.tools.pretrain import PretrainConfig, pretrain_tiny

TOY = dict(layers=1, dim=32, cnn_channels=16, clusters=8, steps=150, batch=4, crop_seconds=1.0, lr=3e-3, mix_prob=0.0,
           corpus_utterances=12, seed=0)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pretrain")
    report = pretrain_tiny(str(tmp / "a.pt"), PretrainConfig(**TOY), work_dir=str(tmp / "work"))
    return tmp, report


def test_masked_prediction_loss_goes_down(toy_run):
    _, report = toy_run
    first, last = report["losses_every_50"][0], report["final_loss"]
    print(f"toy pretraining: mean loss of steps 1-50 {first:.3f}, of the last 100 {last:.3f}")
    assert report["losses_every_50"][-1] < first - 0.1


def test_checkpoint_loads_in_wavlm_local_and_adapters(toy_run):
    from s3prl.upstream.wavlm.hubconf import wavlm_local

    from s3prl_adapters.bridge import hubconf

    tmp, _ = toy_run
    wav = [torch.randn(16000)]
    assert len(wavlm_local(str(tmp / "a.pt"))(wav)["hidden_states"]) == 2
    assert len(hubconf.wavlm_ladapter(ckpt=str(tmp / "a.pt"))(wav)["hidden_states"]) == 1


def test_deterministic_and_resumable(toy_run):
    tmp, _ = toy_run
    interrupted = tmp / "b.pt"
    first = pretrain_tiny(str(interrupted), PretrainConfig(**TOY), work_dir=str(tmp / "work"), stop_after=67)
    assert first["stopped_at"] == 67 and not interrupted.exists() and os.path.exists(f"{interrupted}.state")
    pretrain_tiny(str(interrupted), PretrainConfig(**TOY), work_dir=str(tmp / "work"))  # resumes at 67
    a = torch.load(tmp / "a.pt", weights_only=True)["model"]
    b = torch.load(interrupted, weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_committed_checkpoint_matches_its_recorded_hash_and_loads():
    assets = os.path.join(REPO, "s3prl_adapters", "assets")
    record = open(os.path.join(assets, "README.md")).read()
    expected = re.search(r"sha256 `([0-9a-f]{64})`", record).group(1)
    path = os.path.join(assets, "wavlm_tiny_pretrained.pt")
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == expected
    assert os.path.getsize(path) <= 20 * 2**20
    assert "s3prl-adapters pretrain-tiny" in record
    from s3prl_adapters.method.backbone import load_wavlm

    model = load_wavlm(path)
    assert (len(model.encoder.layers), model.cfg.encoder_embed_dim) == (4, 256)

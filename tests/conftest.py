import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")  # two threads on a 2-core box stall (s3prl.md §8)

import pytest
import torch

torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(__file__))

from fabricate import make_tiny_fsc  # noqa: E402

from s3prl_adapters.method.backbone import make_tiny_wavlm  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, ".venv", "bin")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    return make_tiny_wavlm(str(tmp_path_factory.mktemp("ckpt") / "tiny_wavlm.pt"), layers=3, dim=48, seed=0)


@pytest.fixture(scope="session")
def tiny_fsc(tmp_path_factory):
    return make_tiny_fsc(str(tmp_path_factory.mktemp("fsc")))


def leave_lora_init(expert, std=0.01):
    """LoRA starts with B = 0, so no gradient reaches A: move B off zero (for tests that need every
    trainable tensor to get a gradient). No effect on other methods."""
    with torch.no_grad():
        for name, p in expert.named_parameters():
            if ".lora_B." in name:
                p.normal_(0.0, std)


def stock_name(ours: str) -> str:
    """The name stock wavlm_local gives a backbone parameter of our expert (PEFT moves a LoRA-wrapped
    weight under `.base_layer`)."""
    return ours.replace("model.", "", 1).replace(".base_layer", "")


def tool(name):
    """Path of a console script installed into the repo's .venv (or next to the running python)."""
    for d in (BIN, os.path.dirname(sys.executable)):
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    raise FileNotFoundError(name)


@pytest.fixture(scope="session")
def mini_corpus(tmp_path_factory):
    """The default stand-in corpora (size small, seed 0): about 15 s on 2 cores."""
    from s3prl_adapters.tasks import make_mini_superb

    root = str(tmp_path_factory.mktemp("mini_superb"))
    make_mini_superb(root, size="small", seed=0)
    return root


@pytest.fixture(scope="session")
def more_corpus(tmp_path_factory):
    """KS and SID stand-ins (SID reuses the ASV stand-in's speakers, generated with it): about 10 s."""
    from s3prl_adapters.tasks import make_mini_superb

    root = str(tmp_path_factory.mktemp("more_superb"))
    manifest = make_mini_superb(root, tasks=["speech_commands", "voxceleb1"])
    assert manifest["tasks"] == ["sv_voxceleb1", "speech_commands", "voxceleb1"]
    return root

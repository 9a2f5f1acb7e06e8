"""Fast paths give the same numbers as the slow ones; the bench command runs and prints every row."""

import subprocess

import torch

from conftest import tool
from s3prl_adapters import hubconf


def _loss_and_grads(expert, backbone_trains):
    expert._backbone_trains = backbone_trains  # False: the whole backbone under no_grad
    expert.zero_grad(set_to_none=True)
    g = torch.Generator().manual_seed(3)
    wavs = [torch.randn(16000, generator=g), torch.randn(12000, generator=g)]
    loss = sum((h ** 2).mean() * (i + 1) for i, h in enumerate(expert(wavs)["hidden_states"]))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in expert.named_parameters() if p.requires_grad}


def test_l_only_no_grad_backbone_gives_the_same_loss_and_gradients(tiny_ckpt):
    expert = hubconf.wavlm_ladapter_only(ckpt=tiny_ckpt).eval()
    assert expert._backbone_trains is False  # the default fast path for L-only
    fast_loss, fast = _loss_and_grads(expert, False)
    slow_loss, slow = _loss_and_grads(expert, True)
    assert torch.equal(fast_loss, slow_loss)
    assert fast.keys() == slow.keys() and len(fast) == 12
    for name in fast:
        assert torch.allclose(fast[name], slow[name], atol=1e-7, rtol=1e-6), name


def test_frozen_prefix_builds_no_graph(tiny_ckpt):
    """Before the first trainable parameter (layer 0's LayerNorm) nothing is recorded by autograd."""
    expert = hubconf.wavlm_ladapter(ckpt=tiny_ckpt).train()
    layer_input, layer_outputs, _ = expert._run_backbone([torch.randn(16000)])
    assert layer_input.grad_fn is None and not layer_input.requires_grad
    assert layer_outputs[0].requires_grad


def test_bench_command_prints_every_row():
    proc = subprocess.run([tool("s3prl-adapters"), "bench", "--shape", "tiny", "--seconds", "0.5", "--steps", "1",
                           "--warmup", "0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split()[0] for line in proc.stdout.splitlines()[2:]]
    assert rows == ["finetune", "frozen", "houlsby", "eadapter", "ladapter_only", "ladapter"]

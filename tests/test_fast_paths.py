"""Fast paths give the same numbers as the slow ones; the bench command runs and prints every row."""

import os
import subprocess

import pytest
import torch

from conftest import REPO, tool
from s3prl_adapters.bridge import hubconf
from s3prl_adapters.tools.bench import GPU_ONLY_ROWS, ROWS


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
    layer_input, layer_output, *_ = expert.backbone_hidden_states([torch.randn(16000)])
    assert layer_input.grad_fn is None and not layer_input.requires_grad
    assert layer_output.requires_grad


def _expert_with(tiny_ckpt, tmp_path, upstream="wavlm_ladapter", **settings):
    import yaml

    path = tmp_path / f"{upstream}-{len(settings)}.yaml"
    path.write_text(yaml.safe_dump(settings))
    torch.manual_seed(0)
    return hubconf.UPSTREAMS[upstream](ckpt=tiny_ckpt, model_config=str(path)).train()


def _train_mode_loss_and_grads(expert):
    torch.manual_seed(5)  # the same dropout masks for both experts
    return _loss_and_grads(expert, expert._backbone_trains)


@pytest.mark.parametrize("mode", [True, "selective", "ffn_output"])
@pytest.mark.parametrize("upstream", ["wavlm_ladapter", "wavlm_houlsby", "wavlm_lora"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(tiny_ckpt, tmp_path, upstream, mode):
    plain = _expert_with(tiny_ckpt, tmp_path, upstream)
    recomputed = _expert_with(tiny_ckpt, tmp_path, upstream, checkpoint_activations=mode)
    assert all(isinstance(layer.__dict__.get("forward"), type(lambda: 0)) for layer in recomputed.model.encoder.layers)
    plain_loss, plain_grads = _train_mode_loss_and_grads(plain)
    loss, grads = _train_mode_loss_and_grads(recomputed)
    assert torch.equal(plain_loss, loss)  # train mode: dropout masks replayed in the recomputation
    assert grads.keys() == plain_grads.keys()
    for name in grads:
        assert torch.equal(grads[name], plain_grads[name]), name
    # Hooks fire once per forward: the recomputation in backward does not add captured states.
    assert recomputed._states._captured == []
    assert list(recomputed.state_dict()) == list(plain.state_dict())  # checkpoints unchanged


@pytest.mark.parametrize("mode,kept_per_layer", [("selective", 2), ("ffn_output", 1)])
@pytest.mark.parametrize("autocast", [None, "bfloat16"])
def test_selective_checkpointing_saves_exactly_the_chosen_feed_forward_products(tiny_ckpt, tmp_path, monkeypatch,
                                                                                autocast, mode, kept_per_layer):
    """'selective' saves both FFN products per layer and forward (fc1, fc2), 'ffn_output' fc2's
    alone, in float32 and under autocast, where the weights reach the product as low-precision
    copies; everything else is recomputed."""
    from torch.utils.checkpoint import CheckpointPolicy

    from s3prl_adapters.method import attach

    decisions, saved_shapes = [], set()

    def counting(layer, names):
        policy = make_policy(layer, names)

        def record(ctx, op, *args, **kwargs):
            decisions.append(policy(ctx, op, *args, **kwargs))
            if decisions[-1] == CheckpointPolicy.MUST_SAVE:
                saved_shapes.add(tuple(args[-1].shape))
            return decisions[-1]
        return record

    make_policy = attach.feed_forward_products_policy
    monkeypatch.setattr(attach, "feed_forward_products_policy", counting)
    settings = {"checkpoint_activations": mode, **({"autocast": autocast} if autocast else {})}
    expert = _expert_with(tiny_ckpt, tmp_path, **settings)
    _train_mode_loss_and_grads(expert)
    saved = sum(d == CheckpointPolicy.MUST_SAVE for d in decisions)
    assert saved == kept_per_layer * 2 * len(expert.model.encoder.layers)  # the forward and its recomputation
    fc1, fc2 = expert.model.encoder.layers[0].fc1, expert.model.encoder.layers[0].fc2
    want = {(fc2.in_features, fc2.out_features)} | ({(fc1.in_features, fc1.out_features)} if kept_per_layer == 2 else set())
    assert saved_shapes == want
    assert len(decisions) > 4 * saved  # the attention and the element-wise ops are recomputed


def test_bfloat16_autocast_stays_close_and_returns_float32(tmp_path):
    # The pretrained tiny backbone: a random one amplifies rounding errors through its layers.
    backbone = os.path.join(REPO, "s3prl_adapters", "assets", "wavlm_tiny_pretrained.pt")
    settings = {"backbone_dropout": False}  # training mode without dropout: the two differ by precision alone
    plain = _expert_with(backbone, tmp_path, **settings)
    bf16 = _expert_with(backbone, tmp_path, autocast="bfloat16", **settings)
    wavs = [0.1 * torch.randn(16000, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        want, got = plain(wavs)["hidden_states"], bf16(wavs)["hidden_states"]
    assert all(h.dtype == torch.float32 for h in got)
    for w, g in zip(want, got):
        assert not torch.equal(w, g)  # it really ran in bfloat16 ...
        assert (w - g).norm() / w.norm() < 0.03  # ... and stays near bfloat16's precision (measured ~0.008)


def test_evaluation_runs_in_float32_whatever_the_training_autocast(tmp_path):
    """S3PRL evaluates dev and test in eval mode; there a bf16-trained upstream gives exactly the float32
    states `predict` computes (inference runs in float32), so a run's recorded answers are reproducible."""
    backbone = os.path.join(REPO, "s3prl_adapters", "assets", "wavlm_tiny_pretrained.pt")
    plain = _expert_with(backbone, tmp_path).eval()
    bf16 = _expert_with(backbone, tmp_path, autocast="bfloat16").eval()
    wavs = [0.1 * torch.randn(16000, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        for w, g in zip(plain(wavs)["hidden_states"], bf16(wavs)["hidden_states"]):
            assert torch.equal(w, g)


@pytest.mark.parametrize("in_float32", [True, False])
def test_bfloat16_autocast_runs_the_adapters_in_float32(tmp_path, in_float32):
    """The adapters and their residual add leave autocast (adapters_in_float32, the default); the
    backbone's own matmuls stay in bfloat16 either way."""
    backbone = os.path.join(REPO, "s3prl_adapters", "assets", "wavlm_tiny_pretrained.pt")
    expert = _expert_with(backbone, tmp_path, autocast="bfloat16", adapters_in_float32=in_float32)
    seen = {}

    def record(name):
        def hook(module, args, out):
            seen.setdefault(name, (args[0].dtype, out.dtype))  # returns None: the output stays
        return hook

    layer = expert.model.encoder.layers[0]
    layer.dropout3.e_adapter.down.register_forward_hook(record("e_adapter"))
    layer.dropout3.register_forward_hook(record("residual add"))
    layer.fc1.register_forward_hook(record("fc1"))
    expert.l_adapters["0"].proj.register_forward_hook(record("l_adapter"))
    expert([0.1 * torch.randn(16000, generator=torch.Generator().manual_seed(1))])["hidden_states"][0].sum().backward()
    adapters = torch.float32 if in_float32 else torch.bfloat16
    assert seen["e_adapter"] == (adapters, adapters)
    assert seen["l_adapter"][1] == adapters
    assert seen["residual add"][1] == adapters
    assert seen["fc1"][1] == torch.bfloat16
    assert layer.dropout3.e_adapter.down.weight.grad.dtype == torch.float32


def test_bench_command_prints_every_row(tmp_path):
    def bench(*extra):
        proc = subprocess.run([tool("s3prl-adapters"), "bench", "--shape", "tiny", "--seconds", "0.5", "--steps", "1",
                               "--warmup", "0", "--device", "cpu", *extra], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return [line.split()[0] for line in proc.stdout.splitlines()[2:]]

    rows = bench()  # on CPU every row but the float16 ones (GPU rows)
    assert rows == [r[0] for r in ROWS if r[0] not in GPU_ONLY_ROWS]
    assert "ladapter+ckpt" in rows and "ladapter_only+cache" in rows and "ladapter_only+cache(cold)" in rows
    markdown = tmp_path / "bench.md"
    assert bench("--methods", *GPU_ONLY_ROWS, "--markdown", str(markdown)) == ["finetune", "frozen", *GPU_ONLY_ROWS]
    table = markdown.read_text()
    assert "| finetune+fp16 | `wavlm_local -f` | runner_fp16: True |" in table
    assert "| ladapter+fp16 | `wavlm_ladapter` | autocast: float16 |" in table


def test_a_failed_bench_row_keeps_the_others(tiny_ckpt, tmp_path):
    """A row whose child fails (here: a row the child does not know) is recorded with its reason; the rows
    around it are measured, and the tables say which row failed (ratios to a failed baseline read n/a)."""
    from s3prl_adapters.tools import bench

    rows = [r for r in ROWS if r[0] in ("finetune", "frozen")]
    results = bench.run_bench(tiny_ckpt, 1, 0.5, 1, 0, "cpu", [rows[0], ("no-such-row", "wavlm_local", False, {}), rows[1]])
    assert [r["method"] for r in results] == ["finetune", "no-such-row", "frozen"]
    assert "failed" in results[1] and "step_seconds" in results[0] and "step_seconds" in results[2]
    meta = {"shape": "tiny", "batch": 1, "seconds": 0.5, "device": "cpu", "threads": 1, "steps": 1, "warmup": 0}
    table = bench.markdown_table(results, meta)
    assert "| finetune | `wavlm_local -f` |" in table and "| frozen |" in table
    assert "Failed rows (not measured): no-such-row: " in table
    no_baseline = bench.format_table([dict(results[0], failed="out of memory"), results[2]], meta)
    assert "FAILED finetune: out of memory" in no_baseline and " n/a " in no_baseline

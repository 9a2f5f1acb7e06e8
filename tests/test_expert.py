"""The adapter-augmented WavLM against stock S3PRL wavlm_local: parity, gradients, round trip."""

import pytest
import torch

from conftest import leave_lora_init, stock_name

from s3prl.upstream.wavlm.hubconf import wavlm_local
from s3prl_adapters.bridge import hubconf
from s3prl_adapters.method.config import AdapterConfig
from s3prl_adapters.method.expert import AdapterWavLMExpert

METHOD_UPSTREAMS = sorted(hubconf.UPSTREAMS)


def _wavs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16000, generator=g), torch.randn(11000, generator=g)]


def _zero_up_projections(expert):
    for name in expert.e_adapter_names:
        up = expert.model.get_submodule(name).up
        torch.nn.init.zeros_(up.weight)
        torch.nn.init.zeros_(up.bias)


def _freeze_like(stock, ours):
    flags = {stock_name(n): p.requires_grad for n, p in ours.named_parameters() if n.startswith("model.")}
    for n, p in stock.model.named_parameters():
        p.requires_grad_(flags[n])


@pytest.mark.parametrize("upstream", ["wavlm_ladapter", "wavlm_houlsby", "wavlm_lora"])
def test_identity_adapters_give_stock_hidden_states_bit_exactly(tiny_ckpt, upstream):
    ours = hubconf.UPSTREAMS[upstream](ckpt=tiny_ckpt).eval()
    _zero_up_projections(ours)
    stock = wavlm_local(tiny_ckpt).eval()
    _freeze_like(stock, ours)
    with torch.no_grad():
        expected = stock(_wavs())["hidden_states"]
        got = ours.backbone_hidden_states(_wavs())
    assert len(got) == len(expected) == 4
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


def test_identity_adapters_match_unfrozen_stock_within_1e5(tiny_ckpt):
    ours = hubconf.wavlm_ladapter(ckpt=tiny_ckpt).eval()
    _zero_up_projections(ours)
    stock = wavlm_local(tiny_ckpt).eval()  # all parameters trainable, as S3PRL builds it
    with torch.no_grad():
        for g, e in zip(ours.backbone_hidden_states(_wavs()), stock(_wavs())["hidden_states"]):
            assert (g - e).abs().max().item() < 1e-5


def test_near_identity_init_stays_close_to_stock(tiny_ckpt):
    ours = hubconf.wavlm_eadapter(ckpt=tiny_ckpt).eval()
    stock = wavlm_local(tiny_ckpt).eval()
    _freeze_like(stock, ours)
    with torch.no_grad():
        got, expected = ours.backbone_hidden_states(_wavs()), stock(_wavs())["hidden_states"]
    diffs = [(g - e).abs().max().item() for g, e in zip(got, expected)]
    assert diffs[0] == 0.0  # nothing precedes layer 0's input
    assert 0 < max(diffs) < 0.5  # E ~ identity plus a small LayerNorm-ed perturbation


def test_l_adapter_outputs_are_the_hidden_states(tiny_ckpt):
    ours = hubconf.wavlm_ladapter(ckpt=tiny_ckpt).eval()
    with torch.no_grad():
        out = ours(_wavs())["hidden_states"]
        layer_outputs = ours.backbone_hidden_states(_wavs(), alone=True)[1:]  # what forward reads in eval mode
    assert len(out) == 3 and all(h.shape == (2, 49, 512) for h in out)
    assert torch.equal(out[1], ours.l_adapters["1"](layer_outputs[1]))


@pytest.mark.parametrize("upstream", METHOD_UPSTREAMS)
def test_exactly_the_adapters_get_gradients_and_the_backbone_never_moves(tiny_ckpt, upstream):
    torch.manual_seed(0)
    expert = hubconf.UPSTREAMS[upstream](ckpt=tiny_ckpt).train()
    leave_lora_init(expert)
    frozen_before = {n: p.detach().clone() for n, p in expert.named_parameters() if not p.requires_grad}
    trainable = [n for n, p in expert.named_parameters() if p.requires_grad]
    assert set(trainable) == set(expert.state_dict())

    hidden = expert(_wavs())["hidden_states"]
    loss = sum((h ** 2).mean() * (i + 1) for i, h in enumerate(hidden))
    loss.backward()
    for n, p in expert.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n

    torch.optim.Adam([p for p in expert.parameters() if p.requires_grad], lr=1e-2).step()
    for n, p in expert.named_parameters():
        if n in frozen_before:
            assert torch.equal(p, frozen_before[n]), n


def test_l_only_runs_the_backbone_without_autograd(tiny_ckpt):
    expert = hubconf.wavlm_ladapter_only(ckpt=tiny_ckpt).train()
    assert not any(p.requires_grad for p in expert.model.parameters())
    layer_outputs = expert.backbone_hidden_states(_wavs())[1:]
    assert all(h.grad_fn is None and not h.requires_grad for h in layer_outputs)
    assert expert(_wavs())["hidden_states"][0].requires_grad


def test_trainable_layer_norms_switch_for_l_only(tiny_ckpt, tmp_path):
    cfg = tmp_path / "g.yaml"
    cfg.write_text("train_layer_norms: true\n")
    expert = hubconf.wavlm_ladapter_only(ckpt=tiny_ckpt, model_config=str(cfg))
    lns = [n for n in expert.trainable_parameter_names() if "layer_norm" in n and n.startswith("model.")]
    assert len(lns) == 3 * 2 * 2  # 3 layers x 2 LNs x (weight, bias)


@pytest.mark.parametrize("upstream", METHOD_UPSTREAMS)
def test_adapter_only_state_round_trips_into_a_fresh_upstream(tiny_ckpt, upstream):
    torch.manual_seed(1)
    trained = hubconf.UPSTREAMS[upstream](ckpt=tiny_ckpt).eval()
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    state = trained.state_dict()
    assert not any(k.startswith("model.") and "adapter" not in k and "layer_norm" not in k and ".lora_" not in k
                   for k in state)
    assert set(state) == set(trained.trainable_parameter_names())  # exactly what trains, nothing of the backbone
    fresh = hubconf.UPSTREAMS[upstream](ckpt=tiny_ckpt).eval()
    fresh.load_state_dict(state)
    with torch.no_grad():
        for a, b in zip(trained(_wavs())["hidden_states"], fresh(_wavs())["hidden_states"]):
            assert torch.equal(a, b)


def test_adapter_state_from_another_method_or_shape_is_refused(tiny_ckpt, tmp_path):
    from s3prl_adapters.method.backbone import make_tiny_wavlm
    from s3prl_adapters.errors import UserError

    l_only = hubconf.wavlm_ladapter_only(ckpt=tiny_ckpt)
    with pytest.raises(UserError, match="another method"):
        hubconf.wavlm_ladapter(ckpt=tiny_ckpt).load_state_dict(l_only.state_dict())
    wider = make_tiny_wavlm(str(tmp_path / "wide.pt"), layers=3, dim=64)
    with pytest.raises(UserError, match=r"\(512, 48\) in the checkpoint but \(512, 64\) here"):
        hubconf.wavlm_ladapter_only(ckpt=wider).load_state_dict(l_only.state_dict())


def test_expert_takes_its_components(tiny_ckpt):
    from s3prl_adapters.method.backbone import load_wavlm

    expert = AdapterWavLMExpert(load_wavlm(tiny_ckpt), AdapterConfig(method="proposed", e_adapter_dim=8, l_adapter_dim=16))
    assert expert.l_adapters["0"].proj.out_features == 16
    assert expert.e_adapter_names == ["encoder.layers.0.dropout3.e_adapter", "encoder.layers.1.dropout3.e_adapter"]

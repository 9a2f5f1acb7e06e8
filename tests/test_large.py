"""Every method on a WavLM Large-layout backbone (pre-LN layers, LayerNorm CNN, waveform normalisation),
on a tiny config of that layout: placement, parity with stock wavlm_local, counts, HF conversion."""

import json
import subprocess

import pytest
import torch

from conftest import leave_lora_init, stock_name, tool
from s3prl.upstream.wavlm.hubconf import wavlm_local
from s3prl_adapters.bridge import hubconf
from s3prl_adapters.method.backbone import LARGE_CFG, load_wavlm, make_tiny_wavlm

METHOD_UPSTREAMS = sorted(hubconf.UPSTREAMS)


@pytest.fixture(scope="module")
def tiny_large(tmp_path_factory):
    return make_tiny_wavlm(str(tmp_path_factory.mktemp("large") / "tiny_large.pt"), layers=3, dim=48, seed=0, large=True)


def _wavs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16000, generator=g) * 0.3 + 0.1, torch.randn(11000, generator=g)]


def _freeze_like(stock, ours):
    flags = {stock_name(n): p.requires_grad for n, p in ours.named_parameters() if n.startswith("model.")}
    for n, p in stock.model.named_parameters():
        p.requires_grad_(flags[n])


def test_the_tiny_backbone_has_large_s_layout(tiny_large):
    model = load_wavlm(tiny_large)
    assert model.cfg.layer_norm_first and model.cfg.normalize and model.cfg.extractor_mode == "layer_norm"
    assert all(layer.layer_norm_first for layer in model.encoder.layers)


@pytest.mark.parametrize("upstream", METHOD_UPSTREAMS)
def test_identity_adapters_give_stock_hidden_states_bit_exactly(tiny_large, upstream):
    ours = hubconf.UPSTREAMS[upstream](ckpt=tiny_large).eval()
    for name in ours.e_adapter_names:  # zero up-projection: E(z) = z + LN(0) = z exactly
        up = ours.model.get_submodule(name).up
        torch.nn.init.zeros_(up.weight)
        torch.nn.init.zeros_(up.bias)
    stock = wavlm_local(tiny_large).eval()
    _freeze_like(stock, ours)
    with torch.no_grad():
        expected = stock(_wavs())["hidden_states"]
        got = ours.backbone_hidden_states(_wavs())
    assert len(got) == len(expected) == 4
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


def test_e_adapters_sit_at_the_ffn_output_before_its_residual_add(tiny_large):
    """Pre-LN layer: out = (in + attention branch) + (ffn + E-adapter(ffn)); no LayerNorm after the add."""
    ours = hubconf.wavlm_ladapter(ckpt=tiny_large).eval()
    layer = ours.model.encoder.layers[0]
    seen = {}
    layer.register_forward_pre_hook(lambda m, args: seen.__setitem__("in", args[0]))
    layer.dropout1.register_forward_hook(lambda m, args, out: seen.__setitem__("attention", out))
    layer.fc2.register_forward_hook(lambda m, args, out: seen.__setitem__("ffn", out))
    adapter = layer.dropout3.e_adapter
    adapter.register_forward_hook(lambda m, args, out: seen.update(adapter_in=args[0], adapter_out=out))
    layer.register_forward_hook(lambda m, args, out: seen.__setitem__("out", out[0]))
    with torch.no_grad():
        ours(_wavs())
    assert torch.equal(seen["adapter_in"], seen["ffn"])  # eval: dropout3 is the identity
    assert seen["adapter_out"].abs().max() > 0
    assert torch.equal(seen["out"], (seen["in"] + seen["attention"]) + (seen["ffn"] + seen["adapter_out"]))


def test_l_adapters_read_the_encoder_output_for_the_top_layer(tiny_large):
    ours = hubconf.wavlm_ladapter_only(ckpt=tiny_large).eval()
    with torch.no_grad():  # both sides without autograd: torch 2.5 takes another LayerNorm kernel with it
        states = ours.backbone_hidden_states(_wavs(), alone=True)  # what forward reads in eval mode
        out = ours(_wavs())["hidden_states"]
        top = len(out) - 1
        assert torch.equal(out[top], ours.l_adapters[str(top)](states[-1]))  # after the encoder's final LayerNorm


@pytest.mark.parametrize("upstream", METHOD_UPSTREAMS)
def test_exactly_the_adapters_train_on_large(tiny_large, upstream):
    expert = hubconf.UPSTREAMS[upstream](ckpt=tiny_large).train()
    leave_lora_init(expert)
    hidden = expert(_wavs())["hidden_states"]
    sum((h ** 2).mean() * (i + 1) for i, h in enumerate(hidden)).backward()
    for n, p in expert.named_parameters():
        assert (p.grad is not None and p.grad.abs().sum() > 0) if p.requires_grad else p.grad is None, n


# WavLM Large counts, heads excluded (24 layers x 1024, FFN 4096, 16 heads; adapters 256 / 512).
LARGE_EXPECTED = {
    "wavlm_local -f": 24 * (4 * (1024 * 1024 + 1024) + (64 * 8 + 8 + 16) + (2 * 1024 * 4096 + 4096 + 1024) + 4 * 1024)
    + 320 * 16,
    "wavlm_local": 25,
    "wavlm_ladapter": 24 * (1024 * 512 + 512 + 2 * 512) + 24 + 23 * (2 * 1024 * 256 + 256 + 1024 + 2 * 1024) + 24 * 4 * 1024,
    "wavlm_ladapter_only": 24 * (1024 * 512 + 512 + 2 * 512) + 24,
    "wavlm_eadapter": 24 * (2 * 1024 * 256 + 256 + 1024 + 2 * 1024) + 24 * 4 * 1024,
    "wavlm_houlsby": 48 * (2 * 1024 * 256 + 256 + 1024 + 2 * 1024) + 24 * 4 * 1024,
    "wavlm_lora": 253 * 24 * 2 * (1024 + 1024),  # rank nearest the proposed count (24,853,272 / 98,304)
}


def test_params_reports_the_large_counts():
    out = subprocess.run([tool("s3prl-adapters"), "params", "--backbone", "large", "--json"],
                         capture_output=True, text=True, check=True).stdout
    rows = {r["upstream"]: r for r in json.loads(out)}
    assert {k: rows[k]["method_trainable"] for k in LARGE_EXPECTED} == LARGE_EXPECTED
    assert rows["wavlm_local -f"]["method_trainable"] == 302_327_360


def _hf_large_folder(folder, do_normalize):
    from transformers import WavLMConfig, WavLMModel

    torch.manual_seed(0)
    config = WavLMConfig(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
                         conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                         do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=False)
    model = WavLMModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(folder)
    if do_normalize is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps({"do_normalize": do_normalize}))
    return model


def test_convert_hf_large_folder_matches_transformers(tmp_path):
    folder = tmp_path / "wavlm-large-tiny"
    hf = _hf_large_folder(folder, do_normalize=True)
    expert = hubconf.wavlm_eadapter(ckpt=str(folder)).eval()
    assert expert.model.cfg.layer_norm_first and expert.model.cfg.normalize
    assert expert.model.cfg.extractor_mode == "layer_norm" and expert.model.cfg.conv_bias is False
    for name in expert.e_adapter_names:
        torch.nn.init.zeros_(expert.model.get_submodule(name).up.weight)
    for p in hf.parameters():  # freeze both alike (the attention kernel path depends on it)
        p.requires_grad_(False)
    wav = torch.randn(16000, generator=torch.Generator().manual_seed(1)) * 0.2 + 0.05
    with torch.no_grad():
        ours = expert.backbone_hidden_states([wav])  # normalises the waveform itself (cfg.normalize)
        normalised = torch.nn.functional.layer_norm(wav, wav.shape)  # what the feature extractor hands HF
        expected = hf(normalised[None], output_hidden_states=True).hidden_states
    assert len(ours) == len(expected) == 4
    for g, e in zip(ours, expected):
        assert (g - e).abs().max().item() < 1e-4


@pytest.mark.parametrize("do_normalize, expected", [(False, False), (None, True)])
def test_normalisation_comes_from_the_preprocessor_config(tmp_path, do_normalize, expected):
    from s3prl_adapters.method.hf_convert import convert_hf_folder

    folder = tmp_path / "hf"
    _hf_large_folder(folder, do_normalize)
    assert convert_hf_folder(str(folder))["cfg"]["normalize"] is expected


def test_large_cfg_is_the_released_layout():
    assert (LARGE_CFG["encoder_layers"], LARGE_CFG["encoder_embed_dim"], LARGE_CFG["encoder_ffn_embed_dim"],
            LARGE_CFG["encoder_attention_heads"]) == (24, 1024, 4096, 16)
    assert LARGE_CFG["layer_norm_first"] and LARGE_CFG["normalize"] and LARGE_CFG["extractor_mode"] == "layer_norm"

"""A transformers WavLM folder converts into S3PRL's format with the same hidden states."""

import pytest
import torch

from s3prl_adapters.bridge import hubconf
from s3prl_adapters.method.backbone import load_wavlm
from s3prl_adapters.errors import UserError


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    from transformers import WavLMConfig, WavLMModel

    torch.manual_seed(0)
    config = WavLMConfig(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
                         conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    model = WavLMModel(config).eval()
    with torch.no_grad():  # random, non-trivial values everywhere (HF initialises some tensors to 0/1)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    folder = tmp_path_factory.mktemp("wavlm-hf")
    model.save_pretrained(folder)
    return folder, model


def test_converted_hidden_states_match_transformers(hf_folder):
    folder, hf = hf_folder
    ours = load_wavlm(str(folder)).eval()
    for p in ours.parameters():  # freeze both alike (the attention kernel path depends on it)
        p.requires_grad_(False)
    for p in hf.parameters():
        p.requires_grad_(False)
    wav = torch.randn(1, 16000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(wav, output_hidden_states=True).hidden_states
        _, layer_results = ours.extract_features(wav, padding_mask=torch.zeros_like(wav, dtype=torch.bool),
                                                 output_layer=3, ret_layer_results=True)[0]
    got = [x.transpose(0, 1) for x, _ in layer_results]
    assert len(got) == len(expected) == 4
    for g, e in zip(got, expected):
        assert (g - e).abs().max().item() < 1e-4


def test_k_accepts_the_folder(hf_folder):
    folder, _ = hf_folder
    expert = hubconf.wavlm_ladapter(ckpt=str(folder))
    assert len(expert(torch.randn(1, 8000).unbind(0))["hidden_states"]) == 3


def test_folder_without_config_is_named(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_wavlm(str(tmp_path))

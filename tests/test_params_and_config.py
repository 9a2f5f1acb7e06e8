"""Parameter counts for the Base+ shape (method.md §5) and the -g adapter config validation."""

import json
import subprocess

import pytest

from conftest import tool
from s3prl_adapters.method.config import adapter_config_from_dict, load_adapter_config
from s3prl_adapters.errors import UserError
from s3prl_adapters.method.params import parameter_table

# Reference-code counts, heads excluded (method.md §5 and §9).
EXPECTED = {
    "wavlm_local -f": 85_064_688,
    "wavlm_local": 13,
    "wavlm_houlsby": 9_535_488,
    "wavlm_eadapter": 4_786_176,
    "wavlm_ladapter_only": 4_737_036,
    "wavlm_ladapter": 9_127_436,
    "wavlm_lora": 248 * 12 * 2 * (768 + 768),  # the rank nearest the proposed count: 9,142,272
}


def test_base_plus_counts_equal_the_reference_to_the_unit():
    rows = {r.upstream: r for r in parameter_table("base_plus")}
    assert {k: rows[k].method_trainable for k in EXPECTED} == EXPECTED
    assert rows["wavlm_ladapter"].percent_of_finetuning == 10.73
    assert rows["wavlm_local"].total == 94_381_936  # S3PRL's Base+-shaped WavLM (s3prl.md: 94.4 M)


def test_params_command_prints_json_for_a_checkpoint(tiny_ckpt):
    out = subprocess.run([tool("s3prl-adapters"), "params", "--backbone", tiny_ckpt, "--json"],
                         capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)
    assert [r["upstream"] for r in rows] == list(EXPECTED)


def test_l_only_with_layer_norms_matches_the_reference_code_count(tmp_path):
    from s3prl_adapters.method.backbone import BASE_PLUS_CFG, build_wavlm
    from s3prl_adapters.method.expert import AdapterWavLMExpert

    cfg = adapter_config_from_dict("l_only", {"train_layer_norms": True})
    expert = AdapterWavLMExpert(build_wavlm(BASE_PLUS_CFG), cfg)
    assert sum(p.numel() for p in expert.parameters() if p.requires_grad) + 12 == 4_773_900


@pytest.mark.parametrize(
    "values, message",
    [
        ({"bottleneck": 64}, r"unknown key\(s\) \['bottleneck'\]"),
        ({"e_adapter_dim": "big"}, "'e_adapter_dim' must be int, got str"),
        ({"e_adapter_dim": 0}, "'e_adapter_dim' must be >= 1"),
        ({"activation": "tanh"}, "'activation' must be one of"),
        ({"train_layer_norms": "yes"}, "'train_layer_norms' must be bool"),
        ({"e_adapter_layers": [0, "x"]}, "list of layer indices"),
    ],
)
def test_bad_adapter_settings_are_named(values, message):
    with pytest.raises(UserError, match=message):
        adapter_config_from_dict("proposed", values)


def test_layer_index_out_of_range_names_the_depth():
    cfg = adapter_config_from_dict("proposed", {"e_adapter_layers": [0, 12]})
    with pytest.raises(UserError, match=r"\[12\] out of range for a backbone with 12 layers"):
        cfg.resolved(12)


def test_method_defaults_resolve_per_method():
    proposed = adapter_config_from_dict("proposed", {}).resolved(12)
    assert proposed.e_adapter_layers == list(range(11)) and proposed.train_layer_norms
    assert not adapter_config_from_dict("l_only", {}).resolved(12).train_layer_norms
    assert adapter_config_from_dict("conventional", {}).resolved(12).attention_adapters


def test_yaml_file_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        load_adapter_config("proposed", str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("e_adapter_dim: [1\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_adapter_config("proposed", str(bad))

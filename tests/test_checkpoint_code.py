"""A checkpoint must not run code: S3PRL's WavLM `eval()`s `cfg.conv_feature_layers`, so a crafted
string would execute on load. Every entry point that loads a WavLM refuses it in one line, and the
string's side effect (creating a file) never happens."""

import argparse
import json
import os
import subprocess

import pytest
import torch

from conftest import tool
from s3prl_adapters.method.backbone import build_wavlm, parse_layer_spec, tiny_cfg
from s3prl_adapters.errors import UserError

_TINY_SPEC = "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2"


def _crafted(tmp_path):
    marker = tmp_path / "PWNED"
    model = build_wavlm(tiny_cfg(), seed=0)
    cfg = dict(model.cfg.__dict__)
    cfg["conv_feature_layers"] = f"__import__('pathlib').Path({str(marker)!r}).touch() or {_TINY_SPEC}"
    path = tmp_path / "evil_wavlm.pt"
    torch.save({"cfg": cfg, "model": model.state_dict()}, path)
    return path, marker


def _run(argv, cwd):
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=str(cwd),
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def _refused(proc, path, marker):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert f"{path}: cfg field 'conv_feature_layers' refused" in proc.stderr, proc.stderr[-2000:]
    assert not marker.exists()


@pytest.mark.parametrize("upstream", ["wavlm_ladapter", "wavlm_local"])
def test_k_with_code_in_its_cfg_is_refused(upstream, tmp_path, tiny_fsc):
    path, marker = _crafted(tmp_path)
    proc = _run([tool("run_downstream.py"), "-m", "train", "-u", upstream, "-k", str(path), "-d", "fluent_commands",
                 "-p", str(tmp_path / "exp"), "-o", f"config.downstream_expert.datarc.file_path='{tiny_fsc}'"], tmp_path)
    _refused(proc, path, marker)


def test_e_whose_backbone_has_code_is_refused(tmp_path):
    path, marker = _crafted(tmp_path)
    states = tmp_path / "states-1.ckpt"
    torch.save({"Args": argparse.Namespace(upstream="wavlm_local", upstream_ckpt=str(path)), "Step": 1}, states)
    proc = _run([tool("run_downstream.py"), "-m", "evaluate", "-e", str(states)], tmp_path)
    _refused(proc, path, marker)


def test_tools_refuse_it(tmp_path):
    path, marker = _crafted(tmp_path)
    for argv in (["params", "--backbone", str(path)], ["bench", "--checkpoint", str(path)]):
        _refused(_run([tool("s3prl-adapters")] + argv, tmp_path), path, marker)


def test_convert_hf_refuses_code_in_config_json(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    marker = tmp_path / "PWNED"
    (folder / "config.json").write_text(json.dumps({
        "model_type": "wavlm", "conv_dim": [f"__import__('pathlib').Path({str(marker)!r}).touch() or 32"] * 7,
        "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2]}))
    proc = _run([tool("s3prl-adapters"), "convert-hf", str(folder), str(tmp_path / "out.pt")], tmp_path)
    assert proc.returncode == 2 and "'conv_dim' must be a list of positive ints" in proc.stderr
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_layer_spec_parser_reads_literals_only():
    assert parse_layer_spec(_TINY_SPEC) == eval(_TINY_SPEC)  # noqa: S307 - a fixed literal, for comparison
    assert parse_layer_spec("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2") == \
        [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    assert parse_layer_spec("2 * [(1, -2, 3.5)]") == [(1, -2, 3.5)] * 2
    for bad in ("__import__('os')", "[x for x in range(3)]", "[(1,2,3)] * 10**9", "[(1,2,3)] * 100000",
                "open('f')", "[(1,2,3)].__class__", "lambda: 0", "[(1,2,'a')]", "[(1,2,3)] + 1", "{1: 2}"):
        with pytest.raises(ValueError):
            parse_layer_spec(bad)


def test_loading_in_process_is_refused_too(tmp_path):
    from s3prl_adapters.method.backbone import load_wavlm

    path, marker = _crafted(tmp_path)
    with pytest.raises(UserError, match="cfg field 'conv_feature_layers' refused"):
        load_wavlm(str(path))
    assert not marker.exists()

"""Expected mistakes end in one line naming the culprit, exit code 2, and no traceback."""

import subprocess

import pytest

from conftest import tool


def _run(*argv):
    return subprocess.run([tool("run_downstream.py"), *argv], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-m", "train", "-u", "wavlm_ladaptr", "-d", "fluent_commands", "-n", "x"],
         "-u wavlm_ladaptr: unknown upstream; adapter upstreams: ['wavlm_eadapter', 'wavlm_houlsby', 'wavlm_ladapter', 'wavlm_ladapter_only']"),
        (["-m", "train", "-u", "wavlm_ladapter", "-d", "fluent", "-n", "x"], "-d fluent: unknown task; valid: ["),
        (["-m", "train", "-u", "wavlm_ladapter", "-d", "fluent_commands", "-c", "/nope.yaml", "-n", "x"],
         "-c /nope.yaml: no such config file"),
        (["-m", "evaluate", "-e", "/nope/states-1.ckpt"], "-e /nope/states-1.ckpt: no such checkpoint"),
    ],
)
def test_bad_arguments_get_one_line(argv, message, tmp_path):
    proc = _run(*argv)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "WavLM-Base+.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = _run("-m", "train", "-u", "wavlm_ladapter", "-k", str(bad), "-d", "fluent_commands", "-p", str(tmp_path / "e"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"-k {bad}: not a readable PyTorch checkpoint" in proc.stderr


def test_not_a_wavlm_checkpoint(tmp_path):
    import torch

    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    proc = _run("-m", "train", "-u", "wavlm_eadapter", "-k", str(path), "-d", "fluent_commands", "-p", str(tmp_path / "e"))
    assert proc.returncode == 2 and "not a WavLM checkpoint (expected keys 'cfg' and 'model'" in proc.stderr

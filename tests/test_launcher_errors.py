"""Expected mistakes end in one line naming the culprit, exit code 2, and no traceback."""

import os
import subprocess

import pytest

from conftest import tool
from s3prl_adapters.errors import UserError


def _run(*argv):
    return subprocess.run([tool("run_downstream.py"), *argv], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-m", "train", "-u", "wavlm_ladaptr", "-d", "fluent_commands", "-n", "x"],
         "-u wavlm_ladaptr: unknown upstream; adapter upstreams: ['wavlm_eadapter', 'wavlm_houlsby', 'wavlm_ladapter', 'wavlm_ladapter_only', 'wavlm_lora']"),
        (["-m", "train", "-u", "wavlm_ladapter", "-d", "fluent", "-n", "x"], "-d fluent: unknown task; valid: ["),
        (["-m", "train", "-u", "wavlm_ladapter", "-d", "fluent_commands", "-c", "/nope.yaml", "-n", "x"],
         "-c /nope.yaml: no such config file"),
        (["-m", "evaluate", "-e", "/nope/states-1.ckpt"], "-e /nope/states-1.ckpt: no such checkpoint"),
        (["-m", "train", "-u", "wavlm_ladapter", "-d", "quesst14_dtw", "-n", "x"],
         "-d quesst14_dtw: QBE trains nothing; score one layer with -m evaluate -t dev|test -l LAYER, or every layer "
         "with s3prl-adapters qbe"),
    ],
)
def test_bad_arguments_get_one_line(argv, message, tmp_path):
    proc = _run(*argv)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def _fsc(root):
    return f"config.downstream_expert.datarc.file_path='{root}'"


def test_bad_checkpoint_names_the_file(tmp_path, tiny_fsc):
    bad = tmp_path / "WavLM-Base+.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = _run("-m", "train", "-u", "wavlm_ladapter", "-k", str(bad), "-d", "fluent_commands", "-p", str(tmp_path / "e"),
                "-o", _fsc(tiny_fsc))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"-k {bad}: not a readable PyTorch checkpoint" in proc.stderr


def test_not_a_wavlm_checkpoint(tmp_path, tiny_fsc):
    import torch

    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    proc = _run("-m", "train", "-u", "wavlm_eadapter", "-k", str(path), "-d", "fluent_commands", "-p", str(tmp_path / "e"),
                "-o", _fsc(tiny_fsc))
    assert proc.returncode == 2 and "not a WavLM checkpoint (expected keys 'cfg' and 'model'" in proc.stderr


@pytest.mark.parametrize("task, override, message", [
    ("fluent_commands", "config.downstream_expert.datarc.file_path='/nope/fsc'",
     "-d fluent_commands: Fluent Speech Commands root /nope/fsc does not exist"),
    ("emotion", "config.downstream_expert.datarc.root='/tmp',,config.downstream_expert.datarc.meta_data='/nope/meta'",
     "fold meta data (s3prl-adapters prepare-iemocap writes it) /nope/meta/Session1/train_meta_data.json does not exist"),
    ("asr", "config.downstream_expert.datarc.libri_root='/nope/LibriSpeech'", "LibriSpeech root /nope/LibriSpeech does not exist"),
    ("sv_voxceleb1", "config.downstream_expert.datarc.file_path='/tmp'", "VoxCeleb1 dev audio folder /tmp/dev/wav does not exist"),
    ("quesst14_dtw", "config.downstream_expert.datarc.dataset_root='/nope/q'",
     "-d quesst14_dtw: QUESST 2014 folder (quesst14Database) /nope/q does not exist"),
])
def test_missing_corpus_parts_are_named(task, override, message, tiny_ckpt, tmp_path):
    mode = ["-m", "train"] if task != "quesst14_dtw" else ["-m", "evaluate", "-t", "dev"]  # QbE trains nothing
    proc = _run(*mode, "-u", "wavlm_ladapter", "-k", tiny_ckpt, "-d", task, "-p", str(tmp_path / "e"), "-o", override)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in proc.stderr


@pytest.mark.parametrize("damage, message", [
    ("missing", "which does not exist"),
    ("corrupt", "is not readable audio"),
    ("stereo", "is 16000 Hz with 2 channel(s); the recipe needs 16 kHz mono"),
    ("8k", "is 8000 Hz with 1 channel(s)"),
])
@pytest.mark.parametrize("split", ["test", "train"])
def test_bad_audio_is_named(split, damage, message, tiny_ckpt, tiny_fsc, tmp_path):
    import shutil

    import numpy as np
    import pandas as pd
    import soundfile as sf

    root = tmp_path / "fsc"
    shutil.copytree(tiny_fsc, root)
    victim = root / pd.read_csv(root / "data" / f"{split}_data.csv")["path"][0]
    if damage == "missing":
        victim.unlink()
    elif damage == "corrupt":
        victim.write_bytes(b"RIFF\x00\x00garbage")
    else:
        sf.write(victim, np.zeros((8000, 2) if damage == "stereo" else 4000, dtype="float32"),
                 16000 if damage == "stereo" else 8000)
    proc = _run("-m", "train", "-u", "wavlm_ladapter", "-k", tiny_ckpt, "-d", "fluent_commands", "-p", str(tmp_path / "e"),
                "-o", _fsc(root))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(victim) in proc.stderr and message in proc.stderr


def test_a_passed_audio_check_is_remembered_until_a_file_changes(tiny_fsc, tmp_path, monkeypatch):
    import shutil

    import pandas as pd

    from s3prl_adapters.errors import UserError
    from s3prl_adapters.bridge.preflight import check_listed_audio

    monkeypatch.setenv("S3PRL_ADAPTERS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "fsc"
    shutil.copytree(tiny_fsc, root)
    config = {"downstream_expert": {"datarc": {"file_path": str(root)}}, "runner": {}}
    assert check_listed_audio("fluent_commands", config) == 16 + 4 + 4
    assert len(os.listdir(tmp_path / "cache" / "audio_checks")) == 1
    victim = root / pd.read_csv(root / "data" / "train_data.csv")["path"][3]
    victim.write_bytes(b"RIFF\x00\x00garbage")  # new size and mtime: the stamp no longer applies
    with pytest.raises(UserError, match=f"{victim} is not readable audio"):
        check_listed_audio("fluent_commands", config)


def test_preflight_can_be_switched_off_and_skips_tasks_it_does_not_know(capsys):
    from s3prl_adapters.bridge.preflight import check_corpus

    broken = {"downstream_expert": {"datarc": {"file_path": "/nope/fsc"}}, "runner": {}}
    assert check_corpus("fluent_commands", dict(broken, preflight=False)) is None
    assert "preflight: off (config preflight: false)" in capsys.readouterr().err
    for task, config in (("example", broken), ("quesst14_dtw", {"downstream_expert": {}, "runner": {}}),
                         ("fluent_commands", {"downstream_expert": {"modelrc": {}}, "runner": {}})):
        assert check_corpus(task, config) is None  # no KeyError for a config without datarc
        assert f"preflight: no corpus checks for -d {task}" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"-d speech_commands: config downstream_expert.datarc has no "
                                        r"'speech_commands_root', which the recipe reads"):
        check_corpus("speech_commands", broken)


def test_preflight_runs_on_rank_0_only(monkeypatch):
    import torch.distributed as dist

    from s3prl_adapters.bridge.preflight import check_corpus

    broken = {"downstream_expert": {"datarc": {"file_path": "/nope/fsc"}}, "runner": {}}
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    assert check_corpus("fluent_commands", broken) is None
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    with pytest.raises(UserError, match="Fluent Speech Commands root /nope/fsc does not exist"):
        check_corpus("fluent_commands", broken)


def test_one_walk_per_start_serves_the_preflight_and_the_asv_length_cache(mini_corpus, tmp_path, monkeypatch):
    from s3prl_adapters.bridge import compat, preflight
    from s3prl_adapters.data import files
    from s3prl_adapters.tasks import corpus_overrides

    monkeypatch.setenv("S3PRL_ADAPTERS_CACHE", str(tmp_path / "cache"))
    walks = []
    real_walk = files._walk
    monkeypatch.setattr(files, "_walk", lambda root: walks.append(root) or real_walk(root))
    datarc = {k.split(".")[-1]: v.strip("'") for k, v in (kv.split("=", 1) for kv in
              corpus_overrides("sv_voxceleb1", mini_corpus).split(",,"))}
    config = {"downstream_expert": {"datarc": datarc}, "runner": {}}
    facts = preflight.check_corpus("sv_voxceleb1", config)
    dev_wav = os.path.join(datarc["file_path"], "dev", "wav")
    compat._corpus_fingerprint([dev_wav])  # what the ASV length cache computes next, in the same start
    assert walks == [os.path.abspath(dev_wav)]
    assert facts["files"] > 0 and facts["train_hours"] > 0  # hours of training audio, kept in the stamp
    assert preflight.check_corpus("sv_voxceleb1", config) == facts  # warm: from the stamp

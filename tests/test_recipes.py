"""The four SUPERB recipes, unmodified, through run_downstream.py on the stand-in corpora, on CPU:
a few training steps with wavlm_ladapter, then -m evaluate on the test split."""

import os
import re
import shutil
import subprocess

import pytest

from conftest import REPO, tool
from s3prl_adapters.tasks import corpus_overrides

TASKS = {
    # task: (evaluate split, metric line, prediction file, line pattern)
    "asr": ("test-clean", r"^test-clean wer: [\d.]+$", "test-clean-noLM-hyp.ark", r"^\d+-\d+-\d{4}( [A-Z' ]*)?$"),
    "fluent_commands": ("test", r"^test acc: [\d.]+$", "test_predict.csv", r"^[0-9a-f]{16},[^,]+,[^,]+,[^,]+$"),
    "emotion": ("test", r"^test acc: [\d.]+$", "test_fold1_predict.txt", r"^Ses01[FM]_impro0\d_[FM]\d{3} (neu|hap|ang|sad)$"),
    "sv_voxceleb1": ("test", r"^sv-voxceleb1/test-EER: [\d.]+$", "test_predict.txt",
                     r"^id\d+-[0-9a-f]{11}-\d{5}_id\d+-[0-9a-f]{11}-\d{5} -?[\d.]+(e-?\d+)?$"),
}
STEPS = "config.runner.total_steps=4,,config.runner.log_step=2,,config.runner.eval_step=4,,config.runner.save_step=4"


def run_downstream(*argv, cwd, env=None):
    proc = subprocess.run([tool("run_downstream.py"), *argv], capture_output=True, text=True, timeout=600, cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize("task", list(TASKS))
def test_recipe_trains_and_evaluates_on_cpu(task, tiny_ckpt, mini_corpus, tmp_path, cache_dir):
    split, metric, predictions, line = TASKS[task]
    env = dict(os.environ, S3PRL_ADAPTERS_CACHE=cache_dir)
    expdir = tmp_path / "exp"
    # From a folder that is not the repo: shipped relative paths (asr/char.dict) must still resolve.
    run_downstream("-m", "train", "-u", "wavlm_ladapter", "-k", tiny_ckpt, "-d", task,
                   "-c", os.path.join(REPO, "downstream_configs", task, "mini.yaml"), "-p", str(expdir),
                   "-o", f"{corpus_overrides(task, mini_corpus)},,{STEPS}", cwd=str(tmp_path), env=env)
    assert (expdir / "states-4.ckpt").is_file()
    proc = run_downstream("-m", "evaluate", "-e", str(expdir / "states-4.ckpt"), "-t", split, cwd=str(tmp_path), env=env)
    assert any(re.match(metric, l) for l in proc.stdout.splitlines()), proc.stdout[-2000:]
    lines = (expdir / predictions).read_text().splitlines()
    assert lines and all(re.match(line, l) for l in lines), lines[:3]
    if task == "sv_voxceleb1":
        trials = open(os.path.join(mini_corpus, "VoxCeleb1", "test_trials.txt")).read().splitlines()
        assert len(lines) == len(trials)


def test_sv_length_cache_is_per_corpus_and_outside_the_package(tiny_ckpt, mini_corpus, tmp_path):
    import s3prl.downstream.sv_voxceleb1 as sv

    from s3prl_adapters.bridge.compat import _corpus_fingerprint

    installed_cache = os.path.join(os.path.dirname(sv.__file__), ".wav_lengths")
    before = os.listdir(installed_cache) if os.path.isdir(installed_cache) else None
    cache = tmp_path / "cache"
    run_downstream("-m", "train", "-u", "wavlm_ladapter_only", "-k", tiny_ckpt, "-d", "sv_voxceleb1",
                   "-c", os.path.join(REPO, "downstream_configs", "sv_voxceleb1", "mini.yaml"), "-p", str(tmp_path / "e"),
                   "-o", f"{corpus_overrides('sv_voxceleb1', mini_corpus)},,{STEPS}", cwd=str(tmp_path),
                   env=dict(os.environ, S3PRL_ADAPTERS_CACHE=str(cache)))
    dev_wav = os.path.join(mini_corpus, "VoxCeleb1", "dev", "wav")
    written = cache / "sv_wav_lengths" / _corpus_fingerprint([dev_wav]) / ".wav_lengths" / "Voxceleb1_length.pt"
    assert written.is_file()
    assert (os.listdir(installed_cache) if os.path.isdir(installed_cache) else None) == before

    copy = tmp_path / "copy"
    shutil.copytree(dev_wav, copy)
    assert _corpus_fingerprint([str(copy)]) != _corpus_fingerprint([dev_wav])
    victim = next(copy.rglob("*.wav"))
    fingerprint = _corpus_fingerprint([str(copy)])
    victim.write_bytes(victim.read_bytes()[:-3200])
    assert _corpus_fingerprint([str(copy)]) != fingerprint  # changed audio, new lengths


def test_empty_train_split_stops_instead_of_looping(tiny_ckpt, mini_corpus, tmp_path):
    buckets = tmp_path / "buckets"
    shutil.copytree(os.path.join(mini_corpus, "LibriSpeech", "len_for_bucket"), buckets)
    rows = (buckets / "train-clean-100.csv").read_text().splitlines()
    (buckets / "train-clean-100.csv").write_text("\n".join(rows[:2]) + "\n")  # one utterance: its bucket is dropped
    proc = subprocess.run([tool("run_downstream.py"), "-m", "train", "-u", "wavlm_ladapter", "-k", tiny_ckpt, "-d", "asr",
                           "-c", os.path.join(REPO, "downstream_configs", "asr", "mini.yaml"), "-p", str(tmp_path / "e"),
                           "-o", f"{corpus_overrides('asr', mini_corpus)},,config.downstream_expert.datarc.bucket_file='{buckets}'"],
                          capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 2
    assert "the 'train' split yields no training batch" in proc.stderr and "Traceback" not in proc.stderr


def test_relative_config_paths_resolve_against_the_config_file():
    from s3prl_adapters.bridge.compat import relative_config_paths_resolve_against_cwd

    config = {"downstream_expert": {"datarc": {"dict_path": "./char.dict", "libri_root": "/data/LibriSpeech", "n": 3}}}
    relative_config_paths_resolve_against_cwd(config, "/etc/configs/asr/config.yaml")
    assert config["downstream_expert"]["datarc"] == {"dict_path": "/etc/configs/asr/char.dict",
                                                     "libri_root": "/data/LibriSpeech", "n": 3}

"""The task modules: every descriptor complete and consistent; the two tasks added through them
(KS: speech_commands, SID: voxceleb1) end to end on their stand-ins (layout, preflight, training,
evaluation, submission); their S3PRL workarounds; and a recipe without a descriptor."""

import os
import re
import subprocess
import sys
import zipfile

import pytest

from conftest import tool
from s3prl_adapters.bridge import compat
from s3prl_adapters.tasks import PAPER_TASKS, TASKS, corpus_overrides
from s3prl_adapters.tools.submission import build_submission

STEPS = "config.runner.total_steps=4,,config.runner.log_step=2,,config.runner.eval_step=4,,config.runner.save_step=4"


@pytest.mark.parametrize("name", list(TASKS))
def test_descriptor_is_complete(name):
    task = TASKS[name]
    assert task.name == name and os.path.isfile(task.config_path()) and os.path.isfile(task.config_path(mini=True))
    if task.trains:
        assert re.compile(task.metric_pattern).groups == 1
        assert 0 < task.chance_percent <= 100 and task.percent in (1.0, 100.0)
    else:  # QbE: scored from its files (table_value), TWV 0 for detecting nothing
        assert type(task).table_value is not type(task).__mro__[-2].table_value and task.chance_percent == 0
    for workaround in task.workarounds:  # each names a function of the one workaround module
        assert callable(getattr(compat, workaround, None)), workaround
    assert task.submission_member.startswith(f"predict/{task.key}") and task.submission_member.count("{fold}") == (
        1 if task.folds else 0)
    assert set(task.standin_overrides("/x")) <= set(_mini_data_keys(task))  # keys the recipe's config has
    for method in ("required_paths", "evaluation_audio", "validate_prediction", "build_standin") + (
            ("training_audio",) if task.trains else ()):
        assert getattr(type(task), method) is not getattr(type(task).__mro__[-2], method), f"{name}.{method}"


def _mini_data_keys(task):
    """The keys of the mini config's corpus section, and `section.key` of its other sections."""
    import yaml

    with open(task.config_path(mini=True)) as f:
        expert = yaml.safe_load(f)["downstream_expert"]
    return list(expert[task.data_section]) + [f"{section}.{key}" for section, values in expert.items()
                                              if isinstance(values, dict) for key in values]


def test_registry_keys_and_defaults():
    assert PAPER_TASKS == ["asr", "fluent_commands", "emotion", "sv_voxceleb1"]
    assert len({t.key for t in TASKS.values()}) == len(TASKS)
    assert {"speech_commands", "voxceleb1"} <= set(TASKS)


def test_speech_commands_standin_is_what_the_recipe_reads(more_corpus):
    import soundfile as sf
    from s3prl.downstream.speech_commands.dataset import CLASSES

    compat.speech_commands_imports_catalyst()
    from s3prl.downstream.speech_commands.expert import split_dataset

    root = os.path.join(more_corpus, "speech_commands")
    words = set(os.listdir(os.path.join(root, "train"))) - {"_background_noise_"}
    assert len(words) == 30 and set(CLASSES[:10]) <= words
    train, dev = split_dataset(os.path.join(root, "train"))  # the recipe's own speaker-hash split
    assert len(train) > 3 * len(dev) > 0  # ~80 % / 10 % of the speakers (10 % dropped), by hash
    speakers = lambda items: {os.path.basename(str(p)).split("_nohash_")[0] for _, p in items}  # noqa: E731
    assert not speakers(train) & speakers(dev)
    test = {c: os.listdir(os.path.join(root, "test", c)) for c in os.listdir(os.path.join(root, "test"))}
    assert set(test) == set(CLASSES) and len({len(files) for files in test.values()}) == 1  # balanced
    assert not speakers([(None, f) for c in CLASSES[:11] for f in test[c]]) & speakers(train + dev)
    for path in (os.path.join(root, "train", "yes", os.listdir(os.path.join(root, "train", "yes"))[0]),
                 os.path.join(root, "test", "_silence_", test["_silence_"][0])):
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.frames) == (16000, 1, 16000)
    assert len(os.listdir(os.path.join(root, "train", "_background_noise_"))) == 6


def test_identification_split_covers_every_speaker(more_corpus):
    root = os.path.join(more_corpus, "VoxCeleb1")
    splits = {}
    for line in open(os.path.join(root, "iden_split.txt")):
        code, rel = line.split()
        splits.setdefault(code, []).append(rel)
        assert len([p for p in ("dev", "test") if os.path.isfile(os.path.join(root, p, "wav", rel))]) == 1
    speakers = {code: {rel.split("/")[0] for rel in rels} for code, rels in splits.items()}
    assert speakers["1"] == speakers["2"] == speakers["3"] and len(speakers["3"]) == 60  # closed set
    assert all(10001 <= int(s[2:]) <= 11251 for s in speakers["1"])  # the recipe's label = id - 10001
    assert (len(splits["1"]), len(splits["2"]), len(splits["3"])) == (340, 60, 60)


@pytest.mark.parametrize("task, line", [
    ("speech_commands", r"^[a-z_]+-[0-9a-z_]+_nohash_0\.wav (yes|no|up|down|left|right|on|off|stop|go|_unknown_|_silence_)$"),
    ("voxceleb1", r"^id1\d{4}-[0-9a-f]{11}-\d{5} id1\d{4}$"),
])
def test_added_recipe_trains_evaluates_and_submits(task, line, tiny_ckpt, more_corpus, tmp_path):
    env = dict(os.environ, S3PRL_ADAPTERS_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    expdir = tmp_path / "exp"

    def run(*argv):
        proc = subprocess.run([tool("run_downstream.py"), *argv], capture_output=True, text=True, timeout=600,
                              cwd=str(tmp_path), env=env)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return proc

    run("-m", "train", "-u", "wavlm_ladapter", "-k", tiny_ckpt, "-d", task, "-p", str(expdir),
        "-c", TASKS[task].config_path(mini=True), "-o", f"{corpus_overrides(task, more_corpus)},,{STEPS}")
    proc = run("-m", "evaluate", "-e", str(expdir / "states-4.ckpt"), "-t", "test")
    assert 0 <= TASKS[task].parse_metric(proc.stdout) <= 1
    lines = (expdir / "test_predict.txt").read_text().splitlines()
    assert lines and all(re.match(line, x) for x in lines), lines[:3]
    out = tmp_path / "predict.zip"
    assert build_submission(str(out), **{TASKS[task].key: str(expdir)}) == [TASKS[task].submission_member]
    with zipfile.ZipFile(out) as z:
        assert z.read(TASKS[task].submission_member).decode().splitlines() == lines
    cli = subprocess.run([tool("s3prl-adapters"), "submit", f"--{TASKS[task].key}", str(expdir), "-o", str(out)],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and TASKS[task].submission_member in cli.stdout


def test_submission_refuses_a_label_outside_the_classes(tiny_ckpt, more_corpus, tmp_path):
    from s3prl_adapters.errors import UserError

    expdir = tmp_path / "exp"
    expdir.mkdir()
    (expdir / "test_truth.txt").write_text("yes-a_nohash_0.wav yes\n")
    (expdir / "test_predict.txt").write_text("yes-a_nohash_0.wav maybe\n")
    with pytest.raises(UserError, match=r"ks: .*test_predict.txt:1: label 'maybe' not in"):
        build_submission(str(tmp_path / "p.zip"), ks=str(expdir))
    assert not (tmp_path / "p.zip").exists()


def test_catalyst_shim_is_needed_and_shards_the_drawn_indices():
    probe = ("import sys\n"
             "if sys.argv[1] == 'with':\n"
             "    from s3prl_adapters.bridge import compat; compat.speech_commands_imports_catalyst()\n"
             "try:\n"
             "    import s3prl.downstream.speech_commands.expert\n"
             "    print('imported')\n"
             "except Exception as e:\n"
             "    print('failed', type(e).__name__)\n")
    without = subprocess.run([sys.executable, "-c", probe, "without"], capture_output=True, text=True, timeout=120)
    assert without.stdout.split()[0] == "failed"  # catalyst is not importable on this stack
    assert subprocess.run([sys.executable, "-c", probe, "with"], capture_output=True, text=True,
                          timeout=120).stdout.strip() == "imported"

    import torch
    from torch.utils.data import WeightedRandomSampler

    torch.manual_seed(0)
    sampler = WeightedRandomSampler([1.0, 1.0, 8.0, 1.0, 1.0, 1.0], 6)
    shares = []
    for rank in (0, 1):
        torch.manual_seed(3)
        wrapped = compat.DistributedSamplerWrapper(sampler, num_replicas=2, rank=rank, shuffle=False)
        wrapped.set_epoch(0)
        shares.append(list(wrapped))
    torch.manual_seed(3)
    drawn = list(sampler)
    assert all(shares) and sorted(shares[0] + shares[1]) == sorted(drawn)  # every draw exactly once, split


def test_sid_file_lists_are_cached_per_corpus_outside_the_package(more_corpus, tmp_path, monkeypatch):
    import s3prl.downstream.voxceleb1.dataset as dataset
    from pathlib import Path

    monkeypatch.setenv("S3PRL_ADAPTERS_CACHE", str(tmp_path / "cache"))
    installed = os.path.join(os.path.dirname(dataset.__file__), ".cache")
    assert dataset.CACHE_PATH.startswith(os.path.dirname(dataset.__file__))  # stock: inside the installed package
    compat.sid_file_lists_are_cached_inside_the_package()
    root = Path(more_corpus) / "VoxCeleb1"
    other = tmp_path / "split.txt"
    other.write_text("".join(line for line in open(root / "iden_split.txt") if line.startswith("3 id1000")))
    first = dataset.SpeakerClassifiDataset("test", root, str(root / "iden_split.txt"))
    second = dataset.SpeakerClassifiDataset("test", root, str(other))  # another split file: its own lists
    assert len(first) == 60 and len(second) == 9
    caches = sorted(os.listdir(tmp_path / "cache" / "sid_file_lists"))
    assert len(caches) == 2 and all(os.listdir(tmp_path / "cache" / "sid_file_lists" / c) == ["test.pkl"] for c in caches)
    assert not os.path.exists(installed)


def test_a_recipe_without_a_task_module_runs_with_an_adapter_upstream(tiny_ckpt, tmp_path):
    """S3PRL's `example` recipe (random data) through -c: no KeyError in the preflight or the hook."""
    config = tmp_path / "example.yaml"
    config.write_text(
        "runner: {total_steps: 2, gradient_clipping: 1, gradient_accumulate_steps: 1, log_step: 1, eval_step: 2,\n"
        "         save_step: 2, max_keep: 1, eval_dataloaders: [dev]}\n"
        "optimizer: {name: TorchOptim, torch_optim_name: Adam, lr: 1.0e-3}\n"
        "downstream_expert:\n"
        "  datarc: {train_batch_size: 2, eval_batch_size: 4, num_workers: 0}\n"
        "  modelrc: {input_dim: 16}\n")
    proc = subprocess.run([tool("run_downstream.py"), "-m", "train", "-u", "wavlm_ladapter", "-k", tiny_ckpt,
                           "-d", "example", "-c", str(config), "-p", str(tmp_path / "exp")],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "preflight: no corpus checks for -d example" in proc.stderr
    assert (tmp_path / "exp" / "states-2.ckpt").is_file()


def _run_folder(task, root, tmp_path, fold):
    """An experiment folder as far as submission reads it: the run's config, pointing at the corpus."""
    import yaml

    with open(task.config_path(mini=True)) as f:
        config = yaml.safe_load(f)
    config["downstream_expert"]["datarc"].update(task.standin_overrides(root), **task.fold_overrides(fold or 0))
    exp = tmp_path / task.name
    exp.mkdir()
    (exp / "config_2026-01-01-00-00-00.yaml").write_text(yaml.safe_dump(config))
    return exp, config


def _complete_prediction(task, config, fold):
    from s3prl_adapters.tasks.base import csv_column, read_lines
    from s3prl_adapters.tasks.speaker_verification import pair_name

    if task.name == "sv_voxceleb1":
        trials = read_lines(config["downstream_expert"]["datarc"]["test_meta_data"])
        return [f"{pair_name(a)}_{pair_name(b)} 0.5" for _, a, b in (t.split() for t in trials)]
    ids = task.corpus_test_ids(config, fold)
    if task.name == "asr":
        return [f"{u} THE CAT" for u in ids]
    if task.name == "fluent_commands":
        train = os.path.join(config["downstream_expert"]["datarc"]["file_path"], "data", "train_data.csv")
        slots = ",".join(csv_column(train, slot)[0] for slot in ("action", "object", "location"))
        return [f"{u},{slots}" for u in ids]
    return [f"{u} neu" for u in ids]


@pytest.mark.parametrize("name, fold, message", [
    ("asr", None, r"asr: .*: 3 of 60 missing .*runner.evaluate_ratio < 1"),
    ("fluent_commands", None, r"ic: .*: 3 of 272 missing .*runner.evaluate_ratio < 1"),
    ("emotion", 1, r"er fold1: .*: 3 of 272 missing .*runner.evaluate_ratio < 1"),
    ("sv_voxceleb1", None, r"sv: .*: 1997 scored pairs do not match the 2000 trials"),
])
def test_a_truncated_evaluation_is_refused_against_the_corpus_list(name, fold, message, mini_corpus, tmp_path):
    """The prediction is compared with the test list of the corpus itself, so an evaluation that
    scored only part of it (runner.evaluate_ratio < 1: S3PRL writes a truth file just as short) is refused."""
    from s3prl_adapters.errors import UserError

    task = TASKS[name]
    exp, config = _run_folder(task, mini_corpus, tmp_path, fold)
    path = exp / task.prediction_file.format(fold=fold)
    lines = _complete_prediction(task, config, fold)
    path.write_text("\n".join(lines) + "\n")
    assert task.validate_prediction(str(exp), fold) == str(path)
    path.write_text("\n".join(lines[:-3]) + "\n")  # as a run with evaluate_ratio < 1 writes it
    with pytest.raises(UserError, match=message):
        task.validate_prediction(str(exp), fold)
    zipped = tmp_path / "p.zip"
    with pytest.raises(UserError):
        build_submission(str(zipped), **{task.key: {fold: str(exp)} if fold else str(exp)})
    assert not zipped.exists()


def test_asr_with_a_language_model_is_its_own_member_and_missing_ones_are_named(mini_corpus, tmp_path):
    """`--asr-lm` takes the recipe's KenLM hypotheses (`test-clean-LM-hyp.ark`), checked as ASR's; the archive's
    absent SUPERB members are listed by their flags."""
    from s3prl_adapters.errors import UserError
    from s3prl_adapters.tools.submission import missing_members, superb_members

    task = TASKS["asr"]
    exp, config = _run_folder(task, mini_corpus, tmp_path, None)
    lines = _complete_prediction(task, config, None)
    with pytest.raises(UserError, match="missing prediction file .*test-clean-LM-hyp.ark"):
        build_submission(str(tmp_path / "p.zip"), asr_lm=str(exp))
    (exp / "test-clean-LM-hyp.ark").write_text("\n".join(lines) + "\n")
    members = build_submission(str(tmp_path / "p.zip"), asr_lm=str(exp))
    assert members == ["predict/asr_lm_public/predict.ark"]
    assert len(superb_members()) == 15  # pr sid ks ic er1-5 asr asr_lm qbe sf sv sd
    assert "--asr-lm" not in missing_members(members) and "--asr" in missing_members(members)
    (exp / "test-clean-LM-hyp.ark").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(UserError, match="1 of 60 missing"):
        build_submission(str(tmp_path / "q.zip"), asr_lm=str(exp))

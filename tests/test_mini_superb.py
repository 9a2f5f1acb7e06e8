"""The stand-in corpora, parsed back the way S3PRL's recipes read them."""

import glob
import hashlib
import json
import os

import pandas as pd
import pytest
import soundfile as sf

from s3prl_adapters.tasks import make_mini_superb
from s3prl_adapters.data.prepare import IEMOCAP_LABELS

CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ' ")


def _digest(root):
    h = hashlib.sha1()
    for path in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
        if os.path.isfile(path) and not path.endswith("manifest.json"):
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def test_manifest_counts_and_size(mini_corpus):
    manifest = json.load(open(os.path.join(mini_corpus, "manifest.json")))
    assert manifest["utterances"] == 480 + 60 + 60 + 320 + 272 + 272 + 1360 + 240 + 220
    assert 200e6 < manifest["bytes"] < 400e6


def test_librispeech_layout_buckets_and_transcripts(mini_corpus):
    root = os.path.join(mini_corpus, "LibriSpeech")
    speakers = {}
    for split, n in (("train-clean-100", 480), ("dev-clean", 60), ("test-clean", 60)):
        table = pd.read_csv(os.path.join(root, "len_for_bucket", f"{split}.csv"))
        assert list(table.columns) == ["Unnamed: 0", "file_path", "length", "label"] and len(table) == n
        assert list(table["length"]) == sorted(table["length"], reverse=True)  # longest first
        for rel, length in zip(table["file_path"], table["length"]):
            spk, chapter, name = rel.split("/")[1:]
            assert rel.startswith(split + "/") and name == f"{name.split('.')[0]}.flac"
            assert sf.info(os.path.join(root, rel)).frames == length
        transcripts = {}
        for trans in glob.glob(os.path.join(root, split, "*", "*", "*.trans.txt")):
            for line in open(trans):
                utt, text = line.rstrip("\n").split(" ", 1)
                transcripts[utt] = text
                assert set(text) <= CHARS and "  " not in text
        stems = {os.path.basename(p).split(".")[0] for p in table["file_path"]}
        assert stems == set(transcripts)
        speakers[split] = {p.split("/")[1] for p in table["file_path"]}
        if split == "train-clean-100":
            train_text = set(transcripts.values())
        else:
            assert not train_text & set(transcripts.values())  # unseen sentences in dev/test
    assert not speakers["train-clean-100"] & speakers["dev-clean"] and not speakers["dev-clean"] & speakers["test-clean"]
    assert not speakers["train-clean-100"] & speakers["test-clean"]


def test_fluent_commands_tables_as_the_recipe_reads_them(mini_corpus):
    root = os.path.join(mini_corpus, "fluent_speech_commands")
    tables = {s: pd.read_csv(os.path.join(root, "data", f"{s}_data.csv")) for s in ("train", "valid", "test")}
    for slot in ("action", "object", "location"):
        assert tables["train"][slot].notna().all()  # literal 'none', not NaN
        for split in ("valid", "test"):
            assert set(tables[split][slot]) <= set(tables["train"][slot])  # the recipe maps labels from train
    assert sum(len(set(tables["train"][s])) for s in ("action", "object", "location")) == 6 + 14 + 4
    for split, table in tables.items():
        assert all(os.path.isfile(os.path.join(root, p)) for p in table["path"])
    spk = {s: set(t["speakerId"]) for s, t in tables.items()}
    assert not (spk["train"] & spk["valid"] or spk["train"] & spk["test"] or spk["valid"] & spk["test"])


def test_iemocap_folds_are_leave_one_session_out(mini_corpus):
    root = os.path.join(mini_corpus, "IEMOCAP")
    for fold in range(1, 6):
        data = {n: json.load(open(os.path.join(root, "meta_data", f"Session{fold}", f"{n}_meta_data.json")))
                for n in ("train", "test")}
        assert data["train"]["labels"] == data["test"]["labels"] == IEMOCAP_LABELS
        test_speakers = {x["speaker"] for x in data["test"]["meta_data"]}
        assert test_speakers == {f"Ses0{fold}F", f"Ses0{fold}M"}
        assert not test_speakers & {x["speaker"] for x in data["train"]["meta_data"]}
        assert len(data["train"]["meta_data"]) >= 5
        for x in data["test"]["meta_data"]:
            assert os.path.isfile(os.path.join(root, x["path"])) and x["label"] in IEMOCAP_LABELS
        counts = pd.Series([x["label"] for x in data["test"]["meta_data"]]).value_counts()
        assert len(set(counts)) == 1  # balanced: the same sentences in every emotion


def test_voxceleb_speakers_trials_and_vad_length(mini_corpus):
    root = os.path.join(mini_corpus, "VoxCeleb1")
    dev = set(os.listdir(os.path.join(root, "dev", "wav")))
    test = set(os.listdir(os.path.join(root, "test", "wav")))
    assert len(dev) == 40 and len(test) == 20 and not dev & test
    for spk in test:
        assert len(os.listdir(os.path.join(root, "test", "wav", spk))) >= 2  # videos
    labels = []
    for line in open(os.path.join(root, "test_trials.txt")):
        label, a, b = line.split()
        labels.append(label)
        assert os.path.isfile(os.path.join(root, "test", "wav", a)) and os.path.isfile(os.path.join(root, "test", "wav", b))
        assert (label == "1") == (a.split("/")[0] == b.split("/")[0])
    assert labels.count("1") == labels.count("0") == 1000  # 2,000 trials: EER resolution 0.1 point
    assert min(sf.info(p).frames for p in glob.glob(os.path.join(root, "dev", "wav", "*", "*", "*.wav"))) > 2.5 * 16000


def test_all_audio_is_16k_mono_pcm(mini_corpus):
    files = glob.glob(os.path.join(mini_corpus, "**", "*.wav"), recursive=True)
    files += glob.glob(os.path.join(mini_corpus, "**", "*.flac"), recursive=True)
    assert len(files) == 3284
    for path in files[::37]:
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), path


def test_generation_is_deterministic_for_a_seed(mini_corpus, tmp_path):
    again = make_mini_superb(str(tmp_path / "a"), seed=0, tasks=["fluent_commands"])
    assert again["utterances"] == 320 + 272 + 272
    same = _digest(os.path.join(tmp_path / "a", "fluent_speech_commands"))
    assert same == _digest(os.path.join(mini_corpus, "fluent_speech_commands"))
    make_mini_superb(str(tmp_path / "b"), seed=1, tasks=["fluent_commands"])
    assert _digest(os.path.join(tmp_path / "b", "fluent_speech_commands")) != same


def test_unknown_size_is_refused(tmp_path):
    from s3prl_adapters.errors import UserError

    with pytest.raises(UserError, match="--size huge"):
        make_mini_superb(str(tmp_path), size="huge")

"""Check that a recipe's corpus root holds what the recipe reads, before S3PRL fails deep inside with
a traceback (or, for an empty split, never fails at all). Names the first missing file or folder."""

import os

from .errors import UserError


def _need(path: str, what: str, task: str, key: str) -> None:
    if not os.path.exists(path):
        raise UserError(f"-d {task}: {what} {path} does not exist (config downstream_expert.datarc.{key})")


def check_corpus(task: str, config: dict) -> None:
    d = config.get("downstream_expert", {}).get("datarc", {})
    if task == "asr":
        _need(d["libri_root"], "LibriSpeech root", task, "libri_root")
        _need(d["bucket_file"], "bucket folder", task, "bucket_file")
        _need(d.get("dict_path", ""), "character dictionary", task, "dict_path")
        splits = {s for key in ["train"] + list(config["runner"].get("eval_dataloaders", [])) for s in d.get(key, [])}
        for split in sorted(splits):
            _need(os.path.join(d["bucket_file"], f"{split}.csv"), f"bucket CSV of split '{split}' "
                  "(s3prl-adapters prepare-librispeech writes it)", task, "bucket_file")
            _need(os.path.join(d["libri_root"], split), f"split folder '{split}'", task, "libri_root")
    elif task == "fluent_commands":
        _need(d["file_path"], "Fluent Speech Commands root", task, "file_path")
        for split in ("train", "valid", "test"):
            _need(os.path.join(d["file_path"], "data", f"{split}_data.csv"), "table", task, "file_path")
    elif task == "emotion":
        _need(d["root"], "IEMOCAP root", task, "root")
        session = str(d.get("test_fold", "fold1")).replace("fold", "Session")
        for name in ("train", "test"):
            _need(os.path.join(d["meta_data"], session, f"{name}_meta_data.json"),
                  "fold meta data (s3prl-adapters prepare-iemocap writes it)", task, "meta_data")
    elif task == "sv_voxceleb1":
        for part in ("dev", "test"):
            _need(os.path.join(d["file_path"], part, "wav"), f"VoxCeleb1 {part} audio folder", task, "file_path")
        _need(d["dev_meta_data"], "dev trial list (s3prl-adapters prepare-voxceleb1 writes it)", task, "dev_meta_data")
        _need(d["test_meta_data"], "test trial list (the official veri_test2.txt)", task, "test_meta_data")
    check_listed_audio(task, config)


def _bucket_files(d: dict, splits) -> list:
    import csv

    files = []
    for split in splits:
        table = os.path.join(d["bucket_file"], f"{split}.csv")
        if os.path.isfile(table):  # a missing bucket CSV is check_corpus's to name
            with open(table) as f:
                files += [os.path.join(d["libri_root"], row["file_path"]) for row in csv.DictReader(f)]
    return files


def _fsc_files(d: dict, split: str) -> list:
    import csv

    with open(os.path.join(d["file_path"], "data", f"{split}_data.csv")) as f:
        return [os.path.join(d["file_path"], row["path"]) for row in csv.DictReader(f)]


def _iemocap_files(d: dict, part: str) -> list:
    import json

    session = str(d.get("test_fold", "fold1")).replace("fold", "Session")
    with open(os.path.join(d["meta_data"], session, f"{part}_meta_data.json")) as f:
        return [os.path.join(d["root"], x["path"]) for x in json.load(f)["meta_data"]]


def listed_audio(task: str, config: dict) -> list:
    """Audio files the recipe's evaluation lists name (absolute paths), in list order."""
    d = config["downstream_expert"]["datarc"]
    if task == "asr":
        splits = config["runner"].get("eval_dataloaders", []) + ["test-clean"]
        return _bucket_files(d, [s for split in splits for s in d.get(split, [])])
    if task == "fluent_commands":
        return _fsc_files(d, "valid") + _fsc_files(d, "test")
    if task == "emotion":
        return _iemocap_files(d, "test")
    if task == "sv_voxceleb1":
        root = os.path.join(d["file_path"], "test", "wav")
        with open(d["test_meta_data"]) as f:
            return sorted({os.path.join(root, p) for line in f if line.strip() for p in line.split()[1:3]})
    return []


def training_audio(task: str, config: dict) -> list:
    """Audio files the recipe trains on (absolute paths)."""
    d = config["downstream_expert"]["datarc"]
    if task == "asr":
        return _bucket_files(d, d.get("train", []))
    if task == "fluent_commands":
        return _fsc_files(d, "train")
    if task == "emotion":
        return _iemocap_files(d, "train")
    if task == "sv_voxceleb1":  # the recipe trains on every wav under dev/wav
        root = os.path.join(d["file_path"], "dev", "wav")
        return sorted(os.path.join(r, f) for r, _, fs in os.walk(root) for f in fs if f.endswith(".wav"))
    return []


def check_listed_audio(task: str, config: dict) -> int:
    """Every file the recipe's train and evaluation lists name exists, decodes, and is 16 kHz mono
    (ER resamples: any rate). Headers only; a passed check of exactly these files (paths, sizes,
    mtimes) is remembered until one of them changes."""
    import hashlib

    import soundfile as sf

    from .compat import cache_root

    named = {}  # path -> which list names it (evaluation lists first)
    for source, files in (("the test/dev lists name", listed_audio(task, config)),
                          ("the train list names", training_audio(task, config))):
        for path in files:
            named.setdefault(path, source)
    digest = hashlib.sha1(task.encode())
    for path, source in named.items():
        if not os.path.isfile(path):
            raise UserError(f"-d {task}: {source} {path}, which does not exist")
        st = os.stat(path)
        digest.update(f"{path}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    stamp = os.path.join(cache_root(), "audio_checks", digest.hexdigest())
    if os.path.exists(stamp):
        return len(named)
    for path in named:
        try:
            info = sf.info(path)
        except Exception as e:  # soundfile's error types vary by format
            raise UserError(f"-d {task}: {path} is not readable audio ({str(e).splitlines()[0]})") from None
        if info.channels != 1 or (info.samplerate != 16000 and task != "emotion"):
            raise UserError(f"-d {task}: {path} is {info.samplerate} Hz with {info.channels} channel(s); "
                            f"the recipe needs 16 kHz mono (convert with: sox IN -r 16000 -c 1 OUT)")
    os.makedirs(os.path.dirname(stamp), exist_ok=True)
    open(stamp, "w").close()
    return len(named)

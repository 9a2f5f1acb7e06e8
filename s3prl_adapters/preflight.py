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


def listed_audio(task: str, config: dict) -> list:
    """Audio files the recipe's evaluation lists name (absolute paths), in list order."""
    import csv
    import json

    d = config["downstream_expert"]["datarc"]
    if task == "asr":
        files = []
        for split in config["runner"].get("eval_dataloaders", []) + ["test-clean"]:
            for s in d.get(split, []):
                table = os.path.join(d["bucket_file"], f"{s}.csv")
                if os.path.isfile(table):
                    with open(table) as f:
                        files += [os.path.join(d["libri_root"], row["file_path"]) for row in csv.DictReader(f)]
        return files
    if task == "fluent_commands":
        files = []
        for split in ("valid", "test"):
            with open(os.path.join(d["file_path"], "data", f"{split}_data.csv")) as f:
                files += [os.path.join(d["file_path"], row["path"]) for row in csv.DictReader(f)]
        return files
    if task == "emotion":
        session = str(d.get("test_fold", "fold1")).replace("fold", "Session")
        with open(os.path.join(d["meta_data"], session, "test_meta_data.json")) as f:
            return [os.path.join(d["root"], x["path"]) for x in json.load(f)["meta_data"]]
    if task == "sv_voxceleb1":
        root = os.path.join(d["file_path"], "test", "wav")
        with open(d["test_meta_data"]) as f:
            return sorted({os.path.join(root, p) for line in f if line.strip() for p in line.split()[1:3]})
    return []


def training_audio(task: str, config: dict) -> list:
    """Audio files the recipe trains on (absolute paths)."""
    import csv
    import json

    d = config["downstream_expert"]["datarc"]
    if task == "asr":
        files = []
        for s in d.get("train", []):
            with open(os.path.join(d["bucket_file"], f"{s}.csv")) as f:
                files += [os.path.join(d["libri_root"], row["file_path"]) for row in csv.DictReader(f)]
        return files
    if task == "fluent_commands":
        with open(os.path.join(d["file_path"], "data", "train_data.csv")) as f:
            return [os.path.join(d["file_path"], row["path"]) for row in csv.DictReader(f)]
    if task == "emotion":
        session = str(d.get("test_fold", "fold1")).replace("fold", "Session")
        with open(os.path.join(d["meta_data"], session, "train_meta_data.json")) as f:
            return [os.path.join(d["root"], x["path"]) for x in json.load(f)["meta_data"]]
    if task == "sv_voxceleb1":  # the recipe trains on every wav under dev/wav
        root = os.path.join(d["file_path"], "dev", "wav")
        return sorted(os.path.join(r, f) for r, _, fs in os.walk(root) for f in fs if f.endswith(".wav"))
    return []


def _checked_stamp(task: str, files: list) -> str:
    """Where a passed check of exactly these files (paths, sizes, mtimes) is remembered."""
    import hashlib

    from .compat import cache_root

    h = hashlib.sha1(task.encode())
    for path in files:
        st = os.stat(path)
        h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return os.path.join(cache_root(), "audio_checks", h.hexdigest())


def check_listed_audio(task: str, config: dict) -> int:
    """Every file the recipe's train and evaluation lists name exists, decodes, and is 16 kHz mono
    (ER resamples: any rate). Headers only; a passed check is remembered until a file changes."""
    import soundfile as sf

    files = listed_audio(task, config)
    lists = "the test/dev lists"
    for path in files:
        if not os.path.isfile(path):
            raise UserError(f"-d {task}: {lists} name {path}, which does not exist")
    train = training_audio(task, config)
    for path in train:
        if not os.path.isfile(path):
            raise UserError(f"-d {task}: the train list names {path}, which does not exist")
    files = list(dict.fromkeys(files + train))
    stamp = _checked_stamp(task, files)
    if os.path.exists(stamp):
        return len(files)
    for path in files:
        try:
            info = sf.info(path)
        except Exception as e:  # soundfile's error types vary by format
            raise UserError(f"-d {task}: {path} is not readable audio ({str(e).splitlines()[0]})") from None
        if info.channels != 1 or (info.samplerate != 16000 and task != "emotion"):
            raise UserError(f"-d {task}: {path} is {info.samplerate} Hz with {info.channels} channel(s); "
                            f"the recipe needs 16 kHz mono (convert with: sox IN -r 16000 -c 1 OUT)")
    os.makedirs(os.path.dirname(stamp), exist_ok=True)
    open(stamp, "w").close()
    return len(files)

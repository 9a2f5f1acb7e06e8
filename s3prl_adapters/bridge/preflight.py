"""Check that a recipe's corpus root holds what the recipe reads, before S3PRL fails deep inside with
a traceback (or, for an empty split, never fails at all). Names the first missing file or folder.

Sized for real corpora (VoxCeleb1 dev: 148k files; LibriSpeech 960 h: 281k list rows): one `stat`
per listed file and at most one walk of a folder per start (`scan_tree`, shared with the ASV length
cache); audio headers are read only when the stamp of exactly these files (paths, sizes, mtimes) is
missing, and the stamp also keeps the hours of listed audio (for the feature cache's size estimate).
Under DDP only rank 0 checks. `preflight: false` in the downstream config skips all of it."""

import csv
import hashlib
import json
import os
import stat
import sys
from typing import Dict, List, Optional, Tuple

from s3prl_adapters.errors import UserError

TASKS_WITH_CHECKS = ("asr", "fluent_commands", "emotion", "sv_voxceleb1")

# ---- one walk per start ------------------------------------------------------------------------------

_scans: Dict[str, List[Tuple[str, int, int]]] = {}


def _walk(root: str) -> List[Tuple[str, int, int]]:
    found, stack = [], [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=True):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=True):
                    st = entry.stat()
                    found.append((entry.path, st.st_size, st.st_mtime_ns))
    found.sort()
    return found


def scan_tree(root: str, keep: bool = False) -> List[Tuple[str, int, int]]:
    """Every file under `root` as (path, size, mtime_ns), sorted by path. `keep=True` leaves the scan
    for the next caller in this start (the preflight keeps it for the ASV length cache's key); a
    kept scan is handed out once, so later calls walk afresh."""
    root = os.path.abspath(root)
    scan = _scans.pop(root, None)
    if scan is None:
        scan = _walk(root)
    if keep:
        _scans[root] = scan
    return scan


# ---- what each recipe reads ----------------------------------------------------------------------------


def _need(path: str, what: str, task: str, key: str) -> None:
    if not os.path.exists(path):
        raise UserError(f"-d {task}: {what} {path} does not exist (config downstream_expert.datarc.{key})")


def _required_paths(task: str, config: dict) -> None:
    d = config["downstream_expert"]["datarc"]
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


def _column(table: str, name: str) -> List[str]:
    with open(table, newline="") as f:
        rows = csv.reader(f)
        index = next(rows).index(name)
        return [row[index] for row in rows if row]


def _bucket_files(d: dict, splits) -> list:
    root = d["libri_root"].rstrip("/") + "/"
    files = []
    for split in splits:
        table = os.path.join(d["bucket_file"], f"{split}.csv")
        if os.path.isfile(table):  # a missing bucket CSV is _required_paths' to name
            files += [root + rel for rel in _column(table, "file_path")]
    return files


def _fsc_files(d: dict, split: str) -> list:
    root = d["file_path"].rstrip("/") + "/"
    return [root + rel for rel in _column(os.path.join(d["file_path"], "data", f"{split}_data.csv"), "path")]


def _iemocap_files(d: dict, part: str) -> list:
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
        return [path for path, _, _ in scan_tree(root, keep=True) if path.endswith(".wav")]
    return []


# ---- the checks ----------------------------------------------------------------------------------------


def _leader() -> bool:
    from torch.distributed import get_rank, is_initialized

    return not is_initialized() or get_rank() == 0


def check_corpus(task: str, config: dict) -> Optional[dict]:
    """Every check for `task`, or a note that there are none. Returns the stamp's facts (file count,
    hours of all listed and of the training audio) when the task has checks and they ran."""
    if config.get("preflight", True) is False:
        print(f"[s3prl-adapters] preflight: off (config preflight: false)", file=sys.stderr)
        return None
    if task not in TASKS_WITH_CHECKS or not isinstance((config.get("downstream_expert") or {}).get("datarc"), dict):
        print(f"[s3prl-adapters] preflight: no corpus checks for -d {task}; S3PRL reads its data unchecked",
              file=sys.stderr)
        return None
    if not _leader():
        return None
    _scans.clear()
    _required_paths(task, config)
    return check_listed_audio(task, config, facts=True)


def _stamp_path(task: str, stats: List[Tuple[str, int, int]]) -> str:
    from s3prl_adapters.bridge.compat import cache_root

    digest = hashlib.sha1(task.encode())
    digest.update("\n".join(f"{p}:{size}:{mtime}" for p, size, mtime in stats).encode())
    return os.path.join(cache_root(), "audio_checks", digest.hexdigest())


def _stat_all(named: Dict[str, str], task: str) -> List[Tuple[str, int, int]]:
    stats = []
    for path, source in named.items():
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise UserError(f"-d {task}: {source} {path}, which does not exist")
        stats.append((path, st.st_size, st.st_mtime_ns))
    return stats


def check_listed_audio(task: str, config: dict, facts: bool = False):
    """Every file the recipe's train and evaluation lists name exists, decodes, and is 16 kHz mono
    (ER resamples: any rate). Headers only; a passed check of exactly these files (paths, sizes,
    mtimes) is remembered until one of them changes. Returns the number of files (with `facts`:
    the stamp's dict: files, hours, train_hours)."""
    named = {}  # path -> which list names it (evaluation lists first)
    train = training_audio(task, config)
    for source, files in (("the test/dev lists name", listed_audio(task, config)), ("the train list names", train)):
        for path in files:
            named.setdefault(path, source)
    stamp = _stamp_path(task, _stat_all(named, task))
    if os.path.exists(stamp):
        try:
            with open(stamp) as f:
                known = json.load(f)
            if {"files", "hours", "train_hours"} <= set(known):
                return known if facts else known["files"]
        except (OSError, ValueError):
            pass  # an unreadable or older stamp: check again
    seconds, train_seconds = _read_headers(task, named, set(train))
    known = {"files": len(named), "hours": round(seconds / 3600, 6), "train_hours": round(train_seconds / 3600, 6)}
    os.makedirs(os.path.dirname(stamp), exist_ok=True)
    tmp = f"{stamp}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(known, f)
    os.replace(tmp, stamp)
    return known if facts else known["files"]


def _read_headers(task: str, named: Dict[str, str], train: set) -> Tuple[float, float]:
    """Decode every header; returns the seconds of all listed audio and of the training audio."""
    import soundfile as sf
    from tqdm import tqdm

    seconds = train_seconds = 0.0
    for path in tqdm(named, desc="preflight: audio headers", unit="file", file=sys.stderr,
                     disable=len(named) < 20000, mininterval=2.0):
        try:
            info = sf.info(path)
        except Exception as e:  # soundfile's error types vary by format
            raise UserError(f"-d {task}: {path} is not readable audio ({str(e).splitlines()[0]})") from None
        if info.channels != 1 or (info.samplerate != 16000 and task != "emotion"):
            raise UserError(f"-d {task}: {path} is {info.samplerate} Hz with {info.channels} channel(s); "
                            f"the recipe needs 16 kHz mono (convert with: sox IN -r 16000 -c 1 OUT)")
        seconds += info.frames / info.samplerate
        if path in train:
            train_seconds += info.frames / info.samplerate
    return seconds, train_seconds

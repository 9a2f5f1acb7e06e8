"""Check that a recipe's corpus root holds what the recipe reads, before S3PRL fails deep inside with
a traceback (or, for an empty split, never fails at all). Names the first missing file or folder.

Sized for real corpora (VoxCeleb1 dev: 148k files; LibriSpeech 960 h: 281k list rows): one `stat`
per listed file and at most one walk of a folder per start (`scan_tree`, shared with the ASV length
cache); audio headers are read only when the stamp of exactly these files (paths, sizes, mtimes) is
missing, and the stamp also keeps the hours of listed audio (for the feature cache's size estimate).
Under DDP only rank 0 checks. `preflight: false` in the downstream config skips all of it."""

import hashlib
import json
import os
import stat
import sys
from typing import Dict, List, Optional, Tuple

from s3prl_adapters.data.files import forget_scans
from s3prl_adapters.errors import UserError
from s3prl_adapters.tasks import find_task, get_task


def _need(path: str, what: str, task: str, key: str, section: str = "datarc") -> None:
    if not os.path.exists(path):
        raise UserError(f"-d {task}: {what} {path} does not exist (config downstream_expert.{section}.{key})")


def _spec(task: str, config: dict):
    """The task of `-d task` with this config (the ctc recipe runs PR or SF by its corpus)."""
    return find_task(task, config) or get_task(task)


def listed_audio(task: str, config: dict) -> list:
    """Audio files the recipe's evaluation lists name (absolute paths), in list order."""
    return _spec(task, config).evaluation_audio(config)


def training_audio(task: str, config: dict) -> list:
    """Audio files the recipe trains on (absolute paths)."""
    return _spec(task, config).training_audio(config)


# ---- the checks ----------------------------------------------------------------------------------------


def _leader() -> bool:
    from torch.distributed import get_rank, is_initialized

    return not is_initialized() or get_rank() == 0


def check_corpus(task: str, config: dict) -> Optional[dict]:
    """Every check for `task`, or a note that there are none. Returns the stamp's facts (file count,
    hours of all listed and of the training audio) when the task has checks and they ran."""
    if config.get("preflight", True) is False:
        print("[s3prl-adapters] preflight: off (config preflight: false)", file=sys.stderr)
        return None
    spec = find_task(task, config)
    if spec is None or not isinstance((config.get("downstream_expert") or {}).get(spec.data_section), dict):
        print(f"[s3prl-adapters] preflight: no corpus checks for -d {task}; S3PRL reads its data unchecked",
              file=sys.stderr)
        return None
    if not _leader():
        return None
    forget_scans()
    try:
        for path, what, key in spec.required_paths(config):
            _need(path, what, task, key, spec.data_section)
        return check_listed_audio(task, config, facts=True)
    except KeyError as e:  # a config of this recipe without one of the keys it reads
        raise UserError(f"-d {task}: config downstream_expert.{spec.data_section} has no {e}, which the recipe reads") \
            from None


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
    seconds, train_seconds = _read_headers(task, _spec(task, config), named, set(train))
    known = {"files": len(named), "hours": round(seconds / 3600, 6), "train_hours": round(train_seconds / 3600, 6)}
    os.makedirs(os.path.dirname(stamp), exist_ok=True)
    tmp = f"{stamp}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(known, f)
    os.replace(tmp, stamp)
    return known if facts else known["files"]


def _read_headers(task: str, spec, named: Dict[str, str], train: set) -> Tuple[float, float]:
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
        if (info.channels != 1 and not spec.any_channel_count) or (info.samplerate != 16000 and not spec.any_sample_rate):
            raise UserError(f"-d {task}: {path} is {info.samplerate} Hz with {info.channels} channel(s); "
                            f"the recipe needs 16 kHz mono (convert with: sox IN -r 16000 -c 1 OUT)")
        seconds += info.frames / info.samplerate
        if path in train:
            train_seconds += info.frames / info.samplerate
    return seconds, train_seconds

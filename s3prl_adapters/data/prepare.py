"""Preparation steps the four S3PRL recipes need and PyPI S3PRL lacks, for real and stand-in corpora alike.

- LibriSpeech: the length-bucket CSVs (`len_for_bucket/<split>.csv`), non-interactive.
- IEMOCAP: leave-one-session-out meta-data JSONs from `SessionN/dialog/EmoEvaluation/*.txt`.
- VoxCeleb1: a dev trial list (the recipe reads one at start-up) and a check of the test trial list."""

import csv
import json
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import soundfile as sf

from s3prl_adapters.errors import UserError

# ---- LibriSpeech ---------------------------------------------------------------------------------


def librispeech_buckets(libri_root: str, out_dir: str, splits: Sequence[str], ext: str = ".flac") -> Dict[str, int]:
    """Write `<out_dir>/<split>.csv` (",file_path,length,label", longest first) as S3PRL's
    preprocess/generate_len_for_bucket.py does; returns the number of rows per split."""
    root = Path(libri_root)
    if not root.is_dir():
        raise UserError(f"LibriSpeech root {libri_root}: no such folder")
    os.makedirs(out_dir, exist_ok=True)
    counts = {}
    for split in splits:
        split_dir = root / split
        if not split_dir.is_dir():
            raise UserError(f"LibriSpeech root {libri_root}: missing split folder '{split}'")
        files = sorted(split_dir.rglob(f"*{ext}"))
        if not files:
            raise UserError(f"LibriSpeech split {split_dir}: no *{ext} files")
        rows = []
        for f in files:
            info = sf.info(str(f))
            if info.samplerate != 16000 or info.channels != 1:
                raise UserError(f"{f}: {info.samplerate} Hz, {info.channels} channel(s); the ASR recipe needs 16 kHz mono")
            rows.append((str(f.relative_to(root)), info.frames))
        rows.sort(key=lambda r: -r[1])
        tmp = os.path.join(out_dir, f".{split}.csv.tmp")
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["", "file_path", "length", "label"])
            for i, (path, n) in enumerate(rows):
                w.writerow([i, path, n, ""])
        os.replace(tmp, os.path.join(out_dir, f"{split}.csv"))
        counts[split] = len(rows)
    return counts


# ---- IEMOCAP -------------------------------------------------------------------------------------

IEMOCAP_LABELS = {"neu": 0, "hap": 1, "ang": 2, "sad": 3}
_EMO_LINE = re.compile(r"^\[[\d.]+ - [\d.]+\]\t(\S+)\t(\S+)\t")


def iemocap_meta_data(root: str, out_dir: str) -> Dict[str, int]:
    """Leave-one-session-out JSONs `<out_dir>/SessionN/{train,test}_meta_data.json` (foldN tests SessionN).

    Keeps neu/hap/ang/sad and maps exc to hap, as S3PRL's IEMOCAP_preprocess.py; paths are relative to
    `root` and built from it (no cutting at the first 'Session' in the absolute path)."""
    root_path = Path(root)
    per_session: Dict[int, List[dict]] = {}
    for s in range(1, 6):
        session = root_path / f"Session{s}"
        eval_dir = session / "dialog" / "EmoEvaluation"
        if not eval_dir.is_dir():
            raise UserError(f"IEMOCAP root {root}: missing {eval_dir.relative_to(root_path)}")
        items = []
        for txt in sorted(eval_dir.glob("*.txt")):
            for line in txt.read_text().splitlines():
                m = _EMO_LINE.match(line)
                if not m:
                    continue
                utt, emo = m.groups()
                emo = "hap" if emo == "exc" else emo
                if emo not in IEMOCAP_LABELS:
                    continue
                rel = Path(f"Session{s}") / "sentences" / "wav" / txt.stem / f"{utt}.wav"
                if not (root_path / rel).is_file():
                    raise UserError(f"IEMOCAP: {txt.name} lists {utt}, but {rel} does not exist")
                items.append({"path": rel.as_posix(), "label": emo, "speaker": utt[:6]})
        per_session[s] = items
    counts = {}
    for s in range(1, 6):
        fold_dir = Path(out_dir) / f"Session{s}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        train = [x for t in range(1, 6) if t != s for x in per_session[t]]
        for name, data in (("train", train), ("test", per_session[s])):
            if not data:
                raise UserError(f"IEMOCAP fold{s}: no usable {name} utterances (neu/hap/exc/ang/sad)")
            with open(fold_dir / f"{name}_meta_data.json", "w") as f:
                json.dump({"labels": IEMOCAP_LABELS, "meta_data": data}, f, indent=1)
        counts[f"fold{s}"] = len(per_session[s])
    return counts


# ---- VoxCeleb1 -----------------------------------------------------------------------------------


def voxceleb_files(wav_root: str) -> Dict[str, List[str]]:
    """{speaker: [relative 'spk/video/NNNNN.wav', ...]} under `<root>/{dev,test}/wav`."""
    root = Path(wav_root)
    if not root.is_dir():
        raise UserError(f"VoxCeleb1: missing folder {wav_root}")
    out = {}
    for spk in sorted(p for p in root.iterdir() if p.is_dir()):
        out[spk.name] = sorted(f.relative_to(root).as_posix() for f in spk.rglob("*.wav"))
    return out


def make_trials(files: Dict[str, List[str]], n_trials: int, rng: np.random.Generator,
                hard_group: Optional[Dict[str, str]] = None, hard_fraction: float = 0.5) -> List[str]:
    """`<1|0> <a> <b>` lines, half target; of the non-targets, `hard_fraction` pair speakers of one
    `hard_group` (same gender/accent: near neighbours), the rest any two speakers."""
    speakers = [s for s, fs in files.items() if len(fs) >= 2]
    if len(speakers) < 2:
        raise UserError("trial list: need at least two speakers with two or more files each")
    lines, seen = [], set()
    attempts = 0
    while len(lines) < n_trials and attempts < 50 * n_trials:
        attempts += 1
        target = len(lines) % 2 == 0
        s1 = speakers[rng.integers(len(speakers))]
        if target:
            s2 = s1
        else:
            pool = [s for s in speakers if s != s1]
            if hard_group and rng.random() < hard_fraction:
                hard = [s for s in pool if hard_group.get(s) == hard_group.get(s1)]
                pool = hard or pool
            s2 = pool[rng.integers(len(pool))]
        a = files[s1][rng.integers(len(files[s1]))]
        b = files[s2][rng.integers(len(files[s2]))]
        if a == b or (a, b) in seen or (b, a) in seen:
            continue
        seen.add((a, b))
        lines.append(f"{int(target)} {a} {b}")
    if len(lines) < n_trials:  # targets alternate with non-targets: too few same-speaker pairs stop it early
        raise UserError(f"trial list: only {len(lines)} of {n_trials} distinct trials from {len(speakers)} speakers "
                        f"({sum(len(files[s]) for s in speakers)} files); give the speakers more files")
    return lines


def check_trial_list(trials: str, wav_root: str) -> int:
    """Every file a trial names must exist, and both labels must occur (EER needs both)."""
    if not os.path.isfile(trials):
        raise UserError(f"trial list {trials}: no such file")
    labels = set()
    with open(trials) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if len(parts) != 3 or parts[0] not in ("0", "1"):
                raise UserError(f"trial list {trials}:{n}: expected '<0|1> <wav> <wav>', got {line.strip()!r}")
            labels.add(parts[0])
            for rel in parts[1:]:
                if not os.path.isfile(os.path.join(wav_root, rel)):
                    raise UserError(f"trial list {trials}:{n}: {rel} not found under {wav_root}")
    if labels != {"0", "1"}:
        raise UserError(f"trial list {trials}: needs both target (1) and non-target (0) trials for an EER")
    return n


def write_lines(path: str, lines: List[str]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)

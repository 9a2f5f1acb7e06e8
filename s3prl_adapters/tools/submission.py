"""SUPERB-style submission: `predict/<task>_public/predict.*` zipped, each file validated first.

Every prediction file is checked against what its own experiment knows (S3PRL writes the truth or
reference next to the prediction, and the config names the trial list): line shape, label set, and
no missing or extra utterances. A failed check refuses the whole archive; nothing is half-written."""

import glob
import os
import re
import zipfile
from typing import Dict, List, Optional

import yaml

from s3prl_adapters.errors import UserError

ER_LABELS = {"neu", "hap", "ang", "sad"}


def _lines(path: str) -> List[str]:
    if not os.path.isfile(path):
        raise UserError(f"missing prediction file {path}")
    with open(path) as f:
        return [l.rstrip("\n") for l in f if l.strip()]


def _latest_config(expdir: str) -> dict:
    configs = sorted(glob.glob(os.path.join(expdir, "config_*.yaml")))
    if not configs:
        raise UserError(f"{expdir}: no config_*.yaml (not an S3PRL experiment folder?)")
    with open(configs[-1]) as f:
        return yaml.safe_load(f)


def _same_ids(task: str, path: str, got: List[str], expected: List[str]) -> None:
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or extra or len(got) != len(set(got)):
        raise UserError(
            f"{task}: {path}: utterances differ from the test list "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, extra {extra[:3]}, "
            f"{len(got) - len(set(got))} duplicated)"
        )


def validate_asr(expdir: str) -> str:
    path = os.path.join(expdir, "test-clean-noLM-hyp.ark")
    lines = _lines(path)
    for n, line in enumerate(lines, 1):
        if not re.fullmatch(r"\S+( [A-Z']+)*", line.rstrip(" ")):
            raise UserError(f"asr: {path}:{n}: expected '<utt_id> <UPPERCASE WORDS>', got {line!r}")
    refs = [l.split(" ", 1)[0] for l in _lines(os.path.join(expdir, "test-clean-noLM-ref.ark"))]
    _same_ids("asr", path, [l.split(" ", 1)[0] for l in lines], refs)
    return path


def validate_ic(expdir: str) -> str:
    import pandas as pd

    path = os.path.join(expdir, "test_predict.csv")
    lines = _lines(path)
    root = _latest_config(expdir)["downstream_expert"]["datarc"]["file_path"]
    train = pd.read_csv(os.path.join(root, "data", "train_data.csv"))
    slots = [set(train[s]) for s in ("action", "object", "location")]
    for n, line in enumerate(lines, 1):
        parts = line.split(",")
        if len(parts) != 4:
            raise UserError(f"ic: {path}:{n}: expected '<stem>,<action>,<object>,<location>', got {line!r}")
        for value, allowed, slot in zip(parts[1:], slots, ("action", "object", "location")):
            if value not in allowed:
                raise UserError(f"ic: {path}:{n}: {slot} '{value}' is not one of the training labels")
    truth = [l.split(",")[0] for l in _lines(os.path.join(expdir, "test_truth.csv"))]
    _same_ids("ic", path, [l.split(",")[0] for l in lines], truth)
    return path


def validate_er(expdir: str, fold: int) -> str:
    path = os.path.join(expdir, f"test_fold{fold}_predict.txt")
    lines = _lines(path)
    for n, line in enumerate(lines, 1):
        parts = line.split(" ")
        if len(parts) != 2:
            raise UserError(f"er fold{fold}: {path}:{n}: expected '<utt> <label>', got {line!r}")
        if parts[1] not in ER_LABELS:
            raise UserError(f"er fold{fold}: {path}:{n}: label '{parts[1]}' not in {sorted(ER_LABELS)}")
    truth = [l.split(" ")[0] for l in _lines(os.path.join(expdir, f"test_fold{fold}_truth.txt"))]
    _same_ids(f"er fold{fold}", path, [l.split(" ")[0] for l in lines], truth)
    return path


def _sv_pair_name(rel: str) -> str:
    return "-".join(rel.split("/")[-3:]).split(".")[0]


def validate_sv(expdir: str) -> str:
    path = os.path.join(expdir, "test_predict.txt")
    lines = _lines(path)
    for n, line in enumerate(lines, 1):
        parts = line.split(" ")
        try:
            float(parts[1])
            ok = len(parts) == 2 and "_" in parts[0]
        except (IndexError, ValueError):
            ok = False
        if not ok:
            raise UserError(f"sv: {path}:{n}: expected '<A>_<B> <score>', got {line!r}")
    trials = _latest_config(expdir)["downstream_expert"]["datarc"]["test_meta_data"]
    expected = [f"{_sv_pair_name(a)}_{_sv_pair_name(b)}" for _, a, b in (l.split() for l in _lines(trials))]
    got = [l.split(" ")[0] for l in lines]
    if got != expected:
        raise UserError(f"sv: {path}: {len(got)} scored pairs do not match the {len(expected)} trials of {trials} in order")
    return path


def build_submission(out_zip: str, asr: Optional[str] = None, ic: Optional[str] = None,
                     er: Optional[Dict[int, str]] = None, sv: Optional[str] = None) -> List[str]:
    """Validate every given experiment, then write `out_zip` (atomically) with the SUPERB layout."""
    members = {}
    if asr:
        members["predict/asr_public/predict.ark"] = validate_asr(asr)
    if ic:
        members["predict/ic_public/predict.csv"] = validate_ic(ic)
    for fold, expdir in sorted((er or {}).items()):
        members[f"predict/er_fold{fold}_public/predict.txt"] = validate_er(expdir, fold)
    if sv:
        members["predict/sv_public/predict.txt"] = validate_sv(sv)
    if not members:
        raise UserError("nothing to submit: give at least one of --asr, --ic, --er-foldK, --sv")
    os.makedirs(os.path.dirname(os.path.abspath(out_zip)), exist_ok=True)
    tmp = out_zip + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for name, src in members.items():
            z.write(os.path.realpath(src), name)
    os.replace(tmp, out_zip)
    return sorted(members)

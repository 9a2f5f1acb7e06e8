"""SUPERB-style submission: `predict/<task>_public/predict.*` zipped, each file validated first.

Every prediction file is checked by its task (tasks/<task>.py `validate_prediction`) against what
its own experiment knows (S3PRL writes the truth or reference next to the prediction, and the
config names the trial list): line shape, label set, and no missing or extra utterances. A failed
check refuses the whole archive; nothing is half-written."""

import os
import zipfile
from typing import Dict, List, Optional, Union

from s3prl_adapters.errors import UserError
from s3prl_adapters.tasks import TASKS

Experiments = Union[str, Dict[int, str], None]
"""An experiment folder, or {fold: folder} for a task with folds (ER)."""


def superb_members() -> Dict[str, str]:
    """{member path in predict.zip: the `submit` flag that adds it} of every SUPERB member (S3PRL's submit.py:
    pr, sid, ks, ic, er folds 1-5, asr without and with an LM, qbe, sf, sv, sd)."""
    members = {}
    for task in TASKS.values():
        for fold in task.folds or (None,):
            members[task.submission_member.format(fold=fold)] = f"--{task.key}-fold{fold}" if fold else f"--{task.key}"
        for key, (_, member) in task.submission_variants.items():
            members[member] = f"--{key.replace('_', '-')}"
    return members


def missing_members(written: List[str]) -> List[str]:
    """The `submit` flags of the SUPERB members an archive lacks."""
    return [key for member, key in superb_members().items() if member not in written]


def build_submission(out_zip: str, **experiments: Experiments) -> List[str]:
    """Validate every given experiment (keyword = task key: asr, asr_lm, ic, er={fold: dir}, sv, ks, sid, pr, sf,
    sd, qbe), then write `out_zip` (atomically) with the SUPERB layout. Returns the archive's member names."""
    by_key = {task.key: task for task in TASKS.values()}
    variants = {key: (task, file, member) for task in TASKS.values()
                for key, (file, member) in task.submission_variants.items()}
    unknown = sorted(set(experiments) - set(by_key) - set(variants))
    if unknown:
        raise UserError(f"submission: unknown task key(s) {unknown}; valid: {sorted(by_key) + sorted(variants)}")
    members = {}
    for key, task in by_key.items():
        given = experiments.get(key)
        if not given:
            continue
        if task.folds:
            for fold, expdir in sorted(given.items()):
                members[task.submission_member.format(fold=fold)] = task.validate_prediction(expdir, fold)
        else:
            members[task.submission_member] = task.validate_prediction(given)
    for key, (task, file, member) in variants.items():
        if experiments.get(key):
            members[member] = task.validate_prediction(experiments[key], prediction_file=file)
    if not members:
        raise UserError(f"nothing to submit: give at least one of {', '.join(superb_members().values())}")
    os.makedirs(os.path.dirname(os.path.abspath(out_zip)), exist_ok=True)
    tmp = out_zip + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for name, src in members.items():
            if os.path.isdir(src):  # a folder member (SD's predictions): every file of it under the member's name
                for f in sorted(os.listdir(src)):
                    z.write(os.path.realpath(os.path.join(src, f)), name + f)
            else:
                z.write(os.path.realpath(src), name)
    os.replace(tmp, out_zip)
    return sorted(members)


def add_arguments(parser) -> None:
    """`s3prl-adapters submit` flags: one per task (`--asr EXP`), one per fold for fold tasks (`--er-fold1`)."""
    for task in TASKS.values():
        if task.folds:
            for fold in task.folds:
                parser.add_argument(f"--{task.key}-fold{fold}", dest=f"{task.key}_fold{fold}",
                                    help=f"{task.name} fold{fold} experiment folder ({task.prediction_file.format(fold=fold)})")
        else:
            parser.add_argument(f"--{task.key}", help=f"{task.name} experiment folder ({task.prediction_file})"
                                + ("; or an s3prl-adapters qbe sweep folder (its test pass)" if not task.trains else ""))
        for key, (file, _) in task.submission_variants.items():
            parser.add_argument(f"--{key.replace('_', '-')}", dest=key, help=f"{task.name} experiment folder ({file})")


def experiments_from_args(args) -> Dict[str, Experiments]:
    found: Dict[str, Experiments] = {}
    for task in TASKS.values():
        if task.folds:
            folds = {fold: getattr(args, f"{task.key}_fold{fold}") for fold in task.folds
                     if getattr(args, f"{task.key}_fold{fold}")}
            if folds:
                found[task.key] = folds
        elif getattr(args, task.key):
            found[task.key] = getattr(args, task.key)
        for key in task.submission_variants:
            if getattr(args, key):
                found[key] = getattr(args, key)
    return found


def incomplete_folds(experiments: Dict[str, Experiments]) -> Optional[str]:
    """A note when a fold task is submitted with some folds missing (SUPERB scores ER only with all 5)."""
    for task in TASKS.values():
        given = experiments.get(task.key)
        if task.folds and given and len(given) < len(task.folds):
            return f"note: SUPERB scores {task.key.upper()} only with all {len(task.folds)} folds"
    return None

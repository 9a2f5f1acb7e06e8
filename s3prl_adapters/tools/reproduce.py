"""A benchmark cell, reproduced by what users run: `s3prl-adapters export` of the run's selected checkpoint,
then `s3prl-adapters predict --batch-size 1` on the evaluated split; its answers are compared file by file
(ASV: trial by trial) with what the recipe's test pass wrote, and the cell's metric is recomputed from
them with the recipe's own scoring (tasks/*: reproduced_items + score)."""

import json
import os
from typing import Optional

from s3prl_adapters.errors import UserError
from s3prl_adapters.tasks.base import Task


THEN = "--then"

BATCHED_SCORE_TOLERANCE = 1e-4
"""ASV reproduction of a batched evaluation: `predict --batch-size 1` scores a trial within this of the
recipe's batched pass (the encoder's float32 sums run in another order in a batch; measured differences
in docs/data/exact_evaluation.md); labels and transcripts are still compared exactly."""


def _cli_commands(argv):
    """`s3prl-adapters A ... --then B ...`: the commands one after another in one process (a forked run)."""
    from s3prl_adapters.tools.cli import main

    command = []
    for word in list(argv) + [THEN]:
        if word == THEN:
            main(command)
            command = []
        else:
            command.append(word)


def reproduce(task: Task, expdir: str, fold: Optional[int], ckpt: str, backbone: str, metric_percent: float,
              threads: int = 1, device: str = "cpu", score_tolerance: float = 0.0, env=None) -> dict:
    """`score_tolerance`: how far a reproduced score (ASV) may be from the recorded one (0: bit-equal, for a
    run evaluated file by file; the benchmark's BATCHED_SCORE_TOLERANCE for batched evaluation)."""
    import numpy as np

    from s3prl_adapters.tools.launch import run_in_child

    folder = os.path.join(expdir, "reproduction")
    os.makedirs(folder, exist_ok=True)
    log = os.path.join(folder, "reproduce.log")
    adapter = os.path.join(folder, f"{task.key}.adapter")
    files = task.test_files(expdir, fold)
    listing = os.path.join(folder, "test_files.txt")
    with open(listing, "w") as f:
        f.writelines(f"{path}\n" for path in dict.fromkeys(files.values()))
    answers_path = os.path.join(folder, "answers.jsonl")
    if os.path.exists(answers_path):
        os.remove(answers_path)
    failed = None
    try:  # one forked process for both (the fork server has torch and S3PRL imported)
        run_in_child(_cli_commands, ["export", ckpt, "-o", adapter, "--backbone", backbone, "--no-threshold",
                                     "--device", device, THEN,
                                     "predict", "--backbone", backbone, "--adapters", adapter, listing, "-o", answers_path,
                                     "--batch-size", "1", "--embeddings", os.path.join(folder, "embeddings"),
                                     "--device", device], log, threads, name="s3prl-adapters export + predict", env=env)
    except UserError as e:  # some file failed: its line says why; the others are still compared
        failed = str(e)
        if not os.path.exists(answers_path):
            raise
    by_path = {}
    for line in open(answers_path):
        result = json.loads(line)
        answer = result.get(task.key)
        if isinstance(answer, dict) and "embedding" in answer:
            answer = dict(answer, embedding=np.load(answer["embedding"]))
        by_path[result["file"]] = answer
    keys = {item: task.answer_key(by_path[path]) for item, path in files.items()
            if isinstance(by_path.get(path), dict) and "error" not in by_path[path]}
    recorded = task.recorded_answers(expdir, fold)
    mine = task.trial_scores(expdir, keys) if task.scores_pairs else keys
    differing = sorted(item for item in recorded if not _same(mine.get(item), recorded[item], score_tolerance))
    items = task.reproduced_items(expdir, fold, keys)
    value = task.score(items, np.arange(len(items["ids"])))
    return {"reproduced": not differing and round(value, 4) == round(metric_percent, 4),
            "metric_percent": round(value, 4), "answers": len(recorded), "answers_equal": len(recorded) - len(differing),
            "first_difference": differing[0] if differing else None, "predict_error": failed,
            "what": "trials" if task.scores_pairs else "files"}


def _same(mine, recorded, tolerance: float = 0.0) -> bool:
    if mine is None:
        return False
    if tolerance and isinstance(mine, (float, int)) and not isinstance(mine, bool):
        return abs(float(mine) - float(recorded)) <= tolerance
    try:
        return bool(mine == recorded)
    except ValueError:  # arrays
        return False

"""The shipped learning-rate search and mini.yaml agree: every study's best trial on dev (read from the
Optuna journal) is what the task's mini.yaml block holds, and each study's CSV lists its trials."""

import csv
import glob
import os

import optuna
import pytest
import yaml

from conftest import REPO
from s3prl_adapters.tools.catalogue import METHODS
from s3prl_adapters.tools.search_record import BEGIN, END
from s3prl_adapters.tools.tune import best_trial

RECORDS = sorted(glob.glob(os.path.join(REPO, "downstream_configs", "*", "mini_search")))


def test_the_paper_s_tasks_have_a_record():
    assert {os.path.basename(os.path.dirname(r)) for r in RECORDS} >= {"asr", "fluent_commands", "emotion", "sv_voxceleb1"}


@pytest.mark.parametrize("record", RECORDS, ids=[os.path.basename(os.path.dirname(r)) for r in RECORDS])
def test_mini_yaml_holds_each_study_s_best_trial(record):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    config_path = os.path.join(os.path.dirname(record), "mini.yaml")
    text = open(config_path).read()
    assert text.index(BEGIN) < text.index(END)
    config = yaml.safe_load(text)
    storage = JournalStorage(JournalFileBackend(os.path.join(record, "study.journal")))
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    assert names == set(METHODS)
    for method in METHODS:
        study = optuna.load_study(study_name=method, storage=storage)
        counted = [t for t in study.trials if not t.user_attrs.get("superseded")]
        assert len(counted) == (1 if method == "frozen" else 8)  # the grid of the frozen weighted sum has one point
        rows = list(csv.DictReader(open(os.path.join(record, f"{method}.csv"))))
        assert [int(r["number"]) for r in rows] == [t.number for t in study.trials]
        if method == "frozen":
            continue
        settings = best_trial(study).user_attrs["settings"]
        upstream = METHODS[method].upstream
        section = config["adapter_optimizer"][upstream]
        for group, rate in settings.items():
            if group == "backbone_dropout":
                assert config["backbone_dropout"][upstream] == rate, (method, group)
            elif rate is not None:
                assert section[group] == rate, (method, group)
        assert section["head"] == 0.002 and config["optimizer"]["lr"] == 0.002  # every method's head alike


@pytest.mark.parametrize("record", RECORDS, ids=[os.path.basename(os.path.dirname(r)) for r in RECORDS])
def test_each_method_s_trial_count_is_its_own_study_s(record):
    # the report's rate source names it per method: the frozen sum's one setting must not stand for the others
    from s3prl_adapters.tools.search_record import shipped_trials

    task = os.path.basename(os.path.dirname(record))
    assert {m: shipped_trials(task, m) for m in METHODS} == {m: 1 if m == "frozen" else 8 for m in METHODS}
    assert shipped_trials(task, "no_such_method") is None

"""`s3prl-adapters tune`: the paper's space per upstream, one-line refusals, a seeded trial sequence,
real trials (pruned ones stopped at once, crashed ones recorded and passed over), a study continued
after a kill, and one study shared by two workers through a real PostgreSQL server."""

import csv
import glob
import os
import shutil
import signal
import socket
import subprocess
import time

import optuna
import pytest
import yaml

from conftest import REPO, tool
from s3prl_adapters.errors import UserError
from s3prl_adapters.tools.tune_space import PAPER_GRID, SearchSpace, Trainee, default_space

CONFIG = os.path.join(REPO, "downstream_configs", "fluent_commands", "mini.yaml")


def _space(upstream, finetune=False, g=None, entries=None):
    trainee = Trainee.of(upstream, finetune, g)
    return SearchSpace(trainee, default_space(trainee) if entries is None else entries)


def test_the_paper_s_space_for_every_upstream(tmp_path):
    grid = list(PAPER_GRID)
    assert _space("wavlm_ladapter").entries == {"l_adapter": grid, "e_adapter": grid, "layer_norm": "e_adapter",
                                                "featurizer": "l_adapter", "backbone_dropout": [True, False]}
    assert _space("wavlm_ladapter_only").entries == {"l_adapter": grid, "featurizer": "l_adapter",
                                                     "backbone_dropout": [True, False]}
    lns = tmp_path / "lns.yaml"
    lns.write_text("train_layer_norms: true\n")  # the reference code's L-only: its LNs at the L rate
    assert _space("wavlm_ladapter_only", g=str(lns)).entries["layer_norm"] == "l_adapter"
    for upstream in ("wavlm_eadapter", "wavlm_houlsby"):
        assert _space(upstream).entries == {"e_adapter": grid, "layer_norm": "e_adapter", "backbone_dropout": [True, False]}
    assert _space("wavlm_lora").entries == {"lora": grid, "backbone_dropout": [True, False]}
    assert _space("wavlm_local", finetune=True).entries == {"encoder": grid, "backbone_dropout": [True, False]}
    assert _space("wavlm_local").entries == {} and _space("wavlm_local").size() == 1  # frozen: the head only
    assert _space("wavlm_ladapter").size() == 50


def test_a_trial_s_settings_become_overrides():
    space = _space("wavlm_ladapter")
    params = {"l_adapter": 1e-3, "e_adapter": 5e-5, "layer_norm": 5e-5, "featurizer": 1e-3, "backbone_dropout": False}
    assert space.overrides(params, yaml.safe_load(open(CONFIG))) == [
        "config.adapter_optimizer.wavlm_ladapter.l_adapter=0.001", "config.adapter_optimizer.wavlm_ladapter.e_adapter=5e-05",
        "config.adapter_optimizer.wavlm_ladapter.layer_norm=5e-05", "config.adapter_optimizer.wavlm_ladapter.featurizer=0.001",
        "config.backbone_dropout.wavlm_ladapter=False"]
    frozen = _space("wavlm_local", entries={"head": [1e-3, 1e-4]})  # S3PRL's one rate
    assert frozen.overrides({"head": 1e-4}, {}) == ["config.optimizer.lr=0.0001"]


@pytest.mark.parametrize("entries, message", [
    ({"e_adapter": [1e-3]}, "'e_adapter' is not something this upstream trains; it has ['head', 'featurizer', "
                            "'l_adapter', 'backbone_dropout']"),
    ({"l_adapter": [1e-3], "featurizer": "lora"}, "'featurizer: lora' ties it to a group this upstream does not have"),
    ({"l_adapter": [2.0]}, "'l_adapter' must be learning rates in (0, 1), got 2.0"),
    ({"l_adapter": []}, "'l_adapter' has an empty list of values"),
    ({"backbone_dropout": ["yes"]}, "'backbone_dropout' takes true/false"),
])
def test_a_space_the_upstream_cannot_use_is_refused(entries, message):
    with pytest.raises(UserError, match=f"the default space, wavlm_ladapter_only: {_re(message)}"):
        _space("wavlm_ladapter_only", entries=entries)


def _re(text):
    import re

    return re.escape(text)


def test_same_seed_same_trial_sequence(tmp_path):
    """The sampler is seeded: the same seed in a fresh storage gives the same settings, trial by trial."""
    from s3prl_adapters.tasks import get_task
    from s3prl_adapters.tools.tune import make_pruner, make_sampler, open_storage, open_study
    from s3prl_adapters.tools.tune_objective import TrialSetup

    space = _space("wavlm_ladapter")

    def sequence(folder, seed):
        setup = TrialSetup("wavlm_ladapter", False, get_task("fluent_commands"), CONFIG, {}, seed=seed)
        study = open_study(open_storage(None, str(folder)), "s", setup, space, make_sampler(space, seed),
                           make_pruner(), {"seed": seed})
        out = []
        for _ in range(6):
            trial = study.ask()
            out.append(space.suggest(trial))
            study.tell(trial, 1.0)
        return out

    first = sequence(tmp_path / "a", 7)
    assert sequence(tmp_path / "b", 7) == first
    assert sequence(tmp_path / "c", 8) != first
    assert len({tuple(sorted(p.items())) for p in first}) == 6  # grid points without repeats


def _tune(out, *extra, fsc, ckpt, timeout=600, env=None):
    cmd = [tool("s3prl-adapters"), "tune", "-u", "wavlm_ladapter", "-d", "fluent_commands", "-c", CONFIG, "-k", ckpt,
           "-o", f"config.downstream_expert.datarc.train_batch_size=4,,config.downstream_expert.datarc.file_path='{fsc}'",
           "--steps", "4", "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_a_worker_waits_for_the_facts_another_is_writing(tmp_path):
    """Two workers start at once: the second loads the study between the creator's first and last fact
    (one write each) and must wait for them, not refuse the study as made for another task."""
    import threading

    from s3prl_adapters.errors import UserError
    from s3prl_adapters.tasks import get_task
    from s3prl_adapters.tools.tune import STUDY_FACTS, make_pruner, make_sampler, open_storage, open_study
    from s3prl_adapters.tools.tune_objective import TrialSetup

    space = _space("wavlm_ladapter")
    setup = TrialSetup("wavlm_ladapter", False, get_task("fluent_commands"), CONFIG, {}, seed=3)
    facts = {k: f"value of {k}" for k in STUDY_FACTS}
    storage = open_storage(None, str(tmp_path))
    creator = open_study(storage, "s", setup, space, make_sampler(space, 3), make_pruner(), {})
    creator.set_user_attr(STUDY_FACTS[0], facts[STUDY_FACTS[0]])  # the creator is half-way through its facts
    rest = threading.Timer(1.0, lambda: [creator.set_user_attr(k, facts[k]) for k in STUDY_FACTS[1:]])
    rest.start()
    study = open_study(storage, "s", setup, space, make_sampler(space, 3), make_pruner(), facts)
    rest.join()
    assert study.user_attrs == facts
    with pytest.raises(UserError, match="created with task"):
        open_study(storage, "s", setup, space, make_sampler(space, 3), make_pruner(), dict(facts, task="asr"))


@pytest.mark.parametrize("flags, message", [
    (["-u", "wavlm_nothing"], "-u wavlm_nothing: unknown upstream"),
    (["-d", "no_such_task"], "-d no_such_task: unknown task"),
    (["--space", "SPACE"], "--space SPACE, wavlm_ladapter: 'lora' is not something this upstream trains"),
    (["--storage", "postgresql://nobody@127.0.0.1:9/nowhere"], "--storage postgresql://nobody@127.0.0.1:9/nowhere: "
                                                               "cannot open"),
])
def test_bad_input_is_one_line_and_writes_nothing(flags, message, tiny_ckpt, tiny_fsc, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("wavlm_ladapter: {lora: [0.001]}\n")
    flags = [str(space) if f == "SPACE" else f for f in flags]
    proc = _tune(tmp_path / "out", "--trials", "2", *flags, fsc=tiny_fsc, ckpt=tiny_ckpt)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("s3prl-adapters tune: error: ") and message.replace("SPACE", str(space)) in last, last
    assert not (tmp_path / "out").exists()


class PruneTrialOne(optuna.pruners.BasePruner):
    """Would stop trial 1 at every dev evaluation (the study's pruner is chosen apart from the objective);
    the objective asks only before the last one, and trial 2 ends complete."""

    asked = []

    def prune(self, study, trial):
        PruneTrialOne.asked.append((trial.number, max(trial.intermediate_values)))
        return trial.number in (1, 2) and (trial.number == 1 or max(trial.intermediate_values) == 4)


def _setup(tmp_path, fsc, ckpt):
    from s3prl_adapters.tools.tune import build_parser, setup_from_args

    args = build_parser().parse_args(
        ["-u", "wavlm_ladapter", "-d", "fluent_commands", "-c", CONFIG, "-k", ckpt, "--steps", "4", "--out",
         str(tmp_path), "--trials", "1",
         "-o", f"config.downstream_expert.datarc.train_batch_size=4,,config.downstream_expert.datarc.file_path='{fsc}'"])
    args.device = "cpu"
    return setup_from_args(args)


def test_trials_run_prune_and_continue(tiny_ckpt, tiny_fsc, tmp_path):
    from s3prl_adapters.tools.tune import tune

    setup, space = _setup(tmp_path, tiny_fsc, tiny_ckpt)
    study, sections = tune(setup, space, str(tmp_path), 3, pruner=PruneTrialOne(), log=lambda line: None)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert (2, 4) not in PruneTrialOne.asked and (2, 2) in PruneTrialOne.asked  # never asked at the last evaluation
    pruned = study.trials[1]
    # the run was killed at its first dev evaluation (step 2 of 4): it never wrote its final checkpoint
    assert pruned.user_attrs["steps_run"] == 2 and pruned.user_attrs["note"].startswith("pruned at step 2")
    assert not os.path.exists(os.path.join(pruned.user_attrs["folder"], "states-4.ckpt"))
    assert os.path.exists(os.path.join(study.trials[0].user_attrs["folder"], "states-4.ckpt"))
    rows = list(csv.DictReader(open(tmp_path / "trials.csv")))
    assert [r["state"] for r in rows] == states and rows[1]["note"].startswith("pruned at step 2")
    best = yaml.safe_load(open(tmp_path / "best.yaml"))
    assert best == sections and set(best["adapter_optimizer"]["wavlm_ladapter"]) == {
        "head", "l_adapter", "e_adapter", "layer_norm", "featurizer"}
    assert best["adapter_optimizer"]["wavlm_ladapter"]["head"] == 0.002  # the config's head rate, never searched
    from s3prl_adapters.tools.tune import best_trial as best_of

    best_trial = best_of(study)
    assert best["adapter_optimizer"]["wavlm_ladapter"]["e_adapter"] == best_trial.params["e_adapter"]
    assert open(tmp_path / "best.txt").read().startswith("config.adapter_optimizer.wavlm_ladapter.head=0.002,,")
    assert os.path.getsize(tmp_path / "history.png") > 0 and os.path.getsize(tmp_path / "rates.png") > 0
    log = open(os.path.join(best_trial.user_attrs["folder"], "train.log")).read()
    assert f"e_adapter 49,952 @ {best_trial.params['e_adapter']:g}" in log  # the run got the trial's rates
    assert "prefix cache" in log
    # the same command with a larger total continues: one more trial, the earlier ones untouched
    study, _ = tune(setup, space, str(tmp_path), 4, log=lambda line: None)
    assert len(study.trials) == 4 and [t.state.name for t in study.trials][:3] == states
    study, _ = tune(setup, space, str(tmp_path), 4, log=lambda line: None)
    assert len(study.trials) == 4  # nothing left to run


def test_a_crashed_trial_is_recorded_and_the_study_goes_on(tiny_ckpt, tiny_fsc, tmp_path):
    from s3prl_adapters.tools.tune import tune

    setup, space = _setup(tmp_path, tiny_fsc, tiny_ckpt)
    setup.user_overrides += ",,config.downstream_expert.datarc.file_path='/nonexistent'"  # the preflight stops it
    study, sections = tune(setup, space, str(tmp_path), 2, log=lambda line: None)
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"] and sections is None
    for t in study.trials:
        assert t.user_attrs["note"].startswith("failed: run_downstream.py") and "(log: " in t.user_attrs["note"]
        assert "Fluent Speech Commands root /nonexistent does not exist" in open(t.user_attrs["log"]).read()


def test_a_killed_study_continues_and_reruns_the_killed_trial(tiny_ckpt, tiny_fsc, tmp_path):
    proc = subprocess.Popen([tool("s3prl-adapters"), "tune", "-u", "wavlm_ladapter", "-d", "fluent_commands", "-c",
                             CONFIG, "-k", tiny_ckpt, "--steps", "4", "--trials", "2", "--out", str(tmp_path),
                             "-o", f"config.downstream_expert.datarc.train_batch_size=4,,"
                                   f"config.downstream_expert.datarc.file_path='{tiny_fsc}'"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not glob.glob(str(tmp_path / "trial_000" / "train.log")) and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # tune and its trial's run, mid-trial
    proc.wait()
    again = _tune(tmp_path, "--trials", "2", fsc=tiny_fsc, ckpt=tiny_ckpt)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[tune] trial 0: its process ended before it did; its settings run again" in again.stderr
    rows = list(csv.DictReader(open(tmp_path / "trials.csv")))
    assert rows[0]["state"] == "FAIL" and rows[0]["note"].startswith("killed:")
    retry = next(r for r in rows if "retry of trial 0" in r["note"])
    assert retry["state"] == "COMPLETE" and retry["e_adapter"] == rows[0]["e_adapter"]
    assert sum(r["state"] in ("COMPLETE", "PRUNED") for r in rows) == 2  # --trials 2: two outcomes


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A real PostgreSQL server (Debian's postgresql, installed by scripts/setup.sh) on a free port; as
    root, run as the package's postgres user, in a folder of its own (pytest's are root-only)."""
    import pwd
    import tempfile

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert bins, "PostgreSQL is not installed (scripts/setup.sh installs Debian's postgresql)"
    bindir = os.path.dirname(bins[-1])
    home = tempfile.mkdtemp(prefix="s3prl-adapters-pg-")
    as_user = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(home, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = os.path.join(home, "data")
    subprocess.run(as_user + [f"{bindir}/initdb", "-D", data, "-U", "postgres", "--auth=trust"],
                   check=True, capture_output=True)
    port = _free_port()
    subprocess.run(as_user + [f"{bindir}/pg_ctl", "-D", data, "-l", os.path.join(home, "server.log"), "-w", "-o",
                              f"-p {port} -k {home} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_user + [f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def test_two_workers_share_one_study_through_postgresql(postgres, tiny_ckpt, tiny_fsc, tmp_path):
    """Two tune processes (as on two machines: each its own --out) on one RDB study: four trials in all,
    each run once, by one of them."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    workers = [subprocess.Popen([tool("s3prl-adapters"), "tune", "-u", "wavlm_ladapter", "-d", "fluent_commands", "-c",
                                 CONFIG, "-k", tiny_ckpt, "--steps", "4", "--trials", "4", "--pruner", "none",
                                 "--storage", postgres, "--study", "shared", "--out", str(tmp_path / f"w{k}"),
                                 "-o", f"config.downstream_expert.datarc.train_batch_size=4,,"
                                       f"config.downstream_expert.datarc.file_path='{tiny_fsc}'"],
                                stderr=subprocess.PIPE, text=True, env=env) for k in range(2)]
    for w in workers:
        assert w.wait(timeout=600) == 0, w.stderr.read()[-3000:]
    study = optuna.load_study(study_name="shared", storage=postgres)
    counted = [t for t in study.trials if not t.user_attrs.get("superseded")]
    assert len(counted) == 4 and all(t.state.name == "COMPLETE" for t in counted)
    folders = [t.user_attrs["folder"] for t in counted]
    assert sorted(os.path.basename(f) for f in folders) == [f"trial_{n:03d}" for n in sorted(t.number for t in counted)]
    for folder in folders:  # each trial ran exactly once, in one worker's folder
        assert len(glob.glob(str(tmp_path / "w*" / os.path.basename(folder)))) == 1
        assert open(os.path.join(folder, "train.log")).read().count("[Runner] - Start a new experiment") == 1

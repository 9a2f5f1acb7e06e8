"""QbE (`-d quesst14_dtw`): our MTWV on a hand-made case, the corpus's files read and refused, the upstream's
states for a task without training, and SUPERB's layer sweep end to end on the stand-in (stock
run_downstream.py per layer, scored, resumed, submitted)."""

import json
import os
import zipfile

import pytest
import torch
import yaml

from s3prl_adapters.errors import UserError
from s3prl_adapters.paths import DEFAULT_BACKBONE
from s3prl_adapters.tasks import TASKS, make_mini_superb
from s3prl_adapters.tasks.query_by_example import BETA, read_groundtruth, read_stdlist, score_run, twv
from s3prl_adapters.tools.submission import build_submission, missing_members

TASK = TASKS["quesst14_dtw"]


def test_mtwv_on_a_hand_made_case():
    # q1 occurs in d1; q2 in d2 and d3; q3 nowhere (left out: no P_miss). Four documents.
    targets = {("q1", "d1"), ("q2", "d2"), ("q2", "d3")}
    detections = {("q1", "d1"): (3.0, True), ("q1", "d2"): (1.0, False), ("q1", "d3"): (0.5, False),
                  ("q1", "d4"): (-1.0, False), ("q2", "d2"): (2.5, False), ("q2", "d3"): (0.8, False),
                  ("q2", "d1"): (2.0, True), ("q2", "d4"): (-2.0, False), ("q3", "d1"): (9.0, True)}
    result = twv(detections, targets, ["q1", "q2", "q3"], ["d1", "d2", "d3", "d4"])
    assert abs(BETA - 12.49) < 1e-9
    # θ = 2.5: q1 all found, no false alarm; q2 half missed -> 1 - (0 + 0.5) / 2
    assert result["mtwv"] == pytest.approx(0.75) and result["threshold"] == 2.5 and result["queries"] == 2
    # YES decisions: q1 found; q2 none found, one false alarm of 2 non-targets -> 1 - (0 + 1 + β/2) / 2
    assert result["atwv"] == pytest.approx(1 - (1 + BETA / 2) / 2)
    # tied scores are detected together: a hit tied with a false alarm costs the false alarm (1 - 0.3, not 1)
    tied = {("q1", "d1"): (1.0, True), ("q1", "d2"): (1.0, True)}
    assert twv(tied, {("q1", "d1")}, ["q1"], ["d1", "d2"], beta=0.3)["mtwv"] == pytest.approx(0.7)
    # a missing trial counts as never detected; detecting nothing at best scores 0, not a negative TWV
    worst = {("q1", "d2"): (1.0, True), ("q2", "d1"): (1.0, True)}
    assert twv(worst, targets, ["q1", "q2"], ["d1", "d2", "d3", "d4"]) == {
        "mtwv": 0.0, "threshold": None, "atwv": pytest.approx(-(BETA / 3 + BETA / 2) / 2), "queries": 2}
    with pytest.raises(UserError, match="no query has an occurrence"):
        twv(detections, targets, ["q3"], ["d1", "d2"])


def test_ground_truth_and_stdlist_files(tmp_path):
    gt = tmp_path / "groundtruth_quesst14_dev"
    gt.mkdir()
    (gt / "quesst14_dev.rttm").write_text(
        "SPEAKER quesst14_00001 1 0.0 1.0 <NA> <NA> spk <NA>\n"
        "LEXEME quesst14_00001 1 0.500 0.400 quesst14_dev_0001 lex SELF <NA>\n"
        "LEXEME quesst14_00001 1 2.000 0.400 quesst14_dev_0001 lex SELF <NA>\n"  # twice in one file: one target
        "LEXEME quesst14_00002 1 0.000 0.000 NO_KEYWORD lex SELF <NA>\n")
    assert read_groundtruth(str(gt)) == {("quesst14_dev_0001", "quesst14_00001")}
    (gt / "bad.rttm").write_text("LEXEME quesst14_00003 1\n")
    with pytest.raises(UserError, match=r"bad.rttm:1: expected 'LEXEME"):
        read_groundtruth(str(gt))
    with pytest.raises(UserError, match="no .rttm ground truth"):
        read_groundtruth(str(tmp_path))

    good = ('<stdlist termlist_filename="benchmark.stdlist.xml"><detected_termlist termid="q1">'
            '<term file="d1" channel="1" tbeg="0.000" dur="0.00" score="1.5" decision="YES"/>'
            '<term file="d2" channel="1" tbeg="0.000" dur="0.00" score="-0.25" decision="NO"/>'
            '</detected_termlist></stdlist>')
    path = tmp_path / "benchmark.stdlist.xml"
    path.write_text(good)
    assert read_stdlist(str(path)) == {("q1", "d1"): (1.5, True), ("q1", "d2"): (-0.25, False)}
    for text, message in ((good.replace('"YES"', '"MAYBE"'), "decision 'MAYBE'"),
                          (good.replace('"1.5"', '"high"'), "score 'high' is not a number"),
                          (good[:-10], "not well-formed XML"), ("<results/>", "expected <stdlist>")):
        path.write_text(text)
        with pytest.raises(UserError, match=message):
            read_stdlist(str(path))


def _upstream(name, ckpt, tmp_path, settings):
    from s3prl_adapters.bridge.hubconf import UPSTREAMS

    g = tmp_path / f"g_{len(os.listdir(tmp_path))}.yaml"
    g.write_text(yaml.safe_dump(settings))
    return UPSTREAMS[name](ckpt, str(g)).eval()


def test_backbone_states_and_a_trained_sets_weights(tiny_ckpt, tmp_path):
    """`hidden_states: backbone` hands the Featurizer stock WavLM's L+1 states, not the L-adapters'; with a trained
    set the sweep runs its upstream from an `-i` checkpoint that S3PRL's runner loads into it (Runner._load_weight),
    checked against the backbone first."""
    from s3prl_adapters.inference.adapter_set import untrained
    from s3prl_adapters.method.backbone import make_tiny_wavlm
    from s3prl_adapters.tools.qbe import Upstream

    wavs = [torch.randn(16000), torch.randn(12000)]
    plain = _upstream("wavlm_ladapter_only", tiny_ckpt, tmp_path, {})
    backbone = _upstream("wavlm_ladapter_only", tiny_ckpt, tmp_path, {"hidden_states": "backbone"})
    with torch.no_grad():
        adapters, states = plain(wavs)["hidden_states"], backbone(wavs)["hidden_states"]
        expected = backbone.backbone_hidden_states(wavs, alone=True)
    assert len(adapters) == 3 and len(states) == 4  # 3 layers: 3 L-adapters, or 3 + 1 backbone states
    assert adapters[0].shape[-1] != states[0].shape[-1]
    assert all(torch.equal(a, b) for a, b in zip(states, expected))
    with pytest.raises(UserError, match="'hidden_states' must be one of"):
        _upstream("wavlm_ladapter_only", tiny_ckpt, tmp_path, {"hidden_states": "adapters"})
    untouched = Upstream(tiny_ckpt, None, str(tmp_path))
    assert (untouched.name, untouched.settings, untouched.states, untouched.init_ckpt) == (
        "wavlm_ladapter_only", {"hidden_states": "backbone"}, 4, None)

    trained = untrained("fluent_commands", "wavlm_ladapter", tiny_ckpt, seed=3)
    trained.upstream_state = {k: v + 0.5 for k, v in trained.upstream_state.items()}  # not what an init gives
    trained.save(str(tmp_path / "ic.adapter"))
    upstream = Upstream(tiny_ckpt, str(tmp_path / "ic.adapter"), str(tmp_path))
    assert upstream.name == "wavlm_ladapter" and upstream.states == 3  # the L-adapters' outputs
    model = _upstream(upstream.name, tiny_ckpt, tmp_path, upstream.settings)
    model.load_state_dict(torch.load(upstream.init_ckpt)["Upstream"])  # what the runner does with -i
    state = model.state_dict()
    assert state.keys() == trained.upstream_state.keys()
    assert all(torch.equal(state[k], v) for k, v in trained.upstream_state.items())
    other = make_tiny_wavlm(str(tmp_path / "other.pt"), layers=3, dim=48, seed=1)
    with pytest.raises(UserError, match="ic.adapter: trained on backbone .* -k is"):
        Upstream(other, str(tmp_path / "ic.adapter"), str(tmp_path))
    with pytest.raises(UserError, match="trains nothing, so it has no head"):
        untrained("quesst14_dtw", "wavlm_ladapter", tiny_ckpt)


@pytest.mark.slow
def test_the_layer_sweep_on_the_standin(tmp_path, capsys):
    """Two layers of the embedded backbone on the stand-in's dev queries, the better on eval: each pass a
    stock run_downstream.py, scored from its stdlist; a second invocation runs nothing; the test pass
    validates as the submission's qbe member, and a stdlist missing a pair does not."""
    from s3prl_adapters.tools.cli import main

    root = tmp_path / "mini"
    make_mini_superb(str(root), tasks=["quesst14_dtw"])
    corpus = root / "quesst14Database"
    lists = {n: (corpus / "scoring" / f"language_key_{n}.lst").read_text().split("\n") for n in ("utterances", "dev")}
    assert any(line.endswith(" romanian") for line in lists["utterances"])  # listed, skipped by the recipe
    assert read_groundtruth(str(corpus / "scoring" / "groundtruth_quesst14_dev"))  # every query occurs somewhere

    sweep = tmp_path / "sweep"
    argv = ["qbe", "-k", DEFAULT_BACKBONE, "--expdir", str(sweep), "--quesst", str(corpus), "--layers", "0,3",
            "-c", TASK.config_path(mini=True), "--device", "cpu"]
    with pytest.raises(SystemExit):
        main(argv[:-5] + ["4,5"] + argv[-4:])  # the embedded backbone has 4 layers: states 0..4
    assert "--layers [5]: the upstream has 5 hidden states (0..4)" in capsys.readouterr().err
    main(argv)
    summary = json.loads((sweep / "qbe.json").read_text())
    dev = {int(k): v for k, v in summary["dev_mtwv"].items()}
    assert set(dev) == {0, 3} and summary["best_layer"] == max(dev, key=lambda k: (dev[k], -k))
    assert summary["hidden_states"] == "backbone" and summary["upstream"] == "wavlm_ladapter_only"
    test = score_run(summary["test_expdir"])
    assert test["split"] == "test" and test["mtwv"] == summary["test_mtwv"]
    assert summary["test_mtwv"] > 0.2  # the pretrained backbone finds spoken phrases (detecting nothing: 0)
    assert "best layer on dev" in capsys.readouterr().out

    logs = {p: p.stat().st_mtime_ns for p in sweep.glob("layer_*/log.txt")}
    assert len(logs) == 3
    main(argv)  # every pass scored already: read back, nothing run
    assert {p: p.stat().st_mtime_ns for p in sweep.glob("layer_*/log.txt")} == logs
    assert json.loads((sweep / "qbe.json").read_text()) == summary
    import shutil

    shutil.copy(DEFAULT_BACKBONE, tmp_path / "other.pt")
    with pytest.raises(SystemExit):  # the same folder with another backbone would read back the wrong passes
        main([a if a != DEFAULT_BACKBONE else str(tmp_path / "other.pt") for a in argv])
    assert f"--expdir {sweep}: holds a sweep with other backbone" in capsys.readouterr().err

    members = build_submission(str(tmp_path / "predict.zip"), qbe=str(sweep))
    assert members == [TASK.submission_member]
    with zipfile.ZipFile(tmp_path / "predict.zip") as z:
        assert z.read(TASK.submission_member) == open(os.path.join(summary["test_expdir"], TASK.prediction_file), "rb").read()
    assert "--qbe" not in missing_members(members) and {"--asr-lm", "--er-fold5", "--sd"} <= set(missing_members(members))

    stdlist = os.path.join(summary["test_expdir"], TASK.prediction_file)
    text = open(stdlist).read()
    cut = text.index("<term ")
    with open(stdlist, "w") as f:
        f.write(text[:cut] + text[text.index("/>", cut) + 2:])  # one (query, document) pair fewer
    with pytest.raises(UserError, match="1 of .* missing"):
        build_submission(str(tmp_path / "bad.zip"), qbe=summary["test_expdir"])
    assert not (tmp_path / "bad.zip").exists()


@pytest.mark.slow
def test_a_trained_sets_layers_reach_the_recipe(tmp_path):
    """--adapters: each pass runs the set's upstream, whose tensors S3PRL's runner loads from the `-i` checkpoint."""
    from s3prl_adapters.inference.adapter_set import untrained
    from s3prl_adapters.tools.cli import main

    root = tmp_path / "mini"
    make_mini_superb(str(root), tasks=["quesst14_dtw"])
    untrained("fluent_commands", "wavlm_ladapter", DEFAULT_BACKBONE, seed=1).save(str(tmp_path / "ic.adapter"))
    main(["qbe", "-k", DEFAULT_BACKBONE, "--adapters", str(tmp_path / "ic.adapter"), "--layers", "1", "--expdir",
          str(tmp_path / "sweep"), "--quesst", str(root / "quesst14Database"), "-c", TASK.config_path(mini=True),
          "--device", "cpu"])
    summary = json.loads((tmp_path / "sweep" / "qbe.json").read_text())
    assert (summary["upstream"], summary["hidden_states"], summary["best_layer"]) == ("wavlm_ladapter", "method", 1)
    for split in ("dev", "test"):
        log = (tmp_path / "sweep" / f"layer_1_{split}" / "log.txt").read_text()
        args = yaml.safe_load(open(next((tmp_path / "sweep" / f"layer_1_{split}").glob("args_*.yaml"))))
        assert "Loading Upstream weights" in log and args["init_ckpt"] == str(tmp_path / "sweep" / "upstream_init.ckpt")

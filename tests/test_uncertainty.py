"""The benchmark's uncertainty: bootstrap intervals over test items, pooled over seeds, paired
differences against the proposed method, and how the report shows them."""

import math

import numpy as np

from s3prl_adapters.tools.report import results_markdown
from s3prl_adapters.tools.uncertainty import analyse, run_interval


def _run(task, method, seed, items, fold=None):
    return {"task": task, "method": method, "seed": seed, "fold": fold, "items": items, "trainable_params": 10,
            "backbone": "/x/wavlm.pt", "git_commit": "abc"}


def _accuracy(correct):
    return {"ids": [f"u{k:04d}" for k in range(len(correct))], "correct": list(correct)}


def test_interval_width_at_the_stand_in_test_size():
    rng = np.random.default_rng(1)
    correct = rng.permutation([1] * 136 + [0] * 136)  # 272 test utterances at 50 %
    lo, hi = run_interval(_run("fluent_commands", "ladapter", 1, _accuracy(correct)))
    assert lo < 50 < hi and (hi - lo) / 2 <= 6.2  # the binomial ±1.96·sqrt(.25/272) = ±5.94 points
    assert run_interval(_run("fluent_commands", "ladapter", 1, _accuracy([1] * 50))) == (100.0, 100.0)


def test_paired_difference_and_overlap():
    rng = np.random.default_rng(2)
    base = rng.random(272) < 0.5
    better = base | (rng.random(272) < 0.5)  # right wherever the proposed one is, and on half the rest
    same = base.copy()
    results = [_run("emotion", "ladapter", 1, _accuracy(base.astype(int)), fold=1),
               _run("emotion", "frozen", 1, _accuracy(same.astype(int)), fold=1),
               _run("emotion", "finetune", 1, _accuracy(better.astype(int)), fold=1)]
    cells = analyse(results, resamples=500)
    assert cells[("emotion", "frozen")]["delta"] == 0 and cells[("emotion", "frozen")]["delta_ci"] == (0.0, 0.0)
    assert cells[("emotion", "frozen")]["overlaps_reference"] and not cells[("emotion", "frozen")]["delta_excludes_zero"]
    finetune = cells[("emotion", "finetune")]
    assert finetune["delta"] > 0 and finetune["delta_excludes_zero"] and finetune["delta_ci"][0] > 0
    table = results_markdown(results, cells=cells)
    frozen_row = next(line for line in table.splitlines() if line.startswith("| Frozen weighted sum"))
    finetune_row = next(line for line in table.splitlines() if line.startswith("| Fine-tuning"))
    assert "≈" in frozen_row and "≈" not in finetune_row  # not different / different by the overlap rule
    assert "Difference to L+E adapters (proposed)" in table and " *" in table


def test_seeds_give_mean_sd_and_a_pooled_interval():
    rng = np.random.default_rng(3)
    runs = [_run("fluent_commands", "ladapter", s, _accuracy((rng.random(272) < p).astype(int)))
            for s, p in ((1, 0.4), (2, 0.5), (3, 0.6))]
    cell = analyse(runs, resamples=300)[("fluent_commands", "ladapter")]
    values = [100 * np.mean(r["items"]["correct"]) for r in runs]
    assert math.isclose(cell["value"], np.mean(values)) and math.isclose(cell["sd"], np.std(values, ddof=1))
    assert cell["seeds"] == 3 and cell["ci"][0] < cell["value"] < cell["ci"][1]
    assert cell["ci"][1] - cell["ci"][0] < 12  # pooled over seeds: narrower than a single run's ±6


def test_wer_and_eer_items():
    from s3prl_adapters.tasks import TASKS

    asr = {"ids": ["a", "b"], "errors": [1, 3], "words": [10, 10]}
    assert TASKS["asr"].score(asr, np.array([0, 1])) == 20.0 and TASKS["asr"].score(asr, np.array([1, 1])) == 30.0
    rng = np.random.default_rng(4)
    labels = np.array([1, 0] * 1000)
    scores = labels * 0.3 + rng.normal(0, 0.2, 2000)
    asv = {"ids": [str(k) for k in range(2000)], "labels": list(labels), "scores": list(scores)}
    eer = TASKS["sv_voxceleb1"].score(asv, np.arange(2000))
    assert 15 < eer < 30  # two Gaussians 1.5 sd apart: EER about 23 %
    lo, hi = run_interval(_run("sv_voxceleb1", "ladapter", 1, asv), resamples=200)
    assert lo < eer < hi and hi - lo < 6


def test_closed_form_eer_equals_s3prl_s_brentq_eer():
    """The bootstrap's EER is S3PRL's: random trial sets, with tied scores and perfect separation."""
    from s3prl.downstream.sv_voxceleb1.utils import EER

    from s3prl_adapters.tasks.speaker_verification import equal_error_rate

    checked = 0
    for seed in range(120):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 2, int(rng.integers(4, 400)))
        if labels.min() == labels.max():
            continue
        scores = rng.normal(size=labels.size) + labels * rng.uniform(0, 2)
        if seed % 3 == 0:
            scores = np.round(scores, 1)  # many ties
        if seed % 7 == 0:
            scores = labels * 1.0  # EER 0
        assert abs(equal_error_rate(labels, scores) - EER(labels, scores)[0]) < 1e-9, seed
        checked += 1
    assert checked > 100


def test_with_seeds_the_paired_difference_covers_the_seed_spread_too():
    """Seeds that disagree (one far better, one far worse than the reference) leave the item-only Δ
    interval narrow around the mean but the seeds-and-items interval wide enough to cover 0."""
    rng = np.random.default_rng(5)
    reference = [_run("fluent_commands", "ladapter", s, _accuracy((rng.random(272) < 0.5).astype(int))) for s in (1, 2, 3)]
    spread = [_run("fluent_commands", "frozen", s, _accuracy((rng.random(272) < p).astype(int)))
              for s, p in ((1, 0.9), (2, 0.2), (3, 0.75))]
    cells = analyse(reference + spread, resamples=500)
    cell = cells[("fluent_commands", "frozen")]
    assert cell["delta_covers"] == "seeds and test items" and cell["sd"] > 25
    assert cell["delta_ci"][0] < 0 < cell["delta_ci"][1]  # the seeds disagree: no significant difference
    single = analyse([r for r in reference + spread if r["seed"] == 1], resamples=500)[("fluent_commands", "frozen")]
    assert single["delta_covers"] == "test items" and single["delta_excludes_zero"]  # one seed alone looked sure
    assert "resampling seeds (the same seeds for both methods) and the same test items" in results_markdown(
        reference + spread, cells=cells)

"""PR and SF: S3PRL's `-d ctc` recipe with the corpus readers PyPI S3PRL lacks (ours, installed by the
launcher), the shipped configs, the stand-ins, the metrics on hand-made cases, and training, evaluation
and resumption through run_downstream.py for a parameter-efficient method and fine-tuning (all seven
methods: scripts/ctc_all_methods.sh), export, predict and submission."""

import glob
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, tool

CONFIGS = os.path.join(REPO, "downstream_configs")


@pytest.fixture(scope="module")
def ctc_corpus(tmp_path_factory):
    """PR's (the ASR stand-in's LibriSpeech and a lexicon of its words) and SF's stand-ins: about 10 s."""
    from s3prl_adapters.tasks import make_mini_superb

    root = str(tmp_path_factory.mktemp("ctc_superb"))
    manifest = make_mini_superb(root, tasks=["pr", "sf"])
    assert manifest["tasks"] == ["asr", "sf", "pr"]
    return root


def _run(*argv, timeout=300):
    return subprocess.run([tool("run_downstream.py"), *argv], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def _write(path, lines):
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def test_metrics_on_hand_made_cases(tmp_path):
    """PER, slot-type F1 and slot-value CER as S3PRL's ctc/metric.py computes them, and our per-item
    scores (the benchmark's bootstrap) giving the same values."""
    from s3prl.downstream.ctc.metric import per, slot_type_f1, slot_value_cer

    from s3prl_adapters.tasks import get_task

    # PR: one deletion in 4 phonemes, one substitution in 2: 2 errors / 6 reference phonemes
    hyp, ref = ["AH0 B K", "S IY1"], ["AH0 B D K", "S IH1"]
    assert per(hypothesis=hyp, groundtruth=ref) == pytest.approx(2 / 6)
    _write(tmp_path / "test-hyp.ark", [f"u{i} {h}" for i, h in enumerate(hyp)])
    _write(tmp_path / "test-ref.ark", [f"u{i} {r}" for i, r in enumerate(ref)])
    pr = get_task("pr")
    items = pr.test_items(str(tmp_path))
    assert pr.score(items, list(range(2))) == pytest.approx(100 * 2 / 6)

    # SF: the first command finds city but misses timeRange (P 1, R 1/2: F1 2/3), the second has no slot
    # and predicts none (F1 1): mean 5/6; values: PARIS right, TONIGHT missing: 7 of 12 characters wrong
    ref = ["B-city PARIS E-city IN B-timeRange TONIGHT E-timeRange", "PLAY MUSIC"]
    hyp = ["B-city PARIS E-city IN TONITE", "PLAY MUSIK"]
    assert slot_type_f1(hypothesis=hyp, groundtruth=ref) == pytest.approx(5 / 6)
    assert slot_value_cer(hypothesis=hyp, groundtruth=ref) == pytest.approx(7 / 12)
    _write(tmp_path / "test-hyp.ark", [f"u{i} {h}" for i, h in enumerate(hyp)])
    _write(tmp_path / "test-ref.ark", [f"u{i} {r}" for i, r in enumerate(ref)])
    sf = get_task("sf")
    assert sf.score(sf.test_items(str(tmp_path)), list(range(2))) == pytest.approx(100 * 5 / 6)
    answer = sf.structured("B-city NEW YORK E-city IN B-timeRange TONIGHT E-timeRange")
    assert answer["transcript"] == "NEW YORK IN TONIGHT"
    assert answer["slots"] == [{"slot": "city", "value": "NEW YORK"}, {"slot": "timeRange", "value": "TONIGHT"}]


_READERS = """
import sys
import yaml
from s3prl.downstream.ctc.text import load_text_encoder
from s3prl.downstream.ctc.data import create_dataset
from s3prl_adapters.tasks import get_task
from s3prl_adapters.bridge import compat
task, root, fix = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
config = yaml.safe_load(open(get_task(task).config_path(mini=True)))
compat.relative_config_paths_resolve_against_cwd(config, get_task(task).config_path(mini=True))
expert = config["downstream_expert"]
for key, value in get_task(task).standin_overrides(root).items():
    section, _, key = key.rpartition(".")
    expert[section or "corpus"][key] = value
if fix:
    compat.ctc_recipe_lacks_its_corpus_readers()
tokenizer = load_text_encoder(**expert["text"])
dataset, _ = create_dataset("train", tokenizer, **expert["corpus"])
bucket = dataset[0]
print(len(dataset), len(bucket), tokenizer.decode(bucket[0][1])[:60])
"""


@pytest.mark.parametrize("task", ["pr", "sf"])
def test_ctc_recipe_lacks_its_corpus_readers(task, ctc_corpus, tmp_path):
    """On PyPI S3PRL the recipe cannot build a dataset (no ctc/corpus package); with the workaround our
    reader serves the stand-in: buckets of the config's batch size, labels that decode to the text."""
    script = tmp_path / "readers.py"
    script.write_text(_READERS)
    broken = subprocess.run([sys.executable, str(script), task, ctc_corpus, "0"], capture_output=True, text=True)
    assert broken.returncode != 0 and "No module named 's3prl.downstream.ctc.corpus'" in broken.stderr
    fixed = subprocess.run([sys.executable, str(script), task, ctc_corpus, "1"], capture_output=True, text=True)
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    size, bucket, text = fixed.stdout.split(" ", 2)
    assert int(size) == (480 if task == "pr" else 192) and int(bucket) == 8
    assert re.fullmatch(r"([A-Z]+[0-2]? )*[A-Z]+[0-2]?\n" if task == "pr" else r"[A-Z' \-a-z_]+\n", text), text


def test_ctc_loaders_after_the_first_forget_num_workers():
    """S3PRL's load_dataset pops num_workers from the corpus section: the dev loader ran 12 workers."""
    from s3prl.downstream.ctc import expert

    from s3prl_adapters.bridge import compat

    corpus = {"num_workers": 0}
    popped = dict(corpus)
    popped.pop("num_workers", 12)  # what the original does to the dict it is handed
    original = expert.load_dataset
    seen = []
    try:
        expert.load_dataset = lambda split, tokenizer, c: seen.append(c.pop("num_workers", 12))
        for _ in range(2):
            expert.load_dataset("train", None, corpus)
        assert seen == [0, 12] and corpus == {}  # S3PRL's behaviour: the second split gets 12 workers
        corpus, seen[:] = {"num_workers": 0}, []
        compat.ctc_loaders_after_the_first_forget_num_workers()
        for _ in range(2):
            expert.load_dataset("train", None, corpus)
        assert seen == [0, 0] and corpus == {"num_workers": 0}
    finally:
        expert.load_dataset = original


def test_ctc_without_a_config_names_the_shipped_ones(tmp_path):
    r = _run("-m", "train", "-u", "wavlm_ladapter", "-d", "ctc", "-p", str(tmp_path / "x"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "-d ctc runs PR and SF, chosen with -c" in r.stderr and "pr/config.yaml" in r.stderr and "sf/config.yaml" in r.stderr
    assert not os.path.exists(tmp_path / "x")


@pytest.mark.parametrize("field, value, message", [
    ("select", "__import__('os').system('touch PWNED')", "downstream_expert.model.select"),
    ("metric", "__import__('os').system('touch PWNED')", "downstream_expert.metric"),
])
def test_ctc_config_strings_are_checked(field, value, message, tmp_path):
    import yaml

    config = yaml.safe_load(open(os.path.join(CONFIGS, "pr", "mini.yaml")))
    if field == "select":
        config["downstream_expert"]["model"]["select"] = value
    else:
        config["downstream_expert"]["metric"] = [value]
    path = tmp_path / "crafted.yaml"
    path.write_text(yaml.safe_dump(config))
    r = _run("-m", "train", "-u", "wavlm_ladapter", "-d", "ctc", "-c", str(path), "-p", str(tmp_path / "x"))
    assert r.returncode == 2 and message in r.stderr and "refused" in r.stderr, r.stderr[-1500:]
    assert not glob.glob(str(tmp_path / "**" / "PWNED"), recursive=True) and not os.path.exists("PWNED")


def test_prepare_libriphone_lexicon(ctc_corpus, tmp_path):
    """Given lexicons first, CMUdict for the rest; a word neither has is one line naming it."""
    from s3prl_adapters.errors import UserError
    from s3prl_adapters.tasks.phoneme_recognition import write_lexicon

    root = os.path.join(ctc_corpus, "LibriSpeech")
    mine = tmp_path / "mine.txt"
    mine.write_text("THE\tDH IY1\n")
    counts = write_lexicon(root, ["dev-clean"], str(tmp_path / "lex.txt"), [str(mine)])
    lexicon = dict(line.split("\t") for line in (tmp_path / "lex.txt").read_text().splitlines())
    assert counts["given"] == 1 and counts["cmudict"] == counts["words"] - 1 == len(lexicon) - 1
    assert lexicon["THE"] == "DH IY1" and lexicon["OLD"] == "OW1 L D"
    trans = glob.glob(os.path.join(root, "dev-clean", "*", "*", "*.trans.txt"))[0]
    copy = tmp_path / "corpus"
    os.makedirs(copy / "dev-clean" / "1" / "2")
    (copy / "dev-clean" / "1" / "2" / "1-2.trans.txt").write_text("1-2-0000 THE ZORBLATTIC MAN\n")
    with pytest.raises(UserError, match=r"1 word\(s\) in no lexicon and not in CMUdict, e.g. \['ZORBLATTIC'\]"):
        write_lexicon(str(copy), ["dev-clean"], str(tmp_path / "lex2.txt"), [])
    assert not os.path.exists(tmp_path / "lex2.txt") and os.path.isfile(trans)
    # --g2p: g2p-en's model predicts it, in SUPERB's phoneme set
    from s3prl_adapters.data.ctc_corpora import PHONEMES

    counts = write_lexicon(str(copy), ["dev-clean"], str(tmp_path / "lex2.txt"), [], g2p=True)
    assert counts == {"given": 0, "cmudict": 2, "g2p": 1, "words": 3}
    predicted = dict(line.split("\t") for line in (tmp_path / "lex2.txt").read_text().splitlines())["ZORBLATTIC"]
    assert len(predicted.split()) >= 6 and set(predicted.split()) <= set(PHONEMES)


def _train(task, upstream, ckpt, corpus, expdir, steps, extra=()):
    from s3prl_adapters.tasks import corpus_overrides

    overrides = (corpus_overrides(task, corpus) + f",,config.runner.total_steps={steps},,config.runner.eval_step=4"
                 ",,config.runner.save_step=4,,config.runner.log_step=2")
    return _run("-m", "train", "-u", upstream, "-k", ckpt, "-d", "ctc", "-c", os.path.join(CONFIGS, task, "mini.yaml"),
                "-p", expdir, "--device", "cpu", "--seed", "1", "-a", "-o", overrides, *extra)


@pytest.mark.parametrize("task, metric, upstream", [("pr", "per", "wavlm_ladapter"), ("pr", "per", "wavlm_local"),
                                                    ("sf", "slot_type_f1", "wavlm_ladapter")])
def test_pr_and_sf_train_evaluate_and_resume(task, metric, upstream, ctc_corpus, tiny_ckpt, tmp_path):
    """Train 4 steps, resume to 8 (-a picks up states-4.ckpt), evaluate the test split: the recipe's
    metric lines, its hypothesis file for every test utterance, the trainable groups of the method."""
    from s3prl_adapters.tasks import get_task

    expdir = str(tmp_path / "exp")
    extra = ("-f",) if upstream == "wavlm_local" else ()
    first = _train(task, upstream, tiny_ckpt, ctc_corpus, expdir, 4, extra)
    assert first.returncode == 0, first.stderr[-3000:]
    assert re.search(rf"^dev {metric}: ", first.stdout + first.stderr, re.M)
    assert os.path.isfile(os.path.join(expdir, "states-4.ckpt"))
    resumed = _train(task, upstream, tiny_ckpt, ctc_corpus, expdir, 8, extra)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert re.search(r"Resume from \S*states-4.ckpt", resumed.stdout + resumed.stderr)
    assert os.path.isfile(os.path.join(expdir, "states-8.ckpt"))
    groups = re.search(r"optimizer groups: (.*)", first.stderr)
    assert groups and (("encoder" in groups.group(1)) == (upstream == "wavlm_local"))
    test = _run("-m", "evaluate", "-e", os.path.join(expdir, "states-8.ckpt"), "-t", "test", "--device", "cpu")
    assert test.returncode == 0, test.stderr[-3000:]
    spec = get_task(task)
    value = spec.parse_metric(test.stdout + test.stderr)
    assert 0.0 <= value
    assert spec.validate_prediction(expdir) == os.path.join(expdir, "test-hyp.ark")
    items = spec.test_items(expdir)
    assert len(items["ids"]) == 60
    assert spec.score(items, list(range(len(items["ids"])))) == pytest.approx(100 * value, abs=1e-6)
    # the cell reproduced: the exported set answers every test file as the recipe's test pass did
    from s3prl_adapters.inference import AdapterSet, MultiTaskWavLM, export, read_audio

    path = str(tmp_path / "task.adapter")
    export(os.path.join(expdir, "states-8.ckpt"), progress=False).save(path)
    model = MultiTaskWavLM(tiny_ckpt, [AdapterSet.load(path)])
    files, recorded = spec.test_files(expdir), spec.recorded_answers(expdir)
    assert sorted(files) == sorted(recorded)
    answers = {u: model.predict([read_audio(files[u])[0]])[0]["task"] for u in sorted(files)}
    assert {u: spec.answer_key(a) for u, a in answers.items()} == recorded
    assert all(isinstance(a["phonemes" if task == "pr" else "slots"], list) for a in answers.values())
    # the submission member, validated against the corpus's test list
    import zipfile

    from s3prl_adapters.tools.submission import build_submission

    zipped = str(tmp_path / "predict.zip")
    assert build_submission(zipped, **{spec.key: expdir}) == [spec.submission_member]
    with zipfile.ZipFile(zipped) as z:
        assert len(z.read(spec.submission_member).decode().splitlines()) == 60


@pytest.mark.parametrize("task, key, message", [
    ("pr", "corpus.lexicon=['/nonexistent/lexicon.txt']", "lexicon (s3prl-adapters prepare-libriphone writes one) "
                                                          "/nonexistent/lexicon.txt does not exist (config "
                                                          "downstream_expert.corpus.lexicon)"),
    ("sf", "corpus.test=['nonexistent']", "split folder 'nonexistent'"),
])
def test_ctc_corpus_checks_are_one_line(task, key, message, ctc_corpus, tiny_ckpt, tmp_path):
    from s3prl_adapters.tasks import corpus_overrides

    r = _run("-m", "train", "-u", "wavlm_ladapter", "-k", tiny_ckpt, "-d", "ctc", "-c", os.path.join(CONFIGS, task, "mini.yaml"),
             "-p", str(tmp_path / "x"), "--device", "cpu",
             "-o", f"{corpus_overrides(task, ctc_corpus)},,config.downstream_expert.{key}")
    assert r.returncode == 2 and message in r.stderr.strip().splitlines()[-1], r.stderr[-1500:]
    assert "Traceback" not in r.stderr

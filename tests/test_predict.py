"""Trained adapters on new audio: an exported set answers exactly what `run_downstream.py -m evaluate`
wrote for the same checkpoint (KS and SID here; the paper's four tasks for every method in
tests/test_reproduction.py, through the benchmark), one backbone
serves many sets (shared passes equal separate ones, switching E-adapters in and out leaves it
bit-identical), and the file format, refusals and audio handling hold."""

import csv
import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import REPO, tool
from s3prl_adapters.errors import UserError
from s3prl_adapters.inference import AdapterSet, MultiTaskWavLM, export, read_audio
from s3prl_adapters.tasks import TASKS, corpus_overrides

BACKBONE = os.path.join(REPO, "s3prl_adapters", "assets", "wavlm_tiny_pretrained.pt")
G = os.path.join(REPO, "tests", "adapters_width256.yaml")

# Per task: overrides for a short run whose evaluation goes one utterance at a time (as predict
# --batch-size 1), and the split `-m evaluate` scores.
RUNS = {
    "asr": ("config.downstream_expert.datarc.eval_batch_size=1", "test-clean"),
    "fluent_commands": ("config.downstream_expert.datarc.eval_batch_size=1", "test"),
    "emotion": ("config.downstream_expert.datarc.eval_batch_size=1", "test"),
    "sv_voxceleb1": ("config.downstream_expert.datarc.eval_batch_size=1", "test"),
    "speech_commands": ("config.downstream_expert.datarc.batch_size=1", "test"),
    "voxceleb1": ("config.downstream_expert.datarc.eval_batch_size=1", "test"),
}
STEPS = "config.runner.total_steps=4,,config.runner.log_step=4,,config.runner.eval_step=1000,,config.runner.save_step=4"


def _run(argv, cwd, env):
    proc = subprocess.run([tool("run_downstream.py"), *argv], capture_output=True, text=True, timeout=600, cwd=str(cwd),
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def corpora(mini_corpus, more_corpus, tmp_path_factory):
    """Where each task's stand-in is, and one cache folder for the module (the ASV VAD lengths once)."""
    return {t: (more_corpus if t in ("speech_commands", "voxceleb1") else mini_corpus) for t in TASKS}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def _trained(task, upstream, corpora, cache, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", S3PRL_ADAPTERS_CACHE=cache)
    expdir = tmp_path / f"{task}-{upstream}"
    extra, split = RUNS[task]
    if task == "sv_voxceleb1":  # the first 60 trials (~90 files): fewer embeddings for both sides to compute
        trials = os.path.join(cache, "test_trials_60.txt")
        with open(os.path.join(corpora[task], "VoxCeleb1", "test_trials.txt")) as f, open(trials, "w") as out:
            out.writelines(f.readlines()[:60])
        extra += f",,config.downstream_expert.datarc.test_meta_data='{trials}'"
    _run(["-m", "train", "-u", upstream, "-k", BACKBONE, "-g", G, "-d", task, "-c", TASKS[task].config_path(mini=True),
          "-p", str(expdir), "--seed", "3", "-o", f"{corpus_overrides(task, corpora[task])},,{STEPS},,{extra}"],
         tmp_path, env)
    _run(["-m", "evaluate", "-e", str(expdir / "states-4.ckpt"), "-t", split], tmp_path, env)
    return expdir


def _recorded(task, expdir, root):
    """(audio path, what the recipe wrote for it) for every test item, from the recipe's own files."""
    spec = TASKS[task]
    d = spec.standin_overrides(root)
    if task == "asr":
        with open(os.path.join(d["bucket_file"], "test-clean.csv")) as f:
            paths = {os.path.basename(r["file_path"]).split(".")[0]: os.path.join(d["libri_root"], r["file_path"])
                     for r in csv.DictReader(f)}
        return [(paths[u], " ".join(w)) for u, *w in (line.split() for line in open(expdir / "test-clean-noLM-hyp.ark"))]
    if task == "fluent_commands":
        with open(os.path.join(d["file_path"], "data", "test_data.csv")) as f:
            paths = {os.path.basename(r["path"]).split(".")[0]: os.path.join(d["file_path"], r["path"])
                     for r in csv.DictReader(f)}
        return [(paths[s], tuple(rest)) for s, *rest in (line.strip().split(",") for line in open(expdir / "test_predict.csv"))]
    if task == "emotion":
        meta = json.load(open(os.path.join(d["meta_data"], "Session1", "test_meta_data.json")))["meta_data"]
        paths = {os.path.basename(x["path"]).split(".")[0]: os.path.join(d["root"], x["path"]) for x in meta}
        return [(paths[u], label) for u, label in (line.split() for line in open(expdir / "test_fold1_predict.txt"))]
    if task == "speech_commands":
        test = d["speech_commands_test_root"]
        return [(os.path.join(test, *item.split("-", 1)), label)
                for item, label in (line.split() for line in open(expdir / "test_predict.txt"))]
    if task == "voxceleb1":
        return [(_sid_path(d["file_path"], name), speaker)
                for name, speaker in (line.split() for line in open(expdir / "test_predict.txt"))]
    raise AssertionError(task)


def _sid_path(root, name):
    speaker, rest = name.split("-", 1)
    video, number = rest.rsplit("-", 1)
    return glob.glob(os.path.join(root, "*", "wav", speaker, video, f"{number}.wav"))[0]


def _answer_key(task, answer):
    return {"asr": lambda a: a["transcript"], "fluent_commands": lambda a: (a["action"], a["object"], a["location"]),
            "emotion": lambda a: a["label"], "speech_commands": lambda a: a["label"],
            "voxceleb1": lambda a: a["speaker"]}[task](answer)


def _predict_one_at_a_time(model, paths):
    return [model.predict([read_audio(p)[0]])[0] for p in paths]


# The paper's four tasks are reproduced for every method by the benchmark (tests/test_reproduction.py);
# here the two other tasks, with an L+E set, and the ASV threshold of an L-only set.
CASES = [("speech_commands", "wavlm_ladapter"), ("voxceleb1", "wavlm_ladapter"), ("sv_voxceleb1", "wavlm_ladapter_only")]


@pytest.mark.parametrize("task, upstream", CASES)
def test_predict_gives_what_the_recipe_evaluated(task, upstream, corpora, cache, tmp_path):
    expdir = _trained(task, upstream, corpora, cache, tmp_path)
    with_threshold = (task, upstream) == ("sv_voxceleb1", "wavlm_ladapter_only")  # one dev pass is enough
    adapter_set = export(str(expdir / "states-4.ckpt"), threshold=with_threshold, progress=False)
    if with_threshold:
        assert -1.0 <= adapter_set.threshold <= 1.0
    path = tmp_path / "task.adapter"
    adapter_set.save(str(path))
    model = MultiTaskWavLM(BACKBONE, [AdapterSet.load(str(path))])
    if task == "sv_voxceleb1":
        root = os.path.join(corpora[task], "VoxCeleb1", "test", "wav")
        recorded = [line.split() for line in open(expdir / "test_predict.txt")]
        trials = [line.split()[1:] for line in open(os.path.join(cache, "test_trials_60.txt"))]
        assert len(recorded) == len(trials)
        files = sorted({p for pair in trials for p in pair})
        embeddings = dict(zip(files, (a["task"]["embedding"] for a in
                                      _predict_one_at_a_time(model, [os.path.join(root, f) for f in files]))))
        scores = np.array([float(torch.nn.functional.cosine_similarity(embeddings[a], embeddings[b], dim=-1))
                           for a, b in trials])
        assert np.abs(scores - np.array([float(s) for _, s in recorded])).max() < 1e-5
        return
    recorded = _recorded(task, expdir, corpora[task])
    answers = _predict_one_at_a_time(model, [p for p, _ in recorded])
    got = [_answer_key(task, a["task"]) for a in answers]
    assert got == [want for _, want in recorded]


# ---- one backbone, many sets -----------------------------------------------------------------------------

SET_KINDS = [("fluent_commands", "wavlm_ladapter_only"), ("emotion", "wavlm_ladapter"), ("asr", "wavlm_ladapter_only"),
             ("sv_voxceleb1", "wavlm_ladapter_only"), ("speech_commands", "wavlm_local"), ("voxceleb1", "wavlm_eadapter")]


@pytest.fixture(scope="module")
def sets():
    """Untrained sets of every kind, the adapters and LayerNorms moved off their initial values."""
    from s3prl_adapters.inference import untrained

    made = []
    for seed, (task, upstream) in enumerate(SET_KINDS):
        adapter_set = untrained(task, upstream, BACKBONE, seed=seed)
        generator = torch.Generator().manual_seed(seed)
        for name, tensor in adapter_set.upstream_state.items():
            tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.05)
        made.append(adapter_set)
    return made


def _wavs(corpora):
    files = sorted(glob.glob(os.path.join(corpora["fluent_commands"], "fluent_speech_commands", "wavs", "*", "*", "*.wav")))
    return [read_audio(p)[0] for p in files[:3]] + [torch.randn(24000) * 0.2]


def _same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            _same(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_one_backbone_shared_passes_equal_separate_models(sets, corpora):
    wavs = _wavs(corpora)
    together = MultiTaskWavLM(BACKBONE, sets).predict(wavs)  # a batch of 4: padded, as S3PRL batches
    for adapter_set in sets:
        alone = MultiTaskWavLM(BACKBONE, [adapter_set]).predict(wavs)
        for joint, single in zip(together, alone):
            _same({adapter_set.name: joint[adapter_set.name]}, single)


def test_backbone_is_loaded_once_and_bit_identical_after_switching(sets, corpora):
    from s3prl_adapters.method.attach import AdapterAfter

    model = MultiTaskWavLM(BACKBONE, sets)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    modules = [type(m).__name__ for m in model.backbone.modules()]
    switched = [b for b in model.sets if not b.shares_the_pass]
    assert {b.set.name for b in switched} == {"er_wavlm_ladapter", "sid_wavlm_eadapter"}
    assert all(b.layer_norms for b in switched)  # their trained LayerNorms differ from the backbone's
    model.predict(_wavs(corpora))
    after = model.backbone.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [type(m).__name__ for m in model.backbone.modules()] == modules
    assert not any(isinstance(m, AdapterAfter) for m in model.backbone.modules())
    wavlms = [m for m in [model.backbone] + [x for b in model.sets for x in vars(b).values()] if hasattr(m, "encoder")]
    assert len(wavlms) == 1 and all(b.own_states is None for b in model.sets)  # no set holds a backbone of its own


def test_export_round_trip_and_refusals(sets, tmp_path):
    path = tmp_path / "er.adapter"
    original = sets[1]
    original.save(str(path))
    loaded = AdapterSet.load(str(path))
    assert loaded.name == "er" and loaded.task == original.task and loaded.adapter_config == original.adapter_config
    for key in original.upstream_state:
        assert torch.equal(loaded.upstream_state[key], original.upstream_state[key])
    assert loaded.head["facts"] == original.head["facts"] and loaded.backbone == original.backbone

    class RunsCode:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.adapter"
    torch.save({"format": "s3prl-adapters/adapter-set", "version": 1, "task": RunsCode()}, evil)
    with pytest.raises(UserError, match="refused to unpickle"):
        AdapterSet.load(str(evil))
    other = tmp_path / "other.adapter"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(UserError, match="not an exported adapter set"):
        AdapterSet.load(str(other))


def test_a_set_from_another_backbone_is_refused(sets, tiny_ckpt):
    with pytest.raises(UserError, match=r"adapter set ic_wavlm_ladapter_only was trained on the backbone 4 x 256 "
                                        r"post-LN, weights \w+, not on this one \(3 x 48 post-LN"):
        MultiTaskWavLM(tiny_ckpt, [sets[0]])


def test_cli_predict_any_audio_one_line_each_and_verify(sets, corpora, tmp_path):
    adapters = []
    for adapter_set in sets[:4]:
        adapters.append(str(tmp_path / f"{adapter_set.task_spec.key}.adapter"))
        adapter_set.save(adapters[-1])
    good = sorted(glob.glob(os.path.join(corpora["fluent_commands"], "fluent_speech_commands", "wavs", "*", "*", "*.wav")))[:2]
    wav, rate = sf.read(good[0], dtype="float32")
    stereo = tmp_path / "stereo_44k.flac"
    from scipy.signal import resample_poly

    up = resample_poly(wav, 441, 160).astype("float32")
    sf.write(stereo, np.stack([up, 0.5 * up], axis=1), 44100)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....WAVEfmt garbage")
    out = tmp_path / "answers.jsonl"
    proc = subprocess.run([tool("s3prl-adapters"), "predict", "--backbone", BACKBONE, "--adapters", *adapters,
                           *good, str(stereo), str(broken), "-o", str(out), "--device", "cpu"],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 1, proc.stderr[-2000:]  # one file failed, the others were answered
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["file"] for r in lines] == good + [str(stereo), str(broken)]
    assert "not readable audio" in lines[3]["error"] and "ic" not in lines[3]
    assert lines[2]["audio"]["resampled_from"] == 44100 and lines[2]["audio"]["mixed_to_mono"] is True
    for line in lines[:3]:
        assert {"ic", "er", "asr", "sv"} <= set(line) and "label" in line["er"] and "transcript" in line["asr"]
        assert np.load(line["sv"]["embedding"]).shape == (512,)
    assert "1 of 4 file(s) failed" in proc.stderr

    sv = AdapterSet.load(adapters[3])
    sv.threshold = 0.25
    sv.save(adapters[3])
    verdict = subprocess.run([tool("s3prl-adapters"), "verify", "--backbone", BACKBONE, "--adapters", adapters[3],
                              good[0], str(stereo), "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert verdict.returncode == 0, verdict.stderr[-2000:]
    assert re.match(r"score -?[\d.]+ \(cosine\) (>=|<) threshold 0\.250000 \(dev EER\): (same speaker|different speakers)",
                    verdict.stdout), verdict.stdout


def test_s3prl_own_api_finds_the_upstreams_after_a_plain_import(tiny_ckpt):
    code = ("import s3prl_adapters\n"
            "from s3prl.nn import S3PRLUpstream\n"
            f"model = S3PRLUpstream('wavlm_ladapter', path_or_url={tiny_ckpt!r})\n"
            "print(type(model.upstream).__name__, model.num_layers)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["AdapterWavLMExpert", "3"]


def test_a_batch_answers_each_file_as_it_is_alone(sets, corpora):
    """Each file's CNN alone, the encoder batched with a mask, its own frames: a batch of files of different
    lengths gives every file its batch-1 answer (labels and transcripts equal; scores and embeddings up to
    float32 rounding in the batched encoder)."""
    wavs = _wavs(corpora)
    assert len({len(w) for w in wavs}) == len(wavs)  # lengths differ: S3PRL's padded pass would mix them
    model = MultiTaskWavLM(BACKBONE, sets)
    together = model.predict(wavs)
    alone = [model.predict([w])[0] for w in wavs]

    def close(a, b, where):
        if isinstance(a, dict):
            assert a.keys() == b.keys(), where
            for key in a:
                close(a[key], b[key], f"{where}.{key}")
        elif isinstance(a, torch.Tensor):
            assert torch.allclose(a, b, atol=1e-5), where
        elif isinstance(a, float):
            assert abs(a - b) <= 2e-6, where
        else:
            assert a == b, where  # labels, transcripts

    for k, (joint, single) in enumerate(zip(together, alone)):
        close(joint, single, f"file {k}")

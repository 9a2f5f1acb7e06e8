"""SD: S3PRL's `-d diarization` recipe with the shipped configs on the mini Libri2Mix stand-in
(prepare-librimix's data folders), DER by pyannote.metrics on a hand-made case, posteriors to RTTM,
training, resumption, evaluation, scoring, export, predict and the submission member; a wav.scp entry
that is a command is refused (S3PRL would run it)."""

import os
import re
import subprocess

import numpy as np
import pytest

from conftest import REPO, tool

CONFIG = os.path.join(REPO, "downstream_configs", "diarization", "mini.yaml")


@pytest.fixture(scope="module")
def sd_corpus(tmp_path_factory):
    """Mini Libri2Mix (16/6/6 speakers, 64/16/16 two-speaker mixtures) and its data folders: about 5 s."""
    from s3prl_adapters.tasks import make_mini_superb

    root = str(tmp_path_factory.mktemp("sd_superb"))
    assert make_mini_superb(root, tasks=["diarization"])["tasks"] == ["diarization"]
    return root


def _run(*argv, timeout=600):
    return subprocess.run([tool("run_downstream.py"), *argv], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_der_on_a_hand_made_case(tmp_path):
    """A and B overlap for 5 s of 20 s of speech; the hypothesis misses B's overlapped part: DER 25 %.
    Speaker names need not match (the best mapping is scored), no collar, overlap scored."""
    from s3prl_adapters.tasks.diarization import diarization_errors

    ref = tmp_path / "ref.rttm"
    ref.write_text("SPEAKER r 1 0.00 10.00 <NA> <NA> A <NA> <NA>\nSPEAKER r 1 5.00 10.00 <NA> <NA> B <NA> <NA>\n")
    errors = diarization_errors({"r": [(0.0, 10.0, "x"), (10.0, 15.0, "y")]}, str(ref))
    assert errors == {"r": (pytest.approx(5.0), pytest.approx(20.0))}
    errors = diarization_errors({"r": [(0.0, 15.0, "x")]}, str(ref))  # one speaker all along: B's 10 s wrong or missed
    assert errors["r"][0] == pytest.approx(10.0)


def test_posteriors_become_speaker_turns(tmp_path):
    """S3PRL's make_rttm: a frame counts where the posterior exceeds the threshold; frames of frame_shift samples."""
    import h5py
    import yaml

    from s3prl_adapters.tasks.diarization import posterior_rttm

    (tmp_path / "scoring" / "predictions").mkdir(parents=True)
    (tmp_path / "frame_shift").write_text("320\n")
    (tmp_path / "config_x.yaml").write_text(yaml.safe_dump({"downstream_expert": {"datarc": {"subsampling": 1}}}))
    posteriors = np.zeros((100, 2), dtype=np.float32)
    posteriors[10:50, 0], posteriors[40:100, 1] = 0.9, 0.6
    with h5py.File(tmp_path / "scoring" / "predictions" / "rec.h5", "w") as h:
        h.create_dataset("T_hat", data=posteriors)
    turns = posterior_rttm(str(tmp_path), 0.5, 1)["rec"]
    assert [(round(s, 2), round(e, 2), k) for s, e, k in turns] == [(0.2, 1.0, "rec_0"), (0.8, 2.0, "rec_1")]
    assert [k for *_, k in posterior_rttm(str(tmp_path), 0.7, 1)["rec"]] == ["rec_0"]


def test_prepare_librimix_finds_each_speakers_speech(sd_corpus, tmp_path):
    """Segments from the clean sources: each starts and ends within 0.1 s of the source's audio."""
    import soundfile as sf

    from s3prl_adapters.data.librimix import mixture_speakers
    from s3prl_adapters.errors import UserError

    root = os.path.join(sd_corpus, "Libri2Mix")
    data = os.path.join(root, "data", "test")
    segments = [line.split() for line in open(os.path.join(data, "segments"))]
    utt2spk = dict(line.split() for line in open(os.path.join(data, "utt2spk")))
    assert len({rec for _, rec, _, _ in segments}) == 16
    for utt, rec, start, end in segments:
        speaker = utt2spk[utt]
        k = mixture_speakers(rec).index(speaker) + 1
        x, rate = sf.read(os.path.join(root, "test", f"s{k}", f"{rec}.wav"))
        audio = np.flatnonzero(np.abs(x) > 1e-3) / rate
        assert audio[0] - 0.1 <= float(start) and float(end) <= audio[-1] + 0.1, (utt, start, end)
    with pytest.raises(UserError, match="not a Libri2Mix ID"):
        mixture_speakers("mixture7")


def test_wav_scp_commands_are_refused(tmp_path):
    """S3PRL runs a wav.scp entry ending in '|' in a shell: the workaround refuses it, nothing runs."""
    from s3prl.downstream.diarization import dataset

    from s3prl_adapters.bridge import compat
    from s3prl_adapters.errors import UserError

    marker = tmp_path / "PWNED"
    for name, text in (("wav.scp", f"rec touch {marker} |\n"), ("segments", "u rec 0 1\n"), ("utt2spk", "u s\n"),
                       ("spk2utt", "s u\n"), ("reco2dur", "rec 1.0\n")):
        (tmp_path / name).write_text(text)
    original = dataset.KaldiData._load_wav
    try:
        with pytest.raises(Exception):
            dataset.KaldiData(str(tmp_path)).load_wav("rec")  # runs the command, then fails to decode its output
        assert marker.exists()  # S3PRL's behaviour
        marker.unlink()
        compat.diarization_wav_scp_entries_run_as_commands()
        with pytest.raises(UserError, match="is a command or stdin, not a file"):
            dataset.KaldiData(str(tmp_path)).load_wav("rec")
        assert not marker.exists()
    finally:
        dataset.KaldiData._load_wav = original


def test_a_command_in_wav_scp_is_one_line_before_s3prl(sd_corpus, tiny_ckpt, tmp_path):
    import shutil

    from s3prl_adapters.tasks import corpus_overrides

    data = tmp_path / "data"
    shutil.copytree(os.path.join(sd_corpus, "Libri2Mix", "data"), data)
    scp = data / "dev" / "wav.scp"
    lines = scp.read_text().splitlines()
    scp.write_text("\n".join([lines[0].split()[0] + f" touch {tmp_path / 'PWNED'} |"] + lines[1:]) + "\n")
    overrides = corpus_overrides("diarization", sd_corpus).replace(os.path.join(sd_corpus, "Libri2Mix", "data"), str(data))
    r = _run("-m", "train", "-u", "wavlm_ladapter", "-k", tiny_ckpt, "-d", "diarization", "-c", CONFIG, "-p",
             str(tmp_path / "x"), "--device", "cpu", "-o", overrides)
    assert r.returncode == 2 and "is a command or stdin, not a file" in r.stderr.strip().splitlines()[-1], r.stderr[-2000:]
    assert not (tmp_path / "PWNED").exists()


def test_sd_trains_resumes_evaluates_and_is_served(sd_corpus, tiny_ckpt, tmp_path):
    """4 steps, resumed to 8, the test pass's posteriors for every recording, SUPERB's DER of them, the
    submission member, and predict answering each test recording as the recipe's test pass did."""
    import zipfile

    from s3prl_adapters.inference import AdapterSet, MultiTaskWavLM, export, read_audio
    from s3prl_adapters.tasks import corpus_overrides, get_task
    from s3prl_adapters.tasks.diarization import posterior_rttm
    from s3prl_adapters.tools.submission import build_submission

    expdir = str(tmp_path / "exp")
    overrides = corpus_overrides("diarization", sd_corpus) + ",,config.runner.eval_step=4,,config.runner.save_step=4"
    for steps in (4, 8):
        r = _run("-m", "train", "-u", "wavlm_ladapter", "-k", tiny_ckpt, "-d", "diarization", "-c", CONFIG, "-p", expdir,
                 "--device", "cpu", "-a", "-o", f"{overrides},,config.runner.total_steps={steps}")
        assert r.returncode == 0, r.stderr[-3000:]
        assert re.search(r"^mode dev acc [\d.]+ der [\d.]+$", r.stdout, re.M)
    assert re.search(r"Resume from \S*states-4.ckpt", r.stdout + r.stderr)
    test = _run("-m", "evaluate", "-e", os.path.join(expdir, "states-8.ckpt"), "-t", "test", "--device", "cpu")
    assert test.returncode == 0, test.stderr[-3000:]
    spec = get_task("diarization")
    assert 0 <= spec.parse_metric(test.stdout) <= 1
    assert spec.validate_prediction(expdir) == os.path.join(expdir, "scoring", "predictions")
    items = spec.test_items(expdir)
    assert len(items["ids"]) == 16 and 0 <= spec.score(items, np.arange(16)) <= 200
    score = subprocess.run([tool("s3prl-adapters"), "score-diarization", expdir], capture_output=True, text=True)
    assert score.returncode == 0 and "lowest: DER" in score.stdout, score.stderr[-2000:]

    zipped = str(tmp_path / "predict.zip")
    assert build_submission(zipped, sd=expdir) == ["predict/sd_public/"]
    assert len([n for n in zipfile.ZipFile(zipped).namelist() if n.endswith(".h5")]) == 16

    path = str(tmp_path / "task.adapter")
    export(os.path.join(expdir, "states-8.ckpt"), progress=False).save(path)
    model = MultiTaskWavLM(tiny_ckpt, [AdapterSet.load(path)])
    recorded = posterior_rttm(expdir, 0.5, 1)
    scp = dict(line.split() for line in open(os.path.join(sd_corpus, "Libri2Mix", "data", "test", "wav.scp")))
    for rec in sorted(recorded):
        turns = model.predict([read_audio(scp[rec])[0]])[0]["task"]["turns"]
        got = sorted((round(t["start"], 2), round(t["end"], 2), f"{rec}_{t['speaker']}") for t in turns)
        assert got == sorted((round(float(s), 2), round(float(e), 2), k) for s, e, k in recorded[rec]), rec

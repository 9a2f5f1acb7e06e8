"""`s3prl-adapters make-mini-superb OUT`: four miniature corpora in the exact layouts of S3PRL's
asr, fluent_commands, emotion and sv_voxceleb1 recipes, synthesised offline, deterministic per seed.

    OUT/LibriSpeech/{train-clean-100,dev-clean,test-clean}/<spk>/<chapter>/*.flac + *.trans.txt
    OUT/LibriSpeech/len_for_bucket/<split>.csv
    OUT/fluent_speech_commands/{data/*_data.csv, wavs/speakers/<spk>/<id>.wav}
    OUT/IEMOCAP/SessionN/{sentences/wav/<dialog>/<utt>.wav, dialog/EmoEvaluation/<dialog>.txt}
    OUT/IEMOCAP/meta_data/SessionN/{train,test}_meta_data.json
    OUT/VoxCeleb1/{dev,test}/wav/<spk>/<video>/<NNNNN>.wav, OUT/VoxCeleb1/{test,dev}_trials.txt
Speakers are disjoint across splits; every utterance goes through a channel drawn independently
of its label (SV: one channel per 'video')."""

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from multiprocessing import Pool
from typing import Dict, List, Tuple

import numpy as np
import soundfile as sf
from tqdm import tqdm

from s3prl_adapters.errors import UserError
from . import prepare, texts
from .synth import SR, Channel, Speaker, VoiceBank, random_speaker, synthesize, trim_silence

SIZES = {
    # per split: (speakers, utterances per speaker)
    "small": {"asr": [(24, 20), (6, 10), (6, 10)], "ic": [(16, 20), (6, 14), (8, 13)], "er_per_class": 8,
              "sv": [(40, 6), (20, 8)], "sv_trials": 2000},
    "medium": {"asr": [(48, 20), (8, 12), (8, 12)], "ic": [(32, 20), (8, 14), (10, 13)], "er_per_class": 16,
               "sv": [(80, 6), (30, 8)], "sv_trials": 4000},
}
TASK_DIRS = {"asr": "LibriSpeech", "fluent_commands": "fluent_speech_commands", "emotion": "IEMOCAP",
             "sv_voxceleb1": "VoxCeleb1"}

# Emotion carried by prosody and voice quality only (data.md §6): mean (pitch %, range %, rate %, dB).
EMOTIONS = {
    "neu": ((0, 0, 100, 0), {}),
    "hap": ((15, 50, 110, 2), {"breath": "1"}),
    "ang": ((8, 20, 115, 6), {"roughness": "2", "consonants": "125"}),
    "sad": ((-12, -40, 82, -5), {"breath": "3", "flutter": "15"}),
}
EMOTION_SPREAD = (8, 15, 7, 2)


@dataclass
class Job:
    bank: str
    voice: str
    variant: str
    ssml: str
    pitch: int
    rate: int
    channel: Channel
    out: str
    fmt: str  # "FLAC" or "WAV"


def _render(job: Job) -> int:
    audio = trim_silence(synthesize(job.bank, job.voice, job.variant, job.ssml, job.pitch, job.rate))
    audio = job.channel.apply(audio)
    os.makedirs(os.path.dirname(job.out), exist_ok=True)
    sf.write(job.out, audio, SR, format=job.fmt, subtype="PCM_16")
    return len(audio)


def _ssml(text: str, pitch=0.0, rng_=0.0, rate=100.0, volume=0.0) -> str:
    return (f'<speak><prosody pitch="{pitch:+.0f}%" range="{rng_:+.0f}%" rate="{rate:.0f}%" '
            f'volume="{volume:+.1f}dB">{text.lower()}</prosody></speak>')


def _jitter(rng, sp: Speaker) -> Tuple[int, int]:
    return int(np.clip(sp.pitch + rng.integers(-4, 5), 0, 99)), int(sp.rate * rng.uniform(0.92, 1.08))


class _Speakers:
    """A voice bank of fresh random speakers (≤ 150 variants per bank, espeak-ng's listing limit)."""

    def __init__(self, root: str, rng: np.random.Generator, prefix: str):
        self.bank = VoiceBank(root)
        self.rng, self.prefix, self.count = rng, prefix, 0

    def new(self) -> Speaker:
        sp = random_speaker(self.rng, f"{self.prefix}{self.count:03d}")
        self.count += 1
        self.bank.add(sp.name, sp.variant_text())
        return sp


def _asr_jobs(out, size, rng, work) -> Tuple[List[Job], Dict]:
    root = os.path.join(out, "LibriSpeech")
    voices = _Speakers(os.path.join(work, "asr"), rng, "asr")
    splits = ["train-clean-100", "dev-clean", "test-clean"]
    train_sents: set = set()
    jobs, transcripts = [], {}
    spk_id = 100
    for split, (n_spk, per_spk) in zip(splits, SIZES[size]["asr"]):
        pool = texts.unique_sentences(rng, n_spk * per_spk, exclude=train_sents if split != splits[0] else ())
        if split == splits[0]:
            train_sents.update(pool)
        for s in range(n_spk):
            sp, chapter = voices.new(), 1000 + spk_id
            d = os.path.join(root, split, str(spk_id), str(chapter))
            for u in range(per_spk):
                text = pool[s * per_spk + u]
                utt = f"{spk_id}-{chapter}-{u:04d}"
                pitch, rate = _jitter(rng, sp)
                jobs.append(Job(voices.bank.root, sp.base_voice, sp.name, _ssml(text), pitch, rate,
                                Channel.draw(rng), os.path.join(d, f"{utt}.flac"), "FLAC"))
                transcripts.setdefault(os.path.join(d, f"{spk_id}-{chapter}.trans.txt"), []).append(f"{utt} {text}")
            spk_id += 1
    return jobs, transcripts


def _ic_jobs(out, size, rng, work) -> Tuple[List[Job], Dict]:
    root = os.path.join(out, "fluent_speech_commands")
    voices = _Speakers(os.path.join(work, "ic"), rng, "ic")
    jobs, tables = [], {}
    for split, (n_spk, per_spk) in zip(["train", "valid", "test"], SIZES[size]["ic"]):
        rows = []
        order = list(rng.permutation(len(texts.FSC_INTENTS)))
        for s in range(n_spk):
            sp = voices.new()
            spk = hashlib.sha1(f"{split}{s}{rng.integers(1 << 30)}".encode()).hexdigest()[:10]
            for u in range(per_spk):
                k = order[(s * per_spk + u) % len(order)]  # round-robin: every intent occurs in every split
                (action, obj, loc), phrases = texts.FSC_INTENTS[k]
                text = texts.command(rng, phrases)
                uid = hashlib.sha1(f"{spk}{u}{text}".encode()).hexdigest()[:16]
                rel = f"wavs/speakers/{spk}/{uid}.wav"
                pitch, rate = _jitter(rng, sp)
                jobs.append(Job(voices.bank.root, sp.base_voice, sp.name, _ssml(text), pitch, rate,
                                Channel.draw(rng), os.path.join(root, rel), "WAV"))
                rows.append([rel, spk, text.capitalize(), action, obj, loc])
        tables[os.path.join(root, "data", f"{split}_data.csv")] = rows
    return jobs, tables


def _er_jobs(out, size, rng, work, separation: float = 1.0) -> Tuple[List[Job], Dict]:
    root = os.path.join(out, "IEMOCAP")
    voices = _Speakers(os.path.join(work, "er"), rng, "er")
    per_class = SIZES[size]["er_per_class"]
    jobs, evaluations = [], {}
    for session in range(1, 6):
        for gender_letter in ("F", "M"):
            sp = random_speaker(voices.rng, f"er{session}{gender_letter}")
            sp.gender = "female" if gender_letter == "F" else "male"
            for emo, (_, quality) in EMOTIONS.items():  # one variant per (speaker, emotion): voice quality
                voices.bank.add(f"{sp.name}{emo}", sp.variant_text(quality))
            sentences = texts.unique_sentences(rng, per_class)
            dialog = f"Ses0{session}{gender_letter}_impro0{1 + (session % 3)}"
            lines, t0 = [], 0.0
            n = 0
            for text in sentences:
                for emo, (mean, _) in EMOTIONS.items():
                    # class means scaled by `separation` (rate around 100 %), plus per-utterance spread
                    p = mean[0] * separation + rng.normal(0, EMOTION_SPREAD[0])
                    r = mean[1] * separation + rng.normal(0, EMOTION_SPREAD[1])
                    vol = mean[3] * separation + rng.normal(0, EMOTION_SPREAD[3])
                    rate = 100 + (mean[2] - 100) * separation + rng.normal(0, EMOTION_SPREAD[2])
                    utt = f"{dialog}_{gender_letter}{n:03d}"
                    n += 1
                    jobs.append(Job(voices.bank.root, sp.base_voice, f"{sp.name}{emo}", _ssml(text, p, r, rate, vol),
                                    sp.pitch, sp.rate, Channel.draw(rng),
                                    os.path.join(root, f"Session{session}", "sentences", "wav", dialog, f"{utt}.wav"), "WAV"))
                    lines.append(f"[{t0:.4f} - {t0 + 3:.4f}]\t{utt}\t{emo}\t[2.5000, 2.5000, 2.5000]")
                    t0 += 3.5
            lines.append(f"[{t0:.4f} - {t0 + 3:.4f}]\t{dialog}_{gender_letter}{n:03d}\txxx\t[2.5000, 2.5000, 2.5000]")
            evaluations[os.path.join(root, f"Session{session}", "dialog", "EmoEvaluation", f"{dialog}.txt")] = lines
    return jobs, evaluations


def _sv_jobs(out, size, rng, work) -> Tuple[List[Job], Dict]:
    root = os.path.join(out, "VoxCeleb1")
    voices = _Speakers(os.path.join(work, "sv"), rng, "sv")
    jobs, groups = [], {}
    spk_num = 10001
    for part, (n_spk, per_spk) in zip(["dev", "test"], SIZES[size]["sv"]):
        for _ in range(n_spk):
            sp = voices.new()
            spk = f"id{spk_num}"
            spk_num += 1
            groups[spk] = f"{sp.gender}/{sp.base_voice}/{'klatt' if 'klatt' in sp.variant else 'formant'}"
            videos = [(hashlib.sha1(f"{spk}{v}".encode()).hexdigest()[:11], Channel.draw(rng, 0.6, (10.0, 30.0)))
                      for v in range(int(rng.integers(2, 4)))]
            for u in range(per_spk):
                video, channel = videos[u % len(videos)]
                channel = Channel(**dict(asdict(channel), gain_db=float(rng.uniform(-6, 6)), seed=int(rng.integers(2**31))))
                text = " ".join(texts.unique_sentences(rng, 2))  # > 2 s after the recipe's VAD
                pitch, rate = _jitter(rng, sp)
                jobs.append(Job(voices.bank.root, sp.base_voice, sp.name, _ssml(text), pitch, rate, channel,
                                os.path.join(root, part, "wav", spk, video, f"{u + 1:05d}.wav"), "WAV"))
    return jobs, groups


def make_mini_superb(out: str, size: str = "small", seed: int = 0, workers: int = 2, tasks=None) -> dict:
    if size not in SIZES:
        raise UserError(f"--size {size}: valid sizes are {sorted(SIZES)}")
    tasks = list(tasks or TASK_DIRS)
    unknown = sorted(set(tasks) - set(TASK_DIRS))
    if unknown:
        raise UserError(f"unknown task(s) {unknown}; valid: {sorted(TASK_DIRS)}")
    start = time.time()
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    work = os.path.join(out, ".voices")
    shutil.rmtree(work, ignore_errors=True)
    builders = {"asr": _asr_jobs, "fluent_commands": _ic_jobs, "emotion": _er_jobs, "sv_voxceleb1": _sv_jobs}
    jobs, side = [], {}
    for task in TASK_DIRS:  # fixed order and one rng per task: any subset reproduces the same files
        if task in tasks:
            shutil.rmtree(os.path.join(out, TASK_DIRS[task]), ignore_errors=True)
            task_jobs, side[task] = builders[task](out, size, np.random.default_rng([seed, list(TASK_DIRS).index(task)]), work)
            jobs += task_jobs
    with Pool(max(1, workers)) as pool:
        lengths = list(tqdm(pool.imap(_render, jobs, chunksize=8), total=len(jobs), desc="synthesising", unit="utt", disable=None))

    if "asr" in tasks:
        for path, lines in side["asr"].items():
            prepare.write_lines(path, lines)
        libri = os.path.join(out, "LibriSpeech")
        prepare.librispeech_buckets(libri, os.path.join(libri, "len_for_bucket"),
                                    ["train-clean-100", "dev-clean", "test-clean"])
    if "fluent_commands" in tasks:
        for path, rows in side["fluent_commands"].items():
            prepare.write_lines(path, [",path,speakerId,transcription,action,object,location"]
                                + [",".join([str(i)] + r) for i, r in enumerate(rows)])
    if "emotion" in tasks:
        for path, lines in side["emotion"].items():
            prepare.write_lines(path, lines)
        iemocap = os.path.join(out, "IEMOCAP")
        prepare.iemocap_meta_data(iemocap, os.path.join(iemocap, "meta_data"))
    if "sv_voxceleb1" in tasks:
        vox = os.path.join(out, "VoxCeleb1")
        rng = np.random.default_rng([seed, 99])
        test_files = prepare.voxceleb_files(os.path.join(vox, "test", "wav"))
        prepare.write_lines(os.path.join(vox, "test_trials.txt"),
                            prepare.make_trials(test_files, SIZES[size]["sv_trials"], rng, side["sv_voxceleb1"]))
        dev_files = prepare.voxceleb_files(os.path.join(vox, "dev", "wav"))
        prepare.write_lines(os.path.join(vox, "dev_trials.txt"), prepare.make_trials(dev_files, 200, rng))
    shutil.rmtree(work, ignore_errors=True)

    manifest = {
        "size": size, "seed": seed, "tasks": tasks, "utterances": len(jobs),
        "audio_hours": round(sum(lengths) / SR / 3600, 3),
        "bytes": sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs),
        "seconds": round(time.time() - start, 1),
    }
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def corpus_overrides(task: str, root: str) -> str:
    """The `-o` string that points a recipe's config at the stand-in corpus under `root`."""
    root = os.path.abspath(root)
    d = os.path.join(root, TASK_DIRS[task])
    values = {
        "asr": {"libri_root": d, "bucket_file": os.path.join(d, "len_for_bucket")},
        "fluent_commands": {"file_path": d},
        "emotion": {"root": d, "meta_data": os.path.join(d, "meta_data")},
        "sv_voxceleb1": {"file_path": d, "test_meta_data": os.path.join(d, "test_trials.txt"),
                         "dev_meta_data": os.path.join(d, "dev_trials.txt")},
    }[task]
    return ",,".join(f"config.downstream_expert.datarc.{k}='{v}'" for k, v in values.items())

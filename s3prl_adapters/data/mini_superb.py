"""The engine behind `s3prl-adapters make-mini-superb OUT`: synthesis jobs rendered in parallel into
miniature corpora in the exact layouts of S3PRL's recipes, deterministic per seed.

What each corpus looks like (its speakers, texts, folders and lists) is the task's own knowledge:
each `tasks/<task>.py` builds its jobs and writes its lists (`Task.build_standin`); this module
renders them and writes the manifest. Speakers are disjoint across splits; every utterance goes
through a channel drawn independently of its label."""

import json
import os
import shutil
import time
from dataclasses import dataclass
from multiprocessing import Pool
from typing import Tuple

import numpy as np
import soundfile as sf
from tqdm import tqdm

from s3prl_adapters.errors import UserError

from .synth import SR, Channel, Speaker, VoiceBank, random_speaker, synthesize, trim_silence


@dataclass
class Job:
    """One utterance to synthesise: who says what, through which channel, into which file."""

    bank: str
    voice: str
    variant: str
    ssml: str
    pitch: int
    rate: int
    channel: Channel
    out: str
    fmt: str  # "FLAC" or "WAV"
    seconds: float = 0.0  # > 0: centre the speech in a clip of exactly this length (Speech Commands)


def render_job(job: Job) -> int:
    audio = trim_silence(synthesize(job.bank, job.voice, job.variant, job.ssml, job.pitch, job.rate))
    if job.seconds:
        audio = fit_to_length(audio, int(job.seconds * SR))
    audio = job.channel.apply(audio)
    if job.seconds:
        audio = audio[:int(job.seconds * SR)]  # a reverberation tail does not lengthen a fixed-length clip
    os.makedirs(os.path.dirname(job.out), exist_ok=True)
    sf.write(job.out, audio, SR, format=job.fmt, subtype="PCM_16")
    return len(audio)


def fit_to_length(audio: np.ndarray, n: int) -> np.ndarray:
    """Centre `audio` in exactly `n` samples (cut evenly at both ends when longer)."""
    if len(audio) >= n:
        start = (len(audio) - n) // 2
        return audio[start:start + n]
    out = np.zeros(n, dtype=audio.dtype)
    start = (n - len(audio)) // 2
    out[start:start + len(audio)] = audio
    return out


def ssml(text: str, pitch=0.0, rng_=0.0, rate=100.0, volume=0.0) -> str:
    return (f'<speak><prosody pitch="{pitch:+.0f}%" range="{rng_:+.0f}%" rate="{rate:.0f}%" '
            f'volume="{volume:+.1f}dB">{text.lower()}</prosody></speak>')


def jitter(rng, sp: Speaker) -> Tuple[int, int]:
    """Per-utterance pitch and rate around a speaker's own."""
    return int(np.clip(sp.pitch + rng.integers(-4, 5), 0, 99)), int(sp.rate * rng.uniform(0.92, 1.08))


class Speakers:
    """A voice bank of fresh random speakers (≤ 150 variants per bank, espeak-ng's listing limit)."""

    def __init__(self, root: str, rng: np.random.Generator, prefix: str):
        self.bank = VoiceBank(root)
        self.rng, self.prefix, self.count = rng, prefix, 0

    def new(self) -> Speaker:
        sp = random_speaker(self.rng, f"{self.prefix}{self.count:03d}")
        self.count += 1
        self.bank.add(sp.name, sp.variant_text())
        return sp


def make_standins(out: str, tasks: list, size: str = "small", seed: int = 0, workers: int = 2) -> dict:
    """Build, render and finish the stand-in corpus of every task in `tasks` (Task objects, in order)
    under `out`; returns the manifest (also written to OUT/manifest.json)."""
    start = time.time()
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    work = os.path.join(out, ".voices")
    shutil.rmtree(work, ignore_errors=True)
    jobs, finishers = [], []
    for task in tasks:
        if size not in task.standin_sizes and task.standin_sizes:
            raise UserError(f"--size {size}: valid sizes are {sorted(task.standin_sizes)}")
        task_jobs, finish = task.build_standin(out, size, seed, work)
        if task_jobs:  # a corpus of its own: built afresh (a task reusing another's only adds lists)
            shutil.rmtree(os.path.join(out, task.standin_dir), ignore_errors=True)
        jobs += task_jobs
        finishers.append(finish)
    with Pool(max(1, workers)) as pool:
        lengths = list(tqdm(pool.imap(render_job, jobs, chunksize=8), total=len(jobs), desc="synthesising", unit="utt",
                            disable=None))
    for finish in finishers:
        finish()
    shutil.rmtree(work, ignore_errors=True)
    manifest = {
        "size": size, "seed": seed, "tasks": [t.name for t in tasks], "utterances": len(jobs),
        "audio_hours": round(sum(lengths) / SR / 3600, 3),
        "bytes": sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs),
        "seconds": round(time.time() - start, 1),
    }
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def task_rng(seed: int, stream: int) -> np.random.Generator:
    """The random stream of one task's stand-in (fixed per task, so any subset reproduces the same files)."""
    return np.random.default_rng([seed, stream])



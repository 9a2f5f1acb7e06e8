"""Offline speech synthesis for stand-in corpora: espeak-ng custom speakers + numpy channel effects.

Only Debian-main espeak-ng is needed. A speaker is an espeak-ng variant file (vocal-tract scale,
pitch range, voice quality, optionally a Klatt source) in a private voice folder; an utterance is
that voice saying SSML text, resampled to 16 kHz, trimmed, then put through a channel (gain,
spectral tilt, synthetic room reverberation, coloured noise) drawn independently of the label."""

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np
from scipy.signal import fftconvolve, lfilter, resample_poly

SR = 16000
ESPEAK_SR = 22050


def espeak_data_dir() -> str:
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
    return out.split("Data at:")[-1].strip()


@dataclass
class Speaker:
    """One synthetic voice: an espeak-ng variant plus the default prosody it speaks with."""

    name: str
    gender: str
    base_voice: str  # espeak-ng language voice, e.g. en-us
    pitch: int  # espeak -p 0..99
    rate: int  # espeak -s words per minute
    variant: Dict[str, str] = field(default_factory=dict)  # variant-file fields

    def variant_text(self, extra: Optional[Dict[str, str]] = None) -> str:
        fields = dict(self.variant, **(extra or {}))
        lines = ["language variant", f"name {self.name}", f"gender {self.gender}"]
        lines += [f"{k.split('#')[0]} {v}" for k, v in fields.items()]
        return "\n".join(lines) + "\n"


def random_speaker(rng: np.random.Generator, name: str, klatt: Optional[bool] = None) -> Speaker:
    """Draw a voice (data.md §2): gender, vocal-tract scale, pitch range, voice quality, source model."""
    gender = "female" if rng.random() < 0.5 else "male"
    scale = rng.uniform(1.04, 1.22) if gender == "female" else rng.uniform(0.86, 1.04)
    base = rng.uniform(150, 230) if gender == "female" else rng.uniform(75, 135)
    variant = {f"formant#{i}": f"{i} {int(100 * scale * rng.uniform(0.97, 1.03))} {int(rng.uniform(80, 120))} "
               f"{int(rng.uniform(80, 120))}" for i in range(6)}
    variant["pitch"] = f"{int(base)} {int(base * rng.uniform(1.2, 1.9))}"
    variant["breath"] = f"{int(rng.integers(0, 3))}"
    variant["flutter"] = f"{int(rng.integers(0, 12))}"
    variant["roughness"] = f"{int(rng.integers(0, 3))}"
    variant["voicing"] = f"{int(rng.integers(85, 115))}"
    variant["consonants"] = f"{int(rng.integers(80, 120))}"
    if klatt if klatt is not None else rng.random() < 0.6:
        variant["klatt"] = f"{int(rng.integers(1, 5))}"
    accent = str(rng.choice(["en-us", "en-us", "en-us", "en-gb", "en-us-nyc", "en-029"]))
    return Speaker(name, gender, accent, int(rng.integers(35, 65)), int(rng.integers(145, 185)), variant)


class VoiceBank:
    """A private espeak-ng data folder whose voices/!v holds our variant files (≤ ~150 per folder)."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        data = os.path.join(self.root, "espeak-ng-data")
        system = espeak_data_dir()
        os.makedirs(os.path.join(data, "voices", "!v"), exist_ok=True)
        for entry in os.listdir(system):
            if entry != "voices" and not os.path.lexists(os.path.join(data, entry)):
                os.symlink(os.path.join(system, entry), os.path.join(data, entry))
        for entry in os.listdir(os.path.join(system, "voices")):
            link = os.path.join(data, "voices", entry)
            if entry != "!v" and not os.path.lexists(link):
                os.symlink(os.path.join(system, "voices", entry), link)
        self.variants = os.path.join(data, "voices", "!v")

    def add(self, variant_name: str, text: str) -> None:
        with open(os.path.join(self.variants, variant_name), "w") as f:
            f.write(text)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def synthesize(bank_root: str, voice: str, variant: str, ssml: str, pitch: int, rate: int) -> np.ndarray:
    """espeak-ng → float32 at 16 kHz (its --stdout WAV header has bogus sizes, so read the PCM directly)."""
    cmd = ["espeak-ng", f"--path={bank_root}", "-v", f"{voice}+{variant}", "-p", str(pitch), "-s", str(rate),
           "-m", "--stdout", ssml]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    pcm = np.frombuffer(raw[44:], dtype="<i2").astype(np.float32) / 32768.0
    return resample_poly(pcm, 320, 441).astype(np.float32)  # 22050 -> 16000


def trim_silence(x: np.ndarray, threshold: float = 1e-3, pad: int = 800) -> np.ndarray:
    voiced = np.flatnonzero(np.abs(x) > threshold)
    if voiced.size == 0:
        return x
    return x[max(0, voiced[0] - pad): voiced[-1] + pad]


@dataclass
class Channel:
    """A recording condition, drawn independently of every label."""

    gain_db: float
    tilt: float  # first-order pre/de-emphasis coefficient
    rir_t60: float  # 0 = dry
    noise_snr_db: float
    noise_colour: float  # 0 white .. 0.99 brown-ish (one-pole low-pass)
    seed: int

    @staticmethod
    def draw(rng: np.random.Generator, reverb_prob: float = 0.3, snr=(15.0, 35.0)) -> "Channel":
        return Channel(
            gain_db=float(rng.uniform(-6, 6)),
            tilt=float(rng.uniform(-0.4, 0.4)),
            rir_t60=float(rng.uniform(0.1, 0.35)) if rng.random() < reverb_prob else 0.0,
            noise_snr_db=float(rng.uniform(*snr)),
            noise_colour=float(rng.uniform(0.0, 0.95)),
            seed=int(rng.integers(2**31)),
        )

    def apply(self, x: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        y = lfilter([1.0, -self.tilt], [1.0], x)
        if self.rir_t60 > 0:
            n = int(self.rir_t60 * SR)
            t = np.arange(n) / SR
            rir = rng.standard_normal(n) * np.exp(-6.9 * t / self.rir_t60)
            rir[0] = 1.0
            rir /= np.sqrt(np.sum(rir**2))
            y = fftconvolve(y, rir)[: len(y) + n // 4]
        noise = lfilter([1.0 - self.noise_colour], [1.0, -self.noise_colour], rng.standard_normal(len(y)))
        speech_power = np.mean(y**2) + 1e-12
        noise *= np.sqrt(speech_power / (np.mean(noise**2) + 1e-12) / 10 ** (self.noise_snr_db / 10))
        y = y + noise
        y *= 0.3 / (np.max(np.abs(y)) + 1e-9) * 10 ** (self.gain_db / 20)  # peak ≈ -10 dBFS ± 6 dB
        return np.clip(y, -0.99, 0.99).astype(np.float32)

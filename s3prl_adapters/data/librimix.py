"""Libri2Mix into the Kaldi-style data folders S3PRL's diarization recipe reads (`-d diarization`).

Input: a Libri2Mix tree as its scripts write it, `<root>/<split>/<mix>/<ID>.wav` with the two clean
sources `<root>/<split>/s1/<ID>.wav`, `.../s2/<ID>.wav` (e.g. root `Libri2Mix/wav16k/max`, mix
`mix_clean`); an ID joins the two LibriSpeech utterance ids with `_` (`1272-128104-0000_2035-147961-0014`),
so speaker k of a mixture is the LibriSpeech speaker of the ID's k-th part.

Output per split (what the recipe's KaldiData reads, plus the reference RTTM for scoring):
`wav.scp` (`<rec> <path>`), `segments` (`<utt> <rec> <start> <end>`, seconds), `utt2spk`, `spk2utt`,
`reco2dur`, `rttm`. Who speaks when comes from the clean sources: an energy detector on each source
(20 ms frames, speech = within 40 dB of the source's loudest frame; pauses shorter than 0.3 s bridged,
bursts shorter than 0.1 s dropped), so a segment is a stretch of one speaker's speech."""

import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from s3prl_adapters.errors import UserError

FRAME = 0.02
FLOOR_DB = 40.0
MIN_PAUSE = 0.3
MIN_SPEECH = 0.1


def speech_segments(x: np.ndarray, rate: int) -> List[Tuple[float, float]]:
    """(start, end) seconds of the speech in a clean single-speaker signal."""
    hop = int(FRAME * rate)
    frames = len(x) // hop
    if frames == 0:
        return []
    energy = np.square(x[:frames * hop].reshape(frames, hop).astype(np.float64)).mean(1)
    level = 10 * np.log10(energy + 1e-12)
    active = level > level.max() - FLOOR_DB
    segments, start = [], None
    for i, on in enumerate(np.append(active, False)):
        if on and start is None:
            start = i
        elif not on and start is not None:
            segments.append([start * FRAME, i * FRAME])
            start = None
    merged: List[List[float]] = []
    for s, e in segments:
        if merged and s - merged[-1][1] < MIN_PAUSE:
            merged[-1][1] = e
        else:
            merged.append([s, e])
    return [(round(s, 2), round(min(e, len(x) / rate), 2)) for s, e in merged if e - s >= MIN_SPEECH]


def mixture_speakers(mixture_id: str) -> List[str]:
    """The LibriSpeech speakers of a Libri2Mix ID, in source order."""
    parts = mixture_id.split("_")
    if len(parts) != 2 or not all(p.count("-") == 2 for p in parts):
        raise UserError(f"prepare-librimix: {mixture_id}: not a Libri2Mix ID ('<spk>-<chapter>-<utt>_<spk>-<chapter>-<utt>')")
    return [p.split("-")[0] for p in parts]


def write_data_dir(root: str, split: str, out: str, mix: str = "mix_clean") -> Dict[str, int]:
    """One split's data folder; returns its counts. A missing source file is an error naming it."""
    import soundfile as sf

    from s3prl_adapters.data.prepare import write_lines

    folder = Path(root, split, mix)
    mixtures = sorted(folder.glob("*.wav"))
    if not mixtures:
        raise UserError(f"prepare-librimix: no .wav under {folder}")
    wav_scp, segments, utt2spk, reco2dur, rttm = [], [], [], [], []
    spk2utt: Dict[str, List[str]] = {}
    for path in mixtures:
        rec = path.stem
        speakers = mixture_speakers(rec)
        info = sf.info(str(path))
        wav_scp.append(f"{rec} {path.resolve()}")
        reco2dur.append(f"{rec} {info.frames / info.samplerate!r}")  # exact: the recipe's label grid is int(dur / shift)
        for k, speaker in enumerate(speakers, 1):
            source = Path(root, split, f"s{k}", path.name)
            if not source.is_file():
                raise UserError(f"prepare-librimix: {path}: its source {source} does not exist")
            x, rate = sf.read(str(source), dtype="float32")
            for n, (start, end) in enumerate(speech_segments(x, rate)):
                utt = f"{speaker}_{rec}_{n:03d}"  # the speaker first: Kaldi's sort order groups them
                segments.append(f"{utt} {rec} {start:.2f} {end:.2f}")
                utt2spk.append(f"{utt} {speaker}")
                spk2utt.setdefault(speaker, []).append(utt)
                rttm.append(f"SPEAKER {rec} 1 {start:.2f} {end - start:.2f} <NA> <NA> {speaker} <NA> <NA>")
    os.makedirs(out, exist_ok=True)
    write_lines(os.path.join(out, "wav.scp"), wav_scp)
    write_lines(os.path.join(out, "segments"), sorted(segments))
    write_lines(os.path.join(out, "utt2spk"), sorted(utt2spk))
    write_lines(os.path.join(out, "spk2utt"), [f"{s} {' '.join(sorted(u))}" for s, u in sorted(spk2utt.items())])
    write_lines(os.path.join(out, "reco2dur"), reco2dur)
    write_lines(os.path.join(out, "rttm"), rttm)
    return {"recordings": len(wav_scp), "segments": len(segments), "speakers": len(spk2utt)}


def prepare_librimix(root: str, out: str, splits: Sequence[str], names: Sequence[str], mix: str = "mix_clean"):
    """Data folders `out/<name>` of the Libri2Mix `splits` (e.g. train-100 → train)."""
    return {name: write_data_dir(root, split, os.path.join(out, name), mix) for split, name in zip(splits, names)}


def read_rttm(path: str) -> Dict[str, List[Tuple[float, float, str]]]:
    """{recording: [(start, end, speaker)]} of an RTTM file's SPEAKER lines."""
    out: Dict[str, List[Tuple[float, float, str]]] = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if fields[0] != "SPEAKER" or len(fields) < 8:
                raise UserError(f"{path}:{n}: not an RTTM SPEAKER line")
            start, duration = float(fields[3]), float(fields[4])
            out.setdefault(fields[1], []).append((start, start + duration, fields[7]))
    return out

"""SD: `-d diarization`, Libri2Mix two-speaker mixtures, diarization error rate (SUPERB).

Layout: three Kaldi-style data folders (`downstream_expert.loaderrc.{train,dev,test}_dir`) holding
`wav.scp`, `segments`, `utt2spk`, `spk2utt`, `reco2dur` and the reference `rttm`;
`s3prl-adapters prepare-librimix` writes them from a Libri2Mix tree (data/librimix.py). The recipe
trains a frame-level PIT model, prints `mode <split> acc A der D` (its own frame DER, averaged over
recordings), and on the test split writes per-recording speaker posteriors
`scoring/predictions/<rec>.h5` (the submission's `sd_public/`). `s3prl-adapters score-diarization`
turns them into RTTM (threshold and median filter, as S3PRL's make_rttm.py) and scores SUPERB's DER
with pyannote.metrics (no collar, overlap scored, as S3PRL's dscore call)."""

import os
from pathlib import Path
from typing import Dict, List, Tuple

from s3prl_adapters.errors import UserError

from .base import Task, error_rate, latest_config

FILES = ("wav.scp", "segments", "utt2spk", "spk2utt", "reco2dur")
SPLITS = {"train": "train-100", "dev": "dev", "test": "test"}
"""Data folder name -> Libri2Mix split folder."""
GRID = [(median, threshold) for median in (1, 11) for threshold in (0.3, 0.4, 0.5, 0.6, 0.7)]
"""S3PRL's score.sh: every median filter and threshold, the lowest DER reported."""


class SpeakerDiarization(Task):
    name = "diarization"
    key = "sd"
    title = "SD DER %"
    corpus = "Libri2Mix"
    metric = "der"
    metric_pattern = r"^mode test acc [\d.eE+-]+ der ([\d.eE+-]+)$"
    higher_is_better = False
    chance_percent = 100.0  # nobody speaking: every speaker frame missed
    data_section = "loaderrc"
    eval_batch_key = "eval_batchsize"
    standin_dir = "Libri2Mix"
    workarounds = ("diarization_wav_scp_entries_run_as_commands",)
    whole_frames = 320  # frame_shift null: the upstream's rate (WavLM: 320 samples)
    prediction_file = "scoring/predictions"
    submission_member = "predict/sd_public/"

    # ---- corpus -----------------------------------------------------------------------------------

    def _dirs(self, config: dict, which) -> List[str]:
        loader = self.corpus_settings(config)
        return [loader[f"{split}_dir"] for split in which]

    def required_paths(self, config):
        paths = []
        for split, folder in zip(("train", "dev", "test"), self._dirs(config, ("train", "dev", "test"))):
            paths.append((folder, f"{split} data folder (s3prl-adapters prepare-librimix writes it)", f"{split}_dir"))
            paths += [(os.path.join(folder, f), f"{split} {f}", f"{split}_dir") for f in FILES]
        return paths

    def _audio(self, config, which) -> List[str]:
        files = []
        for folder in self._dirs(config, which):
            scp = os.path.join(folder, "wav.scp")
            if os.path.isfile(scp):
                files += [path for _, path in read_wav_scp(scp)]
        return files

    def evaluation_audio(self, config):
        return self._audio(config, ("dev", "test"))

    def training_audio(self, config):
        return self._audio(config, ("train",))

    def corpus_flags(self):
        return [("--librimix-data", "the data folders of s3prl-adapters prepare-librimix (DIR/train, DIR/dev, DIR/test)")]

    def real_corpus(self, args):
        d = getattr(args, "librimix_data", None)
        return {f"{s}_dir": os.path.join(d, s) for s in ("train", "dev", "test")} if d else None

    def standin_overrides(self, root):
        d = os.path.join(os.path.abspath(root), self.standin_dir, "data")
        return {f"{s}_dir": os.path.join(d, s) for s in ("train", "dev", "test")}

    # ---- stand-in: mini Libri2Mix -------------------------------------------------------------------

    standin_sizes = {"small": {"train": (16, 64), "dev": (6, 16), "test": (6, 16)},
                     "medium": {"train": (32, 160), "dev": (8, 32), "test": (8, 32)}}
    """(speakers, two-speaker mixtures) per split; speakers disjoint across splits."""
    standin_seed = 9

    def build_standin(self, out, size, seed, work):
        from s3prl_adapters.data import texts
        from s3prl_adapters.data.mini_superb import Job, Speakers, jitter, ssml, task_rng
        from s3prl_adapters.data.synth import Channel

        rng = task_rng(seed, self.standin_seed)
        root = os.path.join(out, self.standin_dir)
        raw = os.path.join(work, "sd_sources")
        voices = Speakers(os.path.join(work, "sd"), rng, "sd")
        clean = Channel(gain_db=0.0, tilt=0.0, rir_t60=0.0, noise_snr_db=120.0, noise_colour=0.0, seed=0)
        jobs, plan, speaker_id = [], {}, 4000
        for split, (n_speakers, n_mixtures) in self.standin_sizes[size].items():
            utterances = []  # (utterance id, path) per speaker
            for s in range(n_speakers):
                sp, speaker = voices.new(), str(speaker_id + s)
                mine = []
                for u in range(max(2, 2 * n_mixtures // n_speakers + 1)):
                    utt = f"{speaker}-{speaker_id + 500}-{u:04d}"
                    path = os.path.join(raw, f"{utt}.wav")
                    pitch, rate = jitter(rng, sp)
                    jobs.append(Job(voices.bank.root, sp.base_voice, sp.name, ssml(texts.sentence(rng)), pitch, rate,
                                    clean, path, "WAV"))
                    mine.append((utt, path))
                utterances.append(mine)
            speaker_id += 100
            mixtures = []
            for m in range(n_mixtures):
                a, b = rng.choice(n_speakers, 2, replace=False)
                first, second = utterances[a][m % len(utterances[a])], utterances[b][(m + 1) % len(utterances[b])]
                # the second speaker starts part-way through the first: overlap, and speech of each alone
                mixtures.append((first, second, float(rng.uniform(0.3, 0.9)), Channel.draw(rng), rng.uniform(-3, 3, 2)))
            plan[SPLITS[split]] = mixtures

        def finish():
            import numpy as np
            import soundfile as sf

            from s3prl_adapters.data.librimix import prepare_librimix
            from s3prl_adapters.data.synth import SR

            for split, mixtures in plan.items():
                for (u1, p1), (u2, p2), offset, channel, gains in mixtures:
                    s1, _ = sf.read(p1, dtype="float32")
                    s2, _ = sf.read(p2, dtype="float32")
                    start = int(offset * len(s1))
                    length = max(len(s1), start + len(s2))  # Libri2Mix "max": as long as the longer source
                    sources = np.zeros((2, length), dtype=np.float32)
                    sources[0, :len(s1)] = s1 * 10 ** (gains[0] / 20)
                    sources[1, start:start + len(s2)] = s2 * 10 ** (gains[1] / 20)
                    rec = f"{u1}_{u2}"
                    for k in range(2):
                        os.makedirs(os.path.join(root, split, f"s{k + 1}"), exist_ok=True)
                        sf.write(os.path.join(root, split, f"s{k + 1}", f"{rec}.wav"), sources[k], SR, subtype="PCM_16")
                    mix = channel.apply(sources.sum(0)).astype(np.float32)
                    os.makedirs(os.path.join(root, split, "mix_clean"), exist_ok=True)
                    sf.write(os.path.join(root, split, "mix_clean", f"{rec}.wav"), np.clip(mix, -1, 1), SR, subtype="PCM_16")
            prepare_librimix(root, os.path.join(root, "data"), list(SPLITS.values()), list(SPLITS))

        return jobs, finish

    # ---- results and submission ---------------------------------------------------------------------

    def corpus_test_ids(self, config, fold=None):
        return [rec for rec, _ in read_wav_scp(os.path.join(self._dirs(config, ("test",))[0], "wav.scp"))]

    def validate_prediction(self, expdir, fold=None):
        """Every test recording has its posteriors (frames x 2 speakers, values in [0, 1])."""
        import h5py

        from .base import same_ids

        folder = os.path.join(expdir, self.prediction_file)
        if not os.path.isdir(folder):
            raise UserError(f"sd: {folder}: no predictions (run -m evaluate -t test with scorerc.save_predictions)")
        files = sorted(Path(folder).glob("*.h5"))
        for f in files:
            with h5py.File(f, "r") as h:
                posteriors = h["T_hat"][:] if "T_hat" in h else None
            if posteriors is None or posteriors.ndim != 2 or not (0 <= posteriors.min() and posteriors.max() <= 1):
                raise UserError(f"sd: {f}: expected T_hat, frames x speakers posteriors in [0, 1]")
        same_ids("sd", folder, [f.stem for f in files], self.corpus_test_ids(latest_config(expdir)))
        return folder

    def test_items(self, expdir, fold=None):
        """Per test recording the DER's error and reference seconds at S3PRL's default setting (threshold
        0.5, no median filter); SUPERB's DER = their sums' ratio."""
        config = latest_config(expdir)
        reference = os.path.join(self._dirs(config, ("test",))[0], "rttm")
        return der_items(diarization_errors(posterior_rttm(expdir, 0.5, 1), reference))

    def table_value(self, expdir, log_text, fold=None):
        """SUPERB's DER (RTTM scored, threshold 0.5, no median filter) as a fraction, not the frame DER the
        recipe prints: the two differ (the recipe averages per-recording frame error rates)."""
        import numpy as np

        items = self.test_items(expdir, fold)
        return self.score(items, np.arange(len(items["ids"]))) / 100.0

    # ---- reproduction: predict's speaker turns against the recipe's test posteriors ------------------

    def test_files(self, expdir, fold=None):
        return dict(read_wav_scp(os.path.join(self._dirs(latest_config(expdir), ("test",))[0], "wav.scp")))

    def recorded_answers(self, expdir, fold=None):
        return {rec: tuple(sorted((round(s, 2), round(e, 2), int(k.rsplit("_", 1)[1])) for s, e, k in turns))
                for rec, turns in posterior_rttm(expdir, 0.5, 1).items()}

    def answer_key(self, answer):
        return tuple(sorted((round(t["start"], 2), round(t["end"], 2), t["speaker"]) for t in answer["turns"]))

    def reproduced_items(self, expdir, fold, keys):
        reference = os.path.join(self._dirs(latest_config(expdir), ("test",))[0], "rttm")
        hypothesis = {rec: [(s, e, f"{rec}_{k}") for s, e, k in turns] for rec, turns in keys.items()}
        return der_items(diarization_errors(hypothesis, reference))

    def score(self, items, index):
        return error_rate(items, index, total="total", floor=1e-9)

    # ---- inference ----------------------------------------------------------------------------------

    def head_facts(self, config):
        return {"num_speakers": int(config["downstream_expert"]["datarc"]["num_speakers"]), "threshold": 0.5}

    def untrained_facts(self):
        return {"num_speakers": 2, "threshold": 0.5}

    def build_head(self, upstream_dim, upstream_rate, modelrc, facts):
        from torch import nn

        from s3prl.downstream.diarization.model import Model

        head = nn.Module()
        head.model = Model(input_dim=upstream_dim, output_class_num=facts["num_speakers"], **modelrc)
        head.frame_seconds = upstream_rate / 16000  # the recipe's frame_shift: one label per upstream frame
        return head

    def answer(self, head, features, facts):
        """Who speaks when: per speaker slot the stretches whose posterior exceeds the threshold (the
        recipe's test pass, one recording at a time, then make_rttm's default setting)."""
        import torch

        answers = []
        for feature in features:
            posteriors = torch.sigmoid(head.model(feature.unsqueeze(0))[0].float()).cpu()
            turns = []
            for speaker, column in enumerate(posteriors.T):
                active = torch.cat([torch.zeros(1), (column > facts["threshold"]).float(), torch.zeros(1)])
                edges = torch.nonzero(active.diff()).flatten().tolist()
                turns += [{"speaker": speaker, "start": round(s * head.frame_seconds, 2), "end": round(e * head.frame_seconds, 2)}
                          for s, e in zip(edges[::2], edges[1::2])]
            answers.append({"turns": sorted(turns, key=lambda t: (t["start"], t["speaker"]))})
        return answers

    def answer_audio(self, head, features, facts, wavs):
        """The recipe labels int(samples / frame shift) frames per recording and, where the upstream gives
        fewer (the CNN's last window needs 400 samples), repeats its last frame to fill them: so here."""
        import torch

        shift = round(head.frame_seconds * 16000)
        filled = []
        for feature, wav in zip(features, wavs):
            frames = int(len(wav) / shift)
            if len(feature) < frames:
                feature = torch.cat([feature, feature[-1:].expand(frames - len(feature), -1)])
            filled.append(feature[:frames] if len(feature) > frames else feature)
        return self.answer(head, filled, facts)

    def add_prepare_command(self, sub):
        p = sub.add_parser("prepare-librimix", help="SD's data folders (wav.scp, segments, utt2spk, spk2utt, reco2dur, "
                                                    "rttm) from a Libri2Mix tree")
        p.add_argument("root", help="the Libri2Mix folder holding the splits, e.g. Libri2Mix/wav16k/max")
        p.add_argument("out", help="where DIR/train, DIR/dev, DIR/test go (the config's loaderrc.*_dir)")
        p.add_argument("--mix", default="mix_clean", help="mixture folder of each split (mix_clean, mix_both)")
        p.add_argument("--splits", nargs=3, default=list(SPLITS.values()), metavar=("TRAIN", "DEV", "TEST"))
        p.set_defaults(func=_prepare)
        s = sub.add_parser("score-diarization", help="SUPERB's DER of an SD run's test predictions (RTTM + pyannote)")
        s.add_argument("expdir")
        s.add_argument("--rttm-out", help="write the hypothesis RTTM of the best setting here")
        s.set_defaults(func=_score)


def read_wav_scp(path: str) -> List[Tuple[str, str]]:
    """(recording, audio path) of a wav.scp; an entry that is a command or stdin is refused (one line):
    S3PRL would run it in a shell."""
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            fields = line.strip().split(None, 1)
            if not fields:
                continue
            if len(fields) != 2:
                raise UserError(f"{path}:{n}: expected '<recording> <audio path>'")
            if fields[1].rstrip().endswith("|") or fields[1].strip() == "-":
                raise UserError(f"{path}:{n}: '{fields[1]}' is a command or stdin, not a file; only audio paths are read")
            out.append((fields[0], fields[1]))
    return out


def posterior_rttm(expdir: str, threshold: float, median: int) -> Dict[str, List[Tuple[float, float, str]]]:
    """{recording: [(start, end, speaker)]} from the run's test posteriors: a speaker speaks in a frame
    whose posterior exceeds `threshold`, after a median filter of `median` frames (S3PRL's make_rttm.py)."""
    import h5py
    import numpy as np
    from scipy.signal import medfilt

    with open(os.path.join(expdir, "frame_shift")) as f:
        frame_shift = int(f.read().strip())
    subsampling = int((latest_config(expdir)["downstream_expert"]["datarc"] or {}).get("subsampling", 1) or 1)
    step = frame_shift * subsampling / 16000
    out = {}
    for path in sorted(Path(expdir, "scoring", "predictions").glob("*.h5")):
        with h5py.File(path, "r") as h:
            active = (h["T_hat"][:] > threshold).astype(int)
        if median > 1:
            active = medfilt(active, (median, 1))
        turns = []
        for speaker, frames in enumerate(active.T):
            changes = np.flatnonzero(np.diff(np.pad(frames, (1, 1))))
            turns += [(s * step, e * step, f"{path.stem}_{speaker}") for s, e in zip(changes[::2], changes[1::2])]
        out[path.stem] = turns
    return out


def diarization_errors(hypothesis: Dict[str, list], reference_rttm: str) -> Dict[str, Tuple[float, float]]:
    """{recording: (missed + false alarm + confusion seconds, reference speech seconds)} by pyannote.metrics'
    DiarizationErrorRate with no collar and overlap scored (S3PRL's dscore call), over the reference's extent."""
    import warnings

    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    from s3prl_adapters.data.librimix import read_rttm

    reference = read_rttm(reference_rttm)
    metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    out = {}
    for rec, turns in reference.items():
        ref, hyp = Annotation(uri=rec), Annotation(uri=rec)
        for start, end, speaker in turns:
            ref[Segment(start, end)] = speaker
        for k, (start, end, speaker) in enumerate(hypothesis.get(rec, [])):
            hyp[Segment(start, end), k] = speaker
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no UEM: pyannote scores the union of both extents, and says so
            detail = metric(ref, hyp, detailed=True)
        errors = detail["missed detection"] + detail["false alarm"] + detail["confusion"]
        out[rec] = (float(errors), float(detail["total"]))
    return out


def der_items(per_recording: Dict[str, Tuple[float, float]]) -> dict:
    """diarization_errors' {recording: (errors, total)} as the per-item outcomes `score` reads."""
    ids = sorted(per_recording)
    return {"ids": ids, "errors": [per_recording[r][0] for r in ids], "total": [per_recording[r][1] for r in ids]}


def _prepare(args):
    from s3prl_adapters.data.librimix import prepare_librimix

    for name, counts in prepare_librimix(args.root, args.out, args.splits, list(SPLITS), args.mix).items():
        print(f"{os.path.join(args.out, name)}: {counts['recordings']} recordings, {counts['segments']} segments, "
              f"{counts['speakers']} speakers")


def _score(args):
    config = latest_config(args.expdir)
    reference = os.path.join(TASK._dirs(config, ("test",))[0], "rttm")
    results = []
    for median, threshold in GRID:
        items = der_items(diarization_errors(posterior_rttm(args.expdir, threshold, median), reference))
        der = TASK.score(items, list(range(len(items["ids"]))))
        results.append((der, median, threshold))
        print(f"median {median:2d} threshold {threshold:.1f}: DER {der:.2f} %")
    best = min(results)
    print(f"lowest: DER {best[0]:.2f} % (median {best[1]}, threshold {best[2]}; chosen on test, as S3PRL's score.sh)")
    if args.rttm_out:
        from s3prl_adapters.data.prepare import write_lines

        turns = posterior_rttm(args.expdir, best[2], best[1])
        write_lines(args.rttm_out, [f"SPEAKER {rec} 1 {s:.2f} {e - s:.2f} <NA> <NA> {spk} <NA> <NA>"
                                    for rec in sorted(turns) for s, e, spk in turns[rec]])


TASK = SpeakerDiarization()

"""KS: `-d speech_commands`, Speech Commands v1.0 (v0.01), 12 classes, accuracy (SUPERB).

Layout: `speech_commands_root` is the v0.01 train folder: one folder per word (30 words),
`<speaker>_nohash_<n>.wav` 1-second clips, and `_background_noise_/*.wav` long noise recordings.
The recipe splits it by a SHA-1 of the speaker part of the file name (10 % dev, 10 % dropped, the
rest train); words other than the ten commands become `_unknown_`, and `_silence_` examples are
1 s crops of the noise files. `speech_commands_test_root` is the separate v0.01 test set: one folder
per class, `_unknown_` and `_silence_` included. The recipe loads audio through sox (mono, 16 kHz),
so any sample rate and channel count pass. It imports `catalyst`, whose last release no longer
imports on Python >= 3.10: bridge/compat.py supplies the one sampler it uses."""

import os

from .base import (Task, class_answers, datarc, id_answer_file, labelled_lines, latest_config, read_lines, same_ids, utterance_level_head,
                   utterance_logits)

COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
CLASSES = COMMANDS + ("_unknown_", "_silence_")
OTHER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "bed", "bird", "cat",
               "dog", "happy", "house", "marvin", "sheila", "tree", "wow")
"""The 20 non-command words of v0.01 (the recipe's `_unknown_`)."""

NOISES = ("white_noise", "pink_noise", "brown_noise", "running_tap", "hum", "exercise_bike")


class KeywordSpotting(Task):
    name = "speech_commands"
    key = "ks"
    title = "KS acc %"
    corpus = "Speech Commands v1.0"
    eval_batch_key = None  # one datarc.batch_size serves training and evaluation: the clips are 1 s
    metric_pattern = r"^test acc: ([\d.eE+-]+)$"
    chance_percent = 100 / 12  # the stand-in test set has as many clips of each of the 12 classes
    any_sample_rate = True
    any_channel_count = True
    standin_dir = "speech_commands"
    workarounds = ("speech_commands_imports_catalyst",)
    submission_member = "predict/ks_public/predict.txt"

    def required_paths(self, config):
        d = datarc(config)
        return [(d["speech_commands_root"], "Speech Commands train folder (v0.01)", "speech_commands_root"),
                (os.path.join(d["speech_commands_root"], "_background_noise_"), "background noise folder (the "
                 "_silence_ examples)", "speech_commands_root"),
                (d["speech_commands_test_root"], "Speech Commands test folder (v0.01 test set)",
                 "speech_commands_test_root")]

    @staticmethod
    def _wavs(root):
        from s3prl_adapters.data.files import scan_tree

        return [path for path, _, _ in scan_tree(root) if path.endswith(".wav")]

    def evaluation_audio(self, config):
        return self._wavs(datarc(config)["speech_commands_test_root"])

    def training_audio(self, config):
        """Every clip of the train folder (the dev split is drawn from it by speaker hash) and the noise."""
        return self._wavs(datarc(config)["speech_commands_root"])

    def corpus_flags(self):
        return [("--speech-commands", "real Speech Commands v0.01 train folder (word folders + _background_noise_)"),
                ("--speech-commands-test", "its separate test folder (one folder per class)")]

    def real_corpus(self, args):
        if not args.speech_commands:
            return None
        return {"speech_commands_root": args.speech_commands,
                "speech_commands_test_root": args.speech_commands_test or os.path.join(
                    os.path.dirname(os.path.abspath(args.speech_commands)), "test")}

    def standin_overrides(self, root):
        d = os.path.join(os.path.abspath(root), self.standin_dir)
        return {"speech_commands_root": os.path.join(d, "train"), "speech_commands_test_root": os.path.join(d, "test")}

    # ---- stand-in: mini Speech Commands -------------------------------------------------------------

    standin_sizes = {"small": {"train_speakers": 48, "unknown_per_speaker": 6, "test_speakers": 12},
                     "medium": {"train_speakers": 96, "unknown_per_speaker": 8, "test_speakers": 24}}
    """Train-folder speakers (each says every command once and some other words), test speakers
    (every command, one other word; as many silence clips: a balanced test set)."""
    standin_seed = 4

    def build_standin(self, out, size, seed, work):
        import hashlib

        from s3prl_adapters.data.mini_superb import Job, Speakers, jitter, ssml, task_rng
        from s3prl_adapters.data.synth import Channel

        rng = task_rng(seed, self.standin_seed)
        n = self.standin_sizes[size]
        root = os.path.join(out, self.standin_dir)
        voices = Speakers(os.path.join(work, "ks"), rng, "ks")
        jobs = []

        def clip(sp, word, path):
            pitch, rate = jitter(rng, sp)
            jobs.append(Job(voices.bank.root, sp.base_voice, sp.name, ssml(word), pitch, rate, Channel.draw(rng),
                            path, "WAV", seconds=1.0))

        for s in range(n["train_speakers"] + n["test_speakers"]):
            sp = voices.new()
            speaker = hashlib.sha1(f"ks{seed}-{s}".encode()).hexdigest()[:8]
            if s < n["train_speakers"]:
                others = rng.choice(OTHER_WORDS, n["unknown_per_speaker"], replace=False)
                for word in COMMANDS + tuple(str(w) for w in others):
                    clip(sp, word, os.path.join(root, "train", word, f"{speaker}_nohash_0.wav"))
            else:
                for word in COMMANDS:
                    clip(sp, word, os.path.join(root, "test", word, f"{speaker}_nohash_0.wav"))
                clip(sp, str(rng.choice(OTHER_WORDS)), os.path.join(root, "test", "_unknown_", f"{speaker}_nohash_0.wav"))
        noise_seed = int(rng.integers(2**31))

        def finish():
            import numpy as np
            import soundfile as sf

            from s3prl_adapters.data.synth import SR

            noise_rng = np.random.default_rng(noise_seed)
            folder = os.path.join(root, "train", "_background_noise_")
            os.makedirs(folder, exist_ok=True)
            for kind in NOISES:  # ~20 s recordings, as the corpus's 1-minute ones, cropped by the recipe
                sf.write(os.path.join(folder, f"{kind}.wav"), background_noise(kind, 20 * SR, noise_rng), SR,
                         subtype="PCM_16")
            folder = os.path.join(root, "test", "_silence_")
            os.makedirs(folder, exist_ok=True)
            for k in range(n["test_speakers"]):  # held-out noise, 1 s each
                kind = NOISES[k % len(NOISES)]
                sf.write(os.path.join(folder, f"{kind}{k:03d}_nohash_0.wav"), background_noise(kind, SR, noise_rng), SR,
                         subtype="PCM_16")

        return jobs, finish

    # ---- submission ---------------------------------------------------------------------------------

    def validate_prediction(self, expdir, fold=None):
        path = os.path.join(expdir, self.prediction_file)
        pairs = labelled_lines("ks", path, CLASSES, item="file")
        truth = [line.split(" ")[0] for line in read_lines(os.path.join(expdir, "test_truth.txt"))]
        same_ids("ks", path, [item for item, _ in pairs], truth)
        return path

    # ---- inference ----------------------------------------------------------------------------------

    audio_effects = (("gain", "-3.0"),)  # the recipe loads every clip through sox: channels 1, rate 16000, gain -3

    def head_facts(self, config):
        return {"classes": list(CLASSES)}

    def untrained_facts(self):
        return self.head_facts({})

    def build_head(self, upstream_dim, upstream_rate, modelrc, facts):
        return utterance_level_head(upstream_dim, modelrc, len(facts["classes"]))

    def test_files(self, expdir, fold=None):
        """The recipe names a test clip '<class folder>-<file name>'."""
        root = datarc(latest_config(expdir))["speech_commands_test_root"]
        truth = id_answer_file(os.path.join(expdir, self.truth_file))
        return {item: os.path.join(root, *item.split("-", 1)) for item in truth}

    def answer(self, head, features, facts):
        return class_answers(utterance_logits(head, features), facts["classes"])


def background_noise(kind: str, samples: int, rng):
    """Stationary noise of one of NOISES' kinds, peak about -10 dBFS."""
    import numpy as np
    from scipy.signal import lfilter

    from s3prl_adapters.data.synth import SR

    white = rng.standard_normal(samples)
    t = np.arange(samples) / SR
    if kind == "white_noise":
        x = white
    elif kind == "pink_noise":  # Kellet's three-pole approximation of 1/f
        x = lfilter([0.049922035, -0.095993537, 0.050612699, -0.004408786], [1, -2.494956002, 2.017265875, -0.522189400],
                    white)
    elif kind == "brown_noise":
        x = lfilter([1.0], [1.0, -0.995], white)
    elif kind == "running_tap":  # band-limited noise, slowly fluctuating
        x = lfilter([1.0, 0.0, -1.0], [1.0, -1.2, 0.5], white) * (1 + 0.4 * np.sin(2 * np.pi * 3.1 * t))
    elif kind == "hum":  # mains hum and harmonics over a little noise
        x = sum(np.sin(2 * np.pi * 50 * h * t + rng.uniform(0, 6.28)) / h for h in (1, 2, 3, 5)) + 0.05 * white
    else:  # exercise_bike: periodic bursts of noise
        x = white * (0.3 + 0.7 * (np.sin(2 * np.pi * 1.3 * t) > 0))
    x = x - x.mean()
    return (0.3 * x / (np.max(np.abs(x)) + 1e-9)).astype(np.float32)


TASK = KeywordSpotting()

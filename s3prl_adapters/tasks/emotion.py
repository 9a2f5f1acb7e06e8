"""ER: `-d emotion`, IEMOCAP, 4 classes (neu, hap incl. exc, ang, sad), leave-one-session-out, accuracy.

Layout: `<root>/SessionN/sentences/wav/<dialog>/<utt>.wav` + `SessionN/dialog/EmoEvaluation/<dialog>.txt`;
the recipe reads `<meta_data>/SessionN/{train,test}_meta_data.json` (fold N tests session N), which
`s3prl-adapters prepare-iemocap` writes. Any sample rate: the recipe resamples."""

import os

from .base import (Task, class_answers, datarc, labelled_lines, latest_config, same_ids,
                   utterance_level_head, utterance_logits)

LABELS = ("neu", "hap", "ang", "sad")

# The stand-in carries emotion by prosody and voice quality only (data.md §6):
# class mean (pitch %, range %, rate %, volume dB) and espeak-ng voice-quality fields.
EMOTIONS = {
    "neu": ((0, 0, 100, 0), {}),
    "hap": ((15, 50, 110, 2), {"breath": "1"}),
    "ang": ((8, 20, 115, 6), {"roughness": "2", "consonants": "125"}),
    "sad": ((-12, -40, 82, -5), {"breath": "3", "flutter": "15"}),
}
EMOTION_SPREAD = (8, 15, 7, 2)  # per-utterance std of the same four


class EmotionRecognition(Task):
    name = "emotion"
    key = "er"
    title = "ER acc %"
    corpus = "IEMOCAP"
    metric_pattern = r"^test acc: ([\d.eE+-]+)$"
    chance_percent = 25.0
    paper_task = True
    folds = (1, 2, 3, 4, 5)
    any_sample_rate = True
    standin_dir = "IEMOCAP"
    prediction_file = "test_fold{fold}_predict.txt"
    truth_file = "test_fold{fold}_truth.txt"
    submission_member = "predict/er_fold{fold}_public/predict.txt"

    def _session(self, config) -> str:
        return str(datarc(config).get("test_fold", "fold1")).replace("fold", "Session")

    def required_paths(self, config):
        d = datarc(config)
        return [(d["root"], "IEMOCAP root", "root")] + [
            (os.path.join(d["meta_data"], self._session(config), f"{name}_meta_data.json"),
             "fold meta data (s3prl-adapters prepare-iemocap writes it)", "meta_data") for name in ("train", "test")]

    def _files(self, config, part):
        import json

        d = datarc(config)
        with open(os.path.join(d["meta_data"], self._session(config), f"{part}_meta_data.json")) as f:
            return [os.path.join(d["root"], x["path"]) for x in json.load(f)["meta_data"]]

    def evaluation_audio(self, config):
        return self._files(config, "test")

    def training_audio(self, config):
        return self._files(config, "train")

    def corpus_flags(self):
        return [("--iemocap", "real IEMOCAP root"), ("--iemocap-meta", "its meta-data folder (default ROOT/meta_data)")]

    def real_corpus(self, args):
        if not args.iemocap:
            return None
        return {"root": args.iemocap, "meta_data": args.iemocap_meta or os.path.join(args.iemocap, "meta_data")}

    def standin_overrides(self, root):
        d = os.path.join(os.path.abspath(root), self.standin_dir)
        return {"root": d, "meta_data": os.path.join(d, "meta_data")}

    def fold_overrides(self, fold):
        return {"test_fold": f"fold{fold}"}

    # ---- stand-in: mini-IEMOCAP ---------------------------------------------------------------------

    standin_sizes = {"small": 34, "medium": 68}
    """Sentences per speaker, each said in all four emotions (5 sessions x 2 speakers): a fold's test
    session has 272 utterances, so an accuracy near 50 % has a 95 % interval of about ±6 points."""
    standin_seed = 2
    separation = 1.0
    """Scales the class means: how far apart the emotions are."""

    def build_standin(self, out, size, seed, work):
        from s3prl_adapters.data import prepare, texts
        from s3prl_adapters.data.mini_superb import Job, Speakers, ssml, task_rng
        from s3prl_adapters.data.synth import Channel, random_speaker

        rng = task_rng(seed, self.standin_seed)
        root = os.path.join(out, self.standin_dir)
        voices = Speakers(os.path.join(work, "er"), rng, "er")
        per_class, sep = self.standin_sizes[size], self.separation
        jobs, evaluations = [], {}
        for session in range(1, 6):
            for gender_letter in ("F", "M"):
                sp = random_speaker(voices.rng, f"er{session}{gender_letter}")
                sp.gender = "female" if gender_letter == "F" else "male"
                for emo, (_, quality) in EMOTIONS.items():  # one variant per (speaker, emotion): voice quality
                    voices.bank.add(f"{sp.name}{emo}", sp.variant_text(quality))
                sentences = texts.unique_sentences(rng, per_class)
                dialog = f"Ses0{session}{gender_letter}_impro0{1 + (session % 3)}"
                lines, t0, n = [], 0.0, 0
                for text in sentences:
                    for emo, (mean, _) in EMOTIONS.items():
                        # class means scaled by `separation` (rate around 100 %), plus per-utterance spread
                        p = mean[0] * sep + rng.normal(0, EMOTION_SPREAD[0])
                        r = mean[1] * sep + rng.normal(0, EMOTION_SPREAD[1])
                        vol = mean[3] * sep + rng.normal(0, EMOTION_SPREAD[3])
                        rate = 100 + (mean[2] - 100) * sep + rng.normal(0, EMOTION_SPREAD[2])
                        utt = f"{dialog}_{gender_letter}{n:03d}"
                        n += 1
                        jobs.append(Job(voices.bank.root, sp.base_voice, f"{sp.name}{emo}", ssml(text, p, r, rate, vol),
                                        sp.pitch, sp.rate, Channel.draw(rng),
                                        os.path.join(root, f"Session{session}", "sentences", "wav", dialog, f"{utt}.wav"),
                                        "WAV"))
                        lines.append(f"[{t0:.4f} - {t0 + 3:.4f}]\t{utt}\t{emo}\t[2.5000, 2.5000, 2.5000]")
                        t0 += 3.5
                # an utterance of no class, as IEMOCAP's 'xxx': preparation must skip it
                lines.append(f"[{t0:.4f} - {t0 + 3:.4f}]\t{dialog}_{gender_letter}{n:03d}\txxx\t[2.5000, 2.5000, 2.5000]")
                evaluations[os.path.join(root, f"Session{session}", "dialog", "EmoEvaluation", f"{dialog}.txt")] = lines

        def finish():
            for path, lines in evaluations.items():
                prepare.write_lines(path, lines)
            prepare.iemocap_meta_data(root, os.path.join(root, "meta_data"))

        return jobs, finish

    # ---- submission ---------------------------------------------------------------------------------

    def corpus_test_ids(self, config, fold=None):
        """The fold's test_meta_data.json (the run's config names the fold)."""
        return [os.path.splitext(os.path.basename(f))[0] for f in self._files(config, "test")]

    def validate_prediction(self, expdir, fold=None):
        path = os.path.join(expdir, self.prediction_file.format(fold=fold))
        pairs = labelled_lines(f"er fold{fold}", path, LABELS)
        same_ids(f"er fold{fold}", path, [item for item, _ in pairs], self.corpus_test_ids(latest_config(expdir), fold))
        return path

    # ---- inference ----------------------------------------------------------------------------------

    def head_facts(self, config):
        """Class names by index, from the run's test-fold meta data (the recipe names predictions so)."""
        import json

        d = datarc(config)
        with open(os.path.join(d["meta_data"], self._session(config), "test_meta_data.json")) as f:
            labels = json.load(f)["labels"]
        return {"labels": sorted(labels, key=labels.get)}

    def untrained_facts(self):
        return {"labels": list(LABELS)}

    def build_head(self, upstream_dim, upstream_rate, modelrc, facts):
        return utterance_level_head(upstream_dim, modelrc, len(facts["labels"]))

    def test_files(self, expdir, fold=None):
        files = self._files(latest_config(expdir), "test")
        return {os.path.splitext(os.path.basename(f))[0]: f for f in files}

    def answer(self, head, features, facts):
        return class_answers(utterance_logits(head, features), facts["labels"])

    def add_prepare_command(self, sub):
        p = sub.add_parser("prepare-iemocap", help="write the emotion recipe's leave-one-session-out meta data")
        p.add_argument("root", help="IEMOCAP folder holding Session1..Session5")
        p.add_argument("out", help="meta-data folder (the config's meta_data)")
        p.set_defaults(func=_prepare)


def _prepare(args):
    from s3prl_adapters.data.prepare import iemocap_meta_data

    counts = iemocap_meta_data(args.root, args.out)
    print(f"wrote {args.out}/Session1..5/{{train,test}}_meta_data.json; test utterances per fold: {counts}")


TASK = EmotionRecognition()

"""SF: `-d ctc -c sf/config.yaml`, Audio SNIPS, end-to-end slot filling: slot-type F1 (and slot-value CER) (SUPERB).

Layout (SUPERB's preprocessed release): `corpus.path`/{train,valid,test}/`<Speaker>-snips-<split>-<n>.wav`,
`all.iob.snips.txt` (`<id> BOS WORDS EOS<TAB>O slot-per-word INTENT`), `all-trans.txt`, and `slots.txt`
(`O` first, then one slot name per line: `text.slots_file`). A split keeps the files of its speakers
(`corpus.train_speakers`, ...). The recipe transcribes characters with each slot value between
`B-<slot> ` and ` E-<slot>` tokens; ctc/metric.py scores slot types (F1 per utterance, averaged) and
slot values (CER of each reference value against the closest hypothesis value of its type)."""

import os
import re
from pathlib import Path
from typing import List

from s3prl_adapters.errors import UserError

from .base import latest_config
from .ctc import CtcTask, ark_items

SPLITS = ("train", "valid", "test")


class SlotFilling(CtcTask):
    name = "sf"
    key = "sf"
    corpus_name = "snips"
    title = "SF slot-type F1 %"
    corpus = "Audio SNIPS"
    metric = "slot_type_f1"
    chance_percent = 14.44  # the stand-in test split, every command given the most frequent training slot type (city)
    standin_dir = "SNIPS"
    submission_member = "predict/sf_public/predict.ark"

    # ---- corpus -----------------------------------------------------------------------------------

    def required_paths(self, config):
        corpus = self.corpus_settings(config)
        root = corpus["path"]
        paths = [(root, "Audio SNIPS root", "path"), (os.path.join(root, "all.iob.snips.txt"), "slot-tagged transcripts", "path")]
        paths += [(os.path.join(root, s), f"split folder '{s}'", "path") for s in self._splits(corpus, ("train", "dev", "test"))]
        slots = config["downstream_expert"].get("text", {}).get("slots_file")
        if slots:
            paths.append((slots, "slot list (text.slots_file)", "path"))
        return paths

    def _wavs(self, corpus: dict, which) -> List[str]:
        """The files the recipe keeps: under the split's folder, a speaker of the split, a transcript line."""
        from s3prl_adapters.data.ctc_corpora import read_snips_transcripts

        table = os.path.join(corpus["path"], "all.iob.snips.txt")
        known = read_snips_transcripts(table) if os.path.isfile(table) else {}
        files = []
        for key in which:
            for split in self._splits(corpus, (key,)):
                speakers = corpus.get(f"{split}_speakers") or []  # the recipe keys speakers by split name
                files += [str(f) for f in sorted(Path(corpus["path"], split).rglob("*.wav"))
                          if f.stem in known and any(f.stem.startswith(s) for s in speakers)]
        return files

    def evaluation_audio(self, config):
        return self._wavs(self.corpus_settings(config), ("dev", "test"))

    def training_audio(self, config):
        return self._wavs(self.corpus_settings(config), ("train",))

    def corpus_flags(self):
        return [("--snips", "real Audio SNIPS root (SUPERB's release: train/ valid/ test/, all.iob.snips.txt, slots.txt)")]

    def real_corpus(self, args):
        return {"path": args.snips, "text.slots_file": os.path.join(args.snips, "slots.txt")} if args.snips else None

    def standin_overrides(self, root):
        d = os.path.join(os.path.abspath(root), self.standin_dir)
        return {"path": d, "text.slots_file": os.path.join(d, "slots.txt")}

    # ---- stand-in: mini Audio SNIPS ---------------------------------------------------------------

    standin_sizes = {"small": {"train": 24, "valid": 12, "test": 15}, "medium": {"train": 48, "valid": 20, "test": 25}}
    """Utterances per speaker of each split (8 train, 4 valid, 4 test speakers, named as SUPERB's)."""
    standin_seed = 8

    def build_standin(self, out, size, seed, work):
        from s3prl_adapters.data import prepare, texts
        from s3prl_adapters.data.mini_superb import Job, Speakers, jitter, ssml, task_rng
        from s3prl_adapters.data.synth import Channel

        rng = task_rng(seed, self.standin_seed)
        root = os.path.join(out, self.standin_dir)
        voices = Speakers(os.path.join(work, "sf"), rng, "sf")
        jobs, iob, trans, seen_in_train = [], [], [], set()
        for split in SPLITS:
            n = 0
            for speaker in texts.SNIPS_SPEAKERS[split]:
                sp = voices.new()
                for _ in range(self.standin_sizes[size][split]):
                    while True:  # dev and test commands never occur in training
                        intent, words, tags = texts.snips_command(rng)
                        if split == "train" or " ".join(words) not in seen_in_train:
                            break
                    if split == "train":
                        seen_in_train.add(" ".join(words))
                    uid = f"{speaker}-snips-{split}-{n}"
                    n += 1
                    pitch, rate = jitter(rng, sp)
                    jobs.append(Job(voices.bank.root, sp.base_voice, sp.name, ssml(" ".join(words)), pitch, rate,
                                    Channel.draw(rng), os.path.join(root, split, f"{uid}.wav"), "WAV"))
                    iob.append(f"{uid} BOS {' '.join(words)} EOS\tO {' '.join(tags)} {intent}")
                    trans.append(f"{uid} {' '.join(words)}")

        def finish():
            prepare.write_lines(os.path.join(root, "all.iob.snips.txt"), iob)
            prepare.write_lines(os.path.join(root, "all-trans.txt"), trans)
            with open(os.path.join(root, "slots.txt"), "w") as f:  # no final newline: the recipe splits on '\n'
                f.write("\n".join(["O"] + sorted(texts.SNIPS_VALUES)))

        return jobs, finish

    # ---- results and submission ---------------------------------------------------------------------

    def corpus_test_ids(self, config, fold=None):
        return [Path(f).stem for f in self._wavs(self.corpus_settings(config), ("test",))]

    def check_hypothesis(self, path, n, text):
        for token in text.split():
            if not re.fullmatch(r"[BE]-\S+|[A-Z']+|<unk>", token):
                raise UserError(f"sf: {path}:{n}: '{token}' is neither upper-case characters nor a B-/E- slot token")

    def test_items(self, expdir, fold=None):
        """Slot-type F1 of each utterance (the recipe's slot_type_f1 averages them)."""
        from s3prl.downstream.ctc.metric import slot_type_f1

        path = os.path.join(expdir, self.prediction_file)
        hyp, ref = self.read_ark(path), self.read_ark(os.path.join(expdir, self.truth_file))
        ids = ark_items(hyp, ref, path)
        return {"ids": ids, "f1": [slot_type_f1([hyp[u]], [ref[u]]) for u in ids]}

    def score(self, items, index):
        import numpy as np

        return 100.0 * float(np.asarray(items["f1"], dtype=float)[index].mean())

    def test_files(self, expdir, fold=None):
        corpus = self.corpus_settings(latest_config(expdir))
        return {Path(f).stem: f for f in self._wavs(corpus, ("test",))}

    def reproduced_items(self, expdir, fold, keys):
        from s3prl.downstream.ctc.metric import slot_type_f1

        ref = self.read_ark(os.path.join(expdir, self.truth_file))
        ids = sorted(ref)
        return {"ids": ids, "f1": [slot_type_f1([str(keys.get(u, ""))], [ref[u]]) for u in ids]}

    def untrained_facts(self):
        from s3prl_adapters.data import texts

        with open(os.path.join(os.path.dirname(self.config_path()), "character.txt"), encoding="utf-8") as f:
            vocabulary = [line.strip("\r\n") for line in f]
        return {"mode": "character-slot", "vocabulary": vocabulary, "slots": ["O"] + sorted(texts.SNIPS_VALUES)}

    def structured(self, text):
        """The transcript without slot tokens, and each slot's type and value (as ctc/metric.py parses them)."""
        spaced = re.sub(r" +", " ", text)
        slots = [{"slot": m.group(1), "value": re.sub(r"B\-(\S+) | E\-(\S+)", "", m.group(2))}
                 for m in re.finditer(r"B\-(\S+) (.+?) E\-\1", spaced)]
        return {"text": text, "transcript": " ".join(re.sub(r"[BE]\-\S+", " ", spaced).split()), "slots": slots}


TASK = SlotFilling()

"""IC: `-d fluent_commands`, Fluent Speech Commands, intent = (action, object, location), accuracy.

Layout: `<file_path>/data/{train,valid,test}_data.csv` (",path,speakerId,transcription,action,object,location")
and `<file_path>/wavs/speakers/<speakerId>/<uuid>.wav`, 16 kHz mono. Label maps come from
train_data.csv only, so every test value must occur in training; write the literal `none`."""

import os

from s3prl_adapters.errors import UserError

from .base import Task, csv_column, datarc, latest_config, read_lines, same_ids, utterance_level_head, utterance_logits

SLOTS = ("action", "object", "location")


class IntentClassification(Task):
    name = "fluent_commands"
    key = "ic"
    title = "IC acc %"
    corpus = "Fluent Speech Commands"
    metric_pattern = r"^test acc: ([\d.eE+-]+)$"
    chance_percent = 100 * 9 / 272  # majority intent of the stand-in test split: 31 intents round-robin over 272
    paper_task = True
    standin_dir = "fluent_speech_commands"
    prediction_file = "test_predict.csv"
    truth_file = "test_truth.csv"
    submission_member = "predict/ic_public/predict.csv"

    def required_paths(self, config):
        root = datarc(config)["file_path"]
        return [(root, "Fluent Speech Commands root", "file_path")] + [
            (os.path.join(root, "data", f"{split}_data.csv"), "table", "file_path") for split in ("train", "valid", "test")]

    def _files(self, config, split):
        root = datarc(config)["file_path"].rstrip("/") + "/"
        return [root + rel for rel in csv_column(os.path.join(root, "data", f"{split}_data.csv"), "path")]

    def evaluation_audio(self, config):
        return self._files(config, "valid") + self._files(config, "test")

    def training_audio(self, config):
        return self._files(config, "train")

    def corpus_flags(self):
        return [("--fsc", "real Fluent Speech Commands root")]

    def real_corpus(self, args):
        return {"file_path": args.fsc} if args.fsc else None

    def standin_overrides(self, root):
        return {"file_path": os.path.join(os.path.abspath(root), self.standin_dir)}

    # ---- stand-in: mini-FSC -------------------------------------------------------------------------

    standin_sizes = {"small": [(16, 20), (16, 17), (16, 17)], "medium": [(32, 20), (24, 17), (24, 17)]}
    """(speakers, utterances per speaker) of train, valid, test: 272 test utterances, so an accuracy
    near 50 % has a 95 % interval of about ±6 points."""
    standin_seed = 1

    def build_standin(self, out, size, seed, work):
        import hashlib

        from s3prl_adapters.data import prepare, texts
        from s3prl_adapters.data.mini_superb import Job, Speakers, jitter, ssml, task_rng
        from s3prl_adapters.data.synth import Channel

        rng = task_rng(seed, self.standin_seed)
        root = os.path.join(out, self.standin_dir)
        voices = Speakers(os.path.join(work, "ic"), rng, "ic")
        jobs, tables = [], {}
        for split, (n_spk, per_spk) in zip(["train", "valid", "test"], self.standin_sizes[size]):
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
                    pitch, rate = jitter(rng, sp)
                    jobs.append(Job(voices.bank.root, sp.base_voice, sp.name, ssml(text), pitch, rate,
                                    Channel.draw(rng), os.path.join(root, rel), "WAV"))
                    rows.append([rel, spk, text.capitalize(), action, obj, loc])
            tables[os.path.join(root, "data", f"{split}_data.csv")] = rows

        def finish():
            for path, rows in tables.items():
                prepare.write_lines(path, [",path,speakerId,transcription,action,object,location"]
                                    + [",".join([str(i)] + r) for i, r in enumerate(rows)])

        return jobs, finish

    # ---- submission ---------------------------------------------------------------------------------

    def corpus_test_ids(self, config, fold=None):
        return [os.path.splitext(os.path.basename(f))[0] for f in self._files(config, "test")]

    def validate_prediction(self, expdir, fold=None):
        path = os.path.join(expdir, self.prediction_file)
        lines = read_lines(path)
        root = latest_config(expdir)["downstream_expert"]["datarc"]["file_path"]
        train = os.path.join(root, "data", "train_data.csv")
        allowed = [set(csv_column(train, slot)) for slot in SLOTS]
        for n, line in enumerate(lines, 1):
            parts = line.split(",")
            if len(parts) != 4:
                raise UserError(f"ic: {path}:{n}: expected '<stem>,<action>,<object>,<location>', got {line!r}")
            for value, values, slot in zip(parts[1:], allowed, SLOTS):
                if value not in values:
                    raise UserError(f"ic: {path}:{n}: {slot} '{value}' is not one of the training labels")
        same_ids("ic", path, [line.split(",")[0] for line in lines], self.corpus_test_ids(latest_config(expdir)))
        return path

    # ---- reproduction ---------------------------------------------------------------------------------

    def test_files(self, expdir, fold=None):
        files = self._files(latest_config(expdir), "test")
        return {os.path.splitext(os.path.basename(f))[0]: f for f in files}

    def answer_key(self, answer):
        return ",".join(answer[slot] for slot in SLOTS)

    # ---- inference ----------------------------------------------------------------------------------

    def head_facts(self, config):
        """The recipe numbers each slot's values in order of first appearance in train_data.csv."""
        train = os.path.join(datarc(config)["file_path"], "data", "train_data.csv")
        return {"slots": {slot: list(dict.fromkeys(csv_column(train, slot))) for slot in SLOTS}}

    def untrained_facts(self):
        return {"slots": {"action": ["activate", "deactivate", "increase", "decrease", "bring", "change language"],
                          "object": ["none", "music", "lights", "lamp", "volume", "heat", "newspaper", "juice", "socks",
                                     "shoes", "Chinese", "Korean", "English", "German"],
                          "location": ["none", "kitchen", "bedroom", "washroom"]}}

    def build_head(self, upstream_dim, upstream_rate, modelrc, facts):
        return utterance_level_head(upstream_dim, modelrc, sum(len(v) for v in facts["slots"].values()))

    def answer(self, head, features, facts):
        logits = utterance_logits(head, features)
        answers = [{} for _ in features]
        start = 0
        for slot in SLOTS:  # the logits are the three slots side by side, each its own arg-max
            values = facts["slots"][slot]
            chosen = logits[:, start:start + len(values)].max(1)[1].tolist()
            for answer, index in zip(answers, chosen):
                answer[slot] = values[index]
            start += len(values)
        return answers


TASK = IntentClassification()

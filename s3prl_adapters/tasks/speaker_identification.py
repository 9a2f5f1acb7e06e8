"""SID: `-d voxceleb1`, VoxCeleb1 speaker identification (1,251 classes), accuracy (SUPERB).

Layout: `<file_path>/*/wav/<idNNNNN>/<video>/<NNNNN>.wav` (dev/wav and test/wav alike) and
`meta_data`, VoxCeleb1's `iden_split.txt`: `<1|2|3> idNNNNN/<video>/<NNNNN>.wav` (train/dev/test).
The label is `int(speaker id[2:]) - 10001`, so speakers must be named id10001 ... id11251. The
recipe finds each listed file with one glob and caches the lists inside the installed package,
keyed by nothing: bridge/compat.py keys that cache by corpus."""

import os

from s3prl_adapters.errors import UserError

from .base import (Task, datarc, id_answer_file, labelled_lines, latest_config, read_lines, same_ids,
                   utterance_level_head, utterance_logits)

SPLIT_CODES = {"train": "1", "dev": "2", "test": "3"}


class SpeakerIdentification(Task):
    name = "voxceleb1"
    key = "sid"
    title = "SID acc %"
    corpus = "VoxCeleb1"
    metric_pattern = r"^test acc: ([\d.eE+-]+)$"
    chance_percent = 100 / 60  # the stand-in: 60 speakers, one test utterance each
    standin_dir = "VoxCeleb1"
    standin_base = "sv_voxceleb1"
    workarounds = ("sid_file_lists_are_cached_inside_the_package",)
    submission_member = "predict/sid_public/predict.txt"

    def required_paths(self, config):
        d = datarc(config)
        return [(d["file_path"], "VoxCeleb1 root (holding */wav/idNNNNN/...)", "file_path"),
                (d["meta_data"], "identification split (VoxCeleb1's iden_split.txt)", "meta_data")]

    def _listed(self, config, codes):
        """The files of the split list's lines whose code is in `codes`, found under */wav/ (one walk)."""
        from s3prl_adapters.data.files import scan_tree

        d = datarc(config)
        root = os.path.abspath(d["file_path"])
        found = {}
        for path, _, _ in scan_tree(root, keep=True):
            parts = os.path.relpath(path, root).split(os.sep)
            if len(parts) == 5 and parts[1] == "wav":
                found.setdefault("/".join(parts[2:]), path)
        files = []
        with open(d["meta_data"]) as f:
            for n, line in enumerate(f, 1):
                fields = line.split()
                if len(fields) != 2 or fields[0] not in SPLIT_CODES.values():
                    raise UserError(f"-d {self.name}: {d['meta_data']}:{n}: expected '<1|2|3> idNNNNN/<video>/<file>.wav'")
                if fields[0] in codes:
                    files.append(found.get(fields[1], os.path.join(root, "*", "wav", fields[1])))
        return files

    def evaluation_audio(self, config):
        return self._listed(config, {SPLIT_CODES["dev"], SPLIT_CODES["test"]})

    def training_audio(self, config):
        return self._listed(config, {SPLIT_CODES["train"]})

    def corpus_flags(self):
        return [("--voxceleb1", "real VoxCeleb1 root (dev/wav, test/wav)"),
                ("--sid-split", "identification split for --voxceleb1 (default ROOT/iden_split.txt)")]

    def real_corpus(self, args):
        if not args.voxceleb1:
            return None
        return {"file_path": args.voxceleb1, "meta_data": args.sid_split or os.path.join(args.voxceleb1, "iden_split.txt")}

    def standin_overrides(self, root):
        d = os.path.join(os.path.abspath(root), self.standin_dir)
        return {"file_path": d, "meta_data": os.path.join(d, "iden_split.txt")}

    # ---- stand-in: the speaker verification stand-in, split per speaker -------------------------------

    standin_seed = 5  # unused: the split is a fixed function of the files

    def standin_ready(self, root):
        return os.path.isfile(os.path.join(root, self.standin_dir, "iden_split.txt"))

    def build_standin(self, out, size, seed, work):
        """No audio of its own: every speaker of the ASV stand-in (dev and test) is a class; per
        speaker, the last utterance is test, the one before dev, the rest train."""
        root = os.path.join(out, self.standin_dir)

        def finish():
            from s3prl_adapters.data.prepare import voxceleb_files, write_lines

            lines = []
            for part in ("dev", "test"):
                for files in voxceleb_files(os.path.join(root, part, "wav")).values():
                    codes = ["1"] * (len(files) - 2) + ["2", "3"]
                    lines += [f"{code} {rel}" for code, rel in zip(codes, files)]
            write_lines(os.path.join(root, "iden_split.txt"), lines)

        return [], finish

    # ---- submission ---------------------------------------------------------------------------------

    def validate_prediction(self, expdir, fold=None):
        path = os.path.join(expdir, self.prediction_file)
        labels = [f"id{10001 + k}" for k in range(1251)]
        pairs = labelled_lines("sid", path, labels)
        truth = [line.split(" ")[0] for line in read_lines(os.path.join(expdir, "test_truth.txt"))]
        same_ids("sid", path, [item for item, _ in pairs], truth)
        return path

    # ---- inference ----------------------------------------------------------------------------------

    def head_facts(self, config):
        return {"speakers": 1251}  # the recipe's fixed class count; class k is speaker id(10001 + k)

    def untrained_facts(self):
        return self.head_facts({})

    def build_head(self, upstream_dim, upstream_rate, modelrc, facts):
        return utterance_level_head(upstream_dim, modelrc, facts["speakers"])

    def test_files(self, expdir, fold=None):
        """The recipe names a test utterance '<speaker>-<video>-<number>' (its path under dev/wav or test/wav)."""
        import glob

        root = datarc(latest_config(expdir))["file_path"]
        files = {}
        for item in id_answer_file(os.path.join(expdir, self.truth_file)):
            speaker, rest = item.split("-", 1)
            video, number = rest.rsplit("-", 1)
            found = glob.glob(os.path.join(root, "*", "wav", speaker, video, f"{number}.wav"))
            if not found:
                raise UserError(f"{expdir}: test item {item} has no file under {root}/*/wav")
            files[item] = found[0]
        return files

    def answer_key(self, answer):
        return answer["speaker"]

    def answer(self, head, features, facts):
        probabilities = utterance_logits(head, features).float().softmax(-1).cpu()
        return [{"speaker": f"id{10001 + int(p.argmax())}", "probability": round(float(p.max()), 6)}
                for p in probabilities]


TASK = SpeakerIdentification()

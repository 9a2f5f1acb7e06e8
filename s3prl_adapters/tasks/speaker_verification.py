"""ASV: `-d sv_voxceleb1`, VoxCeleb1, x-vector + AM-softmax, EER over a trial list.

Layout: `<file_path>/dev/wav/<spk>/<video>/<NNNNN>.wav` (training: every wav under dev/wav) and
`<file_path>/test/wav/...`; trial lists `<label> <wav> <wav>` relative to test/wav (the official
veri_test2.txt) and a dev list the recipe reads at start-up (`s3prl-adapters prepare-voxceleb1`).
S3PRL workarounds it needs: `.cuda()` in its forward and a length cache inside the installed package."""

import os
from typing import List, Tuple

from s3prl_adapters.errors import UserError

from .base import Task, datarc, latest_config, read_lines


def pair_name(rel: str) -> str:
    """How the recipe names one side of a trial in its predictions: 'id10270-x6uYqmx31kE-00001'."""
    return "-".join(rel.split("/")[-3:]).split(".")[0]


class SpeakerVerification(Task):
    name = "sv_voxceleb1"
    key = "sv"
    title = "ASV EER %"
    corpus = "VoxCeleb1"
    metric = "eer"
    metric_pattern = r"^sv-voxceleb1/test-EER: ([\d.eE+-]+)$"
    higher_is_better = False
    chance_percent = 50.0
    dev_split = "dev"  # the dev trial list (its scoring needs the sv_dev_scoring_reads_the_test_trials fix)
    paper_task = True
    standin_dir = "VoxCeleb1"
    workarounds = ("sv_expert_hardcodes_cuda", "sv_length_cache_lives_in_installed_package",
                   "sv_dev_scoring_reads_the_test_trials")
    random_train_crop = "max_timestep"
    submission_member = "predict/sv_public/predict.txt"
    empty_train_hint = " (ASV keeps only files longer than vad_config.min_sec after VAD)"

    def required_paths(self, config):
        d = datarc(config)
        return [(os.path.join(d["file_path"], part, "wav"), f"VoxCeleb1 {part} audio folder", "file_path")
                for part in ("dev", "test")] + [
            (d["dev_meta_data"], "dev trial list (s3prl-adapters prepare-voxceleb1 writes it)", "dev_meta_data"),
            (d["test_meta_data"], "test trial list (the official veri_test2.txt)", "test_meta_data")]

    def evaluation_audio(self, config):
        """The files of the test trials (under test/wav) and of the dev trials (under dev/wav)."""
        d = datarc(config)
        files = set()
        for part, trials in (("test", d["test_meta_data"]), ("dev", d["dev_meta_data"])):
            root = os.path.join(d["file_path"], part, "wav")
            with open(trials) as f:
                files |= {os.path.join(root, p) for line in f if line.strip() for p in line.split()[1:3]}
        return sorted(files)

    def training_audio(self, config):
        """The recipe trains on every wav under dev/wav (the listing is kept for its length cache's key)."""
        from s3prl_adapters.data.files import scan_tree

        root = os.path.join(datarc(config)["file_path"], "dev", "wav")
        return [path for path, _, _ in scan_tree(root, keep=True) if path.endswith(".wav")]

    def corpus_flags(self):
        return [("--voxceleb1", "real VoxCeleb1 root (dev/wav, test/wav)"),
                ("--sv-test-trials", "official trial list for --voxceleb1 (veri_test2.txt)"),
                ("--sv-dev-trials", "dev trial list (default ROOT/dev_trials.txt)")]

    def real_corpus(self, args):
        if not args.voxceleb1:
            return None
        if not args.sv_test_trials:
            raise UserError("--voxceleb1 needs --sv-test-trials (the official veri_test2.txt)")
        return {"file_path": args.voxceleb1, "test_meta_data": args.sv_test_trials,
                "dev_meta_data": args.sv_dev_trials or os.path.join(args.voxceleb1, "dev_trials.txt")}

    def standin_overrides(self, root):
        d = os.path.join(os.path.abspath(root), self.standin_dir)
        return {"file_path": d, "test_meta_data": os.path.join(d, "test_trials.txt"),
                "dev_meta_data": os.path.join(d, "dev_trials.txt")}

    # ---- stand-in: mini-VoxCeleb1 -------------------------------------------------------------------

    standin_sizes = {"small": {"speakers": [(40, 6), (20, 11)], "trials": 2000},
                     "medium": {"speakers": [(80, 6), (30, 13)], "trials": 4000}}
    """(speakers, utterances per speaker) of dev and test, and the number of test trials (half of them
    target pairs: the test speakers' same-speaker pairs must number at least half the trials)."""
    standin_seed = 3
    trial_seed = 99

    def build_standin(self, out, size, seed, work):
        import hashlib
        from dataclasses import asdict

        from s3prl_adapters.data import prepare, texts
        from s3prl_adapters.data.mini_superb import Job, Speakers, jitter, ssml, task_rng
        from s3prl_adapters.data.synth import Channel

        rng = task_rng(seed, self.standin_seed)
        root = os.path.join(out, self.standin_dir)
        voices = Speakers(os.path.join(work, "sv"), rng, "sv")
        jobs, groups = [], {}
        spk_num = 10001  # VoxCeleb1's ids (the SID recipe derives its label from them)
        for part, (n_spk, per_spk) in zip(["dev", "test"], self.standin_sizes[size]["speakers"]):
            for _ in range(n_spk):
                sp = voices.new()
                spk = f"id{spk_num}"
                spk_num += 1
                groups[spk] = f"{sp.gender}/{sp.base_voice}/{'klatt' if 'klatt' in sp.variant else 'formant'}"
                # 2-3 'videos' per speaker, each one recording condition shared by its utterances
                videos = [(hashlib.sha1(f"{spk}{v}".encode()).hexdigest()[:11], Channel.draw(rng, 0.6, (10.0, 30.0)))
                          for v in range(int(rng.integers(2, 4)))]
                for u in range(per_spk):
                    video, channel = videos[u % len(videos)]
                    channel = Channel(**dict(asdict(channel), gain_db=float(rng.uniform(-6, 6)),
                                             seed=int(rng.integers(2**31))))
                    text = " ".join(texts.unique_sentences(rng, 2))  # > 2 s after the recipe's VAD
                    pitch, rate = jitter(rng, sp)
                    jobs.append(Job(voices.bank.root, sp.base_voice, sp.name, ssml(text), pitch, rate, channel,
                                    os.path.join(root, part, "wav", spk, video, f"{u + 1:05d}.wav"), "WAV"))

        def finish():
            trial_rng = task_rng(seed, self.trial_seed)
            test_files = prepare.voxceleb_files(os.path.join(root, "test", "wav"))
            # half of the non-target trials pair near neighbours (same gender, accent and source model)
            prepare.write_lines(os.path.join(root, "test_trials.txt"),
                                prepare.make_trials(test_files, self.standin_sizes[size]["trials"], trial_rng, groups))
            dev_files = prepare.voxceleb_files(os.path.join(root, "dev", "wav"))
            prepare.write_lines(os.path.join(root, "dev_trials.txt"), prepare.make_trials(dev_files, 200, trial_rng))

        return jobs, finish

    # ---- submission ---------------------------------------------------------------------------------

    def validate_prediction(self, expdir, fold=None):
        path = os.path.join(expdir, self.prediction_file)
        lines = read_lines(path)
        for n, line in enumerate(lines, 1):
            parts = line.split(" ")
            try:
                float(parts[1])
                ok = len(parts) == 2 and "_" in parts[0]
            except (IndexError, ValueError):
                ok = False
            if not ok:
                raise UserError(f"sv: {path}:{n}: expected '<A>_<B> <score>', got {line!r}")
        trials = latest_config(expdir)["downstream_expert"]["datarc"]["test_meta_data"]
        expected = [f"{pair_name(a)}_{pair_name(b)}" for _, a, b in (line.split() for line in read_lines(trials))]
        got = [line.split(" ")[0] for line in lines]
        if got != expected:
            raise UserError(f"sv: {path}: {len(got)} scored pairs do not match the {len(expected)} trials of {trials} in order")
        return path

    # ---- per-item outcomes ---------------------------------------------------------------------------

    def test_items(self, expdir, fold=None):
        """Per trial: its label (from the run's trial list) and the recipe's cosine score."""
        trials = latest_config(expdir)["downstream_expert"]["datarc"]["test_meta_data"]
        labels = [int(line.split()[0]) for line in read_lines(trials)]
        scored = [line.split(" ") for line in read_lines(os.path.join(expdir, self.prediction_file))]
        if len(scored) != len(labels):
            raise UserError(f"{expdir}: {len(scored)} scored trials, but {trials} has {len(labels)}")
        return {"ids": [f"{k}:{pair}" for k, (pair, _) in enumerate(scored)], "labels": labels,
                "scores": [float(score) for _, score in scored]}

    def score(self, items, index):
        """EER in % of the trials at `index` (equal_error_rate: S3PRL's definition)."""
        import numpy as np

        labels = np.asarray(items["labels"])[index]
        if labels.min() == labels.max():
            return float("nan")  # a resample without one of the labels has no EER
        return 100.0 * equal_error_rate(labels, np.asarray(items["scores"])[index])

    # ---- reproduction: per trial, the cosine of predict's embeddings against the recipe's score ------

    def _trials(self, expdir):
        d = datarc(latest_config(expdir))
        root = os.path.join(d["file_path"], "test", "wav")
        return [(int(label), os.path.join(root, a), os.path.join(root, b))
                for label, a, b in (line.split() for line in read_lines(d["test_meta_data"]))]

    def test_files(self, expdir, fold=None):
        return {path: path for _, a, b in self._trials(expdir) for path in (a, b)}

    def recorded_answers(self, expdir, fold=None):
        """{trial index: the recipe's cosine score} (its prediction file holds one line per trial, in order)."""
        import numpy as np

        return {str(k): np.float32(line.split(" ")[1])
                for k, line in enumerate(read_lines(os.path.join(expdir, self.prediction_file)))}

    def answer_key(self, answer):
        return answer["embedding"]

    def trial_scores(self, expdir, keys) -> dict:
        """{trial index: cosine of the two files' embeddings}, as the recipe scores a trial (float32)."""
        import numpy as np
        import torch

        cosine = torch.nn.CosineSimilarity(dim=-1)  # the recipe's score_fn
        return {str(k): np.float32(cosine(torch.as_tensor(keys[a]), torch.as_tensor(keys[b])).numpy())
                for k, (_, a, b) in enumerate(self._trials(expdir))}

    def reproduced_items(self, expdir, fold, keys):
        scores = self.trial_scores(expdir, keys)
        trials = self._trials(expdir)
        return {"ids": [str(k) for k in range(len(trials))], "labels": [label for label, _, _ in trials],
                "scores": [float(scores[str(k)]) for k in range(len(trials))]}

    # ---- inference ----------------------------------------------------------------------------------

    audio_effects = (("gain", "-3.0"), ("silence", "1", "0.1", "0.1%", "-1", "0.1", "0.1%"))
    """The recipe's sox chain after channels/rate: -3 dB and its VAD (every stretch over 0.1 s below
    0.1 % of full scale removed), in training and test alike."""
    scores_pairs = True
    min_frames = 15  # the x-vector's TDNN context removes 14 frames

    def threshold_trials(self, config) -> List[Tuple[str, str, str]]:
        """(label, wav, wav) of the run's dev trial list (what export sets the decision threshold on)."""
        d = datarc(config)
        root = os.path.join(d["file_path"], "dev", "wav")
        with open(d["dev_meta_data"]) as f:
            return [(label, os.path.join(root, a), os.path.join(root, b))
                    for label, a, b in (line.split() for line in f if line.strip())]

    def head_facts(self, config):
        return {}

    def build_head(self, upstream_dim, upstream_rate, modelrc, facts):
        from torch import nn

        from s3prl.downstream.sv_voxceleb1.model import Model

        head = nn.Module()
        head.connector = nn.Linear(upstream_dim, modelrc["input_dim"])
        hparams = modelrc["module_config"][modelrc["module"]]
        head.model = Model(input_dim=modelrc["input_dim"], agg_dim=hparams.get("agg_dim", modelrc["input_dim"]),
                           agg_module_name=modelrc["agg_module"], module_name=modelrc["module"], hparams=hparams,
                           utterance_module_name=modelrc["utter_module"])
        head.frames_lost = 14 if modelrc["module"] == "XVector" else 0  # the TDNN context the recipe masks out
        return head

    def answer(self, head, features, facts):
        """The recipe's test embedding: masked aggregation, then L2-normalised (scored by cosine)."""
        import torch
        from torch.nn.utils.rnn import pad_sequence

        masks = pad_sequence([torch.ones(len(f) - head.frames_lost) for f in features], batch_first=True)
        x = head.connector(pad_sequence(features, batch_first=True))
        vectors = head.model.inference(x, ((1.0 - masks) * -100000.0).to(x.device))
        return [{"embedding": v} for v in torch.nn.functional.normalize(vectors, dim=-1).cpu()]

    def add_prepare_command(self, sub):
        p = sub.add_parser("prepare-voxceleb1", help="write the ASV recipe's dev trial list and check the test list")
        p.add_argument("root", help="VoxCeleb1 folder holding dev/wav and test/wav")
        p.add_argument("--test-trials", help="official trial list to check (e.g. veri_test2.txt)")
        p.add_argument("--dev-trials", help="where to write the dev list (default ROOT/dev_trials.txt)")
        p.add_argument("--n-dev-trials", type=int, default=2000)
        p.add_argument("--seed", type=int, default=0)
        p.set_defaults(func=_prepare)


def _prepare(args):
    import numpy as np

    from s3prl_adapters.data.prepare import check_trial_list, make_trials, voxceleb_files, write_lines

    dev = voxceleb_files(os.path.join(args.root, "dev", "wav"))
    out = args.dev_trials or os.path.join(args.root, "dev_trials.txt")
    trials = make_trials(dev, args.n_dev_trials, np.random.default_rng(args.seed))
    write_lines(out, trials)
    print(f"wrote {out} ({len(trials)} dev trials over {len(dev)} speakers; read by the recipe at start-up)")
    if args.test_trials:
        n = check_trial_list(args.test_trials, os.path.join(args.root, "test", "wav"))
        print(f"checked {args.test_trials}: {n} trials, every file present, both labels")


TASK = SpeakerVerification()


def equal_error_rate(labels, scores) -> float:
    """The EER of S3PRL's `sv_voxceleb1.utils.EER`: where the ROC polyline (sklearn's roc_curve,
    linear between its points) crosses miss rate = false-alarm rate. S3PRL finds that point with
    brentq on an interp1d; along the polyline fpr + tpr only grows, so it is found here in closed
    form on the first segment that reaches 1: the same value within 1e-9 (tested), ~12x faster per
    call on 2,000 trials, which the report's 1000-resample bootstrap repeats 14,000 times."""
    import numpy as np

    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    ranked, positives = scores[order], labels[order]
    last_of_each_score = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]
    tps = np.r_[0.0, np.cumsum(positives)[last_of_each_score]]
    fps = np.r_[0.0, last_of_each_score + 1 - tps[1:]]
    fpr, tpr = fps / fps[-1], tps / tps[-1]
    reach = fpr + tpr
    k = int(np.argmax(reach >= 1.0))
    if reach[k] == 1.0 or k == 0:
        return float(fpr[k])
    t = (1.0 - reach[k - 1]) / (reach[k] - reach[k - 1])
    return float(fpr[k - 1] + t * (fpr[k] - fpr[k - 1]))


"""ASR: `-d asr`, LibriSpeech, character CTC, WER (SUPERB).

Layout: `<libri_root>/<split>/<spk>/<chapter>/<spk>-<chapter>-<NNNN>.flac` + `<spk>-<chapter>.trans.txt`,
and the length-bucket CSVs `<bucket_file>/<split>.csv` (",file_path,length,label", longest first)
that `s3prl-adapters prepare-librispeech` writes (PyPI S3PRL lacks its interactive preprocessing)."""

import os
import re
from typing import Dict, List, Optional

from s3prl_adapters.errors import UserError

from .base import Task, csv_column, datarc, error_rate, latest_config, read_lines, same_ids

SPLITS = ("train-clean-100", "dev-clean", "test-clean")


class SpeechRecognition(Task):
    name = "asr"
    key = "asr"
    title = "ASR WER %"
    corpus = "LibriSpeech"
    evaluated_split = "test-clean"
    dev_split = "dev-clean"
    metric = "wer"
    metric_pattern = r"^test-clean wer: ([\d.eE+-]+)$"
    percent = 1.0
    higher_is_better = False
    chance_percent = 100.0
    paper_task = True
    standin_dir = "LibriSpeech"
    prediction_file = "test-clean-noLM-hyp.ark"
    submission_member = "predict/asr_public/predict.ark"
    submission_variants = {"asr_lm": ("test-clean-LM-hyp.ark", "predict/asr_lm_public/predict.ark")}
    """The recipe's KenLM decoding (datarc.decoder_args, flashlight) writes its test hypotheses as '-LM-'."""
    empty_train_hint = " (ASR drops a final bucket of one utterance)"

    # ---- corpus -----------------------------------------------------------------------------------

    def _eval_splits(self, config: dict) -> List[str]:
        d = datarc(config)
        return [s for split in config["runner"].get("eval_dataloaders", []) for s in d.get(split, [])]

    def required_paths(self, config):
        d = datarc(config)
        paths = [(d["libri_root"], "LibriSpeech root", "libri_root"), (d["bucket_file"], "bucket folder", "bucket_file"),
                 (d.get("dict_path", ""), "character dictionary", "dict_path")]
        for split in sorted(set(d.get("train", [])) | set(self._eval_splits(config))):
            paths.append((os.path.join(d["bucket_file"], f"{split}.csv"),
                          f"bucket CSV of split '{split}' (s3prl-adapters prepare-librispeech writes it)", "bucket_file"))
            paths.append((os.path.join(d["libri_root"], split), f"split folder '{split}'", "libri_root"))
        return paths

    def _bucket_files(self, d: dict, splits) -> List[str]:
        root = d["libri_root"].rstrip("/") + "/"
        files = []
        for split in splits:
            table = os.path.join(d["bucket_file"], f"{split}.csv")
            if os.path.isfile(table):  # a missing bucket CSV is required_paths' to name
                files += [root + rel for rel in csv_column(table, "file_path")]
        return files

    def evaluation_audio(self, config):
        d = datarc(config)
        return self._bucket_files(d, self._eval_splits(config) + list(d.get("test-clean", [])))

    def training_audio(self, config):
        d = datarc(config)
        return self._bucket_files(d, d.get("train", []))

    def corpus_flags(self):
        return [("--librispeech", "real LibriSpeech root"),
                ("--librispeech-buckets", "its len_for_bucket folder (default ROOT/len_for_bucket)")]

    def real_corpus(self, args) -> Optional[Dict[str, str]]:
        if not args.librispeech:
            return None
        return {"libri_root": args.librispeech,
                "bucket_file": args.librispeech_buckets or os.path.join(args.librispeech, "len_for_bucket")}

    def standin_overrides(self, root):
        d = os.path.join(os.path.abspath(root), self.standin_dir)
        return {"libri_root": d, "bucket_file": os.path.join(d, "len_for_bucket")}

    # ---- stand-in: mini-LibriSpeech -----------------------------------------------------------------

    standin_sizes = {"small": [(24, 20), (6, 10), (6, 10)], "medium": [(48, 20), (8, 12), (8, 12)]}
    """(speakers, utterances per speaker) of train-clean-100, dev-clean, test-clean."""
    standin_seed = 0

    def build_standin(self, out, size, seed, work):
        from s3prl_adapters.data import prepare, texts
        from s3prl_adapters.data.mini_superb import Job, Speakers, jitter, ssml, task_rng
        from s3prl_adapters.data.synth import Channel

        rng = task_rng(seed, self.standin_seed)
        root = os.path.join(out, self.standin_dir)
        voices = Speakers(os.path.join(work, "asr"), rng, "asr")
        train_sents: set = set()
        jobs, transcripts = [], {}
        spk_id = 100
        for split, (n_spk, per_spk) in zip(SPLITS, self.standin_sizes[size]):
            pool = texts.unique_sentences(rng, n_spk * per_spk, exclude=train_sents if split != SPLITS[0] else ())
            if split == SPLITS[0]:
                train_sents.update(pool)  # dev/test sentences never occur in training
            for s in range(n_spk):
                sp, chapter = voices.new(), 1000 + spk_id
                d = os.path.join(root, split, str(spk_id), str(chapter))
                for u in range(per_spk):
                    text = pool[s * per_spk + u]
                    utt = f"{spk_id}-{chapter}-{u:04d}"
                    pitch, rate = jitter(rng, sp)
                    jobs.append(Job(voices.bank.root, sp.base_voice, sp.name, ssml(text), pitch, rate,
                                    Channel.draw(rng), os.path.join(d, f"{utt}.flac"), "FLAC"))
                    transcripts.setdefault(os.path.join(d, f"{spk_id}-{chapter}.trans.txt"), []).append(f"{utt} {text}")
                spk_id += 1

        def finish():
            for path, lines in transcripts.items():
                prepare.write_lines(path, lines)
            prepare.librispeech_buckets(root, os.path.join(root, "len_for_bucket"), list(SPLITS))

        return jobs, finish

    # ---- submission ---------------------------------------------------------------------------------

    def corpus_test_ids(self, config, fold=None):
        """Every utterance of the test split's bucket CSV (LibriSpeech ids: the file names)."""
        d = datarc(config)
        return [os.path.basename(f).split(".")[0] for f in self._bucket_files(d, list(d.get(self.evaluated_split, [])))]

    def validate_prediction(self, expdir, fold=None, prediction_file=None):
        path = os.path.join(expdir, prediction_file or self.prediction_file)
        lines = read_lines(path)
        for n, line in enumerate(lines, 1):
            if not re.fullmatch(r"\S+( [A-Z']+)*", line.rstrip(" ")):
                raise UserError(f"asr: {path}:{n}: expected '<utt_id> <UPPERCASE WORDS>', got {line!r}")
        same_ids("asr", path, [line.split(" ", 1)[0] for line in lines], self.corpus_test_ids(latest_config(expdir)))
        return path

    # ---- per-item outcomes ---------------------------------------------------------------------------

    def test_items(self, expdir, fold=None):
        """Word errors and reference words per utterance (WER = their sums' ratio, as the recipe computes)."""
        import editdistance

        hyp = {u: w.split() for u, _, w in (line.partition(" ") for line in read_lines(os.path.join(expdir, self.prediction_file)))}
        ref = {u: w.split() for u, _, w in (line.partition(" ") for line in
                                            read_lines(os.path.join(expdir, "test-clean-noLM-ref.ark")))}
        ids = sorted(ref)
        return {"ids": ids, "errors": [editdistance.eval(hyp.get(u, []), ref[u]) for u in ids],
                "words": [len(ref[u]) for u in ids]}

    def score(self, items, index):
        return error_rate(items, index)

    # ---- reproduction ---------------------------------------------------------------------------------

    def test_files(self, expdir, fold=None):
        d = datarc(latest_config(expdir))
        return {os.path.basename(f).split(".")[0]: f for f in self._bucket_files(d, list(d.get(self.evaluated_split, [])))}

    def recorded_answers(self, expdir, fold=None):
        hyp = read_lines(os.path.join(expdir, self.prediction_file))
        return {u: " ".join(w.split()) for u, _, w in (line.partition(" ") for line in hyp)}

    def answer_key(self, answer):
        return answer["transcript"]

    def reproduced_items(self, expdir, fold, keys):
        """Word errors of predict's transcripts against the recipe's references (its WER, recomputed)."""
        import editdistance

        ref = {u: w.split() for u, _, w in (line.partition(" ") for line in
                                            read_lines(os.path.join(expdir, "test-clean-noLM-ref.ark")))}
        ids = sorted(ref)
        return {"ids": ids, "errors": [editdistance.eval(str(keys.get(u, "")).split(), ref[u]) for u in ids],
                "words": [len(ref[u]) for u in ids]}

    # ---- inference ----------------------------------------------------------------------------------

    def head_facts(self, config):
        """The character dictionary (fairseq format) the run's CTC outputs index."""
        with open(datarc(config)["dict_path"]) as f:
            return {"dictionary": f.read()}

    def untrained_facts(self):
        with open(os.path.join(os.path.dirname(self.config_path()), "char.dict")) as f:
            return {"dictionary": f.read()}

    def build_head(self, upstream_dim, upstream_rate, modelrc, facts):
        import io

        from torch import nn

        from s3prl.downstream import model as shared_models
        from s3prl.downstream.asr import model as asr_models
        from s3prl.downstream.asr.dictionary import Dictionary

        head = nn.Module()
        head.dictionary = Dictionary.load(io.StringIO(facts["dictionary"]))
        head.projector = nn.Linear(upstream_dim, modelrc["project_dim"])
        select = modelrc["select"]
        model_cls = getattr(asr_models, select, None) or getattr(shared_models, select)
        head.model = model_cls(modelrc["project_dim"], len(head.dictionary.symbols), upstream_rate, **modelrc[select])
        return head

    def answer(self, head, features, facts):
        """Greedy CTC, as the recipe decodes without a language model: per frame the arg-max symbol,
        repeats merged, blanks dropped, '|' as the word separator."""
        import torch
        from torch.nn.utils.rnn import pad_sequence

        from s3prl.downstream.asr.expert import token_to_word

        features_len = torch.IntTensor([len(f) for f in features])
        logits, log_probs_len = head.model(head.projector(pad_sequence(features, batch_first=True)), features_len)
        log_probs = torch.nn.functional.log_softmax(logits, dim=-1).float().contiguous().cpu()
        blank = head.dictionary.bos()
        answers = []
        for log_prob, length in zip(log_probs, log_probs_len):
            ids = log_prob[:length].unsqueeze(0).argmax(dim=-1).unique_consecutive()
            tokens = head.dictionary.string(ids[ids != blank].tolist())
            answers.append({"transcript": " ".join(token_to_word(tokens).split())})
        return answers

    def add_prepare_command(self, sub):
        p = sub.add_parser("prepare-librispeech", help="write the ASR recipe's length-bucket CSVs (non-interactive)")
        p.add_argument("root", help="LibriSpeech folder holding train-clean-100/, dev-clean/, test-clean/")
        p.add_argument("out", help="bucket folder, e.g. ROOT/len_for_bucket (the config's bucket_file)")
        p.add_argument("--splits", nargs="+", default=list(SPLITS))
        p.add_argument("--ext", default=".flac")
        p.set_defaults(func=_prepare)


def _prepare(args):
    from s3prl_adapters.data.prepare import librispeech_buckets

    counts = librispeech_buckets(args.root, args.out, args.splits, ext=args.ext)
    for split, n in counts.items():
        print(f"{args.out}/{split}.csv: {n} utterances")


TASK = SpeechRecognition()

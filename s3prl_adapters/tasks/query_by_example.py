"""QbE: `-d quesst14_dtw`, QUESST 2014 query-by-example spoken term detection (English), MTWV (SUPERB).

No training. The recipe takes one hidden-state layer (`-l`) of every English query and document,
runs subsequence DTW of each query against each document and writes one score per pair (and a
YES/NO decision at 2 standard deviations above the query's mean) to `EXPDIR/benchmark.stdlist.xml`,
the submission's `qbe_public/` member. SUPERB runs every layer on dev and reports the dev-best layer
on test (eval queries): `s3prl-adapters qbe` (tools/qbe.py) does that sweep and scores it here.

Layout (the quesst14Database release): `Audio/quesst14_NNNNN.wav` documents,
`dev_queries/quesst14_dev_NNNN.wav`, `eval_queries/quesst14_eval_NNNN.wav`, and `scoring/` holding
the language lists `language_key_{utterances,dev,eval}.lst` (`<path> <language>` lines; the recipe
keeps `nnenglish`) and the ground truth `groundtruth_quesst14_{dev,eval}/` (ecf, tlist and an RTTM
whose `LEXEME <document> <channel> <tbeg> <dur> <query> ...` lines are the occurrences).

Scoring (ours, from the task's definition; the corpus kit's `score-TWV-Cnxe.sh` is a Java program):
QUESST 2014 asks only whether a query occurs in a document, so a trial is a (query, document) pair,
a target when the RTTM has an occurrence of the query in the document. TWV(θ) = 1 − mean over
queries of [P_miss(q, θ) + β·P_fa(q, θ)], with P_miss = 1 − hits / targets(q) and P_fa = false
alarms / (documents − targets(q)); β = C_fa(1 − P_target) / (C_miss·P_target) with the kit's
P_target = 0.0008, C_fa = 1, C_miss = 100 (β ≈ 12.49). MTWV is the largest TWV over one threshold
shared by all queries; ATWV uses the file's YES decisions. Trials are the English queries × the
English documents (the recipe scores no others); a query with no occurrence among them has no
P_miss and is left out, as the kit leaves out unseen queries."""

import os
import re
from typing import Dict, List, Optional, Sequence, Set, Tuple

from s3prl_adapters.errors import UserError

from .base import Task, latest_config

P_TARGET, C_FA, C_MISS = 0.0008, 1.0, 100.0
BETA = C_FA * (1 - P_TARGET) / (C_MISS * P_TARGET)
"""The weight of a false alarm against a miss in TWV: 12.49 with the QUESST kit's costs and prior."""

QUERY_SPLITS = {"dev": "dev", "test": "eval"}
"""run_downstream.py's `-t` -> the corpus's query set (the recipe reads `eval` for anything but dev)."""

ENGLISH = "nnenglish"


class QueryByExample(Task):
    name = "quesst14_dtw"
    key = "qbe"
    title = "QbE MTWV"
    corpus = "QUESST 2014 (English)"
    metric = "mtwv"
    metric_pattern = ""  # the recipe prints no score: table_value scores its stdlist
    percent = 1.0  # MTWV is reported as is (≤ 1), not in %
    higher_is_better = True
    chance_percent = 0.0  # detecting nothing scores TWV 0
    trains = False
    eval_batch_key = None  # datarc.batch_size is 1 already: every file alone
    any_sample_rate = True  # the recipe's sox effects resample (QUESST is 8 kHz) and mix to mono
    any_channel_count = True
    audio_effects = (("channels", "1"), ("rate", "16000"), ("gain", "-3.0"))
    standin_dir = "quesst14Database"
    prediction_file = "benchmark.stdlist.xml"
    submission_member = "predict/qbe_public/benchmark.stdlist.xml"

    # ---- corpus -----------------------------------------------------------------------------------

    def root(self, config: dict) -> str:
        return self.corpus_settings(config)["dataset_root"]

    def required_paths(self, config):
        root = self.root(config)
        paths = [(root, "QUESST 2014 folder (quesst14Database)", "dataset_root")]
        for lst in ("utterances", "dev", "eval"):
            paths.append((os.path.join(root, "scoring", f"language_key_{lst}.lst"), f"{lst} language list", "dataset_root"))
        for split in QUERY_SPLITS.values():
            paths.append((groundtruth_dir(root, split), f"{split} ground truth", "dataset_root"))
        return paths

    def evaluation_audio(self, config):
        root = self.root(config)
        return [path for lst in ("utterances", "dev", "eval") for _, path in english_entries(root, lst)]

    def corpus_flags(self):
        return [("--quesst", "the quesst14Database folder (Audio/, dev_queries/, eval_queries/, scoring/)")]

    def real_corpus(self, args):
        root = getattr(args, "quesst", None)
        return {"dataset_root": os.path.abspath(root)} if root else None

    def standin_overrides(self, root):
        return {"dataset_root": os.path.join(os.path.abspath(root), self.standin_dir)}

    # ---- stand-in: a QUESST-style corpus ------------------------------------------------------------

    standin_sizes = {"small": {"documents": 60, "dev": 6, "eval": 6, "speakers": 8},
                     "medium": {"documents": 160, "dev": 10, "eval": 10, "speakers": 12}}
    """Documents (read sentences), spoken queries per set (noun phrases the sentences use), speakers."""
    standin_seed = 10

    def build_standin(self, out, size, seed, work):
        from s3prl_adapters.data import texts
        from s3prl_adapters.data.mini_superb import Job, Speakers, jitter, ssml, task_rng
        from s3prl_adapters.data.synth import Channel

        sizes = self.standin_sizes[size]
        rng = task_rng(seed, self.standin_seed)
        root = os.path.join(out, self.standin_dir)
        voices = Speakers(os.path.join(work, "qbe"), rng, "qbe")
        speakers = [voices.new() for _ in range(sizes["speakers"])]
        half = len(speakers) // 2  # documents and queries by different speakers, as in QUESST
        documents = [texts.sentence(rng) for _ in range(sizes["documents"])]
        # queries: the objects the documents mention (without the article), each in at least one document
        phrases = sorted({p.split(" ", 1)[1].upper() for p in texts.OBJECTS
                          if any(p.upper() in d for d in documents)})
        chosen = [str(p) for p in rng.permutation(phrases)[:sizes["dev"] + sizes["eval"]]]
        queries = {"dev": chosen[:sizes["dev"]], "eval": chosen[sizes["dev"]:]}
        jobs, lists = [], {"utterances": [], "dev": [], "eval": []}
        for n, text in enumerate(documents, 1):
            name = f"quesst14_{n:05d}"
            sp = speakers[int(rng.integers(half))]
            pitch, rate = jitter(rng, sp)
            jobs.append(Job(voices.bank.root, sp.base_voice, sp.name, ssml(text), pitch, rate, Channel.draw(rng),
                            os.path.join(root, "Audio", f"{name}.wav"), "WAV"))
            # one document in ten in another language of the release: listed, and skipped by the recipe
            lists["utterances"].append((f"Audio/{name}.wav", "romanian" if n % 10 == 0 else ENGLISH))
        for split, phrases_ in queries.items():
            for n, text in enumerate(phrases_, 1):
                name = f"quesst14_{split}_{n:04d}"
                sp = speakers[half + int(rng.integers(len(speakers) - half))]
                pitch, rate = jitter(rng, sp)
                jobs.append(Job(voices.bank.root, sp.base_voice, sp.name, ssml(text), pitch, rate, Channel.draw(rng),
                                os.path.join(root, f"{split}_queries", f"{name}.wav"), "WAV"))
                lists[split].append((f"{split}_queries/{name}.wav", ENGLISH))

        def finish():
            import soundfile as sf

            from s3prl_adapters.data.prepare import write_lines

            scoring = os.path.join(root, "scoring")
            for lst, entries in lists.items():
                write_lines(os.path.join(scoring, f"language_key_{lst}.lst"),
                            [f"quesst14Database/{path} {language}" for path, language in entries])
            durations = {os.path.basename(p)[:-4]: sf.info(os.path.join(root, p)).duration
                         for p, _ in lists["utterances"]}
            for split, phrases_ in queries.items():
                occurrences = [(f"quesst14_{n:05d}", f"quesst14_{split}_{q:04d}")
                               for q, phrase in enumerate(phrases_, 1) for n, text in enumerate(documents, 1)
                               if f" {phrase} " in f" {text} "]
                write_groundtruth(groundtruth_dir(root, split), split, durations, occurrences,
                                  [f"quesst14_{split}_{q:04d}" for q in range(1, len(phrases_) + 1)])

        return jobs, finish

    # ---- results and submission -----------------------------------------------------------------------

    def corpus_test_ids(self, config, fold=None):
        """Every (query, document) pair of the eval queries, as 'query document'."""
        root = self.root(config)
        return [f"{q} {d}" for q, _ in english_entries(root, "eval") for d, _ in english_entries(root, "utterances")]

    def _stdlist_dir(self, expdir: str) -> str:
        """The run folder of a test pass; a `s3prl-adapters qbe` sweep folder stands for its test run."""
        summary = os.path.join(expdir, "qbe.json")
        if os.path.isfile(summary):
            import json

            with open(summary) as f:
                test = json.load(f).get("test_expdir")
            if not test:
                raise UserError(f"qbe: {summary}: the sweep has not run its test pass yet")
            return test
        return expdir

    def validate_prediction(self, expdir, fold=None):
        """A score for every eval query against every English document, decisions YES/NO."""
        from .base import same_ids

        expdir = self._stdlist_dir(expdir)
        path = os.path.join(expdir, self.prediction_file)
        detections = read_stdlist(path)
        same_ids("qbe", path, [f"{q} {d}" for q, d in detections], self.corpus_test_ids(latest_config(expdir)))
        return path

    def table_value(self, expdir, log_text, fold=None):
        return score_run(self._stdlist_dir(expdir), "test")["mtwv"]

    def test_items(self, expdir, fold=None):
        raise UserError("qbe: MTWV is one threshold over all queries, not a mean of per-item values; "
                        "the benchmark reports it without a bootstrap interval")


# ---- the corpus's files ----------------------------------------------------------------------------


def groundtruth_dir(root: str, split: str) -> str:
    return os.path.join(root, "scoring", f"groundtruth_quesst14_{split}")


def english_entries(root: str, lst: str) -> List[Tuple[str, str]]:
    """(name, audio path) of the English entries of `scoring/language_key_<lst>.lst`, resolved as the
    recipe resolves them (the path's first folder is the release's own name, replaced by `root`)."""
    path = os.path.join(root, "scoring", f"language_key_{lst}.lst")
    if not os.path.isfile(path):
        raise UserError(f"qbe: {path}: missing (the QUESST 2014 release's scoring/ folder)")
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise UserError(f"qbe: {path}:{n}: expected '<path> <language>', got {line.strip()!r}")
            if fields[1] == ENGLISH:
                audio = os.path.join(root, re.sub(r"^.*?/", "", fields[0]))
                out.append((os.path.splitext(os.path.basename(audio))[0], audio))
    return out


def read_groundtruth(folder: str) -> Set[Tuple[str, str]]:
    """{(query, document)} with an occurrence, from the folder's RTTM (`LEXEME` lines)."""
    import glob

    rttms = sorted(glob.glob(os.path.join(folder, "*.rttm")))
    if not rttms:
        raise UserError(f"qbe: {folder}: no .rttm ground truth (the release's scoring/groundtruth_quesst14_* folder)")
    pairs = set()
    for rttm in rttms:
        with open(rttm) as f:
            for n, line in enumerate(f, 1):
                fields = line.split()
                if not fields or fields[0] != "LEXEME":
                    continue
                if len(fields) < 6:
                    raise UserError(f"qbe: {rttm}:{n}: expected 'LEXEME <file> <channel> <tbeg> <dur> <query> ...'")
                if fields[5] != "NO_KEYWORD":
                    pairs.add((fields[5], fields[1]))
    return pairs


def write_groundtruth(folder: str, split: str, durations: Dict[str, float], occurrences: Sequence[Tuple[str, str]],
                      queries: Sequence[str]) -> None:
    """The release's three ground-truth files for the stand-in: ecf (documents), tlist (queries), RTTM
    (one LEXEME line per occurrence; QUESST 2014 scores no timing, so the whole document)."""
    from xml.sax.saxutils import quoteattr

    from s3prl_adapters.data.prepare import write_lines

    total = sum(durations.values())
    write_lines(os.path.join(folder, "quesst14.ecf.xml"),
                [f'<ecf source_signal_duration="{total:.3f}" version="stand-in">']
                + [f'  <excerpt audio_filename={quoteattr(f"Audio/{d}.wav")} channel="1" tbeg="0.000" dur="{s:.3f}" '
                   f'source_type="splitcts"/>' for d, s in sorted(durations.items())] + ["</ecf>"])
    write_lines(os.path.join(folder, f"quesst14_{split}.tlist.xml"),
                ['<termlist ecf_filename="quesst14.ecf.xml" language="multiple" version="stand-in">']
                + [f'  <term termid="{q}"><termtext>{q}</termtext></term>' for q in queries] + ["</termlist>"])
    write_lines(os.path.join(folder, f"quesst14_{split}.rttm"),
                [f"LEXEME {d} 1 0.000 {durations[d]:.3f} {q} lex SELF <NA>" for d, q in occurrences])


def read_stdlist(path: str) -> Dict[Tuple[str, str], Tuple[float, bool]]:
    """{(query, document): (score, decision YES)} of a `*.stdlist.xml`; a malformed file is one error."""
    import xml.etree.ElementTree as ET

    if not os.path.isfile(path):
        raise UserError(f"qbe: {path}: missing (run_downstream.py -m evaluate -d quesst14_dtw writes it)")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise UserError(f"qbe: {path}: not well-formed XML ({e})") from None
    if root.tag != "stdlist":
        raise UserError(f"qbe: {path}: root element <{root.tag}>, expected <stdlist>")
    out = {}
    for termlist in root.iter("detected_termlist"):
        query = termlist.get("termid")
        for term in termlist.iter("term"):
            try:
                score = float(term.get("score"))
            except (TypeError, ValueError):
                raise UserError(f"qbe: {path}: query {query}, file {term.get('file')}: score {term.get('score')!r} "
                                "is not a number") from None
            decision = term.get("decision")
            if decision not in ("YES", "NO"):
                raise UserError(f"qbe: {path}: query {query}, file {term.get('file')}: decision {decision!r}, "
                                "expected YES or NO")
            out[(query, term.get("file"))] = (score, decision == "YES")
    return out


# ---- scoring ---------------------------------------------------------------------------------------


def twv(detections: Dict[Tuple[str, str], Tuple[float, bool]], targets: Set[Tuple[str, str]],
        queries: Sequence[str], documents: Sequence[str], beta: float = BETA) -> dict:
    """MTWV (best shared threshold), its threshold, ATWV (the YES decisions) and the queries scored, over
    every (query, document) trial; a trial without a detection counts as not detected at any threshold."""
    import numpy as np

    documents = list(documents)
    targets_of = {q: sum((q, d) in targets for d in documents) for q in queries}
    scored = [q for q in queries if targets_of[q] > 0]
    if not scored:
        raise UserError("qbe: no query has an occurrence among the scored documents; nothing to score")
    # each detected trial moves TWV by +1/(targets·Q) (a hit) or −β/(non-targets·Q) (a false alarm)
    scores, gains, decided = [], [], 0.0
    for q in scored:
        hit, false_alarm = 1.0 / (targets_of[q] * len(scored)), beta / ((len(documents) - targets_of[q]) * len(scored))
        for d in documents:
            if (q, d) not in detections:
                continue
            score, yes = detections[(q, d)]
            gain = hit if (q, d) in targets else -false_alarm
            scores.append(score)
            gains.append(gain)
            decided += gain if yes else 0.0
    if not scores:
        return {"mtwv": 0.0, "threshold": None, "atwv": 0.0, "queries": len(scored)}
    order = np.argsort(-np.asarray(scores), kind="stable")
    sorted_scores, cumulative = np.asarray(scores)[order], np.cumsum(np.asarray(gains)[order])
    # a threshold detects every trial scoring at or above it: only the last of a run of equal scores counts
    last_of_tie = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    candidates = cumulative[last_of_tie]
    best = int(np.argmax(candidates))
    if candidates[best] <= 0.0:  # detecting nothing (TWV 0) is better than any threshold
        return {"mtwv": 0.0, "threshold": None, "atwv": float(decided), "queries": len(scored)}
    return {"mtwv": float(candidates[best]), "threshold": float(sorted_scores[last_of_tie][best]),
            "atwv": float(decided), "queries": len(scored)}


def score_run(expdir: str, split: Optional[str] = None) -> dict:
    """TWV of a run's `benchmark.stdlist.xml` against its corpus's ground truth; `split` 'dev' or 'test'
    (default: the split the run evaluated, from its args)."""
    config = latest_config(expdir)
    root = TASK.root(config)
    if split is None:
        split = _evaluated_split(expdir)
    queries = QUERY_SPLITS[split]
    detections = read_stdlist(os.path.join(expdir, TASK.prediction_file))
    result = twv(detections, read_groundtruth(groundtruth_dir(root, queries)),
                 [q for q, _ in english_entries(root, queries)], [d for d, _ in english_entries(root, "utterances")])
    return dict(result, split=split)


def _evaluated_split(expdir: str) -> str:
    import glob

    import yaml

    args = sorted(glob.glob(os.path.join(expdir, "args_*.yaml")))
    if not args:
        raise UserError(f"qbe: {expdir}: no args_*.yaml (not a run_downstream.py folder?)")
    with open(args[-1]) as f:
        split = (yaml.safe_load(f) or {}).get("evaluate_split")
    return "dev" if split == "dev" else "test"


TASK = QueryByExample()

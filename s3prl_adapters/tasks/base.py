"""What the package knows about one SUPERB recipe of S3PRL (`downstream/<name>/`), in one object.

A task module defines a `Task` subclass and a module-level `TASK` instance; `tasks/__init__.py`
collects every module's `TASK`, so adding a recipe is adding a module (plus its
`downstream_configs/<name>/{config,mini}.yaml`). The benchmark, the corpus preflight, the
submission packaging, the CLI and the report read tasks only through this interface.

Everything here is light to import (no torch, no S3PRL): heavy imports live inside the methods."""

import os
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from s3prl_adapters.errors import UserError
from s3prl_adapters.paths import CONFIG_ROOT

RequiredPath = Tuple[str, str, str]
"""(path, what it is, the datarc key that points at it) — one thing the recipe needs to exist."""

CorpusFlag = Tuple[str, str]
"""(command-line flag of run_benchmarks.sh, its help) — how a user points the benchmark at the real corpus."""


class Task:
    """One S3PRL recipe. Class attributes state the facts; methods read a recipe's config."""

    name: str
    """The package's name of the task: the folder under downstream_configs/, `--tasks` of the benchmark;
    S3PRL's downstream name `-d NAME` too, unless `recipe` says otherwise."""

    recipe: str = ""
    """S3PRL's downstream (`-d RECIPE`) when several tasks share one recipe and its config chooses the
    corpus (PR and SF are both `-d ctc`); empty: `name`."""

    data_section: str = "datarc"
    """The section of `downstream_expert` holding the corpus settings (the ctc recipe's is `corpus`)."""

    model_section: str = "modelrc"
    """The section of `downstream_expert` holding the head's model settings (the ctc recipe's is `model`)."""

    def corpus_settings(self, config: dict) -> dict:
        """This task's corpus section of a config (`downstream_expert.<data_section>`)."""
        return config["downstream_expert"][self.data_section]

    def runs_as(self) -> str:
        """The `-d` value of run_downstream.py for this task."""
        return self.recipe or self.name

    def matches(self, config: dict) -> bool:
        """Whether a config of this task's recipe is this task's (one recipe, several corpora)."""
        return True

    key: str
    """Short name: the submission flag (`--KEY` or `--KEY-foldN`) and SUPERB's `predict/KEY_public/` folder."""

    title: str
    """Results column, metric and unit, e.g. 'IC acc %'."""

    corpus: str
    """The corpus's name, for messages."""

    evaluated_split: str = "test"
    """The split `run_downstream.py -m evaluate -t SPLIT` scores for the results table."""

    dev_split: Optional[str] = "dev"
    """The split the recipe selects its best checkpoint on (None: it has none); the benchmark evaluates
    only this one while training, and the test split once, afterwards."""

    metric: str = "acc"
    """Name of the metric S3PRL prints for that split."""

    eval_batch_key: Optional[str] = "eval_batch_size"
    """The datarc key of the recipe's evaluation batch size; the benchmark and `tune` set it to 1, so
    each file is scored as it is alone, as `predict --batch-size 1` scores it (WavLM Base's CNN
    normalises over the padded time axis: in a padded batch a file's states depend on its
    neighbours). None: the recipe has no separate one (its evaluation pads as configured)."""

    metric_pattern: str
    """Regex (one group) matching S3PRL's printed metric line; the last match counts."""

    percent: float = 100.0
    """Printed value x percent = the value in % (S3PRL prints accuracy and EER as fractions, WER in %)."""

    higher_is_better: bool = True

    chance_percent: float
    """Chance or majority level on the stand-in corpus (100 for WER), for reading results."""

    paper_task: bool = False
    """One of the four tasks of Otake et al., run by default by run_benchmarks.sh."""

    trains: bool = True
    """False for a task without training (QbE: DTW over one layer's features): nothing to tune or export;
    the benchmark and `s3prl-adapters qbe` run its layer sweep instead."""

    folds: Tuple[int, ...] = ()
    """Cross-validation folds (a run per fold), empty for a fixed split."""

    any_sample_rate: bool = False
    """The recipe resamples itself; otherwise the preflight requires 16 kHz."""

    any_channel_count: bool = False
    """The recipe mixes to mono itself; otherwise the preflight requires mono files."""

    standin_dir: str
    """Folder of the stand-in corpus under a make-mini-superb root."""

    standin_base: Optional[str] = None
    """Name of the task whose stand-in corpus this one reuses (and needs generated first)."""

    random_train_crop: Optional[str] = None
    """The datarc key of a random window the recipe's dataset crops from each training file every
    epoch (None: no such crop). The feature and prefix caches key on the samples the upstream
    receives, so training batches of such a recipe miss every epoch; only evaluation hits."""

    workarounds: Tuple[str, ...] = ()
    """Names of the functions of bridge/compat.py this recipe needs installed before it runs."""

    prediction_file: str = "test_predict.txt"
    """The test prediction S3PRL writes into the experiment folder ('{fold}' for fold tasks)."""

    submission_member: str
    """Its path inside SUPERB's predict.zip ('{fold}' for fold tasks)."""

    submission_variants: Dict[str, Tuple[str, str]] = {}
    """{submission key: (prediction file, member)}: further SUPERB members another decoding of the same
    recipe writes (ASR with a language model); validate_prediction takes `prediction_file` for them."""

    empty_train_hint: str = ""
    """Added to the error when the train split yields no batch: what commonly causes it."""

    # ---- configs and corpus ---------------------------------------------------------------------

    def config_path(self, mini: bool = False) -> str:
        return os.path.join(CONFIG_ROOT, self.name, "mini.yaml" if mini else "config.yaml")

    def required_paths(self, config: dict) -> List[RequiredPath]:
        """Folders and files the recipe reads before any audio, in the order to check them."""
        return []

    def evaluation_audio(self, config: dict) -> List[str]:
        """Audio files the recipe's dev/test lists name (absolute paths)."""
        return []

    def training_audio(self, config: dict) -> List[str]:
        """Audio files the recipe trains on (absolute paths)."""
        return []

    def corpus_flags(self) -> List[CorpusFlag]:
        """The benchmark's flags that point this task at a real corpus."""
        return []

    def real_corpus(self, args) -> Optional[Dict[str, str]]:
        """datarc overrides for the real corpus named by the benchmark's flags, or None for the stand-in."""
        return None

    def standin_overrides(self, root: str) -> Dict[str, str]:
        """datarc overrides that point the recipe at the stand-in corpus under a make-mini-superb `root`."""
        raise NotImplementedError

    def fold_overrides(self, fold: int) -> Dict[str, str]:
        """datarc overrides selecting one fold."""
        return {}

    # ---- stand-in corpus ------------------------------------------------------------------------

    standin_sizes: Dict[str, object] = {}
    """Per make-mini-superb --size: the numbers the builder uses."""

    standin_seed: int
    """This task's stream of the corpus seed (fixed, so any subset of tasks reproduces the same files)."""

    def build_standin(self, out: str, size: str, seed: int, work: str) -> Tuple[list, Callable[[], None]]:
        """(synthesis jobs for data.mini_superb.render, a function writing the lists after rendering)."""
        raise NotImplementedError

    def standin_ready(self, root: str) -> bool:
        return os.path.isdir(os.path.join(root, self.standin_dir))

    # ---- results and submission -----------------------------------------------------------------

    def exact_evaluation_overrides(self, batch: int = 1) -> Dict[str, int]:
        """`-o` entries that score every dev and test file as it is alone: batch 1, or batches of `batch` with
        each file's CNN alone and its own frames (`runner.exact_evaluation`, on by default for WavLM
        upstreams), when the recipe has an evaluation batch size of its own."""
        return {f"config.downstream_expert.{self.data_section}.{self.eval_batch_key}": batch} if self.eval_batch_key else {}

    @property
    def dev_metric_pattern(self) -> Optional[str]:
        """Regex (one group) of the metric S3PRL prints for the dev split (None without a dev split)."""
        if not self.dev_split:
            return None
        return self.metric_pattern.replace(self.evaluated_split, self.dev_split, 1)

    def parse_metric(self, log_text: str) -> float:
        """The value S3PRL printed (the last matching line), as printed."""
        values = [m.group(1) for line in log_text.splitlines() for m in [re.match(self.metric_pattern, line.strip())] if m]
        if not values:
            raise UserError(f"no '{self.metric_pattern}' line in the evaluation log")
        return float(values[-1])

    def table_value(self, expdir: str, log_text: str, fold: Optional[int] = None) -> float:
        """The results table's value of a run's test evaluation, as printed (x percent = %): what S3PRL
        printed, unless the task's SUPERB metric is scored from the run's files (SD)."""
        return self.parse_metric(log_text)

    def corpus_test_ids(self, config: dict, fold: Optional[int] = None) -> List[str]:
        """The ids of the test split's utterances as the corpus lists them (not as the run wrote them):
        what a submission must cover."""
        raise NotImplementedError

    def validate_prediction(self, expdir: str, fold: Optional[int] = None) -> str:
        """Check the test prediction of an experiment folder (line shape, labels, every test item);
        returns its path. A failed check raises UserError naming the file and line."""
        raise NotImplementedError

    def add_prepare_command(self, sub) -> None:
        """Register `s3prl-adapters prepare-...` for this corpus on the CLI's subparsers (if it needs one)."""

    # ---- per-item outcomes (the benchmark's bootstrap) ----------------------------------------------

    def test_items(self, expdir: str, fold: Optional[int] = None) -> dict:
        """The evaluated split's outcome per test item, from the files S3PRL wrote: {'ids': [...], plus the
        per-item values `score` needs}. Items are the unit the benchmark resamples."""
        return accuracy_items(os.path.join(expdir, self.prediction_file.format(fold=fold)),
                              os.path.join(expdir, self.prediction_file.format(fold=fold).replace("predict", "truth")))

    def score(self, items: dict, index) -> float:
        """The metric in % over the items at `index` (a numpy index array, repeats allowed)."""
        import numpy as np

        return 100.0 * float(np.asarray(items["correct"], dtype=float)[index].mean())

    # ---- reproduction: a run's test pass redone by `s3prl-adapters predict` of its exported set -----

    truth_file: str = "test_truth.txt"
    """The recipe's file of the evaluated split's true answers ('{fold}' for fold tasks)."""

    def test_files(self, expdir: str, fold: Optional[int] = None) -> Dict[str, str]:
        """{item id as the recipe's prediction file names it: audio path} of the evaluated split, from the
        run's config (what `predict` must answer for the cell to be reproduced)."""
        raise NotImplementedError

    def recorded_answers(self, expdir: str, fold: Optional[int] = None) -> Dict[str, object]:
        """{item id: what the recipe's test pass answered}, in the form `answer_key` gives predict's answers."""
        return id_answer_file(os.path.join(expdir, self.prediction_file.format(fold=fold)))

    def answer_key(self, answer: dict) -> object:
        """Predict's answer for one file, as the recipe's prediction file writes it."""
        return answer["label"]

    def reproduced_items(self, expdir: str, fold: Optional[int], keys: Dict[str, object]) -> dict:
        """test_items from predict's answers (`keys`: answer_key per item id) against the recipe's truth:
        `score` of them is the cell's metric recomputed."""
        truth = id_answer_file(os.path.join(expdir, self.truth_file.format(fold=fold)))
        ids = sorted(truth)
        return {"ids": ids, "correct": [int(keys.get(i) == truth[i]) for i in ids]}

    # ---- inference on new audio (s3prl-adapters export / predict) ---------------------------------

    audio_effects: Tuple[Tuple[str, ...], ...] = ()
    """sox effects the recipe's loaders apply to a 16 kHz mono waveform before the upstream (its
    training and test alike); predict applies the same."""

    whole_frames: Optional[int] = None
    """The recipe reads a file only up to a whole number of label frames of this many samples (SD: it
    loads samples [0, frames x frame shift)); predict cuts the rest off the same way. None: the whole file."""

    min_frames: int = 1
    """Frames (20 ms) the head needs at least; shorter audio gets an error answer instead."""

    scores_pairs: bool = False
    """Answers are embeddings compared in pairs (speaker verification): export stores a decision threshold."""

    def head_facts(self, config: dict) -> dict:
        """What turning the head's outputs into answers needs from the run's corpus or config (label maps,
        character dictionary), as plain values; read once, at export time."""
        return {}

    def untrained_facts(self) -> dict:
        """head_facts of the real corpus, without it (label sets as published): for untrained sets
        that measure cost or test the plumbing."""
        return {}

    def build_head(self, upstream_dim: int, upstream_rate: int, modelrc: dict, facts: dict):
        """The recipe's head modules under the names its DownstreamExpert gives them, so the run's
        `Downstream` state loads into them (S3PRL's own model classes, built as the recipe builds them)."""
        raise NotImplementedError

    def answer(self, head, features: list, facts: dict) -> List[dict]:
        """One answer per utterance, decoded as the recipe decodes its test split (`features`: the
        Featurizer's per-utterance outputs)."""
        raise NotImplementedError

    def answer_audio(self, head, features: list, facts: dict, wavs: list) -> List[dict]:
        """`answer`, for a recipe whose decoding depends on the audio itself beyond its features (SD: its
        label grid comes from the duration); `wavs` are the waveforms the features came from."""
        return self.answer(head, features, facts)


def default_eval_batch(device: str) -> int:
    """Files per dev/test batch in the benchmark and `tune`: 1 on the CPU (the shipped tables' protocol),
    16 on CUDA, where scoring every file alone leaves the GPU idle for hours per LibriSpeech run."""
    return 16 if str(device).startswith("cuda") else 1


# ---- helpers shared by task modules ----------------------------------------------------------------


def datarc(config: dict, section: str = "datarc") -> dict:
    return config["downstream_expert"][section]


def error_rate(items: dict, index, total: str = "words", floor: float = 1.0) -> float:
    """Summed errors over summed reference units in %, of the items at `index` (WER, PER, DER: the
    corpus-level rate, as the recipes compute it, not a mean of per-item rates)."""
    import numpy as np

    return 100.0 * float(np.asarray(items["errors"])[index].sum() / max(floor, np.asarray(items[total])[index].sum()))


BEST_CHECKPOINT_GLOBS = ("*-best.ckpt", "best-states-*.ckpt")
"""How the recipes name the checkpoint of their best dev result (`dev-best.ckpt`; SD: `best-states-dev.ckpt`)."""


def best_checkpoints(expdir: str) -> List[str]:
    """The best-on-dev checkpoints a run folder holds, sorted by name."""
    import glob

    return sorted(p for pattern in BEST_CHECKPOINT_GLOBS for p in glob.glob(os.path.join(expdir, pattern)))


def overrides_string(values: Dict[str, str], section: str = "datarc") -> str:
    """Corpus settings as one `-o` string of run_downstream.py (a list value as a list literal; a key with a
    dot names its own section of downstream_expert, e.g. the ctc recipe's `text.slots_file`)."""
    return ",,".join(f"config.downstream_expert.{k if '.' in k else f'{section}.{k}'}="
                     + (repr([str(x) for x in v]) if isinstance(v, list) else f"'{v}'") for k, v in values.items())


def csv_column(table: str, name: str) -> List[str]:
    import csv

    with open(table, newline="") as f:
        rows = csv.reader(f)
        index = next(rows).index(name)
        return [row[index] for row in rows if row]


def read_lines(path: str) -> List[str]:
    if not os.path.isfile(path):
        raise UserError(f"missing prediction file {path}")
    with open(path) as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def latest_config(expdir: str) -> dict:
    import glob

    import yaml

    configs = sorted(glob.glob(os.path.join(expdir, "config_*.yaml")))
    if not configs:
        raise UserError(f"{expdir}: no config_*.yaml (not an S3PRL experiment folder?)")
    with open(configs[-1]) as f:
        return yaml.safe_load(f)


def same_ids(task: str, path: str, got: Sequence[str], expected: Sequence[str]) -> None:
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or extra or len(got) != len(set(got)):
        raise UserError(
            f"{task}: {path}: utterances differ from the corpus's test list: {len(missing)} of {len(set(expected))} "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, {len(extra)} extra {extra[:3]}, "
            f"{len(got) - len(set(got))} duplicated" + (" (a truncated evaluation, runner.evaluate_ratio < 1?)"
                                                        if missing and not extra else "")
        )


def id_answer_file(path: str) -> Dict[str, str]:
    """`<item><sep><answer>` lines (sep ',' in .csv files, else ' ') as {item: answer}."""
    sep = "," if path.endswith(".csv") else " "
    return dict(line.split(sep, 1) for line in read_lines(path))


def accuracy_items(predict: str, truth: str) -> dict:
    """{'ids', 'correct'} from a recipe's `<item> <answer...>` prediction and truth files (same items;
    the answer is everything after the first separator, so IC's three slots count as one)."""
    def read(path):
        sep = "," if path.endswith(".csv") else " "
        return dict(line.split(sep, 1) for line in read_lines(path))

    predicted, expected = read(predict), read(truth)
    if predicted.keys() != expected.keys():
        raise UserError(f"{predict}: its items differ from {truth}")
    ids = sorted(expected)
    return {"ids": ids, "correct": [int(predicted[i] == expected[i]) for i in ids]}


def labelled_lines(task: str, path: str, labels: Sequence[str], item: str = "utt") -> List[Tuple[str, str]]:
    """`<item> <label>` lines, each label one of `labels`; returns (item, label) pairs."""
    pairs = []
    for n, line in enumerate(read_lines(path), 1):
        parts = line.split(" ")
        if len(parts) != 2:
            raise UserError(f"{task}: {path}:{n}: expected '<{item}> <label>', got {line!r}")
        if parts[1] not in labels:
            known = sorted(labels) if len(labels) <= 12 else sorted(labels)[:3] + ["..."] + sorted(labels)[-1:]
            raise UserError(f"{task}: {path}:{n}: label '{parts[1]}' not in {known}")
        pairs.append((parts[0], parts[1]))
    return pairs


def utterance_level_head(upstream_dim: int, modelrc: dict, outputs: int):
    """`projector` + `model` (S3PRL's downstream/model.py class named by modelrc.select), as the
    utterance-level recipes (IC, ER, KS, SID) build them."""
    from torch import nn

    from s3prl.downstream import model as models

    head = nn.Module()
    head.projector = nn.Linear(upstream_dim, modelrc["projector_dim"])
    model_cls = getattr(models, modelrc["select"])
    head.model = model_cls(input_dim=modelrc["projector_dim"], output_dim=outputs,
                           **modelrc.get(modelrc["select"], {}))
    return head


def utterance_logits(head, features: list):
    """What those recipes' forward computes before the loss: pad, project, pool, classify."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    features_len = torch.IntTensor([len(f) for f in features]).to(device=features[0].device)
    logits, _ = head.model(head.projector(pad_sequence(features, batch_first=True)), features_len)
    return logits


def class_answers(logits, labels: Sequence[str], key: str = "label") -> List[dict]:
    """Arg-max label and the probability of every label, per utterance."""
    probabilities = logits.float().softmax(-1).cpu()
    return [{key: labels[int(p.argmax())], "probabilities": {label: round(float(v), 6) for label, v in zip(labels, p)}}
            for p in probabilities]

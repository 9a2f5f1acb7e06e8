"""What PR and SF share: S3PRL's `-d ctc` recipe, which runs either by its config's `corpus.name`.

The recipe reads `downstream_expert.corpus` (not `datarc`), tokenises with `downstream_expert.text`
(ctc/text.py), decodes greedy CTC (arg-max per frame, repeats merged, pad and end-of-sentence dropped),
evaluates one file at a time (data.py's EVAL_BATCH_SIZE = 1) and writes `<split>-hyp.ark` and
`<split>-ref.ark` (`<utterance id> <decoded text>`). PyPI S3PRL lacks the corpus readers it imports:
`bridge/compat.ctc_recipe_lacks_its_corpus_readers` supplies ours (data/ctc_corpora.py)."""

import os
from typing import Dict, List

from s3prl_adapters.errors import UserError

from .base import Task, latest_config, read_lines, same_ids


class CtcTask(Task):
    recipe = "ctc"
    data_section = "corpus"
    model_section = "model"
    corpus_name: str
    """`downstream_expert.corpus.name` of this task's configs."""
    evaluated_split = "test"
    dev_split = "dev"
    eval_batch_key = None  # the recipe scores every dev/test file alone already (EVAL_BATCH_SIZE = 1)
    prediction_file = "test-hyp.ark"
    truth_file = "test-ref.ark"
    workarounds = ("ctc_recipe_lacks_its_corpus_readers", "ctc_loaders_after_the_first_forget_num_workers")

    def matches(self, config):
        corpus = (config.get("downstream_expert") or {}).get("corpus") or {}
        return isinstance(corpus, dict) and str(corpus.get("name", "")).lower() == self.corpus_name

    @staticmethod
    def _splits(corpus: dict, which) -> List[str]:
        """The split folders the corpus section names under the keys `which` (train, dev, test; a name or a list)."""
        return [s for key in which for s in ([corpus[key]] if isinstance(corpus.get(key), str) else corpus.get(key) or [])]

    @property
    def metric_pattern(self):
        return rf"^test {self.metric}: ([\d.eE+-]+)$"

    # ---- the recipe's files -----------------------------------------------------------------------

    @staticmethod
    def read_ark(path: str) -> Dict[str, str]:
        """`<id> <text>` lines as {id: text} (the text may be empty)."""
        return {utt: text for utt, _, text in (line.partition(" ") for line in read_lines(path))}

    def recorded_answers(self, expdir, fold=None):
        return self.read_ark(os.path.join(expdir, self.prediction_file))

    def answer_key(self, answer):
        return answer["text"]

    def validate_prediction(self, expdir, fold=None):
        path = os.path.join(expdir, self.prediction_file)
        hyp = self.read_ark(path)
        for n, (utt, text) in enumerate(hyp.items(), 1):
            self.check_hypothesis(path, n, text)
        same_ids(self.key, path, list(hyp), self.corpus_test_ids(latest_config(expdir)))
        return path

    def check_hypothesis(self, path: str, n: int, text: str) -> None:
        """A decoded line of the prediction file is well formed (raises UserError naming the line)."""

    # ---- inference --------------------------------------------------------------------------------

    def head_facts(self, config):
        """The text encoder's symbols as the run's outputs index them (ctc/text.py: pad, eos, unk, then
        the vocabulary file's lines, then B-/E- of every slot for SF)."""
        text = config["downstream_expert"]["text"]
        with open(text["vocab_file"], encoding="utf-8") as f:
            vocabulary = [line.strip("\r\n") for line in f]
        facts = {"mode": text["mode"], "vocabulary": vocabulary}
        if text.get("slots_file"):
            with open(text["slots_file"], encoding="utf-8") as f:
                facts["slots"] = f.read().split("\n")
        return facts

    def tokenizer(self, facts: dict):
        from s3prl.downstream.ctc import text

        if facts["mode"] == "word":
            return text.WordTextEncoder(list(facts["vocabulary"]))
        if facts["mode"] == "character":
            return text.CharacterTextEncoder(list(facts["vocabulary"]))
        if facts["mode"] == "character-slot":
            slots = [f"{edge}-{slot}" for slot in facts["slots"][1:] for edge in ("B", "E")]
            return text.CharacterTextSlotEncoder(list(facts["vocabulary"]), slots)
        raise UserError(f"{self.key}: text mode '{facts['mode']}' is not served (word, character, character-slot)")

    def build_head(self, upstream_dim, upstream_rate, modelrc, facts):
        from torch import nn

        from s3prl.downstream import model as shared_models
        from s3prl.downstream.asr import model as asr_models

        head = nn.Module()
        head.projector = nn.Linear(upstream_dim, modelrc["project_dim"])
        select = modelrc["select"]
        model_cls = getattr(asr_models, select, None) or getattr(shared_models, select)
        head.model = model_cls(modelrc["project_dim"], self.tokenizer(facts).vocab_size, upstream_rate=upstream_rate,
                               **modelrc.get(select, {}))
        return head

    def answer(self, head, features, facts):
        """Greedy CTC as the recipe decodes its test split."""
        import torch
        from torch.nn.utils.rnn import pad_sequence

        tokenizer = self.tokenizer(facts)
        features_len = torch.IntTensor([len(f) for f in features])
        logits, _ = head.model(head.projector(pad_sequence(features, batch_first=True)), features_len)
        answers = []
        for tokens in torch.nn.functional.log_softmax(logits, dim=-1).argmax(dim=-1):
            kept = [t for t in tokens.unique_consecutive().tolist() if t not in (tokenizer.pad_idx, tokenizer.eos_idx)]
            answers.append(self.structured(tokenizer.decode(kept)))
        return answers

    def structured(self, text: str) -> dict:
        return {"text": text}


def ark_items(hyp: Dict[str, str], ref: Dict[str, str], path: str) -> List[str]:
    """The items of a run's test pass (its references), checked against its hypotheses."""
    if set(hyp) != set(ref):
        raise UserError(f"{path}: its utterances differ from the references' ({len(set(hyp) ^ set(ref))} differ)")
    return sorted(ref)

"""The two corpus readers S3PRL's `-d ctc` recipe imports and PyPI S3PRL 0.4.18 does not ship
(`downstream/ctc/corpus/libriphone.py`, `.../snips.py`), written from the corpora's layouts and the
interface of the recipe's `data.py`: `Dataset(split_names, tokenizer, bucket_size, **corpus)` whose
items are `(audio_path, token_ids)` pairs, or lists of `bucket_size` such pairs (bucketing), sorted
longest transcription first. `bridge/compat.ctc_recipe_lacks_its_corpus_readers` puts them where the
recipe looks; nothing else imports them into S3PRL.

PR (`corpus.name: libriphone`): LibriSpeech as released, `<path>/<split>/<spk>/<chapter>/*.flac` with
`<spk>-<chapter>.trans.txt`; words become phonemes through `corpus.lexicon` (one file or a list;
`WORD<TAB or space>PH ONE MES`, the first pronunciation of a word wins, earlier files first), phonemes
from the text encoder's vocabulary (S3PRL's phoneme.txt: ARPAbet with stress, SIL, SPN).

SF (`corpus.name: snips`): SUPERB's Audio SNIPS, `<path>/<split>/<Speaker>-snips-<split>-<n>.wav`,
transcripts in `<path>/all.iob.snips.txt` (`<id> BOS words EOS<TAB>O slot-per-word INTENT`) for the
slot encoder, `<path>/all-trans.txt` otherwise; a split keeps the files of its speakers
(`corpus.<split>_speakers`)."""

import os
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple, Union

from torch.utils.data import Dataset

from s3prl_adapters.errors import UserError

PHONEMES = ("SIL", "SPN") + tuple(f"{v}{stress}" for v in ("AA", "AE", "AH", "AO", "AW", "AY") for stress in "012") + \
    ("B", "CH", "D", "DH") + tuple(f"{v}{s}" for v in ("EH", "ER", "EY") for s in "012") + ("F", "G", "HH") + \
    tuple(f"{v}{s}" for v in ("IH", "IY") for s in "012") + ("JH", "K", "L", "M", "N", "NG") + \
    tuple(f"{v}{s}" for v in ("OW", "OY") for s in "012") + ("P", "R", "S", "SH", "T", "TH") + \
    tuple(f"{v}{s}" for v in ("UH", "UW") for s in "012") + ("V", "W", "Y", "Z", "ZH")
"""SUPERB PR's phoneme set, in the order of S3PRL's vocab/phoneme.txt (CMUdict's ARPAbet with lexical
stress, plus silence SIL and spoken noise SPN): 71 symbols. Shipped as downstream_configs/pr/phoneme.txt."""


def read_lexicon(files: Union[str, Sequence[str]], phonemes: Iterable[str] = ()) -> Dict[str, List[str]]:
    """{WORD: phonemes} from lexicon files, the first pronunciation of each word (files in order). With
    `phonemes`, a phoneme outside that set is an error naming the file and line."""
    allowed = set(phonemes)
    lexicon: Dict[str, List[str]] = {}
    for path in [files] if isinstance(files, str) else list(files):
        if not os.path.isfile(path):
            raise UserError(f"lexicon {path}: no such file (config downstream_expert.corpus.lexicon)")
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                word, *phones = line.split()
                if not phones:
                    if word:
                        raise UserError(f"lexicon {path}:{n}: '{word}' has no phonemes")
                    continue
                bad = [p for p in phones if allowed and p not in allowed]
                if bad:
                    raise UserError(f"lexicon {path}:{n}: phoneme '{bad[0]}' of {word} is not in the vocabulary")
                lexicon.setdefault(word, phones)
    return lexicon


def librispeech_transcripts(root: str, split: str) -> Dict[str, Tuple[str, str]]:
    """{utterance id: (flac path, transcript)} of one LibriSpeech split folder, in sorted order."""
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise UserError(f"-d ctc (libriphone): split folder {folder} does not exist (config downstream_expert.corpus.path)")
    out = {}
    for trans in sorted(Path(folder).rglob("*.trans.txt")):
        with open(trans, encoding="utf-8") as f:
            for line in f:
                utt, _, text = line.strip().partition(" ")
                if utt:
                    out[utt] = (str(trans.parent / f"{utt}.flac"), text)
    return out


class _Bucketed(Dataset):
    """Items sorted by transcription length (longest first unless `ascending`); with bucket_size > 1
    item i is the bucket of bucket_size neighbours starting at i (the last full bucket past the end),
    the shape the recipe's collate function and bucketing expect."""

    def __init__(self, pairs: List[Tuple[str, list]], bucket_size: int, ascending: bool):
        pairs = sorted(pairs, key=lambda p: p[0])  # a fixed order among equal lengths, whatever the file system's
        pairs.sort(key=lambda p: len(p[1]), reverse=not ascending)
        self.file_list = [p for p, _ in pairs]
        self.text = [t for _, t in pairs]
        self.bucket_size = bucket_size

    def __len__(self):
        return len(self.file_list)

    def __getitem__(self, index):
        if self.bucket_size > 1:
            index = max(0, min(len(self.file_list) - self.bucket_size, index))
            return list(zip(self.file_list[index:index + self.bucket_size], self.text[index:index + self.bucket_size]))
        return self.file_list[index], self.text[index]


def _split_names(split) -> List[str]:
    return [split] if isinstance(split, str) else list(split)


class LibriPhoneDataset(_Bucketed):
    def __init__(self, split, tokenizer, bucket_size, path, lexicon, ascending=False, **kwargs):
        vocabulary = [v for v in getattr(tokenizer, "_vocab_list", [])[3:]]
        words = read_lexicon(lexicon, vocabulary)
        pairs = []
        for name in _split_names(split):
            utterances = librispeech_transcripts(path, name)
            if not utterances:
                raise UserError(f"-d ctc (libriphone): no *.trans.txt under {os.path.join(path, name)}")
            for utt, (audio, text) in utterances.items():
                missing = [w for w in text.split() if w not in words]
                if missing:
                    raise UserError(f"-d ctc (libriphone): {utt}: word '{missing[0]}' is in no lexicon of "
                                    f"corpus.lexicon (s3prl-adapters prepare-libriphone writes one for every word)")
                pairs.append((audio, tokenizer.encode(" ".join(p for w in text.split() for p in words[w]))))
        super().__init__(pairs, bucket_size, ascending)


class SnipsDataset(_Bucketed):
    def __init__(self, split, tokenizer, bucket_size, path, ascending=False, **kwargs):
        names = _split_names(split)
        key = f"{names[0]}_speakers"
        speakers = kwargs.get(key)
        if not speakers:
            raise UserError(f"-d ctc (snips): config downstream_expert.corpus.{key} lists no speaker")
        slotted = "-slot" in tokenizer.token_type
        table = os.path.join(path, "all.iob.snips.txt" if slotted else "all-trans.txt")
        transcripts = read_snips_transcripts(table)
        pairs = []
        for name in names:
            folder = os.path.join(path, name)
            if not os.path.isdir(folder):
                raise UserError(f"-d ctc (snips): split folder {folder} does not exist (config downstream_expert.corpus.path)")
            kept = [str(f) for f in sorted(Path(folder).rglob("*.wav"))
                    if f.stem in transcripts and any(f.stem.startswith(s) for s in speakers)]
            if not kept:
                raise UserError(f"-d ctc (snips): no .wav of speakers {list(speakers)} with a line in {table} under {folder}")
            pairs += [(f, tokenizer.encode(transcripts[Path(f).stem])) for f in kept]
        super().__init__(pairs, bucket_size, ascending)


def read_snips_transcripts(path: str) -> Dict[str, str]:
    """{utterance id: the rest of its line} of all.iob.snips.txt or all-trans.txt."""
    if not os.path.isfile(path):
        raise UserError(f"-d ctc (snips): {path} does not exist (config downstream_expert.corpus.path)")
    with open(path, encoding="utf-8") as f:
        return {utt: rest for utt, _, rest in (line.rstrip("\r\n").partition(" ") for line in f) if utt}

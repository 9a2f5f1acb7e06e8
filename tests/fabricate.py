"""Tiny fabricated corpora for fast tests (the realistic stand-ins come from make-mini-superb)."""

import os

import numpy as np
import soundfile as sf

SR = 16000

FSC_INTENTS = [
    ("activate", "lights", "kitchen"),
    ("deactivate", "lights", "kitchen"),
    ("increase", "volume", "none"),
    ("decrease", "volume", "none"),
]


def _tone(rng, freq, seconds=1.0):
    t = np.arange(int(SR * seconds)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def make_tiny_fsc(root: str, per_intent=(4, 1, 1), seed: int = 0) -> str:
    """Fluent-Speech-Commands layout: data/{train,valid,test}_data.csv + wavs/speakers/<spk>/<id>.wav;
    each intent is a tone of its own pitch, so a head can learn it."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "data"), exist_ok=True)
    for split, n in zip(("train", "valid", "test"), per_intent):
        rows = []
        for k, (action, obj, loc) in enumerate(FSC_INTENTS):
            for j in range(n):
                spk = f"{split}spk{j % 2}"
                uid = f"{split}-{k}-{j}"
                rel = f"wavs/speakers/{spk}/{uid}.wav"
                os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
                sf.write(os.path.join(root, rel), _tone(rng, 200 + 150 * k, 0.6 + 0.1 * j), SR, subtype="PCM_16")
                rows.append(f"{len(rows)},{rel},{spk},text {k},{action},{obj},{loc}")
        with open(os.path.join(root, "data", f"{split}_data.csv"), "w") as f:
            f.write(",path,speakerId,transcription,action,object,location\n" + "\n".join(rows) + "\n")
    return root


def write_file_at_exit(argv):
    """A child entry (tools/launch.run_in_child) whose only effect comes from an atexit handler."""
    import atexit

    atexit.register(lambda: open(argv[0], "w").write("written at exit"))
    print("registered")



def start_joblib_workers(argv):
    """A child entry that leaves joblib worker processes behind, as S3PRL's sv recipe does (its
    dataset measures file lengths with joblib.Parallel)."""
    from joblib import Parallel, delayed

    print(sum(Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(8))))

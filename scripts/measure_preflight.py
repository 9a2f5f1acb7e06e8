"""Corpus preflight at real size: generate a VoxCeleb1-dev-sized tree (1,211 speakers, 148,642 wavs)
and LibriSpeech 960 h bucket lists (281,241 training rows + dev-clean/test-clean), then time the
preflight of `sv_voxceleb1` and `asr` at a first start (no stamp: every header read) and at warm
starts, each in a fresh process, as `run_downstream.py` runs it (torch already imported).

    .venv/bin/python scripts/measure_preflight.py /scratch/preflight_tree

Files are tiny valid 16 kHz WAVs (10 ms): the walk, the stats and the header reads are those of a
real corpus, the header reads of FLAC/long files on slower disks cost more."""

import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import soundfile as sf

LIBRI_SPLITS = {"train-clean-100": 28539, "train-clean-360": 104014, "train-other-500": 148688,
                "dev-clean": 2703, "test-clean": 2620}


def _tiny_wav() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(160, dtype=np.int16), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def generate(root: str) -> None:
    data, marker = _tiny_wav(), os.path.join(root, ".complete")
    if os.path.exists(marker):
        return
    vox, n = os.path.join(root, "VoxCeleb1"), 0
    for s in range(1211):
        for v in range(10):
            d = os.path.join(vox, "dev", "wav", f"id{10001 + s}", f"vid{v:08d}")
            os.makedirs(d, exist_ok=True)
            for u in range(12 + (s + v) % 3):
                if n < 148642:
                    with open(os.path.join(d, f"{u + 1:05d}.wav"), "wb") as f:
                        f.write(data)
                    n += 1
    test = []
    for s in range(40):
        d = os.path.join(vox, "test", "wav", f"id{10270 + s}", "vidtest0")
        os.makedirs(d, exist_ok=True)
        for u in range(118):
            with open(os.path.join(d, f"{u + 1:05d}.wav"), "wb") as f:
                f.write(data)
            test.append(f"id{10270 + s}/vidtest0/{u + 1:05d}.wav")
    rng = np.random.default_rng(0)
    with open(os.path.join(vox, "veri_test2.txt"), "w") as f:
        for i in range(37720):
            a, b = rng.choice(len(test), 2, replace=False)
            f.write(f"{i % 2} {test[a]} {test[b]}\n")
    with open(os.path.join(vox, "dev_trials.txt"), "w") as f:
        f.write("1 id10001/vid00000000/00001.wav id10001/vid00000001/00001.wav\n")
    libri = os.path.join(root, "LibriSpeech")
    os.makedirs(os.path.join(libri, "len_for_bucket"), exist_ok=True)
    for split, count in LIBRI_SPLITS.items():
        rows = []
        for i in range(count):
            spk, utt = 1 + i // 120, i % 120
            d = os.path.join(libri, split, str(spk), "1")
            os.makedirs(d, exist_ok=True)
            rel = f"{split}/{spk}/1/{spk}-1-{utt:04d}.wav"
            with open(os.path.join(libri, rel), "wb") as f:
                f.write(data)
            rows.append(f"{i},{rel},160,")
        with open(os.path.join(libri, "len_for_bucket", f"{split}.csv"), "w") as f:
            f.write(",file_path,length,label\n" + "\n".join(rows) + "\n")
    open(marker, "w").close()


_CHILD = """
import json, os, sys, time, yaml
import torch  # imported by run_downstream.py before the preflight runs
from s3prl_adapters.bridge import compat, launcher
from s3prl_adapters.bridge.preflight import check_corpus
task, root = sys.argv[1], sys.argv[2]
with open(os.path.join(str(launcher.CONFIG_ROOT), task, "config.yaml")) as f:
    config = yaml.safe_load(f)
d = config["downstream_expert"]["datarc"]
if task == "asr":
    d.update(libri_root=root + "/LibriSpeech", bucket_file=root + "/LibriSpeech/len_for_bucket",
             train=["train-clean-100", "train-clean-360", "train-other-500"],
             dict_path=os.path.join(str(launcher.CONFIG_ROOT), "asr", "char.dict"))
else:
    d.update(file_path=root + "/VoxCeleb1", test_meta_data=root + "/VoxCeleb1/veri_test2.txt",
             dev_meta_data=root + "/VoxCeleb1/dev_trials.txt")
start = time.perf_counter()
facts = check_corpus(task, config)
if task == "sv_voxceleb1":  # the ASV length cache's key, in the same start (reuses the preflight's walk)
    compat._corpus_fingerprint([os.path.join(d["file_path"], "dev", "wav")])
print(json.dumps({"seconds": time.perf_counter() - start, "files": facts["files"]}))
"""


def main(root: str) -> None:
    root = os.path.abspath(root)
    t = time.time()
    generate(root)
    print(f"tree ready in {time.time() - t:.1f} s: {root}", file=sys.stderr)
    env = dict(os.environ, S3PRL_ADAPTERS_CACHE=os.path.join(root, ".cache"), OMP_NUM_THREADS="1")
    subprocess.run(["rm", "-rf", env["S3PRL_ADAPTERS_CACHE"]], check=True)
    for task in ("sv_voxceleb1", "asr"):
        for start in ("first", "warm", "warm"):
            out = subprocess.run([sys.executable, "-c", _CHILD, task, root], env=env, capture_output=True, text=True,
                                 check=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            print(f"{task:13s} {start:5s} start: {result['seconds']:6.2f} s for {result['files']:,} files")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "preflight_tree")

"""The prefix cache at LibriSpeech-100's size, measured: 28,539 utterances, 100.6 h, each entry the
WavLM Base+ prefix of its length (frames x 768, float16 as the training tier stores it; stand-in
content), through the real cache class (bridge/feature_cache.PrefixStore) with the default bounds
(20 GB on disk, 2 GB in memory), two epochs in shuffled order. Reports the bytes the corpus needs,
what the bound lets in, each epoch's hits and misses and the cache's own time per utterance (hash,
serialise, write, read), and, beside it, what a miss costs instead: the Base+ CNN run on the
utterance alone against the same utterances in a padded batch of 8 (this CPU, 1 thread).

    python scripts/measure_prefix_cache.py OUT_DIR [--utterances 28539] [--hours 100.59]
"""

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from s3prl_adapters.bridge.feature_cache import PrefixCacheConfig, PrefixStore  # noqa: E402
from s3prl_adapters.method.backbone import BASE_PLUS_CFG, build_wavlm, conv_layers  # noqa: E402
from s3prl_adapters.method.prefix import frames_alone, prefix_alone  # noqa: E402
from s3prl_adapters.paths import code_version  # noqa: E402
from s3prl_adapters.tools.search_record import cpu_name  # noqa: E402

RATE = 16000


def durations(n: int, hours: float, seed: int = 0) -> np.ndarray:
    """LibriSpeech-100-like utterance lengths in samples: most 10-16.5 s, a tail of short ones, the total `hours`."""
    rng = np.random.default_rng(seed)
    seconds = np.clip(rng.normal(13.6, 2.6, n), 1.3, 24.5)
    short = rng.random(n) < 0.08
    seconds[short] = rng.uniform(1.3, 10.0, short.sum())
    seconds *= hours * 3600 / seconds.sum()
    return np.clip((seconds * RATE).astype(np.int64), 400, None)


def wav_of(index: int, samples: int) -> torch.Tensor:
    """Utterance `index`'s stand-in audio: the same samples in every epoch (its cache key is their hash)."""
    return torch.randn(samples, generator=torch.Generator().manual_seed(index)) * 0.05


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--utterances", type=int, default=28539)
    p.add_argument("--hours", type=float, default=100.59)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--cnn-sample", type=int, default=24, help="utterances timed through the Base+ CNN")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = os.path.abspath(args.out)
    cache_dir = os.path.join(out, "prefix_cache")
    shutil.rmtree(cache_dir, ignore_errors=True)
    lengths = durations(args.utterances, args.hours)
    wavlm = build_wavlm(BASE_PLUS_CFG, seed=0).eval()
    conv = conv_layers(wavlm.cfg)
    width = wavlm.cfg.encoder_embed_dim
    frames = np.array([frames_alone(conv, int(n)) for n in lengths])
    needed = int(frames.sum()) * width * 2

    config = PrefixCacheConfig(dir=cache_dir)
    store = PrefixStore(config, "base_plus_standin", 320)
    epochs = []
    rng = np.random.default_rng(1)
    for epoch in range(args.epochs):
        order = rng.permutation(args.utterances)
        hits, misses = store.hits, store.misses
        spent = {"hash_and_lookup": 0.0, "store": 0.0}
        started = time.perf_counter()
        for i in order:
            wav = wav_of(int(i), int(lengths[i]))
            t0 = time.perf_counter()
            key = store.key(wav)
            got = store.get(key)
            t1 = time.perf_counter()
            spent["hash_and_lookup"] += t1 - t0
            if got is None:
                store.misses += 1
                store.put(key, [torch.randn(int(frames[i]), width, generator=torch.Generator().manual_seed(int(i)))])
                spent["store"] += time.perf_counter() - t1
            else:
                store.hits += 1
        t2 = time.perf_counter()
        store.flush()
        epochs.append({"epoch": epoch + 1, "hits": store.hits - hits, "misses": store.misses - misses,
                       "seconds": round(time.perf_counter() - started, 1),
                       "flush_seconds": round(time.perf_counter() - t2, 1),
                       "ms_per_utterance_hash_and_lookup": round(1000 * spent["hash_and_lookup"] / args.utterances, 2),
                       "ms_per_miss_store": round(1000 * spent["store"] / max(1, store.misses - misses), 2)})
        print(json.dumps(epochs[-1]), flush=True)
    on_disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(cache_dir) for f in fs)

    # what a miss costs instead: the CNN (+ LayerNorm, projection) alone vs in a padded batch of 8
    sample = np.random.default_rng(2).choice(args.utterances, size=args.cnn_sample, replace=False)
    wavs = [wav_of(int(i), int(lengths[i])) for i in sample]
    with torch.no_grad():
        prefix_alone(wavlm, wavs[0])  # warm-up
        t0 = time.perf_counter()
        for w in wavs:
            prefix_alone(wavlm, w)
        alone = (time.perf_counter() - t0) / len(wavs)
        t0 = time.perf_counter()
        for start in range(0, len(wavs), 8):
            batch = torch.nn.utils.rnn.pad_sequence(wavs[start:start + 8], batch_first=True)
            wavlm.post_extract_proj(wavlm.layer_norm(wavlm.feature_extractor(batch).transpose(1, 2)))
        batched = (time.perf_counter() - t0) / len(wavs)
    record = {"command": "python scripts/measure_prefix_cache.py " + " ".join(sys.argv[1:]), "git": code_version(),
              "cpu": cpu_name(), "threads": 1, "utterances": args.utterances, "hours": args.hours,
              "mean_seconds": round(float(lengths.mean()) / RATE, 2), "bytes_needed": needed,
              "disk_bound_bytes": int(config.max_disk_mb * 2**20), "bytes_on_disk": on_disk,
              "entries_on_disk": sum(len(fs) for _, _, fs in os.walk(cache_dir)), "epochs": epochs,
              "cnn_seconds_per_utterance_alone": round(alone, 3),
              "cnn_seconds_per_utterance_in_batches_of_8": round(batched, 3)}
    with open(os.path.join(out, "prefix_cache_at_scale.json"), "w") as f:
        json.dump(record, f, indent=1)
    print(json.dumps({k: v for k, v in record.items() if k != "epochs"}, indent=1))
    shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The opt-in feature cache: same loss and gradients with and without it, invalidation when the
backbone or the audio changes, its memory/disk bounds, refusals, and both runner paths."""

import os
import subprocess

import pytest
import torch

from conftest import tool
from s3prl_adapters.bridge import hubconf
from s3prl_adapters.errors import UserError
from s3prl_adapters.bridge.feature_cache import FeatureCache, FeatureCacheConfig, attach_feature_cache, module_fingerprint
from test_runner import OVERRIDES


def _wavs(seed, lengths=(16000, 12000, 9000)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) for n in lengths]


def _loss_and_grads(expert, wavs):
    expert.zero_grad(set_to_none=True)
    hidden = expert(wavs)["hidden_states"]
    # What S3PRL's Featurizer hands the head: each utterance's first round(len / 320) frames.
    frames = [round(len(w) / 320) for w in wavs]
    loss = sum((h[b, :n] ** 2).mean() * (i + 1) for i, h in enumerate(hidden) for b, n in enumerate(frames))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in expert.named_parameters() if p.requires_grad}


@pytest.fixture
def l_only(tiny_ckpt):
    torch.manual_seed(0)
    return hubconf.wavlm_ladapter_only(ckpt=tiny_ckpt).train()


def _alone(expert, wav):
    """The states the L-adapters read for one utterance computed alone, without any cache."""
    source, expert.state_source = expert.state_source, None
    try:
        with torch.no_grad():
            return [s[0] for s in expert._l_adapter_inputs([wav])]
    finally:
        expert.state_source = source


def test_training_entries_do_not_depend_on_batch_or_on_who_computed_them(l_only, tmp_path):
    """A training entry is the utterance computed alone, rounded to float16, and the miss that computes
    it serves exactly what a later hit reads: what a run trains on does not depend on its batch-mates
    or on whether it or an earlier run filled the cache. Loss and gradients stay close to the uncached
    computation of a batch without padding."""
    wavs = _wavs(1)
    alone = [_alone(l_only, w) for w in wavs]
    cache = attach_feature_cache(l_only, FeatureCacheConfig(dir=str(tmp_path)))
    miss_loss, miss = _loss_and_grads(l_only, wavs)
    hit_loss, hit = _loss_and_grads(l_only, wavs)
    assert (cache.hits, cache.misses) == (3, 3)
    assert torch.equal(miss_loss, hit_loss) and all(torch.equal(miss[k], hit[k]) for k in miss)
    for wav, states in zip(wavs, alone):
        entry = cache.get(cache.key(wav))
        assert all(torch.equal(e, s.half()) for e, s in zip(entry, states))

    # Another run (its own memory-only cache) meets the utterance among other neighbours: same entry.
    other = attach_feature_cache(l_only, FeatureCacheConfig(max_memory_mb=64))
    with torch.no_grad():
        l_only([_wavs(2, (21000,))[0], wavs[2], _wavs(3, (5000,))[0]])
    assert all(torch.equal(a, b) for a, b in zip(other.get(other.key(wavs[2])), cache.get(cache.key(wavs[2]))))

    same_length = _wavs(4, (12000, 12000))  # no padding: only the float16 rounding differs
    l_only.state_source = None
    want_loss, want = _loss_and_grads(l_only, same_length)
    attach_feature_cache(l_only, FeatureCacheConfig())
    loss, grads = _loss_and_grads(l_only, same_length)
    assert torch.allclose(loss, want_loss, rtol=1e-3)
    for k in want:
        assert torch.allclose(grads[k], want[k], rtol=1e-2, atol=1e-3 * want[k].abs().max()), k


def test_evaluation_entries_are_bit_identical_to_computing_alone(l_only, tmp_path):
    """While the runner evaluates (`exact`), entries are stored as computed: a batch-1 pass through the
    cache, miss or hit, equals a batch-1 pass without it bit for bit; the float16 training entries of
    the same utterances are never served there."""
    wavs = _wavs(5)
    l_only.eval()
    with torch.no_grad():
        want = [l_only([w])["hidden_states"] for w in wavs]
    cache = attach_feature_cache(l_only, FeatureCacheConfig(dir=str(tmp_path)))
    with torch.no_grad():
        l_only(wavs)  # training-tier entries of the same utterances
        cache.exact = True
        for _ in range(2):
            for w, expected in zip(wavs, want):
                got = l_only([w])["hidden_states"]
                assert all(torch.equal(g, e) for g, e in zip(got, expected))
    assert (cache.hits, cache.misses) == (3, 6)  # the exact tier missed once per utterance, then hit
    cache.flush()  # entries reach the disk from a background thread
    names = sorted(os.listdir(next(tmp_path.iterdir())))
    assert len(names) == 6 and sum(n.endswith(".exact.pt") for n in names) == 3


def test_cache_misses_when_backbone_or_audio_changes(l_only, tiny_ckpt, tmp_path):
    wavs = _wavs(1)
    cache = attach_feature_cache(l_only, FeatureCacheConfig(dir=str(tmp_path)))
    with torch.no_grad():
        l_only(wavs)
        l_only(wavs)
    assert (cache.hits, cache.misses) == (3, 3)

    changed_audio = [w.clone() for w in wavs]
    changed_audio[1][100] += 1e-3
    with torch.no_grad():
        l_only(changed_audio)
    assert (cache.hits, cache.misses) == (5, 4)

    # A fresh process sees the disk tier; a backbone with one weight changed does not.
    again = hubconf.wavlm_ladapter_only(ckpt=tiny_ckpt).train()
    disk = attach_feature_cache(again, FeatureCacheConfig(dir=str(tmp_path), max_memory_mb=0))
    with torch.no_grad():
        again(wavs)
    assert (disk.hits, disk.misses) == (3, 0)
    with torch.no_grad():
        again.model.encoder.layers[1].fc1.weight[0, 0] += 1e-4
    changed = attach_feature_cache(again, FeatureCacheConfig(dir=str(tmp_path)))
    assert changed.fingerprint != disk.fingerprint
    with torch.no_grad():
        again(wavs)
    assert (changed.hits, changed.misses) == (0, 3)


def test_cache_bounds(tmp_path):
    states = [torch.zeros(50, 64)]  # 6,400 bytes as float16
    torch.save([states[0].half()], tmp_path / "probe.pt")
    file_bytes = os.path.getsize(tmp_path / "probe.pt")
    cache = FeatureCache(FeatureCacheConfig(dir=str(tmp_path / "cache"), max_memory_mb=20_000 / 2**20,
                                            max_disk_mb=2.5 * file_bytes / 2**20), "fp", 320)
    for key in "abcd":
        cache.put(key, states)
    cache.flush()
    assert list(cache._memory) == ["b", "c", "d"]  # 20,000 bytes hold three: the least recently used left
    on_disk = sorted(os.listdir(tmp_path / "cache" / "fp"))
    assert on_disk == ["a.pt", "b.pt"]  # the disk bound stops new files; nothing is deleted
    assert cache.get("a") is not None and cache.get("d") is not None and cache.get("e") is None
    # The bound covers the whole folder (every backbone): a second backbone starts full.
    other = FeatureCache(FeatureCacheConfig(dir=str(tmp_path / "cache"), max_disk_mb=2.5 * file_bytes / 2**20), "fp2", 320)
    other.put("x", states)
    other.flush()
    assert os.listdir(tmp_path / "cache" / "fp2") == []


def test_disk_writes_do_not_hold_up_the_caller(tmp_path, monkeypatch):
    import threading

    from s3prl_adapters.bridge import feature_cache

    release, real_replace = threading.Event(), os.replace
    monkeypatch.setattr(feature_cache.os, "replace", lambda a, b: release.wait(30) and real_replace(a, b))
    cache = FeatureCache(FeatureCacheConfig(dir=str(tmp_path), max_memory_mb=0), "fp", 320)
    cache.put("a", [torch.ones(5, 4)])  # returns while the disk write is held back
    assert "a.pt" not in os.listdir(tmp_path / "fp")
    assert torch.equal(cache.get("a")[0], torch.ones(5, 4, dtype=torch.float16))  # served from the queue
    release.set()
    cache.flush()
    assert os.listdir(tmp_path / "fp") == ["a.pt"]
    assert torch.equal(torch.load(tmp_path / "fp" / "a.pt", weights_only=True)[0], torch.ones(5, 4).half())


def test_a_killed_run_s_temporary_files_are_removed_and_never_counted(tmp_path):
    import socket
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    folder = tmp_path / "fp"
    folder.mkdir()
    leftover = folder / f"k1.pt.tmp-{host}-{int(dead.stdout)}"  # its writer was killed mid-write
    live = folder / f"k2.pt.tmp-{host}-{os.getpid()}"  # a running writer's file: not ours to remove
    for path in (leftover, live):
        path.write_bytes(b"x" * 4096)
    cache = FeatureCache(FeatureCacheConfig(dir=str(tmp_path), max_disk_mb=1), "fp", 320)
    assert not leftover.exists() and live.exists() and cache.removed_leftovers == 1
    assert cache._disk_bytes == 0 and cache.get("k1") is None and cache.get("k2") is None


def test_corpus_size_estimate():
    from s3prl_adapters.bridge.feature_cache import corpus_bytes

    # WavLM Base+ L-only: 12 layer outputs x 768 x float16 at 50 frames/s, ~3.3 GB per hour
    assert corpus_bytes(1.0, 12, 768, 320) == 3600 * 50 * 12 * 768 * 2 == 3_317_760_000


def test_cache_config_refusals(tiny_ckpt):
    with pytest.raises(UserError, match=r"unknown key\(s\) \['size'\]"):
        FeatureCacheConfig.from_config({"size": 3})
    with pytest.raises(UserError, match="'max_disk_mb' must be a number >= 0"):
        FeatureCacheConfig.from_config({"max_disk_mb": -1})
    with pytest.raises(UserError, match="method 'proposed' does not run a frozen, deterministic backbone"):
        attach_feature_cache(hubconf.wavlm_ladapter(ckpt=tiny_ckpt), FeatureCacheConfig())
    assert module_fingerprint(torch.nn.Linear(2, 2)) != module_fingerprint(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("upstream", ["wavlm_local", "wavlm_ladapter_only"])
def test_runner_trains_through_the_cache(upstream, tiny_ckpt, tiny_fsc, tmp_path):
    cache_dir = tmp_path / "cache"
    proc = subprocess.run(
        [tool("run_downstream.py"), "-m", "train", "-u", upstream, "-k", tiny_ckpt, "-d", "fluent_commands",
         "-c", os.path.join(os.path.dirname(os.path.dirname(__file__)), "downstream_configs", "fluent_commands", "mini.yaml"),
         "-p", str(tmp_path / "exp"),
         "-o", f"{OVERRIDES.format(root=tiny_fsc)},,config.feature_cache.dir={cache_dir}"],
        capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    hits, misses = [int(w) for w in proc.stderr.split("feature cache: ")[-1].split()[:3:2]]
    # 16 train + 4 dev + 4 test utterances are computed once; the 8 train utterances of the second
    # pass (6 steps x 4) and the second dev/test evaluation are served from the cache.
    assert (hits, misses) == (16, 24)
    assert len(os.listdir(next(cache_dir.iterdir()))) == 24
    # The preflight listed 16.8 s of audio (24 files): 16.8 s x 50 frames/s x 4 states (wavlm_local: 4;
    # L-only: 3 layers) x 48 x 2 bytes; printed at start with the verdict for each bound.
    states = 4 if upstream == "wavlm_local" else 3
    need = 16.8 * 50 * states * 48 * 2 / 2**10
    assert f"the corpus (0.00467 h listed) needs ~{need:.3g} KiB ({states} states x 48 x float16 at 50 frames/s): " \
           f"disk bound 20 GiB fits; memory bound 2 GiB fits" in proc.stderr


def test_cache_with_a_trained_upstream_is_one_line_error(tiny_ckpt, tiny_fsc, tmp_path):
    proc = subprocess.run(
        [tool("run_downstream.py"), "-m", "train", "-u", "wavlm_local", "-f", "-k", tiny_ckpt, "-d", "fluent_commands",
         "-p", str(tmp_path / "exp"),
         "-o", f"config.downstream_expert.datarc.file_path={tiny_fsc},,config.feature_cache.dir={tmp_path}"],
        capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "config feature_cache: -f trains upstream wavlm_local, so its states change every step; "
        "drop -f (frozen weighted sum) or the feature_cache section")

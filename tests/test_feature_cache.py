"""The opt-in feature cache: same loss and gradients with and without it, invalidation when the
backbone or the audio changes, its memory/disk bounds, refusals, and both runner paths."""

import os
import subprocess

import pytest
import torch

from conftest import tool
from s3prl_adapters import hubconf
from s3prl_adapters.errors import UserError
from s3prl_adapters.feature_cache import FeatureCache, FeatureCacheConfig, module_fingerprint
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


def test_cache_gives_the_same_loss_and_gradients(l_only, tmp_path):
    wavs = _wavs(1)
    want_loss, want = _loss_and_grads(l_only, wavs)
    cache = l_only.use_feature_cache(FeatureCacheConfig(dir=str(tmp_path)))

    first_loss, first = _loss_and_grads(l_only, wavs)  # all misses: computed exactly as without the cache
    assert (cache.hits, cache.misses) == (0, 3)
    assert torch.equal(first_loss, want_loss) and all(torch.equal(first[k], want[k]) for k in want)

    hit_loss, hit = _loss_and_grads(l_only, wavs)  # all hits: the float16 copies
    assert (cache.hits, cache.misses) == (3, 3)
    assert torch.allclose(hit_loss, want_loss, rtol=1e-3)
    for k in want:
        assert torch.allclose(hit[k], want[k], rtol=1e-2, atol=1e-3 * want[k].abs().max()), k

    mixed = [wavs[2], _wavs(2, (11000,))[0], wavs[0]]  # hits and a miss in one batch, reordered
    loss, _ = _loss_and_grads(l_only, mixed)
    l_only.feature_cache = None
    plain_loss, _ = _loss_and_grads(l_only, mixed)
    assert torch.allclose(loss, plain_loss, rtol=1e-2)


def test_cache_misses_when_backbone_or_audio_changes(l_only, tiny_ckpt, tmp_path):
    wavs = _wavs(1)
    cache = l_only.use_feature_cache(FeatureCacheConfig(dir=str(tmp_path)))
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
    disk = again.use_feature_cache(FeatureCacheConfig(dir=str(tmp_path), max_memory_mb=0))
    with torch.no_grad():
        again(wavs)
    assert (disk.hits, disk.misses) == (3, 0)
    with torch.no_grad():
        again.model.encoder.layers[1].fc1.weight[0, 0] += 1e-4
    changed = again.use_feature_cache(FeatureCacheConfig(dir=str(tmp_path)))
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
    assert list(cache._memory) == ["b", "c", "d"]  # 20,000 bytes hold three: the least recently used left
    on_disk = sorted(os.listdir(tmp_path / "cache" / "fp"))
    assert on_disk == ["a.pt", "b.pt"]  # the disk bound stops new files; nothing is deleted
    assert cache.get("a") is not None and cache.get("d") is not None and cache.get("e") is None
    # The bound covers the whole folder (every backbone): a second backbone starts full.
    other = FeatureCache(FeatureCacheConfig(dir=str(tmp_path / "cache"), max_disk_mb=2.5 * file_bytes / 2**20), "fp2", 320)
    other.put("x", states)
    assert os.listdir(tmp_path / "cache" / "fp2") == []


def test_cache_config_refusals(tiny_ckpt):
    with pytest.raises(UserError, match=r"unknown key\(s\) \['size'\]"):
        FeatureCacheConfig.from_config({"size": 3})
    with pytest.raises(UserError, match="'max_disk_mb' must be a number >= 0"):
        FeatureCacheConfig.from_config({"max_disk_mb": -1})
    with pytest.raises(UserError, match="method 'proposed' does not run a frozen, deterministic backbone"):
        hubconf.wavlm_ladapter(ckpt=tiny_ckpt).use_feature_cache(FeatureCacheConfig())
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

"""The prefix cache (config prefix_cache): each utterance's prefix computed alone; every adapter
method trains from the same values whether they were computed or read (and whichever run computed
them), close to the uncached loss and gradients; evaluation reads exact entries, bit-identical to a
batch-1 pass without the cache; dropout after the cut still draws its masks; what cannot be cached
is refused in one line."""

import os
import subprocess

import pytest
import torch

from conftest import tool
from s3prl_adapters.bridge import hubconf
from s3prl_adapters.bridge.feature_cache import PrefixCacheConfig, attach_prefix_cache
from s3prl_adapters.errors import UserError
from s3prl_adapters.method.backbone import build_wavlm, save_checkpoint, tiny_cfg
from test_feature_cache import _wavs
from test_runner import OVERRIDES

ADAPTER_UPSTREAMS = ["wavlm_ladapter", "wavlm_eadapter", "wavlm_houlsby", "wavlm_ladapter_only", "wavlm_lora"]


def _expert(upstream, ckpt, train=True):
    torch.manual_seed(0)
    expert = getattr(hubconf, upstream)(ckpt=ckpt).train(train)
    for p in expert.parameters():  # LoRA's B and the adapters' up-projections start at 0: move off it
        if p.requires_grad:
            p.data.add_(0.02 * torch.randn_like(p))
    return expert


def _loss_and_grads(expert, wavs):
    """A loss that is not invariant to the post-LN layers' scale (a sum of squares nearly is, which
    leaves LoRA's gradients at rounding noise): each state against a fixed random direction."""
    expert.zero_grad(set_to_none=True)
    hidden = expert(wavs)["hidden_states"]
    g = torch.Generator().manual_seed(0)
    loss = sum((h * torch.randn(h.shape, generator=g)).mean() for h in hidden)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in expert.named_parameters() if p.requires_grad}


def _close(got, want, scale=None):
    """Equal up to the float16 rounding of the cached prefix, relative to `scale` (default: the tensor's)."""
    scale = float(want.detach().abs().max()) if scale is None else scale
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-3 * scale)


@pytest.mark.parametrize("upstream", ADAPTER_UPSTREAMS)
def test_training_from_the_cache(upstream, tiny_ckpt):
    """Miss and hit give the same loss and gradients bit for bit, as does a cache another run filled
    from other batches; against the uncached pass of a batch without padding they differ by the
    float16 rounding of the stored prefix only."""
    plain, cached = _expert(upstream, tiny_ckpt), _expert(upstream, tiny_ckpt)
    cache = attach_prefix_cache(cached, PrefixCacheConfig())
    wavs = _wavs(1, (12000, 12000, 12000))
    torch.manual_seed(3)  # the same dropout draws in every pass (E-adapter methods train in train mode)
    want_loss, want_grads = _loss_and_grads(plain, wavs)
    results = []
    for expected_hits in (0, 3):  # the first batch fills the cache, the second reads from it
        torch.manual_seed(3)
        results.append(_loss_and_grads(cached, wavs))
        assert cache.hits == expected_hits and cache.misses == 3
    other = _expert(upstream, tiny_ckpt)
    other.load_state_dict(cached.state_dict())
    attach_prefix_cache(other, PrefixCacheConfig())
    with torch.no_grad():
        other([wavs[0], _wavs(2, (20000,))[0]])  # its entries computed among other neighbours
        other([wavs[1]])
    torch.manual_seed(3)
    results.append(_loss_and_grads(other, wavs))
    for loss, grads in results[1:]:
        assert torch.equal(loss, results[0][0])
        assert all(torch.equal(grads[k], results[0][1][k]) for k in grads)
    loss, grads = results[0]
    _close(loss, want_loss)
    scale = max(float(g.abs().max()) for g in want_grads.values())  # some grads are ~1e-10 of the rest
    for name, grad in want_grads.items():
        _close(grads[name], grad, scale)


@pytest.mark.parametrize("upstream", ADAPTER_UPSTREAMS)
def test_evaluation_is_exact(upstream, tiny_ckpt):
    """In the exact tier (while the runner evaluates) a batch-1 pass through the cache, miss or hit,
    equals the batch-1 pass without it bit for bit: each file scored as `predict --batch-size 1` does."""
    plain, cached = _expert(upstream, tiny_ckpt, train=False), _expert(upstream, tiny_ckpt, train=False)
    cached.load_state_dict(plain.state_dict())
    cache = attach_prefix_cache(cached, PrefixCacheConfig())
    cache.exact = True
    with torch.no_grad():
        for wav in _wavs(6):
            want = plain([wav])["hidden_states"]
            for _ in range(2):
                assert all(torch.equal(g, w) for g, w in zip(cached([wav])["hidden_states"], want))
    assert (cache.hits, cache.misses) == (3, 3)


def _dropout_backbone(path):
    cfg = tiny_cfg()
    cfg.update(dropout_input=0.3, dropout=0.2)  # Base+ trains with dropout_input 0.1 (method.md)
    save_checkpoint(build_wavlm(cfg, seed=0), path)
    return path


def test_dropout_after_the_cut_still_draws_its_masks(tmp_path):
    """Training the backbone in train mode (E-adapters): dropout_input and the encoder's dropout
    still apply to the cached prefix, with the same random draws as the full pass."""
    ckpt = _dropout_backbone(str(tmp_path / "dropout.pt"))
    plain, cached = _expert("wavlm_ladapter", ckpt), _expert("wavlm_ladapter", ckpt)
    cache = attach_prefix_cache(cached, PrefixCacheConfig())
    wavs = _wavs(2, (12000, 12000, 12000))  # no padding: the alone prefix is the batch's
    cached(wavs)  # fills the cache
    torch.manual_seed(7)
    want = plain(wavs)["hidden_states"]
    torch.manual_seed(7)
    got = cached(wavs)["hidden_states"]
    assert cache.hits == 3
    _close(got[-1], want[-1])
    torch.manual_seed(8)  # other draws, other output: the dropout did run
    assert not torch.allclose(cached(wavs)["hidden_states"][-1], want[-1], atol=0.1)


def test_refusals(tiny_ckpt):
    expert = _expert("wavlm_eadapter", tiny_ckpt)
    expert.model.post_extract_proj.weight.requires_grad_(True)
    with pytest.raises(UserError, match="upstream parameter post_extract_proj.weight trains"):
        attach_prefix_cache(expert, PrefixCacheConfig())
    with pytest.raises(UserError, match=r"config prefix_cache: unknown key\(s\) \['size'\]"):
        PrefixCacheConfig.from_config({"size": 1})


CONFIG = os.path.join(os.path.dirname(os.path.dirname(__file__)), "downstream_configs", "fluent_commands", "mini.yaml")


def test_runner_trains_through_the_prefix_cache(tiny_ckpt, tiny_fsc, tmp_path):
    cache_dir = tmp_path / "cache"
    proc = subprocess.run(
        [tool("run_downstream.py"), "-m", "train", "-u", "wavlm_ladapter", "-k", tiny_ckpt, "-d", "fluent_commands",
         "-c", CONFIG, "-p", str(tmp_path / "exp"),
         "-o", f"{OVERRIDES.format(root=tiny_fsc)},,config.prefix_cache.dir={cache_dir}"],
        capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cached: CNN, its LayerNorm and the projection" in proc.stderr
    hits, misses = [int(w) for w in proc.stderr.split("prefix cache: ")[-1].split()[:3:2]]
    assert (hits, misses) == (16, 24)  # as the feature cache's run: 24 utterances computed once
    assert len(os.listdir(next(cache_dir.iterdir()))) == 24


def test_prefix_cache_with_a_stock_upstream_is_one_line_error(tiny_ckpt, tiny_fsc, tmp_path):
    proc = subprocess.run(
        [tool("run_downstream.py"), "-m", "train", "-u", "wavlm_local", "-k", tiny_ckpt, "-d", "fluent_commands",
         "-p", str(tmp_path / "exp"),
         "-o", f"config.downstream_expert.datarc.file_path={tiny_fsc},,config.prefix_cache.dir={tmp_path}"],
        capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "run_downstream.py: error: config prefix_cache: serves the adapter upstreams (wavlm_eadapter, ")


def test_a_recipe_with_random_training_crops_is_told_it_will_miss(capsys):
    from types import SimpleNamespace

    from s3prl_adapters.bridge.runner_hook import AdapterRunner

    def note(task, datarc):
        runner = SimpleNamespace(args=SimpleNamespace(downstream=task), config={"downstream_expert": {"datarc": datarc}})
        AdapterRunner._note_random_train_crop(runner)
        return capsys.readouterr().err

    assert "sv_voxceleb1 crops a random datarc.max_timestep window" in note("sv_voxceleb1", {"max_timestep": 48000})
    assert note("sv_voxceleb1", {}) == ""  # no crop configured: every file whole, cached like any other
    assert note("fluent_commands", {"max_timestep": 48000}) == ""
    assert note("some_recipe_without_a_descriptor", {}) == ""

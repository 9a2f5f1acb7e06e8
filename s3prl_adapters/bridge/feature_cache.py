"""Opt-in cache of frozen-backbone hidden states, so that epochs after the first skip the backbone.

Only for methods whose backbone is entirely frozen and deterministic: stock `wavlm_local` without
`-f` (the frozen weighted sum) and `wavlm_ladapter_only` (the L-adapters read cached layer outputs).
Enabled by a `feature_cache:` section of the downstream config, e.g. `-o config.feature_cache.dir=PATH`.
The prefix cache (`prefix_cache:`) is the same store holding one tensor per utterance: the frozen
prefix (method/prefix.py), for every adapter method.

Entries are per utterance, keyed by a hash of the backbone's weights (plus what else changes its
output: which states, autocast dtype) and of the waveform's samples, so a changed backbone or
changed audio never hits a stale entry. Every entry is computed from the utterance alone (a batch
of one): WavLM's CNN normalises over the padded batch, so an entry computed inside a batch would
depend on its batch-mates, and through them on which run computed it first. Two tiers, keyed apart:
- training (the default): stored as float16 and served as stored on a miss too, so a run trains on
  the same values whether it or an earlier run computed them;
- evaluation (`exact`, set by the runner while it evaluates): stored as computed (float32), so a
  read is bit-identical to computing the utterance alone, which is what a batch-1 evaluation and
  `s3prl-adapters predict` compute. Evaluation never reads the lossy training tier.
States are trimmed to the frames S3PRL's Featurizer keeps (round(samples / downsample rate))."""

import atexit
import hashlib
import io
import os
import queue
import socket
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Callable, ClassVar, Dict, List, Optional

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from s3prl_adapters.errors import UserError
from s3prl_adapters.method.backbone import hash_tensors


@dataclass
class FeatureCacheConfig:
    """The `feature_cache:` section of a downstream config."""

    SECTION: ClassVar[str] = "feature_cache"

    dir: Optional[str] = None
    """Folder for the on-disk tier (one sub-folder per backbone fingerprint); None = memory only."""

    max_memory_mb: float = 2048.0
    """Memory tier bound; least recently used entries leave memory first (they stay on disk)."""

    max_disk_mb: float = 20480.0
    """Bound of everything under `dir` (all backbones), as counted when a run starts plus what it
    writes; once reached, new entries stay in memory only (nothing is deleted). Runs sharing the
    folder at the same time each count only their own writes."""

    @classmethod
    def from_config(cls, section) -> "FeatureCacheConfig":
        name = cls.SECTION
        if section is True or section == {}:
            return cls()
        if not isinstance(section, dict):
            raise UserError(f"config {name}: expected a mapping such as {{dir: PATH}}, got {section!r}")
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(section) - set(valid))
        if unknown:
            raise UserError(f"config {name}: unknown key(s) {unknown}; valid keys: {valid}")
        cfg = cls(**section)
        for key in ("max_memory_mb", "max_disk_mb"):
            value = getattr(cfg, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise UserError(f"config {name}: '{key}' must be a number >= 0, got {value!r}")
        if cfg.dir is not None and not isinstance(cfg.dir, str):
            raise UserError(f"config {name}: 'dir' must be a path, got {cfg.dir!r}")
        return cfg


@dataclass
class PrefixCacheConfig(FeatureCacheConfig):
    """The `prefix_cache:` section of a downstream config: a cache of the frozen prefix (the CNN and
    projection, method/prefix.py) for every adapter method; same keys and bounds as `feature_cache`."""

    SECTION: ClassVar[str] = "prefix_cache"


def module_fingerprint(module: nn.Module, *extra: str) -> str:
    """Hash of every parameter and buffer (names, shapes, values) plus `extra` settings."""
    return hash_tensors(list(module.named_parameters()) + list(module.named_buffers()), *extra)


def waveform_key(wav: torch.Tensor) -> str:
    return hashlib.blake2b(wav.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest()


def _nbytes(states: List[torch.Tensor]) -> int:
    return sum(s.numel() * s.element_size() for s in states)


def corpus_bytes(hours: float, states: int, width: int, downsample_rate: int) -> int:
    """What caching `hours` of audio takes: frames/s x states per frame x width x 2 bytes (float16)."""
    return int(hours * 3600 * (16000 / downsample_rate) * states * width * 2)


_TMP_MARK = ".pt.tmp-"


def _tmp_name(path: str) -> str:
    return f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"


def _is_stale_tmp(name: str) -> bool:
    """A temporary entry of a run on this host that no longer exists (a killed run's leftover)."""
    host, _, pid = name.split(_TMP_MARK, 1)[1].rpartition("-")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class FeatureCache:
    """Per-utterance states (two tiers, module docstring): a bounded LRU in memory over a bounded
    folder on disk.

    Disk writes go through a bounded queue to one background thread (temp file + rename), so the
    training loop does not wait on the disk; it waits only when `_MAX_PENDING` entries are queued.
    Entries still queued are served from the queue. `flush()` waits for every queued write."""

    _MAX_PENDING = 64

    def __init__(self, config: FeatureCacheConfig, fingerprint: str, downsample_rate: int):
        self.config = config
        self.fingerprint = fingerprint
        self.downsample_rate = downsample_rate
        self._memory: "OrderedDict[str, List[torch.Tensor]]" = OrderedDict()
        self._memory_bytes = 0
        self.folder = os.path.join(config.dir, fingerprint) if config.dir else None
        self._disk_bytes = 0
        self._lock = threading.Lock()
        self._pending: Dict[str, List[torch.Tensor]] = {}
        self._pending_bytes = 0
        self._queue: "queue.Queue" = queue.Queue(maxsize=self._MAX_PENDING)
        self._writer: Optional[threading.Thread] = None
        self.disk_error: Optional[str] = None
        self.removed_leftovers = 0
        if self.folder:
            os.makedirs(self.folder, exist_ok=True)
            self._disk_bytes = self._count_and_clean(config.dir)
        self.hits = self.misses = 0
        self.exact = False
        """Serve the exact tier (the runner sets it while it evaluates); otherwise the training tier."""

    def _count_and_clean(self, root: str) -> int:
        """Bytes of the entries under `root` (every backbone); removes killed runs' temporary files."""
        total = 0
        for d, _, files in os.walk(root):
            for name in files:
                path = os.path.join(d, name)
                if name.endswith(".pt"):
                    total += os.path.getsize(path)
                elif _TMP_MARK in name and _is_stale_tmp(name):
                    try:
                        os.remove(path)
                        self.removed_leftovers += 1
                    except FileNotFoundError:  # another run cleaned it first
                        pass
        return total

    def _path(self, key: str) -> str:
        return os.path.join(self.folder, key + ".pt")

    def get(self, key: str) -> Optional[List[torch.Tensor]]:
        states = self._memory.get(key)
        if states is not None:
            self._memory.move_to_end(key)
            return states
        with self._lock:
            states = self._pending.get(key)
        if states is not None:
            return states
        if self.folder and os.path.exists(self._path(key)):
            try:
                states = torch.load(self._path(key), map_location="cpu", weights_only=True)
            except Exception:  # a damaged entry is a miss; it is rewritten
                return None
            self._remember(key, states)
            return states
        return None

    def key(self, wav: torch.Tensor) -> str:
        """The entry's name: the waveform's hash, in the tier `exact` selects."""
        return waveform_key(wav) + (".exact" if self.exact else "")

    def put(self, key: str, states: List[torch.Tensor]) -> List[torch.Tensor]:
        """Store one utterance's states (float16, or as computed in the exact tier); returns what is
        stored, which is what every later read returns."""
        states = [s.detach().to("cpu", s.dtype if self.exact else torch.float16, copy=True).contiguous()
                  for s in states]
        self._remember(key, states)
        if not self.folder or self.disk_error:
            return states
        buffer = io.BytesIO()  # serialised here (a memory copy), so the bound counts exact file sizes
        torch.save(states, buffer)
        data = buffer.getvalue()
        size = len(data)
        with self._lock:
            if key in self._pending or self._disk_bytes + self._pending_bytes + size > self.config.max_disk_mb * 2**20:
                return states
            self._pending[key] = states
            self._pending_bytes += size
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_queued, name="feature-cache-writer", daemon=True)
            self._writer.start()
            atexit.register(self.flush)  # queued entries reach the disk before the interpreter exits
        self._queue.put((key, data))  # blocks only while _MAX_PENDING writes are queued
        return states

    def _write_queued(self) -> None:
        while True:
            key, data = self._queue.get()
            path = self._path(key)
            tmp = _tmp_name(path)
            written = 0
            try:
                if self.disk_error is None:
                    with open(tmp, "wb") as f:
                        f.write(data)
                    os.replace(tmp, path)  # readers never see a half-written entry
                    written = len(data)
            except OSError as e:  # a full or vanished disk: keep training from memory
                self.disk_error = f"{type(e).__name__}: {e}"
                print(f"[s3prl-adapters] feature cache: disk writes stopped ({self.disk_error})", file=sys.stderr)
                if os.path.exists(tmp):
                    os.remove(tmp)
            finally:
                with self._lock:
                    self._pending.pop(key, None)
                    self._pending_bytes -= len(data)
                    self._disk_bytes += written
                self._queue.task_done()

    def flush(self) -> None:
        """Wait until every queued entry is on disk (or given up on)."""
        if self._writer is not None:
            self._queue.join()

    def _remember(self, key: str, states: List[torch.Tensor]) -> None:
        if key in self._memory:
            return
        self._memory[key] = states
        self._memory_bytes += _nbytes(states)
        while self._memory_bytes > self.config.max_memory_mb * 2**20 and self._memory:
            _, evicted = self._memory.popitem(last=False)
            self._memory_bytes -= _nbytes(evicted)

    def served(self, wav: torch.Tensor, compute: Callable[[], List[torch.Tensor]]) -> List[torch.Tensor]:
        """One utterance's entry: read, or computed by `compute()` (the utterance alone) and stored."""
        key = self.key(wav)
        states = self.get(key)
        if states is None:
            self.misses += 1
            return self.put(key, compute())
        self.hits += 1
        return states

    def states(self, wavs: List[torch.Tensor],
               compute: Callable[[List[torch.Tensor]], List[torch.Tensor]]) -> List[torch.Tensor]:
        """`compute(wavs)` -> padded (B, T, C) states, served from the cache: each utterance's entry, a miss
        computed alone (`compute([wav])`), trimmed to the frames the Featurizer keeps; float32 out."""
        def alone(wav):
            computed = compute([wav])
            frames = min(computed[0].size(1), round(len(wav) / self.downsample_rate))
            return [s[0, :frames] for s in computed]

        rows = [self.served(wav, lambda wav=wav: alone(wav)) for wav in wavs]
        device = wavs[0].device
        return [pad_sequence([r[n].to(device, torch.float32) for r in rows], batch_first=True)
                for n in range(len(rows[0]))]


def attach_feature_cache(expert, config: FeatureCacheConfig) -> FeatureCache:
    """Serve the layer outputs an adapter expert's L-adapters read from a FeatureCache (L-only methods)."""
    cfg = expert.adapter_config
    if not expert.backbone_is_frozen_and_deterministic:
        raise UserError(
            f"config feature_cache: upstream method '{cfg.method}' does not run a frozen, "
            f"deterministic backbone (it needs L-adapters only, train_layer_norms: false, backbone_dropout: false); "
            f"use wavlm_ladapter_only or stock wavlm_local without -f, or drop the feature_cache section"
        )
    fingerprint = module_fingerprint(expert.model, f"layers={cfg.l_adapter_layers}", f"autocast={cfg.autocast}")
    cache = FeatureCache(config, fingerprint, expert.get_downsample_rates("hidden_states"))
    expert.state_source = cache.states
    return cache


def attach_prefix_cache(expert, config: PrefixCacheConfig) -> FeatureCache:
    """Serve the frozen prefix of an adapter expert's backbone from a cache: after the first epoch the
    CNN no longer runs. Every adapter method: nothing before the encoder trains in any of them."""
    model = expert.model
    trained = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("encoder.")]
    if trained:  # nothing of ours trains there; a user override that does would make the cache stale
        raise UserError(f"config prefix_cache: upstream parameter {trained[0]} trains, so the prefix changes every "
                        f"step; drop the prefix_cache section")
    prefix = [(n, t) for n, t in list(model.named_parameters()) + list(model.named_buffers())
              if not n.startswith("encoder.")]
    fingerprint = hash_tensors(prefix, "prefix=features", f"autocast={expert.adapter_config.autocast}")
    cache = PrefixStore(config, fingerprint, expert.get_downsample_rates("hidden_states"))
    expert.use_prefix_store(cache)
    return cache


class PrefixStore(FeatureCache):
    """A FeatureCache of one tensor per utterance: its prefix frames (method/prefix.py)."""

    def rows(self, wavs: List[torch.Tensor], compute: Callable[[int], torch.Tensor]) -> List[torch.Tensor]:
        """Every utterance's prefix (T, C), `compute(i)` giving utterance i's alone where it is missing:
        float32 from the training tier, the stored dtype from the exact one."""
        rows = [self.served(wav, lambda i=i: [compute(i)])[0] for i, wav in enumerate(wavs)]
        return rows if self.exact else [r.float() for r in rows]


class CachedUpstream(nn.Module):
    """A frozen S3PRL upstream (run by the runner under no_grad, in eval mode) behind the cache."""

    def __init__(self, upstream: nn.Module, config: FeatureCacheConfig):
        super().__init__()
        self.upstream = upstream
        rate = upstream.get_downsample_rates("hidden_states")
        self.cache = FeatureCache(config, module_fingerprint(upstream, type(upstream).__module__), rate)

    def get_downsample_rates(self, key: str) -> int:
        return self.upstream.get_downsample_rates(key)

    def forward(self, wavs: List[torch.Tensor]):
        if self.training or torch.is_grad_enabled():
            raise RuntimeError("the feature cache serves a frozen upstream only (eval mode, no_grad)")
        hidden_states = self.cache.states(wavs, lambda w: list(self.upstream(w)["hidden_states"]))
        return {"hidden_states": hidden_states, "last_hidden_state": hidden_states[-1]}

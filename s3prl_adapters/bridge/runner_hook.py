"""The runner hook: S3PRL's Runner, made to train exactly the adapters of an adapter upstream.

With an s3prl-adapters upstream the upstream always trains (with or without `-f`: forgetting it
must not silently train nothing), and the optimizer receives only parameters that require grad,
in one group per kind (head, featurizer, l_adapter, e_adapter, layer_norm) with the learning
rates of the downstream config's `adapter_optimizer.<upstream>` section. Stock upstreams go
through S3PRL's Runner untouched."""

import sys
from collections import OrderedDict
from typing import List, Optional

import torch
from torch import nn

from s3prl.downstream.runner import Runner

from s3prl_adapters.bridge import compat
from s3prl_adapters.errors import UserError
from s3prl_adapters.bridge.feature_cache import (CachedUpstream, FeatureCache, FeatureCacheConfig, PrefixCacheConfig,
                                                 attach_feature_cache, attach_prefix_cache, corpus_bytes)
from s3prl_adapters.bridge.hubconf import UPSTREAMS
from s3prl_adapters.bridge.optimizer_groups import (DROPOUT_SECTION, GROUPS, STOCK_GROUPS, group_learning_rates,
                                                   optimizer_section)
from s3prl_adapters.bridge.preflight import check_corpus
from s3prl_adapters.method.prefix import DESCRIPTION as PREFIX_DESCRIPTION
from s3prl_adapters.tasks import find_task

EVALUATION_GATE = None
"""Set by a supervising process (tools/launch.py, for `tune`): called with (split, global_step) after
every evaluation during training; it returns when the run may go on."""


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def upstream_group(name: str) -> str:
    """Which learning-rate group an upstream parameter belongs to, from its qualified name."""
    if name.startswith("l_adapters."):
        return "l_adapter"
    if ".e_adapter." in name:
        return "e_adapter"
    if ".lora_A." in name or ".lora_B." in name:
        return "lora"
    if name.endswith(("self_attn_layer_norm.weight", "self_attn_layer_norm.bias",
                      "final_layer_norm.weight", "final_layer_norm.bias")):
        return "layer_norm"
    raise ValueError(f"no learning-rate group for trainable upstream parameter '{name}'")


def _optimizer_class(optimizer_config: dict):
    name = optimizer_config["name"]
    cls_name = optimizer_config.get("torch_optim_name") if name == "TorchOptim" else name
    if cls_name not in ("Adam", "AdamW", "SGD", "RAdam") or not hasattr(torch.optim, cls_name):
        raise UserError(
            f"config optimizer: '{name}' is not supported with adapter upstreams; "
            f"use name: TorchOptim with torch_optim_name Adam, AdamW, RAdam or SGD"
        )
    kwargs = {k: v for k, v in optimizer_config.items() if k not in ("name", "torch_optim_name", "lr")}
    return getattr(torch.optim, cls_name), kwargs


def build_grouped_optimizer(upstream: nn.Module, featurizer: nn.Module, downstream: nn.Module,
                            config: dict, upstream_name: str, stock: bool = False) -> torch.optim.Optimizer:
    """One optimizer group per kind of parameter, each with its rate from `adapter_optimizer.<upstream>`.
    `stock`: a fine-tuned stock upstream, whose every trainable parameter is in the 'encoder' group."""
    groups = STOCK_GROUPS if stock else GROUPS
    lrs = group_learning_rates(config, upstream_name, bool(getattr(upstream, "l_adapters", None)), groups)
    params = OrderedDict((g, []) for g in groups)
    for name, p in upstream.named_parameters():
        if p.requires_grad:
            params["encoder" if stock else upstream_group(name)].append(p)
    params["featurizer"] += [p for p in featurizer.parameters() if p.requires_grad]
    params["head"] += [p for p in downstream.parameters() if p.requires_grad]
    groups = [{"params": ps, "lr": lrs[g], "name": g} for g, ps in params.items() if ps]
    cls, kwargs = _optimizer_class(config["optimizer"])
    return cls(groups, **kwargs)


def describe_groups(optimizer: torch.optim.Optimizer) -> str:
    return ", ".join(
        f"{g['name']} {sum(p.numel() for p in g['params']):,} @ {g['lr']:g}" for g in optimizer.param_groups
    )


def _size(n_bytes: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.3g} {unit}"
    return f"{n_bytes / 2**10:.3g} KiB"


class AdapterRunner(Runner):
    """S3PRL's Runner with the adapter hook (for adapter upstreams) and the compat workarounds
    that concern every upstream (config paths, CPU-only recipes, empty train splits)."""

    def __init__(self, args, config):
        if not getattr(args, "past_exp", None) and getattr(args, "config", None):
            compat.relative_config_paths_resolve_against_cwd(config, args.config)
        compat.install_task_workarounds(args.downstream)
        self.corpus_facts = check_corpus(args.downstream, config)
        cache_config = self._feature_cache_config(args, config)
        prefix_config = self._prefix_cache_config(args, config)
        super().__init__(args, config)
        self._apply_backbone_dropout()
        self.feature_cache = self._attach_feature_cache(cache_config) if cache_config else None
        self.prefix_cache = self._attach_prefix_cache(prefix_config) if prefix_config else None
        if cache_config or prefix_config:
            self._note_random_train_crop()
        self._exact_evaluation()

    def _exact_evaluation(self) -> None:
        """`runner.exact_evaluation` (default true): dev and test batches give every file the answer it gets
        scored alone (each utterance's CNN alone, the encoder batched with its mask, each utterance's own
        frames), for WavLM upstreams, ours and S3PRL's; false is S3PRL's padded evaluation."""
        from s3prl.upstream.wavlm.WavLM import WavLM

        from s3prl_adapters.method.backbone import conv_layers
        from s3prl_adapters.method.expert import AdapterWavLMExpert

        setting = self.config["runner"].get("exact_evaluation", True)
        if not isinstance(setting, bool):
            raise UserError(f"config runner.exact_evaluation: expected true or false, got {setting!r}")
        upstream = _unwrap(self.upstream.model)
        upstream = upstream.upstream if isinstance(upstream, CachedUpstream) else upstream
        wavlm = getattr(upstream, "model", None)
        if not isinstance(wavlm, WavLM):
            return  # another upstream family: S3PRL's evaluation as it is
        if isinstance(upstream, AdapterWavLMExpert):
            upstream.exact_evaluation = setting
        elif setting:
            compat.wavlm_evaluation_depends_on_batch_mates(wavlm)
        if setting:
            compat.featurizer_keeps_a_padded_frame_per_utterance(_unwrap(self.featurizer.model), conv_layers(wavlm.cfg))
        if setting and self.args.downstream == "sv_voxceleb1":
            compat.sv_pooling_counts_a_padded_frame(_unwrap(self.downstream.model))

    def _apply_backbone_dropout(self) -> None:
        """`backbone_dropout: {<upstream>: true|false}` in the downstream config: whether the backbone's own
        dropout applies while it trains. For an adapter upstream it sets the `-g` setting of the same
        name (the config wins: it is what `s3prl-adapters tune` searches); for a stock upstream trained
        with `-f`, false keeps the upstream in eval mode while training (no dropout, gradients still
        flow); a frozen stock upstream runs in eval mode anyway."""
        setting = (self.config.get(DROPOUT_SECTION) or {}).get(self.args.upstream)
        if setting is None:
            return
        if not isinstance(setting, bool):
            raise UserError(f"config {DROPOUT_SECTION}.{self.args.upstream}: expected true or false, got {setting!r}")
        upstream = _unwrap(self.upstream.model)
        if self.uses_adapter_upstream:
            upstream.adapter_config.backbone_dropout = setting
            upstream.train(upstream.training)
        elif self.args.upstream_trainable and not setting:
            train = upstream.train
            upstream.train = lambda mode=True: train(False)  # S3PRL calls train() before every epoch and eval
            upstream.train(False)
        else:
            return
        print(f"[s3prl-adapters] backbone dropout {'on' if setting else 'off'} while training "
              f"(config {DROPOUT_SECTION}.{self.args.upstream})", file=sys.stderr)

    @staticmethod
    def _feature_cache_config(args, config) -> Optional[FeatureCacheConfig]:
        section = config.get("feature_cache")
        if section is None or section is False:
            return None
        cache_config = FeatureCacheConfig.from_config(section)
        if args.upstream not in UPSTREAMS and args.upstream_trainable:
            raise UserError(f"config feature_cache: -f trains upstream {args.upstream}, so its states change every "
                            f"step; drop -f (frozen weighted sum) or the feature_cache section")
        return cache_config

    @staticmethod
    def _prefix_cache_config(args, config) -> Optional[PrefixCacheConfig]:
        section = config.get("prefix_cache")
        if section is None or section is False:
            return None
        if args.upstream not in UPSTREAMS:
            raise UserError(f"config prefix_cache: serves the adapter upstreams ({', '.join(sorted(UPSTREAMS))}), not "
                            f"{args.upstream}; for a frozen stock upstream use feature_cache")
        return PrefixCacheConfig.from_config(section)

    def _note_random_train_crop(self):
        task = find_task(self.args.downstream, self.config)
        crop = task and task.random_train_crop
        if crop and self.config.get("downstream_expert", {}).get("datarc", {}).get(crop):
            print(f"[s3prl-adapters] cache: {task.name} crops a random datarc.{crop} window of every training file "
                  f"each epoch, so training batches miss the cache; only evaluation reuses it", file=sys.stderr)

    def _attach_prefix_cache(self, cache_config: PrefixCacheConfig) -> FeatureCache:
        """After the Featurizer's probe, like the feature cache."""
        cache = attach_prefix_cache(_unwrap(self.upstream.model), cache_config)
        print(f"[s3prl-adapters] prefix cache: {cache.folder or 'memory only'} (memory {cache_config.max_memory_mb:g} "
              f"MB, disk {cache_config.max_disk_mb:g} MB); cached: {PREFIX_DESCRIPTION}", file=sys.stderr)
        print(f"[s3prl-adapters] prefix cache: {self._cache_size_note(cache_config, cache, states=1)}", file=sys.stderr)
        return cache

    def _attach_feature_cache(self, cache_config: FeatureCacheConfig) -> FeatureCache:
        """After the Featurizer has probed the upstream, so its random probe is not cached."""
        upstream = _unwrap(self.upstream.model)
        if self.uses_adapter_upstream:
            cache = attach_feature_cache(upstream, cache_config)
        else:
            self.upstream.model = CachedUpstream(upstream, cache_config)
            cache = self.upstream.model.cache
        print(f"[s3prl-adapters] feature cache: {cache.folder or 'memory only'} "
              f"(memory {cache_config.max_memory_mb:g} MB, disk {cache_config.max_disk_mb:g} MB)"
              + (f"; removed {cache.removed_leftovers} temporary file(s) of killed runs" if cache.removed_leftovers else ""),
              file=sys.stderr)
        print(f"[s3prl-adapters] feature cache: {self._cache_size_note(cache_config, cache)}", file=sys.stderr)
        return cache

    def _cache_size_note(self, cache_config: FeatureCacheConfig, cache: FeatureCache, states: int = None) -> str:
        """Whether the corpus fits the bounds: hours (from the preflight) x frames/s x states x width x 2 B."""
        hours = (self.corpus_facts or {}).get("hours")
        if hours is None:
            return "corpus size unknown (no preflight for this task, or preflight: false), so is whether it fits"
        upstream = _unwrap(self.upstream.model)
        if self.uses_adapter_upstream:
            states = states or len(upstream.adapter_config.l_adapter_layers)
            width = upstream.model.cfg.encoder_embed_dim
        else:
            featurizer = _unwrap(self.featurizer.model)
            states, width = getattr(featurizer, "layer_num", 1), featurizer.output_dim
        need = corpus_bytes(hours, states, width, cache.downsample_rate)
        fits = lambda mb: "fits" if need <= mb * 2**20 else "does NOT fit (later epochs recompute what is left out)"  # noqa: E731
        return (f"the corpus ({hours:.3g} h listed) needs ~{_size(need)} ({states} states x {width} x float16 at "
                f"{16000 / cache.downsample_rate:g} frames/s): disk bound {_size(cache_config.max_disk_mb * 2**20)} "
                f"{fits(cache_config.max_disk_mb)}; memory bound {_size(cache_config.max_memory_mb * 2**20)} "
                f"{fits(cache_config.max_memory_mb)}")

    @property
    def uses_adapter_upstream(self) -> bool:
        return self.args.upstream in UPSTREAMS

    def _get_upstream(self):
        if self.uses_adapter_upstream and not self.args.upstream_trainable:
            # Without this S3PRL runs the upstream under no_grad and never optimizes it.
            print(f"[s3prl-adapters] {self.args.upstream}: adapters train (backbone frozen); -f is implied",
                  file=sys.stderr)
            self.args.upstream_trainable = True
        return super()._get_upstream()

    def _get_optimizer(self, model_params: List[nn.Module]):
        optimizer = self._build_optimizer(model_params)
        compat.non_leader_ranks_never_finish(self, optimizer)
        return optimizer

    def _build_optimizer(self, model_params: List[nn.Module]):
        stock_groups = (not self.uses_adapter_upstream and self.args.upstream_trainable
                        and optimizer_section(self.config, self.args.upstream))
        if not self.uses_adapter_upstream and not stock_groups:
            return super()._get_optimizer(model_params)  # S3PRL's own: one rate for everything
        optimizer = build_grouped_optimizer(
            _unwrap(self.upstream.model), _unwrap(self.featurizer.model), _unwrap(self.downstream.model),
            self.config, self.args.upstream, stock=bool(stock_groups),
        )
        print(f"[s3prl-adapters] optimizer groups: {describe_groups(optimizer)}", file=sys.stderr)
        self._load_weight(optimizer, "Optimizer")
        return optimizer

    def evaluate(self, split=None, logger=None, global_step=0):
        """S3PRL evaluates on rank 0 only, but through the DDP wrappers, whose forward broadcasts
        buffers to ranks that are not there (gloo: 'Connection closed by peer'). Evaluate with the
        wrapped modules themselves; the weights are the same object. The caches serve their exact
        tier meanwhile: evaluation never reads the lossy training entries."""
        wrapped = [(e, e.model) for e in self.all_entries if isinstance(e.model, nn.parallel.DistributedDataParallel)]
        caches = [c for c in (self.feature_cache, self.prefix_cache) if c is not None]
        for entry, ddp in wrapped:
            entry.model = ddp.module
        for cache in caches:
            cache.exact = True
        try:
            saved = super().evaluate(split, logger, global_step)
        finally:
            for entry, ddp in wrapped:
                entry.model = ddp
            for cache in caches:
                cache.exact = False
        if EVALUATION_GATE is not None and global_step:
            EVALUATION_GATE(split, global_step)
        return saved

    def train(self):
        self._refuse_empty_train_split()
        compat.resume_restarts_the_interrupted_epoch(self)
        upstream = _unwrap(self.upstream.model)
        upstream_fp16 = self.uses_adapter_upstream and upstream.adapter_config.autocast == "float16"
        if compat.fp16_training_is_unscaled_or_forgets_its_scale(self, upstream_fp16):
            print("[s3prl-adapters] fp16: loss scaling on (torch.amp.GradScaler, state kept in checkpoints)",
                  file=sys.stderr)
        skipped = compat.cuda_out_of_memory_skips_batches_silently(self)
        super().train()
        self._report_skipped_batches(skipped)
        for name, cache in (("feature", self.feature_cache), ("prefix", self.prefix_cache)):
            if cache is not None:
                cache.flush()
                print(f"[s3prl-adapters] {name} cache: {cache.hits} hits, {cache.misses} misses", file=sys.stderr)
        self._note_missing_best_checkpoint()

    def _report_skipped_batches(self, skipped) -> None:
        """How many batches out-of-memory skipped in this process (it says so when any were), recorded in
        EXPDIR/skipped_batches.json, added to what earlier processes of the run (before a resume) skipped."""
        import json
        import os

        from s3prl.utility.helper import is_leader_process

        if not is_leader_process():
            return
        path = os.path.join(self.args.expdir, compat.SKIPPED_BATCHES_FILE)
        record = skipped.summary()
        if os.path.exists(path):
            with open(path) as f:
                before = json.load(f)
            record["skipped_batches"] += before.get("skipped_batches", 0)
            record["skipped_at_steps"] = before.get("skipped_at_steps", []) + record["skipped_at_steps"]
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.replace(path + ".tmp", path)
        if record["skipped_batches"]:
            print(f"[s3prl-adapters] {record['skipped_batches']} training batch(es) ran out of GPU memory and were "
                  f"skipped (steps {record['skipped_at_steps'][:10]}); the run's limit is runner.max_skipped_share "
                  f"= {record['max_skipped_share']:g} of its batches", file=sys.stderr)

    def _refuse_empty_train_split(self):
        """S3PRL's loop `while step < total_steps` rebuilds the train loader each epoch, so an empty
        one spins forever without a word; stop with the reason instead."""
        split = self.config["runner"].get("train_dataloader", "train")
        try:
            batches = len(self.downstream.model.get_dataloader(split))
        except ValueError as e:  # a shuffling DataLoader refuses an empty dataset outright
            if "num_samples=0" not in str(e):
                raise
            batches = 0
        if batches == 0:
            task = find_task(self.args.downstream, self.config)
            raise UserError(
                f"-d {self.args.downstream}: the '{split}' split yields no training batch; "
                f"check the corpus root and its lists" + (task.empty_train_hint if task else "")
            )

    def _note_missing_best_checkpoint(self):
        from s3prl_adapters.tasks.base import best_checkpoints

        if self.config["runner"].get("eval_dataloaders") and not best_checkpoints(self.args.expdir):
            print(f"[s3prl-adapters] no *-best.ckpt in {self.args.expdir}: the recipe's best rule never fired "
                  f"(e.g. dev accuracy stayed 0 or WER never fell below 100); evaluate the last states-*.ckpt",
                  file=sys.stderr)

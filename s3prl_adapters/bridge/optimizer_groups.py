"""The learning-rate groups of a run and where the downstream config sets them (no torch, no S3PRL:
the runner hook, `tune` and the benchmark read the same rules).

`adapter_optimizer.<upstream>: {group: rate}` gives each group its rate; a group it leaves out falls
back to `optimizer.lr` (the Featurizer's weights: to the L-adapter rate where there are L-adapters,
else the head's). `backbone_dropout.<upstream>: bool` says whether the backbone's dropout applies
while it trains."""

from typing import Dict

from s3prl_adapters.errors import UserError

GROUPS = ("head", "featurizer", "l_adapter", "e_adapter", "layer_norm", "lora")
"""The groups of an adapter upstream's run."""
STOCK_GROUPS = ("head", "featurizer", "encoder")
"""Fine-tuning a stock upstream (-f) with the paper's two rates: the head, and the whole upstream ('encoder')."""
DROPOUT_SECTION = "backbone_dropout"
"""Downstream config section: {upstream: bool}, whether the backbone's dropout applies while training."""


def group_learning_rates(config: dict, upstream: str, has_l_adapters: bool, groups=GROUPS) -> Dict[str, float]:
    """Per-group learning rates; groups the config leaves out fall back to `optimizer.lr`."""
    default = float(config["optimizer"]["lr"])
    section = optimizer_section(config, upstream)
    unknown = sorted(set(section) - set(groups))
    if unknown:
        raise UserError(f"config adapter_optimizer.{upstream}: unknown group(s) {unknown}; valid: {list(groups)}")
    lrs = {g: float(section.get(g, default)) for g in groups if g != "featurizer"}
    lrs["featurizer"] = float(section.get("featurizer", lrs["l_adapter"] if has_l_adapters else lrs["head"]))
    return lrs


def optimizer_section(config: dict, upstream: str) -> dict:
    return (config.get("adapter_optimizer") or {}).get(upstream) or {}

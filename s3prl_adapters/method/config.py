"""Adapter settings: which method, which adapters, their sizes, and what trains besides them.

One dataclass per run, built from the method's defaults (method.md) and overridden by the
optional `-g` YAML of S3PRL's `run_downstream.py`."""

from dataclasses import dataclass, fields, replace
from typing import List, Optional, Union

import yaml

from s3prl_adapters.errors import UserError

# Upstream name -> method. The stock baselines (wavlm_local with and without -f) are S3PRL's own.
METHODS = {
    "wavlm_ladapter": "proposed",        # L-adapters + E-adapters (FFN, layers 0..L-2) + layer LNs
    "wavlm_ladapter_only": "l_only",     # L-adapters (+ layer LNs if train_layer_norms)
    "wavlm_eadapter": "e_only",          # E-adapters after every FFN + layer LNs
    "wavlm_houlsby": "conventional",     # E-adapters after MHSA and after FFN, every layer + layer LNs
    "wavlm_lora": "lora",                # LoRA (HF PEFT) on attention q/v of every layer (optionally the FFN)
}

ACTIVATIONS = ("gelu", "relu")
CHECKPOINT_MODES = ("full", "selective", "ffn_output")
AUTOCAST_DTYPES = ("none", "bfloat16", "float16")
HIDDEN_STATES = ("method", "backbone")


@dataclass
class AdapterConfig:
    """Everything that decides the adapter-augmented WavLM's shape and which parameters train."""

    method: str
    """One of METHODS' values; set by the upstream name, not by the YAML."""

    e_adapter_dim: int = 256
    """Bottleneck width of every E-adapter (down-projection output)."""

    l_adapter_dim: int = 512
    """Output width of every L-adapter; the Featurizer's weighted sum and the head see this width."""

    activation: str = "gelu"
    """Non-linearity inside E- and L-adapters: 'gelu' (paper's ASR/IC) or 'relu' (ASV/ER)."""

    e_adapter_layers: Optional[List[int]] = None
    """Encoder layers (0-based) that get FFN E-adapters. None = method default: all but the top
    layer for the proposed method, every layer for E-only and conventional."""

    l_adapter_layers: Optional[List[int]] = None
    """Encoder layers whose outputs feed an L-adapter. None = every layer."""

    attention_adapters: Optional[bool] = None
    """Also put an E-adapter after self-attention (the conventional adapter). None = method default."""

    train_layer_norms: Optional[bool] = None
    """Train both LayerNorms of every encoder layer. None = method default: on, except L-only
    (off, matching the published 4,737,036; the reference code trains them: 4,773,900)."""

    init_std: float = 1e-3
    """Std of the normal init of adapter Linear weights (biases start at 0): near-identity E-adapters."""

    layer_norm_eps: float = 1e-5
    """Epsilon of the LayerNorm inside each adapter."""

    backbone_dropout: Optional[bool] = None
    """Apply WavLM's own dropout inside the backbone while training. None = method default: off
    when nothing inside the backbone trains (L-only: the backbone then runs exactly as SUPERB's
    frozen upstream, in eval mode, which the feature cache needs), on otherwise."""

    checkpoint_activations: Union[bool, str] = False
    """Activation checkpointing of every encoder layer (torch.utils.checkpoint), for methods that
    train inside the backbone (no effect otherwise): `true` (or 'full') keeps only each layer's
    input and recomputes the whole layer in backward; 'selective' (torch's selective-checkpoint
    policy) also keeps the outputs of the FFN's two products (fc1, fc2: two thirds of the layer's
    matmul work) and recomputes the attention, whose T x T scores and probabilities hold most of the
    memory, and the element-wise and normalisation ops: most of the saving for a part of the cost;
    'ffn_output' keeps only fc2's output besides the input: of all the layer's products it saves the
    most work per byte kept (4 d^2 per frame for one width, fc1 one quarter of that), so it costs
    one activation width per layer more than 'full' and recomputes a third less."""

    lora_rank: Optional[int] = None
    """LoRA rank (wavlm_lora). None = the rank whose trainable count is closest to the proposed
    method's (L + E adapters with this config's sizes) on the same backbone."""

    lora_alpha: Optional[float] = None
    """LoRA's scaling numerator: the update B·A is scaled by lora_alpha / lora_rank. None = the rank (scaling 1)."""

    lora_ffn: bool = False
    """Also put LoRA on the feed-forward weights (fc1, fc2) of every layer, not only on attention q and v."""

    autocast: str = "none"
    """Run the upstream's frozen encoder layers under torch.autocast while training: 'none', 'bfloat16'
    (CPU or GPU) or 'float16' (GPU). WavLM's CNN stays float32, so do the adapters unless
    `adapters_in_float32` is false; hidden states leave the upstream as float32. Evaluation (eval
    mode) runs in float32, as `predict` does."""

    adapters_in_float32: bool = True
    """Under autocast, run the E-adapters with their residual add and the L-adapters in float32 (the
    backbone's matmuls stay in the reduced precision). Measured: with everything in bfloat16 the
    proposed method's stand-in ASR and ASV degrade (README, cost section); false restores that."""

    hidden_states: str = "method"
    """What the upstream hands S3PRL's Featurizer: 'method' (the L-adapters' outputs where the method has
    them, else the backbone's L+1 states) or 'backbone' (the backbone's L+1 states, with any E-adapters or
    LoRA inside, as stock wavlm_local returns them): for tasks without training (QbE), whose layers
    must mean something before any adapter has trained."""

    @property
    def has_l_adapters(self) -> bool:
        return self.method in ("proposed", "l_only")

    @property
    def has_e_adapters(self) -> bool:
        return self.method in ("proposed", "e_only", "conventional")

    @property
    def has_lora(self) -> bool:
        return self.method == "lora"

    def resolved(self, num_layers: int) -> "AdapterConfig":
        """Fill the method defaults that depend on the backbone depth and check every index."""
        cfg = replace(self)
        if cfg.e_adapter_layers is None:
            if not cfg.has_e_adapters:
                cfg.e_adapter_layers = []
            elif cfg.method == "proposed":
                cfg.e_adapter_layers = list(range(num_layers - 1))
            else:
                cfg.e_adapter_layers = list(range(num_layers))
        if cfg.l_adapter_layers is None:
            cfg.l_adapter_layers = list(range(num_layers)) if cfg.has_l_adapters else []
        if cfg.attention_adapters is None:
            cfg.attention_adapters = cfg.method == "conventional"
        if cfg.train_layer_norms is None:
            cfg.train_layer_norms = cfg.method not in ("l_only", "lora")
        if cfg.backbone_dropout is None:
            cfg.backbone_dropout = cfg.has_e_adapters or cfg.has_lora or cfg.train_layer_norms
        if (cfg.lora_rank is not None or cfg.lora_alpha is not None or cfg.lora_ffn) and not cfg.has_lora:
            raise UserError(f"adapter config: lora_* settings given, but method '{cfg.method}' has no LoRA")
        if cfg.lora_rank is not None and cfg.lora_rank < 1:
            raise UserError(f"adapter config: 'lora_rank' must be >= 1, got {cfg.lora_rank}")
        for name in ("e_adapter_layers", "l_adapter_layers"):
            bad = [i for i in getattr(cfg, name) if not 0 <= i < num_layers]
            if bad:
                raise UserError(
                    f"adapter config: {name} {bad} out of range for a backbone with {num_layers} layers (0..{num_layers - 1})"
                )
        if cfg.e_adapter_layers and not cfg.has_e_adapters:
            raise UserError(f"adapter config: e_adapter_layers given, but method '{cfg.method}' has no E-adapters")
        if cfg.l_adapter_layers and not cfg.has_l_adapters:
            raise UserError(f"adapter config: l_adapter_layers given, but method '{cfg.method}' has no L-adapters")
        if cfg.has_l_adapters and not cfg.l_adapter_layers:
            raise UserError("adapter config: l_adapter_layers is empty; an L-adapter method needs at least one")
        return cfg


_USER_KEYS = [f.name for f in fields(AdapterConfig) if f.name != "method"]


def _check_type(key, value):
    expected = {
        "e_adapter_dim": int, "l_adapter_dim": int, "activation": str,
        "e_adapter_layers": list, "l_adapter_layers": list, "attention_adapters": bool,
        "train_layer_norms": bool, "init_std": float, "layer_norm_eps": float,
        "backbone_dropout": bool, "checkpoint_activations": (bool, str), "autocast": str, "adapters_in_float32": bool,
        "lora_rank": int, "lora_alpha": float, "lora_ffn": bool, "hidden_states": str,
    }[key]
    if value is None and key in ("e_adapter_layers", "l_adapter_layers", "attention_adapters", "train_layer_norms",
                                     "backbone_dropout", "lora_rank", "lora_alpha"):
        return value
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (expected is int and isinstance(value, bool)) or not isinstance(value, expected):
        names = " or ".join(e.__name__ for e in expected) if isinstance(expected, tuple) else expected.__name__
        raise UserError(f"adapter config: '{key}' must be {names}, got {type(value).__name__} {value!r}")
    if key == "checkpoint_activations" and isinstance(value, str) and value not in CHECKPOINT_MODES:
        raise UserError(f"adapter config: 'checkpoint_activations' must be true, false or one of "
                        f"{list(CHECKPOINT_MODES)}, got {value!r}")
    if expected is list and not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise UserError(f"adapter config: '{key}' must be a list of layer indices (ints), got {value!r}")
    return value


def adapter_config_from_dict(method: str, values: dict, source: str = "adapter config") -> AdapterConfig:
    """Validate user values (unknown keys, types, sizes) and merge them over the method defaults."""
    if method not in METHODS.values():
        raise UserError(f"unknown adapter method '{method}'; valid: {sorted(METHODS.values())}")
    if not isinstance(values, dict):
        raise UserError(f"{source}: expected a mapping of adapter settings, got {type(values).__name__}")
    unknown = sorted(set(values) - set(_USER_KEYS))
    if unknown:
        raise UserError(f"{source}: unknown key(s) {unknown}; valid keys: {_USER_KEYS}")
    checked = {k: _check_type(k, v) for k, v in values.items()}
    cfg = AdapterConfig(method=method, **checked)
    for key in ("e_adapter_dim", "l_adapter_dim"):
        if getattr(cfg, key) < 1:
            raise UserError(f"{source}: '{key}' must be >= 1, got {getattr(cfg, key)}")
    if cfg.activation not in ACTIVATIONS:
        raise UserError(f"{source}: 'activation' must be one of {list(ACTIVATIONS)}, got {cfg.activation!r}")
    if cfg.autocast not in AUTOCAST_DTYPES:
        raise UserError(f"{source}: 'autocast' must be one of {list(AUTOCAST_DTYPES)}, got {cfg.autocast!r}")
    if cfg.hidden_states not in HIDDEN_STATES:
        raise UserError(f"{source}: 'hidden_states' must be one of {list(HIDDEN_STATES)}, got {cfg.hidden_states!r}")
    if not cfg.init_std > 0 or not cfg.layer_norm_eps > 0:
        raise UserError(f"{source}: 'init_std' and 'layer_norm_eps' must be > 0")
    return cfg


def load_adapter_config(method: str, path: Optional[str]) -> AdapterConfig:
    """The `-g` YAML (or method defaults when `path` is None or empty)."""
    if not path:
        return AdapterConfig(method=method)
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except OSError as e:
        raise UserError(f"adapter config -g {path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise UserError(f"adapter config -g {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return adapter_config_from_dict(method, values, source=f"adapter config -g {path}")

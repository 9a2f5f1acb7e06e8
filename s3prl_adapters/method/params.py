"""Trainable/total parameter counts of the six methods, from the real module trees."""

import json
from dataclasses import asdict, dataclass
from typing import List

from torch import nn

from s3prl_adapters.method.backbone import SHAPES, build_wavlm, load_wavlm
from s3prl_adapters.method.config import METHODS, AdapterConfig
from s3prl_adapters.method.expert import AdapterWavLMExpert


@dataclass
class ParamRow:
    method: str
    """Display name of the training method."""
    upstream: str
    """What to pass to run_downstream.py (-u, plus -f for fine-tuning)."""
    upstream_trainable: int
    """Upstream parameters that train."""
    featurizer_weights: int
    """S3PRL Featurizer softmax weights (one per hidden state); they train in every run."""
    method_trainable: int
    """The paper's count: upstream trainable + the L-adapter combination weights (L methods only)."""
    total: int
    """All upstream parameters (frozen backbone + adapters)."""
    percent_of_finetuning: float
    """method_trainable / fine-tuning's method_trainable x 100."""


def _count(module: nn.Module, trainable_only: bool) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def parameter_table(backbone: str = "base_plus") -> List[ParamRow]:
    """backbone: a shape name of backbone.SHAPES ('base_plus', 'large': random weights) or a checkpoint."""
    def fresh_backbone():  # WavLM's weight-normed pos_conv cannot be deep-copied; rebuild instead
        return build_wavlm(SHAPES[backbone], seed=0) if backbone in SHAPES else load_wavlm(backbone)

    wavlm = fresh_backbone()
    num_layers = len(wavlm.encoder.layers)
    total_backbone = _count(wavlm, trainable_only=False)
    # Fine-tuning as the reference code (and the paper's table) counts it: every encoder layer.
    finetune = _count(wavlm.encoder.layers, trainable_only=False)
    rows = [
        ParamRow("Fine-tuning", "wavlm_local -f", finetune, num_layers + 1, finetune, total_backbone, 0.0),
        ParamRow("Frozen weighted sum (SUPERB)", "wavlm_local", 0, num_layers + 1, num_layers + 1, total_backbone, 0.0),
    ]
    names = {
        "wavlm_houlsby": "Conventional adapters (Houlsby)",
        "wavlm_eadapter": "E-adapters only",
        "wavlm_ladapter_only": "L-adapters only",
        "wavlm_ladapter": "L-adapters + E-adapters (proposed)",
        "wavlm_lora": "LoRA on q/v (PEFT; rank matched)",
    }
    for upstream, title in names.items():
        expert = AdapterWavLMExpert(fresh_backbone(), AdapterConfig(method=METHODS[upstream]))
        up = _count(expert, trainable_only=True)
        n_states = len(expert.adapter_config.l_adapter_layers) or num_layers + 1
        method_count = up + (n_states if expert.l_adapters else 0)
        rows.append(ParamRow(title, upstream, up, n_states, method_count, _count(expert, trainable_only=False), 0.0))
    for row in rows:
        row.percent_of_finetuning = round(100.0 * row.method_trainable / finetune, 2)
    return rows


def format_table(rows: List[ParamRow]) -> str:
    header = f"{'method':36s} {'upstream':22s} {'trainable':>12s} {'% of FT':>8s} {'upstream trainable':>18s} {'featurizer w':>12s} {'total':>12s}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.method:36s} {r.upstream:22s} {r.method_trainable:12,d} {r.percent_of_finetuning:7.2f}% "
            f"{r.upstream_trainable:18,d} {r.featurizer_weights:12d} {r.total:12,d}"
        )
    lines.append(
        "Fine-tuning counts the encoder layers (the paper's 85.1 M); stock S3PRL -f also updates "
        "the feature projection, its LayerNorm, the positional conv and encoder.layer_norm."
    )
    return "\n".join(lines)


def to_json(rows: List[ParamRow]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2)

"""LoRA (Hu et al., 2021) on the frozen WavLM, injected with HF PEFT: where it attaches and how
S3PRL's attention sees it.

PEFT's `LoraConfig(target_parameters=[...])` wraps a weight in a `ParamWrapper` that adds the
low-rank update B·A·(alpha/r) while the wrapper's own forward runs. S3PRL's WavLM attention never
calls `q_proj(x)`: it hands `q_proj.weight` to `F.multi_head_attention_forward`, so a wrapper
around the module would be silently ignored (no effect, no gradient). Here each layer's attention
forward runs inside the wrappers' own activation (PEFT's `_activate_lora`, which parametrizes the
weight as W + B·A·s for that call), so the attention reads the adapted weight. The FFN's `fc1`/`fc2`
are called as modules, so PEFT's ordinary LoRA Linear serves them (`lora_ffn`)."""

from contextlib import ExitStack
from typing import List

from torch import nn

from s3prl_adapters.method.config import AdapterConfig

ATTENTION_WEIGHTS = ("self_attn.q_proj.weight", "self_attn.v_proj.weight")
FFN_MODULES = ("fc1", "fc2")


def per_rank_count(wavlm: nn.Module, cfg: AdapterConfig) -> int:
    """Trainable parameters LoRA adds per unit of rank: r x (in + out) for every targeted weight."""
    total = 0
    for layer in wavlm.encoder.layers:
        targets = [layer.self_attn.q_proj, layer.self_attn.v_proj] + ([layer.fc1, layer.fc2] if cfg.lora_ffn else [])
        total += sum(t.in_features + t.out_features for t in targets)
    return total


def proposed_count(wavlm: nn.Module, cfg: AdapterConfig) -> int:
    """The proposed method's trainable count (L + E adapters, layer LayerNorms, layer weights) with
    `cfg`'s sizes on this backbone: what LoRA's rank is matched to."""
    from dataclasses import replace

    from s3prl_adapters.method.attach import build_e_adapters, build_l_adapters, layer_norm_names

    layers, dim = len(wavlm.encoder.layers), wavlm.cfg.encoder_embed_dim
    proposed = replace(cfg, method="proposed", e_adapter_layers=None, l_adapter_layers=None, attention_adapters=None,
                       lora_rank=None, lora_alpha=None, lora_ffn=False, train_layer_norms=None,
                       backbone_dropout=None).resolved(layers)
    modules = list(build_l_adapters(dim, proposed).values()) + list(build_e_adapters(dim, layers, proposed).values())
    adapters = sum(p.numel() for m in modules for p in m.parameters())
    layer_norms = sum(p.numel() for name in layer_norm_names(wavlm) for p in wavlm.get_submodule(name).parameters())
    return adapters + layer_norms + len(proposed.l_adapter_layers)  # + the softmax layer weights


def matching_rank(wavlm: nn.Module, cfg: AdapterConfig) -> int:
    return max(1, round(proposed_count(wavlm, cfg) / per_rank_count(wavlm, cfg)))


def attach_lora(wavlm: nn.Module, cfg: AdapterConfig) -> List[str]:
    """Inject LoRA into `wavlm` (frozen) with PEFT at `cfg.lora_rank`; returns the LoRA parameters' names."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora.layer import ParamWrapper

    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank, lora_dropout=0.0,
                        target_parameters=list(ATTENTION_WEIGHTS),
                        target_modules=list(FFN_MODULES) if cfg.lora_ffn else None)
    inject_adapter_in_model(config, wavlm)
    for layer in wavlm.encoder.layers:
        attention = layer.self_attn
        wrappers = [m for m in (attention.q_proj, attention.v_proj) if isinstance(m, ParamWrapper)]
        run_attention = type(attention).forward.__get__(attention)

        def forward(*args, _run=run_attention, _wrappers=wrappers, **kwargs):
            with ExitStack() as stack:  # q/v read as W + B·A·s for this call only
                for wrapper in _wrappers:
                    stack.enter_context(wrapper._activate_lora(wrapper.active_adapters))
                return _run(*args, **kwargs)

        attention.forward = forward
    return [n for n, p in wavlm.named_parameters() if ".lora_A." in n or ".lora_B." in n]

"""Where adapters attach inside S3PRL's WavLM, without re-implementing any of its layers.

S3PRL's post-LN `TransformerSentenceEncoderLayer.forward` computes
    x = self_attn_layer_norm(x + dropout1(attn(x)))
    x = final_layer_norm(x + dropout3(fc2(dropout2(act(fc1(x))))))
so the FFN output just before its residual add is exactly the output of `dropout3`, and the
attention output before its residual add is the output of `dropout1`. Replacing those two
Dropout modules with `AdapterAfter(dropout, adapter)` puts an E-adapter at the places the
method names while WavLM's own attention and FFN code runs unchanged."""

from typing import Dict, List

import torch.utils.checkpoint
from torch import nn

from s3prl_adapters.method.adapters import BottleneckAdapter
from s3prl_adapters.method.config import AdapterConfig


class AdapterAfter(nn.Module):
    """Runs the wrapped module, then merges an adapter by a residual add: y + adapter(y)."""

    def __init__(self, wrapped: nn.Module, adapter: nn.Module):
        super().__init__()
        self.wrapped = wrapped
        self.e_adapter = adapter

    def forward(self, x):
        y = self.wrapped(x)
        return y + self.e_adapter(y)


def attach_e_adapters(wavlm: nn.Module, cfg: AdapterConfig) -> Dict[str, BottleneckAdapter]:
    """Insert E-adapters into `wavlm.encoder.layers` per `cfg` (already resolved).

    Returns {qualified name inside `wavlm`: adapter} for every adapter inserted."""
    attached = {}
    dim = wavlm.cfg.encoder_embed_dim
    for i, layer in enumerate(wavlm.encoder.layers):
        sites = []
        if i in cfg.e_adapter_layers:
            sites.append("dropout3")  # FFN output, before the residual add
            if cfg.attention_adapters:
                sites.append("dropout1")  # attention output, before the residual add
        for site in sites:
            adapter = BottleneckAdapter(dim, cfg.e_adapter_dim, cfg.activation, cfg.init_std, cfg.layer_norm_eps)
            setattr(layer, site, AdapterAfter(getattr(layer, site), adapter))
            attached[f"encoder.layers.{i}.{site}.e_adapter"] = adapter
    return attached


def layer_norm_names(wavlm: nn.Module) -> List[str]:
    """Qualified names of both LayerNorms of every encoder layer ('layer LNs' in method.md)."""
    return [
        f"encoder.layers.{i}.{ln}"
        for i in range(len(wavlm.encoder.layers))
        for ln in ("self_attn_layer_norm", "final_layer_norm")
    ]


def checkpoint_layer_activations(wavlm: nn.Module) -> None:
    """Make every encoder layer keep only its inputs for backward and recompute its activations
    there. The layer's own `forward` is wrapped (not the module replaced), so parameter names,
    adapter checkpoints and forward hooks stay as they are; hooks fire once per forward, because the
    recomputation calls the unhooked method. Dropout masks are replayed (preserve_rng_state)."""
    for layer in wavlm.encoder.layers:
        run_layer = type(layer).forward.__get__(layer)

        def forward(*args, _run_layer=run_layer, **kwargs):
            if not torch.is_grad_enabled():
                return _run_layer(*args, **kwargs)
            return torch.utils.checkpoint.checkpoint(_run_layer, *args, use_reentrant=False, **kwargs)

        layer.forward = forward

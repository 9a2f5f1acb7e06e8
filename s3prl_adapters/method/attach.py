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

from s3prl_adapters.method.adapters import BottleneckAdapter, LayerAdapter
from s3prl_adapters.method.config import AdapterConfig


class AdapterAfter(nn.Module):
    """Runs the wrapped module, then merges an adapter by a residual add: y + adapter(y)."""

    def __init__(self, wrapped: nn.Module, adapter: nn.Module):
        super().__init__()
        self.wrapped = wrapped
        self.e_adapter = adapter
        self.float32_under_autocast = True
        """Under autocast, the adapter and the add run in float32 (AdapterConfig.adapters_in_float32);
        a plain attribute, so checkpoints do not change."""

    def forward(self, x):
        y = self.wrapped(x)
        if self.float32_under_autocast and torch.is_autocast_enabled(y.device.type):
            with torch.autocast(y.device.type, enabled=False):
                y = y.float()
                return y + self.e_adapter(y)
        return y + self.e_adapter(y)


def e_adapter_sites(num_layers: int, cfg: AdapterConfig) -> List[str]:
    """Qualified names (inside the WavLM) of the modules an E-adapter follows, per `cfg` (resolved)."""
    sites = []
    for i in range(num_layers):
        if i in cfg.e_adapter_layers:
            sites.append(f"encoder.layers.{i}.dropout3")  # FFN output, before the residual add
            if cfg.attention_adapters:
                sites.append(f"encoder.layers.{i}.dropout1")  # attention output, before the residual add
    return sites


def build_e_adapters(dim: int, num_layers: int, cfg: AdapterConfig) -> Dict[str, BottleneckAdapter]:
    """{site: a fresh E-adapter} for every site of `cfg`, not yet attached anywhere."""
    return {site: BottleneckAdapter(dim, cfg.e_adapter_dim, cfg.activation, cfg.init_std, cfg.layer_norm_eps)
            for site in e_adapter_sites(num_layers, cfg)}


def build_l_adapters(dim: int, cfg: AdapterConfig) -> nn.ModuleDict:
    """One L-adapter per layer of `cfg.l_adapter_layers` (resolved), keyed by the layer index: the
    expert applies them to the layer outputs it collects."""
    return nn.ModuleDict({str(i): LayerAdapter(dim, cfg.l_adapter_dim, cfg.activation, cfg.init_std, cfg.layer_norm_eps)
                          for i in cfg.l_adapter_layers})


def install_e_adapters(wavlm: nn.Module, adapters: Dict[str, nn.Module]) -> None:
    """Put each adapter after its site module: the site becomes AdapterAfter(site, adapter)."""
    for site, adapter in adapters.items():
        parent, name = site.rsplit(".", 1)
        layer = wavlm.get_submodule(parent)
        setattr(layer, name, AdapterAfter(getattr(layer, name), adapter))


def remove_e_adapters(wavlm: nn.Module) -> Dict[str, nn.Module]:
    """Undo install_e_adapters: every AdapterAfter gives its site back its own module; returns
    {site: adapter} of what was removed. The backbone's own modules are never touched."""
    removed = {}
    for i, layer in enumerate(wavlm.encoder.layers):
        for name, child in list(layer.named_children()):
            if isinstance(child, AdapterAfter):
                setattr(layer, name, child.wrapped)
                removed[f"encoder.layers.{i}.{name}"] = child.e_adapter
    return removed


def attach_e_adapters(wavlm: nn.Module, cfg: AdapterConfig) -> Dict[str, BottleneckAdapter]:
    """Insert E-adapters into `wavlm.encoder.layers` per `cfg` (already resolved).

    Returns {qualified name inside `wavlm`: adapter} for every adapter inserted."""
    adapters = build_e_adapters(wavlm.cfg.encoder_embed_dim, len(wavlm.encoder.layers), cfg)
    install_e_adapters(wavlm, adapters)
    for site in adapters:
        wavlm.get_submodule(site).float32_under_autocast = cfg.adapters_in_float32
    return {f"{site}.e_adapter": adapter for site, adapter in adapters.items()}


def layer_norm_names(wavlm: nn.Module) -> List[str]:
    """Qualified names of both LayerNorms of every encoder layer ('layer LNs' in method.md)."""
    return [
        f"encoder.layers.{i}.{ln}"
        for i in range(len(wavlm.encoder.layers))
        for ln in ("self_attn_layer_norm", "final_layer_norm")
    ]


KEPT_PRODUCTS = {"full": (), "selective": ("fc1", "fc2"), "ffn_output": ("fc2",)}
"""Per checkpoint mode, the FFN products whose outputs each encoder layer keeps for backward."""


def _keep_products(layer: nn.Module, names):
    """torch's selective-checkpoint policy for one encoder layer: save the outputs of the named FFN
    products, recompute the rest in backward: the attention (its projections, and the T x T scores
    and probabilities that take most of the memory) and every element-wise and normalisation op."""
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    policy = feed_forward_products_policy(layer, names)
    return lambda: create_selective_checkpoint_contexts(policy)


def feed_forward_products_policy(layer: nn.Module, names=("fc1", "fc2")):
    """MUST_SAVE for the products of the named linears of `layer` (fc1, fc2), PREFER_RECOMPUTE for
    every other op. Products are recognised by their weight's shape, which holds under autocast too
    (where the weight arrives as a fresh low-precision copy): fc1 (d -> 4d) and fc2 (4d -> d) differ
    from each other and from every attention and adapter product."""
    from torch.utils.checkpoint import CheckpointPolicy

    aten = torch.ops.aten
    products = {aten.mm.default, aten.addmm.default}
    kept_shapes = {(getattr(layer, n).in_features, getattr(layer, n).out_features) for n in names}

    def policy(ctx, op, *args, **kwargs):
        if op in products and tuple(args[-1].shape) in kept_shapes:  # (in, out): the transposed weight
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def checkpoint_layer_activations(wavlm: nn.Module, mode: str = "full") -> None:
    """Make every encoder layer recompute activations in backward instead of keeping them: 'full'
    keeps only the layer's inputs, 'selective' also keeps the outputs of both FFN products,
    'ffn_output' that of fc2 alone (KEPT_PRODUCTS). The layer's own `forward` is wrapped (not the
    module replaced), so parameter names, adapter checkpoints and forward hooks stay as they are;
    hooks fire once per forward, because the recomputation calls the unhooked method. Dropout masks
    are replayed (preserve_rng_state)."""
    kept = KEPT_PRODUCTS[mode]
    for layer in wavlm.encoder.layers:
        extra = {"context_fn": _keep_products(layer, kept)} if kept else {}
        run_layer = type(layer).forward.__get__(layer)

        def forward(*args, _run_layer=run_layer, _extra=extra, **kwargs):
            if not torch.is_grad_enabled():
                return _run_layer(*args, **kwargs)
            return torch.utils.checkpoint.checkpoint(_run_layer, *args, use_reentrant=False, **_extra, **kwargs)

        layer.forward = forward

"""What an adapter is: the two small modules of Otake et al. (ICASSP 2023), independent of WavLM.

Where they attach is `attach.py`; how their outputs merge (residual add for E-adapters, S3PRL's
softmax-weighted Featurizer sum for L-adapters) is stated next to each attachment."""

import torch
from torch import nn

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


def _init_linear(linear: nn.Linear, std: float) -> None:
    nn.init.normal_(linear.weight, mean=0.0, std=std)
    nn.init.zeros_(linear.bias)


class BottleneckAdapter(nn.Module):
    """E-adapter body: LN(up(act(down(z)))). The caller adds the skip: E(z) = z + body(z).

    With N(0, init_std) weights the body's output is small, so E starts close to identity."""

    def __init__(self, dim: int, bottleneck: int, activation: str = "gelu", init_std: float = 1e-3, eps: float = 1e-5):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.activation = _ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, dim)
        self.layer_norm = nn.LayerNorm(dim, eps=eps)
        _init_linear(self.down, init_std)
        _init_linear(self.up, init_std)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(self.up(self.activation(self.down(z))))


class LayerAdapter(nn.Module):
    """L-adapter: LN(act(W h + b)), a projection of one encoder layer's output to the head width.

    No up-projection or skip: this is what the reference code trained (method.md §3)."""

    def __init__(self, dim: int, out_dim: int, activation: str = "gelu", init_std: float = 1e-3, eps: float = 1e-5):
        super().__init__()
        self.proj = nn.Linear(dim, out_dim)
        self.activation = _ACTIVATIONS[activation]()
        self.layer_norm = nn.LayerNorm(out_dim, eps=eps)
        _init_linear(self.proj, init_std)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(self.activation(self.proj(h)))

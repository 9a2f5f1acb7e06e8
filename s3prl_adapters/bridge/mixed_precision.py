"""fp16 training that trains: one loss scaler per run, kept in every checkpoint.

float16 has 5 exponent bits: gradients below ~6e-8 flush to zero. E-adapters start at N(0, 1e-3)
weights, so the gradients flowing through them are small enough to underflow; a `GradScaler`
multiplies the loss (65536 at first) before backward and divides the gradients again before the
optimizer step, skipping steps whose scaled gradients overflowed and adapting the scale.

S3PRL builds `torch.cuda.amp.GradScaler()` only when `runner.fp16` is set, and does not store its
state. Here one `torch.amp.GradScaler` on the run's device serves both S3PRL's `runner.fp16` path
and upstreams that autocast to float16 themselves (`autocast: float16` in `-g`); its state goes into
every training checkpoint (key `GradScaler`) and comes back with `-e`. Installed on S3PRL's runner
by `compat.fp16_training_is_unscaled_or_forgets_its_scale`."""

from contextlib import nullcontext
from typing import Optional

import torch

CHECKPOINT_KEY = "GradScaler"


class Fp16Training:
    """The loss scaler of one run and the autocast policy of S3PRL's training forward."""

    def __init__(self, device: str, autocast_forward: bool, saved_state: Optional[dict] = None):
        """device: the run's device ('cuda', 'cuda:1', 'cpu'); autocast_forward: whether S3PRL's
        whole training forward (upstream, featurizer, head) runs under float16 autocast, as
        `runner.fp16` asks (an upstream that autocasts itself does not need it);
        saved_state: the `GradScaler` entry of the checkpoint being resumed."""
        self.device_type = torch.device(device).type
        self.autocast_forward = autocast_forward
        self.scaler = torch.amp.GradScaler(self.device_type)
        if saved_state:
            self.scaler.load_state_dict(saved_state)

    def forward_autocast(self, enabled: bool = True):
        """What S3PRL's `torch.cuda.amp.autocast(enabled=fp16)` around the training forward becomes."""
        if not (enabled and self.autocast_forward):
            return nullcontext()
        return torch.autocast(self.device_type, dtype=torch.float16)

    def checkpoint_entry(self) -> dict:
        return self.scaler.state_dict()

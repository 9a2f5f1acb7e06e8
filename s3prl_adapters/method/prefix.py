"""The frozen prefix of S3PRL's WavLM: what runs before the encoder, which no adapter method trains.

S3PRL's `WavLM.extract_features` runs: CNN -> LayerNorm -> projection -> dropout_input -> encoder,
and the encoder: zero the padded frames -> x + pos_conv(x) -> LayerNorm (post-LN models) -> dropout
-> layers. The prefix ends after the projection: the CNN is most of its cost, and everything after
the cut still runs as S3PRL runs it, so
- dropout_input and the encoder's dropout draw their masks on every step (Base+ trains E-adapters
  with dropout_input 0.1), and
- the padded frames are exactly the full pass's: the encoder zeroes them before the positional
  convolution, and the frames past an utterance's end that S3PRL's Featurizer reads (it keeps
  round(len / 320) frames, sometimes one more than the CNN made) come out of that convolution
  just as in the full pass.
Cutting later, after the positional convolution, would save ~5% more of a Base+ forward pass but
loses those padded frames, which the heads then read."""

from contextlib import contextmanager
from typing import List

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

DESCRIPTION = "CNN, its LayerNorm and the projection (dropout_input and the encoder run every step)"


def _prefix_end(wavlm: nn.Module) -> nn.Module:
    return wavlm.post_extract_proj if wavlm.post_extract_proj is not None else wavlm.layer_norm


@contextmanager
def captured_prefix(wavlm: nn.Module):
    """Record, during one ordinary forward pass, the prefix (B, T, C) and the frame padding mask
    (B, T) the encoder receives: yields a dict that holds them afterwards."""
    got = {}
    hooks = [
        wavlm.encoder.register_forward_pre_hook(
            lambda m, args, kwargs: got.__setitem__("mask", kwargs.get("padding_mask", args[1] if len(args) > 1 else None)),
            with_kwargs=True),
        _prefix_end(wavlm).register_forward_hook(lambda m, args, out: got.__setitem__("prefix", out)),
    ]
    try:
        yield got
    finally:
        for hook in hooks:
            hook.remove()


def rows_of(got: dict) -> List[torch.Tensor]:
    """Each utterance's prefix frames, as many as the batch's padding mask made valid."""
    prefix, mask = got["prefix"], got["mask"]
    valid = (~mask).sum(1).tolist() if mask is not None else [prefix.size(1)] * prefix.size(0)
    return [prefix[b, :n] for b, n in enumerate(valid)]


def encoder_from_prefix(wavlm: nn.Module, rows: List[torch.Tensor]) -> torch.Tensor:
    """The encoder output for a batch whose prefix rows are known (each utterance's valid frames):
    padded and masked beyond each row, then dropout_input and the encoder, S3PRL's own modules."""
    x = pad_sequence(rows, batch_first=True)
    lengths = torch.tensor([len(r) for r in rows], device=x.device)
    mask = torch.arange(x.size(1), device=x.device).unsqueeze(0) >= lengths.unsqueeze(1)
    if wavlm.post_extract_proj is not None and torch.is_autocast_enabled(x.device.type):
        # the full pass hands the encoder the projection's output in the autocast dtype
        x = x.to(torch.get_autocast_dtype(x.device.type))
    output, _ = wavlm.encoder(wavlm.dropout_input(x), padding_mask=mask)
    return output

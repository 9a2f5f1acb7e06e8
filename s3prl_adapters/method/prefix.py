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
loses those padded frames, which the heads then read.

A stored prefix is each utterance's own, computed alone (`prefix_alone`): in a padded batch WavLM
Base's first CNN layer normalises over the padded time axis, so the prefix would depend on which
utterances shared the batch. Alone, it is what a batch of one computes: what `predict` and a batch-1
evaluation compute, whichever run stored it.

Exact evaluation in batches uses the same cut: each utterance's prefix alone, then the encoder on the
padded batch with its mask (`encoder_from_prefix`), and each utterance keeps the `frames_alone` its
CNN makes by itself (S3PRL's Featurizer keeps round(samples / 320) frames, which is one more than the
CNN makes for most lengths: in a padded batch that extra frame is a padded position's output, which a
batch of one does not have)."""

from typing import List

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

DESCRIPTION = "CNN, its LayerNorm and the projection (dropout_input and the encoder run every step)"


@torch.no_grad()
def prefix_alone(wavlm: nn.Module, wav: torch.Tensor) -> torch.Tensor:
    """One utterance's prefix (T, C), computed alone, as `extract_features` computes it for a batch of
    one (no padding, so no padding mask): CNN -> transpose -> LayerNorm -> projection. Alone, because
    WavLM Base's first CNN layer normalises over the padded time axis: in a batch, an utterance's
    prefix depends on its neighbours' lengths."""
    features = wavlm.feature_extractor(wav.unsqueeze(0)).transpose(1, 2)
    features = wavlm.layer_norm(features)
    if wavlm.post_extract_proj is not None:
        features = wavlm.post_extract_proj(features)
    return features[0]


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


def frames_alone(conv_layers: List[tuple], samples: int) -> int:
    """The frames WavLM's CNN makes for an utterance of `samples` alone (no padding): each layer
    (dim, kernel, stride) maps L samples or frames to floor((L - kernel) / stride) + 1."""
    length = samples
    for _, kernel, stride in conv_layers:
        length = max(0, (length - kernel) // stride + 1)
    return length


def own_frames(features: List[torch.Tensor], wavs: List[torch.Tensor], conv_layers: List[tuple]) -> List[torch.Tensor]:
    """Each utterance's features cut to the frames its CNN makes alone (what S3PRL's Featurizer gives a
    batch of one; in a padded batch it keeps one more, a padded position's, for most lengths)."""
    return [f[:frames_alone(conv_layers, len(wav))] for f, wav in zip(features, wavs)]

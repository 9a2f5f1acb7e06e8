"""The settings of `s3prl-adapters pretrain-tiny` (light to import: the CLI builds its flags from them)."""

from dataclasses import dataclass


@dataclass
class PretrainConfig:
    """Everything that decides the pretrained checkpoint (recorded next to it)."""

    layers: int = 4  # encoder layers
    dim: int = 256  # encoder width (FFN 4x, 4 heads)
    cnn_channels: int = 64  # CNN feature extractor width (Base: 512)
    clusters: int = 100  # k-means targets on MFCC+deltas
    steps: int = 3000  # optimizer steps
    batch: int = 8  # utterances per step
    crop_seconds: float = 2.0  # random crop per utterance
    lr: float = 5e-4  # peak Adam learning rate (linear warm-up 8 %, linear decay)
    mask_prob: float = 0.65  # WavLM/HuBERT span masking
    mask_length: int = 10
    mix_prob: float = 0.2  # utterance-mixing probability (WavLM denoising)
    seed: int = 0
    corpus_utterances: int = 3000  # generated unlabelled utterances

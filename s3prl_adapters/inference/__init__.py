"""Trained adapters on new audio: one file per trained task (`adapter_set`, written by `export`),
any audio read as 16 kHz mono (`audio`), and one backbone answering every task (`engine`)."""

from s3prl_adapters.inference.adapter_set import AdapterSet, untrained
from s3prl_adapters.inference.audio import read_audio
from s3prl_adapters.inference.engine import MultiTaskWavLM
from s3prl_adapters.inference.export import export

__all__ = ["AdapterSet", "MultiTaskWavLM", "export", "read_audio", "untrained"]

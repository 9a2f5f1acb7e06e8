"""Trained adapters on new audio: export a run's checkpoint to one file per task (`adapter_set`),
read any audio (`audio`), and answer every task with one backbone (`engine`)."""

from s3prl_adapters.inference.adapter_set import AdapterSet, export, untrained
from s3prl_adapters.inference.audio import read_audio
from s3prl_adapters.inference.engine import MultiTaskWavLM

__all__ = ["AdapterSet", "MultiTaskWavLM", "export", "read_audio", "untrained"]

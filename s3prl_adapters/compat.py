"""Workarounds for S3PRL 0.4.18 behaviours that break on today's stack or on CPU.

Every workaround lives here, is named after the S3PRL behaviour it corrects, and has a test that
fails without it (tests/test_compat.py). None edits S3PRL's installed files."""

import argparse
import os
from typing import List

import torch


def s3prl_checkpoints_fail_weights_only_load() -> None:
    """S3PRL stores `Args` (an argparse.Namespace) in every checkpoint and reloads it with a bare
    `torch.load`, which is weights-only since torch 2.6, so `-e` fails with UnpicklingError.
    Allow exactly that type instead of turning weights-only loading off."""
    torch.serialization.add_safe_globals([argparse.Namespace])


def _has_flag(argv: List[str], *names: str) -> bool:
    return any(a in names or any(a.startswith(n + "=") for n in names) for a in argv)


def device_defaults_to_cuda(argv: List[str]) -> List[str]:
    """`--device` defaults to 'cuda' and is not restored by `-e`, so on a CPU-only machine every
    run (and every evaluate/resume) crashes unless the user remembers `--device cpu`.
    Default to cuda only where CUDA is available."""
    if _has_flag(argv, "--device"):
        return argv
    return argv + ["--device", "cuda" if torch.cuda.is_available() else "cpu"]


def install_runtime_workarounds() -> None:
    s3prl_checkpoints_fail_weights_only_load()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

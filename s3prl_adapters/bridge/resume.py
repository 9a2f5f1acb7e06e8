"""Exact resume: what a runner checkpoint must hold so that training continues as if never stopped.

S3PRL's runner restores weights, optimizer, scheduler, step and epoch, but restarts the interrupted
epoch from its first batch and draws every random number (shuffle order, dropout, worker seeds)
from a freshly seeded generator. `TrainPosition` closes that gap: it wraps the train DataLoader,
remembers the RNG states at the start of the current pass and how many batches it has handed
out, and, when given a saved position, replays that pass up to the same batch (the skipped batches
are loaded but not trained on) and then restores the RNG states of the moment of the save.

Installed on the runner by `compat.resume_restarts_the_interrupted_epoch`."""

import random
import sys
from typing import Optional

import numpy as np
import torch

from s3prl_adapters.errors import UserError

CHECKPOINT_KEY = "ResumePosition"


def capture_rng() -> dict:
    """Every RNG state a training step draws from, as weights-only-loadable values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


_noted_gpu_count_change = False


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    _restore_cuda_rng(state.get("cuda"))


def _restore_cuda_rng(saved) -> None:
    """Per-GPU generator states; a machine with another GPU count gets those that fit (and a note)."""
    global _noted_gpu_count_change
    here = torch.cuda.device_count() if torch.cuda.is_available() else 0
    saved = list(saved or [])
    for index, gpu_state in enumerate(saved[:here]):
        torch.cuda.set_rng_state(gpu_state, index)
    if saved and len(saved) != here and not _noted_gpu_count_change:
        _noted_gpu_count_change = True
        print(f"[s3prl-adapters] resume: the checkpoint holds the CUDA RNG states of {len(saved)} GPU(s), this "
              f"machine has {here}: restored {min(len(saved), here)}; dropout on the others starts afresh",
              file=sys.stderr)


class _PositionedLoader:
    """A train DataLoader that reports every pass over it to its TrainPosition."""

    def __init__(self, loader, position: "TrainPosition"):
        self._loader = loader
        self._position = position

    def __len__(self):
        return len(self._loader)

    def __getattr__(self, name):  # sampler, dataset, batch_size ... as the recipe's loader has them
        return getattr(self._loader, name)

    def __iter__(self):
        return self._position.run_pass(self._loader)


class TrainPosition:
    """Where training stands inside the current pass over the train data, and how it got there."""

    def __init__(self, saved: Optional[dict] = None):
        self._replay = saved
        self._pass_start_rng: Optional[dict] = None
        self._batches_done = 0

    def wrap(self, loader):
        return _PositionedLoader(loader, self)

    def run_pass(self, loader):
        replay, self._replay = self._replay, None
        if replay is not None:
            restore_rng(replay["pass_start_rng"])
        self._pass_start_rng = capture_rng()
        self._batches_done = 0
        batches = iter(loader)
        if replay is not None:
            # Replaying through the real loader (not just its sampler) also reproduces what its
            # workers drew for the skipped batches, so later batches come out the same.
            for _ in range(replay["batches_done"]):
                if next(batches, None) is None:
                    raise UserError(
                        f"the checkpoint was saved after batch {replay['batches_done']} of a pass over the train "
                        f"split, which now has only {self._batches_done} batches: resume needs the same corpus and config"
                    )
                self._batches_done += 1
            restore_rng(replay["rng"])
        for batch in batches:
            self._batches_done += 1
            yield batch

    def checkpoint_entry(self) -> Optional[dict]:
        """The position to store with a checkpoint written now (after an optimizer step)."""
        if self._pass_start_rng is None:
            return None
        return {"pass_start_rng": self._pass_start_rng, "batches_done": self._batches_done, "rng": capture_rng()}

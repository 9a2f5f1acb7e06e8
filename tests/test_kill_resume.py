"""A run killed with SIGKILL and resumed with `-e states-k.ckpt` ends bit-identical to an
uninterrupted run of the same seed (data order, RNG, optimizer state restored), through real
run_downstream.py processes on the tiny checkpoint and the stand-in Fluent Speech Commands."""

import argparse
import glob
import os
import signal
import subprocess
import time

import pytest
import torch

from conftest import tool

TOTAL, SAVE = 12, 4
# Dropout on, shuffled batches of 3 (16 utterances: 6 per pass, so saves fall mid-pass), an
# evaluation (which reseeds every RNG) right before each save, and the loader in the main process
# (its draws interleave with dropout) or in a worker process.
_OVERRIDES = (f"config.runner.total_steps={TOTAL},,config.runner.save_step={SAVE},,config.runner.eval_step={SAVE},,"
              "config.runner.log_step=2,,config.runner.max_keep=1,,config.runner.eval_dataloaders=['dev'],,"
              "config.downstream_expert.datarc.train_batch_size=3")


def _train_argv(tiny_ckpt, tiny_fsc, expdir, workers):
    return [tool("run_downstream.py"), "-m", "train", "-u", "wavlm_ladapter", "-k", tiny_ckpt, "-d", "fluent_commands",
            "-c", os.path.join(os.path.dirname(os.path.dirname(__file__)), "downstream_configs", "fluent_commands", "mini.yaml"),
            "-p", str(expdir), "--seed", "7",
            "-o", f"config.downstream_expert.datarc.file_path={tiny_fsc},,{_OVERRIDES},,"
            f"config.downstream_expert.datarc.num_workers={workers}"]


def _trained_state(ckpt):
    torch.serialization.add_safe_globals([argparse.Namespace])
    states = torch.load(ckpt, weights_only=True)
    return {f"{part}.{k}": v for part in ("Upstream", "Featurizer", "Downstream") for k, v in states[part].items()}, states


def _run(argv, cwd):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=cwd,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc




def _kill_after_first_checkpoint(argv, expdir, cwd) -> str:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 600
    try:
        while not glob.glob(str(expdir / "states-*.ckpt")):
            assert proc.poll() is None, "training ended before its first checkpoint"
            assert time.time() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = sorted(glob.glob(str(expdir / "states-*.ckpt")), key=lambda p: int(p.rsplit("-", 1)[1].split(".")[0]))
    assert done and not done[-1].endswith(f"states-{TOTAL}.ckpt"), f"killed too late: {done}"
    return done[-1]


@pytest.mark.parametrize("workers", [0, 1])
def test_sigkill_then_resume_is_bit_identical_to_an_uninterrupted_run(workers, tiny_ckpt, tiny_fsc, tmp_path):
    _run(_train_argv(tiny_ckpt, tiny_fsc, tmp_path / "reference", workers), tmp_path)
    reference, reference_states = _trained_state(tmp_path / "reference" / f"states-{TOTAL}.ckpt")

    expdir = tmp_path / "exp"
    last = _kill_after_first_checkpoint(_train_argv(tiny_ckpt, tiny_fsc, expdir, workers), expdir, tmp_path)
    _, killed_at = _trained_state(last)
    assert 0 < killed_at["Step"] < TOTAL

    _run([tool("run_downstream.py"), "-m", "train", "-e", last], tmp_path)
    resumed, resumed_states = _trained_state(expdir / f"states-{TOTAL}.ckpt")
    assert resumed.keys() == reference.keys()
    different = [k for k in reference if not torch.equal(reference[k], resumed[k])]
    assert not different, f"{len(different)} tensors differ after resume, e.g. {different[:3]}"
    assert resumed_states["Step"] == reference_states["Step"] == TOTAL
    assert 0 < killed_at["ResumePosition"]["batches_done"] < 6, "the kill should fall inside a pass"
    assert torch.equal(resumed_states["ResumePosition"]["rng"]["torch"], reference_states["ResumePosition"]["rng"]["torch"])


def _noisy_loader():
    from torch.utils.data import DataLoader

    class Noisy(torch.utils.data.Dataset):  # items draw from the global RNG, like random crops do
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return torch.tensor([float(i)]) + torch.rand(1)

    return DataLoader(Noisy(), batch_size=3, shuffle=True)


def test_train_position_replays_a_pass_and_refuses_a_changed_split():
    from s3prl_adapters.errors import UserError
    from s3prl_adapters.bridge.resume import TrainPosition

    torch.manual_seed(0)
    position = TrainPosition()
    batches = iter(position.wrap(_noisy_loader()))
    next(batches), next(batches)
    saved = position.checkpoint_entry()
    expected = [b for b in batches] + [torch.rand(2)]  # the rest of the pass, then the RNG after it

    torch.manual_seed(123)  # a restarted process seeds afresh
    replayed = [b for b in TrainPosition(saved).wrap(_noisy_loader())] + [torch.rand(2)]
    assert len(replayed) == len(expected) == 3
    assert all(torch.equal(a, b) for a, b in zip(expected, replayed))

    beyond = dict(saved, batches_done=9)
    with pytest.raises(UserError, match="batch 9 of a pass over the train split, which now has only 4 batches"):
        list(TrainPosition(beyond).wrap(_noisy_loader()))


def test_rng_of_another_gpu_count_is_restored_as_far_as_it_fits(capsys):
    from s3prl_adapters.bridge import resume

    here = torch.cuda.device_count() if torch.cuda.is_available() else 0
    state = resume.capture_rng()
    gpu_state = torch.cuda.get_rng_state(0) if here else torch.zeros(16, dtype=torch.uint8)
    state["cuda"] = [gpu_state] * 2  # saved on a 2-GPU machine
    expected = torch.rand(3)
    resume.restore_rng(state)
    assert torch.equal(torch.rand(3), expected)  # the CPU generators are back where they were
    if here != 2:
        note = capsys.readouterr().err
        assert f"CUDA RNG states of 2 GPU(s), this machine has {here}: restored {min(2, here)}" in note

"""Each workaround in s3prl_adapters.bridge.compat, shown to be needed (the S3PRL behaviour is real) and to work."""

import subprocess
import sys
from collections import defaultdict

import pytest

from conftest import tool

WEIGHTS_ONLY_BY_DEFAULT = tuple(int(x) for x in __import__("torch").__version__.split(".")[:2]) >= (2, 6)
"""torch.load's default since torch 2.6 (the package supports 2.5 too)."""
from test_runner import OVERRIDES

_LOAD = """
import argparse, pickle, sys, torch
sys.argv = sys.argv[1:]
if sys.argv[0] == "with":
    from s3prl_adapters.bridge import compat
    compat.s3prl_checkpoints_fail_weights_only_load()
    compat.s3prl_loads_checkpoints_unpickling_anything()  # torch < 2.6 only; without it, torch 2.5 runs the code
try:
    torch.load(sys.argv[1], map_location="cpu")
    print("loaded")
except pickle.UnpicklingError as e:
    print("refused")
"""


class _RunsCode:
    def __reduce__(self):
        return (print, ("pwned",))


def test_weights_only_allowlist_admits_s3prl_args_and_nothing_more(tmp_path):
    import argparse

    import torch

    ckpt = tmp_path / "states.ckpt"
    torch.save({"Args": argparse.Namespace(upstream="wavlm_ladapter", seed=1), "Step": 3}, ckpt)
    evil = tmp_path / "evil.ckpt"
    torch.save({"Args": _RunsCode()}, evil)

    def load(mode, path):
        return subprocess.run([sys.executable, "-c", _LOAD, mode, str(path)], capture_output=True, text=True).stdout

    # torch >= 2.6 loads weights-only by default, which refuses S3PRL's Args; older torch unpickles anything
    # (our launcher reads every -e/-a checkpoint weights-only itself before S3PRL loads it)
    assert load("without", ckpt).strip() == ("refused" if WEIGHTS_ONLY_BY_DEFAULT else "loaded")
    assert load("with", ckpt).strip() == "loaded"
    assert load("with", evil).strip() == "refused"  # arbitrary callables stay refused
    assert "pwned" not in load("with", evil)


def test_device_default_follows_cuda_availability():
    import torch

    from s3prl_adapters.bridge.compat import device_defaults_to_cuda

    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert device_defaults_to_cuda(["-m", "train"])[-2:] == ["--device", want]
    assert device_defaults_to_cuda(["--device", "cuda:1"]) == ["--device", "cuda:1"]


def test_stock_launcher_cannot_evaluate_on_cpu_but_ours_can(tiny_ckpt, tiny_fsc, tmp_path):
    """Stock wavlm_local through S3PRL's own `-e` path: the checkpoint fails to load (weights-only)
    and, once loadable, the device falls back to 'cuda'. Through run_downstream.py it just works."""
    import torch

    expdir = tmp_path / "stock"
    train = [tool("run_downstream.py"), "-m", "train", "-u", "wavlm_local", "-k", tiny_ckpt, "-d", "fluent_commands",
             "-p", str(expdir), "-o", OVERRIDES.format(root=tiny_fsc)]
    assert subprocess.run(train, capture_output=True, text=True, timeout=300).returncode == 0
    evaluate = ["-m", "evaluate", "-e", str(expdir / "states-6.ckpt"), "-t", "test"]

    stock = subprocess.run([sys.executable, "-m", "s3prl.run_downstream"] + evaluate,
                           capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    if WEIGHTS_ONLY_BY_DEFAULT:
        assert stock.returncode != 0 and "Weights only load failed" in stock.stderr
    if not torch.cuda.is_available():
        import os

        env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
        stock = subprocess.run([sys.executable, "-m", "s3prl.run_downstream"] + evaluate,
                               capture_output=True, text=True, timeout=300, cwd=str(tmp_path), env=env)
        assert stock.returncode != 0 and ("NVIDIA" in stock.stderr or "CUDA" in stock.stderr)

    ours = subprocess.run([tool("run_downstream.py")] + evaluate, capture_output=True, text=True, timeout=300,
                          cwd=str(tmp_path))
    assert ours.returncode == 0, ours.stderr[-2000:]
    assert "test acc:" in ours.stdout


def test_runner_checkpoint_save_is_atomic_and_keeps_the_previous_one(tmp_path, monkeypatch):
    import torch
    from s3prl.downstream import runner

    from s3prl_adapters.bridge import compat

    compat.runner_checkpoints_can_be_lost_on_a_kill()
    old = tmp_path / "states-100.ckpt"
    torch.save({"Step": 100}, old)
    # What the runner does with max_keep=1: remove the old checkpoint, then save the new one.
    runner.os.remove(str(old))
    assert old.exists()  # deferred until the new one is complete

    real_save = torch.save

    def dying_save(obj, f, *a, **k):  # a kill in the middle of writing
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 truncated")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    new = tmp_path / "states-200.ckpt"
    try:
        runner.torch.save({"Step": 200}, str(new))
    except KeyboardInterrupt:
        pass
    assert not new.exists() and not list(tmp_path.glob("*.tmp*"))
    assert real_save and torch.load(old)["Step"] == 100

    monkeypatch.setattr(torch, "save", real_save)
    runner.torch.save({"Step": 200}, str(new))
    assert torch.load(new)["Step"] == 200 and not old.exists()


def test_torchrun_local_rank_is_passed_to_s3prl(monkeypatch):
    from s3prl_adapters.bridge.compat import torchrun_sets_only_local_rank

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert torchrun_sets_only_local_rank(["-m", "train"]) == ["-m", "train"]
    monkeypatch.setenv("LOCAL_RANK", "1")
    argv = torchrun_sets_only_local_rank(["-m", "train"])
    assert argv[2:4] == ["--local_rank", "1"]


def test_crafted_experiment_checkpoint_is_refused_before_unpickling(tmp_path):
    import torch

    evil = tmp_path / "states-1.ckpt"
    torch.save({"Args": _RunsCode()}, evil)
    proc = subprocess.run([tool("run_downstream.py"), "-m", "evaluate", "-e", str(evil)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "pwned" not in proc.stdout
    assert f"-e {evil}: refused to unpickle" in proc.stderr and "Traceback" not in proc.stderr


# Every dev evaluation is made a new best (so the step also writes dev-best.ckpt), and the process
# is SIGKILLed right after the step-4 dev-best.ckpt, before S3PRL writes states-4.ckpt.
_KILL_BETWEEN_SAVES = """
import os, signal, sys
from s3prl_adapters.bridge import compat, launcher
from s3prl.downstream.fluent_commands.expert import DownstreamExpert
real_log_records = DownstreamExpert.log_records
def log_records(self, mode, *args, **kwargs):
    self.best_score.fill_(-1.0)
    return real_log_records(self, mode, *args, **kwargs)
DownstreamExpert.log_records = log_records
real_save = compat._RunnerTorch.save.__func__
def save(cls, obj, f, *args, **kwargs):
    real_save(cls, obj, f, *args, **kwargs)
    if os.path.basename(str(f)) == "dev-best.ckpt" and isinstance(obj, dict) and obj.get("Step") == 4:
        os.kill(os.getpid(), signal.SIGKILL)
compat._RunnerTorch.save = classmethod(save)
launcher.main(sys.argv[1:])
"""


def test_a_kill_between_dev_best_and_states_leaves_a_states_checkpoint(tiny_ckpt, tiny_fsc, tmp_path):
    import os

    script = tmp_path / "killing_launcher.py"
    script.write_text(_KILL_BETWEEN_SAVES)
    expdir = tmp_path / "exp"
    overrides = ("config.runner.total_steps=6,,config.runner.log_step=2,,config.runner.eval_step=2,,"
                 "config.runner.save_step=2,,config.runner.max_keep=1,,config.runner.eval_dataloaders=['dev'],,"
                 f"config.downstream_expert.datarc.num_workers=0,,config.downstream_expert.datarc.file_path='{tiny_fsc}'")
    train = ["-m", "train", "-u", "wavlm_ladapter", "-k", tiny_ckpt, "-d", "fluent_commands", "-p", str(expdir),
             "-o", overrides]
    killed = subprocess.run([sys.executable, str(script)] + train, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (expdir / "dev-best.ckpt").exists()
    survivors = sorted(p.name for p in expdir.glob("states-*.ckpt"))
    assert survivors == ["states-2.ckpt"], survivors  # states-4 never written; states-2 must not be gone

    resumed = subprocess.run([tool("run_downstream.py"), "-m", "train", "-e", str(expdir / "states-2.ckpt")],
                             capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert sorted(p.name for p in expdir.glob("states-*.ckpt")) == ["states-6.ckpt"]


def test_sv_expert_cuda_calls_follow_the_features_device():
    """What the ASV workaround installs: `.cuda()` inside the expert's forward lands on the features'
    device (cuda:1 under --device cuda:1; here, where no GPU may exist, the meta and CPU devices)."""
    import torch

    from s3prl_adapters.bridge.compat import cuda_calls_go_to, sv_expert_hardcodes_cuda

    real = torch.Tensor.cuda
    for device in (torch.device("meta"), torch.device("cpu")):
        with cuda_calls_go_to(device):
            assert torch.ones(2).cuda().device == device
        assert torch.Tensor.cuda is real

    from s3prl.downstream.sv_voxceleb1.expert import DownstreamExpert

    seen = []
    original = DownstreamExpert.forward
    try:
        DownstreamExpert.forward = lambda self, mode, features, *a, **k: seen.append(torch.zeros(1).cuda().device)
        sv_expert_hardcodes_cuda()
        DownstreamExpert.forward(None, "train", [torch.zeros(3, 2, device="meta")])
    finally:
        DownstreamExpert.forward = original
    assert seen == [torch.device("meta")]


def test_sv_dev_split_is_scored_on_its_own_trials(tmp_path):
    """The ASV expert scores 'dev' with the test trial list; with the workaround it scores the dev
    split's embeddings on the dev trial list (and 'test' still on the test list)."""
    from types import SimpleNamespace

    import torch
    from tensorboardX import SummaryWriter  # what S3PRL's runner logs with

    from s3prl.downstream.sv_voxceleb1.expert import DownstreamExpert
    from s3prl.downstream.sv_voxceleb1.utils import EER

    from s3prl_adapters.bridge.compat import sv_dev_scoring_reads_the_test_trials

    def expert():
        def vec(*v):
            return torch.nn.functional.normalize(torch.tensor(v, dtype=torch.float), dim=-1)

        dev = [["1", "d/a/1.wav", "d/a/2.wav"], ["0", "d/a/1.wav", "d/b/1.wav"]]
        test = [["1", "t/x/1.wav", "t/x/2.wav"], ["0", "t/x/1.wav", "t/y/1.wav"]]
        return SimpleNamespace(dev_dataset=SimpleNamespace(pair_table=dev), test_dataset=SimpleNamespace(pair_table=test),
                               score_fn=torch.nn.CosineSimilarity(dim=-1), eval_metric=EER, best_score=torch.ones(1) * 100,
                               expdir=str(tmp_path)), {"d/a/1.wav": vec(1, 0), "d/a/2.wav": vec(1, 0.1),
                                                       "d/b/1.wav": vec(0, 1)}

    logger = SummaryWriter(str(tmp_path / "tb"))
    installed = DownstreamExpert.log_records  # the workaround may be installed already (an earlier test's run)
    original = getattr(installed, "_s3prl_adapters_original", installed)
    self, embeddings = expert()
    with pytest.raises(Exception):  # stock: the test trials' files are not among the dev embeddings
        original(self, "dev", defaultdict(list, embeddings), logger, 1)
    try:
        DownstreamExpert.log_records = original
        sv_dev_scoring_reads_the_test_trials()
        self, embeddings = expert()
        assert DownstreamExpert.log_records(self, "dev", defaultdict(list, embeddings), logger, 1) == ["dev-best.ckpt"]
        assert float(self.best_score) == 0.0 and self.test_dataset.pair_table[0][1] == "t/x/1.wav"  # restored
        assert open(tmp_path / "dev_predict.txt").read().split("\n")[0].startswith("d-a-1_d-a-2 ")
    finally:
        DownstreamExpert.log_records = installed


def test_lazy_hub_imports_only_what_the_run_uses_and_still_resolves_every_upstream():
    probe = ("import sys\n"
             "if sys.argv[1] == 'with':\n"
             "    from s3prl_adapters.bridge import compat; compat.s3prl_hub_imports_every_upstream()\n"
             "import s3prl.run_downstream\n"
             "from s3prl import hub\n"
             "print(callable(hub.wavlm_local), 'transformers' in sys.modules, 's3prl.upstream.hubert.hubconf' in sys.modules)\n"
             "listed = [n for n in dir(hub) if n[0] != '_']  # what S3PRL's argument parser asks at every start\n"
             "print('transformers' in sys.modules, 's3prl.upstream.hubert.hubconf' in sys.modules)\n"
             "print(callable(hub.hubert_local), 'options' in dir(hub))\n"
             "print(listed == [n for n in dir(hub) if n[0] != '_'], len(listed) > 100)\n")
    stock = subprocess.run([sys.executable, "-c", probe, "without"], capture_output=True, text=True, timeout=300)
    assert stock.stdout.splitlines()[0] == "True True True"  # S3PRL's hub imports every family up front
    lazy = subprocess.run([sys.executable, "-c", probe, "with"], capture_output=True, text=True, timeout=300)
    assert lazy.returncode == 0, lazy.stderr[-2000:]
    # WavLM alone, also after listing the names; the rest on demand, and the list read from the
    # hubconfs' source is the one the real hub has once loaded
    assert lazy.stdout.splitlines() == ["True False False", "False False", "True True", "True True"]


def test_run_downstream_gets_the_lazy_hub_before_s3prl_s_runner_imports_the_real_one():
    probe = ("import sys\n"
             "from s3prl_adapters.bridge import launcher\n"
             "from s3prl_adapters.errors import UserError\n"
             "try:\n"
             "    launcher.run(['-m', 'train', '-u', 'wavlm_ladapter', '-d', 'no_such_task', '-n', 'x'], 60.0)\n"
             "except UserError:\n"
             "    pass\n"
             "print('s3prl.downstream.runner' in sys.modules, 's3prl.upstream.hubert.hubconf' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", "False"]  # S3PRL's runner imported, no other upstream family


_OUT_OF_MEMORY_AT = """
import sys
from s3prl.downstream.fluent_commands import expert
from s3prl_adapters.bridge import launcher

failing = {int(n) for n in sys.argv[1].split(",")}
calls = [0]
forward = expert.DownstreamExpert.forward

def forward_that_runs_out_of_memory(self, mode, *args, **kwargs):
    if mode == "train":
        calls[0] += 1
        if calls[0] in failing:  # what torch raises when a CUDA allocation fails
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
    return forward(self, mode, *args, **kwargs)

expert.DownstreamExpert.forward = forward_that_runs_out_of_memory
launcher.main(sys.argv[2:])
"""


@pytest.mark.parametrize("failing, share, ok", [("3", 0.2, True), ("2,4,6,8", 0.2, False)])
def test_batches_skipped_for_out_of_memory_are_counted_and_limited(tiny_ckpt, tiny_fsc, tmp_path, failing, share, ok):
    """S3PRL skips a batch that runs out of GPU memory with one printed line: the run says how many it skipped
    and records them; past runner.max_skipped_share of its batches it stops in one line."""
    import json
    import os

    script = tmp_path / "oom_launcher.py"
    script.write_text(_OUT_OF_MEMORY_AT)
    expdir = tmp_path / "exp"
    overrides = (f"config.runner.total_steps=10,,config.runner.log_step=5,,config.runner.eval_step=100,,"
                 f"config.runner.save_step=10,,config.runner.max_skipped_share={share},,"
                 f"config.downstream_expert.datarc.num_workers=0,,config.downstream_expert.datarc.file_path='{tiny_fsc}'")
    proc = subprocess.run([sys.executable, str(script), failing, "-m", "train", "-u", "wavlm_ladapter", "-k", tiny_ckpt,
                           "-d", "fluent_commands", "-p", str(expdir), "--device", "cpu", "-o", overrides],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if ok:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "1 training batch(es) ran out of GPU memory and were skipped (steps [" in proc.stderr
        assert json.load(open(expdir / "skipped_batches.json"))["skipped_batches"] == 1
        assert (expdir / "states-10.ckpt").exists()  # the skipped batch did not count as a step
    else:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("run_downstream.py: error:")]
        assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
        assert errors[0].startswith("run_downstream.py: error: 2 of 4 training batches ran out of GPU memory")
        assert "runner.max_skipped_share = 0.2" in errors[0] and "Traceback" not in proc.stderr

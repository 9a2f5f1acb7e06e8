"""Using the package as a library changes nothing of torch or S3PRL: importing it, loading `.adapter`
files of every task, exporting a run's checkpoint, building `MultiTaskWavLM` and predicting leave
every attribute of torch's, torchaudio's and S3PRL's modules (and of S3PRL's classes), torch's
weights-only allow-list and `sys.modules` as they were, apart from the documented hub registration
(the adapter upstreams added to `s3prl.hub`). The S3PRL corrections are our launcher's business
(bridge/compat.py); here they must not leak. Measured in a fresh process, so nothing of pytest's
or another test's imports counts."""

import json
import os
import subprocess
import sys

import pytest

from conftest import tool

PROBE = r'''
import copy, importlib, json, sys, types
import torch, torchaudio, torch.distributed, torch.serialization, torch.cuda
for name in ["s3prl", "s3prl.downstream.runner", "s3prl.downstream.model", "s3prl.upstream.interfaces",
             "s3prl.upstream.wavlm.WavLM", "s3prl.upstream.wavlm.expert", "s3prl.upstream.wavlm.hubconf"] + [
        f"s3prl.downstream.{t}.{m}" for t in ("asr", "fluent_commands", "emotion", "sv_voxceleb1", "voxceleb1")
        for m in ("expert", "dataset")]:
    importlib.import_module(name)  # the KS expert cannot import without catalyst: it is checked as a new module

WATCHED = ("torch", "torchaudio", "s3prl", "catalyst")


DATA = (dict, set, frozenset, list, tuple, int, float, str, bytes, bool, type(None))


def kept(value):
    """An attribute as it was: the object, and for plain data a copy of its value."""
    return (value, copy.copy(value) if type(value) in DATA else None)


def same(a, b):
    """Not rebound: the same object, or plain data rebound to an equal value (torch rebinds its own
    allow-list to an equal fresh set). Caches that torch fills in place keep their identity."""
    if a is None or b is None:
        return False
    if a[0] is b[0]:
        return True
    return a[1] is not None and (a[1] == b[0] or (a[1] != a[1] and b[0] != b[0]))  # nan is nan


def snapshot():
    modules = {n: m for n, m in sys.modules.items() if n.split(".")[0] in WATCHED and isinstance(m, types.ModuleType)}
    attrs = {}
    for n, m in modules.items():
        for k, v in list(vars(m).items()):
            attrs[f"{n}:{k}"] = kept(v)
            if isinstance(v, type) and getattr(v, "__module__", "").startswith("s3prl"):
                for ck, cv in list(vars(v).items()):
                    attrs[f"{n}:{k}.{ck}"] = kept(cv)
    for k, v in vars(torch.Tensor).items():
        attrs[f"torch.Tensor.{k}"] = kept(v)
    safe = torch.serialization.get_safe_globals() if hasattr(torch.serialization, "get_safe_globals") else []
    safe = sorted(repr(g) for g in safe)  # a set: its order is no part of it
    return {"attrs": attrs, "sys_modules": {n: id(m) for n, m in sys.modules.items()}, "safe_globals": safe,
            "module_values": {k for k, v in ((f"{n}:{a}", x) for n, m in modules.items() for a, x in vars(m).items())
                              if isinstance(v, types.ModuleType)}}


before = snapshot()
keep = [sys.modules[n] for n in before["sys_modules"]]  # ids stay unique while the objects live

import s3prl_adapters
from s3prl_adapters import AdapterSet, MultiTaskWavLM
from s3prl_adapters.inference.export import export

args = json.loads(sys.argv[1])
sets = [AdapterSet.load(p) for p in args["sets"]]
export(args["checkpoint"], backbone=args["backbone"], threshold=False, progress=False).save(args["exported"])
sets.append(AdapterSet.load(args["exported"]))
model = MultiTaskWavLM(args["backbone"], sets)
torch.manual_seed(0)
answers = model.predict([torch.randn(24000), torch.randn(20000)])
after = snapshot()

changed = sorted(k for k, v in before["attrs"].items() if not same(v, after["attrs"].get(k)))
registered = {f"s3prl.hub:{name}" for name in s3prl_adapters.bridge.hubconf.UPSTREAMS}  # the documented registration
added = sorted(k for k in set(after["attrs"]) - set(before["attrs"]) - registered
               if k.split(":")[0] in {n.split(":")[0] for n in before["attrs"]} and k not in after["module_values"]
               and not k.endswith(":__warningregistry__"))  # Python's record of warnings already shown
hub = sys.modules.get("s3prl.hub")
replaced = sorted(n for n, i in before["sys_modules"].items() if after["sys_modules"].get(n) != i)
new_modules = sorted(set(after["sys_modules"]) - set(before["sys_modules"]))
print(json.dumps({"changed": changed, "added": added, "replaced_modules": replaced,
                  "new_watched_modules": [n for n in new_modules if n.split(".")[0] in WATCHED],
                  "safe_globals_before": before["safe_globals"], "safe_globals_after": after["safe_globals"],
                  "answered": sorted(answers[0]),
                  "hub_has_adapters": hub is not None and all(hasattr(hub, n) for n in s3prl_adapters.bridge.hubconf.UPSTREAMS)}))
'''


@pytest.fixture(scope="module")
def adapter_files(tiny_ckpt, tiny_fsc, tmp_path_factory):
    """An untrained set of every task (several methods), and a 2-step IC run's checkpoint to export."""
    from s3prl_adapters.inference.adapter_set import untrained
    from s3prl_adapters.tasks import TASKS

    out = tmp_path_factory.mktemp("sets")
    paths = []
    for i, task in enumerate(t for t in TASKS if TASKS[t].trains):  # QbE has no head: nothing to export
        upstream = ("wavlm_ladapter", "wavlm_lora", "wavlm_eadapter")[i % 3]
        path = str(out / f"{task}.adapter")
        untrained(task, upstream, tiny_ckpt, name=task).save(path)
        paths.append(path)
    exp = out / "ic_run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([tool("run_downstream.py"), "-m", "train", "-u", "wavlm_ladapter", "-k", tiny_ckpt, "-d",
                           "fluent_commands", "-p", str(exp), "-o",
                           "config.runner.total_steps=2,,config.runner.eval_step=2,,config.runner.save_step=2,,"
                           f"config.downstream_expert.datarc.file_path='{tiny_fsc}'"],
                          capture_output=True, text=True, timeout=600, cwd=str(out), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"sets": paths, "checkpoint": str(exp / "states-2.ckpt"), "exported": str(out / "exported_ic.adapter"),
            "backbone": tiny_ckpt}


def test_library_use_leaves_torch_and_s3prl_as_they_were(adapter_files, tmp_path):
    from s3prl_adapters.tasks import TASKS

    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(adapter_files)], capture_output=True, text=True,
                          timeout=600, cwd=str(tmp_path), env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["answered"] == sorted({os.path.basename(p).rsplit(".", 1)[0] for p in adapter_files["sets"]}
                                      | {"exported_ic"}) and sum(t.trains for t in TASKS.values()) == 9
    assert seen["changed"] == [], seen["changed"]
    assert seen["added"] == [], seen["added"]  # a new attribute of a module we did not import is a patch too
    assert seen["replaced_modules"] == [], seen["replaced_modules"]
    assert not [n for n in seen["new_watched_modules"] if n.split(".")[0] == "catalyst"], seen["new_watched_modules"]
    assert seen["safe_globals_after"] == seen["safe_globals_before"]
    assert seen["hub_has_adapters"]  # what importing the package is for


def test_the_probe_sees_a_patch(adapter_files, tmp_path):
    """The probe is not blind: the launcher's own corrections, installed in the same process, show up."""
    probe = PROBE.replace("after = snapshot()", "from s3prl_adapters.bridge import compat\n"
                          "compat.install_runtime_workarounds('cpu', 10.0)\ncompat.install_task_workarounds('sv_voxceleb1')\n"
                          "compat.install_task_workarounds('speech_commands')\nafter = snapshot()")
    proc = subprocess.run([sys.executable, "-c", probe, json.dumps(adapter_files)], capture_output=True, text=True,
                          timeout=600, cwd=str(tmp_path), env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    for patched in ("s3prl.downstream.runner:DDP", "s3prl.downstream.runner:torch",
                    "s3prl.downstream.sv_voxceleb1.expert:DownstreamExpert.forward", "torch.cuda:set_device"):
        assert patched in seen["changed"], patched
    assert "catalyst" in seen["new_watched_modules"]
    assert seen["safe_globals_after"] != seen["safe_globals_before"]

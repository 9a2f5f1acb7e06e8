"""No file runs code through S3PRL's eval(): every config string the supported recipes evaluate or pick a
class by is checked wherever a config comes from a file (`-c`, `-e` checkpoints for evaluate and resume,
`-a`, export, `.adapter` files for predict/verify/AdapterSet.load). For each listed field a crafted value
that would create a file is refused in one line naming file, field and value, and the file never appears.
The list itself is checked against S3PRL's installed sources."""

import argparse
import os
import pathlib
import subprocess

import pytest
import torch
import yaml

import s3prl
from conftest import REPO, tool
from s3prl_adapters.bridge import compat
from s3prl_adapters.bridge.config_guard import CODE_SITES, SITES, check_checkpoint, source_sites, uncovered_sites
from s3prl_adapters.errors import UserError

S3PRL = os.path.dirname(s3prl.__file__)


def test_every_eval_site_of_the_supported_recipes_is_listed():
    """A new eval()/class lookup in S3PRL's recipes (another S3PRL version) fails here until it is listed."""
    assert uncovered_sites(S3PRL) == []
    found = {site[:2] for site in source_sites(S3PRL)}
    stale = [(s.file, s.line) for s in SITES if (s.file, s.line) not in found] + [k for k in CODE_SITES if k not in found]
    assert stale == []  # every listed line still holds its call


def _config(task):
    return yaml.safe_load(open(os.path.join(REPO, "downstream_configs", task, "mini.yaml")))


def _evil(marker):
    return f"__import__('pathlib').Path({str(marker)!r}).touch() or 'X'"


# (task, path into the config, how to make the field reachable first): one case per field of SITES
FIELDS = [
    ("fluent_commands", ["optimizer", "name"], None),
    ("fluent_commands", ["optimizer", "torch_optim_name"], None),
    ("fluent_commands", ["scheduler", "name"], lambda c: c.update(scheduler={"name": "linear_schedule_with_warmup"})),
    ("fluent_commands", ["downstream_expert", "modelrc", "select"], None),
    ("fluent_commands", ["downstream_expert", "modelrc", "UtteranceLevel", "pooling"], None),
    ("fluent_commands", ["downstream_expert", "modelrc", "UtteranceLevel", "activation"], None),
    ("fluent_commands", ["downstream_expert", "modelrc", "UtteranceLevel", "post_net", "select"],
     lambda c: c["downstream_expert"]["modelrc"]["UtteranceLevel"].update(post_net={"select": "FrameLevel"})),
    ("fluent_commands", ["downstream_expert", "modelrc", "UtteranceLevel", "post_net", "FrameLevel", "activation"],
     lambda c: c["downstream_expert"]["modelrc"]["UtteranceLevel"].update(
         post_net={"select": "FrameLevel", "FrameLevel": {"hiddens": [8]}})),
    ("fluent_commands", ["runner", "eval_dataloaders", 0], None),
    ("emotion", ["downstream_expert", "modelrc", "DeepModel", "model_type"],
     lambda c: c["downstream_expert"]["modelrc"].update(select="DeepModel")),
    ("emotion", ["runner", "train_dataloader"], lambda c: c["runner"].update(train_dataloader="train")),
    ("asr", ["downstream_expert", "modelrc", "select"], None),
    ("asr", ["downstream_expert", "modelrc", "RNNs", "module"], None),
    ("asr", ["downstream_expert", "datarc", "decoder_args", "unk_weight"], None),
    ("sv_voxceleb1", ["downstream_expert", "modelrc", "module"], None),
    ("sv_voxceleb1", ["downstream_expert", "modelrc", "agg_module"], None),
    ("sv_voxceleb1", ["downstream_expert", "modelrc", "utter_module"], None),
    ("sv_voxceleb1", ["downstream_expert", "modelrc", "ObjectiveLoss"], None),
    ("speech_commands", ["downstream_expert", "modelrc", "select"], None),
    ("voxceleb1", ["downstream_expert", "modelrc", "select"], None),
    ("voxceleb1", ["runner", "eval_dataloaders", 0], None),
]


def _crafted_config(task, path, prepare, marker):
    config = _config(task)
    if prepare:
        prepare(config)
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = _evil(marker)
    return config


def _field_name(path):
    return ".".join(str(p) if not isinstance(p, int) else "" for p in path).replace("..", "").rstrip(".")


def test_each_field_is_reached_and_would_run_code_without_the_check(tmp_path):
    """The crafted values are live: S3PRL's own code, given two of them, creates the file."""
    from s3prl.downstream.model import get_downstream_model

    marker = tmp_path / "ran"
    with pytest.raises(Exception):
        get_downstream_model(4, 2, {"select": _evil(marker)})
    assert marker.exists()
    marker.unlink()
    from s3prl.optimizers import get_optimizer

    get_optimizer([torch.nn.Linear(2, 2)], 10, {"name": "Adam if " + _evil(marker) + " else Adam", "lr": 1e-3})
    assert marker.exists()  # and S3PRL built an Adam as if nothing had happened


@pytest.mark.parametrize("task, path, prepare", FIELDS, ids=[f"{t}:{_field_name(p)}" for t, p, _ in FIELDS])
def test_each_field_is_refused_in_a_checkpoint(task, path, prepare, tmp_path):
    """Through the launcher's check of `-e` (and so `-a`): one line naming file, field and value."""
    from s3prl_adapters.bridge.launcher import prepare_argv

    compat.s3prl_checkpoints_fail_weights_only_load()
    marker = tmp_path / "ran"
    ckpt = tmp_path / "states-10.ckpt"
    torch.save({"Args": argparse.Namespace(upstream="wavlm_ladapter", downstream=task, upstream_ckpt=None),
                "Config": _crafted_config(task, path, prepare, marker), "Step": 10}, ckpt)
    with pytest.raises(UserError) as refused:
        prepare_argv(["-m", "evaluate", "-e", str(ckpt)])
    message = str(refused.value)
    assert message.startswith(f"checkpoint {ckpt}: ") and "\n" not in message
    assert _field_name(path).split(".")[-1] in message and "__import__" in message
    assert not marker.exists()
    # the valid config itself passes
    valid = _config(task)
    if prepare:
        prepare(valid)
    check_checkpoint({"Args": argparse.Namespace(upstream="wavlm_ladapter", downstream=task), "Config": valid}, "x")


@pytest.mark.parametrize("field, value", [("upstream", "__import__('os').system('x')"), ("downstream", "asr.expert;x")])
def test_args_names_are_refused(field, value):
    args = argparse.Namespace(upstream="wavlm_local", downstream="fluent_commands")
    setattr(args, field, value)
    with pytest.raises(UserError, match=f"checkpoint c: Args.{field} = "):
        check_checkpoint({"Args": args, "Config": _config("fluent_commands")}, "c")


def test_unk_weight_takes_numbers_and_infinity_only():
    from s3prl_adapters.bridge.config_guard import _number_or_inf

    assert all(_number_or_inf(v) for v in ("-math.inf", "math.inf", "+math.inf", "-1.5", "2", -3, 0.5))
    assert not any(_number_or_inf(v) for v in ("math.pi", "-math.inf()", "__import__('os')", "1+1", True, "inf"))


# ---- the entry points, end to end, each with a crafted file ---------------------------------------

@pytest.fixture(scope="module")
def run_dir(tiny_ckpt, tiny_fsc, tmp_path_factory):
    """A real two-step IC run (its checkpoint and an exported set are the bases of the crafted files)."""
    folder = tmp_path_factory.mktemp("guard")
    proc = subprocess.run(
        [tool("run_downstream.py"), "-m", "train", "-u", "wavlm_ladapter", "-k", tiny_ckpt, "-d", "fluent_commands",
         "-c", os.path.join(REPO, "downstream_configs", "fluent_commands", "mini.yaml"), "-p", str(folder / "exp"),
         "-o", "config.runner.total_steps=2,,config.runner.eval_step=2,,config.runner.save_step=2,,"
               f"config.downstream_expert.datarc.train_batch_size=4,,config.downstream_expert.datarc.file_path='{tiny_fsc}'"],
        capture_output=True, text=True, timeout=600, cwd=str(folder))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert subprocess.run([tool("s3prl-adapters"), "export", str(folder / "exp" / "states-2.ckpt"), "-o",
                           str(folder / "ic.adapter")], capture_output=True, timeout=600).returncode == 0
    return folder


def _refused(proc, marker, source, field):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert f"{source}: {field} = " in last and "__import__" in last, last
    assert not marker.exists()


def _crafted_checkpoint(run_dir, tmp_path, name="states-2.ckpt"):
    compat.s3prl_checkpoints_fail_weights_only_load()
    marker = tmp_path / "ran"
    ckpt = torch.load(run_dir / "exp" / "states-2.ckpt", weights_only=True)
    ckpt["Config"]["downstream_expert"]["modelrc"]["UtteranceLevel"]["pooling"] = _evil(marker)
    folder = tmp_path / "exp"
    folder.mkdir(exist_ok=True)
    torch.save(ckpt, folder / name)
    return folder / name, marker


@pytest.mark.parametrize("how", ["evaluate -e", "train -e", "train -a", "export"])
def test_a_crafted_checkpoint_through_every_entry_point(how, run_dir, tiny_ckpt, tmp_path):
    ckpt, marker = _crafted_checkpoint(run_dir, tmp_path)
    argv = {"evaluate -e": [tool("run_downstream.py"), "-m", "evaluate", "-e", str(ckpt)],
            "train -e": [tool("run_downstream.py"), "-m", "train", "-e", str(ckpt)],
            "train -a": [tool("run_downstream.py"), "-m", "train", "-a", "-p", str(ckpt.parent), "-u", "wavlm_ladapter",
                         "-k", tiny_ckpt, "-d", "fluent_commands"],
            "export": [tool("s3prl-adapters"), "export", str(ckpt), "-o", str(tmp_path / "x.adapter")]}[how]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    _refused(proc, marker, f"checkpoint {ckpt}", "downstream_expert.modelrc.UtteranceLevel.pooling")
    assert not (tmp_path / "x.adapter").exists()


def test_a_crafted_config_file_is_refused(run_dir, tiny_ckpt, tiny_fsc, tmp_path):
    marker = tmp_path / "ran"
    config = _crafted_config("fluent_commands", ["downstream_expert", "modelrc", "select"], None, marker)
    crafted = tmp_path / "crafted.yaml"
    crafted.write_text(yaml.safe_dump(config))
    proc = subprocess.run([tool("run_downstream.py"), "-m", "train", "-u", "wavlm_ladapter", "-k", tiny_ckpt, "-d",
                           "fluent_commands", "-c", str(crafted), "-p", str(tmp_path / "exp")],
                          capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    _refused(proc, marker, f"-c {crafted}", "downstream_expert.modelrc.select")
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text(open(os.path.join(REPO, "downstream_configs", "fluent_commands", "mini.yaml")).read()
                      + f"extra: !!python/object/apply:os.system ['touch {marker}']\n")
    proc = subprocess.run([tool("run_downstream.py"), "-m", "train", "-u", "wavlm_ladapter", "-k", tiny_ckpt, "-d",
                           "fluent_commands", "-c", str(tagged), "-p", str(tmp_path / "exp2")],
                          capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and not marker.exists()
    assert proc.stderr.strip().splitlines()[-1].startswith(f"run_downstream.py: error: -c {tagged}: not plain YAML")


def _crafted_set(run_dir, tmp_path, mutate):
    state = torch.load(run_dir / "ic.adapter", weights_only=True)
    mutate(state)
    path = tmp_path / "crafted.adapter"
    torch.save(state, path)
    return path


HEAD_FIELDS = [["select"], ["UtteranceLevel", "pooling"], ["UtteranceLevel", "activation"]]


@pytest.mark.parametrize("field", HEAD_FIELDS, ids=[".".join(f) for f in HEAD_FIELDS])
def test_each_head_field_of_an_adapter_set_is_refused(field, run_dir, tmp_path):
    from s3prl_adapters.inference import AdapterSet

    marker = tmp_path / "ran"

    def mutate(state):
        node = state["head"]["modelrc"]
        for key in field[:-1]:
            node = node[key]
        node[field[-1]] = _evil(marker)

    path = _crafted_set(run_dir, tmp_path, mutate)
    with pytest.raises(UserError, match=f"{path}: head.modelrc.{'.'.join(field)} = "):
        AdapterSet.load(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("command", ["predict", "verify"])
def test_a_crafted_adapter_set_through_predict_and_verify(command, run_dir, tiny_ckpt, tiny_fsc, tmp_path):
    marker = tmp_path / "ran"
    path = _crafted_set(run_dir, tmp_path, lambda s: s["head"]["modelrc"]["UtteranceLevel"].update(pooling=_evil(marker)))
    wavs = sorted(str(p) for p in pathlib.Path(tiny_fsc).rglob("*.wav"))[:2]
    proc = subprocess.run([tool("s3prl-adapters"), command, "--backbone", tiny_ckpt, "--adapters", str(path), *wavs],
                          capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    _refused(proc, marker, str(path), "head.modelrc.UtteranceLevel.pooling")


def test_a_malformed_adapter_set_is_one_line(run_dir, tiny_ckpt, tiny_fsc, tmp_path):
    path = _crafted_set(run_dir, tmp_path, lambda s: s["head"]["modelrc"].update(select="Utterance Level("))
    wav = sorted(str(p) for p in pathlib.Path(tiny_fsc).rglob("*.wav"))[0]
    proc = subprocess.run([tool("s3prl-adapters"), "predict", "--backbone", tiny_ckpt, "--adapters", str(path), wav],
                          capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "head.modelrc.select = 'Utterance Level(' is not a class name" in proc.stderr.strip().splitlines()[-1]

"""Config strings that S3PRL 0.4.18 turns into code or classes, checked before S3PRL sees them.

S3PRL's recipes pass some config strings to `eval()` (a string there is Python: it can import a
module and run a command) or to `getattr()` to pick a class. A config that comes from a file (a `-c`
YAML, the `Config` and `Args` an `-e` checkpoint carries and S3PRL adopts whole, the head of an
exported `.adapter` file) is checked here first: each such string must be a plain name of a class in
the namespace that looks it up (for `unk_weight`: a number or ±math.inf). A bad value ends in one
line naming the file, the field and the value; nothing of it runs.

`SITES` lists every site in the recipes this package supports (asr, fluent_commands, emotion,
sv_voxceleb1, speech_commands, voxceleb1), in `downstream/model.py`, the runner, its optimizer and
scheduler factories and the launcher: where a config string reaches `eval()` or picks a class, and
what a legitimate value is. `CODE_SITES` lists the other `eval()`/class-picking calls of those files,
whose strings come from S3PRL's own code or the command line, never from a file.
tests/test_config_guard.py fails when S3PRL's sources hold a site neither list names."""

import ast
import importlib
import keyword
import os
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

from s3prl_adapters.errors import UserError


@dataclass(frozen=True)
class Site:
    file: str
    """Relative to the installed `s3prl` package."""
    line: int
    field: str
    """Where the string comes from (a config path, or `Args.<name>` of a checkpoint)."""
    legitimate: str
    """What a value may be."""


_RECIPE_CLASS = "a class (nn.Module) named in the recipe's expert.py namespace"
SITES = (
    Site("optimizers.py", 22, "optimizer.name", "a name X with a get_X function in s3prl/optimizers.py"),
    Site("optimizers.py", 94, "optimizer.torch_optim_name", "a torch.optim optimizer class name"),
    Site("schedulers.py", 15, "scheduler.name", "a name X with a get_X function in s3prl/schedulers.py"),
    Site("downstream/runner.py", 141, "Args.upstream", "a public name of s3prl.hub (or an s3prl-adapters upstream)"),
    Site("downstream/runner.py", 184, "Args.downstream", "the name of a recipe folder of s3prl/downstream with expert.py"),
    Site("downstream/model.py", 7, "<net>.select (UtteranceLevel pre_net / post_net)",
         "a class name of s3prl/downstream/model.py"),
    Site("downstream/model.py", 22, "<FrameLevel conf>.activation", "a torch.nn module class name"),
    Site("downstream/model.py", 48, "<UtteranceLevel conf>.pooling", "a class name of s3prl/downstream/model.py"),
    Site("downstream/model.py", 108, "<UtteranceLevel conf>.activation (AttentivePooling)", "a torch.nn module class name"),
    Site("downstream/asr/expert.py", 35, "downstream_expert.datarc.decoder_args.unk_weight",
         "a number, or math.inf / -math.inf"),
    Site("downstream/asr/expert.py", 89, "downstream_expert.modelrc.select", _RECIPE_CLASS),
    Site("downstream/asr/model.py", 39, "downstream_expert.modelrc.RNNs.module", "LSTM, GRU or RNN (any case)"),
    Site("downstream/fluent_commands/expert.py", 37, "downstream_expert.modelrc.select", _RECIPE_CLASS),
    Site("downstream/fluent_commands/expert.py", 97, "runner.eval_dataloaders[*], runner.train_dataloader",
         "a split X the expert has a get_X_dataloader method for"),
    Site("downstream/emotion/expert.py", 56, "downstream_expert.modelrc.select", _RECIPE_CLASS),
    Site("downstream/emotion/expert.py", 100, "runner.eval_dataloaders[*], runner.train_dataloader",
         "a split X the expert has a get_X_dataloader method for"),
    Site("downstream/emotion/model.py", 194, "<DeepModel conf>.model_type", "a class name of s3prl/downstream/emotion/model.py"),
    Site("downstream/speech_commands/expert.py", 38, "downstream_expert.modelrc.select", _RECIPE_CLASS),
    Site("downstream/voxceleb1/expert.py", 51, "downstream_expert.modelrc.select", _RECIPE_CLASS),
    Site("downstream/voxceleb1/expert.py", 89, "runner.eval_dataloaders[*], runner.train_dataloader",
         "a split X the expert has a get_X_dataloader method for"),
    Site("downstream/sv_voxceleb1/expert.py", 112, "downstream_expert.modelrc.ObjectiveLoss",
         "a class name of s3prl/downstream/sv_voxceleb1/expert.py"),
    Site("downstream/sv_voxceleb1/model.py", 181, "downstream_expert.modelrc.module",
         "a class name of s3prl/downstream/sv_voxceleb1/model.py"),
    Site("downstream/sv_voxceleb1/model.py", 187, "downstream_expert.modelrc.agg_module",
         "a class name of s3prl/downstream/sv_voxceleb1/model.py"),
    Site("downstream/sv_voxceleb1/model.py", 193, "downstream_expert.modelrc.utter_module",
         "a class name of s3prl/downstream/sv_voxceleb1/model.py"),
    Site("downstream/ctc/expert.py", 39, "downstream_expert.model.select", _RECIPE_CLASS),
    Site("downstream/ctc/expert.py", 116, "downstream_expert.metric[*]",
         "a function name of s3prl/downstream/ctc/metric.py"),
)

CODE_SITES = {
    ("downstream/fluent_commands/model.py", 116): "Model(agg_module=...): the IC expert never imports this module",
    ("downstream/fluent_commands/model.py", 120): "Model(config['module']): the IC expert never imports this module",
    ("downstream/fluent_commands/model.py", 134): "UtterLinear(pooling_name=...): the IC expert never imports this module",
    ("downstream/voxceleb1/model.py", 116): "Model(agg_module=...): the SID expert never imports this module",
    ("downstream/voxceleb1/model.py", 120): "Model(config['module']): the SID expert never imports this module",
    ("downstream/voxceleb1/dataset.py", 37): "eval('self.' + mode): mode is 'train'/'dev'/'test' from the expert's code",
    ("downstream/asr/expert.py", 138): "getattr(self, split + '_dataset'): an attribute lookup, nothing runs",
    ("downstream/runner.py", 115): "getattr(model.module, interface): interface names from the runner's code",
    ("run_downstream.py", 215): "eval('runner.' + args.mode): -m from the command line (choices), never from a checkpoint",
    ("utility/helper.py", 84): "eval() of -o values: the command line; a checkpoint's override is never re-applied",
    ("upstream/interfaces.py", 75): "eval(hook.module_path): hook paths from the upstream expert's code",
    ("upstream/wavlm/expert.py", 47): "eval(module_name): module names from the expert's code",
    ("upstream/wavlm/WavLM.py", 257): "eval(cfg.conv_feature_layers): a backbone checkpoint's cfg, checked by "
                                      "method.backbone.parse_layer_spec before S3PRL loads it",
}

SCANNED_FILES = ("optimizers.py", "schedulers.py", "run_downstream.py", "utility/helper.py", "upstream/interfaces.py",
                 "upstream/wavlm/expert.py", "upstream/wavlm/WavLM.py", "downstream/runner.py", "downstream/model.py") + \
    tuple(f"downstream/{recipe}/{f}.py" for recipe in ("asr", "fluent_commands", "emotion", "sv_voxceleb1",
                                                       "speech_commands", "voxceleb1")
          for f in ("expert", "model", "dataset")) + \
    tuple(f"downstream/ctc/{f}.py" for f in ("expert", "data", "text", "metric"))
"""The sources whose eval()/class-picking calls SITES and CODE_SITES account for."""

RECIPES_WITH_EVAL_SPLITS = ("fluent_commands", "emotion", "voxceleb1")
"""Recipes whose get_dataloader runs eval(f'self.get_{split}_dataloader')."""


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 90 else text[:87] + "..."


class _Checker:
    """Walks one config, raising at the first field whose value is not legitimate."""

    def __init__(self, source: str):
        self.source = source

    def refuse(self, field: str, value, legitimate: str):
        raise UserError(f"{self.source}: {field} = {_short(value)} is not {legitimate}; refused before S3PRL "
                        f"would eval() or look it up")

    @staticmethod
    def _name(value) -> bool:
        return isinstance(value, str) and value.isidentifier() and not keyword.iskeyword(value)

    def class_in(self, field: str, value, module: str, base=None):
        import torch

        base = base or torch.nn.Module
        obj = vars(importlib.import_module(module)).get(value) if self._name(value) else None
        if not (isinstance(obj, type) and issubclass(obj, base)):
            names = sorted(k for k, v in vars(importlib.import_module(module)).items()
                           if isinstance(v, type) and issubclass(v, base) and v.__module__.startswith("s3prl"))
            self.refuse(field, value, f"a class name of {module.replace('.', '/')}.py ({', '.join(names[:6])}"
                                      f"{', ...' if len(names) > 6 else ''})")
        return obj

    def nn_class(self, field: str, value):
        import torch

        obj = getattr(torch.nn, value, None) if self._name(value) else None
        if not (isinstance(obj, type) and issubclass(obj, torch.nn.Module)):
            self.refuse(field, value, "a torch.nn module class name (ReLU, Tanh, ...)")

    def function(self, field: str, value, module: str):
        obj = vars(importlib.import_module(module)).get(f"get_{value}") if self._name(value) else None
        if not callable(obj):
            self.refuse(field, value, f"a name X with a get_X function in {module.replace('.', '/')}.py")


def _number_or_inf(text) -> bool:
    """A number literal, or math.inf, with an optional sign: what unk_weight's eval() may see."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return True
    try:
        node = ast.parse(str(text), mode="eval").body
    except SyntaxError:
        return False
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
    return (isinstance(node, ast.Attribute) and node.attr == "inf" and isinstance(node.value, ast.Name)
            and node.value.id == "math")


# ---- the model classes whose keyword arguments reach eval()/getattr() -------------------------------

def _net(c: _Checker, field: str, conf):
    """get_downstream_model(config): config['select'] in downstream/model.py, with its own conf."""
    if not isinstance(conf, dict):
        return
    cls = c.class_in(f"{field}.select", conf.get("select"), "s3prl.downstream.model")
    _model_kwargs(c, f"{field}.{conf['select']}", cls, conf.get(conf["select"], {}) or {})


def _model_kwargs(c: _Checker, field: str, cls, conf: dict):
    """The keyword arguments of the selected class that S3PRL evaluates, by class."""
    if not isinstance(conf, dict):
        return
    key = (cls.__module__, cls.__name__)
    if key == ("s3prl.downstream.model", "UtteranceLevel"):
        if "pooling" in conf:
            c.class_in(f"{field}.pooling", conf["pooling"], "s3prl.downstream.model")
        if "activation" in conf:
            c.nn_class(f"{field}.activation", conf["activation"])
        for net in ("pre_net", "post_net"):
            _net(c, f"{field}.{net}", conf.get(net))
    elif key == ("s3prl.downstream.model", "FrameLevel"):
        if "activation" in conf:
            c.nn_class(f"{field}.activation", conf["activation"])
    elif key == ("s3prl.downstream.emotion.model", "DeepModel"):
        c.class_in(f"{field}.model_type", conf.get("model_type"), "s3prl.downstream.emotion.model")
    elif key == ("s3prl.downstream.asr.model", "RNNs"):
        module = conf.get("module", "LSTM")
        if not (isinstance(module, str) and module.upper() in ("LSTM", "GRU", "RNN")):
            c.refuse(f"{field}.module", module, "LSTM, GRU or RNN")


def check_modelrc(modelrc: dict, downstream: str, source: str, prefix: str = "downstream_expert.modelrc") -> None:
    """The head's model config of one recipe (what a `.adapter` file carries, too)."""
    from s3prl_adapters.bridge import compat

    from s3prl_adapters.tasks import find_task

    c = _Checker(source)
    if not isinstance(modelrc, dict):
        c.refuse(prefix, modelrc, "a mapping")
    task = find_task(downstream)
    downstream = task.runs_as() if task else downstream  # an .adapter file names its task (pr), S3PRL the recipe (ctc)
    expert = compat.recipe_module(downstream).__name__  # KS's expert imports catalyst: importable, nothing left installed
    if downstream == "sv_voxceleb1":
        for key in ("module", "agg_module", "utter_module"):
            c.class_in(f"{prefix}.{key}", modelrc.get(key), "s3prl.downstream.sv_voxceleb1.model")
        c.class_in(f"{prefix}.ObjectiveLoss", modelrc.get("ObjectiveLoss"), expert)
        return
    if "select" not in modelrc:
        return  # the recipe fails on the missing key itself; nothing is evaluated
    cls = c.class_in(f"{prefix}.select", modelrc["select"], expert)
    _model_kwargs(c, f"{prefix}.{modelrc['select']}", cls, modelrc.get(modelrc["select"], {}) or {})


def check_config(config: dict, downstream: str, source: str) -> None:
    """Every field of SITES a downstream config (as S3PRL will use it for `downstream`) holds."""
    c = _Checker(source)
    if not isinstance(config, dict):
        c.refuse("the config", config, "a mapping")
    optimizer = config.get("optimizer") or {}
    if isinstance(optimizer, dict):
        if "name" in optimizer:
            c.function("optimizer.name", optimizer["name"], "s3prl.optimizers")
        if "torch_optim_name" in optimizer:
            import torch

            c.class_in("optimizer.torch_optim_name", optimizer["torch_optim_name"], "torch.optim", torch.optim.Optimizer)
    scheduler = config.get("scheduler")
    if isinstance(scheduler, dict) and "name" in scheduler:
        c.function("scheduler.name", scheduler["name"], "s3prl.schedulers")
    runner = config.get("runner") or {}
    splits = list(runner.get("eval_dataloaders") or []) + [runner.get("train_dataloader", "train")]
    for split in splits:
        if not isinstance(split, str):
            c.refuse("runner.eval_dataloaders", split, "a split name")
        if downstream in RECIPES_WITH_EVAL_SPLITS:
            expert = importlib.import_module(f"s3prl.downstream.{downstream}.expert").DownstreamExpert
            if not (c._name(split) and callable(getattr(expert, f"get_{split}_dataloader", None))):
                c.refuse("runner.eval_dataloaders / runner.train_dataloader", split,
                         f"a split of the {downstream} recipe (a get_<split>_dataloader method: train, dev, test)")
    expert_config = config.get("downstream_expert") or {}
    datarc = expert_config.get("datarc") or {}
    decoder = datarc.get("decoder_args") if isinstance(datarc, dict) else None
    if isinstance(decoder, dict) and "unk_weight" in decoder and not _number_or_inf(decoder["unk_weight"]):
        c.refuse("downstream_expert.datarc.decoder_args.unk_weight", decoder["unk_weight"], "a number or ±math.inf")
    if "modelrc" in expert_config:
        check_modelrc(expert_config["modelrc"], downstream, source)
    if downstream == "ctc" and isinstance(expert_config, dict):
        if "model" in expert_config:
            check_modelrc(expert_config["model"], downstream, source, prefix="downstream_expert.model")
        metrics = expert_config.get("metric") or []
        metric_module = importlib.import_module("s3prl.downstream.ctc.metric")
        for metric in metrics if isinstance(metrics, list) else [metrics]:
            function = vars(metric_module).get(metric) if c._name(metric) else None
            if not (callable(function) and getattr(function, "__module__", "") == metric_module.__name__):
                c.refuse("downstream_expert.metric", metric, "a function name of s3prl/downstream/ctc/metric.py (per, "
                                                             "wer, cer, slot_type_f1, slot_value_cer, ...)")


def available_tasks() -> List[str]:
    """S3PRL's recipes: the folders of s3prl/downstream with an expert.py."""
    from pathlib import Path

    import s3prl.downstream

    root = Path(s3prl.downstream.__file__).parent
    return sorted(p.name for p in root.iterdir() if (p / "expert.py").is_file())


def check_args(args, source: str) -> None:
    """The `Args` of a checkpoint: the names S3PRL's runner looks up a class or module by."""
    from s3prl_adapters.bridge.hubconf import UPSTREAMS

    c = _Checker(source)
    downstream = getattr(args, "downstream", None)
    if downstream not in available_tasks():
        c.refuse("Args.downstream", downstream, "the name of an S3PRL recipe (asr, fluent_commands, ...)")
    upstream = getattr(args, "upstream", None)
    if upstream not in UPSTREAMS and not (c._name(upstream) and not upstream.startswith("_")
                                          and upstream in hub_names()):
        c.refuse("Args.upstream", upstream, "an upstream name of s3prl.hub")


def hub_names() -> List[str]:
    """The names of `s3prl.hub`: of the loaded module when a process has one, else read from the
    hubconfs' source (importing the real hub runs 36 upstream families' imports; this changes nothing)."""
    import importlib.util
    import sys

    from s3prl_adapters.bridge import compat

    hub = sys.modules.get("s3prl.hub")
    if hub is not None:
        return dir(hub)
    return compat._hub_entry_names(importlib.util.find_spec("s3prl.hub").origin)


def check_checkpoint(ckpt: dict, path: str) -> None:
    """An S3PRL run checkpoint (`-e`, export): its Args, then its Config for the recipe its Args name."""
    source = f"checkpoint {path}"
    check_args(ckpt["Args"], source)
    check_config(ckpt.get("Config") or {}, ckpt["Args"].downstream, source)


def check_adapter_set(state: dict, path: str) -> None:
    """An exported `.adapter` file: its task, upstream and adapter settings are ones this package knows,
    and its head's model config passes check_modelrc for that task's recipe."""
    from dataclasses import fields

    from s3prl_adapters.bridge.hubconf import UPSTREAMS
    from s3prl_adapters.method.config import AdapterConfig
    from s3prl_adapters.tasks import TASKS

    c = _Checker(path)
    if state.get("task") not in TASKS:
        c.refuse("task", state.get("task"), f"a task of s3prl_adapters/tasks ({', '.join(TASKS)})")
    if state.get("upstream") not in list(UPSTREAMS) + ["wavlm_local"]:
        c.refuse("upstream", state.get("upstream"), f"an upstream predict serves ({', '.join(UPSTREAMS)}, wavlm_local)")
    adapter_config = state.get("adapter_config")
    if adapter_config is not None:
        known = {f.name for f in fields(AdapterConfig)}
        if not isinstance(adapter_config, dict) or set(adapter_config) - known:
            c.refuse("adapter_config", adapter_config, f"a mapping of AdapterConfig fields ({', '.join(sorted(known))})")
    head = state.get("head")
    if not isinstance(head, dict) or not isinstance(head.get("modelrc"), dict):
        c.refuse("head.modelrc", head.get("modelrc") if isinstance(head, dict) else head, "the recipe's model config")
    check_modelrc(head["modelrc"], state["task"], path, prefix="head.modelrc")


def load_config_file(path: str, downstream: Optional[str]) -> dict:
    """A `-c` downstream config: plain YAML (S3PRL's loader would also build Python objects from
    `!!python/...` tags) whose fields pass check_config."""
    import yaml

    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except OSError as e:
        raise UserError(f"-c {path}: cannot read ({e.strerror})") from None
    except yaml.constructor.ConstructorError as e:
        raise UserError(f"-c {path}: not plain YAML ({str(e.problem)}); tags that build Python objects are refused") \
            from None
    except yaml.YAMLError as e:
        raise UserError(f"-c {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if downstream:
        check_config(config or {}, downstream, f"-c {path}")
    return config or {}


# ---- S3PRL's sources: where eval() and class lookups happen (for the test that keeps SITES complete) ---

def source_sites(root: str) -> Iterator[Tuple[str, int, str]]:
    """(file, line, call) of every eval(...), getattr(<module or object>, <non-literal>) and import_module
    call in SCANNED_FILES under the installed s3prl package `root`."""
    for rel in SCANNED_FILES:
        path = os.path.join(root, rel)
        if not os.path.exists(path):
            continue
        tree = ast.parse(open(path).read(), filename=path)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else (
                node.func.attr if isinstance(node.func, ast.Attribute) else None)
            if name == "eval" and isinstance(node.func, ast.Name):
                yield rel, node.lineno, "eval"
            elif name == "import_module":
                yield rel, node.lineno, "import_module"
            elif name == "getattr" and isinstance(node.func, ast.Name) and len(node.args) >= 2 \
                    and not isinstance(node.args[1], ast.Constant):
                target = ast.unparse(node.args[0])
                if target in ("nn", "torch.optim", "hub", "model.module", "expert", "self"):
                    yield rel, node.lineno, f"getattr({target}, ...)"


def uncovered_sites(root: str) -> List[Tuple[str, int, str]]:
    known = {(s.file, s.line) for s in SITES} | set(CODE_SITES)
    return [site for site in source_sites(root) if site[:2] not in known]


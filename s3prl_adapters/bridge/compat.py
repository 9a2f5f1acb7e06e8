"""Workarounds for S3PRL 0.4.18 behaviours that break on today's stack or on CPU.

Every workaround lives here, is named after the S3PRL behaviour it corrects, and has a test that
fails without it (tests/test_compat.py). None edits S3PRL's installed files.

Who applies them: our `run_downstream.py` launcher (`install_runtime_workarounds`, then
`install_task_workarounds` for the recipe it runs), the benchmark and `tune`, which run it, and
nothing else. Importing the package, loading an `.adapter`, exporting and predicting change no
attribute of torch's or S3PRL's modules (tests/test_side_effects.py); where they need a recipe's
module that only imports with a workaround in place, `recipe_module` installs it for the import
alone and takes it away again. A Python process of your own that wants S3PRL's runner with our
corrections calls `install_runtime_workarounds(device, minutes)` and
`install_task_workarounds(task)` itself."""

import argparse
import contextlib
import importlib
import os
import sys
import types
from typing import Any, Callable, Dict, List

import torch


def s3prl_checkpoints_fail_weights_only_load() -> None:
    """S3PRL stores `Args` (an argparse.Namespace) in every checkpoint and reloads it with a bare
    `torch.load`, which is weights-only since torch 2.6, so `-e` fails with UnpicklingError.
    Allow exactly that type instead of turning weights-only loading off."""
    torch.serialization.add_safe_globals([argparse.Namespace])


def s3prl_loads_checkpoints_unpickling_anything() -> None:
    """Before torch 2.6 a bare `torch.load` (every load of S3PRL's: `-e` checkpoints, `-k` backbones)
    unpickles anything, so a crafted file runs code the moment S3PRL reads it. In our launcher's process
    make those loads weights-only, as torch >= 2.6 does by default (TORCH_FORCE_WEIGHTS_ONLY_LOAD, which
    torch 2.5 honours); with s3prl_checkpoints_fail_weights_only_load, S3PRL's Args still load."""
    if tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) < (2, 6):
        os.environ.setdefault("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")


def _has_flag(argv: List[str], *names: str) -> bool:
    return any(a in names or any(a.startswith(n + "=") for n in names) for a in argv)


def device_defaults_to_cuda(argv: List[str]) -> List[str]:
    """`--device` defaults to 'cuda' and is not restored by `-e`, so on a CPU-only machine every
    run (and every evaluate/resume) crashes unless the user remembers `--device cpu`.
    Default to cuda only where CUDA is available."""
    if _has_flag(argv, "--device"):
        return argv
    return argv + ["--device", "cuda" if torch.cuda.is_available() else "cpu"]


def run_device(argv: List[str]) -> str:
    """The `--device` of an argv that went through device_defaults_to_cuda."""
    for i, a in enumerate(argv):
        if a == "--device" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--device="):
            return a.split("=", 1)[1]
    return "cuda" if torch.cuda.is_available() else "cpu"


def _hub_entry_names(hub_path: str) -> List[str]:
    """The names `s3prl/hub.py` would define, read from the source of it and of every hubconf it
    star-imports (their top-level definitions and imports), without importing any of them."""
    import ast

    def public_names(path):
        with open(path) as f:
            tree = ast.parse(f.read(), filename=path)
        names = []
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.append(node.name)
            elif isinstance(node, ast.Assign):
                names += [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names += [(a.asname or a.name).split(".")[0] for a in node.names if a.name != "*"]
        return [n for n in names if not n.startswith("_")], tree

    root = os.path.dirname(os.path.dirname(hub_path))  # the folder that holds the s3prl package
    names, tree = public_names(hub_path)
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and any(a.name == "*" for a in node.names):
            source = os.path.join(root, *node.module.split(".")) + ".py"
            if os.path.exists(source):
                names += public_names(source)[0]
    return names


class _LazyHub(types.ModuleType):
    """`s3prl.hub` that imports an upstream family only when one of its names is first asked for:
    WavLM's entries from S3PRL's WavLM hubconf alone, anything else from the real hub, loaded then."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name.startswith("wavlm"):
            import importlib

            wavlm = importlib.import_module("s3prl.upstream.wavlm.hubconf")
            if hasattr(wavlm, name):
                setattr(self, name, getattr(wavlm, name))
                return getattr(wavlm, name)
        return getattr(self._real(), name)

    def __dir__(self):
        # S3PRL's argument parser lists dir(hub) in its -u help text at every start: answer from the
        # hubconfs' source (their top-level definitions and imports) instead of importing all 36 families.
        real = self.__dict__.get("_real_hub")
        if real is not None:
            return dir(real)
        own = {name for name in self.__dict__ if name != "_real_path"}
        return sorted(own | set(_hub_entry_names(self.__dict__["_real_path"])))

    def _real(self):
        """The real hub module, executed once (its 36 star imports), its names copied onto this one."""
        real = self.__dict__.get("_real_hub")
        if real is None:
            import importlib.util

            spec = importlib.util.spec_from_file_location("s3prl.hub", self.__dict__["_real_path"])
            real = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(real)
            for key, value in vars(real).items():
                if not key.startswith("__") and key not in self.__dict__:
                    setattr(self, key, value)
            self.__dict__["_real_hub"] = real
        return real


def s3prl_hub_imports_every_upstream() -> None:
    """`s3prl.hub`, which S3PRL's runner and run_downstream import at module top, star-imports the
    hubconfs of 36 upstream families (transformers among them): 2.2 s and every optional dependency
    in each process, for the one upstream a run uses. Install a lazy `s3prl.hub` before S3PRL
    imports it: WavLM names (and the adapter upstreams, registered onto it) cost one hubconf; any
    other name loads the real hub on first use, so every upstream still resolves."""
    import importlib.util

    import s3prl

    if isinstance(sys.modules.get("s3prl.hub"), _LazyHub) or "s3prl.hub" in sys.modules:
        return  # already lazy, or the real one is loaded already (nothing left to save)
    hub = _LazyHub("s3prl.hub", "S3PRL's hub, loading each upstream family on first use (s3prl-adapters)")
    hub.__dict__["_real_path"] = importlib.util.find_spec("s3prl.hub").origin
    hub.__file__ = hub.__dict__["_real_path"]
    sys.modules["s3prl.hub"] = hub
    s3prl.hub = hub


def install_runtime_workarounds(device: str, ddp_timeout_minutes: float) -> None:
    s3prl_hub_imports_every_upstream()  # first: the ones below import S3PRL's runner, which imports the hub
    s3prl_checkpoints_fail_weights_only_load()
    s3prl_loads_checkpoints_unpickling_anything()
    runner_checkpoints_can_be_lost_on_a_kill()
    ddp_assumes_cuda(device)
    process_group_timeout_is_too_short_for_evaluation(ddp_timeout_minutes)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def relative_config_paths_resolve_against_cwd(config: dict, config_path: str) -> dict:
    """S3PRL uses the config's data paths verbatim, so its './downstream/...' paths only work when run
    from S3PRL's source folder. Resolve the strings (and lists of strings) of the data sections that start
    with './' or '../' against the config file's own folder instead (shipped files such as asr/char.dict
    or pr/phoneme.txt live next to the config): `datarc`, and the ctc recipe's `corpus` and `text`."""
    base = os.path.dirname(os.path.abspath(config_path))

    def resolve(value):
        if isinstance(value, str) and value.startswith(("./", "../")):
            return os.path.normpath(os.path.join(base, value))
        return [resolve(v) for v in value] if isinstance(value, list) else value

    expert = config.get("downstream_expert", {}) or {}
    for section in ("datarc", "corpus", "text"):
        values = expert.get(section) or {}
        for key, value in list(values.items()) if isinstance(values, dict) else ():
            values[key] = resolve(value)
    return config


class cuda_calls_go_to:
    """Within this context `tensor.cuda()` moves the tensor to `device` instead of the current CUDA device."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        self._real_cuda = torch.Tensor.cuda
        device = self.device
        torch.Tensor.cuda = lambda tensor, *args, **kwargs: tensor.to(device)

    def __exit__(self, *exc):
        torch.Tensor.cuda = self._real_cuda


def sv_expert_hardcodes_cuda() -> None:
    """The ASV expert calls `.cuda()` on its attention mask in forward: on CPU `-d sv_voxceleb1`
    cannot run, and with `--device cuda:1` (no torchrun) the mask lands on the current CUDA device,
    cuda:0, beside features on cuda:1. While that forward runs, `.cuda()` goes to the features' device."""
    from s3prl.downstream.sv_voxceleb1 import expert

    cls = expert.DownstreamExpert
    if getattr(cls.forward, "_s3prl_adapters_patch", False):
        return
    original = cls.forward

    def forward(self, mode, features, *args, **kwargs):
        with cuda_calls_go_to(features[0].device):
            return original(self, mode, features, *args, **kwargs)

    forward._s3prl_adapters_patch = True
    cls.forward = forward


def sv_dev_scoring_reads_the_test_trials() -> None:
    """The ASV expert embeds the dev split's files (its dev trial list, `datarc.dev_meta_data`) but
    scores them against the *test* trial list (`self.test_dataset.pair_table` for 'dev' and 'test'
    alike): the lookups of test files among dev embeddings fail, so the recipe cannot select a
    checkpoint on dev. While it scores 'dev', hand it the dev trial list."""
    from s3prl.downstream.sv_voxceleb1 import expert

    cls = expert.DownstreamExpert
    if getattr(cls.log_records, "_s3prl_adapters_patch", False):
        return
    original = cls.log_records

    def log_records(self, mode, *args, **kwargs):
        if mode != "dev":
            return original(self, mode, *args, **kwargs)
        test = self.test_dataset
        self.test_dataset = self.dev_dataset  # the one attribute its scoring reads the trials from
        try:
            return original(self, mode, *args, **kwargs)
        finally:
            self.test_dataset = test

    log_records._s3prl_adapters_patch = True
    log_records._s3prl_adapters_original = original
    cls.log_records = log_records


def cache_root() -> str:
    return os.environ.get("S3PRL_ADAPTERS_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "s3prl-adapters"))


def _corpus_fingerprint(roots) -> str:
    import hashlib

    from s3prl_adapters.data.files import scan_tree

    h = hashlib.sha1()
    for root in roots:
        root = os.path.abspath(str(root))
        h.update(root.encode())
        for path, size, mtime in scan_tree(root):  # the preflight's walk of this start, when it made one
            h.update(f"{os.path.relpath(path, root)}:{size}:{mtime}".encode())
    return h.hexdigest()[:16]


def sv_length_cache_lives_in_installed_package() -> None:
    """The ASV train set caches post-VAD wav lengths in `<installed s3prl>/downstream/sv_voxceleb1/
    .wav_lengths/Voxceleb1_length.pt`, keyed only by the name 'Voxceleb1': it writes into the
    installed package and silently reuses one corpus's lengths for another. The recipe locates the
    cache next to its module's `__file__`; point that into our cache folder, one sub-folder per
    corpus fingerprint (paths, sizes and mtimes of its files), so a changed corpus gets new lengths."""
    from s3prl.downstream.sv_voxceleb1 import dataset

    cls = dataset.SpeakerVerifi_train
    if getattr(cls.__init__, "_s3prl_adapters_patch", False):
        return
    original = cls.__init__

    def __init__(self, vad_config, key_list, file_path, meta_data, max_timestep=None, n_jobs=12):
        folder = os.path.join(cache_root(), "sv_wav_lengths", _corpus_fingerprint(file_path))
        os.makedirs(folder, exist_ok=True)
        dataset.__file__ = os.path.join(folder, "dataset.py")
        original(self, vad_config, key_list, file_path, meta_data, max_timestep, min(n_jobs, os.cpu_count() or 1))

    __init__._s3prl_adapters_patch = True
    cls.__init__ = __init__


class DistributedSamplerWrapper(torch.utils.data.DistributedSampler):
    """catalyst's sampler of the same name, as S3PRL's KS recipe uses it: every epoch the wrapped
    sampler draws its indices (e.g. class-balanced, with replacement) and each rank takes its share."""

    def __init__(self, sampler, num_replicas=None, rank=None, shuffle=True):
        super().__init__(range(len(sampler)), num_replicas=num_replicas, rank=rank, shuffle=shuffle)
        self.sampler = sampler

    def __iter__(self):
        drawn = list(self.sampler)
        return iter([drawn[i] for i in super().__iter__()])


def speech_commands_imports_catalyst() -> None:
    """S3PRL's KS recipe (`-d speech_commands`) imports `catalyst.data.sampler.DistributedSamplerWrapper`
    at module top: an undeclared dependency whose last release pip can still install (21.5; 22.x has
    metadata pip >= 24.1 refuses) fails to import on Python >= 3.10 (`collections.MutableMapping`).
    Where catalyst does not import, register a `catalyst.data.sampler` module holding our own
    DistributedSamplerWrapper, the one name the recipe uses."""
    try:
        from catalyst.data.sampler import DistributedSamplerWrapper as _  # noqa: F401
        return
    except Exception:  # not installed, or installed and broken (AttributeError on Python >= 3.10)
        pass
    import types

    for name in ("catalyst", "catalyst.data", "catalyst.data.sampler"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["catalyst"].data = sys.modules["catalyst.data"]
    sys.modules["catalyst.data"].sampler = sys.modules["catalyst.data.sampler"]
    sys.modules["catalyst.data.sampler"].DistributedSamplerWrapper = DistributedSamplerWrapper


def sid_file_lists_are_cached_inside_the_package() -> None:
    """S3PRL's SID recipe (`-d voxceleb1`) caches each split's resolved file list in
    `<installed s3prl>/downstream/voxceleb1/.cache/{train,dev,test}.pkl`, keyed by nothing: it writes
    into the installed package, and another corpus or split file silently reuses the first one's
    lists. Point that cache (the module's CACHE_PATH) into our cache folder, one sub-folder per
    corpus root and split file content."""
    import hashlib

    from s3prl.downstream.voxceleb1 import dataset

    cls = dataset.SpeakerClassifiDataset
    if getattr(cls.__init__, "_s3prl_adapters_patch", False):
        return
    original = cls.__init__

    def __init__(self, mode, file_path, meta_data, max_timestep=None):
        key = hashlib.sha1(os.path.abspath(str(file_path)).encode())
        with open(meta_data, "rb") as f:
            key.update(f.read())
        dataset.CACHE_PATH = os.path.join(cache_root(), "sid_file_lists", key.hexdigest()[:16]) + os.sep
        original(self, mode, file_path, meta_data, max_timestep)

    __init__._s3prl_adapters_patch = True
    cls.__init__ = __init__


def ctc_recipe_lacks_its_corpus_readers() -> None:
    """S3PRL's `-d ctc` recipe (PR with `corpus.name: libriphone`, SF with `snips`) imports
    `.corpus.libriphone` / `.corpus.snips` when it builds a dataset, and the PyPI wheel has no
    `downstream/ctc/corpus/` folder: every PR and SF run ends in ModuleNotFoundError. Where that package
    does not import, register one holding our readers (data/ctc_corpora.py, written from the corpora's
    layouts)."""
    try:
        importlib.import_module("s3prl.downstream.ctc.corpus.libriphone")
        importlib.import_module("s3prl.downstream.ctc.corpus.snips")
        return
    except ImportError:
        pass
    from s3prl_adapters.data import ctc_corpora

    package = types.ModuleType("s3prl.downstream.ctc.corpus")
    package.__path__ = []
    sys.modules[package.__name__] = package
    for name, cls in (("libriphone", "LibriPhoneDataset"), ("snips", "SnipsDataset")):
        module = types.ModuleType(f"{package.__name__}.{name}")
        setattr(module, cls, getattr(ctc_corpora, cls))
        sys.modules[module.__name__] = module
        setattr(package, name, module)


def ctc_loaders_after_the_first_forget_num_workers() -> None:
    """The `-d ctc` recipe's `load_dataset` pops `num_workers` out of the config's corpus section, so
    the first split it loads (train) uses the configured number and every later one (dev, test) S3PRL's
    default of 12 worker processes. Hand it a copy of the section each time."""
    from s3prl.downstream.ctc import expert

    if getattr(expert.load_dataset, "_s3prl_adapters_patch", False):
        return
    original = expert.load_dataset

    def load_dataset(split, tokenizer, corpus):
        return original(split, tokenizer, dict(corpus))

    load_dataset._s3prl_adapters_patch = True
    expert.load_dataset = load_dataset


def diarization_wav_scp_entries_run_as_commands() -> None:
    """S3PRL's SD recipe reads audio through Kaldi's rxfilename rules: a `wav.scp` entry ending in `|`
    is run as a shell command (`subprocess.Popen(..., shell=True)`), `-` reads stdin. A data folder is a
    file from elsewhere, and no file runs code here: such an entry stops the run in one line instead."""
    from s3prl.downstream.diarization import dataset

    cls = dataset.KaldiData
    if getattr(cls._load_wav, "_s3prl_adapters_patch", False):
        return
    original = cls._load_wav

    def _load_wav(self, wav_rxfilename, start=0, end=None):
        if wav_rxfilename.rstrip().endswith("|") or wav_rxfilename.strip() == "-":
            from s3prl_adapters.errors import UserError

            raise UserError(f"{self.data_dir}/wav.scp: '{wav_rxfilename}' is a command or stdin, not a file; "
                            f"refused (S3PRL would run it in a shell)")
        return original(self, wav_rxfilename, start, end)

    _load_wav._s3prl_adapters_patch = True
    cls._load_wav = _load_wav


def install_task_workarounds(downstream: str) -> None:
    """The workarounds the task modules of recipe `downstream` name (none for recipes without one)."""
    from s3prl_adapters.tasks import tasks_of_recipe

    for name in dict.fromkeys(w for task in tasks_of_recipe(downstream) for w in task.workarounds):
        globals()[name]()


IMPORT_WORKAROUNDS = {"speech_commands_imports_catalyst": ("catalyst", "catalyst.data", "catalyst.data.sampler")}
"""Workarounds a recipe's modules need just to import, and the `sys.modules` names each one installs."""


@contextlib.contextmanager
def _sys_modules_restored(names):
    saved = {name: sys.modules.get(name) for name in names}
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def recipe_module(downstream: str, module: str = "expert") -> types.ModuleType:
    """`s3prl.downstream.<downstream>.<module>`, imported with the import-time workarounds its task names
    in place for the import only (the KS expert imports catalyst at module top): afterwards
    `sys.modules` holds no stand-in, so a process that imports the package for inference keeps its own
    view of catalyst and friends."""
    from s3prl_adapters.tasks import find_task

    name = f"s3prl.downstream.{downstream}.{module}"
    if name in sys.modules:
        return sys.modules[name]
    task = find_task(downstream)
    needed = [w for w in (task.workarounds if task else ()) if w in IMPORT_WORKAROUNDS]
    with _sys_modules_restored([n for w in needed for n in IMPORT_WORKAROUNDS[w]]):
        for workaround in needed:
            globals()[workaround]()
        return importlib.import_module(name)


class _RunnerAmp:
    """`torch.cuda.amp` as S3PRL's runner sees it: while a run trains in fp16, `GradScaler()` is that
    run's one scaler and `autocast()` follows its policy (mixed_precision.Fp16Training)."""

    training = None

    def __getattr__(self, name):
        return getattr(torch.cuda.amp, name)

    def GradScaler(self, *args, **kwargs):  # noqa: N802 - the name S3PRL calls
        return self.training.scaler if self.training else torch.amp.GradScaler("cuda", *args, **kwargs)

    def autocast(self, enabled=True, **kwargs):
        return self.training.forward_autocast(enabled) if self.training else torch.autocast("cuda", enabled=enabled, **kwargs)


class _RunnerCuda:
    amp = _RunnerAmp()

    def __getattr__(self, name):
        return getattr(torch.cuda, name)

    @staticmethod
    def device(device):
        """S3PRL's out-of-memory handler enters `torch.cuda.device(args.device)`; for a run on another
        device there is no CUDA cache to empty (and torch refuses a CPU device there)."""
        if torch.device(device).type != "cuda":
            return contextlib.nullcontext()
        return torch.cuda.device(device)


class _RunnerTorch:
    """`torch` as S3PRL's runner module sees it, except that `save` to a path is atomic, that a
    training checkpoint gets the entries of `checkpoint_extras` (name -> callable) added, and that
    `torch.cuda.amp` is `_RunnerAmp`."""

    checkpoint_extras: Dict[str, Callable[[], Any]] = {}
    cuda = _RunnerCuda()

    def __getattr__(self, name):
        return getattr(torch, name)

    @classmethod
    def save(cls, obj, f, *args, **kwargs):
        if not isinstance(f, (str, os.PathLike)):
            return torch.save(obj, f, *args, **kwargs)
        if isinstance(obj, dict) and "Optimizer" in obj and "Step" in obj:
            obj = dict(obj, **{name: extra() for name, extra in cls.checkpoint_extras.items()})
        tmp = f"{f}.tmp{os.getpid()}"
        try:
            torch.save(obj, tmp, *args, **kwargs)
            os.replace(tmp, f)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        if _is_states_checkpoint(f):  # not after dev-best.ckpt, which S3PRL writes first in the same step
            _RunnerOs.flush_deferred_removals()


def _is_states_checkpoint(path) -> bool:
    name = os.path.basename(str(path))
    return name.startswith("states-") and name.endswith(".ckpt")


class _RunnerOs:
    """`os` as S3PRL's runner sees it, except that removing an old `states-*.ckpt` waits until the
    next `states-*.ckpt` has been written."""

    _deferred: List[str] = []

    def __getattr__(self, name):
        return getattr(os, name)

    @classmethod
    def remove(cls, path):
        if _is_states_checkpoint(path):
            cls._deferred.append(str(path))
        else:
            os.remove(path)

    @classmethod
    def flush_deferred_removals(cls):
        while cls._deferred:
            path = cls._deferred.pop()
            if os.path.exists(path):
                os.remove(path)


def runner_checkpoints_can_be_lost_on_a_kill() -> None:
    """S3PRL's runner writes checkpoints with a plain `torch.save` (a kill mid-write leaves a
    truncated file under the final name) and, with `max_keep`, deletes the previous `states-*.ckpt`
    *before* writing the new one (a kill in between leaves none). Give the runner module an atomic
    save (temp file + rename) and make it delete an old `states-*.ckpt` only after the new
    `states-*.ckpt` exists: in a step that also writes `dev-best.ckpt` (saved first), a kill between
    the two saves must still leave a `states-*.ckpt` to resume from."""
    from s3prl.downstream import runner

    if not isinstance(runner.torch, _RunnerTorch):
        runner.torch = _RunnerTorch()
        runner.os = _RunnerOs()


def resume_restarts_the_interrupted_epoch(runner_instance) -> None:
    """S3PRL resumes `-e states-N.ckpt` at step N but from the first batch of the interrupted
    epoch, with every RNG freshly seeded, so a killed and resumed run sees other batches and other
    dropout masks than an uninterrupted one. Store the position inside the epoch and the RNG states
    with every checkpoint, and on resume replay the epoch up to that batch (`resume.TrainPosition`)."""
    from s3prl_adapters.bridge.resume import CHECKPOINT_KEY, TrainPosition

    saved = runner_instance.init_ckpt.get(CHECKPOINT_KEY)
    if runner_instance.init_ckpt.get("Step") and saved is None:
        print("[s3prl-adapters] this checkpoint holds no train position (written by stock S3PRL?): the "
              "interrupted epoch restarts from its first batch with fresh RNG states", file=sys.stderr)
    position = TrainPosition(saved)
    downstream = runner_instance.downstream.model
    get_dataloader = downstream.get_dataloader
    train_split = runner_instance.config["runner"].get("train_dataloader", "train")

    def positioned_get_dataloader(split, *args, **kwargs):
        loader = get_dataloader(split, *args, **kwargs)
        return position.wrap(loader) if split == train_split else loader

    downstream.get_dataloader = positioned_get_dataloader
    _RunnerTorch.checkpoint_extras[CHECKPOINT_KEY] = position.checkpoint_entry


def fp16_training_is_unscaled_or_forgets_its_scale(runner_instance, upstream_autocasts_fp16: bool):
    """S3PRL scales the loss only when `runner.fp16` is set, so an upstream that autocasts to float16
    by itself (`autocast: float16` in `-g`) trains unscaled and its E-adapter gradients underflow;
    and it never stores the GradScaler's state, so a resumed fp16 run restarts at scale 65536.
    Give every fp16 run one `torch.amp.GradScaler` (mixed_precision.Fp16Training), store its state
    in every checkpoint and restore it from `-e`. For an fp16 upstream alone, S3PRL's fp16 path is
    switched on for scaling only (`runner.fp16_scaler_only: true`, recorded in the config so that
    a resumed run keeps the head out of autocast)."""
    from s3prl_adapters.bridge.mixed_precision import CHECKPOINT_KEY, Fp16Training

    runner_config = runner_instance.config["runner"]
    scaler_only = bool(runner_config.get("fp16_scaler_only", False))
    requested = bool(runner_config.get("fp16", False)) and not scaler_only
    if not (requested or upstream_autocasts_fp16):
        _RunnerAmp.training = None
        _RunnerTorch.checkpoint_extras.pop(CHECKPOINT_KEY, None)
        return None
    if not requested:
        runner_config["fp16"] = runner_config["fp16_scaler_only"] = True
    saved = runner_instance.init_ckpt.get(CHECKPOINT_KEY)
    if runner_instance.init_ckpt.get("Step") and saved is None:
        print("[s3prl-adapters] this checkpoint holds no fp16 loss-scaler state: the scale restarts at 65536",
              file=sys.stderr)
    training = Fp16Training(runner_instance.args.device, autocast_forward=requested, saved_state=saved)
    _RunnerAmp.training = training
    _RunnerTorch.checkpoint_extras[CHECKPOINT_KEY] = training.checkpoint_entry
    return training


def featurizer_keeps_a_padded_frame_per_utterance(featurizer, conv_layers) -> None:
    """S3PRL's Featurizer keeps round(samples / rate) frames of every utterance, one more than WavLM's
    CNN makes for it alone at most lengths: in a padded batch that frame is the encoder's output at a
    padded position, which a batch of one does not have, so an evaluation in batches answers
    differently from scoring each file alone. In eval mode (dev/test), keep the frames the CNN makes
    for the utterance alone (method.prefix.frames_alone); training is S3PRL's as it is."""
    from s3prl_adapters.method.prefix import own_frames

    original = featurizer.tolist

    def tolist(paired_wavs, paired_feature):
        features = original(paired_wavs, paired_feature)
        return features if featurizer.training else own_frames(features, paired_wavs, conv_layers)

    featurizer.tolist = tolist


def wavlm_evaluation_depends_on_batch_mates(wavlm) -> None:
    """S3PRL's WavLM expert runs the CNN on the zero-padded batch, and WavLM Base's first CNN layer
    normalises over the padded time axis: evaluated in batches, an utterance's states depend on the
    lengths of the others. In eval mode, run each utterance's CNN alone and the encoder on the padded
    batch with its mask (method/prefix.py), as our adapter upstreams do; training is S3PRL's as it is."""
    from s3prl_adapters.method.prefix import encoder_from_prefix, prefix_alone

    original = wavlm.extract_features

    def extract_features(source, padding_mask=None, mask=False, **kwargs):
        if wavlm.training or mask or kwargs or padding_mask is None or source.size(0) == 1:
            return original(source, padding_mask=padding_mask, mask=mask, **kwargs)
        lengths = (~padding_mask).sum(-1).tolist()
        rows = [prefix_alone(wavlm, source[i, :n]) for i, n in enumerate(lengths)]
        output = encoder_from_prefix(wavlm, rows)
        frames = torch.tensor([len(r) for r in rows], device=output.device)
        return output, torch.arange(output.size(1), device=output.device)[None] >= frames[:, None]

    wavlm.extract_features = extract_features


def sv_pooling_counts_a_padded_frame(model) -> None:
    """S3PRL's ASV poolings (MP, and SP: mean and standard deviation over time) take each utterance's
    frames up to and including the first masked one (`nonzero(mask < 0)[0] + 1`): in a padded batch a
    shorter utterance's statistics include one padded frame, which it does not have alone, so a batch
    scores trials differently from a batch of one (measured: EER 34.70 -> 34.45 % on the stand-ins,
    docs/data/exact_evaluation.md). In eval mode, pool over the utterance's own frames (the unmasked
    ones) in the instances under `model`; training is S3PRL's as it is."""
    from s3prl.downstream.sv_voxceleb1.model import MP, SP

    def own(features, mask):
        return [f[: int((m >= 0).sum())] for f, m in zip(features, mask)]

    for module in model.modules():
        if not isinstance(module, (MP, SP)) or getattr(module, "_s3prl_adapters_patch", False):
            continue
        original = module.forward

        def forward(features, mask, *args, module=module, original=original, **kwargs):
            if module.training:
                return original(features, mask, *args, **kwargs)
            frames = own(features, mask)
            mean = torch.stack([f.mean(dim=0) for f in frames])
            if isinstance(module, MP):
                return mean
            return torch.cat([mean, torch.stack([torch.std(f, dim=-2) for f in frames])], dim=-1)

        module.forward = forward
        module._s3prl_adapters_patch = True


OOM_MESSAGE = "[Runner] - CUDA out of memory at step"
"""The line S3PRL's training loop prints when it skips a batch that ran out of GPU memory."""

RUNNER_KEYS = {
    "exact_evaluation": "dev/test batches score every file as it is alone (default true; runner_hook._exact_evaluation)",
    "max_skipped_share": "share of training batches out-of-memory may skip before the run stops (default 0.01)",
}
"""Keys of the downstream config's `runner` section that this package reads (S3PRL ignores them)."""

SKIPPED_BATCHES_FILE = "skipped_batches.json"
"""In a run's folder: the training batches S3PRL skipped for CUDA out of memory (runner_hook writes it)."""

MAX_SKIPPED_SHARE = 0.01
"""Default `runner.max_skipped_share`: the share of a run's batches that out-of-memory may skip."""


class SkippedBatches:
    """The batches S3PRL skipped for CUDA out of memory in this run (see cuda_out_of_memory_skips_batches_silently)."""

    def __init__(self, max_share: float):
        self.max_share, self.steps, self.count = max_share, [], 0

    def record(self, text: str, batches_so_far: int) -> None:
        self.count += 1
        self.steps.append(int(text.rsplit(" ", 1)[-1]) if text.rsplit(" ", 1)[-1].isdigit() else None)
        share = self.count / max(1, batches_so_far)
        if self.count > 1 and share > self.max_share:
            from s3prl_adapters.errors import UserError

            raise UserError(f"{self.count} of {batches_so_far} training batches ran out of GPU memory and were skipped "
                            f"(steps {self.steps[:5]}{'...' if len(self.steps) > 5 else ''}; more than "
                            f"runner.max_skipped_share = {self.max_share:g}): lower the batch size or the longest "
                            f"utterances' length, or use checkpoint_activations / autocast (docs/upstreams.md)")

    def summary(self) -> dict:
        return {"skipped_batches": self.count, "skipped_at_steps": self.steps, "max_skipped_share": self.max_share}


def cuda_out_of_memory_skips_batches_silently(runner_instance) -> "SkippedBatches":
    """S3PRL's training loop catches CUDA out-of-memory, prints one line and skips the batch, every
    epoch again: the longest LibriSpeech batches can be dropped all run long and nobody is told.
    Count each skip (from the line it prints, through the runner module's `print`), say the total at
    the run's end, and stop the run in one line once more than `runner.max_skipped_share` of its
    batches (default MAX_SKIPPED_SHARE) were skipped."""
    import builtins

    from s3prl.downstream import runner

    share = runner_instance.config["runner"].get("max_skipped_share", MAX_SKIPPED_SHARE)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        from s3prl_adapters.errors import UserError

        raise UserError(f"config runner.max_skipped_share: expected a share between 0 and 1, got {share!r}")
    skipped = SkippedBatches(float(share))
    seen = [0]  # training batches drawn so far in this process
    downstream = runner_instance.downstream.model
    get_dataloader = downstream.get_dataloader
    train_split = runner_instance.config["runner"].get("train_dataloader", "train")

    def counted(loader):
        for batch in loader:
            seen[0] += 1
            yield batch

    class CountedLoader:
        def __init__(self, loader):
            self.loader = loader

        def __iter__(self):
            return counted(self.loader)

        def __len__(self):
            return len(self.loader)

        def __getattr__(self, name):
            return getattr(self.loader, name)

    def counting_get_dataloader(split, *args, **kwargs):
        loader = get_dataloader(split, *args, **kwargs)
        return CountedLoader(loader) if split == train_split else loader

    def counting_print(*args, **kwargs):
        text = " ".join(str(a) for a in args)
        if text.startswith(OOM_MESSAGE):
            skipped.record(text, seen[0])
        return builtins.print(*args, **kwargs)

    downstream.get_dataloader = counting_get_dataloader
    runner.print = counting_print
    return skipped


def torchrun_sets_only_local_rank(argv: List[str]) -> List[str]:
    """S3PRL enters DDP only when `--local_rank` is passed (torch.distributed.launch's old flag);
    torchrun exports LOCAL_RANK instead, so every rank would train alone. Pass it on (and NCCL's
    default backend becomes gloo when the run's `--device` is the CPU, GPUs present or not)."""
    if "LOCAL_RANK" in os.environ and not _has_flag(argv, "--local_rank"):
        argv = argv + ["--local_rank", os.environ["LOCAL_RANK"]]
        if not _has_flag(argv, "--backend") and torch.device(run_device(argv)).type != "cuda":
            argv += ["--backend", "gloo"]
    return argv


def ddp_assumes_cuda(device: str) -> None:
    """S3PRL's DDP path calls `torch.cuda.set_device(local_rank)` and wraps modules with
    `device_ids=[local_rank]`, both of which fail for CPU (gloo) training (on a machine with one
    GPU, rank 1's set_device(1) fails even with `--device cpu`). For a CPU run, make the first a
    no-op and drop `device_ids` for modules that live on the CPU."""
    from s3prl.downstream import runner

    if torch.device(device).type == "cuda" or getattr(runner.DDP, "_s3prl_adapters_patch", False):
        return
    torch.cuda.set_device = lambda device: None
    real_ddp = runner.DDP

    def cpu_ddp(module, device_ids=None, **kwargs):
        on_cpu = all(p.device.type == "cpu" for p in module.parameters())
        return real_ddp(module, device_ids=None if on_cpu else device_ids, **kwargs)

    cpu_ddp._s3prl_adapters_patch = True
    runner.DDP = cpu_ddp


DDP_TIMEOUT_MINUTES = 180.0
"""Default process-group timeout: rank 0 evaluates alone while the other ranks wait, and a full
LibriSpeech dev-clean + dev-other evaluation of WavLM Large with KenLM beam search can take an hour
or more; torch's own default (NCCL 10 min) would let the watchdog kill the waiting ranks."""


def process_group_timeout_is_too_short_for_evaluation(minutes: float) -> None:
    """S3PRL calls `init_process_group(backend)` with torch's default timeout (NCCL: 10 minutes),
    while rank 0 evaluates and saves alone: a longer evaluation gets the waiting ranks killed by
    NCCL's watchdog. Pass `timeout=minutes` (launcher flag `--ddp_timeout`, env
    S3PRL_ADAPTERS_DDP_TIMEOUT_MIN); the waiting ranks meet rank 0 at a barrier with that timeout
    (non_leader_ranks_never_finish)."""
    import datetime

    import torch.distributed as dist

    real = getattr(dist.init_process_group, "_s3prl_adapters_real", dist.init_process_group)

    def init_process_group(*args, **kwargs):
        kwargs.setdefault("timeout", datetime.timedelta(minutes=minutes))
        return real(*args, **kwargs)

    init_process_group._s3prl_adapters_real = real
    dist.init_process_group = init_process_group


def _wait_for_the_leader() -> None:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def non_leader_ranks_never_finish(runner_instance, optimizer) -> None:
    """In DDP only rank 0 advances the runner's 'overall' progress bar, which is also its step
    counter, so the other ranks train until rank 0 exits and then die (gloo: 'Connection closed by
    peer'; NCCL hangs). On those ranks, advance that counter once per update: at the
    `optimizer.zero_grad()` S3PRL calls after every update, including those whose step was skipped
    (a NaN gradient norm, or an fp16 overflow that the loss scaler skips).
    Rank 0 evaluates and saves alone; after a step that does either, every rank meets at a barrier
    (rank 0 once it is done, the others right after their update), so the others wait there, with
    the process group's timeout, instead of inside their next gradient all-reduce."""
    from torch.distributed import is_initialized

    from s3prl.downstream import runner
    from s3prl.utility.helper import is_leader_process

    if not is_initialized():
        return
    leader = is_leader_process()
    runner_config = runner_instance.config["runner"]

    def leader_works_after(step: int) -> bool:
        return step % runner_config["eval_step"] == 0 or step % runner_config["save_step"] == 0

    real_tqdm = runner.tqdm

    def tqdm(*args, **kwargs):
        bar = real_tqdm(*args, **kwargs)
        if kwargs.get("desc") == "overall" and leader:
            update = bar.update

            def update_after_waiting(n=1):
                if leader_works_after(bar.n + 1):  # S3PRL updates after the step's evaluation and save
                    _wait_for_the_leader()
                return update(n)

            bar.update = update_after_waiting
        elif kwargs.get("desc") == "overall":
            runner_instance._overall_bar = bar
        return bar

    tqdm.write = real_tqdm.write  # S3PRL also calls tqdm.write
    runner.tqdm = tqdm
    if leader:
        return
    zero_grad = optimizer.zero_grad

    def zero_grad_and_advance(*args, **kwargs):
        zero_grad(*args, **kwargs)
        bar = getattr(runner_instance, "_overall_bar", None)
        if bar is not None:
            bar.n += 1
            if leader_works_after(bar.n):
                _wait_for_the_leader()

    optimizer.zero_grad = zero_grad_and_advance

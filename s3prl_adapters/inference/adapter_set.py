"""One exported task: everything inference needs from a trained run, and nothing else, in one
weights-only file (`s3prl-adapters export CKPT -o ic.adapter`).

A set holds the method and its adapter settings, the adapter tensors (for stock `wavlm_local -f`:
the whole fine-tuned WavLM; for the frozen weighted sum: nothing), the Featurizer's weights and
layer selection, the task head's state with the recipe facts it needs to produce labels (label
maps, character dictionary), the task, and a fingerprint of the backbone it was trained on. ASV
sets also carry the decision threshold at the dev EER when the run has a dev trial list."""

import argparse
import glob
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, Optional

import torch

from s3prl_adapters.errors import UserError

FORMAT = "s3prl-adapters/adapter-set"
VERSION = 1


@dataclass
class AdapterSet:
    """A trained task, ready to run on a backbone with the matching fingerprint."""

    task: str
    """S3PRL downstream name (a module of s3prl_adapters.tasks)."""
    upstream: str
    """The run's `-u`: an adapter upstream or stock `wavlm_local`."""
    finetuned: bool
    """Stock `-f`: `upstream_state` is a whole WavLM (the set carries its own backbone)."""
    adapter_config: Optional[dict]
    """The resolved AdapterConfig fields of an adapter upstream (None for stock upstreams)."""
    upstream_state: Dict[str, torch.Tensor]
    """What the run trained in the upstream, under the upstream's own names."""
    featurizer: dict
    """{'weights': Featurizer weights or None, 'feature_selection', 'layer_selection', 'normalize'} (-s, -l, --upstream_feature_normalize)."""
    head: dict
    """{'modelrc', 'state', 'facts', 'upstream_dim', 'upstream_rate'}: the recipe's head and what decoding needs."""
    backbone: dict
    """method.backbone.backbone_fingerprint of the -k backbone the run was trained on."""
    threshold: Optional[float] = None
    """ASV: the cosine score at the dev EER (same speaker at or above it)."""
    source: dict = field(default_factory=dict)
    """Where it came from: checkpoint path, step."""
    name: str = ""
    """How predictions name this set's answers (default: the file's stem); not stored."""

    # ---- file ---------------------------------------------------------------------------------------

    def save(self, path: str) -> int:
        """Write atomically; returns the file's size in bytes."""
        state = {k: v for k, v in asdict(self).items() if k != "name"}
        state["upstream_state"], state["head"] = self.upstream_state, dict(self.head)  # tensors as they are
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)
        os.replace(tmp, path)
        return os.path.getsize(path)

    @classmethod
    def load(cls, path: str, name: Optional[str] = None) -> "AdapterSet":
        """Read an exported set (weights-only: a file that would run code is refused)."""
        from s3prl_adapters.method.backbone import read_checkpoint

        state = read_checkpoint(path, what="adapter set")
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise UserError(f"{path}: not an exported adapter set (write one with: s3prl-adapters export CKPT -o OUT)")
        if state.get("version") != VERSION:
            raise UserError(f"{path}: adapter-set version {state.get('version')}, this package reads {VERSION}")
        fields_ = {k: v for k, v in state.items() if k not in ("format", "version")}
        stem = os.path.basename(path).rsplit(".", 1)[0]
        return cls(**fields_, name=name or stem)

    @property
    def task_spec(self):
        from s3prl_adapters.tasks import get_task

        return get_task(self.task, what=f"adapter set {self.name}: task")

    @property
    def runs_inside_the_backbone(self) -> bool:
        """E-adapters or trained layer LayerNorms: the set needs a backbone pass of its own."""
        cfg = self.adapter_config or {}
        return bool(cfg.get("e_adapter_layers")) or bool(cfg.get("train_layer_norms"))


def untrained(task: str, upstream: str, backbone: str, settings: Optional[dict] = None, seed: int = 0,
              name: Optional[str] = None) -> AdapterSet:
    """A set of freshly initialised adapters and head (the task's full SUPERB config, the published
    label sets) for the backbone file `backbone`: for measuring cost and testing, not for answers."""
    import yaml

    from s3prl_adapters.bridge.hubconf import UPSTREAMS
    from s3prl_adapters.method.backbone import backbone_fingerprint, conv_layers, load_wavlm
    from s3prl_adapters.method.config import METHODS, adapter_config_from_dict
    from s3prl_adapters.method.expert import AdapterWavLMExpert
    from s3prl_adapters.tasks import get_task

    spec = get_task(task)
    wavlm = load_wavlm(backbone)  # its own copy: the expert attaches adapters into it
    fingerprint = backbone_fingerprint(wavlm)
    dim, rate = wavlm.cfg.encoder_embed_dim, 1
    for _, _, stride in conv_layers(wavlm.cfg):
        rate *= stride
    torch.manual_seed(seed)
    adapter_config, upstream_state, upstream_dim = None, {}, dim
    if upstream in UPSTREAMS:
        expert = AdapterWavLMExpert(wavlm, adapter_config_from_dict(METHODS[upstream], settings or {}))
        adapter_config, upstream_state = asdict(expert.adapter_config), expert.state_dict()
        upstream_dim = expert.adapter_config.l_adapter_dim if expert.l_adapters else dim
    with open(spec.config_path()) as f:
        modelrc = yaml.safe_load(f)["downstream_expert"]["modelrc"]
    facts = spec.untrained_facts()
    head = spec.build_head(upstream_dim, rate, modelrc, facts)
    states = len(adapter_config["l_adapter_layers"]) if adapter_config and adapter_config["l_adapter_layers"] else (
        len(wavlm.encoder.layers) + 1)
    return AdapterSet(
        task=spec.name, upstream=upstream, finetuned=False, adapter_config=adapter_config, upstream_state=upstream_state,
        featurizer={"weights": torch.zeros(states), "feature_selection": "hidden_states", "layer_selection": None,
                    "normalize": False},
        head={"modelrc": modelrc, "state": head.state_dict(), "facts": facts, "upstream_dim": upstream_dim,
              "upstream_rate": rate},
        backbone=fingerprint, source={"untrained": True, "seed": seed}, name=name or f"{spec.key}_{upstream}")


# ---- export --------------------------------------------------------------------------------------------


def _read_run_checkpoint(path: str) -> dict:
    from s3prl_adapters.bridge.compat import s3prl_checkpoints_fail_weights_only_load
    from s3prl_adapters.method.backbone import read_checkpoint

    s3prl_checkpoints_fail_weights_only_load()  # S3PRL stores its Args as an argparse.Namespace
    ckpt = read_checkpoint(path, what="checkpoint")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("Args"), argparse.Namespace) or "Downstream" not in ckpt:
        raise UserError(f"checkpoint {path}: not a checkpoint written by run_downstream.py (no Args/Downstream)")
    return ckpt


def _adapter_config(args, ckpt_path: str, method: str, num_layers: int) -> dict:
    """The run's -g settings; the YAML itself, or the copy S3PRL keeps in the experiment folder."""
    from s3prl_adapters.method.config import AdapterConfig, load_adapter_config

    path = args.upstream_model_config
    if path and not os.path.isfile(path):
        stem = os.path.basename(path).rsplit(".", 1)[0]
        backups = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(ckpt_path)), f"{stem}_*.yaml")))
        if not backups:
            raise UserError(f"checkpoint {ckpt_path}: its adapter config -g {path} is gone and the experiment folder "
                            f"holds no copy of it")
        path = backups[-1]
    cfg = load_adapter_config(method, path) if path else AdapterConfig(method=method)
    return asdict(cfg.resolved(num_layers))


def export(ckpt_path: str, backbone: Optional[str] = None, threshold: bool = True, device: str = "cpu",
           progress: bool = True) -> AdapterSet:
    """The AdapterSet of a runner checkpoint (any `states-N.ckpt` / `*-best.ckpt` of run_downstream.py)."""
    from s3prl_adapters.bridge.hubconf import UPSTREAMS
    from s3prl_adapters.method.backbone import backbone_fingerprint, conv_layers, load_wavlm
    from s3prl_adapters.method.config import METHODS
    from s3prl_adapters.tasks import find_task

    ckpt = _read_run_checkpoint(ckpt_path)
    args, config = ckpt["Args"], ckpt["Config"]
    task = find_task(args.downstream)
    if task is None:
        raise UserError(f"checkpoint {ckpt_path}: -d {args.downstream} has no task module, so nothing can decode "
                        f"its head's outputs (tasks: s3prl_adapters/tasks/)")
    if args.upstream not in UPSTREAMS and args.upstream != "wavlm_local":
        raise UserError(f"checkpoint {ckpt_path}: upstream {args.upstream} is not a WavLM this package serves "
                        f"(adapter upstreams or stock wavlm_local)")
    backbone = backbone or args.upstream_ckpt
    if not backbone or not os.path.exists(backbone):
        raise UserError(f"checkpoint {ckpt_path}: export needs the backbone the run was trained on ({backbone}); "
                        f"pass it with --backbone PATH")
    wavlm = load_wavlm(backbone)
    fingerprint = backbone_fingerprint(wavlm)
    num_layers, dim = len(wavlm.encoder.layers), wavlm.cfg.encoder_embed_dim

    adapter_config = None
    if args.upstream in UPSTREAMS:
        adapter_config = _adapter_config(args, ckpt_path, METHODS[args.upstream], num_layers)
    finetuned = args.upstream not in UPSTREAMS and bool(args.upstream_trainable)
    l_layers = (adapter_config or {}).get("l_adapter_layers") or []
    upstream_dim = adapter_config["l_adapter_dim"] if l_layers else dim  # what the Featurizer hands the head
    modelrc = config["downstream_expert"]["modelrc"]
    facts = task.head_facts(config)
    upstream_rate = 1
    for _, _, stride in conv_layers(wavlm.cfg):
        upstream_rate *= stride
    head = task.build_head(upstream_dim, upstream_rate, modelrc, facts)
    wanted = head.state_dict()
    missing = sorted(set(wanted) - set(ckpt["Downstream"]))
    if missing:
        raise UserError(f"checkpoint {ckpt_path}: its head lacks {missing[:3]} (another recipe version or modelrc?)")
    head_state = {k: ckpt["Downstream"][k] for k in wanted}
    featurizer = {"weights": (ckpt.get("Featurizer") or {}).get("weights"),
                  "feature_selection": args.upstream_feature_selection or "hidden_states",
                  "layer_selection": args.upstream_layer_selection,
                  "normalize": bool(args.upstream_feature_normalize)}
    adapter_set = AdapterSet(
        task=task.name, upstream=args.upstream, finetuned=finetuned, adapter_config=adapter_config,
        upstream_state=dict(ckpt.get("Upstream") or {}) if (adapter_config or finetuned) else {},
        featurizer=featurizer,
        head={"modelrc": modelrc, "state": head_state, "facts": facts, "upstream_dim": upstream_dim,
              "upstream_rate": upstream_rate},
        backbone=fingerprint, source={"checkpoint": os.path.abspath(ckpt_path), "step": ckpt.get("Step")},
        name=os.path.basename(ckpt_path))
    if threshold and task.scores_pairs:
        adapter_set.threshold = _dev_threshold(adapter_set, task, config, wavlm, device, progress)
    return adapter_set


def _dev_threshold(adapter_set: AdapterSet, task, config: dict, wavlm, device: str, progress: bool) -> Optional[float]:
    """The cosine score at the equal-error rate of the run's dev trial list (None without one)."""
    import sys

    import numpy as np
    from tqdm import tqdm

    from s3prl.downstream.sv_voxceleb1.utils import EER

    from s3prl_adapters.inference.audio import read_audio
    from s3prl_adapters.inference.engine import MultiTaskWavLM

    try:
        trials = task.threshold_trials(config)
    except (OSError, KeyError):
        return None
    files = sorted({p for _, a, b in trials for p in (a, b)})
    if not trials or not all(os.path.isfile(p) for p in files):
        return None
    engine = MultiTaskWavLM(wavlm, [adapter_set], device=device)
    embeddings = {}
    for path in tqdm(files, desc="dev embeddings (threshold)", disable=not progress, file=sys.stderr):
        wav, _ = read_audio(path)
        embeddings[path] = engine.predict([wav])[0][adapter_set.name]["embedding"]
    labels = np.array([int(label) for label, _, _ in trials])
    if len(set(labels.tolist())) < 2:
        return None
    scores = np.array([float(torch.nn.functional.cosine_similarity(embeddings[a], embeddings[b], dim=-1))
                       for _, a, b in trials])
    _, thresh = EER(labels, scores)
    return float(thresh)

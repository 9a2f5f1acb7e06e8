"""One exported task: everything inference needs from a trained run, and nothing else, in one
weights-only file (`s3prl-adapters export CKPT -o ic.adapter`).

A set holds the method and its adapter settings, the adapter tensors (for stock `wavlm_local -f`:
the whole fine-tuned WavLM; for the frozen weighted sum: nothing), the Featurizer's weights and
layer selection, the task head's state with the recipe facts it needs to produce labels (label
maps, character dictionary), the task, and a fingerprint of the backbone it was trained on. ASV
sets also carry the decision threshold at the dev EER when the run has a dev trial list."""

import os
from dataclasses import asdict, dataclass, field, fields
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
        from s3prl_adapters.bridge.config_guard import check_adapter_set

        check_adapter_set(state, path)  # the strings S3PRL's head classes would eval(), before any is built
        fields_ = {k: v for k, v in state.items() if k not in ("format", "version")}
        unknown = sorted(set(fields_) - {f.name for f in fields(cls)})
        if unknown:
            raise UserError(f"{path}: adapter-set fields this package does not know: {unknown}")
        stem = os.path.basename(path).rsplit(".", 1)[0]
        return cls(**fields_, name=name or stem)

    @property
    def task_spec(self):
        from s3prl_adapters.tasks import get_task

        return get_task(self.task, what=f"adapter set {self.name}: task")

    @property
    def runs_inside_the_backbone(self) -> bool:
        """E-adapters, LoRA or trained layer LayerNorms (or a fine-tuned WavLM): the set needs a backbone pass of
        its own."""
        cfg = self.adapter_config or {}
        return (bool(cfg.get("e_adapter_layers")) or bool(cfg.get("train_layer_norms")) or cfg.get("method") == "lora"
                or self.finetuned)


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
    if not spec.trains:
        raise UserError(f"task {task}: trains nothing, so it has no head and no adapter set")
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
        modelrc = yaml.safe_load(f)["downstream_expert"][spec.model_section]
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

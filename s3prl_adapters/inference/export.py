"""`s3prl-adapters export`: a runner checkpoint becomes an AdapterSet (one file per trained task).

For ASV sets it also runs the exported set over the run's dev trial list and stores the cosine
score at the equal-error rate as the decision threshold of `verify`."""

import argparse
import glob
import os
from dataclasses import asdict
from typing import Optional

import torch

from s3prl_adapters.errors import UserError
from s3prl_adapters.inference.adapter_set import AdapterSet


def _read_run_checkpoint(path: str) -> dict:
    from s3prl_adapters.method.backbone import S3PRL_RUN, read_checkpoint

    ckpt = read_checkpoint(path, what="checkpoint", allow=S3PRL_RUN)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("Args"), argparse.Namespace) or "Downstream" not in ckpt:
        raise UserError(f"checkpoint {path}: not a checkpoint written by run_downstream.py (no Args/Downstream)")
    from s3prl_adapters.bridge.config_guard import check_checkpoint

    check_checkpoint(ckpt, path)  # the config strings S3PRL's head classes would eval()
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
    task = find_task(args.downstream, config)
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
        if adapter_config["method"] == "lora" and adapter_config["lora_rank"] is None:
            from s3prl_adapters.method.config import AdapterConfig
            from s3prl_adapters.method.lora import matching_rank

            adapter_config["lora_rank"] = matching_rank(wavlm, AdapterConfig(**adapter_config))  # as the run chose it
    finetuned = args.upstream not in UPSTREAMS and bool(args.upstream_trainable)
    l_layers = (adapter_config or {}).get("l_adapter_layers") or []
    upstream_dim = adapter_config["l_adapter_dim"] if l_layers else dim  # what the Featurizer hands the head
    modelrc = config["downstream_expert"][task.model_section]
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

"""`s3prl-adapters qbe`: SUPERB's query-by-example protocol in one command.

S3PRL's `-d quesst14_dtw` scores one hidden-state layer per run (`-l`); SUPERB runs every layer on
the dev queries, keeps the layer with the best dev MTWV and reports that layer on the eval queries.
This runs each of those passes as a stock `run_downstream.py -m evaluate` (EXPDIR/layer_<L>_<split>/),
scores each with tasks/query_by_example.py, and writes EXPDIR/qbe.json (every layer's dev MTWV, the
chosen layer, its test MTWV/ATWV, the test folder whose benchmark.stdlist.xml is the submission's
qbe member). A layer already scored is not run again, so an interrupted sweep resumes.

Which states: QbE trains nothing, so without a trained set every method's upstream is the same frozen
backbone, whose untrained L-adapters would hand the Featurizer random projections. The command then
runs the backbone's own L+1 states (`-u wavlm_ladapter_only` with `hidden_states: backbone`: no
adapter inside, stock WavLM's states). With `--adapters SET.adapter` (a trained set from `export`) it
runs that set's upstream with its tensors (S3PRL's `-i` init checkpoint) and its own states: the L-adapters' outputs for the L
methods, the backbone's states with the trained E-adapters or LoRA inside for the others."""

import argparse
import json
import os
import sys
from typing import List, Optional

import yaml

from s3prl_adapters.errors import UserError

BACKBONE_UPSTREAM = "wavlm_ladapter_only"
"""Without a trained set: the method with nothing inside the backbone, so `hidden_states: backbone` is
exactly stock WavLM's states."""


class Upstream:
    """What every pass of the sweep runs: the upstream, its -g settings, and (a trained set) the `-i` checkpoint
    S3PRL's runner loads the upstream's tensors from."""

    def __init__(self, backbone: str, adapters: Optional[str], expdir: str):
        from s3prl_adapters.method.backbone import backbone_fingerprint, describe_fingerprint, load_wavlm
        from s3prl_adapters.tools.predict import quiet_library_warnings

        quiet_library_warnings()
        wavlm = load_wavlm(backbone)
        self.init_ckpt = None
        if not adapters:
            self.name, self.settings = BACKBONE_UPSTREAM, {"hidden_states": "backbone"}
            self.states = wavlm.cfg.encoder_layers + 1
            return
        from s3prl_adapters.bridge.hubconf import UPSTREAMS
        from s3prl_adapters.inference.adapter_set import AdapterSet

        trained = AdapterSet.load(adapters)
        if trained.upstream not in UPSTREAMS or not trained.adapter_config:
            raise UserError(f"--adapters {adapters}: a {trained.upstream} set; QbE over a trained set needs an adapter "
                            f"upstream's ({sorted(UPSTREAMS)})")
        if backbone_fingerprint(wavlm) != trained.backbone:
            raise UserError(f"--adapters {adapters}: trained on backbone {describe_fingerprint(trained.backbone)}, -k is "
                            f"{describe_fingerprint(backbone_fingerprint(wavlm))}")
        self.name = trained.upstream
        self.settings = {k: v for k, v in trained.adapter_config.items() if k not in ("method", "hidden_states")}
        layers = self.settings.get("l_adapter_layers")
        self.states = len(layers) if layers else wavlm.cfg.encoder_layers + 1
        # S3PRL's runner loads init_ckpt["Upstream"] into the upstream (Runner._load_weight): the set's tensors
        self.init_ckpt = os.path.join(expdir, "upstream_init.ckpt")
        torch_save({"Upstream": trained.upstream_state}, self.init_ckpt)

    def write_settings(self, path: str) -> str:
        with open(path, "w") as f:
            yaml.safe_dump(self.settings, f, sort_keys=True)
        return path


def torch_save(state: dict, path: str) -> None:
    import torch

    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def write_json(value, path: str) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1)
    os.replace(path + ".tmp", path)


def run_layer(args, upstream: Upstream, g_path: str, layer: int, split: str) -> dict:
    """One `run_downstream.py -m evaluate` pass of `layer` on `split` ('dev' or 'test'), scored; a pass
    already scored is read back."""
    from s3prl_adapters.tasks.query_by_example import score_run
    from s3prl_adapters.tools.launch import run_downstream

    expdir = os.path.join(args.expdir, f"layer_{layer}_{split}")
    record = os.path.join(expdir, "qbe_score.json")
    if os.path.isfile(record):
        with open(record) as f:
            return json.load(f)
    argv = ["-m", "evaluate", "-t", split, "-u", upstream.name, "-k", args.backbone, "-g", g_path, "-l", str(layer),
            "-d", "quesst14_dtw", "-c", args.config, "-p", expdir, "--device", args.device]
    if upstream.init_ckpt:
        argv += ["-i", upstream.init_ckpt]
    overrides = ",,".join(o for o in [args.override, args.quesst and
                                      f"config.downstream_expert.datarc.dataset_root='{os.path.abspath(args.quesst)}'"] if o)
    if overrides:
        argv += ["-o", overrides]
    os.makedirs(expdir, exist_ok=True)
    usage = run_downstream(argv, os.path.join(expdir, "log.txt"), args.threads)
    result = dict(score_run(expdir, split), layer=layer, expdir=expdir, seconds=round(usage["seconds"], 1))
    write_json(result, record)
    return result


def _same_settings(args) -> None:
    """A sweep folder holds one setting's passes: what a rerun reads back must be what it would compute."""
    identity = {"backbone": os.path.abspath(args.backbone), "adapters": args.adapters and os.path.abspath(args.adapters),
                "config": os.path.abspath(args.config), "quesst": args.quesst and os.path.abspath(args.quesst),
                "override": args.override}
    path = os.path.join(args.expdir, "sweep_settings.json")
    if os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
        changed = sorted(k for k in identity if before.get(k) != identity[k])
        if changed:
            raise UserError(f"--expdir {args.expdir}: holds a sweep with other {', '.join(changed)} "
                            f"({', '.join(f'{k}={before.get(k)}' for k in changed)}); give another --expdir")
        return
    write_json(identity, path)


def sweep(args) -> dict:
    os.makedirs(args.expdir, exist_ok=True)
    _same_settings(args)
    upstream = Upstream(args.backbone, args.adapters, args.expdir)
    g_path = upstream.write_settings(os.path.join(args.expdir, "upstream.yaml"))
    count = upstream.states
    layers = args.layers if args.layers is not None else list(range(count))
    bad = [layer for layer in layers if not 0 <= layer < count]
    if bad:
        raise UserError(f"--layers {bad}: the upstream has {count} hidden states (0..{count - 1})")
    dev = {}
    for layer in layers:
        dev[layer] = run_layer(args, upstream, g_path, layer, "dev")
        print(f"layer {layer:2d}: dev MTWV {dev[layer]['mtwv']:.4f}", file=sys.stderr)
    best = max(layers, key=lambda layer: (dev[layer]["mtwv"], -layer))  # ties: the lower layer
    test = run_layer(args, upstream, g_path, best, "test")
    summary = {
        "upstream": upstream.name, "backbone": os.path.abspath(args.backbone),
        "adapters": args.adapters and os.path.abspath(args.adapters),
        "hidden_states": upstream.settings.get("hidden_states", "method"), "config": os.path.abspath(args.config),
        "dev_mtwv": {str(layer): dev[layer]["mtwv"] for layer in layers}, "best_layer": best,
        "test_mtwv": test["mtwv"], "test_atwv": test["atwv"], "test_threshold": test["threshold"],
        "test_expdir": test["expdir"],
    }
    path = os.path.join(args.expdir, "qbe.json")
    write_json(summary, path)
    print(f"best layer on dev: {best} (MTWV {dev[best]['mtwv']:.4f}); test MTWV {test['mtwv']:.4f}, ATWV "
          f"{test['atwv']:.4f}; submission member: {os.path.join(test['expdir'], 'benchmark.stdlist.xml')} "
          f"(s3prl-adapters submit --qbe {args.expdir}); summary: {path}")
    return summary


def _layers(text: str) -> List[int]:
    try:
        return sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer numbers, got {text!r}") from None


def add_arguments(p) -> None:
    from s3prl_adapters.tasks import get_task

    p.add_argument("-k", "--backbone", required=True, help="the WavLM checkpoint (S3PRL's {'cfg','model'} file)")
    p.add_argument("--expdir", required=True, help="the sweep's folder (one run_downstream folder per pass, qbe.json)")
    p.add_argument("--quesst", help="the quesst14Database folder (default: the config's datarc.dataset_root)")
    p.add_argument("--adapters", help="a trained adapter set (s3prl-adapters export): its layers instead of the "
                                      "backbone's")
    p.add_argument("--layers", type=_layers, help="comma-separated layers to try on dev (default: every hidden state)")
    p.add_argument("-c", "--config", default=get_task("quesst14_dtw").config_path(),
                   help="the recipe's config (default: the shipped SUPERB settings)")
    p.add_argument("-o", "--override", default="", help="more run_downstream.py -o overrides (,, separated)")
    p.add_argument("--device", default=None, help="for the features (default: cuda when available); DTW runs on "
                                                  "the CPU, max_workers processes")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1") or 1),
                   help="torch threads of each pass")
    p.set_defaults(func=command)


def command(args) -> None:
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    for path, what in ((args.backbone, "-k"), (args.config, "-c"), (args.adapters, "--adapters"), (args.quesst, "--quesst")):
        if path and not os.path.exists(path):
            raise UserError(f"{what} {path}: no such file or folder")
    sweep(args)


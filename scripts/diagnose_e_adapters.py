"""What an E-adapter learning rate does inside a run: measured, step by step, in the package's own launcher.

Trains `run_downstream.py -m train -u wavlm_ladapter` (the proposed method) in this process once per
E-adapter rate given, everything else equal, with hooks that record at every training step:
- per E-adapter: the RMS of the FFN output z it is added to, the RMS of what it adds (its body
  LN(up(act(down z)))), the variance of the body's pre-LayerNorm output u against that LayerNorm's
  eps, and the mean |gamma| of that LayerNorm;
- per optimizer group: the gradient norm before clipping;
- the largest change of any layer LayerNorm's gamma from its pretrained value.
It writes one JSON line per step to OUT/<rate>.jsonl, plots them, and prints a summary table.

    .venv/bin/python scripts/diagnose_e_adapters.py --mini-root MINI --out e_adapter_diagnosis \\
        --e-rates 2e-3 1e-4 --task asr
"""

import argparse
import json
import os
import re
import sys
from collections import defaultdict

import torch

from s3prl_adapters.paths import CONFIG_ROOT, DEFAULT_BACKBONE


class Recorder:
    """Forward hooks on every E-adapter body, and a wrapper of gradient clipping for the group norms."""

    def __init__(self):
        self.adapters = []  # (name, BottleneckAdapter)
        self.layer_norms = {}  # name -> (module, pretrained gamma)
        self.current = defaultdict(dict)
        self.steps = []
        self.groups = None

    def attach(self, expert):
        from s3prl_adapters.method.adapters import BottleneckAdapter
        from s3prl_adapters.method.attach import layer_norm_names

        for name, module in expert.model.named_modules():
            if isinstance(module, BottleneckAdapter):
                self.adapters.append((name, module))
                module.register_forward_hook(self._body_hook(name))
                module.up.register_forward_hook(self._up_hook(name))
        for name in layer_norm_names(expert.model):
            module = expert.model.get_submodule(name)
            self.layer_norms[name] = (module, module.weight.detach().clone())

    def _body_hook(self, name):
        def hook(module, args, out):
            if torch.is_grad_enabled():  # training passes only (evaluation runs under no_grad)
                z = args[0].detach()
                self.current[name].update(z_rms=float(z.pow(2).mean().sqrt()), body_rms=float(out.detach().pow(2).mean().sqrt()),
                                          gamma=float(module.layer_norm.weight.detach().abs().mean()))
        return hook

    def _up_hook(self, name):
        def hook(module, args, out):
            if torch.is_grad_enabled():
                self.current[name]["u_var"] = float(out.detach().var(-1, unbiased=False).mean())
        return hook

    def clip(self, real):
        def clip_grad_norm_(parameters, max_norm, *args, **kwargs):
            if self.groups is not None:
                norms = {g["name"]: float(torch.norm(torch.stack([p.grad.detach().norm() for p in g["params"]
                                                                  if p.grad is not None])))
                         for g in self.groups if any(p.grad is not None for p in g["params"])}
                drift = max(float((m.weight.detach() - w0).abs().max()) for m, w0 in self.layer_norms.values()) \
                    if self.layer_norms else 0.0
                eps = self.adapters[0][1].layer_norm.eps if self.adapters else 1e-5
                self.steps.append({"step": len(self.steps) + 1, "grad_norms": norms, "layer_norm_gamma_drift": drift,
                                   "eps": eps, "adapters": {n: dict(v) for n, v in self.current.items()}})
            return real(parameters, max_norm, *args, **kwargs)
        return clip_grad_norm_


def run_one(rate: float, args, recorder: Recorder) -> str:
    from s3prl_adapters.bridge import launcher, runner_hook
    from s3prl_adapters.method import expert as expert_module
    from s3prl_adapters.tasks import corpus_overrides

    original_init = expert_module.AdapterWavLMExpert.__init__

    def init(self, *a, **kw):
        original_init(self, *a, **kw)
        recorder.attach(self)

    build = runner_hook.AdapterRunner._build_optimizer

    def build_optimizer(self, params):
        optimizer = build(self, params)
        recorder.groups = optimizer.param_groups
        return optimizer

    expert_module.AdapterWavLMExpert.__init__ = init
    runner_hook.AdapterRunner._build_optimizer = build_optimizer
    expdir = os.path.join(args.out, f"run_e{rate:g}")
    up = "wavlm_ladapter"
    overrides = [corpus_overrides(args.task, args.mini_root), f"config.adapter_optimizer.{up}.e_adapter={rate!r}",
                 f"config.adapter_optimizer.{up}.layer_norm={rate!r}", f"config.adapter_optimizer.{up}.l_adapter={args.l_rate!r}",
                 f"config.adapter_optimizer.{up}.featurizer={args.l_rate!r}", f"config.backbone_dropout.{up}=True",
                 "config.runner.eval_dataloaders=['dev-clean']" if args.task == "asr" else "config.runner.eval_dataloaders=['dev']"]
    with open(os.path.join(args.out, "adapters.yaml"), "w") as f:
        f.write("e_adapter_dim: 85\nl_adapter_dim: 171\n")  # the benchmark's sizes for the embedded width 256
    argv = ["-m", "train", "-u", up, "-k", args.backbone, "-d", args.task, "-c",
            os.path.join(CONFIG_ROOT, args.task, "mini.yaml"), "-g", os.path.join(args.out, "adapters.yaml"),
            "-p", expdir, "--seed", str(args.seed), "--device", "cpu", "-o", ",,".join(overrides)]
    log = os.path.join(args.out, f"e{rate:g}.log")
    stdout, stderr, clip = sys.stdout, sys.stderr, torch.nn.utils.clip_grad_norm_
    torch.nn.utils.clip_grad_norm_ = recorder.clip(clip)
    with open(log, "w") as f:
        sys.stdout = sys.stderr = f
        try:
            launcher.main(argv)
        finally:
            sys.stdout, sys.stderr = stdout, stderr
            expert_module.AdapterWavLMExpert.__init__ = original_init
            runner_hook.AdapterRunner._build_optimizer = build
            torch.nn.utils.clip_grad_norm_ = clip
    return open(log).read()


def summarise(records, dev_line):
    def mean(values):
        values = list(values)
        return sum(values) / len(values) if values else float("nan")

    rows = []
    for r in records:
        adapters = list(r["adapters"].values())
        rows.append({"step": r["step"], "added_over_ffn": mean(a["body_rms"] / max(a["z_rms"], 1e-12) for a in adapters),
                     "saturated": mean(float(a["u_var"] > r["eps"]) for a in adapters if "u_var" in a),
                     "gamma": mean(a["gamma"] for a in adapters), **{f"grad_{k}": v for k, v in r["grad_norms"].items()},
                     "ln_drift": r["layer_norm_gamma_drift"]})
    return rows, dev_line


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mini-root", required=True, help="make-mini-superb output")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
    p.add_argument("--task", default="asr")
    p.add_argument("--e-rates", type=float, nargs="+", default=[2e-3, 1e-4])
    p.add_argument("--l-rate", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--out", default="e_adapter_diagnosis")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    results = {}
    for rate in args.e_rates:
        recorder = Recorder()
        text = run_one(rate, args, recorder)
        with open(os.path.join(args.out, f"e{rate:g}.jsonl"), "w") as f:
            for r in recorder.steps:
                f.write(json.dumps(r) + "\n")
        dev = re.findall(r"^(dev(?:-clean)? (?:wer|acc)): ([\d.]+)$", text, re.M)
        results[rate] = summarise(recorder.steps, dev)
    lines = ["| E/LN rate | step | E adds / FFN output (RMS) | adapters past eps | adapter LN gamma | grad e_adapter | "
             "grad layer_norm | grad l_adapter | layer LN gamma drift |", "|---|---|---|---|---|---|---|---|---|"]
    for rate, (rows, dev) in results.items():
        for row in rows:
            if row["step"] in (1, 5, 10, 20, 45, len(rows)):
                lines.append(f"| {rate:g} | {row['step']} | {row['added_over_ffn']:.3f} | {row['saturated']:.2f} | "
                             f"{row['gamma']:.3f} | {row.get('grad_e_adapter', float('nan')):.3g} | "
                             f"{row.get('grad_layer_norm', float('nan')):.3g} | {row.get('grad_l_adapter', float('nan')):.3g} | "
                             f"{row['ln_drift']:.3f} |")
        lines.append(f"| {rate:g} | dev | {', '.join(f'{k} {v}' for k, v in dev)} | | | | | | |")
    table = "\n".join(lines) + "\n"
    print(table, end="")
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(table)
    _plot(results, os.path.join(args.out, "e_adapters.png"))


def _plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for rate, (rows, _) in results.items():
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, [r["added_over_ffn"] for r in rows], label=f"E/LN rate {rate:g}")
        axes[1].plot(steps, [r["saturated"] for r in rows], label=f"E/LN rate {rate:g}")
        axes[2].plot(steps, [r.get("grad_e_adapter", float("nan")) for r in rows], label=f"E/LN rate {rate:g}")
    axes[0].set_ylabel("RMS(E-adapter output) / RMS(FFN output)")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("share of E-adapters with var(u) > eps")
    axes[2].set_ylabel("e_adapter gradient norm (before clipping)")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()

"""`s3prl-adapters bench`: training-step time, peak memory, inference time and checkpoint size of the
adapter upstreams against stock S3PRL `wavlm_local` fine-tuned and frozen, measured in one run.

Each method runs in a child process of its own, so its peak memory is its own (the child's
high-water RSS, VmHWM); on CUDA the peak is torch.cuda.max_memory_allocated. '+MB' is the peak
above what the child held before building the model (Python, torch and S3PRL imports), i.e. what
the method itself costs. A training step is what S3PRL's runner does: upstream (under no_grad when
frozen) -> S3PRL Featurizer -> a SUPERB-style head (projector 256, mean pooling, linear) ->
backward -> Adam step over what trains. `--serving` measures inference instead: one backbone
answering 1 vs 4 tasks' adapter sets."""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROWS = [  # (name, upstream, stock -f, adapter settings (-g) or the feature cache)
    ("finetune", "wavlm_local", True, {}),
    ("frozen", "wavlm_local", False, {}),
    ("houlsby", "wavlm_houlsby", False, {}),
    ("eadapter", "wavlm_eadapter", False, {}),
    ("ladapter_only", "wavlm_ladapter_only", False, {}),
    ("ladapter", "wavlm_ladapter", False, {}),
    ("lora", "wavlm_lora", False, {}),
    # The switches of issue 5: activation checkpointing, bf16 autocast, and the feature cache
    # (steps after the warm-up read the backbone's states from memory).
    ("eadapter+ckpt", "wavlm_eadapter", False, {"checkpoint_activations": True}),
    ("ladapter+ckpt", "wavlm_ladapter", False, {"checkpoint_activations": True}),
    ("ladapter+bf16", "wavlm_ladapter", False, {"autocast": "bfloat16"}),
    ("ladapter+ckpt+bf16", "wavlm_ladapter", False, {"checkpoint_activations": True, "autocast": "bfloat16"}),
    ("ladapter_only+bf16", "wavlm_ladapter_only", False, {"autocast": "bfloat16"}),
    # Issue 15: the frozen-prefix cache for every adapter method (warm: the CNN no longer runs),
    # selective checkpointing (keep the FFN products, recompute the attention and element-wise ops) alone
    # and with the prefix cache (as full checkpointing), bf16 with the adapters in
    # float32 (the `+bf16` rows above, since then) against bf16 throughout (`adapters_in_float32: false`).
    ("houlsby+prefix", "wavlm_houlsby", False, {"prefix_cache": True}),
    ("eadapter+prefix", "wavlm_eadapter", False, {"prefix_cache": True}),
    ("ladapter+prefix", "wavlm_ladapter", False, {"prefix_cache": True}),
    ("lora+prefix", "wavlm_lora", False, {"prefix_cache": True}),
    ("eadapter+selective", "wavlm_eadapter", False, {"checkpoint_activations": "selective"}),
    ("ladapter+selective", "wavlm_ladapter", False, {"checkpoint_activations": "selective"}),
    ("ladapter+prefix+selective", "wavlm_ladapter", False, {"prefix_cache": True, "checkpoint_activations": "selective"}),
    ("ladapter+prefix+ckpt", "wavlm_ladapter", False, {"prefix_cache": True, "checkpoint_activations": True}),
    # checkpointing that keeps only fc2's output per layer (the most recomputation saved per byte kept)
    ("ladapter+ffn_output", "wavlm_ladapter", False, {"checkpoint_activations": "ffn_output"}),
    ("ladapter+prefix+ffn_output", "wavlm_ladapter", False, {"prefix_cache": True, "checkpoint_activations": "ffn_output"}),
    # the three cost switches together (bf16 where the CPU or GPU has a bf16 unit)
    ("ladapter+prefix+ckpt+bf16", "wavlm_ladapter", False,
     {"prefix_cache": True, "checkpoint_activations": True, "autocast": "bfloat16"}),
    ("ladapter+prefix+selective+bf16", "wavlm_ladapter", False,
     {"prefix_cache": True, "checkpoint_activations": "selective", "autocast": "bfloat16"}),
    ("ladapter+bf16(all)", "wavlm_ladapter", False, {"autocast": "bfloat16", "adapters_in_float32": False}),
    ("ladapter+prefix+bf16", "wavlm_ladapter", False, {"prefix_cache": True, "autocast": "bfloat16"}),
    ("frozen+cache", "wavlm_local", False, {"feature_cache": True}),
    ("ladapter_only+cache", "wavlm_ladapter_only", False, {"feature_cache": True}),
    # A first epoch through the cache: every step new utterances (all misses), entries written to disk.
    ("ladapter_only+cache(cold)", "wavlm_ladapter_only", False, {"feature_cache": "cold"}),
    # float16 with loss scaling (GPU rows: CPUs run float16 emulated, slowly). Fine-tuning as S3PRL's
    # runner.fp16 runs it (the whole forward under autocast), the adapters through `autocast: float16`.
    ("finetune+fp16", "wavlm_local", True, {"runner_fp16": True}),
    ("ladapter+fp16", "wavlm_ladapter", False, {"autocast": "float16"}),
    ("ladapter_only+fp16", "wavlm_ladapter_only", False, {"autocast": "float16"}),
]
GPU_ONLY_ROWS = ("finetune+fp16", "ladapter+fp16", "ladapter_only+fp16")


def _sync(device):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_one(name, upstream, finetune, settings, ckpt, batch, seconds, steps, warmup, device) -> dict:
    import torch
    from torch import nn

    from s3prl.upstream.interfaces import Featurizer

    from s3prl_adapters.method.backbone import load_wavlm
    from s3prl_adapters.method.config import METHODS, adapter_config_from_dict
    from s3prl_adapters.method.expert import AdapterWavLMExpert
    from s3prl_adapters.bridge.feature_cache import (CachedUpstream, FeatureCacheConfig, PrefixCacheConfig,
                                                     attach_feature_cache, attach_prefix_cache)

    settings = dict(settings)
    cached = settings.pop("feature_cache", False)
    prefix_cached = settings.pop("prefix_cache", False)
    runner_fp16 = settings.pop("runner_fp16", False)
    fp16 = runner_fp16 or settings.get("autocast") == "float16"
    baseline_mb = _peak_memory_mb(device)  # the process before any model: Python, torch, S3PRL imports
    torch.manual_seed(0)
    if upstream == "wavlm_local":
        from s3prl.upstream.wavlm.hubconf import wavlm_local

        model = wavlm_local(ckpt).to(device)  # its cfg was checked by main() before any child started
    else:  # what hubconf builds from -k and a -g YAML holding `settings`
        config = adapter_config_from_dict(METHODS[upstream], settings, source=f"bench row {name}")
        model = AdapterWavLMExpert(load_wavlm(ckpt), config).to(device)
    adapters = isinstance(model, AdapterWavLMExpert)
    trains_upstream = finetune or adapters
    featurizer = Featurizer(model, upstream_device=device).to(device)
    cache_dir = tempfile.TemporaryDirectory() if cached == "cold" else None
    cache_config = FeatureCacheConfig(dir=cache_dir.name if cache_dir else None)
    if cached and adapters:
        cache = attach_feature_cache(model, cache_config)
    elif cached:
        model = CachedUpstream(model, cache_config)
        cache = model.cache
    if prefix_cached:  # the warm-up step fills it; the timed steps read it
        attach_prefix_cache(model, PrefixCacheConfig())
    head = nn.Sequential(nn.Linear(featurizer.output_dim, 256), nn.ReLU()).to(device)
    classifier = nn.Linear(256, 24).to(device)
    params = [p for m in (featurizer, head, classifier) for p in m.parameters()]
    params += [p for p in model.parameters() if p.requires_grad] if trains_upstream else []
    optimizer = torch.optim.Adam(params, lr=1e-4)
    scaler = torch.amp.GradScaler(torch.device(device).type) if fp16 else None
    forward_autocast = (lambda: torch.autocast(torch.device(device).type, dtype=torch.float16)) if runner_fp16 \
        else contextlib.nullcontext
    wavs = [torch.randn(int(seconds * 16000), device=device) for _ in range(batch)]
    labels = torch.randint(0, 24, (batch,), device=device)

    def step():
        if cached == "cold":  # new utterances: the cache misses and writes every entry
            wavs[:] = [torch.randn(int(seconds * 16000), device=device) for _ in range(batch)]
        model.train() if trains_upstream else model.eval()
        with forward_autocast():
            if trains_upstream:
                hidden = model(wavs)
            else:
                with torch.no_grad():
                    hidden = model(wavs)
            feats = featurizer(wavs, hidden)
            pooled = torch.stack([head(f).mean(0) for f in feats])
            loss = nn.functional.cross_entropy(classifier(pooled), labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    times = []
    for i in range(warmup + steps):
        _sync(device)
        t = time.perf_counter()
        step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    model.eval()
    infer = []
    if cached == "cold":
        cache.flush()  # the writes of the timed steps reach the disk (counted in no step)
        cache_dir.cleanup()
    with torch.no_grad():
        for i in range(warmup + steps):
            _sync(device)
            t = time.perf_counter()
            with forward_autocast():
                featurizer(wavs, model(wavs))
            _sync(device)
            if i >= warmup:
                infer.append(time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as d:  # what S3PRL's runner stores for the upstream
        path = os.path.join(d, "upstream.ckpt")
        torch.save(model.state_dict() if trains_upstream else {}, path)
        ckpt_bytes = os.path.getsize(path)
    result = {
        "method": name, "upstream": upstream + (" -f" if finetune else ""), "settings": dict(
            settings, **({"feature_cache": cached} if cached else {}), **({"prefix_cache": True} if prefix_cached else {}),
            **({"runner_fp16": True} if runner_fp16 else {})),
        "step_seconds": statistics.median(times), "inference_seconds": statistics.median(infer),
        "trainable_params": sum(p.numel() for p in params) - sum(p.numel() for m in (head, classifier) for p in m.parameters()),
        "upstream_checkpoint_bytes": ckpt_bytes,
    }
    result["baseline_memory_mb"] = baseline_mb
    result["peak_memory_mb"] = _peak_memory_mb(device)
    return result


def _peak_memory_mb(device) -> float:
    """This process's peak memory: on CUDA torch's peak allocation; on CPU the kernel's high-water RSS
    of this process's own address space (VmHWM). Not ru_maxrss: Linux counts in it the parent's RSS
    at fork time, so a child of a process that held a Base+ model would report that as its own peak."""
    import resource

    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_bench(ckpt, batch, seconds, steps, warmup, device, rows=ROWS) -> list:
    results = []
    for name, upstream, finetune, _ in rows:
        cmd = [sys.executable, "-m", "s3prl_adapters.tools.bench", "--child", name, "--checkpoint", ckpt, "--batch", str(batch),
               "--seconds", str(seconds), "--steps", str(steps), "--warmup", str(warmup), "--device", device,
               "--threads", os.environ.get("OMP_NUM_THREADS", "1")]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate()
        if proc.returncode != 0:  # one row that fails (out of memory, a kernel missing on this GPU) keeps the others
            why = (err.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            results.append({"method": name, "upstream": upstream, "failed": why})
            print(f"[bench] {name}: failed: {why}", file=sys.stderr, flush=True)
            continue
        result = json.loads(out.strip().splitlines()[-1])
        results.append(result)
        print(f"[bench] {name}: {result['step_seconds']:.3f} s/step", file=sys.stderr, flush=True)
    return results


def _measured(results):
    """(rows that ran, fine-tuning's row or None, the frozen row or None, 'row: why' of each failed row)."""
    ran = [r for r in results if "failed" not in r]
    base = lambda name: next((r for r in ran if r["method"] == name), None)  # noqa: E731
    return ran, base("finetune"), base("frozen"), [f"{r['method']}: {r['failed']}" for r in results if "failed" in r]


def _x(value, base, fmt=".2f") -> str:
    """value / base, or n/a where the baseline row failed."""
    return format(value / base, fmt) if base else "n/a"


def _child_main(args):
    import torch

    torch.set_num_threads(args.threads)
    name, upstream, finetune, settings = next(r for r in ROWS if r[0] == args.child)
    result = measure_one(name, upstream, finetune, settings, args.checkpoint, args.batch, args.seconds, args.steps,
                         args.warmup, args.device)
    print(json.dumps(result))


def _added(result) -> float:
    """Peak memory above the process's own before the model was built (RSS on CPU)."""
    return result["peak_memory_mb"] - result.get("baseline_memory_mb", 0.0)


def format_table(results, meta) -> str:
    results, ft, frozen, failed = _measured(results)
    ft_step, ft_peak, ft_added, ft_ckpt = (ft["step_seconds"], ft["peak_memory_mb"], _added(ft),
                                           ft["upstream_checkpoint_bytes"]) if ft else (None,) * 4
    frozen_infer = frozen and frozen["inference_seconds"]
    lines = [
        f"{meta['shape']}, batch {meta['batch']} x {meta['seconds']} s, device {meta['device']} ({meta.get('machine', '?')}), "
        f"{meta['threads']} thread(s), median of {meta['steps']} steps after {meta['warmup']} warm-up",
        f"{'method':26s} {'step s':>8s} {'x FT':>6s} {'peak MB':>9s} {'x FT':>6s} {'+MB':>7s} {'x FT':>6s} "
        f"{'infer s':>8s} {'x frozen':>9s} "
        f"{'ckpt MB':>8s} {'x FT':>6s} {'trainable':>12s}",
    ]
    for r in results:
        lines.append(
            f"{r['method']:26s} {r['step_seconds']:8.3f} {_x(r['step_seconds'], ft_step):>6s} "
            f"{r['peak_memory_mb']:9.0f} {_x(r['peak_memory_mb'], ft_peak):>6s} "
            f"{_added(r):7.0f} {_x(_added(r), ft_added):>6s} "
            f"{r['inference_seconds']:8.3f} {_x(r['inference_seconds'], frozen_infer):>9s} "
            f"{r['upstream_checkpoint_bytes'] / 1e6:8.2f} {_x(r['upstream_checkpoint_bytes'], ft_ckpt, '.3f'):>6s} "
            f"{r['trainable_params']:12,d}")
    lines += [f"FAILED {line}" for line in failed]
    return "\n".join(lines)


# ---- serving: one backbone, many adapter sets (`bench --serving`) ---------------------------------------

SERVING_TASKS = ("fluent_commands", "emotion", "asr", "sv_voxceleb1")
SERVING_ROWS = [  # (name, tasks, upstream, one model per set)
    ("1 task, L-only", SERVING_TASKS[:1], "wavlm_ladapter_only", False),
    ("4 tasks, L-only", SERVING_TASKS, "wavlm_ladapter_only", False),
    ("1 task, L+E", SERVING_TASKS[:1], "wavlm_ladapter", False),
    ("4 tasks, L+E", SERVING_TASKS, "wavlm_ladapter", False),
    ("4 tasks, L+E, a model per task", SERVING_TASKS, "wavlm_ladapter", True),
]


def _serving_child(args) -> None:
    """One serving row in this process: load the backbone and the row's sets, then time predict."""
    import torch

    from s3prl_adapters.inference import AdapterSet, MultiTaskWavLM

    torch.set_num_threads(args.threads)
    name, tasks, upstream, separate = next(r for r in SERVING_ROWS if r[0] == args.serving_child)
    baseline = _peak_memory_mb(args.device)
    sets = [AdapterSet.load(os.path.join(args.sets_dir, f"{task}.{upstream}.adapter")) for task in tasks]
    models = [MultiTaskWavLM(args.checkpoint, [s], device=args.device) for s in sets] if separate else \
        [MultiTaskWavLM(args.checkpoint, sets, device=args.device)]
    torch.manual_seed(0)
    wavs = [torch.randn(int(args.seconds * 16000)) * 0.1 for _ in range(args.utterances)]
    times = []
    for i in range(args.warmup + args.steps):
        _sync(args.device)
        start = time.perf_counter()
        for model in models:
            model.predict(wavs)
        _sync(args.device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    passes = sum(len({tuple(b.spec.audio_effects) for b in m.sets if b.shares_the_pass})
                 + sum(not b.shares_the_pass for b in m.sets) for m in models)
    print(json.dumps({"row": name, "sets": len(sets), "models": len(models), "backbone_passes": passes,
                      "seconds": statistics.median(times), "baseline_memory_mb": baseline,
                      "peak_memory_mb": _peak_memory_mb(args.device)}))


def run_serving(args, ckpt: str) -> list:
    """Every serving row, each in its own process (its peak memory its own)."""
    from s3prl_adapters.inference import untrained

    results = []
    with tempfile.TemporaryDirectory() as sets_dir:
        for upstream in sorted({r[2] for r in SERVING_ROWS}):
            for task in SERVING_TASKS:
                untrained(task, upstream, ckpt, seed=1).save(os.path.join(sets_dir, f"{task}.{upstream}.adapter"))
        for row in SERVING_ROWS:
            cmd = [sys.executable, "-m", "s3prl_adapters.tools.bench", "--serving-child", row[0], "--sets-dir", sets_dir,
                   "--checkpoint", ckpt, "--utterances", str(args.utterances), "--seconds", str(args.seconds),
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device,
                   "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"bench serving row {row[0]} failed: {proc.stderr.strip().splitlines()[-1:]}")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"[bench] {row[0]}: {results[-1]['seconds']:.2f} s", file=sys.stderr, flush=True)
    return results


def serving_table(results, meta) -> str:
    base = results[0]
    lines = [f"{meta['shape']}, {meta['utterances']} utterances x {meta['seconds']} s per predict call, "
             f"{meta['device']} ({meta.get('machine', '?')}), {meta['threads']} thread(s), median of {meta['steps']} "
             f"calls after {meta['warmup']} warm-up", "",
             "| row | sets | backbones in memory | backbone passes per call | s per call | x 1 task L-only | "
             "peak MB | +MB | x 1 task L-only |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['row']} | {r['sets']} | {r['models']} | {r['backbone_passes']} | {r['seconds']:.2f} | "
                     f"{r['seconds'] / base['seconds']:.2f} | {r['peak_memory_mb']:.0f} | {_added(r):.0f} | "
                     + (f"{_added(r) / _added(base):.2f} |" if _added(base) > 0 else "– |"))
    return "\n".join(lines) + "\n"


def markdown_table(results, meta) -> str:
    """The table as Markdown, each row with its switches and every ratio against fine-tuning in float32;
    rows that failed are listed under it with their reason."""
    results, ft, frozen, failed = _measured(results)
    ft_step, ft_peak, ft_added, ft_ckpt = (ft["step_seconds"], ft["peak_memory_mb"], _added(ft),
                                           ft["upstream_checkpoint_bytes"]) if ft else (None,) * 4
    frozen_infer = frozen and frozen["inference_seconds"]
    lines = [
        f"{meta['shape']}, batch {meta['batch']} x {meta['seconds']} s, {meta['device']} ({meta.get('machine', '?')}), "
        f"{meta['threads']} thread(s), median of {meta['steps']} steps after {meta['warmup']} warm-up",
        "",
        "| row | upstream | switches | step s | x FT | peak MB | x FT | +MB | x FT | inference s | x frozen | "
        "upstream ckpt MB | x FT |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        switches = ", ".join(f"{k}: {v}" for k, v in r["settings"].items()) or "-"
        lines.append(
            f"| {r['method']} | `{r['upstream']}` | {switches} | {r['step_seconds']:.3f} | "
            f"{_x(r['step_seconds'], ft_step)} | {r['peak_memory_mb']:.0f} | "
            f"{_x(r['peak_memory_mb'], ft_peak)} | {_added(r):.0f} | {_x(_added(r), ft_added)} | "
            f"{r['inference_seconds']:.3f} | {_x(r['inference_seconds'], frozen_infer)} | "
            f"{r['upstream_checkpoint_bytes'] / 1e6:.1f} | {_x(r['upstream_checkpoint_bytes'], ft_ckpt, '.3f')} |")
    if failed:
        lines += ["", "Failed rows (not measured): " + "; ".join(failed)]
    return "\n".join(lines) + "\n"


def machine_name(device: str) -> str:
    """The GPU's name on CUDA, else the CPU model (as lscpu names it)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or platform.machine()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="s3prl-adapters bench", description=__doc__)
    p.add_argument("--checkpoint", help="WavLM checkpoint; default: a random WavLM Base+-shaped one")
    p.add_argument("--shape", default="base_plus", choices=["base_plus", "large", "tiny"],
                   help="random backbone when no --checkpoint")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--methods", nargs="+", choices=[r[0] for r in ROWS], help="rows to measure (default: all; the "
                   f"float16 rows {list(GPU_ONLY_ROWS)} on CUDA only; finetune and frozen are always measured, as the "
                   "ratios' denominators)")
    p.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown to FILE")
    p.add_argument("--json", action="store_true")
    p.add_argument("--serving", action="store_true", help="instead: one backbone serving 1 vs 4 task adapter sets "
                   "(L-only vs L+E, and a model per task), predict time and peak memory")
    p.add_argument("--utterances", type=int, default=10, help="--serving: utterances per predict call")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--serving-child", help=argparse.SUPPRESS)
    p.add_argument("--sets-dir", help=argparse.SUPPRESS)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        return _child_main(args)
    if args.serving_child:
        return _serving_child(args)
    if args.checkpoint:
        from s3prl_adapters.method.backbone import check_wavlm_checkpoint_file
        from s3prl_adapters.errors import UserError

        try:  # before any child loads it: S3PRL's WavLM eval()s a string of its cfg
            check_wavlm_checkpoint_file(args.checkpoint, "--checkpoint")
        except UserError as e:
            print(f"s3prl-adapters bench: error: {e}", file=sys.stderr)
            sys.exit(2)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as d:
        ckpt = args.checkpoint
        if ckpt is None:
            from s3prl_adapters.method.backbone import SHAPES, build_wavlm, make_tiny_wavlm, save_checkpoint

            ckpt = os.path.join(d, "wavlm.pt")
            save_checkpoint(build_wavlm(SHAPES[args.shape], seed=0), ckpt) if args.shape in SHAPES else make_tiny_wavlm(ckpt)
        meta = {"shape": args.checkpoint or args.shape, "batch": args.batch, "seconds": args.seconds,
                "device": args.device, "machine": machine_name(args.device), "threads": args.threads,
                "steps": args.steps, "warmup": args.warmup, "utterances": args.utterances}
        if args.serving:
            results = run_serving(args, ckpt)
            table = serving_table(results, meta)
            if args.markdown:
                with open(args.markdown, "w") as f:
                    f.write(table)
            print(json.dumps({"meta": meta, "results": results}, indent=1) if args.json else table)
            return
        default = [r[0] for r in ROWS if r[0] not in GPU_ONLY_ROWS or args.device.startswith("cuda")]
        wanted = {"finetune", "frozen"} | set(args.methods or default)
        results = run_bench(ckpt, args.batch, args.seconds, args.steps, args.warmup, args.device,
                            [r for r in ROWS if r[0] in wanted])
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown_table(results, meta))
    print(json.dumps({"meta": meta, "results": results}, indent=1) if args.json else format_table(results, meta))
    if any("failed" in r for r in results):
        sys.exit(1)  # the rows that ran are printed and written; the exit status says that some did not


if __name__ == "__main__":
    main()

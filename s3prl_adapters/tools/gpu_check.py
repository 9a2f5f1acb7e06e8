"""`bash scripts/gpu_check.sh`: the GPU path in one command, checked and measured on a CUDA machine.

Steps (each a subprocess through the package's own commands, each timed, each allowed to fail
without stopping the rest; a global time budget skips what no longer fits):
  1. `s3prl-adapters bench --device cuda` on the WavLM Base+ shape: float32, bf16 and fp16 rows;
  2. every method x task for a few steps on the stand-in corpora (`run_benchmarks.sh --steps N`);
  3. an fp16 run (`autocast: float16`) killed after its first checkpoint and resumed with `-e`:
     loss-scaler state restored, final tensors compared with an uninterrupted run;
  4. `torchrun` DDP with NCCL over every visible GPU (world size 1 with one GPU), then a resume;
  5. the DDP tests (`tests/test_ddp.py`, gloo, `--device cpu`) on this host with its GPU(s).
Writes OUT/gpu_report.md and OUT/gpu_report.json after every step. Without CUDA it says so in one line and
exits 1 (`--plan` prints the plan and exits 0)."""

import argparse
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

from s3prl_adapters.paths import CONFIG_ROOT, DEFAULT_BACKBONE, REPO_ROOT as REPO, SOURCE_CHECKOUT, code_version
BIN = os.path.dirname(sys.executable)


def _tool(name: str) -> str:
    path = os.path.join(BIN, name)
    return path if os.path.exists(path) else name


@dataclass
class Step:
    name: str
    what: str
    run: Callable[["GpuCheck"], dict]
    result: dict = field(default_factory=dict)


class GpuCheck:
    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.output)
        self.started = time.time()
        self.steps: List[Step] = [
            Step("bench", f"s3prl-adapters bench --device cuda --shape base_plus --steps {args.bench_steps} "
                          f"--warmup 2 --json (every row: float32, bf16, fp16)", GpuCheck.bench),
            Step("standins", f"make-mini-superb, then run_benchmarks.sh --steps {args.steps} --device cuda --jobs "
                             f"{args.jobs} (7 methods x 4 tasks on the embedded tiny backbone)", GpuCheck.standins),
            Step("qbe", "make-mini-superb --tasks quesst14_dtw, then s3prl-adapters qbe --device cuda (every layer of the "
                        "embedded backbone on dev, the best on test: features on the GPU, DTW on the CPU)", GpuCheck.qbe),
            Step("fp16_resume", f"run_downstream.py IC, -g autocast: float16, {args.fp16_steps} steps: uninterrupted vs SIGKILL after "
                                "the first checkpoint + -e resume (GradScaler state, final tensors)", GpuCheck.fp16_resume),
            Step("nccl_ddp", "torchrun --nproc_per_node <GPUs> run_downstream.py -d emotion --backend nccl --device cuda, "
                             "then a -e resume", GpuCheck.nccl_ddp),
            Step("ddp_tests", "pytest tests/test_ddp.py (gloo, --device cpu, on this GPU host)", GpuCheck.ddp_tests),
        ]

    # ---- helpers --------------------------------------------------------------------------------------
    def _call(self, cmd: List[str], log: str, timeout: float, env: Optional[dict] = None,
              stdout_path: Optional[str] = None) -> dict:
        """Run `cmd` in the repo; stderr (and stdout unless `stdout_path`) into `log`."""
        start = time.time()
        env = dict(os.environ, **(env or {}))
        with open(log, "w") as f, open(stdout_path or os.devnull, "w") as out:
            try:
                proc = subprocess.run(cmd, stdout=out if stdout_path else f, stderr=f, env=env, cwd=REPO,
                                      timeout=max(1.0, timeout))
                rc = proc.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        return {"rc": rc, "seconds": round(time.time() - start, 1), "log": os.path.relpath(log, self.out)}

    def _left(self) -> float:
        return self.args.budget_min * 60 - (time.time() - self.started)

    def _corpus(self) -> str:
        root = os.path.join(self.out, "mini_superb")
        if not os.path.exists(os.path.join(root, "manifest.json")):
            subprocess.run([_tool("s3prl-adapters"), "make-mini-superb", root, "--workers", str(os.cpu_count() or 2)],
                           check=True, stdout=subprocess.DEVNULL)
        return root

    # ---- the steps ------------------------------------------------------------------------------------
    def bench(self) -> dict:
        md, table = os.path.join(self.out, "bench.md"), os.path.join(self.out, "bench.json")
        result = self._call([_tool("s3prl-adapters"), "bench", "--device", self.args.device, "--shape", "base_plus",
                             "--steps", str(self.args.bench_steps), "--warmup", "2", "--json", "--markdown", md],
                            os.path.join(self.out, "bench.log"), timeout=min(300, self._left()), stdout_path=table)
        if os.path.exists(md) and os.path.getsize(table):  # bench writes every row that ran, also when one failed
            with open(table) as f:
                result["table"] = json.load(f)
            with open(md) as f:
                result["markdown"] = f.read()
            result["failed_rows"] = [r["method"] for r in result["table"]["results"] if "failed" in r]
        return result

    def standins(self) -> dict:
        root = self._corpus()
        out = os.path.join(self.out, "standins")
        result = self._call([sys.executable, "-m", "s3prl_adapters.tools.benchmark", "--steps", str(self.args.steps),
                             "--device", self.args.device, "--jobs", str(self.args.jobs), "--mini-root", root, "-o", out, "--force"],
                            os.path.join(self.out, "standins.log"), timeout=min(360, self._left()))
        runs = []
        for path in sorted(glob.glob(os.path.join(out, "runs", "*", "*", "*", "result.json"))):
            with open(path) as f:
                r = json.load(f)
            runs.append({k: r[k] for k in ("task", "method", "metric", "metric_value", "train_seconds")})
        result["runs"] = runs
        if os.path.exists(os.path.join(out, "results.md")):
            with open(os.path.join(out, "results.md")) as f:
                result["markdown"] = f.read()
        return result

    def qbe(self) -> dict:
        root = self._corpus()
        if not os.path.isdir(os.path.join(root, "quesst14Database")):
            subprocess.run([_tool("s3prl-adapters"), "make-mini-superb", root, "--tasks", "quesst14_dtw"], check=True,
                           stdout=subprocess.DEVNULL)
        out = os.path.join(self.out, "qbe")
        shutil.rmtree(out, ignore_errors=True)
        result = self._call([_tool("s3prl-adapters"), "qbe", "-k", DEFAULT_BACKBONE, "--quesst",
                             os.path.join(root, "quesst14Database"), "-c",
                             os.path.join(CONFIG_ROOT, "quesst14_dtw", "mini.yaml"), "--expdir", out, "--device",
                             self.args.device], os.path.join(self.out, "qbe.log"), timeout=min(300, self._left()))
        if os.path.exists(os.path.join(out, "qbe.json")):
            with open(os.path.join(out, "qbe.json")) as f:
                summary = json.load(f)
            result.update({k: summary[k] for k in ("dev_mtwv", "best_layer", "test_mtwv", "test_atwv")})
        return result

    def fp16_resume(self) -> dict:
        import torch

        root = self._corpus()
        work = os.path.join(self.out, "fp16_resume")
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        yaml_path = os.path.join(work, "fp16.yaml")
        with open(yaml_path, "w") as f:
            f.write("autocast: float16\ne_adapter_dim: 85\nl_adapter_dim: 171\n")
        from s3prl_adapters.tasks import corpus_overrides

        backbone = DEFAULT_BACKBONE
        total = self.args.fp16_steps
        overrides = (corpus_overrides("fluent_commands", root) + f",,config.runner.total_steps={total},,"
                     f"config.runner.save_step={max(1, total // 4)},,config.runner.eval_step={10 * total},,"
                     f"config.runner.log_step={max(1, total // 4)},,config.runner.max_keep=4")

        def train(expdir):
            return [_tool("run_downstream.py"), "-m", "train", "-u", "wavlm_ladapter", "-k", backbone, "-g", yaml_path,
                    "-d", "fluent_commands", "-c", os.path.join(CONFIG_ROOT, "fluent_commands", "mini.yaml"),
                    "-p", expdir, "--device", self.args.device, "--seed", "3", "-o", overrides]

        reference = os.path.join(work, "reference")
        result = {"reference": self._call(train(reference), os.path.join(work, "reference.log"), timeout=180)}
        killed = os.path.join(work, "killed")
        proc = subprocess.Popen(train(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
        deadline = time.time() + 180
        while not glob.glob(os.path.join(killed, "states-*.ckpt")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        saved = sorted(glob.glob(os.path.join(killed, "states-*.ckpt")), key=lambda p: int(p.rsplit("-", 1)[1][:-5]))
        if not saved:
            return dict(result, rc="no checkpoint before the kill")
        result["killed_at"] = os.path.basename(saved[-1])
        result["resume"] = self._call([_tool("run_downstream.py"), "-m", "train", "-e", saved[-1], "--device", self.args.device],
                                      os.path.join(work, "resume.log"), timeout=180)
        import argparse as _argparse

        torch.serialization.add_safe_globals([_argparse.Namespace])
        try:
            a = torch.load(os.path.join(reference, f"states-{total}.ckpt"), map_location="cpu", weights_only=True)
            b = torch.load(os.path.join(killed, f"states-{total}.ckpt"), map_location="cpu", weights_only=True)
        except FileNotFoundError as e:
            return dict(result, rc=f"missing {e.filename}")
        diffs = {f"{part}.{k}": (a[part][k].float() - b[part][k].float()).abs().max().item()
                 for part in ("Upstream", "Featurizer", "Downstream") for k in a[part] if a[part][k].is_floating_point()}
        result.update(
            rc=0 if result["reference"]["rc"] == 0 and result["resume"]["rc"] == 0 else 1,
            grad_scaler_reference=a.get("GradScaler"), grad_scaler_resumed=b.get("GradScaler"),
            scaler_state_restored=a.get("GradScaler") == b.get("GradScaler") and b.get("GradScaler") is not None,
            bit_identical=all(v == 0 for v in diffs.values()), max_abs_difference=max(diffs.values()),
            tensors_compared=len(diffs))
        return result

    def nccl_ddp(self) -> dict:
        import torch

        root = self._corpus()
        on_gpu = self.args.device.startswith("cuda")
        gpus = torch.cuda.device_count() if on_gpu else 2  # a CPU smoke run: 2 gloo ranks
        backend = "nccl" if on_gpu else "gloo"
        from s3prl_adapters.tasks import corpus_overrides

        expdir = os.path.join(self.out, "nccl_ddp")
        shutil.rmtree(expdir, ignore_errors=True)
        backbone = DEFAULT_BACKBONE
        steps = "config.runner.total_steps={n},,config.runner.eval_step={n},,config.runner.save_step={n},,config.runner.log_step=5"
        base = [_tool("torchrun"), "--nproc_per_node", str(gpus), "--master_port", "29533", _tool("run_downstream.py")]
        result = {"world_size": gpus, "backend": backend}
        result["train"] = self._call(base + ["-m", "train", "-u", "wavlm_ladapter", "-k", backbone, "-d", "emotion",
                                             "-c", os.path.join(CONFIG_ROOT, "emotion", "mini.yaml"),
                                             "-p", expdir, "--device", self.args.device, "--backend", backend,
                                             "-o", corpus_overrides("emotion", root) + ",," + steps.format(n=10)],
                                     os.path.join(self.out, "nccl_ddp_train.log"), timeout=240)
        result["resume"] = self._call(base + ["-m", "train", "-e", os.path.join(expdir, "states-10.ckpt"),
                                              "--device", self.args.device, "--backend", backend, "-o", steps.format(n=20)],
                                      os.path.join(self.out, "nccl_ddp_resume.log"), timeout=240)
        result["rc"] = 0 if result["train"]["rc"] == 0 and result["resume"]["rc"] == 0 else 1
        return result

    def ddp_tests(self) -> dict:
        return self._call([sys.executable, "-m", "pytest", "-q", "tests/test_ddp.py"],
                          os.path.join(self.out, "ddp_tests.log"), timeout=min(300, self._left()),
                          env={"OMP_NUM_THREADS": "1"})

    # ---- everything -----------------------------------------------------------------------------------
    def plan(self) -> str:
        lines = [f"gpu_check: {len(self.steps)} steps, budget {self.args.budget_min:g} min, reports in {self.out}/"]
        lines += [f"  {i + 1}. {s.name}: {s.what}" for i, s in enumerate(self.steps)]
        return "\n".join(lines)

    def run(self) -> int:
        import torch

        os.makedirs(self.out, exist_ok=True)
        from s3prl_adapters.tools.bench import machine_name

        machine = {"gpu": machine_name(self.args.device), "gpus": torch.cuda.device_count(), "torch": torch.__version__,
                   "cuda": torch.version.cuda, "device": self.args.device, "git": code_version()}
        print(self.plan(), file=sys.stderr)
        for step in self.steps:
            if step.name not in self.args.only:
                step.result = {"rc": "not selected"}
                continue
            if self._left() < 30:
                step.result = {"rc": "skipped: time budget spent"}
                continue
            print(f"[gpu_check] {step.name} ...", file=sys.stderr, flush=True)
            start = time.time()
            try:
                step.result = step.run(self)
            except Exception as e:  # one broken step must not hide the others
                step.result = {"rc": f"error: {type(e).__name__}: {e}"}
            step.result.setdefault("seconds", round(time.time() - start, 1))
            print(f"[gpu_check] {step.name}: {step.result.get('rc')} "
                  f"({step.result.get('seconds', '?')} s)", file=sys.stderr, flush=True)
            self.write_report(machine)  # each step's result as soon as it exists: a machine taken away keeps them
        self.write_report(machine)
        print(f"wrote {self.out}/gpu_report.md and gpu_report.json", file=sys.stderr)
        return 0 if all(s.result.get("rc") in (0, "not selected") for s in self.steps) else 1

    def write_report(self, machine: dict) -> None:
        report = {"machine": machine, "seconds": round(time.time() - self.started, 1),
                  "steps": {s.name: s.result or {"rc": "not run yet"} for s in self.steps}}
        for name, text in (("gpu_report.json", json.dumps(report, indent=1, default=str)),
                           ("gpu_report.md", _markdown(report))):
            tmp = os.path.join(self.out, f".{name}.tmp")
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, os.path.join(self.out, name))


def _markdown(report: dict) -> str:
    m, steps = report["machine"], report["steps"]
    lines = [f"# GPU check: {m['gpu']} x {m['gpus']}, torch {m['torch']} (CUDA {m['cuda']}), git {m['git']}", "",
             f"Total {report['seconds'] / 60:.1f} min.", "", "| step | result | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {r.get('rc')} | {r.get('seconds', '')} |" for name, r in steps.items()]
    if "markdown" in steps.get("bench", {}):
        lines += ["", "## Cost (`s3prl-adapters bench --device cuda`, WavLM Base+ shape, random weights)", "",
                  steps["bench"]["markdown"]]
    runs = steps.get("standins", {}).get("runs")
    if runs:
        lines += ["", "## Every method x task on the stand-ins (few steps, `--device cuda`)", "",
                  "| task | method | metric | value | train s |", "|---|---|---|---|---|"]
        lines += [f"| {r['task']} | {r['method']} | {r['metric']} | {r['metric_value']:.4g} | {r['train_seconds']} |"
                  for r in runs]
    qbe = steps.get("qbe", {})
    if "test_mtwv" in qbe:
        lines += ["", f"## QbE on the stand-in (`s3prl-adapters qbe`, embedded backbone): best dev layer {qbe['best_layer']}, "
                      f"test MTWV {qbe['test_mtwv']:.4f} (ATWV {qbe['test_atwv']:.4f}); dev MTWV per layer "
                      + ", ".join(f"{k}: {v:.4f}" for k, v in qbe["dev_mtwv"].items())
                      + " (on the CPU, git 5f7b785: 0.7862, 0.6293, 0.5417, 0.4321, 0.4748)"]
    fp16 = steps.get("fp16_resume", {})
    if "bit_identical" in fp16:
        lines += ["", "## fp16 kill + resume", "",
                  f"Killed after {fp16['killed_at']}; GradScaler state restored and equal at the end: "
                  f"{fp16['scaler_state_restored']} ({fp16['grad_scaler_resumed']}); final tensors bit-identical to the "
                  f"uninterrupted run: {fp16['bit_identical']} (max |difference| {fp16['max_abs_difference']:.3g} over "
                  f"{fp16['tensors_compared']} tensors)."]
    ddp = steps.get("nccl_ddp", {})
    if "world_size" in ddp:
        lines += ["", f"## DDP ({ddp['backend']}): world size {ddp['world_size']}: train rc {ddp['train']['rc']} "
                      f"({ddp['train']['seconds']} s), resume rc {ddp['resume']['rc']} ({ddp['resume']['seconds']} s)"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", default="gpu_check_out")
    p.add_argument("--budget-min", type=float, default=9.5, help="skip steps once this much wall time is spent")
    p.add_argument("--steps", type=int, default=20, help="training steps per stand-in run")
    p.add_argument("--bench-steps", type=int, default=5)
    p.add_argument("--fp16-steps", type=int, default=40, help="steps of the fp16 kill + resume runs")
    p.add_argument("--jobs", type=int, default=4, help="stand-in runs at a time (they share the GPU)")
    p.add_argument("--only", nargs="+", default=["bench", "standins", "qbe", "fp16_resume", "nccl_ddp", "ddp_tests"])
    p.add_argument("--plan", "--dry-run", dest="plan", action="store_true", help="print the plan and exit 0")
    p.add_argument("--device", default="cuda", help="'cpu' runs the same steps on the CPU (a smoke run of this script)")
    args = p.parse_args(argv)
    check = GpuCheck(args)
    if args.plan:
        print(check.plan())
        return
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: error: no CUDA device here (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda or 'none'}): nothing was run; --plan prints the plan, --device cpu smoke-runs it",
              file=sys.stderr)
        sys.exit(1)
    if "ddp_tests" in args.only and not SOURCE_CHECKOUT:
        print("gpu_check: error: the ddp_tests step runs the repository's tests, which the installed package does not "
              "carry: run scripts/gpu_check.sh in a source checkout, or leave the step out with --only",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(check.run())


if __name__ == "__main__":
    main()

"""The installed package is the product: the wheel carries the shipped configs, the ASR dictionary and
the embedded backbone; pip resolves it beside the lowest torch it declares and beside 2.8.x; installed
into a clean virtual environment with pip resolving its own metadata (nothing borrowed from .venv),
it trains every shipped task from a folder outside the repository, exports and predicts, and a tool
whose optional dependencies are missing names the extra in one line. `python -m build` makes a wheel
and an sdist that pass `twine check` (the release check)."""

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO

BUILD_ENV = dict(os.environ, PYTHONPATH="")


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), REPO],
                          capture_output=True, text=True, timeout=900, env=BUILD_ENV)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


def test_release_check(dist):
    from s3prl_adapters import __version__

    wheels, sdists = glob.glob(str(dist / "*.whl")), glob.glob(str(dist / "*.tar.gz"))
    assert [os.path.basename(w) for w in wheels] == [f"s3prl_adapters-{__version__}-py3-none-any.whl"]
    assert [os.path.basename(s) for s in sdists] == [f"s3prl_adapters-{__version__}.tar.gz"]
    proc = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *wheels, *sdists],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.count("PASSED") == 2, proc.stdout + proc.stderr


def test_the_wheel_carries_configs_dictionary_and_backbone(dist):
    names = zipfile.ZipFile(glob.glob(str(dist / "*.whl"))[0]).namelist()
    for task in ("asr", "fluent_commands", "emotion", "sv_voxceleb1", "speech_commands", "voxceleb1"):
        for config in ("config.yaml", "mini.yaml"):
            assert f"s3prl_adapters/downstream_configs/{task}/{config}" in names
    assert "s3prl_adapters/downstream_configs/asr/char.dict" in names
    assert "s3prl_adapters/assets/wavlm_tiny_pretrained.pt" in names


def _requirements(wheel: str) -> list:
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    return [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]


def _resolve(wheel: str, *pins: str) -> dict:
    """What pip would install for the wheel (and `pins`) into an empty environment: {name: version}."""
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
                           "--report", "-", wheel, *pins], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return {"error": proc.stderr}
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(proc.stdout)["install"]}


LOWEST_TORCH = "2.5.1"  # the suite passed on it (torch, torchaudio 2.5.1, peft 0.17.0, optuna 4.0.0): docs/install.md


def test_pip_resolves_the_wheel_beside_the_lowest_and_the_newest_torch(dist):
    wheel = glob.glob(str(dist / "*.whl"))[0]
    requires = _requirements(wheel)
    assert [r for r in requires if r.startswith("torch")] == ["torch<2.9,>=2.5", "torchaudio<2.9,>=2.5"], requires
    assert not [r for r in requires if r.split()[0].startswith(("optuna", "matplotlib", "psycopg")) and "extra" not in r]
    for torch_pin in (LOWEST_TORCH, "2.8.0"):
        got = _resolve(wheel, f"torch=={torch_pin}")
        assert got.get("torch") == torch_pin and got.get("torchaudio") == torch_pin, got
        assert got["s3prl"] == "0.4.18" and "optuna" not in got and "matplotlib" not in got
    refused = _resolve(wheel, "torch==2.9.1")  # torchaudio 2.9 breaks S3PRL 0.4.18: no torch it could pair with
    assert "error" in refused and "ResolutionImpossible" in refused["error"], refused


@pytest.fixture(scope="module")
def clean_venv(dist):
    """A virtual environment with nothing but what pip resolves from the wheel's own metadata (no system or
    .venv site-packages), made once per set of requirements under ~/.cache (a fresh machine builds it: a
    few minutes, torch is large); the wheel under test is then installed into it, pip resolving again."""
    wheel = glob.glob(str(dist / "*.whl"))[0]
    key = hashlib.sha1("\n".join(sorted(_requirements(wheel)) + [sys.version]).encode()).hexdigest()[:12]
    venv = os.path.join(os.path.expanduser("~"), ".cache", "s3prl-adapters", "clean-venvs", key)
    python = os.path.join(venv, "bin", "python")
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    if not os.path.exists(os.path.join(venv, ".complete")):
        for old in glob.glob(os.path.join(os.path.dirname(venv), "*")):  # other requirements' venvs (~6 GB each)
            shutil.rmtree(old, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300, env=clean)
        proc = subprocess.run([python, "-m", "pip", "install", "-q", wheel], capture_output=True, text=True,
                              timeout=1800, cwd=venv, env=clean)
        assert proc.returncode == 0, proc.stderr[-3000:]
        open(os.path.join(venv, ".complete"), "w").close()
    for argv in (["install", "-q", "--force-reinstall", "--no-deps", wheel], ["install", "-q", wheel], ["check"]):
        proc = subprocess.run([python, "-m", "pip", *argv], capture_output=True, text=True, timeout=900, cwd=venv,
                              env=clean)
        assert proc.returncode == 0, (argv, proc.stdout[-2000:], proc.stderr[-3000:])
    site = subprocess.run([python, "-c", "import sys; print(sys.path)"], capture_output=True, text=True, env=clean)
    assert REPO not in site.stdout and "/.venv/" not in site.stdout, site.stdout  # borrows nothing
    return venv


def _run(venv, tool, *argv, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([os.path.join(venv, "bin", tool), *argv], capture_output=True, text=True, timeout=900,
                          cwd=str(cwd), env=env)


STEPS = "config.runner.total_steps=2,,config.runner.eval_step=1000,,config.runner.save_step=2,,config.runner.log_step=1"


def test_the_wheel_alone_trains_every_task_outside_the_repository(clean_venv, tmp_path):
    from s3prl_adapters import __version__
    from s3prl_adapters.tasks import TASKS

    where = _run(clean_venv, "python", "-c", "import s3prl_adapters, s3prl_adapters.paths as p; print(s3prl_adapters.__file__); "
                 "print(p.CONFIG_ROOT); print(p.DEFAULT_BACKBONE); print(p.code_version())", cwd=tmp_path)
    assert where.returncode == 0, where.stderr[-2000:]
    package, configs, backbone, version = where.stdout.strip().split("\n")
    assert package.startswith(clean_venv) and configs.startswith(clean_venv) and backbone.startswith(clean_venv)
    assert version == f"s3prl-adapters {__version__} (installed)"  # no git hash of whatever holds site-packages

    corpus = tmp_path / "mini"
    made = _run(clean_venv, "s3prl-adapters", "make-mini-superb", str(corpus), "--tasks", *TASKS, cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    for task in [t for t in TASKS if TASKS[t].trains]:
        overrides = _run(clean_venv, "s3prl-adapters", "corpus-overrides", task, str(corpus), cwd=tmp_path).stdout.strip()
        config = [] if task == "fluent_commands" else ["-c", os.path.join(configs, task, "mini.yaml")]  # IC: no -c
        train = _run(clean_venv, "run_downstream.py", "-m", "train", "-u", "wavlm_ladapter", "-k", backbone, "-d",
                     TASKS[task].runs_as(),
                     *config, "-p", str(tmp_path / task), "-o", f"{overrides},,{STEPS}", cwd=tmp_path)
        assert train.returncode == 0, (task, train.stderr[-3000:])
        assert os.path.isfile(tmp_path / task / "states-2.ckpt"), task

    # QbE trains nothing: one layer's dev pass and the test pass (the recipe imports dtw-python and lxml)
    qbe = _run(clean_venv, "s3prl-adapters", "qbe", "-k", backbone, "--quesst", str(corpus / "quesst14Database"),
               "--layers", "1", "-c", os.path.join(configs, "quesst14_dtw", "mini.yaml"), "--expdir", str(tmp_path / "qbe"),
               "--device", "cpu", cwd=tmp_path)
    assert qbe.returncode == 0 and "best layer on dev: 1" in qbe.stdout, qbe.stderr[-3000:]
    assert os.path.isfile(tmp_path / "qbe" / "layer_1_test" / "benchmark.stdlist.xml")

    assert _run(clean_venv, "s3prl-adapters", "params", "--backbone", backbone, cwd=tmp_path).returncode == 0
    export = _run(clean_venv, "s3prl-adapters", "export", str(tmp_path / "fluent_commands" / "states-2.ckpt"), "-o",
                  str(tmp_path / "ic.adapter"), cwd=tmp_path)
    assert export.returncode == 0, export.stderr[-2000:]
    wav = sorted(glob.glob(str(corpus / "**" / "*.wav"), recursive=True))[0]
    predict = _run(clean_venv, "s3prl-adapters", "predict", "--backbone", backbone, "--adapters",
                   str(tmp_path / "ic.adapter"), wav, cwd=tmp_path)
    assert predict.returncode == 0 and '"ic": {"action": ' in predict.stdout, predict.stderr[-2000:]
    assert _run(clean_venv, "s3prl-adapters", "--version", cwd=tmp_path).stdout.strip() == f"s3prl-adapters {__version__}"


def test_a_tool_without_its_extra_names_it_in_one_line(clean_venv, tmp_path):
    """The core install has no Optuna or matplotlib: the tools that need them say which extra to install;
    the GPU check's test step needs the repository and says so."""
    def one_line(proc, *expected):
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        for text in expected:
            assert text in lines[0], lines[0]

    one_line(_run(clean_venv, "s3prl-adapters", "tune", "-u", "wavlm_ladapter", "-d", "fluent_commands", "--trials", "1", "--out",
                  str(tmp_path / "study"), cwd=tmp_path), "needs optuna", "pip install 's3prl-adapters[tune]'")
    one_line(_run(clean_venv, "python", "-m", "s3prl_adapters.tools.benchmark", "-o", str(tmp_path / "bench"),
                  cwd=tmp_path), "needs matplotlib", "pip install 's3prl-adapters[lab]'")
    one_line(_run(clean_venv, "python", "-m", "s3prl_adapters.tools.gpu_check", "--device", "cpu", "-o",
                  str(tmp_path / "gpu"), cwd=tmp_path), "the installed package does not carry")
    assert not (tmp_path / "study").exists() and not (tmp_path / "gpu").exists()

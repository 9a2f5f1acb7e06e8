"""The installed package is the product: the wheel carries the shipped configs, the ASR dictionary and
the embedded backbone, and works from a fresh virtual environment that sees .venv's dependencies but
not the source tree (no editable finder, no repository on sys.path), from a folder outside the
repository. `python -m build` makes a wheel and an sdist that pass `twine check` (the release check)."""

import glob
import os
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


@pytest.fixture(scope="module")
def installed(dist, tmp_path_factory):
    """A fresh venv with the wheel installed (--no-deps); .venv's site-packages appended to its path by a
    .pth line (a plain path: the editable install's own .pth files there are not processed)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    deps = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "zz_s3prl_adapters_dependencies.pth"), "w") as f:
        f.write(deps + "\n")
    wheel = glob.glob(str(dist / "*.whl"))[0]
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--force-reinstall", "-q", wheel],
                          capture_output=True, text=True, timeout=600, cwd=str(venv), env=clean)  # not the repository
    assert proc.returncode == 0, proc.stderr[-2000:]
    return venv


def _run(venv, tool, *argv, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([str(venv / "bin" / tool), *argv], capture_output=True, text=True, timeout=600, cwd=str(cwd),
                          env=env)


def test_the_installed_package_trains_and_predicts_outside_the_repository(installed, tiny_fsc, tmp_path):
    where = _run(installed, "python", "-c", "import s3prl_adapters, s3prl_adapters.paths as p; "
                 "print(s3prl_adapters.__file__); print(p.CONFIG_ROOT); print(p.DEFAULT_BACKBONE)", cwd=tmp_path)
    assert where.returncode == 0, where.stderr[-2000:]
    package, configs, backbone = where.stdout.split()
    assert package.startswith(str(installed)) and configs.startswith(str(installed)), where.stdout
    assert not any(p.startswith(REPO) for p in (package, configs, backbone))
    assert os.path.isfile(backbone)

    train = _run(installed, "run_downstream.py", "-m", "train", "-u", "wavlm_ladapter", "-k", backbone, "-d",
                 "fluent_commands", "-p", str(tmp_path / "exp"),
                 "-o", "config.runner.total_steps=2,,config.runner.eval_step=2,,config.runner.save_step=2,,"
                       f"config.downstream_expert.datarc.file_path='{tiny_fsc}'", cwd=tmp_path)  # no -c
    assert train.returncode == 0, train.stderr[-3000:]
    assert os.path.isfile(tmp_path / "exp" / "states-2.ckpt")
    assert _run(installed, "s3prl-adapters", "params", "--backbone", backbone, cwd=tmp_path).returncode == 0
    export = _run(installed, "s3prl-adapters", "export", str(tmp_path / "exp" / "states-2.ckpt"), "-o",
                  str(tmp_path / "ic.adapter"), cwd=tmp_path)
    assert export.returncode == 0, export.stderr[-2000:]
    wav = sorted(glob.glob(os.path.join(tiny_fsc, "wavs", "speakers", "*", "*.wav")))[0]
    predict = _run(installed, "s3prl-adapters", "predict", "--backbone", backbone, "--adapters",
                   str(tmp_path / "ic.adapter"), wav, cwd=tmp_path)
    assert predict.returncode == 0 and '"ic": {"action": ' in predict.stdout, predict.stderr[-2000:]
    from s3prl_adapters import __version__

    assert _run(installed, "s3prl-adapters", "--version", cwd=tmp_path).stdout.strip() == f"s3prl-adapters {__version__}"

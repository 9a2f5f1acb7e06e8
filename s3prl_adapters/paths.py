"""Where the package's files are: the shipped downstream configs and the embedded backbone.

In a source checkout (run in place, or installed editable) the configs are the repository's top-level
`downstream_configs/`; an installed wheel carries them as the package `s3prl_adapters.downstream_configs`
(setup.py maps the folder there). Both are found with importlib.resources."""

import os
from importlib import resources

PACKAGE_ROOT = str(resources.files("s3prl_adapters"))
REPO_ROOT = os.path.dirname(PACKAGE_ROOT)
"""The source checkout's root when running from one; in an installed wheel, site-packages."""


SOURCE_CHECKOUT = os.path.isfile(os.path.join(REPO_ROOT, "downstream_configs", "__init__.py")) and \
    os.path.isfile(os.path.join(REPO_ROOT, "pyproject.toml"))
"""Running from the repository (in place or installed editable), not from an installed wheel."""


def _config_root() -> str:
    if SOURCE_CHECKOUT:  # its own folder, always
        return os.path.join(REPO_ROOT, "downstream_configs")
    return str(resources.files("s3prl_adapters.downstream_configs"))


CONFIG_ROOT = _config_root()
"""downstream_configs/<S3PRL downstream name>/{config,mini}.yaml"""
DEFAULT_BACKBONE = str(resources.files("s3prl_adapters") / "assets" / "wavlm_tiny_pretrained.pt")
"""The embedded pretrained tiny WavLM (4 x 256), the default backbone of run_benchmarks.sh."""


def code_version() -> str:
    """What produced a result: the short git hash of the source checkout, or the installed package's
    version. Never the hash of some repository that happens to contain site-packages."""
    import subprocess

    if not SOURCE_CHECKOUT:
        from importlib.metadata import version

        return f"s3prl-adapters {version('s3prl-adapters')} (installed)"
    try:
        run = lambda *argv: subprocess.run(["git", "-C", REPO_ROOT, *argv], capture_output=True, text=True)  # noqa: E731
        commit = run("rev-parse", "--short", "HEAD").stdout.strip()
    except OSError:
        return "unknown"
    return commit or "unknown"


def require_source_checkout(what: str) -> str:
    """REPO_ROOT, or a UserError saying that `what` needs the repository (it is not in the wheel)."""
    from s3prl_adapters.errors import UserError

    if not SOURCE_CHECKOUT:
        raise UserError(f"{what} needs a source checkout of s3prl-adapters (its tests and scripts are not part of "
                        f"the installed package): git clone the repository and run it there")
    return REPO_ROOT

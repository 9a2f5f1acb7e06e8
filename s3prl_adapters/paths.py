"""Where the package's files are: the shipped downstream configs and the embedded backbone.

In a source checkout (run in place, or installed editable) the configs are the repository's top-level
`downstream_configs/`; an installed wheel carries them as the package `s3prl_adapters.downstream_configs`
(setup.py maps the folder there). Both are found with importlib.resources."""

import os
from importlib import resources

PACKAGE_ROOT = str(resources.files("s3prl_adapters"))
REPO_ROOT = os.path.dirname(PACKAGE_ROOT)
"""The source checkout's root when running from one; in an installed wheel, site-packages."""


def _config_root() -> str:
    source = os.path.join(REPO_ROOT, "downstream_configs")
    if os.path.isfile(os.path.join(source, "__init__.py")):  # a source checkout: its own folder, always
        return source
    return str(resources.files("s3prl_adapters.downstream_configs"))


CONFIG_ROOT = _config_root()
"""downstream_configs/<S3PRL downstream name>/{config,mini}.yaml"""
DEFAULT_BACKBONE = str(resources.files("s3prl_adapters") / "assets" / "wavlm_tiny_pretrained.pt")
"""The embedded pretrained tiny WavLM (4 x 256), the default backbone of run_benchmarks.sh."""

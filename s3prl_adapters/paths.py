"""Where the package's files are: the repository root, the shipped downstream configs, the assets."""

import os

PACKAGE_ROOT = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(PACKAGE_ROOT)
CONFIG_ROOT = os.path.join(REPO_ROOT, "downstream_configs")
"""downstream_configs/<S3PRL downstream name>/{config,mini}.yaml"""
DEFAULT_BACKBONE = os.path.join(PACKAGE_ROOT, "assets", "wavlm_tiny_pretrained.pt")
"""The embedded pretrained tiny WavLM (4 x 256), the default backbone of run_benchmarks.sh."""

"""The package layout (metadata and dependencies: pyproject.toml).

The shipped downstream configs stay at the top of the repository (`downstream_configs/<task>/`, where
S3PRL users look for them) and install as the package `s3prl_adapters.downstream_configs`, beside the
embedded backbone (`s3prl_adapters/assets/`); the code finds both with importlib.resources."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["s3prl_adapters", "s3prl_adapters.*"]) + ["s3prl_adapters.downstream_configs"],
    package_dir={"s3prl_adapters.downstream_configs": "downstream_configs"},
    package_data={
        "s3prl_adapters": ["assets/*.pt", "assets/*.json", "assets/*.md"],
        "s3prl_adapters.downstream_configs": ["*/*.yaml", "*/*.dict", "*/*.txt", "*/mini_search/*"],
    },
)

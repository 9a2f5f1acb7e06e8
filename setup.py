from setuptools import find_packages, setup

setup(
    name="s3prl-adapters",
    version="0.1.0",
    description="L-adapters and E-adapters for WavLM as S3PRL upstreams (Otake et al., ICASSP 2023)",
    packages=find_packages(include=["s3prl_adapters", "s3prl_adapters.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch==2.8.0",
        "torchaudio==2.8.0",
        "s3prl==0.4.18",
        "transformers<5",
        "huggingface_hub<1",
        "peft==0.21.2",
        "optuna==5.0.0",
        "tensorboardX",
        "soundfile",
        "pandas",
        "editdistance",
        "numpy",
        "pyyaml",
        "tqdm",
    ],
    entry_points={
        "console_scripts": [
            "run_downstream.py=s3prl_adapters.bridge.launcher:main",
            "s3prl-adapters=s3prl_adapters.tools.cli:main",
        ]
    },
)

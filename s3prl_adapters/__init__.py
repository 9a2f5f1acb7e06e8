"""L-adapters and E-adapters for WavLM as S3PRL upstreams (Otake et al., ICASSP 2023).

`import s3prl_adapters` makes the adapter upstreams (`wavlm_ladapter`, ...) resolvable through
`s3prl.hub`, so S3PRL's own Python API finds them (`S3PRLUpstream("wavlm_ladapter", path_or_url=...)`).
It does so without importing S3PRL: the names are added when `s3prl.hub` is imported (at once if it
already is). The inference API is here too:

    from s3prl_adapters import AdapterSet, MultiTaskWavLM
    model = MultiTaskWavLM("WavLM-Base+.pt", [AdapterSet.load("ic.adapter"), AdapterSet.load("er.adapter")])
    model.predict([wav_16k_mono])  # [{"ic": {"action": ..., ...}, "er": {"label": ..., ...}}]
"""

import importlib.abc
import importlib.machinery
import sys

__version__ = "0.2.0"
"""The package's one version (pyproject.toml reads it; `s3prl-adapters --version` prints it)."""

__all__ = ["AdapterSet", "MultiTaskWavLM", "export", "read_audio"]


def _register(hub_module) -> None:
    from s3prl_adapters.bridge.hubconf import register

    register(hub_module)


class _RegisterOnHubImport(importlib.abc.MetaPathFinder):
    """Adds the adapter upstreams to `s3prl.hub` right after that module is first executed."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "s3prl.hub":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        loader = spec.loader
        original_exec = loader.exec_module

        def exec_module(module):
            original_exec(module)
            sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _RegisterOnHubImport)]
            _register(module)

        loader.exec_module = exec_module
        return spec


if "s3prl.hub" in sys.modules:
    _register(sys.modules["s3prl.hub"])
elif not any(isinstance(f, _RegisterOnHubImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterOnHubImport())


def __getattr__(name):  # the inference API, imported when first used (it needs torch)
    if name in __all__:
        from s3prl_adapters import inference

        return getattr(inference, name)
    raise AttributeError(f"module 's3prl_adapters' has no attribute '{name}'")

"""S3PRL hub entries for the adapter upstreams: resolve `-k`/`-g` into an expert, nothing else.

S3PRL's runner calls `Upstream(ckpt=<-k>, model_config=<-g>, refresh=<-r>)`."""

import os
from typing import Optional

from s3prl.util.download import _urls_to_filepaths

from s3prl_adapters.method.backbone import WAVLM_BASE_PLUS_URL, load_wavlm
from s3prl_adapters.method.config import METHODS, load_adapter_config
from s3prl_adapters.errors import UserError
from s3prl_adapters.method.expert import AdapterWavLMExpert


def resolve_checkpoint(ckpt: Optional[str], refresh: bool = False) -> str:
    """A local path as is; a URL (or nothing: S3PRL's WavLM Base+ URL) downloaded by S3PRL's cache."""
    if ckpt is None:
        ckpt = WAVLM_BASE_PLUS_URL
    if ckpt.startswith(("http://", "https://")):
        try:
            return _urls_to_filepaths(ckpt, refresh=refresh)
        except Exception as e:
            raise UserError(
                f"-k: cannot download {ckpt} ({type(e).__name__}); pass a local WavLM checkpoint with -k PATH"
            ) from None
    return os.path.expanduser(ckpt)


def _build(upstream: str, ckpt, model_config, refresh) -> AdapterWavLMExpert:
    wavlm = load_wavlm(resolve_checkpoint(ckpt, refresh))
    return AdapterWavLMExpert(wavlm, load_adapter_config(METHODS[upstream], model_config))


def wavlm_ladapter(ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False, **kwargs):
    """Proposed: L-adapters on every layer + E-adapters after the FFN of layers 0..L-2 + layer LNs.
        ckpt (str): WavLM checkpoint path or URL (default: S3PRL's WavLM Base+)
        model_config (str): optional YAML of adapter settings (see AdapterConfig)
    """
    return _build("wavlm_ladapter", ckpt, model_config, refresh)


def wavlm_ladapter_only(ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False, **kwargs):
    """L-adapters only; the whole backbone stays frozen (train_layer_norms: true adds the layer LNs)."""
    return _build("wavlm_ladapter_only", ckpt, model_config, refresh)


def wavlm_eadapter(ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False, **kwargs):
    """E-adapters after the FFN of every layer + layer LNs; the Featurizer sums the 13 backbone states."""
    return _build("wavlm_eadapter", ckpt, model_config, refresh)


def wavlm_houlsby(ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False, **kwargs):
    """Conventional adapters (Thomas et al. 2022): after self-attention and after the FFN of every layer + layer LNs."""
    return _build("wavlm_houlsby", ckpt, model_config, refresh)


def wavlm_lora(ckpt: Optional[str] = None, model_config: Optional[str] = None, refresh: bool = False, **kwargs):
    """LoRA (HF PEFT) on attention q/v of every layer (lora_ffn: true adds fc1/fc2); the Featurizer
    sums the 13 backbone states. The rank defaults to the one matching the proposed method's count."""
    return _build("wavlm_lora", ckpt, model_config, refresh)


UPSTREAMS = {name: globals()[name] for name in METHODS}


def register(hub_module=None) -> None:
    """Make `-u wavlm_ladapter` etc. resolvable through `s3prl.hub` (the runner does getattr(hub, name))."""
    if hub_module is None:
        from s3prl import hub as hub_module
    for name, entry in UPSTREAMS.items():
        setattr(hub_module, name, entry)

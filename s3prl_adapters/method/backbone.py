"""The frozen backbone: S3PRL's own WavLM, loaded from S3PRL/UniLM `{'cfg', 'model'}` checkpoints.

Every load here is weights-only and lands on CPU; failures become one-line `UserError`s."""

import argparse
import ast
import contextlib
import hashlib
import os
import pickle
import zipfile
from typing import Iterable, Optional, Tuple

import torch

from s3prl.upstream.wavlm.WavLM import WavLM, WavLMConfig

from s3prl_adapters.errors import UserError

# The URL S3PRL's own `wavlm_base_plus` entry resolves (s3prl/upstream/wavlm/hubconf.py).
WAVLM_BASE_PLUS_URL = "https://huggingface.co/s3prl/converted_ckpts/resolve/main/wavlm_base_plus.pt"

# WavLM Base+ hyper-parameters (the fields of the released checkpoint's cfg that differ from
# WavLMConfig's defaults); used to build random Base+-shaped models for counts and benchmarks.
BASE_PLUS_CFG = {
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "extractor_mode": "default",
    "layer_norm_first": False,
    "conv_bias": False,
    "relative_position_embedding": True,
    "num_buckets": 320,
    "max_distance": 800,
    "gru_rel_pos": True,
    "normalize": False,
}

# WavLM Large (UniLM WavLM-Large.pt / transformers microsoft/wavlm-large): pre-LN layers, a LayerNorm
# in every CNN block, and a per-utterance waveform normalisation before the CNN.
LARGE_CFG = dict(
    BASE_PLUS_CFG,
    encoder_layers=24,
    encoder_embed_dim=1024,
    encoder_ffn_embed_dim=4096,
    encoder_attention_heads=16,
    extractor_mode="layer_norm",
    layer_norm_first=True,
    normalize=True,
)

SHAPES = {"base_plus": BASE_PLUS_CFG, "large": LARGE_CFG}
"""Named backbone shapes for random models (`params --backbone`, `bench --shape`)."""


def tiny_cfg(layers: int = 3, dim: int = 48, heads: int = 4, large: bool = False) -> dict:
    """A WavLM small enough for CPU tests, with Base+'s structure (post-LN, gated rel-pos, stride 320),
    or with Large's (`large=True`: pre-LN layers, LayerNorm CNN, waveform normalisation)."""
    if layers < 1 or dim < heads or dim % heads:
        raise UserError(f"tiny WavLM: need layers >= 1 and dim divisible by {heads} heads, got layers={layers} dim={dim}")
    cfg = dict(LARGE_CFG if large else BASE_PLUS_CFG)
    cfg.update(
        encoder_layers=layers,
        encoder_embed_dim=dim,
        encoder_ffn_embed_dim=2 * dim,
        encoder_attention_heads=heads,
        conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2",
        conv_pos=16,
        conv_pos_groups=4,
    )
    return cfg


# WavLMConfig fields that S3PRL's WavLM passes to `eval()` (WavLM.__init__: `eval(cfg.conv_feature_layers)`):
# a checkpoint whose string is any other Python expression would run it on load.
EVALUATED_CFG_FIELDS = ("conv_feature_layers",)
_MAX_SPEC_ITEMS = 4096  # bounds `[...] * n` so that a crafted spec cannot exhaust memory either


def parse_layer_spec(text: str):
    """The value of a `conv_feature_layers`-style string, read without `eval`: list/tuple literals of
    numbers, `+` and `*` between them, nothing else (ValueError otherwise)."""
    if not isinstance(text, str):
        raise ValueError(f"expected a string, got {type(text).__name__}")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ValueError("not a Python literal") from None

    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            operand = value(node.operand)
            if not isinstance(operand, (int, float)):
                raise ValueError("'-' applies to numbers only")
            return -operand
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Mult) and isinstance(left, int) and isinstance(right, (list, tuple)):
                left, right = right, left
            if isinstance(node.op, ast.Mult) and isinstance(left, (list, tuple)):
                if not isinstance(right, int) or len(left) * max(right, 0) > _MAX_SPEC_ITEMS:
                    raise ValueError("a sequence may only be repeated a small whole number of times")
            elif isinstance(node.op, ast.Add) and isinstance(left, (list, tuple)) != isinstance(right, (list, tuple)):
                raise ValueError("'+' joins two sequences or two numbers")
            result = left + right if isinstance(node.op, ast.Add) else left * right
            if isinstance(result, (list, tuple)) and len(result) > _MAX_SPEC_ITEMS:
                raise ValueError("sequence too long")
            return result
        raise ValueError(f"'{ast.unparse(node)[:40]}' is not a number, list or tuple")

    return value(tree.body)


def conv_layers(cfg) -> list:
    """[(dim, kernel, stride), ...] of a WavLM cfg (dict or WavLMConfig), read without `eval`."""
    text = cfg["conv_feature_layers"] if isinstance(cfg, dict) else cfg.conv_feature_layers
    layers = parse_layer_spec(text)
    if not isinstance(layers, list) or not layers or not all(
            isinstance(layer, tuple) and len(layer) == 3 and all(isinstance(v, int) and v > 0 for v in layer)
            for layer in layers):
        raise ValueError("expected a non-empty list of (dim, kernel, stride) tuples of positive ints")
    return layers


def check_evaluated_fields(cfg: dict, source: str) -> None:
    """Refuse a cfg whose fields that S3PRL `eval()`s are anything but plain literals (see parse_layer_spec)."""
    for field in EVALUATED_CFG_FIELDS:
        if field not in cfg:
            continue
        try:
            if field == "conv_feature_layers":
                conv_layers(cfg)
            else:
                parse_layer_spec(cfg[field])
        except ValueError as e:
            raise UserError(
                f"{source}: cfg field '{field}' refused: S3PRL would eval() it, and it is not a plain literal "
                f"of numbers, lists and tuples ({e}): {str(cfg[field])[:60]!r}"
            ) from None


def check_wavlm_checkpoint_file(path: str, what: str = "-k") -> None:
    """For a stock S3PRL WavLM upstream (which loads `-k` itself): refuse its cfg before S3PRL evals it.
    Memory-mapped, so the tensors are not read."""
    if not os.path.isfile(path):
        return  # S3PRL / the caller names a missing file
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        ckpt = read_checkpoint(path, what)  # one-line error for unreadable or code-carrying files
    if isinstance(ckpt, dict) and isinstance(ckpt.get("cfg"), dict):
        check_evaluated_fields(ckpt["cfg"], f"{what} {path}")


def hash_tensors(named: Iterable[Tuple[str, torch.Tensor]], *extra: str) -> str:
    """A digest of names, shapes, dtypes and every byte of the tensors, plus `extra` strings."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in named:
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for value in extra:
        h.update(value.encode())
    return h.hexdigest()


def backbone_fingerprint(model: WavLM) -> dict:
    """What identifies a backbone: its shape and a hash of its own weights (adapters excluded, so take it
    before attaching any). Stored in exported adapter sets and compared with the backbone they meet."""
    cfg = model.cfg
    state = {k: v for k, v in model.state_dict().items() if ".e_adapter." not in k}
    return {"layers": cfg.encoder_layers, "dim": cfg.encoder_embed_dim, "ffn": cfg.encoder_ffn_embed_dim,
            "heads": cfg.encoder_attention_heads, "layer_norm_first": bool(cfg.layer_norm_first),
            "weights": hash_tensors(sorted(state.items()))}


def describe_fingerprint(fingerprint: dict) -> str:
    layout = "pre-LN" if fingerprint["layer_norm_first"] else "post-LN"
    return f"{fingerprint['layers']} x {fingerprint['dim']} {layout}, weights {fingerprint['weights'][:12]}"


def build_wavlm(cfg: dict, seed: Optional[int] = None) -> WavLM:
    if seed is not None:
        torch.manual_seed(seed)
    return WavLM(WavLMConfig(cfg))


def save_checkpoint(model: WavLM, path: str) -> None:
    """Write `{'cfg', 'model'}` exactly as S3PRL's `wavlm_local` reads it (CPU tensors), atomically."""
    state = {"cfg": dict(model.cfg.__dict__), "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def make_tiny_wavlm(path: str, layers: int = 3, dim: int = 48, seed: int = 0, large: bool = False) -> str:
    save_checkpoint(build_wavlm(tiny_cfg(layers, dim, large=large), seed=seed), path)
    return path


@contextlib.contextmanager
def _also_unpickled(types_: Tuple[type, ...]):
    """Weights-only loading that also accepts `types_`, for the duration of the block only (torch's
    allow-list is process-wide: a load elsewhere in the user's process keeps its own rules)."""
    serialization = torch.serialization
    before = list(serialization.get_safe_globals())
    missing = [t for t in types_ if t not in before]
    if not missing:  # (torch's own safe_globals() would take a type out on exit that was allowed before it)
        yield
        return
    serialization.add_safe_globals(missing)
    try:
        yield
    finally:  # the list as it was
        serialization.clear_safe_globals()
        serialization.add_safe_globals(before)


S3PRL_RUN = (argparse.Namespace,)
"""What a run checkpoint of S3PRL holds beside tensors and containers: its `Args`."""


def read_checkpoint(path: str, what: str = "-k", allow: Tuple[type, ...] = ()) -> dict:
    """torch.load(weights_only=True) with the failure modes a user meets turned into one line each.
    `allow`: types unpickled besides tensors and plain containers (S3PRL_RUN for run checkpoints)."""
    if not os.path.exists(path):
        raise UserError(f"{what} {path}: no such file")
    if os.path.isdir(path):
        raise UserError(f"{what} {path}: is a directory, expected a checkpoint file")
    if not os.access(path, os.R_OK):
        raise UserError(f"{what} {path}: not readable (permission denied)")
    try:
        with _also_unpickled(allow):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "Unsupported global" in str(e):  # a pickled callable/class: the way checkpoints carry code
            raise UserError(
                f"{what} {path}: refused to unpickle: it holds objects other than tensors and plain "
                f"containers (weights-only load), so it may run code; re-save it as a plain state dict"
            ) from None
        detail = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0] if "WeightsUnpickler error:" in str(e) else first
        raise UserError(f"{what} {path}: not a readable PyTorch checkpoint, truncated or corrupt? ({detail})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{what} {path}: not a readable PyTorch checkpoint, truncated or corrupt? ({first})") from None


def load_wavlm(path: str) -> WavLM:
    """Build S3PRL's WavLM from a `{'cfg','model'}` file (or a transformers WavLM folder) and load
    its weights strictly."""
    if os.path.isdir(path):
        from s3prl_adapters.method.hf_convert import convert_hf_folder

        ckpt = convert_hf_folder(path)
    else:
        ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or "cfg" not in ckpt or "model" not in ckpt:
        keys = sorted(ckpt)[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(
            f"-k {path}: not a WavLM checkpoint (expected keys 'cfg' and 'model' as in UniLM/S3PRL "
            f"WavLM-Base+.pt; found {keys})"
        )
    if not isinstance(ckpt["cfg"], dict):
        raise UserError(f"-k {path}: 'cfg' is a {type(ckpt['cfg']).__name__}, expected a dict of WavLMConfig fields")
    check_evaluated_fields(ckpt["cfg"], f"-k {path}")
    try:
        model = WavLM(WavLMConfig(ckpt["cfg"]))
    except Exception as e:  # the cfg decides every shape; a broken one fails in WavLM's constructor
        raise UserError(f"-k {path}: its 'cfg' does not describe a WavLM ({type(e).__name__}: {e})") from None
    missing, unexpected = _diff_keys(model.state_dict(), ckpt["model"])
    if missing or unexpected:
        raise UserError(
            f"-k {path}: weights do not match a WavLM built from its cfg "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"-k {path}: weights do not fit its cfg ({str(e).splitlines()[-1].strip()})") from None
    return model


def _diff_keys(expected: dict, got: dict):
    return sorted(set(expected) - set(got)), sorted(set(got) - set(expected))

"""Hugging Face `transformers` WavLM folders (config.json + weights) -> S3PRL's `{'cfg','model'}`.

`-k` accepts such a folder directly (e.g. a local copy of microsoft/wavlm-base-plus); `s3prl-adapters
convert-hf FOLDER OUT.pt` writes the converted checkpoint once. Weights are read weights-only
(safetensors, or torch.load(weights_only=True))."""

import json
import os
import re

import torch

from s3prl_adapters.errors import UserError


def _cfg_from_hf(hf: dict, normalize: bool) -> dict:
    if hf.get("model_type") not in (None, "wavlm"):
        raise UserError(f"config.json: model_type '{hf.get('model_type')}' is not a WavLM")
    for key in ("conv_dim", "conv_kernel", "conv_stride"):
        if not isinstance(hf.get(key), list) or not all(type(v) is int and v > 0 for v in hf[key]):
            raise UserError(f"config.json: '{key}' must be a list of positive ints, got {str(hf.get(key))[:60]}")
    layers = list(zip(hf["conv_dim"], hf["conv_kernel"], hf["conv_stride"]))
    return {
        "extractor_mode": "layer_norm" if hf.get("feat_extract_norm") == "layer" else "default",
        "encoder_layers": hf["num_hidden_layers"],
        "encoder_embed_dim": hf["hidden_size"],
        "encoder_ffn_embed_dim": hf["intermediate_size"],
        "encoder_attention_heads": hf["num_attention_heads"],
        "activation_fn": hf.get("hidden_act", "gelu"),
        "layer_norm_first": bool(hf.get("do_stable_layer_norm", False)),
        "conv_feature_layers": "[" + ", ".join(f"({d}, {k}, {s})" for d, k, s in layers) + "]",
        "conv_bias": bool(hf.get("conv_bias", False)),
        "conv_pos": hf["num_conv_pos_embeddings"],
        "conv_pos_groups": hf["num_conv_pos_embedding_groups"],
        "relative_position_embedding": True,
        "num_buckets": hf.get("num_buckets", 320),
        "max_distance": hf.get("max_bucket_distance", 800),
        "gru_rel_pos": True,
        "normalize": normalize,
        "dropout": hf.get("hidden_dropout", 0.1),
        "attention_dropout": hf.get("attention_dropout", 0.1),
        "activation_dropout": hf.get("activation_dropout", 0.0),
    }


_RENAMES = [  # HF name -> S3PRL name (regex on the key without a task-head prefix)
    (r"^masked_spec_embed$", "mask_emb"),
    (r"^feature_projection\.layer_norm\.", "layer_norm."),
    (r"^feature_projection\.projection\.", "post_extract_proj."),
    (r"^encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original0$", "encoder.pos_conv.0.weight_g"),
    (r"^encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original1$", "encoder.pos_conv.0.weight_v"),
    (r"^encoder\.pos_conv_embed\.conv\.(weight_g|weight_v|bias)$", r"encoder.pos_conv.0.\1"),
    (r"^encoder\.layers\.(\d+)\.attention\.gru_rel_pos_const$", r"encoder.layers.\1.self_attn.grep_a"),
    (r"^encoder\.layers\.(\d+)\.attention\.gru_rel_pos_linear\.", r"encoder.layers.\1.self_attn.grep_linear."),
    (r"^encoder\.layers\.(\d+)\.attention\.rel_attn_embed\.", r"encoder.layers.\1.self_attn.relative_attention_bias."),
    (r"^encoder\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
    (r"^encoder\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
    (r"^encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
    (r"^encoder\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
]


def _rename(key: str, extractor_mode: str) -> str:
    m = re.match(r"^feature_extractor\.conv_layers\.(\d+)\.(conv|layer_norm)\.(weight|bias)$", key)
    if m:
        i, part, p = m.groups()
        if part == "conv":
            return f"feature_extractor.conv_layers.{i}.0.{p}"
        return f"feature_extractor.conv_layers.{i}.2.{p}" if extractor_mode == "default" else f"feature_extractor.conv_layers.{i}.2.1.{p}"
    for pattern, repl in _RENAMES:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return key


def _read_weights(folder: str) -> dict:
    st = os.path.join(folder, "model.safetensors")
    if os.path.isfile(st):
        from safetensors.torch import load_file

        return load_file(st)
    binary = os.path.join(folder, "pytorch_model.bin")
    if os.path.isfile(binary):
        return torch.load(binary, map_location="cpu", weights_only=True)
    raise UserError(f"{folder}: no model.safetensors or pytorch_model.bin next to config.json")


def _waveform_normalisation(folder: str, hf: dict) -> bool:
    """Whether the model expects zero-mean unit-variance waveforms (S3PRL's `cfg.normalize`).

    transformers keeps this outside config.json, as `do_normalize` of the folder's
    preprocessor_config.json (the Large checkpoints normalise, Base+ does not). Without
    that file: the convention the released models follow, normalised exactly when the CNN has a
    LayerNorm in every block (`feat_extract_norm: layer`, the Large models)."""
    path = os.path.join(folder, "preprocessor_config.json")
    if os.path.isfile(path):
        with open(path) as f:
            value = json.load(f).get("do_normalize")
        if value is not None:
            if not isinstance(value, bool):
                raise UserError(f"{path}: 'do_normalize' must be true or false, got {value!r}")
            return value
    return hf.get("feat_extract_norm") == "layer"


def convert_hf_folder(folder: str) -> dict:
    """The S3PRL `{'cfg', 'model'}` dict for a transformers WavLM folder (task heads are dropped)."""
    config = os.path.join(folder, "config.json")
    if not os.path.isfile(config):
        raise UserError(f"-k {folder}: a folder, but no config.json (not a transformers WavLM folder)")
    with open(config) as f:
        hf = json.load(f)
    cfg = _cfg_from_hf(hf, _waveform_normalisation(folder, hf))
    state = {}
    for key, value in _read_weights(folder).items():
        key = re.sub(r"^wavlm\.", "", key)
        if key.startswith(("lm_head", "projector", "classifier", "feature_extractor._", "adapter")):
            continue
        state[_rename(key, cfg["extractor_mode"])] = value
    return {"cfg": cfg, "model": state}

"""The adapter-augmented WavLM as one S3PRL upstream expert: forward(wavs) -> {"hidden_states": [...]}.

The backbone is S3PRL's own `WavLM` (passed in, frozen). E-adapters are attached inside it by
`surgery.attach_e_adapters`; L-adapters map each encoder layer's output to `l_adapter_dim`, and
those outputs are returned as `hidden_states`, so S3PRL's Featurizer performs the method's
softmax-weighted sum with its own weights. Methods without L-adapters return the same 13 states
as stock `wavlm_local` (input of layer 0, outputs of layers 0..L-2, encoder output).

The module's `state_dict` holds only what trains, so S3PRL's checkpoints stay adapter-sized;
`load_state_dict` accepts exactly that set and names the culprit when it does not fit."""

import math
import sys
from contextlib import nullcontext
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from s3prl_adapters.method.backbone import conv_layers
from s3prl_adapters.method.config import AdapterConfig
from s3prl_adapters.method.prefix import encoder_from_prefix, prefix_alone
from s3prl_adapters.errors import UserError
from s3prl_adapters.method.attach import (attach_e_adapters, build_l_adapters, checkpoint_layer_activations,
                                          layer_norm_names)


class BackboneStates:
    """Runs S3PRL's WavLM as S3PRL's own WavLM expert does (optional per-utterance waveform
    normalisation `cfg.normalize`, padding mask, `extract_features(mask=False)`) and returns the
    L+1 states stock `wavlm_local` returns, each (B, T, C): the input of every encoder layer, then the
    encoder output (the top layer's output; for pre-LN backbones such as Large, after the encoder's
    final LayerNorm). A plain object, not a module: it only hooks the layers of the WavLM it is given."""

    def __init__(self, wavlm: nn.Module):
        self.wavlm = wavlm
        self._captured: List[torch.Tensor] = []
        for layer in wavlm.encoder.layers:
            layer.register_forward_pre_hook(lambda m, args: self._captured.append(args[0]))
        self.prefix_store = None
        """Where the frozen prefix comes from when set (the bridge's prefix cache): an object with
        rows(keys, compute) -> one (T, C) row per utterance, which calls compute(i) for the rows it
        does not hold; see method/prefix.py."""
        self.prefix_alone = False
        """By default, compute every utterance's prefix alone, then the encoder on the padded batch (exact
        evaluation in batches: each utterance's states as a batch of one gives them; method/prefix.py);
        a call's `alone` argument decides for that call."""

    def __call__(self, wavs: List[torch.Tensor], grad: bool = True, alone: Optional[bool] = None) -> List[torch.Tensor]:
        alone = self.prefix_alone if alone is None else alone
        keys = wavs
        if self.wavlm.cfg.normalize:
            wavs = [F.layer_norm(wav, wav.shape) for wav in wavs]
        self._captured = []
        with nullcontext() if grad else torch.no_grad():
            if self.prefix_store is not None:  # the encoder starts from each utterance's stored prefix
                rows = self.prefix_store.rows(keys, lambda i: prefix_alone(self.wavlm, wavs[i]))
                encoder_output = encoder_from_prefix(self.wavlm, [r.to(wavs[0].device) for r in rows])
            elif alone and len(wavs) > 1:
                encoder_output = encoder_from_prefix(self.wavlm, [prefix_alone(self.wavlm, wav) for wav in wavs])
            else:
                encoder_output = self._full_pass(wavs)
        layer_inputs = [x.transpose(0, 1) for x in self._captured]  # (T,B,C) -> (B,T,C)
        self._captured = []
        return layer_inputs + [encoder_output]

    def _full_pass(self, wavs: List[torch.Tensor]) -> torch.Tensor:
        device = wavs[0].device
        lengths = torch.LongTensor([len(wav) for wav in wavs]).to(device)
        padding_mask = ~torch.lt(torch.arange(max(lengths)).unsqueeze(0).to(device), lengths.unsqueeze(1))
        encoder_output, _ = self.wavlm.extract_features(pad_sequence(wavs, batch_first=True), padding_mask=padding_mask,
                                                        mask=False)
        return encoder_output


class AdapterWavLMExpert(nn.Module):
    def __init__(self, wavlm: nn.Module, adapter_config: AdapterConfig):
        super().__init__()
        self.model = wavlm
        # As S3PRL's WavLM expert: the CNN never gets gradients, and LayerDrop must be 0 so the
        # Featurizer always sees the same number of states.
        self.model.feature_grad_mult = 0.0
        self.model.encoder.layerdrop = 0.0

        num_layers = len(wavlm.encoder.layers)
        dim = wavlm.cfg.encoder_embed_dim
        self.adapter_config = cfg = adapter_config.resolved(num_layers)

        for p in self.model.parameters():
            p.requires_grad_(False)
        self.e_adapter_names = sorted(attach_e_adapters(self.model, cfg))
        if cfg.has_lora:
            self._attach_lora(cfg)
        if cfg.train_layer_norms:
            for name in layer_norm_names(self.model):
                self.model.get_submodule(name).requires_grad_(True)
        self.l_adapters = build_l_adapters(dim, cfg)

        self._trainable_names = [n for n, p in self.named_parameters() if p.requires_grad]
        # Nothing inside the backbone trains (L-only with frozen LNs): run all of it without
        # autograd, so backward stops at the hidden states the L-adapters read.
        self._backbone_trains = any(p.requires_grad for p in self.model.parameters())
        if cfg.checkpoint_activations and self._backbone_trains:
            mode = cfg.checkpoint_activations
            checkpoint_layer_activations(self.model, mode if isinstance(mode, str) else "full")

        self.state_source: Optional[Callable] = None
        """Where the L-adapters' inputs come from: None = the backbone, or f(wavs, compute) -> states
        that calls `compute(wavs)` for what it does not have (the bridge's feature cache)."""
        self._states = BackboneStates(self.model)
        self.exact_evaluation = True
        """In eval mode (dev/test passes) run each utterance's CNN alone and the encoder on the padded batch
        with its mask: a batch gives every utterance the states a batch of one gives it (WavLM Base's
        first CNN layer normalises over the padded time axis). The runner sets it from the downstream
        config's `runner.exact_evaluation`; False is S3PRL's padded pass."""

        if cfg.autocast != "none":
            self._prepare_for_autocast()

        self._downsample_rate = math.prod(stride for _, _, stride in conv_layers(wavlm.cfg))

    def _attach_lora(self, cfg: AdapterConfig) -> None:
        from s3prl_adapters.method.lora import attach_lora, matching_rank, per_rank_count, proposed_count

        target = proposed_count(self.model, cfg)
        if cfg.lora_rank is None:
            cfg.lora_rank = matching_rank(self.model, cfg)
        attach_lora(self.model, cfg)
        print(f"[s3prl-adapters] wavlm_lora: rank {cfg.lora_rank} on {'q, v, fc1, fc2' if cfg.lora_ffn else 'q, v'} "
              f"of {len(self.model.encoder.layers)} layers: {cfg.lora_rank * per_rank_count(self.model, cfg):,} "
              f"trainable, against {target:,} for the proposed method with these sizes", file=sys.stderr)

    def _prepare_for_autocast(self) -> None:
        """Two measured fixes for bf16 autocast on CPU (torch 2.8, Base+ shape, 1 thread):
        - layer 0 receives a transposed (T, B, C) view; a reduced-precision linear on it falls back to
          a bmm over a weight copied T times (0.7 s of a 1.1 s encoder pass), so hand every layer
          a contiguous input (a no-op for the others);
        - the CNN feature extractor gets slower, not faster, in bf16 (0.90 vs 0.82 s), so it runs in
          float32 (nothing in it trains)."""
        for layer in self.model.encoder.layers:
            layer.register_forward_pre_hook(lambda m, args: (args[0].contiguous(),) + tuple(args[1:]))
        extractor = self.model.feature_extractor
        run_extractor = type(extractor).forward.__get__(extractor)

        def forward(x, *args, **kwargs):
            with torch.autocast(x.device.type, enabled=False):
                return run_extractor(x.float(), *args, **kwargs)

        extractor.forward = forward

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.adapter_config.backbone_dropout:
            self.model.eval()  # adapters inside have no dropout; LayerNorms behave the same
        return self

    # ---- S3PRL upstream interface -------------------------------------------------------------
    def get_downsample_rates(self, key: str) -> int:
        return self._downsample_rate

    def backbone_hidden_states(self, wavs: List[torch.Tensor], alone: bool = False) -> List[torch.Tensor]:
        """The L+1 states stock `wavlm_local` returns for the padded batch (see BackboneStates), with autograd
        only where something inside the backbone trains; `alone`: each utterance's as it is alone."""
        return self._states(wavs, grad=self._backbone_trains, alone=alone)

    @property
    def _alone(self) -> bool:
        """What forward computes: in eval mode each utterance as it is alone (exact_evaluation)."""
        return not self.training and self.exact_evaluation

    def forward(self, wavs: List[torch.Tensor]) -> Dict[str, List[torch.Tensor]]:
        # autocast speeds up training; dev/test passes (S3PRL evaluates in eval mode) run in float32, as
        # `predict` does, so a run's recorded answers are the ones its exported set gives
        if self.adapter_config.autocast == "none" or not self.training:
            hidden_states = self._hidden_states(wavs)
        else:
            with torch.autocast(wavs[0].device.type, dtype=getattr(torch, self.adapter_config.autocast)):
                hidden_states = self._hidden_states(wavs)
            hidden_states = [h.float() for h in hidden_states]
        return {"hidden_states": hidden_states, "last_hidden_state": hidden_states[-1]}

    def use_prefix_store(self, store) -> None:
        """Take the backbone's frozen prefix from `store` (see BackboneStates.prefix_store) when it has it."""
        self._states.prefix_store = store

    @property
    def backbone_is_frozen_and_deterministic(self) -> bool:
        """Nothing inside the backbone trains and its dropout is off, so the states the L-adapters read
        depend on the waveform alone (what a cache of them needs)."""
        return bool(self.l_adapters) and not self._backbone_trains and not self.adapter_config.backbone_dropout

    def _l_adapter_inputs(self, wavs: List[torch.Tensor]) -> List[torch.Tensor]:
        """Layer i's output as the next layer (or, for the top layer, the head) sees it: state i + 1."""
        states = self.backbone_hidden_states(wavs, alone=self._alone)
        return [states[i + 1] for i in self.adapter_config.l_adapter_layers]

    def _hidden_states(self, wavs: List[torch.Tensor]) -> List[torch.Tensor]:
        if self.l_adapters and self.adapter_config.hidden_states == "method":
            if self.state_source is not None:
                inputs = self.state_source(wavs, self._l_adapter_inputs)
            else:
                inputs = self._l_adapter_inputs(wavs)
            layers = self.adapter_config.l_adapter_layers
            if self.adapter_config.adapters_in_float32 and torch.is_autocast_enabled(inputs[0].device.type):
                with torch.autocast(inputs[0].device.type, enabled=False):
                    return [self.l_adapters[str(i)](h.float()) for i, h in zip(layers, inputs)]
            hidden_states = [self.l_adapters[str(i)](h) for i, h in zip(layers, inputs)]
        else:
            hidden_states = self.backbone_hidden_states(wavs, alone=self._alone)
        return hidden_states

    # ---- adapter-only checkpoints -------------------------------------------------------------
    def trainable_parameter_names(self) -> List[str]:
        return list(self._trainable_names)

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        """Only the parameters that train: the frozen backbone comes back from `-k`."""
        full = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        keep = {prefix + n for n in self._trainable_names}
        for key in [k for k in full if k.startswith(prefix) and k not in keep]:
            del full[key]
        return full

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load an adapter-only state; a full stock-upstream state (from `-f`) loads too."""
        missing = sorted(set(self._trainable_names) - set(state_dict))
        if missing and strict:
            unexpected = sorted(set(state_dict) - set(dict(super().state_dict())))
            raise UserError(
                f"adapter checkpoint does not match upstream method '{self.adapter_config.method}': "
                f"missing {missing[:3]}{'...' if len(missing) > 3 else ''} ({len(missing)} in all)"
                + (f", unexpected {unexpected[:3]}" if unexpected else "")
                + "; was it trained with another method or adapter config (-g)?"
            )
        full = dict(super().state_dict())
        for key, value in state_dict.items():
            if key not in full:
                if strict:
                    raise UserError(
                        f"adapter checkpoint has '{key}', which upstream method '{self.adapter_config.method}' "
                        f"does not have; was it trained with another method or adapter config (-g)?"
                    )
                continue
            if tuple(value.shape) != tuple(full[key].shape):
                raise UserError(
                    f"adapter checkpoint does not fit this backbone: '{key}' is {tuple(value.shape)} in the "
                    f"checkpoint but {tuple(full[key].shape)} here (backbone {len(self.model.encoder.layers)} layers x "
                    f"{self.model.cfg.encoder_embed_dim}); use the -k backbone it was trained on"
                )
        return super().load_state_dict(state_dict, strict=False, assign=assign)

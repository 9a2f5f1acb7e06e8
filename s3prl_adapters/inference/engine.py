"""One frozen WavLM answering many tasks: `MultiTaskWavLM(backbone, [adapter sets]).predict(wavs)`.

The backbone is loaded once, whatever the number of sets. Sets that do not change the backbone
(L-only, frozen weighted sum) share one backbone pass per batch and per audio preparation (the ASV
recipe trims silence and lowers the gain before its upstream, so ASV sets get a pass on that
input). Sets with E-adapters or trained layer LayerNorms get a pass of their own, with their
adapters switched into the one backbone and switched out after it, which leaves the backbone
bit-identical; no second copy of it is made. A LoRA set gets a pass of its own on a copy of the
backbone with its LoRA tensors applied by PEFT (its update lives inside the attention weights,
read as W + B·A·s, exactly as in training). A stock fine-tuned set (`wavlm_local -f`) carries a
whole WavLM of its own: that is the cost the method avoids, and it is paid here too.

Inference runs in float32 under no_grad, whatever autocast a set was trained with."""

from contextlib import contextmanager
from typing import Dict, List, Sequence, Union

import torch
from torch import nn

from s3prl_adapters.errors import UserError
from s3prl_adapters.inference.adapter_set import AdapterSet
from s3prl_adapters.inference.audio import apply_effects
from s3prl_adapters.method.attach import build_e_adapters, build_l_adapters, install_e_adapters, remove_e_adapters
from s3prl_adapters.method.backbone import backbone_fingerprint, conv_layers, describe_fingerprint, load_wavlm
from s3prl_adapters.method.config import AdapterConfig
from s3prl_adapters.method.expert import BackboneStates
from s3prl_adapters.method.prefix import own_frames


class _StateShapes(nn.Module):
    """Stands in for an upstream while S3PRL's Featurizer probes it: states of the right number and width."""

    def __init__(self, count: int, width: int, rate: int):
        super().__init__()
        self.count, self.width, self.rate = count, width, rate

    def forward(self, wavs):
        states = [torch.zeros(len(wavs), round(max(len(w) for w in wavs) / self.rate), self.width)] * self.count
        return {"hidden_states": states, "last_hidden_state": states[-1]}

    def get_downsample_rates(self, key):
        return self.rate


def _featurizer(adapter_set: AdapterSet, count: int, width: int, rate: int):
    """S3PRL's own Featurizer with the run's selection and weights (its probe output goes nowhere)."""
    import contextlib
    import io

    from s3prl.upstream.interfaces import Featurizer

    f = adapter_set.featurizer
    with contextlib.redirect_stderr(io.StringIO()):
        featurizer = Featurizer(_StateShapes(count, width, rate), feature_selection=f["feature_selection"],
                                upstream_device="cpu", layer_selection=f["layer_selection"], normalize=f["normalize"])
    if f.get("weights") is not None:
        featurizer.load_state_dict({"weights": f["weights"]})
    return featurizer.eval()


class _BoundSet:
    """An adapter set's modules, bound to one backbone: adapters, Featurizer, head."""

    def __init__(self, adapter_set: AdapterSet, backbone: nn.Module, device: str):
        self.set, self.spec = adapter_set, adapter_set.task_spec
        self.conv_layers = conv_layers(backbone.cfg)
        num_layers, dim = len(backbone.encoder.layers), backbone.cfg.encoder_embed_dim
        rate = adapter_set.head["upstream_rate"]
        state = dict(adapter_set.upstream_state)
        self.l_adapters, self.e_adapters, self.layer_norms, self.own_states = None, {}, {}, None
        cfg = AdapterConfig(**adapter_set.adapter_config) if adapter_set.adapter_config else None
        if cfg is not None and cfg.has_lora:  # its update lives inside the attention weights: a backbone of its own
            from s3prl_adapters.method.lora import attach_lora

            own = _copy_of(backbone)
            attach_lora(own, cfg)  # PEFT, as the run trained it
            tensors = _take(state, "model.")
            unknown = sorted(set(tensors) - set(own.state_dict()))
            if unknown:
                raise UserError(f"adapter set {adapter_set.name}: LoRA tensors its backbone does not have: {unknown[:3]}")
            own.load_state_dict(tensors, strict=False)
            _freeze(own)
            self.own_states = _exact_states(own.to(device))
        elif cfg is not None:
            if cfg.l_adapter_layers:
                self.l_adapters = build_l_adapters(dim, cfg)
                self.l_adapters.load_state_dict(_take(state, "l_adapters."))
            self.e_adapters = build_e_adapters(dim, num_layers, cfg)
            for site, adapter in self.e_adapters.items():
                adapter.load_state_dict(_take(state, f"model.{site}.e_adapter."))
            self.layer_norms = {name[len("model."):]: _take_one(state, name) for name in sorted(state)
                                if name.startswith("model.") and "layer_norm" in name}
        elif adapter_set.finetuned:  # a whole fine-tuned WavLM: its own backbone
            own = _copy_of(backbone, _take(state, "model."))
            _freeze(own)
            self.own_states = _exact_states(own.to(device))
        if state:
            raise UserError(f"adapter set {adapter_set.name}: tensors its method does not have: {sorted(state)[:3]}")
        count = len(cfg.l_adapter_layers) if self.l_adapters is not None else num_layers + 1
        width = cfg.l_adapter_dim if self.l_adapters is not None else dim
        self.featurizer = _featurizer(adapter_set, count, width, rate).to(device)
        self.head = self.spec.build_head(adapter_set.head["upstream_dim"], rate, adapter_set.head["modelrc"],
                                         adapter_set.head["facts"])
        self.head.load_state_dict(adapter_set.head["state"])
        self.head.eval().to(device)
        if self.spec.name == "sv_voxceleb1":  # each file's statistics over its own frames, as alone
            from s3prl_adapters.bridge.compat import sv_pooling_counts_a_padded_frame

            sv_pooling_counts_a_padded_frame(self.head)
        for module in [self.l_adapters, *self.e_adapters.values()]:
            if module is not None:
                module.eval().to(device)
        self.layer_norms = {k: v.to(device) for k, v in self.layer_norms.items()}

    @property
    def shares_the_pass(self) -> bool:
        return not self.e_adapters and not self.layer_norms and self.own_states is None

    @contextmanager
    def switched_into(self, backbone: nn.Module):
        """The set's E-adapters and LayerNorm weights in the backbone, and out again (exactly)."""
        install_e_adapters(backbone, self.e_adapters)
        originals = {}
        with torch.no_grad():
            for name, value in self.layer_norms.items():
                parameter = backbone.get_parameter(name)
                originals[name] = parameter.detach().clone()
                parameter.copy_(value)
        try:
            yield
        finally:
            remove_e_adapters(backbone)
            with torch.no_grad():
                for name, value in originals.items():
                    backbone.get_parameter(name).copy_(value)

    def answers(self, wavs: List[torch.Tensor], states: List[torch.Tensor]) -> List[dict]:
        if self.l_adapters is not None:
            layers = self.set.adapter_config["l_adapter_layers"]
            states = [self.l_adapters[str(i)](states[i + 1]) for i in layers]
        features = self.featurizer(wavs, {"hidden_states": states, "last_hidden_state": states[-1]})
        features = own_frames(features, wavs, self.conv_layers)  # each file's frames as it has them alone
        return self.spec.answer_audio(self.head, features, self.set.head["facts"], wavs)


def _exact_states(backbone: nn.Module) -> BackboneStates:
    """States of a batch as each utterance gets them alone: its CNN alone, the encoder batched with its mask."""
    states = BackboneStates(backbone)
    states.prefix_alone = True
    return states


def _copy_of(backbone: nn.Module, weights: dict = None) -> nn.Module:
    """A WavLM of the same shape as `backbone`, with `weights` (default: the backbone's own)."""
    from s3prl.upstream.wavlm.WavLM import WavLM, WavLMConfig

    own = WavLM(WavLMConfig(dict(backbone.cfg.__dict__)))
    own.load_state_dict(backbone.state_dict() if weights is None else weights)
    return own


def _take(state: dict, prefix: str) -> dict:
    taken = {k[len(prefix):]: state.pop(k) for k in [k for k in state if k.startswith(prefix)]}
    if not taken:
        raise UserError(f"adapter set: no tensors under '{prefix}' (exported from another method?)")
    return taken


def _take_one(state: dict, name: str) -> torch.Tensor:
    return state.pop(name)


def _freeze(model: nn.Module) -> None:
    model.eval()
    model.feature_grad_mult = 0.0
    model.encoder.layerdrop = 0.0
    for p in model.parameters():
        p.requires_grad_(False)


class MultiTaskWavLM:
    """One backbone, any number of exported adapter sets.

        sets = [AdapterSet.load(p) for p in ("ic.adapter", "er.adapter")]
        model = MultiTaskWavLM("WavLM-Base+.pt", sets, device="cuda")
        model.predict([wav])  # 16 kHz mono float tensors -> [{"ic": {...}, "er": {...}}]
    """

    def __init__(self, backbone: Union[str, nn.Module], sets: Sequence[AdapterSet], device: str = "cpu"):
        self.backbone = load_wavlm(backbone) if isinstance(backbone, str) else backbone
        self.device = device
        fingerprint = backbone_fingerprint(self.backbone)
        names = set()
        for adapter_set in sets:
            if adapter_set.backbone != fingerprint:
                raise UserError(f"adapter set {adapter_set.name} was trained on the backbone "
                                f"{describe_fingerprint(adapter_set.backbone)}, not on this one "
                                f"({describe_fingerprint(fingerprint)}): pass the backbone it was trained on")
            if adapter_set.name in names:
                raise UserError(f"two adapter sets are named {adapter_set.name}: rename one file")
            names.add(adapter_set.name)
        _freeze(self.backbone)
        self.backbone.to(device)
        self.states = _exact_states(self.backbone)
        self.sets = [_BoundSet(s, self.backbone, device) for s in sets]

    def _prepare(self, wavs: List[torch.Tensor], effects, whole_frames=None) -> List[torch.Tensor]:
        prepared = [apply_effects(w.float().cpu(), effects) for w in wavs]
        if whole_frames:
            prepared = [w[:len(w) // whole_frames * whole_frames] for w in prepared]
        return [w.to(self.device) for w in prepared]

    @torch.no_grad()
    def predict(self, wavs: Sequence[torch.Tensor]) -> List[Dict[str, dict]]:
        """Every set's answer for every waveform (16 kHz mono float tensors): a dict per waveform,
        keyed by set name. A waveform too short for a set after its audio preparation gets an
        {'error': ...} answer from that set."""
        wavs = list(wavs)
        results: List[Dict[str, dict]] = [{} for _ in wavs]
        shared: Dict[tuple, List[_BoundSet]] = {}
        for bound in self.sets:
            if bound.shares_the_pass:
                shared.setdefault((tuple(bound.spec.audio_effects), bound.spec.whole_frames), []).append(bound)
        for (effects, _), group in shared.items():
            self._run(wavs, effects, group, results, lambda ready: self.states(ready, grad=False))
        for bound in self.sets:
            if bound.own_states is not None:
                self._run(wavs, bound.spec.audio_effects, [bound], results,
                          lambda ready, b=bound: b.own_states(ready, grad=False))
            elif not bound.shares_the_pass:
                def switched(ready, b=bound):
                    with b.switched_into(self.backbone):
                        return self.states(ready, grad=False)
                self._run(wavs, bound.spec.audio_effects, [bound], results, switched)
        return results

    def _run(self, wavs, effects, group: List[_BoundSet], results, states_of) -> None:
        prepared = self._prepare(wavs, effects, group[0].spec.whole_frames)  # a group shares both
        minimum = max(b.spec.min_frames for b in group) * 320 + 80  # CNN receptive field: 400 samples per frame
        ready = [i for i, w in enumerate(prepared) if len(w) >= minimum]
        for i in sorted(set(range(len(wavs))) - set(ready)):
            for bound in group:
                results[i][bound.set.name] = {"error": f"{len(prepared[i]) / 16000:.2f} s of audio after the "
                                                       f"{bound.spec.name} recipe's preparation: too short"}
        if not ready:
            return
        batch = [prepared[i] for i in ready]
        states = states_of(batch)
        for bound in group:
            for i, answer in zip(ready, bound.answers(batch, states)):
                results[i][bound.set.name] = answer

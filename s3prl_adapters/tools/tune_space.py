"""What `s3prl-adapters tune` searches for one upstream: its learning-rate groups and its backbone dropout.

A space maps each setting to a list (the grid it is searched over), a number or boolean (fixed), or
the name of another group (the same rate: a tie). Groups it does not name keep the config's rate:
by default the head's, so every method's head trains at the same rate. The default space is the
paper's (Otake et al.: each non-head group over {1e-3, 5e-4, 1e-4, 5e-5, 1e-5}; the proposed
method's LayerNorms at its E-adapter rate and its layer weights at its L-adapter rate; L-only's
LayerNorms at its L rate), plus `backbone_dropout: [true, false]` for every method whose backbone
can run in training mode, so no method is held to a dropout setting nobody chose.

A `--space` YAML has the same shape, one section per upstream (`wavlm_local -f` for fine-tuning):

    wavlm_ladapter:
      l_adapter: [1.0e-3, 1.0e-4]
      e_adapter: [1.0e-4, 1.0e-5]
      layer_norm: e_adapter
      featurizer: l_adapter
      backbone_dropout: false
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Union

import yaml

from s3prl_adapters.errors import UserError

PAPER_GRID = (1e-3, 5e-4, 1e-4, 5e-5, 1e-5)
"""The non-head learning rates the paper searched on dev for every method."""

DROPOUT = "backbone_dropout"

Value = Union[float, bool, str, List]


def space_key(upstream: str, finetune: bool) -> str:
    """A space's section name: the upstream, with ' -f' for a fine-tuned stock upstream."""
    return f"{upstream} -f" if finetune else upstream


@dataclass
class Trainee:
    """What one run of `-u upstream [-f]` trains, as far as rates are concerned."""

    upstream: str
    finetune: bool
    groups: List[str]
    """The learning-rate groups whose rate a run can be given (head first)."""
    grouped: bool
    """Rates go to `adapter_optimizer.<upstream>` (else: S3PRL's one rate, `optimizer.lr`, for everything)."""
    has_dropout: bool
    """Its backbone can run with its dropout on while training."""

    def configured_rates(self, config: dict) -> Dict[str, float]:
        """Every group's rate as the downstream config gives it."""
        from s3prl_adapters.bridge.optimizer_groups import GROUPS, STOCK_GROUPS, group_learning_rates

        if not self.grouped:
            return {"head": float(config["optimizer"]["lr"])}
        return group_learning_rates(config, self.upstream, "l_adapter" in self.groups,
                                    STOCK_GROUPS if "encoder" in self.groups else GROUPS)

    @classmethod
    def of(cls, upstream: str, finetune: bool, adapter_yaml: Optional[str]) -> "Trainee":
        from s3prl_adapters.method.config import METHODS, load_adapter_config

        if upstream in METHODS:
            cfg = load_adapter_config(METHODS[upstream], adapter_yaml)
            trains_layer_norms = cfg.train_layer_norms if cfg.train_layer_norms is not None else \
                cfg.method not in ("l_only", "lora")
            groups = ["head", "featurizer"] + (["l_adapter"] if cfg.has_l_adapters else []) + (
                ["e_adapter"] if cfg.has_e_adapters else []) + (["lora"] if cfg.has_lora else []) + (
                ["layer_norm"] if trains_layer_norms else [])
            return cls(upstream, finetune, groups, grouped=True, has_dropout=True)
        if finetune:  # stock upstream with -f: the grouped optimizer of adapter_optimizer.<upstream>
            return cls(upstream, True, ["head", "featurizer", "encoder"], grouped=True, has_dropout=True)
        # frozen stock upstream: S3PRL's one rate for the head and the Featurizer; the backbone in eval mode
        return cls(upstream, False, ["head"], grouped=False, has_dropout=False)


def default_space(trainee: Trainee) -> Dict[str, Value]:
    """The paper's search for this upstream (module docstring)."""
    grid = list(PAPER_GRID)
    g = set(trainee.groups)
    space: Dict[str, Value] = {}
    if not trainee.grouped:
        return space  # the frozen weighted sum: nothing but the head, at the config's rate
    main = next(name for name in ("l_adapter", "e_adapter", "lora", "encoder") if name in g)
    for name in ("l_adapter", "e_adapter", "lora", "encoder"):
        if name in g:
            space[name] = grid
    if "layer_norm" in g:
        space["layer_norm"] = "e_adapter" if "e_adapter" in g else main
    if "l_adapter" in g:
        space["featurizer"] = "l_adapter"
    space[DROPOUT] = [True, False]
    return space


class SearchSpace:
    """One upstream's space, checked against what the upstream trains."""

    def __init__(self, trainee: Trainee, entries: Dict[str, Value], source: str = "the default space"):
        self.trainee = trainee
        self.source = source
        self.entries = self._checked(dict(entries))

    @classmethod
    def load(cls, trainee: Trainee, path: Optional[str]) -> "SearchSpace":
        if not path:
            return cls(trainee, default_space(trainee))
        try:
            with open(path) as f:
                sections = yaml.safe_load(f) or {}
        except OSError as e:
            raise UserError(f"--space {path}: cannot read ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise UserError(f"--space {path}: not valid YAML ({str(e).splitlines()[0]})") from None
        key = space_key(trainee.upstream, trainee.finetune)
        if not isinstance(sections, dict) or key not in sections:
            found = sorted(sections) if isinstance(sections, dict) else []
            raise UserError(f"--space {path}: no section '{key}' (it has {found})")
        section = sections[key] or {}
        if not isinstance(section, dict):
            raise UserError(f"--space {path}: section '{key}' must map settings to values, got {section!r}")
        return cls(trainee, section, source=f"--space {path}")

    def _checked(self, entries: Dict[str, Value]) -> Dict[str, Value]:
        where = f"{self.source}, {space_key(self.trainee.upstream, self.trainee.finetune)}"
        valid = list(self.trainee.groups) + ([DROPOUT] if self.trainee.has_dropout else [])
        for name, value in entries.items():
            if name not in valid:
                raise UserError(f"{where}: '{name}' is not something this upstream trains; it has {valid}"
                                + ("" if self.trainee.grouped else " (S3PRL's one rate, optimizer.lr, serves the "
                                   "head and the Featurizer of a frozen stock upstream)"))
            values = value if isinstance(value, list) else [value]
            if isinstance(value, list) and not value:
                raise UserError(f"{where}: '{name}' has an empty list of values")
            if name == DROPOUT:
                if not all(isinstance(v, bool) for v in values):
                    raise UserError(f"{where}: '{DROPOUT}' takes true/false (or a list of them), got {value!r}")
                continue
            if isinstance(value, str):
                if value not in self.trainee.groups or value == name:
                    raise UserError(f"{where}: '{name}: {value}' ties it to a group this upstream does not have; "
                                    f"groups: {self.trainee.groups}")
                if isinstance(entries.get(value), str):
                    raise UserError(f"{where}: '{name}' is tied to '{value}', which is itself tied: tie to a group "
                                    f"with values")
                continue
            for v in values:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                    raise UserError(f"{where}: '{name}' must be learning rates in (0, 1), got {v!r}")
            entries[name] = [float(v) for v in value] if isinstance(value, list) else float(value)
        return entries

    # ---- what the sampler sees --------------------------------------------------------------------

    def grid(self) -> Dict[str, list]:
        """The searched settings and their values (what Optuna's GridSampler enumerates)."""
        return {name: list(value) for name, value in self.entries.items() if isinstance(value, list)}

    def size(self) -> int:
        n = 1
        for values in self.grid().values():
            n *= len(values)
        return n

    def suggest(self, trial) -> Dict[str, Value]:
        """One trial's settings: the searched ones from the sampler, then the fixed and the tied ones."""
        params: Dict[str, Value] = {}
        for name, values in self.grid().items():
            params[name] = trial.suggest_categorical(name, values)
        for name, value in self.entries.items():
            if not isinstance(value, (list, str)):
                params[name] = value
        for name, value in self.entries.items():
            if isinstance(value, str):
                params[name] = params[value] if value in params else None  # None: the config's rate
        return params

    # ---- what a run gets -----------------------------------------------------------------------------

    def overrides(self, params: Dict[str, Value], config: dict) -> List[str]:
        """`-o` entries giving a run these settings. Rates of groups the space leaves out stay the
        config's; a group tied to one the space leaves out gets that group's rate from the config."""
        up = self.trainee.upstream
        rates = {name: v for name, v in params.items() if name != DROPOUT}
        if any(v is None for v in rates.values()):
            configured = self.trainee.configured_rates(config)
            rates = {name: (configured[self.entries[name]] if v is None else v) for name, v in rates.items()}
        out = []
        for name, rate in rates.items():
            key = f"config.adapter_optimizer.{up}.{name}" if self.trainee.grouped else "config.optimizer.lr"
            out.append(f"{key}={float(rate)!r}")
        if DROPOUT in params:
            out.append(f"config.{DROPOUT}.{up}={bool(params[DROPOUT])!r}")
        return out

    def as_yaml(self) -> str:
        return yaml.safe_dump({space_key(self.trainee.upstream, self.trainee.finetune): self.entries},
                              sort_keys=False, default_flow_style=None)

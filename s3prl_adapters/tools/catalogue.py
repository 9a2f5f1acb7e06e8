"""The methods the paper's experiment compares, as run_benchmarks.sh runs them (the tasks are
s3prl_adapters.tasks). Read by the benchmark and the report alike."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    """Benchmark name (--methods), also the run folder's name."""
    title: str
    """Row title in the results table."""
    upstream: str
    """`-u` of run_downstream.py."""
    finetune: bool = False
    """Stock `-f`: the upstream's weights train too."""
    relative_cost: float = 1.0
    """Rough time of one run against the frozen weighted sum's (stand-ins, CPU): the benchmark starts
    the longest runs first, so the last ones to finish are short."""


METHODS = {m.name: m for m in [
    Method("finetune", "Fine-tuning (wavlm_local -f)", "wavlm_local", True, relative_cost=2.0),
    Method("frozen", "Frozen weighted sum (SUPERB)", "wavlm_local", relative_cost=1.0),
    Method("houlsby", "Conventional adapters", "wavlm_houlsby", relative_cost=1.5),
    Method("eadapter", "E-adapters only", "wavlm_eadapter", relative_cost=1.3),
    Method("ladapter_only", "L-adapters only", "wavlm_ladapter_only", relative_cost=0.9),
    Method("ladapter", "L+E adapters (proposed)", "wavlm_ladapter", relative_cost=1.4),
    Method("lora", "LoRA (PEFT, q/v)", "wavlm_lora", relative_cost=1.4),
]}

CACHEABLE = ("frozen", "ladapter_only")
"""Methods whose backbone is frozen and deterministic, so the feature cache applies to them."""

PREFIX_CACHEABLE = tuple(m.name for m in METHODS.values() if m.upstream != "wavlm_local")
"""Methods served by --prefix-cache: every adapter upstream (nothing before encoder layer 0 trains)."""

"""Optimizer registry: name -> how to build it, where it comes from, what state it keeps.

The mechanism only: the spec, registering and looking up entries, and resolving their
hparams. The entries are the catalogue modules beside this one (torch_optim, scale, library,
lowrank, matrix), each registering its own when the package imports it, plus any plugin
(`load_plugins`).

Each entry states its exact optimizer-state size as a function of the model, so a run can
check the measured bytes against the formula instead of trusting either alone.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from optbench.errors import OptbenchError, did_you_mean, one_line


Factory = Callable[[nn.Module, dict], torch.optim.Optimizer]  # (model, resolved hparams)
StateBytes = Callable[[nn.Module, dict], int]  # (model, resolved hparams) -> exact bytes


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    factory: Factory
    source: str
    paper: str
    policy: str  # which parameters get which treatment, for humans
    default_hparams: dict  # every accepted hparam with its default
    state_formula: str
    expected_state_bytes: StateBytes  # exact bytes after step 1
    version: str = "1"  # bump when the update rule or state changes: fingerprints include it
    aliases: tuple[str, ...] = ()
    devices: tuple[str, ...] = ("cpu", "cuda")
    # Paper defaults that differ by model size: {model name: {hparam: value}}, applied over
    # default_hparams and under a suite's own overrides.
    defaults_by_model: dict[str, dict] = field(default_factory=dict)
    # step() differentiates p.grad again (Hessian-vector products): backward(create_graph=True)
    needs_create_graph: bool = False
    # Whether the memory of its step, at each parameter it is at, is a line in the number of
    # decoder layers, so that an estimate may extrapolate it from shallow traces
    # (optbench.engine.trace.DepthEstimator). False where the step works on several layers'
    # tensors at once with a cap (MatrixSGD's batched transforms): its scratch grows with depth
    # until the cap, then stays, which no shallow trace shows. Traced at full depth then.
    step_extrapolates: bool = True
    # The code this entry is held against ("repository: file", the authors' where it exists),
    # what still differs from it, each with its reason, and where each default comes from
    # ({hparam: "repository: file"}). Descriptive, so not part of the cell fingerprint: a
    # change of the update itself bumps `version`.
    reference: str = ""
    deviations: tuple[str, ...] = ()
    default_sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.default_sources) - set(self.default_hparams)
        if unknown:
            raise ValueError(f"{self.name}: default_sources names no hparam: {sorted(unknown)}")


_SPECS: dict[str, OptimizerSpec] = {}
_ALIASES: dict[str, str] = {}


def register(spec: OptimizerSpec) -> None:
    """Adds an entry; `list_specs()` keeps registration order. A taken name or alias is an error."""
    for key in (spec.name, *spec.aliases):
        if key in _SPECS or key in _ALIASES:
            raise ValueError(f"optimizer name or alias '{key}' is already registered")
    _SPECS[spec.name] = spec
    _ALIASES.update({alias: spec.name for alias in spec.aliases})


def get_spec(name: str) -> OptimizerSpec:
    spec = _SPECS.get(_ALIASES.get(name, name))
    if spec is None:
        hint = did_you_mean(name, list(_SPECS))  # suggest canonical names only
        raise OptbenchError(f"unknown optimizer '{name}'{hint}; known: {', '.join(sorted(_SPECS))}")
    return spec


def list_specs() -> list[OptimizerSpec]:
    return list(_SPECS.values())


def unregister(name: str) -> OptimizerSpec:
    """Removes the entry `name` (or the one it is an alias of) with its aliases; returns it."""
    spec = get_spec(name)
    del _SPECS[spec.name]
    for alias in spec.aliases:
        del _ALIASES[alias]
    return spec


@contextmanager
def override(spec: OptimizerSpec) -> Iterator[None]:
    """Within the block, `spec` is the entry under its name (for tests).

    A new name is registered for the block only. A registered one is replaced in place, so it
    keeps its place in `list_specs()` and its aliases (which `spec` must repeat), and is
    restored after.
    """
    original = _SPECS.get(spec.name)
    if original is None:
        register(spec)
    elif original.aliases != spec.aliases:
        raise ValueError(f"an override of '{spec.name}' keeps its aliases {original.aliases}")
    else:
        _SPECS[spec.name] = spec
    try:
        yield
    finally:
        if original is None:
            unregister(spec.name)
        else:
            _SPECS[spec.name] = original


def resolve_hparams(name: str, overrides: dict, model: str | None = None) -> dict:
    """Defaults, then the paper's defaults for `model` (a size name), then `overrides`.

    Every value is checked against its default's type; an unknown key is an error.
    """
    spec = get_spec(name)
    accepted = spec.default_hparams
    resolved = dict(accepted)
    for key, value in {**spec.defaults_by_model.get(model or "", {}), **overrides}.items():
        if key not in accepted:
            hint = did_you_mean(str(key), list(accepted))
            raise OptbenchError(
                f"optimizer '{spec.name}' has no hparam '{key}'{hint}; "
                f"accepted: {', '.join(sorted(accepted))}"
            )
        resolved[key] = _coerce(spec.name, key, value, accepted[key])
        _in_range(spec.name, key, resolved[key])
    return resolved


def parse_choice(choice: str) -> tuple[str, dict]:
    """'adamw:fused=true,lr=0.01' -> ('adamw', {'fused': True, 'lr': 0.01}); values are YAML.

    The name is checked here; the hparams when they are resolved.
    """
    import yaml

    name, _, rest = choice.partition(":")
    hparams = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise OptbenchError(f"optimizer '{choice}': '{item}' is not key=value; "
                                "accepted: NAME or NAME:key=value,key=value")
        try:
            hparams[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise OptbenchError(f"optimizer '{choice}': value of '{key}' is not valid YAML") from None
    return get_spec(name.strip()).name, hparams


def build_optimizer(name: str, model: nn.Module, **hparams: Any) -> torch.optim.Optimizer:
    return get_spec(name).factory(model, resolve_hparams(name, hparams))


def expected_state_bytes(name: str, model: nn.Module, **hparams: Any) -> int:
    """The spec's exact state-size formula for this model and these hparams."""
    return get_spec(name).expected_state_bytes(model, resolve_hparams(name, hparams))


def _in_range(optimizer: str, key: str, value: Any) -> None:
    """What every optimizer's hparam of that name means: a learning rate, eps or weight decay is
    never negative, a beta lies in [0, 1), a momentum in [0, 1]. Refused here, not as a failed
    cell later."""
    where = f"optimizer '{optimizer}' hparam '{key}'"
    base = key.rsplit("_", 1)[-1] if key.startswith("adam") else key
    numbers = [v for v in (value if isinstance(value, tuple) else (value,))
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if base in ("lr", "eps", "weight_decay", "decay") or key.endswith(("_lr", "_eps")):
        if any(v < 0 for v in numbers):
            raise OptbenchError(f"{where}: {value!r} is negative; accepted: 0 or more")
    if base in ("betas", "beta1", "beta2") or key.endswith("_betas"):
        if any(not 0 <= v < 1 for v in numbers):
            raise OptbenchError(f"{where}: {value!r} is outside [0, 1); accepted: each at least "
                                "0 and below 1")
    if base == "momentum" and any(not 0 <= v <= 1 for v in numbers):
        raise OptbenchError(f"{where}: {value!r} is outside [0, 1]; accepted: 0..1")
    if isinstance(value, int) and not isinstance(value, bool):  # a count, a period, a switch
        low = 1 if key in COUNTS_FROM_ONE else -MAX_HPARAM_COUNT
        if not low <= value <= MAX_HPARAM_COUNT:
            raise OptbenchError(f"{where}: {value} is out of range; accepted: {low:,}.."
                                f"{MAX_HPARAM_COUNT:,}")


# Integer hparams that count something there must be at least one of: a projection's rank, the
# steps between two projections or preconditioner updates (0 would divide by zero), samples
# drawn. Other integers keep whatever meaning their library gives 0 or a negative value (Muon's
# ns_steps=0 is plain normalized momentum, SPAM's grad_accu_steps=0 clips from the start); all
# stay within +-10^9, which catches a typo such as 10^400.
COUNTS_FROM_ONE = frozenset({"rank", "update_proj_gap", "update_period", "precondition_frequency",
                             "num_samples"})
MAX_HPARAM_COUNT = 10**9


def _coerce(optimizer: str, key: str, value: Any, default: Any) -> Any:
    """Accept what YAML gives (lists for tuples, '1e-3' strings for floats); reject the rest."""
    where = f"optimizer '{optimizer}' hparam '{key}'"
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(default):
            raise OptbenchError(
                f"{where}: expected a list of {len(default)} numbers, got {value!r}"
            )
        return tuple(_coerce(optimizer, key, v, d) for v, d in zip(value, default))
    if isinstance(default, float):
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError, OverflowError):
            number = math.nan
        if not math.isfinite(number):
            raise OptbenchError(f"{where}: expected a finite number, got {one_line(repr(value), 60)}")
        return number
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise OptbenchError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise OptbenchError(f"{where}: expected an integer, got {value!r}")
        return value
    if isinstance(default, str) and not isinstance(value, str):
        raise OptbenchError(f"{where}: expected a string, got {value!r}")
    if default is None and not (value is None or isinstance(value, bool)):
        raise OptbenchError(f"{where}: expected true, false or null, got {value!r}")
    return value

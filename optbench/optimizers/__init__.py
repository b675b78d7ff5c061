"""Optimizer registry and the in-house optimizers. Importing this registers every entry."""

from optbench.optimizers.registry import (
    OptimizerSpec,
    build_optimizer,
    expected_state_bytes,
    get_spec,
    list_specs,
    parse_choice,
    register,
    resolve_hparams,
)
from optbench.optimizers.scale import Scale, build_scale, scale_param_groups, scale_roles

__all__ = [
    "OptimizerSpec",
    "Scale",
    "build_optimizer",
    "build_scale",
    "expected_state_bytes",
    "get_spec",
    "list_specs",
    "parse_choice",
    "register",
    "resolve_hparams",
    "scale_param_groups",
    "scale_roles",
]
from optbench.optimizers import library  # noqa: E402,F401  (registers entries)
from optbench.optimizers import lowrank  # noqa: E402,F401  (registers entries)
from optbench.optimizers import matrix  # noqa: E402,F401  (registers entries)

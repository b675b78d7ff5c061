"""Optimizer registry and its catalogue. Importing this registers every entry.

Mechanism: registry (specs, lookup, hparams), policy (param roles), state_formulas (byte rules
of the state formulas), kernels (pure tensor functions), common (closure convention).
Catalogue, in registration order, which is `list_specs()` order: torch_optim, scale, library,
lowrank (with apollo), matrix, canon (the 2025 benchmark canon), cautious.
"""

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
from optbench.optimizers import torch_optim  # noqa: F401  (registers adamw, sgd: first)
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
from optbench.optimizers import canon  # noqa: E402,F401  (registers entries)
from optbench.optimizers import cautious  # noqa: E402,F401  (registers entries)


def load_plugins() -> None:
    """Import the modules named in $OPTBENCH_PLUGINS (comma-separated), each of which calls
    `register` for its own optimizers. Every process imports this package, the CLI and each
    cell's worker alike, so a plugin's optimizers can run in a suite and be gated by `check`
    (docs/ci.md) without changing optbench. Importing a module twice is a no-op."""
    import importlib
    import os

    from optbench.errors import OptbenchError

    for name in filter(None, (n.strip() for n in os.environ.get("OPTBENCH_PLUGINS", "").split(","))):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise OptbenchError(f"OPTBENCH_PLUGINS: cannot import '{name}' ({exc})") from None
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # the plugin's own code failed, sys.exit() included
            raise OptbenchError(f"OPTBENCH_PLUGINS: importing '{name}' raised "
                                f"{type(exc).__name__}: {exc}") from None


load_plugins()

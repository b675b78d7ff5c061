"""Search spaces over an optimizer's hparams, expanded into trials: each trial is an ordinary
cell (its own fingerprint, resumable), labelled by what it sets (`adamw@lr=2x`).

A space maps hparams to values: a list (`weight_decay: [0, 0.1]`), or factors of the value the
cell would otherwise have, its per-model paper default or the suite's override (`lr: {factors:
[0.25, 0.5, 1, 2, 4]}`). `search.method: grid` runs their product; `quasi_random` draws
`search.trials` points, as AlgoPerf's budgeted search does, from a scrambled Sobol sequence
(`scipy.stats.qmc.Sobol`, seeded, so the same suite gives the same trials): factors are drawn
on a log scale between their smallest and largest, lists by index.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from optbench.errors import OptbenchError

SEARCH_METHODS = ("grid", "quasi_random")


@dataclass(frozen=True)
class Search:
    """How a suite's search spaces become trials."""

    method: str = "grid"  # grid | quasi_random
    trials: int = 8  # quasi_random: points drawn per optimizer
    seed: int = 0  # quasi_random: the Sobol scramble's seed
    space: dict[str, Any] = field(default_factory=dict)  # every optimizer's without a `sweep`

    def space_of(self, own: dict[str, Any] | None) -> dict[str, Any]:
        """An optimizer's search space: its own `sweep` (`sweep: {}` opts out of the suite's
        space, e.g. for an untuned baseline), else the suite's `search.space`."""
        return self.space if own is None else own


@dataclass(frozen=True)
class Dimension:
    """One hparam's searched values: factors of its base value, or the values themselves."""

    name: str
    values: tuple[Any, ...]
    factors: bool


def dimensions(space: dict[str, Any], where: str) -> list[Dimension]:
    """The space's dimensions in key order; bad ones are one-line errors naming `where`."""
    out = []
    for name, spec in space.items():
        key = f"{where}.{name}"
        if isinstance(spec, dict):
            if set(spec) != {"factors"}:
                raise OptbenchError(f"{key}: expected a list of values or {{factors: [...]}}; "
                                    f"got keys {', '.join(map(str, spec))}")
            values = _list(spec["factors"], f"{key}.factors")
            factors = [_positive_factor(f, f"{key}.factors[{i}]") for i, f in enumerate(values)]
            out.append(Dimension(name, tuple(factors), factors=True))
        else:
            out.append(Dimension(name, tuple(_list(spec, key)), factors=False))
    return out


def _positive_factor(value: Any, key: str) -> float:
    """A factor as a float: a positive, finite number ('1e-1' too, which YAML 1.1 reads as
    text); one line for anything else, a 400-digit integer included."""
    try:
        factor = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError, OverflowError):
        factor = None
    if factor is None or not 0 < factor < math.inf:
        raise OptbenchError(f"{key}: {value!r} is not a positive number")
    return factor


def _list(values: Any, key: str) -> list:
    if not isinstance(values, list) or not values:
        raise OptbenchError(f"{key}: expected a non-empty list")
    if len(set(map(repr, values))) != len(values):
        raise OptbenchError(f"{key}: a value is listed twice")
    return values


def trials(space: dict[str, Any], search: Search, where: str) -> list[dict[str, tuple[Any, bool]]]:
    """Each trial as {hparam: (value or factor, is_factor)}, in a stable order."""
    dims = dimensions(space, where)
    if not dims:
        return [{}]
    if search.method == "grid":
        points = itertools.product(*(d.values for d in dims))
    else:
        points = _quasi_random(dims, search)
    return [{d.name: (v, d.factors) for d, v in zip(dims, point)} for point in points]


def _quasi_random(dims: list[Dimension], search: Search) -> list[tuple]:
    import warnings

    from scipy.stats import qmc

    with warnings.catch_warnings():  # balance needs 2^k points; a budget is what it is
        warnings.filterwarnings("ignore", message=".*balance properties of Sobol")
        unit = qmc.Sobol(d=len(dims), scramble=True, seed=search.seed).random(search.trials)
    points = []
    for row in unit:
        point = []
        for d, u in zip(dims, row):
            if d.factors:
                lo, hi = math.log(min(d.values)), math.log(max(d.values))
                point.append(float(f"{math.exp(lo + u * (hi - lo)):.3g}"))
            else:
                point.append(d.values[min(int(u * len(d.values)), len(d.values) - 1)])
        points.append(tuple(point))
    return list(dict.fromkeys(points))  # a repeated point is one trial


def apply(trial: dict[str, tuple[Any, bool]], base: dict[str, Any]) -> dict[str, Any]:
    """The hparam overrides of a trial, factors applied to the cell's resolved `base` values."""
    out = {}
    for name, (value, is_factor) in trial.items():
        if is_factor:
            if isinstance(base.get(name), bool) or not isinstance(base.get(name), (int, float)):
                raise OptbenchError(f"hparam '{name}' is {base.get(name)!r}, not a number: "
                                    "factors scale a number; list its values instead")
            out[name] = base[name] * value
        else:
            out[name] = value
    return out


def label(display: str, trial: dict[str, tuple[Any, bool]]) -> str:
    """'adamw@lr=2x,weight_decay=0.1'; the display alone for an empty trial."""
    if not trial:
        return display
    parts = [f"{name}={value:g}x" if is_factor else f"{name}={_short(value)}"
             for name, (value, is_factor) in trial.items()]
    return f"{display}@{','.join(parts)}"


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)

"""`optbench fit`: the largest batch size (or sequence length) whose estimated peak fits.

The estimated peak never shrinks as the batch or the sequence grows, so the answer is found
by search over the estimator: from probes at 1 and 2, one past where their line crosses the
budget (peaks grow about linearly; at most 4x the largest fitting probe per step) until a
probe does not fit, then narrowing the bracket by interpolation with a bisection every other
probe, which keeps the worst case logarithmic. Forward+backward traces are shared by all optimizers of a fit.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Callable

from optbench.errors import OptbenchError
from optbench.engine.trace import MAX_LOGIT_ELEMENTS, Estimate, Estimator, Workload
from optbench.models import get_model_size

AXES = ("batch_size", "seq_len")
SEARCH_LIMIT = {"batch_size": 1 << 16, "seq_len": 1 << 20}
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(text: str) -> int:
    """'80GiB' / '80 GB' / '81920MiB' / '8e10' -> bytes (GB = 10^9, GiB = 2^30)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    nbytes = float(match.group(1)) * _UNITS[unit] if match and unit in _UNITS else math.nan
    if not 1 <= nbytes < 2**63:
        raise OptbenchError(
            f"--memory '{text}' is not a memory size; accepted: a positive number with a unit "
            f"B, KB, MB, GB, TB (powers of 10) or KiB, MiB, GiB, TiB (powers of 2), e.g. 80GiB"
        )
    return int(nbytes)


@dataclass
class FitResult:
    """One optimizer's answer: the largest value of `axis` that fits (0 when none does)."""

    label: str
    axis: str
    budget_bytes: int
    largest: int = 0
    fitting: Estimate | None = None  # the estimate at `largest`
    probes: dict[int, int] = field(default_factory=dict)  # axis value -> peak bytes
    limit_reached: bool = False  # `largest` is the search limit, not a real boundary
    note: str = ""
    error: str | None = None
    unsupported: bool = False  # the error is the strategy's refusal, not the trace's


def fit(estimator: Estimator, base: Workload, axis: str, budget: int, optimizer: str,
        hparams: dict | None = None, label: str | None = None) -> FitResult:
    """Largest `axis` value of `base` whose estimated peak with `optimizer` is <= budget."""
    result = FitResult(label or optimizer, axis, budget)
    estimates: dict[int, Estimate] = {}

    def peak_at(n: int) -> int:
        est = estimator.estimate(dataclasses.replace(base, **{axis: n}), optimizer, hparams, label)
        if est.error:
            raise _Untraceable(est.error, est.unsupported)
        estimates[n] = est
        return est.peak_bytes

    limit = min(SEARCH_LIMIT[axis], _traceable_limit(base, axis))
    try:
        result.largest, result.probes = largest_fitting(peak_at, budget, limit)
    except _Untraceable as exc:
        result.error, result.unsupported = exc.args
        return result
    result.fitting = estimates.get(result.largest)
    result.limit_reached = result.largest == limit
    positions = get_model_size(base.model).max_position_embeddings
    if axis == "seq_len" and result.largest > positions:
        result.note = f"beyond the model's {positions} positions"
    return result


def _traceable_limit(base: Workload, axis: str) -> int:
    """The largest value of `axis` whose logits stay within what a tensor can hold."""
    other = base.seq_len if axis == "batch_size" else base.batch_size
    return max(1, MAX_LOGIT_ELEMENTS // (other * get_model_size(base.model).vocab_size))


class _Untraceable(Exception):
    pass


def largest_fitting(peak_at: Callable[[int], int], budget: int,
                    limit: int) -> tuple[int, dict[int, int]]:
    """Largest n in [1, limit] with peak_at(n) <= budget, for a non-decreasing peak_at; 0 if
    even n = 1 does not fit. Also returns every probe made (n -> peak)."""
    probes: dict[int, int] = {}

    def fits(n: int) -> bool:
        if n not in probes:
            probes[n] = peak_at(n)
        return probes[n] <= budget

    if not fits(1):
        return 0, probes
    lo, hi = 1, None
    while hi is None:
        n = min(_extrapolate(lo, probes, budget), limit)
        if n == lo:
            return lo, probes  # the limit itself fits
        if fits(n):
            lo = n
        else:
            hi = n
    bisect = False
    while hi - lo > 1:
        n = (lo + hi) // 2 if bisect else _interpolate(lo, hi, probes, budget)
        bisect = not bisect
        if fits(n):
            lo = n
        else:
            hi = n
    return lo, probes


# How far one probe may reach past the largest that fits, as a multiple of it: a peak that is
# flat so far (the optimizer step's, before activations outgrow it) would aim far too high.
MAX_REACH = 4


def _extrapolate(lo: int, probes: dict[int, int], budget: int) -> int:
    """The next probe above `lo` (the largest that fits so far): one past where the line
    through the last two fitting probes crosses the budget, at least lo + 1 and at most
    MAX_REACH × lo; twice lo after the first probe or while the peak is flat. Peaks grow about linearly (activations), so this
    usually lands just past the answer, whose neighbour the bracket then finds."""
    below = sorted(n for n, peak in probes.items() if n < lo and peak <= budget)
    if not below:
        return 2 * lo
    prev = below[-1]
    rise = probes[lo] - probes[prev]
    if rise <= 0:  # flat so far (the optimizer step's peak): no slope to follow yet
        return 2 * lo
    crossing = lo + (budget - probes[lo]) * (lo - prev) // rise
    return min(max(crossing + 1, lo + 1), MAX_REACH * lo)


def _interpolate(lo: int, hi: int, probes: dict[int, int], budget: int) -> int:
    """Where the line through the bracket's two probes crosses the budget, inside (lo, hi)."""
    rise = probes[hi] - probes[lo]
    guess = lo + (budget - probes[lo]) * (hi - lo) // rise if rise > 0 else (lo + hi) // 2
    return min(max(guess, lo + 1), hi - 1)

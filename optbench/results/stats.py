"""Statistics over seeds and loss curves, for the tuning protocol (issue 13): mean, spread and a
95 % confidence interval of a metric over seeds; a t-test between two optimizers, read as
`better`, `worse` or `within noise` (paired over matched seeds, since seed k gives every
optimizer the same initial weights and batches; Welch's when the seeds differ); and
time-to-target on stored loss curves.

scipy does the statistics (`scipy.stats.ttest_1samp(...).confidence_interval`, `ttest_rel`,
`ttest_ind` with `equal_var=False`); what is optbench's own is only how a result is read, and it
is tested against hand-computed float64 values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

CONFIDENCE = 0.95
ALPHA = 0.05  # a difference is called only when the test's p-value is below this


@dataclass(frozen=True)
class SeedStats:
    """One metric over seeds. With one seed, std and the interval are NaN (nothing to say)."""

    n: int
    mean: float
    std: float  # sample standard deviation (ddof 1)
    ci_low: float
    ci_high: float


def summarize(values: Sequence[float]) -> SeedStats:
    """Mean, sample std and the t-based 95 % confidence interval of the mean over seeds."""
    from scipy import stats

    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        raise ValueError("no finite values to summarize")
    n, mean = len(xs), math.fsum(xs) / len(xs)
    if n == 1:
        return SeedStats(1, mean, math.nan, math.nan, math.nan)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    if std == 0:
        return SeedStats(n, mean, 0.0, mean, mean)
    interval = stats.ttest_1samp(xs, popmean=mean).confidence_interval(CONFIDENCE)
    return SeedStats(n, mean, std, float(interval.low), float(interval.high))


@dataclass(frozen=True)
class Verdict:
    """How optimizer A compares with B on one metric over seeds."""

    verdict: str  # better | worse | within noise | too few seeds
    p_value: float  # the test's two-sided p-value (NaN with too few seeds)
    difference: float  # mean(A) - mean(B), in the metric's unit
    test: str = "welch"  # welch | paired


VERDICTS = ("better", "worse", "within noise", "too few seeds")


def welch(a: Sequence[float], b: Sequence[float], higher_is_better: bool,
          alpha: float = ALPHA) -> Verdict:
    """Welch's t-test of A against B (unequal variances): `better` or `worse` when the two-sided
    p-value is below `alpha`, in the metric's direction; `within noise` otherwise; `too few
    seeds` when either side has fewer than two values."""
    from scipy import stats

    xa, xb = [float(v) for v in a], [float(v) for v in b]
    difference = (math.fsum(xa) / len(xa) - math.fsum(xb) / len(xb)) if xa and xb else math.nan
    if len(xa) < 2 or len(xb) < 2:
        return Verdict("too few seeds", math.nan, difference)
    if _constant(xa) and _constant(xb):  # no spread at all: any difference is exact
        verdict = "within noise" if difference == 0 else _direction(difference, higher_is_better)
        return Verdict(verdict, 0.0 if difference else 1.0, difference)
    p_value = float(stats.ttest_ind(xa, xb, equal_var=False).pvalue)
    if p_value >= alpha:
        return Verdict("within noise", p_value, difference)
    return Verdict(_direction(difference, higher_is_better), p_value, difference)


def paired(a: Sequence[float], b: Sequence[float], higher_is_better: bool,
           alpha: float = ALPHA) -> Verdict:
    """The paired t-test of A against B over matched seeds (`scipy.stats.ttest_rel`: a one-sample
    t-test of the differences a_k - b_k), read as `welch` reads its test."""
    from scipy import stats

    xa, xb = [float(v) for v in a], [float(v) for v in b]
    if len(xa) != len(xb):
        raise ValueError("a paired test needs one value of each side per seed")
    if len(xa) < 2:
        return Verdict("too few seeds", math.nan, math.fsum(xa) / len(xa) - math.fsum(xb) / len(xb)
                       if xa else math.nan, "paired")
    differences = [x - y for x, y in zip(xa, xb)]
    difference = math.fsum(differences) / len(differences)
    if _constant(differences):  # the same gap on every seed: exact
        verdict = "within noise" if difference == 0 else _direction(difference, higher_is_better)
        return Verdict(verdict, 0.0 if difference else 1.0, difference, "paired")
    p_value = float(stats.ttest_rel(xa, xb).pvalue)
    verdict = "within noise" if p_value >= alpha else _direction(difference, higher_is_better)
    return Verdict(verdict, p_value, difference, "paired")


def seed_test(a: dict[int, float], b: dict[int, float], higher_is_better: bool,
              alpha: float = ALPHA) -> Verdict:
    """A against B over seeds ({seed: value}). optbench's seed k gives every optimizer the same
    initial weights and the same batches, so when both sides ran the same seeds the runs are
    pairs and the paired test removes what the seed itself does to the loss; otherwise Welch's."""
    if set(a) == set(b) and len(a) >= 2:
        seeds = sorted(a)
        return paired([a[k] for k in seeds], [b[k] for k in seeds], higher_is_better, alpha)
    return welch(list(a.values()), list(b.values()), higher_is_better, alpha)


def _constant(xs: list[float]) -> bool:
    return max(xs) == min(xs)


def _direction(difference: float, higher_is_better: bool) -> str:
    return "better" if (difference > 0) == higher_is_better else "worse"


def smoothed(losses: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last `window` steps (fewer at the start): the smoothing of
    `final_train_loss`, so a curve's last value is its final loss."""
    out, total = [], 0.0
    for i, loss in enumerate(losses):
        total += loss
        if i >= window:
            total -= losses[i - window]
        out.append(total / min(i + 1, window))
    return out


def steps_to_target(steps: Sequence[int], losses: Sequence[float], target: float,
                    window: int) -> int | None:
    """The first step whose smoothed loss is at or below `target`; None when never."""
    for step, loss in zip(steps, smoothed(losses, window)):
        if loss <= target:
            return int(step)
    return None


@dataclass(frozen=True)
class TimeToTarget:
    """When an optimizer first reaches the baseline's final smoothed loss, and how much sooner."""

    target: float
    steps: int | None  # None: not reached
    tokens: float | None
    seconds: float | None  # steps x the median step time: an estimate, as stated in reports
    speedup: float | None  # baseline's steps / these steps


def time_to_target(steps: Sequence[int], losses: Sequence[float], baseline_losses: Sequence[float],
                   baseline_steps: Sequence[int], window: int, tokens_per_step: float,
                   step_ms: float | None) -> TimeToTarget:
    """Time-to-target against a baseline's curve: the target is the baseline's final smoothed
    loss, and the speedup is the steps the baseline needed over the steps this curve needs."""
    target = smoothed(baseline_losses, window)[-1]
    reached = steps_to_target(steps, losses, target, window)
    if reached is None:
        return TimeToTarget(target, None, None, None, None)
    base = steps_to_target(baseline_steps, baseline_losses, target, window)
    seconds = reached * step_ms / 1e3 if step_ms else None
    return TimeToTarget(target, reached, reached * tokens_per_step, seconds,
                        base / reached if base else None)

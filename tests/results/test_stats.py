"""Seed statistics, Welch and paired verdicts and time-to-target against hand-computed float64
values."""

from __future__ import annotations

import math

import pytest

from optbench.results import stats


def test_summary_is_mean_sample_std_and_the_t_interval():
    s = stats.summarize([1.0, 2.0, 3.0, 4.0])
    std = math.sqrt(5 / 3)  # squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, over n - 1 = 3
    half = 3.182446305284263 * std / 2  # t(0.975, 3 dof) x s / sqrt(4)
    assert s.n == 4 and s.mean == 2.5 and s.std == pytest.approx(std, rel=1e-12)
    assert (s.ci_low, s.ci_high) == pytest.approx((2.5 - half, 2.5 + half), rel=1e-9)


def test_one_seed_has_no_spread_and_a_constant_one_no_width():
    one = stats.summarize([5.0])
    assert one.n == 1 and one.mean == 5.0 and math.isnan(one.std) and math.isnan(one.ci_low)
    flat = stats.summarize([3.0, 3.0, 3.0])
    assert (flat.std, flat.ci_low, flat.ci_high) == (0.0, 3.0, 3.0)
    with pytest.raises(ValueError):
        stats.summarize([float("nan")])


def _welch_p_4dof(t: float) -> float:
    """Two-sided p-value of Student's t with 4 degrees of freedom, in closed form:
    P(|T| > t) = 1 - t (t^2 + 6) / (t^2 + 4)^(3/2)."""
    t = abs(t)
    return 1 - t * (t * t + 6) / (t * t + 4) ** 1.5


def test_welch_against_the_closed_form_at_four_degrees_of_freedom():
    a, b = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]
    # Equal sizes and variances (1 each): t = -3 / sqrt(2/3), Welch's dof = 4 exactly.
    p = _welch_p_4dof(-3 / math.sqrt(2 / 3))
    lower = stats.welch(a, b, higher_is_better=False)
    assert lower.p_value == pytest.approx(p, rel=1e-9) and lower.difference == -3.0
    assert lower.verdict == "better"  # a lower loss, significantly
    assert stats.welch(a, b, higher_is_better=True).verdict == "worse"  # e.g. tokens/s
    assert stats.welch(b, a, higher_is_better=False).verdict == "worse"


def test_welch_calls_overlap_within_noise_and_needs_two_seeds_a_side():
    close = stats.welch([5.00, 5.10, 4.95], [5.02, 5.08, 4.97], higher_is_better=False)
    assert close.verdict == "within noise" and close.p_value > 0.05
    few = stats.welch([5.0], [5.1, 5.2], higher_is_better=False)
    assert few.verdict == "too few seeds" and math.isnan(few.p_value)
    assert few.difference == pytest.approx(-0.15)
    exact = stats.welch([1.0, 1.0], [2.0, 2.0], higher_is_better=False)
    assert exact.verdict == "better" and exact.p_value == 0.0


def test_paired_against_the_closed_form_at_two_degrees_of_freedom():
    # Seed-shared offsets (+0.0, +0.3, -0.2) hide a steady gap of about 0.1 from Welch's test.
    a, b = [5.00, 5.28, 4.81], [5.10, 5.40, 4.90]
    differences = [-0.10, -0.12, -0.09]
    mean = sum(differences) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / 2)
    t = mean / (sd / math.sqrt(3))
    p = 1 - abs(t) / math.sqrt(t * t + 2)  # P(|T| > t) at 2 dof, in closed form
    result = stats.paired(a, b, higher_is_better=False)
    assert result.test == "paired" and result.verdict == "better"
    assert result.p_value == pytest.approx(p, rel=1e-9)
    assert result.difference == pytest.approx(mean, rel=1e-12)
    assert stats.welch(a, b, higher_is_better=False).verdict == "within noise"
    exact = stats.paired([1.0, 2.0], [1.5, 2.5], higher_is_better=False)
    assert (exact.verdict, exact.p_value) == ("better", 0.0)  # the same gap on every seed
    assert stats.paired([1.0], [2.0], higher_is_better=False).verdict == "too few seeds"


def test_seed_test_pairs_matched_seeds_and_falls_back_to_welch():
    a, b = {0: 5.00, 1: 5.28, 2: 4.81}, {0: 5.10, 1: 5.40, 2: 4.90}
    assert stats.seed_test(a, b, higher_is_better=False).test == "paired"
    assert stats.seed_test(a, {0: 5.1, 1: 5.4, 3: 4.9}, higher_is_better=False).test == "welch"
    assert stats.seed_test({0: 5.0, 1: 5.1}, {0: 5.2}, False).verdict == "too few seeds"


def test_smoothing_is_the_trailing_mean_of_final_train_loss():
    assert stats.smoothed([4.0, 2.0, 6.0, 0.0], window=2) == [4.0, 3.0, 4.0, 3.0]


CURVE_STEPS = list(range(1, 9))
BASELINE = [8.0, 7.0, 6.0, 5.5, 5.0, 4.8, 4.6, 4.5]  # final smoothed (window 2): 4.55
FAST = [7.0, 6.0, 5.0, 4.6, 4.5, 4.4, 4.3, 4.2]      # smoothed 4.55 at step 5


def test_time_to_target_reached_sooner_than_the_baseline():
    got = stats.time_to_target(CURVE_STEPS, FAST, BASELINE, CURVE_STEPS, window=2,
                               tokens_per_step=1024, step_ms=250.0)
    assert got.target == pytest.approx(4.55)
    assert got.steps == 5 and got.tokens == 5 * 1024 and got.seconds == pytest.approx(1.25)
    assert got.speedup == pytest.approx(8 / 5)  # the baseline reaches its own final loss at 8


def test_time_to_target_never_reached_and_reached_at_step_one():
    slow = stats.time_to_target(CURVE_STEPS, [9.0] * 8, BASELINE, CURVE_STEPS, window=2,
                                tokens_per_step=1024, step_ms=None)
    assert slow.steps is None and slow.speedup is None and slow.tokens is None
    first = stats.time_to_target(CURVE_STEPS, [1.0] * 8, BASELINE, CURVE_STEPS, window=2,
                                 tokens_per_step=1024, step_ms=None)
    assert first.steps == 1 and first.speedup == 8.0 and first.seconds is None

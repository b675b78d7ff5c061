"""Learning-rate schedules: a linear warm-up, then a decay shape down to a floor.

Pure functions of the schedule settings, so the suite loader can validate a kind and the
training loop can apply it without either knowing the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class LRSchedule:
    """Learning-rate schedule applied as a factor on every param group's lr."""

    kind: str = "cosine"  # cosine | linear | rex | constant | wsd, each after a linear warm-up
    warmup_steps: int = 10  # linear warm-up from lr/warmup_steps to lr
    min_ratio: float = 0.1  # floor of the decay, as a fraction of the peak lr
    # wsd only: the share of all steps spent in the final linear decay (the cooldown); the
    # steps between warm-up and cooldown hold the peak lr.
    cooldown_fraction: float = 0.2


# Decay shapes after warm-up: progress z in [0, 1] -> factor from 1 down to 0 (the floor
# min_ratio is applied on top). REX is Chen et al., "REX: Revisiting Budgeted Training with
# an Improved Schedule" (MLSys 2022, arXiv:2107.04197): (1 - z) / (1/2 + (1 - z)/2).
DECAYS: dict[str, Callable[[float], float]] = {
    "cosine": lambda z: 0.5 * (1.0 + math.cos(math.pi * z)),
    "linear": lambda z: 1.0 - z,
    "rex": lambda z: (1.0 - z) / (0.5 + 0.5 * (1.0 - z)),
    "constant": lambda z: 1.0,
}
# WSD, warm-up / stable / decay (Hu et al., MiniCPM, arXiv:2404.06395; Hägele et al.,
# arXiv:2405.18392, who cool down over the last 20 % of steps): the peak lr held after warm-up,
# then a linear decay to the floor over the last `cooldown_fraction` of the steps.
SCHEDULES = (*DECAYS, "wsd")


def lr_factor(schedule: LRSchedule, steps: int) -> Callable[[int], float]:
    """Multiplier on the peak lr at 0-based step `i`: linear warm-up, then the decay shape."""

    decay = DECAYS["linear" if schedule.kind == "wsd" else schedule.kind]
    # Where the decay starts: right after warm-up, or for WSD at the cooldown (not before the
    # warm-up ends).
    start = schedule.warmup_steps
    if schedule.kind == "wsd":
        start = max(start, steps - round(schedule.cooldown_fraction * steps))

    def factor(i: int) -> float:
        if i < schedule.warmup_steps:
            return (i + 1) / schedule.warmup_steps
        span = max(1, steps - start)
        progress = min(1.0, max(0.0, (i - start) / span))
        return schedule.min_ratio + (1.0 - schedule.min_ratio) * decay(progress)

    return factor

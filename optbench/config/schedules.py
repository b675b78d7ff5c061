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

    kind: str = "cosine"  # cosine | linear | rex | constant, each after a linear warm-up
    warmup_steps: int = 10  # linear warm-up from lr/warmup_steps to lr
    min_ratio: float = 0.1  # floor of the decay, as a fraction of the peak lr


# Decay shapes after warm-up: progress z in [0, 1] -> factor from 1 down to 0 (the floor
# min_ratio is applied on top). REX is Chen et al., "REX: Revisiting Budgeted Training with
# an Improved Schedule" (MLSys 2022, arXiv:2107.04197): (1 - z) / (1/2 + (1 - z)/2).
DECAYS: dict[str, Callable[[float], float]] = {
    "cosine": lambda z: 0.5 * (1.0 + math.cos(math.pi * z)),
    "linear": lambda z: 1.0 - z,
    "rex": lambda z: (1.0 - z) / (0.5 + 0.5 * (1.0 - z)),
    "constant": lambda z: 1.0,
}
SCHEDULES = tuple(DECAYS)


def lr_factor(schedule: LRSchedule, steps: int) -> Callable[[int], float]:
    """Multiplier on the peak lr at 0-based step `i`: linear warm-up, then the decay shape."""

    decay = DECAYS[schedule.kind]

    def factor(i: int) -> float:
        if i < schedule.warmup_steps:
            return (i + 1) / schedule.warmup_steps
        span = max(1, steps - schedule.warmup_steps)
        progress = min(1.0, (i - schedule.warmup_steps) / span)
        return schedule.min_ratio + (1.0 - schedule.min_ratio) * decay(progress)

    return factor

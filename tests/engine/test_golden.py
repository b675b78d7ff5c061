"""Golden loss curve: one tiny cell must train exactly as it did when the file was written.

A change to the model, the data pipeline, the loop or an update rule shows up here as a
changed curve. If the change is intended, regenerate with
    OPTBENCH_UPDATE_GOLDEN=1 pytest tests/engine/test_golden.py
and commit the new file with a note saying why the curve moved.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from optbench.config.loader import load_suite
from optbench.config.suite import expand
from optbench.engine.train import train_cell
from tests.conftest import TINY_SUITE

pytestmark = pytest.mark.slow  # golden loss curves of whole training bursts

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden_tiny.json"


def curve_of(write_suite, optimizer: str) -> list[float]:
    text = TINY_SUITE.replace("[adamw, sgd, scale]", f"[{optimizer}]")
    (cell,) = expand(load_suite(write_suite(text, f"{optimizer}.yaml")))
    torch.set_num_threads(1)  # summation order, and so the last bits, depend on threads
    result = train_cell(cell, emit=lambda event: None)
    assert result.status == "ok"
    return [loss for _, loss, _ in result.curve]


@pytest.mark.parametrize("optimizer", ["adamw", "scale"])
def test_loss_curve_matches_golden(write_suite, optimizer):
    threads = torch.get_num_threads()
    try:
        curve = curve_of(write_suite, optimizer)
        again = curve_of(write_suite, optimizer)
    finally:
        torch.set_num_threads(threads)
    assert curve == again  # same seed, same curve, bit for bit
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("OPTBENCH_UPDATE_GOLDEN"):
        golden[optimizer] = curve
        GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")
    assert optimizer in golden, f"no golden curve for {optimizer}; see the module docstring"
    assert curve == pytest.approx(golden[optimizer], rel=1e-5, abs=1e-5)

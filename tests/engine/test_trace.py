"""Memory estimates on fake tensors: held against the same tracker on real tensors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from optbench.engine.trace import (PAPER_BYTES_PER_VALUE, Estimate, Estimator, Workload,
                               measured_peak)
from optbench.errors import OptbenchError
from optbench.engine.fit import largest_fitting, parse_memory
from optbench.models import MODEL_SIZES, build_model
from optbench.optimizers import list_specs, registry

ALL = [spec.name for spec in list_specs()]
TINY = Workload("llama_tiny", seq_len=64, batch_size=4, dtype="fp32")
# A cross-section of the roster on the ~20M model, in bf16 and with clipping: library,
# in-house, low-rank and matrix methods (the whole roster is held to it on llama_tiny above).
ON_20M = ["adamw", "scale", "apollo_mini", "muon"]
W20M = Workload("llama_20m", seq_len=32, batch_size=2, dtype="bf16", grad_clip=1.0)


@pytest.fixture(scope="module")
def tiny() -> Estimator:
    return Estimator("llama_tiny", "fp32")


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_tiny_estimate_matches_measured_peak(tiny, name):
    est = tiny.estimate(TINY, name)
    assert est.error is None
    real = measured_peak(TINY, name)["tracked_peak_bytes"]
    assert est.peak_bytes == pytest.approx(real, rel=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("name", ON_20M)
def test_20m_bf16_estimate_matches_measured_peak(name):
    est = Estimator("llama_20m", "bf16").estimate(W20M, name)
    assert est.error is None
    real = measured_peak(W20M, name)
    assert est.peak_bytes == pytest.approx(real["tracked_peak_bytes"], rel=0.01)
    assert est.parts["optimizer_state"] <= real["peak_optimizer_state_bytes"] * 1.01 + 1


@pytest.mark.parametrize("name", ["adamw", "galore", "scale"])
def test_composed_estimate_equals_one_whole_trace(name):
    """Forward+backward traced once and each optimizer step alone give the whole step's peak."""
    composed = Estimator("llama_tiny", "fp32").estimate(TINY, name)
    # One trace of the whole step (steps 1 and 2, the fuller kept), moment by moment.
    whole = Estimator("llama_tiny", "fp32").step_timeline(TINY, name)
    top = max(whole, key=lambda point: sum(point[1:]))
    assert dict(zip(composed.parts, top[1:])) == composed.parts


def test_paper_convention_counts_weights_and_state_at_two_bytes(tiny):
    size = MODEL_SIZES["llama_tiny"]
    n, h, v, layers = size.n_params(), size.hidden_size, size.vocab_size, size.num_hidden_layers
    model = build_model("llama_tiny", device="meta")
    n_tensors = len(list(model.parameters()))
    adamw = tiny.estimate(TINY, "adamw")
    # exp_avg and exp_avg_sq per value, plus one float `step` per tensor
    assert adamw.paper_bytes == PAPER_BYTES_PER_VALUE * (n + 2 * n + n_tensors)
    scale = tiny.estimate(TINY, "scale")
    norms = (2 * layers + 1) * h  # AdamW's two moments on the RMSNorm weights
    assert scale.paper_bytes == PAPER_BYTES_PER_VALUE * (n + v * h + 2 * norms)


@pytest.mark.slow
def test_seven_billion_estimate_never_allocates_the_model(tmp_path):
    """llama_1b in bf16 holds 2.7 GB of weights alone: staying under 2 GB means fake tensors."""
    code = (
        "import json, resource\n"
        "from optbench.engine.trace import Estimator, Workload\n"
        "e = Estimator('llama_1b', 'bf16').estimate(Workload('llama_1b', 256, 8, 'bf16'), 'adamw')\n"
        "print(json.dumps([e.peak_bytes, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak, maxrss_kib = json.loads(out.stdout.strip().splitlines()[-1])
    assert peak > 4 * 2.7e9  # weights + grads + two moments, at least
    assert maxrss_kib * 1024 < 2e9


def test_an_optimizer_that_cannot_be_traced_gets_a_reason(tiny):
    adamw = registry.get_spec("adamw")

    class Broken(torch.optim.SGD):
        def step(self, closure=None):
            raise RuntimeError("needs real values")

    spec = registry.OptimizerSpec(
        name="broken", factory=lambda model, hp: Broken(model.parameters(), lr=0.1),
        source="test", paper="-", policy="-", default_hparams={}, state_formula="0",
        expected_state_bytes=lambda model, hp: 0)
    with registry.override(spec):
        est = tiny.estimate(TINY, "broken")
    assert est.error.startswith("broken cannot be traced on fake tensors: optimizer.step() raised "
                                "RuntimeError: needs real values")
    assert adamw is registry.get_spec("adamw")


def test_workload_rejects_bad_values():
    with pytest.raises(OptbenchError, match="unknown model 'llama_7m'"):
        Workload("llama_7m", 64, 1)
    with pytest.raises(OptbenchError, match="dtype 'fp16'"):
        Workload("llama_tiny", 64, 1, dtype="fp16")


# ---------------------------------------------------------------------------------- fit


@pytest.mark.parametrize("budget", [0, 5, 17, 100, 1000, 10**6])
def test_largest_fitting_matches_brute_force(budget):
    def peak(n):  # flat, then linear, then quadratic: like weights+grads, activations, scores
        return 20 + max(0, n - 3) * 7 + (n // 50) ** 2

    limit = 4096
    found, probes = largest_fitting(peak, budget, limit)
    expected = max((n for n in range(1, limit + 1) if peak(n) <= budget), default=0)
    assert found == expected
    assert len(probes) <= 2 * 13 + 2  # logarithmic, not a scan


@pytest.mark.parametrize("text,nbytes", [("80GiB", 80 * 2**30), ("80 GB", 80 * 10**9),
                                          ("1.5MiB", 3 * 2**19), ("8e9", 8 * 10**9)])
def test_parse_memory(text, nbytes):
    assert parse_memory(text) == nbytes


@pytest.mark.parametrize("text", ["lots", "80GiBs", "-1GB", "0GB", "GB", "1e309B", "0.5B"])
def test_parse_memory_rejects_garbage(text):
    with pytest.raises(OptbenchError, match="is not a memory size"):
        parse_memory(text)

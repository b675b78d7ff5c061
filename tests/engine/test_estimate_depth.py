"""The depth-extrapolated estimate (traces at 2, 3 and 4 decoder layers, each byte count taken to
the model's depth) equals the full trace to the byte: on a few optimizers in the inner loop,
the whole roster on two small sizes in CI (the paper sizes: benchmarks/estimate_speed.py)."""

from __future__ import annotations

import pytest

from optbench.engine.trace import DepthEstimator, Estimator, Workload, estimator
from optbench.optimizers import list_specs

FEW = ["adamw", "scale", "muon", "apollo_mini", "adahessian"]  # adahessian: the whole-step path


def _assert_equal(model: str, names: list[str], seq_len: int = 64, batch: int = 2,
                  dtype: str = "bf16", grad_accum: int = 1) -> None:
    w = Workload(model, seq_len, batch, dtype, grad_accum=grad_accum)
    full, fast = Estimator(model, dtype), DepthEstimator(model, dtype, from_layers=0)
    for name in names:
        a, b = full.estimate(w, name), fast.estimate(w, name)
        assert bool(a.error) == bool(b.error), name
        if a.error:
            continue
        assert b.parts == a.parts, name
        assert (b.optimizer_state_bytes, b.n_params, b.param_bytes, b.paper_bytes) == (
            a.optimizer_state_bytes, a.n_params, a.param_bytes, a.paper_bytes), name


def test_extrapolated_equals_full_trace_on_a_few_optimizers():
    _assert_equal("llama_9m", FEW)


def test_extrapolated_equals_full_trace_under_fp32_and_accumulation():
    _assert_equal("llama_9m", ["adamw", "scale"], dtype="fp32", grad_accum=2)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["llama_9m", "llama_20m"])
def test_extrapolated_equals_full_trace_on_the_whole_roster(model):
    _assert_equal(model, [s.name for s in list_specs()])


def test_a_model_no_deeper_than_the_shallow_traces_is_traced_whole():
    fast = DepthEstimator("llama_tiny", "fp32", from_layers=0)  # 2 layers: never extrapolated
    w = Workload("llama_tiny", 32, 2, "fp32")
    assert fast.estimate(w, "adamw").parts == Estimator("llama_tiny", "fp32").estimate(w, "adamw").parts
    assert fast.exact.layers == 2


def test_a_shallow_model_is_traced_whole_by_default():
    assert DepthEstimator("llama_60m", "bf16").from_layers == 16  # 8 layers: a full trace
    w = Workload("llama_9m", 32, 1, "bf16")
    assert DepthEstimator("llama_9m", "bf16").estimate(w, "sgd").parts == \
        Estimator("llama_9m", "bf16").estimate(w, "sgd").parts


def test_the_shared_estimator_is_extrapolating_unless_exact():
    assert isinstance(estimator("llama_9m", "bf16"), DepthEstimator)
    assert isinstance(estimator("llama_9m", "bf16", True), Estimator)


def test_a_peak_that_moves_with_depth_is_still_found():
    # llama_60m at seq 192, batch 1: at 3 and 4 layers forward+backward peaks where the logits'
    # gradient is made, at its 8 layers at the end of backward (the gradients outgrew it). Each
    # moment is taken to depth on its own before the largest is picked.
    w = Workload("llama_60m", 192, 1, "bf16")
    moments = [Estimator("llama_60m", "bf16", layers=d).fwd_bwd_moments(w) for d in (4, 8)]
    tops = [max(m, key=lambda k: sum(m[k].values())) for m in moments]
    assert tops == ["backward at outside", "backward at first"]
    _assert_equal("llama_60m", ["scale", "sgd"], seq_len=192, batch=1)


def test_a_step_whose_peak_is_not_a_line_in_depth_is_extrapolated_by_its_places(monkeypatch):
    # signSGD on llama_60m: the line through its steps' peaks at 3 and 4 layers says 265.1 MB,
    # the full trace 282.9 MB (the peak moves from one parameter's update to another's as the
    # layers add up), while each moment of the step, placed by the parameter it is at, is a line.
    w = Workload("llama_60m", 64, 1, "bf16")
    peaks = [max(sum(p.values()) for p in Estimator("llama_60m", "bf16", layers=d)
                 .traced_steps(w, "signsgd")[1].candidates) for d in (3, 4)]
    full = Estimator("llama_60m", "bf16")
    whole = max(sum(p.values()) for p in full.traced_steps(w, "signsgd")[1].candidates)
    assert peaks[1] + (peaks[1] - peaks[0]) * (8 - 4) != whole
    fast = DepthEstimator("llama_60m", "bf16", from_layers=0)
    monkeypatch.setattr(fast.exact, "traced_steps", None)  # a fall-back to full depth would fail
    assert fast.estimate(w, "signsgd").parts == full.estimate(w, "signsgd").parts


def test_the_papers_optimizers_steps_are_extrapolated_not_traced_whole(monkeypatch):
    fast = DepthEstimator("llama_9m", "bf16", from_layers=0)
    monkeypatch.setattr(fast.exact, "traced_steps", None)
    w = Workload("llama_9m", 64, 2, "bf16")
    for name in ("adamw", "scale", "apollo_mini", "muon", "galore"):
        assert not fast.estimate(w, name).error, name


def test_a_step_batched_across_layers_with_a_cap_is_traced_at_full_depth():
    # NS-norm SGD transforms same-shape matrices of every layer together, at most BATCH_ELEMS
    # at a time: at 2-4 layers its scratch grows with each layer, past the cap it stays.
    from optbench.optimizers import get_spec

    assert not get_spec("nsnorm_sgd").step_extrapolates
    w = Workload("llama_9m", 64, 1, "bf16")
    fast = DepthEstimator("llama_9m", "bf16", from_layers=0)
    calls = []
    traced = fast.exact.traced_steps

    def spy(*args, **kwargs):
        calls.append(args[1])
        return traced(*args, **kwargs)

    fast.exact.traced_steps = spy
    fast.estimate(w, "nsnorm_sgd")
    assert calls == ["nsnorm_sgd"]

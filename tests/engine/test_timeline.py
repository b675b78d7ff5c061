"""The memory timeline of one step: every moment the tracker checks for a peak, its parts summing
to the total at every point and its largest total the tracked peak to the byte (real tensors),
the estimate's peak (fake tensors); thinning keeps the peak and the phase starts; the figures."""

from __future__ import annotations

import torch

from optbench.engine import measure
from optbench.engine.step import StepOptions, train_step
from optbench.engine.trace import Estimator, Workload
from optbench.models import build_model
from optbench.optimizers import get_spec, resolve_hparams
from optbench.render.timeline import plot_overlay, plot_timelines


def _timeline(name: str) -> tuple[list, dict]:
    torch.manual_seed(0)
    model = build_model("llama_tiny")
    optimizer = get_spec(name).factory(model, resolve_hparams(name, {}, "llama_tiny"))
    windows = [torch.randint(0, 512, (2, 33))]
    out = None
    for _ in range(2):  # step 2: the state is held from the start
        timeline: list = []
        with measure.tracked_peak(model, optimizer, timeline) as peak:
            train_step(model, optimizer, windows, StepOptions("cpu", False, False, 1.0))
        out = (timeline, peak)
    return out


def test_the_timeline_s_largest_total_is_the_tracked_peak_to_the_byte():
    for name in ("adamw", "scale"):
        timeline, peak = _timeline(name)
        totals = [sum(point[1:]) for point in timeline]
        assert max(totals) == peak["tracked_peak_bytes"], name
        top = timeline[totals.index(max(totals))]
        assert top[1:] == [peak[f"peak_{p}_bytes"] for p in
                           ("params", "grads", "optimizer_state", "activations", "temporaries")]
        phases = {point[0] for point in timeline}
        assert phases == set(range(len(measure.TIMELINE_PHASES))), name  # all four seen
        assert all(len(point) == 6 and min(point[1:]) >= 0 for point in timeline)


def test_thinning_keeps_the_peak_and_every_phase_start():
    timeline, peak = _timeline("adamw")
    thin = measure.thinned(timeline, points=50)
    assert len(thin) < len(timeline) / 5
    assert max(sum(p[1:]) for p in thin) == peak["tracked_peak_bytes"]
    starts = lambda t: [p for i, p in enumerate(t) if i == 0 or p[0] != t[i - 1][0]]  # noqa: E731
    assert starts(timeline) == [p for p in starts(thin) if p in starts(timeline)]
    assert measure.thinned(timeline, points=10**6) is timeline


def test_an_estimate_s_timeline_peaks_at_its_estimate():
    w = Workload("llama_tiny", 32, 2, "fp32", grad_clip=1.0)
    estimator = Estimator("llama_tiny", "fp32")
    for name in ("adamw", "scale", "muon"):
        timeline = estimator.step_timeline(w, name)
        assert max(sum(p[1:]) for p in timeline) == estimator.estimate(w, name).peak_bytes, name


def test_the_figures_are_drawn_and_skip_what_is_missing(tmp_path):
    timelines = {"adamw": _timeline("adamw")[0], "scale": _timeline("scale")[0], "sgd": []}
    panels = plot_timelines("llama_tiny", timelines, tmp_path / "t.png")
    overlay = plot_overlay("llama_tiny", timelines, {}, tmp_path / "o.png")
    assert panels.stat().st_size > 20_000 and overlay.stat().st_size > 20_000
    assert plot_timelines("x", {"sgd": []}, tmp_path / "none.png") is None
    assert plot_overlay("x", {"adamw": timelines["adamw"]}, {}, tmp_path / "one.png") is None

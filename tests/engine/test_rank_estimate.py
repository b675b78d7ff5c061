"""Per-rank estimates of sharded steps (optbench.engine.rank_trace), held against real
2-process CPU runs of the same cells and against the shard arithmetic."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from optbench.cli import app
import torch.distributed as dist

from optbench.config.loader import load_suite
from optbench.config.suite import Parallel, expand
from optbench.engine.rank_trace import RankEstimator, estimate_cell, estimator_for
from optbench.engine.trace import Estimate, Workload
from optbench.render.estimate import estimate_rows
from optbench.metrics import PART_METRICS, rank_metric
from optbench.models import build_model
from optbench.results.store import ResultStore
from tests.conftest import TINY_SUITE, fsdp2_adamw_state

TINY = Workload("llama_tiny", 32, 2, "fp32")


def test_fsdp2_state_per_rank_is_the_shard_arithmetic_with_uneven_shards():
    est = RankEstimator("llama_tiny", "fp32", Parallel("fsdp2", 3)).estimate(TINY, "adamw")
    assert est.error is None and est.parallel == "fsdp2x3"
    states = [r.optimizer_state_bytes for r in est.ranks]
    assert states == [fsdp2_adamw_state(rank, 3) for rank in range(3)]
    assert states[0] == states[1] > states[2]  # 64 rows -> 22, 22, 20
    assert est.optimizer_state_bytes == max(states)
    fullest = max(est.ranks, key=lambda r: r.peak_bytes)
    assert est.parts == fullest.parts and est.peak_bytes == fullest.peak_bytes


def test_ddp_ranks_hold_the_whole_state_and_the_buckets():
    ddp = RankEstimator("llama_tiny", "fp32", Parallel("ddp", 2)).estimate(TINY, "adamw")
    one = estimator_for("llama_tiny", "fp32", Parallel(), True).estimate(TINY, "adamw")
    assert ddp.optimizer_state_bytes == one.optimizer_state_bytes
    # Its gradient buckets: a flat copy of every gradient, on top of the one-process step.
    param_bytes = sum(p.numel() * 4 for p in build_model("llama_tiny").parameters())
    assert ddp.peak_bytes == one.peak_bytes + param_bytes


@pytest.mark.parametrize("strategy,nproc,optimizer", [("fsdp2", 3, "adamw"), ("zero1", 2, "scale"),
                                                      ("ddp", 2, "muon")])
def test_ranks_reusing_a_trace_equal_ranks_each_traced(strategy, nproc, optimizer, monkeypatch):
    setting = Parallel(strategy, nproc)
    reused = RankEstimator("llama_tiny", "fp32", setting)
    first = reused.estimate(TINY, optimizer)
    again = reused.estimate(Workload("llama_tiny", 32, 3, "fp32"), optimizer)  # distinct only
    import optbench.engine.rank_trace as rank_trace

    shapes = rank_trace.shape_key
    monkeypatch.setattr(rank_trace, "shape_key", lambda m, o: (dist.get_rank(), shapes(m, o)))
    monkeypatch.setattr(RankEstimator, "_layout_twins", lambda self: list(range(nproc)))
    every = RankEstimator("llama_tiny", "fp32", setting)
    for est, workload in ((first, TINY), (again, Workload("llama_tiny", 32, 3, "fp32"))):
        each = every.estimate(workload, optimizer)
        assert [(r.parts, r.optimizer_state_bytes) for r in est.ranks] == \
            [(r.parts, r.optimizer_state_bytes) for r in each.ranks]


def test_1024_fsdp2_ranks_trace_only_the_distinct_splits(monkeypatch):
    """Of 1,024 ranks only those whose row split differs are wrapped and traced; every rank's
    state is still its own shard's, to the byte."""
    import optbench.engine.rank_trace as rank_trace

    traced, trace_rank = [], RankEstimator._trace_rank

    def counting(self, est, done):
        traced.append(dist.get_rank())
        return trace_rank(self, est, done)

    monkeypatch.setattr(RankEstimator, "_trace_rank", counting)
    est = RankEstimator("llama_tiny", "fp32", Parallel("fsdp2", 1024)).estimate(TINY, "adamw")
    assert est.error is None and len(est.ranks) == 1024
    layouts = {tuple(rank_trace.fsdp2_local_rows(p.shape[0], r, 1024)
                     for p in build_model("llama_tiny").parameters()) for r in range(1024)}
    assert len(traced) == len(layouts) <= 4, traced
    assert [r.optimizer_state_bytes for r in est.ranks] == \
        [fsdp2_adamw_state(rank, 1024) for rank in range(1024)]


def test_zero1_splits_the_state_and_refuses_what_it_cannot_rebuild():
    zero1 = RankEstimator("llama_tiny", "fp32", Parallel("zero1", 2))
    adamw = zero1.estimate(TINY, "adamw")
    one = estimator_for("llama_tiny", "fp32", Parallel(), True).estimate(TINY, "adamw")
    states = [r.optimizer_state_bytes for r in adamw.ranks]
    # Each rank keeps the moments of its share, and its share's `step` counters.
    assert sum(states) == one.optimizer_state_bytes and min(states) > 0
    refused = zero1.estimate(TINY, "adam_mini")
    assert refused.error and "ZeRO-1" in refused.error and not refused.ranks
    assert refused.unsupported


def test_a_meta_cell_zero1_cannot_run_is_skipped_as_a_real_one_is(write_suite):
    text = (TINY_SUITE.replace("device: cpu", "device: meta").replace("[adamw, sgd, scale]", "[adam_mini]")
            .replace("seq_lens: [32]", "seq_lens: [32]\n  parallel: [zero1x2]"))
    (cell,) = expand(load_suite(write_suite(text)))
    outcome = estimate_cell(cell, lambda event: None)
    assert outcome.status == "skipped" and "ZeRO-1" in outcome.error


def test_the_ratio_is_to_adamw_under_the_same_strategy():
    def row(optimizer, parallel, peak):
        return Estimate(f"{optimizer} {parallel}", optimizer, {}, TINY, parallel=parallel,
                        parts={"params": peak})

    estimates = [row("adamw", "none", 100), row("adamw", "ddpx2", 200), row("scale", "ddpx2", 150),
                 row("scale", "none", 80)]
    header, rows = estimate_rows(estimates)
    ratio = header.index("Peak vs adamw")
    assert [r[ratio] for r in rows] == ["1.00×", "1.00×", "0.75×", "0.80×"]


def test_sharded_metrics_are_stored_per_rank_with_the_max_as_headline():
    est = RankEstimator("llama_tiny", "fp32", Parallel("zero1", 2)).estimate(TINY, "scale")
    metrics = est.metrics()
    peaks = [r.peak_bytes for r in est.ranks]
    assert peaks[0] != peaks[1]  # SCALE's few Adam-treated params all land on one rank
    for rank, r in enumerate(est.ranks):
        assert metrics[rank_metric("tracked_peak_bytes", rank)] == r.peak_bytes
        assert metrics[rank_metric("optimizer_state_bytes", rank)] == r.optimizer_state_bytes
    assert metrics["tracked_peak_bytes"] == max(peaks)
    assert sum(metrics[m] for m in PART_METRICS) == max(peaks)


def test_timeline_of_a_sharded_estimate_peaks_at_its_fullest_rank():
    est = RankEstimator("llama_tiny", "fp32", Parallel("fsdp2", 2)).estimate(TINY, "adamw")
    assert max(sum(point[1:]) for point in est.timeline) == est.peak_bytes


@pytest.mark.parametrize("args,message", [
    (["--parallel", "tp"], "--parallel 'tp' is not a strategy; accepted: none, ddp, fsdp2, zero1"),
    (["--parallel", "fsdp2"], "--parallel fsdp2 needs --nproc N"),
    (["--parallel", "fsdp2", "--nproc", "0"], "--nproc 0: accepted 1..1024 ranks"),
    (["--nproc", "4"], "--nproc 4 needs --parallel ddp | fsdp2 | zero1"),
])
@pytest.mark.parametrize("command", ["estimate", "fit"])
def test_bad_parallel_options_are_one_line_exit_2(command, args, message, tmp_path):
    memory = ["--memory", "1GiB"] if command == "fit" else []
    result = CliRunner().invoke(app, [command, "--model", "llama_tiny", *memory, *args,
                                      "--reports", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_estimate_and_fit_take_the_strategy(tmp_path):
    result = CliRunner().invoke(app, ["estimate", "--model", "llama_tiny", "-o", "scale",
                                      "--parallel", "fsdp2", "--nproc", "3", "--seq-len", "32",
                                      "--batch-size", "2", "--dtype", "fp32", "--reports",
                                      str(tmp_path)])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "estimate-llama_tiny-seq32-bs2-fp32-fsdp2x3.md").read_text()
    # Ranks 0 and 1 hold 22 of every 64 rows, rank 2 the last 20: two lines per optimizer.
    assert "| adamw · fsdp2x3 | 0-1 |" in md and "| adamw · fsdp2x3 | 2 |" in md
    fit = CliRunner().invoke(app, ["fit", "--memory", "6MiB", "--model", "llama_tiny",
                                   "--parallel", "ddp", "--nproc", "2", "--seq-len", "32",
                                   "--dtype", "fp32", "--json", "--reports", str(tmp_path)])
    assert fit.exit_code == 0, fit.output
    (row,) = json.loads(fit.output)
    assert row["optimizer"] == "adamw · ddpx2" and row["largest"] >= 2
    ddp = RankEstimator("llama_tiny", "fp32", Parallel("ddp", 2))
    at = ddp.estimate(Workload("llama_tiny", 32, row["largest"], "fp32"), "adamw").peak_bytes
    beyond = ddp.estimate(Workload("llama_tiny", 32, row["largest"] + 1, "fp32"), "adamw")
    assert at == row["peak_bytes_at_largest"] <= 6 * 2**20 < beyond.peak_bytes


SHARDED_SUITE = (TINY_SUITE.replace("[adamw, sgd, scale]", "[adamw, scale]")
                 .replace("seq_lens: [32]", "seq_lens: [32]\n  parallel: [ddpx2, fsdp2x2, zero1x2]")
                 .replace("steps: 6", "steps: 3").replace("warmup: 2", "warmup: 1"))


def _per_rank(db, name: str) -> dict[str, dict[str, float]]:
    return {r.cell_id: r.metrics for r in ResultStore(db).runs() if r.status in ("ok", "estimated")}


@pytest.mark.slow
def test_estimates_equal_real_two_process_runs_per_rank_to_the_byte(write_suite, tmp_path):
    """The issue's test: AdamW and SCALE under DDP, FSDP2 and ZeRO-1 on llama_tiny, trained on 2
    CPU ranks (gloo) and estimated by a `device: meta` suite of the same cells."""
    real_db, meta_db = tmp_path / "real.sqlite", tmp_path / "meta.sqlite"
    for text, db in ((SHARDED_SUITE, real_db),
                     (SHARDED_SUITE.replace("device: cpu", "device: meta"), meta_db)):
        done = CliRunner().invoke(app, ["run", str(write_suite(text, f"{db.stem}.yaml")), "--db",
                                        str(db), "--reports", str(tmp_path / db.stem)])
        assert done.exit_code == 0, done.output
    real, meta = _per_rank(real_db, "real"), _per_rank(meta_db, "meta")
    assert len(real) == len(meta) == 6 and set(real) == set(meta)
    for cell_id in real:
        for rank in (0, 1):
            state = rank_metric("optimizer_state_bytes", rank)
            assert meta[cell_id][state] == real[cell_id][state], (cell_id, state)
            peak = rank_metric("tracked_peak_bytes", rank)
            late = real[cell_id][peak] - meta[cell_id][peak]
            if late and cell_id.endswith("fsdp2x2"):
                # gloo frees a collective's buffers from its own thread when it completes, the
                # fake group at once: a real run may hold a reduce-scatter's buffers a moment
                # longer (1 run in 4 here: scale · fsdp2x2 rank 1, 21,760 bytes more), never
                # more than one decoder layer's gradients.
                assert 0 < late <= _layer_grad_bytes(), (cell_id, peak, late)
                continue
            for name in ("tracked_peak_bytes", *PART_METRICS):
                key = rank_metric(name, rank)
                assert meta[cell_id][key] == real[cell_id][key], (cell_id, key)


def _layer_grad_bytes() -> int:
    layer = build_model("llama_tiny").model.layers[0]
    return sum(p.numel() * p.element_size() for p in layer.parameters())

"""Per-rank metrics of a sharded cell: names, the merge on rank 0, and what check, compare and
the report make of them (canned results: no process is started here)."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from optbench.config.loader import load_suite
from optbench.config.suite import expand
from optbench.engine.outcome import RunResult
from optbench.engine.train import flops_metrics, merge_rank_metrics, tokens_per_step
from optbench.models import get_model_size
from optbench.metrics import get_metric, rank_metric, split_rank_metric
from optbench.results import check as chk
from optbench.results import compare as cmp
from optbench.results.store import ResultStore, runs_frame
from optbench.render.report import per_rank_frame, summary_frame, write_report
from tests.conftest import TINY_SUITE

SHARDED = TINY_SUITE.replace("seq_lens: [32]", "seq_lens: [32]\n  parallel: [none, fsdp2x2]")


@pytest.fixture
def cells(write_suite):
    return expand(load_suite(write_suite(SHARDED, "sharded.yaml")))


def test_rank_metric_names_round_trip_and_label():
    assert rank_metric("tracked_peak_bytes", 1) == "tracked_peak_bytes@rank1"
    assert split_rank_metric("tracked_peak_bytes@rank12") == ("tracked_peak_bytes", 12)
    assert split_rank_metric("tracked_peak_bytes") == ("tracked_peak_bytes", None)
    metric = get_metric("peak_allocated_bytes@rank1")
    assert metric.name == "peak_allocated_bytes@rank1" and metric.label == "Peak r1"
    assert metric.exact_on_cpu and not metric.higher_is_better


RANK0 = {"n_params": 100, "optimizer_state_bytes": 800, "tracked_peak_bytes": 3000,
         "peak_allocated_bytes": 3000, "peak_params_bytes": 1000, "peak_grads_bytes": 0,
         "peak_optimizer_state_bytes": 800, "peak_activations_bytes": 1000,
         "peak_temporaries_bytes": 200, "tracked_peak_step": 2, "step_ms": 10.0,
         "fwd_bwd_ms": 7.0, "optimizer_step_ms": 3.0, "tokens_per_s": 6400.0,
         "final_train_loss": 5.0, "eval_loss": 5.1}
RANK1 = {**RANK0, "optimizer_state_bytes": 640, "tracked_peak_bytes": 3100,
         "peak_allocated_bytes": 3100, "peak_activations_bytes": 1260,
         "peak_optimizer_state_bytes": 640, "tracked_peak_step": 1, "step_ms": 12.5,
         "fwd_bwd_ms": 6.0, "optimizer_step_ms": 6.5, "tokens_per_s": 5120.0}


def test_merge_keeps_each_rank_and_the_max_as_headline(cells):
    cell = next(c for c in cells if c.parallel.sharded)
    merged = merge_rank_metrics([RANK0, RANK1], cell)
    assert merged["optimizer_state_bytes"] == 800  # the fuller rank
    assert merged[rank_metric("optimizer_state_bytes", 1)] == 640
    assert merged["step_ms"] == 12.5 and merged["optimizer_step_ms"] == 6.5
    assert merged[rank_metric("fwd_bwd_ms", 0)] == 7.0
    # The peak's parts come from the rank with the larger peak, so they still sum to it.
    parts = sum(merged[k] for k in ("peak_params_bytes", "peak_grads_bytes",
                                    "peak_optimizer_state_bytes", "peak_activations_bytes",
                                    "peak_temporaries_bytes"))
    assert parts == merged["tracked_peak_bytes"] == 3100 and merged["tracked_peak_step"] == 1
    # Tokens/s: both ranks' tokens over the slowest rank's step; loss and sizes from rank 0.
    assert tokens_per_step(cell) == 2 * 2 * 32
    assert merged["tokens_per_s"] == pytest.approx(128 / 0.0125)
    assert merged["tokens_per_s_per_device"] == pytest.approx(64 / 0.0125)
    assert merged["final_train_loss"] == 5.0 and merged["n_params"] == 100
    assert rank_metric("final_train_loss", 1) not in merged
    assert rank_metric("tokens_per_s", 1) not in merged


def test_model_flops_of_a_sharded_cell_are_over_all_ranks_and_mfu_over_all_devices(
        cells, monkeypatch):
    cell = next(c for c in cells if c.parallel.sharded)
    merged = merge_rank_metrics([RANK0, RANK1], cell)
    per_token = get_model_size(cell.model).flops_per_token(cell.seq_len)
    on_cpu = flops_metrics(cell, merged, torch.device("cpu"))
    assert on_cpu == {"model_tflops_per_s": pytest.approx(merged["tokens_per_s"] * per_token / 1e12)}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA A100-SXM4-80GB")
    on_gpu = flops_metrics(cell, merged, torch.device("cuda"))  # fp32 weights: 19.5 TFLOP/s each
    assert on_gpu["mfu_percent"] == pytest.approx(100 * on_cpu["model_tflops_per_s"] / (2 * 19.5))
    autocast = dataclasses.replace(cell, defaults=dataclasses.replace(cell.defaults, autocast=True))
    on_bf16 = flops_metrics(autocast, merged, torch.device("cuda"))  # bf16 matmuls: 312 each
    assert on_bf16["mfu_percent"] == pytest.approx(100 * on_cpu["model_tflops_per_s"] / (2 * 312))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA A10G")
    assert "mfu_percent" not in flops_metrics(cell, merged, torch.device("cuda"))
    assert flops_metrics(cell, {}, torch.device("cpu")) == {}  # nothing timed: nothing derived


def _result(cell, metrics, status="ok") -> RunResult:
    return RunResult(suite=cell.suite, cell_id=cell.id, fingerprint=cell.fingerprint,
                     model=cell.model, optimizer=cell.optimizer.display,
                     optimizer_name=cell.optimizer.name, seq_len=cell.seq_len, device="cpu",
                     dtype="fp32", status=status, config=cell.config, metrics=metrics,
                     curve=[(1, 6.0, 1e-3), (2, 5.5, 1e-3)])


def _results(cells) -> list[RunResult]:
    out = []
    for cell in cells:
        if cell.parallel.sharded:
            out.append(_result(cell, merge_rank_metrics([RANK0, RANK1], cell)))
        else:
            out.append(_result(cell, {**RANK0, "optimizer_state_bytes": 1600}))
    return out


def _stored(cells, tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    for r in _results(cells):
        store.save(r)
    return store


def test_stored_run_knows_its_strategy_and_global_batch(cells, tmp_path):
    runs = _stored(cells, tmp_path).runs()
    assert [r.parallel for r in runs[:2]] == ["none", "fsdp2x2"]
    assert [r.tokens_per_step for r in runs[:2]] == [64, 128]
    frame = runs_frame(runs)
    assert list(frame["parallel"][:2]) == ["none", "fsdp2x2"]


def test_check_gates_every_rank_with_the_headline_rule(cells, tmp_path):
    results = _results(cells)
    observed = [chk.Observed.from_result(r) for r in results]
    rules = chk.parse_rules([])
    chk.write_baseline(tmp_path / "b.json", "tiny", observed, rules)
    baseline = chk.load_baseline(tmp_path / "b.json")
    sharded_id = results[1].cell_id
    assert rank_metric("optimizer_state_bytes", 1) in baseline.cells[sharded_id].metrics
    grown = dict(results[1].metrics, **{rank_metric("optimizer_state_bytes", 1): 700})
    now = [observed[0], chk.Observed.from_result(_result(cells[1], grown)), *observed[2:]]
    findings = chk.compare(now, baseline, rules)
    marks = {(f.cell_id, f.metric): f.mark for f in findings}
    assert marks[(sharded_id, "optimizer_state_bytes")] == "~"  # the max did not move
    assert marks[(sharded_id, "optimizer_state_bytes@rank1")] == "+"  # rank 1's state grew
    assert marks[(sharded_id, "optimizer_state_bytes@rank0")] == "~"
    assert chk.exit_code(findings) == 1
    assert not any("@rank" in f.metric for f in findings if f.cell_id == results[0].cell_id)


def test_compare_shows_each_strategy_as_its_own_row(cells, tmp_path):
    store = _stored(cells, tmp_path)
    req = cmp.Request(("scale",), models=("llama_tiny",), seq_lens=(32,))
    names, baseline, metrics = cmp.resolve(req)
    runs = cmp.select(store, names, req, None)
    assert len(runs) == 4  # adamw and scale, each one-process and fsdp2x2
    pair = ("llama_tiny", 32)
    parallels = cmp.parallels_at(runs, pair, req)
    assert parallels == ["none", "fsdp2x2"]
    table = cmp.table_rows(runs, names, pair, metrics, baseline, parallels)
    assert list(table["optimizer"]) == ["adamw", "adamw · fsdp2x2", "scale", "scale · fsdp2x2"]
    # A sharded row's ratio is against the baseline under the same strategy.
    row = table.set_index("optimizer").loc["scale · fsdp2x2"]
    assert row["optimizer_state_bytes_vs_adamw"] == 1.0
    assert cmp.config_notes(runs, pair) == []  # the strategy is in the label, not a "difference"
    only = cmp.Request(("scale",), models=("llama_tiny",), seq_lens=(32,), parallel=("fsdp2x2",))
    assert {r.parallel for r in cmp.select(store, names, only, None)} == {"fsdp2x2"}


def test_compare_refuses_an_unknown_strategy_label():
    from optbench.errors import OptbenchError

    with pytest.raises(OptbenchError, match="--parallel 'fsdp2': accepted: none or STRATEGYxN"):
        cmp.resolve(cmp.Request(("scale",), parallel=("fsdp2",)))


def test_report_names_sharded_rows_and_lists_each_rank(cells, tmp_path):
    runs = runs_frame(_stored(cells, tmp_path).runs())
    summary = summary_frame(runs)
    assert "adamw · fsdp2x2" in list(summary["Optimizer"])
    assert list(summary["Tokens/step"][:2]) == ["64", "128"]
    from optbench.render.frames import prepare_runs

    ranks = per_rank_frame(prepare_runs(runs))
    assert list(ranks["Rank"][:2]) == ["0", "1"] and len(ranks) == 6  # 3 optimizers x 2 ranks
    write_report(runs, pd.DataFrame(columns=["run_id", "cell_id", "step", "loss", "lr"]),
                 tmp_path / "report", "t")
    text = (tmp_path / "report" / "summary.md").read_text()
    assert "**Per rank**" in text and "| adamw · fsdp2x2 | 1 |" in text


def test_compare_parallel_is_checked_like_a_suite_key_and_normalized():
    from optbench.errors import OptbenchError

    with pytest.raises(OptbenchError, match=r"--parallel ddpx5000.nproc: 5000 ranks; a per-rank"):
        cmp.resolve(cmp.Request(("scale",), parallel=("ddpx5000",)))
    # Reading stored (or estimated, device: meta) rows needs no such node; running them does.
    request = cmp.Request(("scale",), parallel=("ddpx500",), device="cpu")
    cmp.resolve(request)
    with pytest.raises(OptbenchError, match=r"--parallel ddpx500.nproc: 500 ranks on one node"):
        cmp.missing_cells([], [("llama_tiny", 32)], ["scale"], request, None)
    req = cmp.canonical_parallel(cmp.Request(("scale",), parallel=("ddpx02", "ddpx2", "none")))
    assert req.parallel == ("ddpx2", "none")

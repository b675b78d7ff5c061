"""Results store: round trip, latest-run selection, resume decisions, bad files."""

from __future__ import annotations

import math

import pytest

from optbench.errors import OptbenchError
from optbench.store import ResultStore, RunResult


def make_result(fp="fp1", status="ok", loss=2.0, **kw) -> RunResult:
    base = dict(suite="s", cell_id="llama_tiny/adamw/seq32", fingerprint=fp, model="llama_tiny",
                optimizer="adamw", optimizer_name="adamw", seq_len=32, device="cpu", dtype="fp32",
                status=status, config={"k": [1, 2]}, env={"torch": "x"},
                metrics={"optimizer_state_bytes": 1234.0, "final_train_loss": loss},
                curve=[(1, 3.0, 1e-3), (2, loss, 1e-3)], started_at=1.0, ended_at=2.0)
    base.update(kw)
    return RunResult(**base)


def test_round_trip(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    run_id = store.save(make_result())
    runs = store.latest_runs(["fp1"])
    assert list(runs["run_id"]) == [run_id]
    row = runs.iloc[0]
    assert row["optimizer_state_bytes"] == 1234.0 and row["status"] == "ok"
    curves = store.curves([run_id])
    assert list(curves["loss"]) == [3.0, 2.0] and list(curves["step"]) == [1, 2]


def test_latest_ok_preferred_over_later_failure(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    ok_id = store.save(make_result(loss=2.0))
    store.save(make_result(status="crashed", metrics={}, curve=[], error="killed"))
    assert store.has_ok("fp1")
    assert list(store.latest_runs(["fp1"])["run_id"]) == [ok_id]
    newer_ok = store.save(make_result(loss=1.5))
    assert list(store.latest_runs(["fp1"])["run_id"]) == [newer_ok]


def test_failure_only_is_reported_and_not_ok(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    store.save(make_result(fp="bad", status="error", error="ValueError: x", metrics={}, curve=[]))
    assert not store.has_ok("bad")
    runs = store.latest_runs(["bad"])
    assert runs.iloc[0]["status"] == "error" and runs.iloc[0]["error"] == "ValueError: x"


def test_nan_metric_stored_as_missing(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    store.save(make_result(status="diverged", loss=float("nan")))
    value = store.latest_runs(["fp1"]).iloc[0]["final_train_loss"]
    assert value is None or math.isnan(value)


def test_order_follows_requested_fingerprints(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    store.save(make_result(fp="b", cell_id="b"))
    store.save(make_result(fp="a", cell_id="a"))
    assert list(store.latest_runs(["a", "b"])["cell_id"]) == ["a", "b"]


def test_persistence_across_connections(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultStore(path).save(make_result())
    assert ResultStore(path).count_runs() == 1


def test_not_a_database_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.sqlite"
    path.write_text("this is not sqlite" * 100)
    with pytest.raises(OptbenchError, match="junk.sqlite"):
        ResultStore(path)
    assert path.read_text().startswith("this is not sqlite")  # nothing overwritten

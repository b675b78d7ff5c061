"""Results store: round trip, latest-run selection, resume decisions, bad files."""

from __future__ import annotations

import math

import pytest

from optbench.errors import OptbenchError
from optbench.engine.outcome import RunResult
from optbench.results.store import ResultStore


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
    (run,) = store.latest_runs(["fp1"])
    assert run.run_id == run_id and run.status == "ok" and run.usable
    assert run.metrics == {"optimizer_state_bytes": 1234.0, "final_train_loss": 2.0}
    assert run.config == {"k": [1, 2]} and run.env == {"torch": "x"}  # JSON read back typed
    curves = store.curves([run_id])
    assert list(curves["loss"]) == [3.0, 2.0] and list(curves["step"]) == [1, 2]


def test_latest_ok_preferred_over_later_failure(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    ok_id = store.save(make_result(loss=2.0))
    store.save(make_result(status="crashed", metrics={}, curve=[], error="killed"))
    assert store.has_result("fp1")
    assert [r.run_id for r in store.latest_runs(["fp1"])] == [ok_id]
    newer_ok = store.save(make_result(loss=1.5))
    assert [r.run_id for r in store.latest_runs(["fp1"])] == [newer_ok]
    latest_any = store.latest_runs(["fp1"], prefer_results=False)
    assert [r.run_id for r in latest_any] == [newer_ok]


def test_latest_of_any_status_sees_a_new_failure(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    store.save(make_result())
    failed = store.save(make_result(status="crashed", metrics={}, curve=[], error="killed"))
    assert [r.run_id for r in store.latest_runs(["fp1"], prefer_results=False)] == [failed]


def test_estimated_counts_as_a_result(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    est = store.save(make_result(status="estimated"))
    store.save(make_result(status="oom", metrics={}))
    assert store.has_result("fp1")
    assert [r.run_id for r in store.latest_runs(["fp1"])] == [est]


def test_failure_only_is_reported_and_not_ok(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    store.save(make_result(fp="bad", status="error", error="ValueError: x", metrics={}, curve=[]))
    assert not store.has_result("bad")
    (run,) = store.latest_runs(["bad"])
    assert run.status == "error" and run.error == "ValueError: x" and not run.usable


def test_nan_metric_stored_as_missing(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    store.save(make_result(status="diverged", loss=float("nan")))
    (run,) = store.latest_runs(["fp1"])
    assert "final_train_loss" not in run.metrics and math.isnan(run.metric("final_train_loss"))


def test_order_follows_requested_fingerprints(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    store.save(make_result(fp="b", cell_id="b"))
    store.save(make_result(fp="a", cell_id="a"))
    assert [r.cell_id for r in store.latest_runs(["a", "b"])] == ["a", "b"]
    assert store.latest_runs([]) == []


def test_runs_filters_and_frame(tmp_path):
    from optbench.results.store import runs_frame

    store = ResultStore(tmp_path / "r.sqlite")
    store.save(make_result(fp="a", model="llama_9m"))
    store.save(make_result(fp="b", optimizer_name="sgd", optimizer="sgd"))
    assert [r.fingerprint for r in store.runs(optimizer_names=["sgd"])] == ["b"]
    assert [r.fingerprint for r in store.runs(models=["llama_9m"], statuses=["ok"])] == ["a"]
    frame = runs_frame(store.runs())
    assert list(frame["fingerprint"]) == ["a", "b"] and list(frame["optimizer_state_bytes"]) == [1234.0] * 2


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

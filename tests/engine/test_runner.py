"""Subprocess isolation and fault statuses: crashed, error, diverged, timeout; resume."""

from __future__ import annotations

import pytest

import os
import signal
import threading

from optbench.commands.common import pending_cells
from optbench.engine.runner import Hooks, run_cells
from optbench.results.store import ResultStore
from optbench.config.loader import load_suite
from optbench.config.suite import expand
from tests.conftest import TINY_SUITE

pytestmark = pytest.mark.slow  # every test runs cells in child processes


def run_and_store(cells, store, hooks=None):
    return run_cells(cells, hooks, on_done=lambda cell, result: store.save(result))


def test_killed_cell_is_crashed_and_suite_goes_on(write_suite, tmp_path):
    suite = load_suite(write_suite(TINY_SUITE.replace("[adamw, sgd, scale]", "[adamw, sgd]")))
    cells = list(expand(suite))
    victim = cells[0].id

    def kill_at_step_3(cell, event):
        if cell.id == victim and event.get("step") == 3:
            os.killpg(state["pid"], signal.SIGKILL)

    state = {}
    hooks = Hooks(on_start=lambda cell, pid: state.update(pid=pid), on_event=kill_at_step_3)
    store = ResultStore(tmp_path / "r.sqlite")
    results = run_and_store(cells, store, hooks)
    assert [r.status for r in results] == ["crashed", "ok"]
    assert "SIGKILL" in results[0].error
    runs = store.latest_runs([c.fingerprint for c in cells])
    assert [r.status for r in runs] == ["crashed", "ok"]
    # the crashed cell is pending again, the ok one is not
    assert [c.id for c in pending_cells(cells, store, rerun=False)] == [victim]
    assert len(pending_cells(cells, store, rerun=True)) == 2


def test_error_diverged_and_timeout_statuses(write_suite, tmp_path):
    text = TINY_SUITE.replace(
        "[adamw, sgd, scale]",
        # valid to the suite's checks; the library itself rejects the value at run time
        "[{name: spam, hparams: {threshold: -1}, label: negative-threshold},"
        " {name: sgd, hparams: {lr: 1.0e+30}, label: huge-lr}]",
    ).replace("eval_batches: 1", "eval_batches: 1\n  grad_clip: null")
    cells = list(expand(load_suite(write_suite(text))))
    store = ResultStore(tmp_path / "r.sqlite")
    error, diverged = run_and_store(cells, store)
    assert error.status == "error" and "threshold must be non-negative" in error.error
    assert diverged.status == "diverged" and "loss is" in diverged.error
    assert diverged.curve  # the steps before divergence are kept

    slow = TINY_SUITE.replace("steps: 6", "steps: 6\n  timeout_s: 0.5").replace("[adamw, sgd, scale]", "[adamw]")
    (timed,) = run_and_store(list(expand(load_suite(write_suite(slow, "slow.yaml")))), store)
    assert timed.status == "crashed" and "timed out" in timed.error


def test_ok_cell_has_every_measurement(tiny_suite, tmp_path):
    cell = expand(load_suite(tiny_suite))[0]
    (result,) = run_and_store([cell], ResultStore(tmp_path / "r.sqlite"))
    assert result.status == "ok", result.error
    m = result.metrics
    for key in ("optimizer_state_bytes", "peak_allocated_bytes", "peak_params_bytes",
                "peak_optimizer_state_bytes", "peak_activations_bytes", "tokens_per_s", "step_ms",
                "fwd_bwd_ms", "optimizer_step_ms", "final_train_loss", "eval_loss", "eval_ppl"):
        assert key in m and m[key] > 0, key
    assert m["peak_grads_bytes"] >= 0  # zero when the peak falls before backward
    parts = sum(m[f"peak_{p}_bytes"] for p in ("params", "grads", "optimizer_state", "activations",
                                                 "temporaries"))
    assert parts == m["peak_allocated_bytes"]
    # the params part also holds buffers (rotary inv_freq): a few bytes more than the weights
    assert m["param_bytes"] <= m["peak_params_bytes"] < 1.01 * m["param_bytes"]
    assert len(result.curve) == 6
    assert result.env["torch"] and result.env["device"] == "cpu"

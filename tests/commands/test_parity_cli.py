"""`optbench parity`: verdicts stored like results, shown and written; bad input is one line."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from optbench.cli import app
from optbench.results.store import ParityRecord, ResultStore

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.slow
def test_parity_stores_each_verdict_and_writes_the_table(tmp_path):
    db, reports = tmp_path / "r.sqlite", tmp_path / "reports"
    done = invoke("parity", "adamw", "adafactor", "-s", "fsdp2", "-s", "zero1",
                  "--db", db, "--reports", reports)
    assert done.exit_code == 0, done.output
    records = {(r.optimizer, r.strategy): r for r in ResultStore(db).parity()}
    assert set(records) == {(n, s) for n in ("adamw", "adafactor") for s in ("fsdp2", "zero1")}
    assert records["adamw", "fsdp2"].verdict == "equivalent"
    assert records["adamw", "fsdp2"].worst_relative_error < 1e-5
    assert records["adafactor", "fsdp2"].verdict == "unsupported"
    assert "RuntimeError" in records["adafactor", "fsdp2"].error
    assert len(records["adamw", "zero1"].state_bytes_per_rank) == 2
    assert records["adamw", "fsdp2"].env["backend"] == "gloo"
    text = (reports / "parity" / "summary.md").read_text()
    assert "| adamw | equivalent" in text and "Command: `optbench parity adamw" in text


def test_the_store_keeps_the_latest_verdict_per_optimizer_and_strategy(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    old = ParityRecord("apollo", "1", "zero1", 2, 3, "equivalent", 1e-7, 1e-7, created_at=1.0)
    new = ParityRecord("apollo", "2", "zero1", 2, 3, "differs", 0.17, 1e-6,
                       "model.layers.0.mlp.down_proj.weight", (100, 90), created_at=2.0)
    other = ParityRecord("adamw", "1", "fsdp2", 2, 3, "equivalent", 0.0, 0.0, created_at=3.0)
    store.save_parity([old])
    store.save_parity([new, other])
    assert store.parity() == [other, new]
    assert store.parity(["apollo"]) == [new]


@pytest.mark.parametrize("args,words", [
    (["adamx"], ["unknown optimizer 'adamx'", "did you mean"]),
    (["adamw", "-s", "fsdp"], ["--strategy 'fsdp'", "ddp, fsdp2, zero1"]),
    (["adamw", "--nproc", "1"], ["--nproc 1", "parity runs 2..64 ranks"]),
    (["adamw", "--steps", "0"], ["--steps 0", "accepted 1..1000"]),
])
def test_bad_parity_input_exits_2_with_one_line(tmp_path, args, words):
    done = invoke("parity", *args, "--db", tmp_path / "r.sqlite", "--reports", tmp_path / "rep")
    assert done.exit_code == 2, done.output
    assert len(done.output.strip().splitlines()) == 1
    for word in words:
        assert word in done.output, (word, done.output)


def test_a_failed_harness_is_named_by_its_error_not_torchrun_s_borders():
    from optbench.engine.parity import failure_line

    stderr = ("[rank1]: Traceback (most recent call last):\n"
              "[rank1]: RuntimeError: Connection reset by peer\n"
              "E1206 torch/distributed/elastic/multiprocessing/api.py failed (exitcode: 1)\n"
              "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n"
              "============================================================\n"
              "optbench.engine.parity FAILED\n"
              "------------------------------------------------------------\n"
              "  exitcode  : -9 (pid: 123)\n"
              "============================================================\n")
    assert failure_line(stderr) == "[rank1]: RuntimeError: Connection reset by peer"
    assert failure_line("=====\n  exitcode  : -9 (pid: 1)\n=====\n") == "exitcode  : -9 (pid: 1)"
    assert failure_line("") == "no output"

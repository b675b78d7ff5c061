"""`run --jobs N`: cells side by side in equal shares of the machine, each result recording the
share; the same cells and fingerprints as one at a time; shares on a GPU machine (one GPU each,
a cell that needs more GPUs runs alone afterwards); the dry run's plan and time estimate."""

from __future__ import annotations

import dataclasses
import os

import pytest

from optbench.config.loader import load_suite
from optbench.config.suite import Parallel, expand
from optbench.engine import slots
from optbench.engine.outcome import RunResult
from optbench.engine.runner import run_cells
from optbench.errors import OptbenchError
from optbench.results.plan import plan
from optbench.results.store import ResultStore, runs_frame
from optbench.render.report import write_report
from tests.conftest import TINY_SUITE


def _on(cells, device: str, parallel: Parallel | None = None):
    """The cells as if resolved on another device (only the fields slots read change)."""
    out = []
    for c in cells:
        defaults = dataclasses.replace(c.defaults, device=device,
                                       parallel=parallel or c.defaults.parallel)
        out.append(dataclasses.replace(c, defaults=defaults))
    return out


@pytest.fixture
def cells(write_suite):
    return expand(load_suite(write_suite(TINY_SUITE)))


def test_cpu_shares_split_the_cores_and_say_so(cells, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    shares = slots.machine_slots(3, cells)
    assert [s.threads for s in shares] == [2, 2, 2] and all(not s.gpus for s in shares)
    assert shares[0].env == {"OPTBENCH_JOBS": "3", "OPTBENCH_CPU_SHARE": "2", "OMP_NUM_THREADS": "2"}
    assert shares[0].describe() == "2 CPU threads"
    assert slots.machine_slots(16, cells * 6)[0].threads == 1  # never below one thread


def test_gpu_shares_give_each_job_its_own_devices(cells, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    cuda = _on(cells * 2, "cuda")  # six cells: enough for every share
    shares = slots.machine_slots(2, cuda)
    assert [s.gpus for s in shares] == [("0", "1"), ("2", "3")]
    assert shares[1].env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert [len(s.gpus) for s in slots.machine_slots(4, cuda)] == [1, 1, 1, 1]
    with pytest.raises(OptbenchError, match=r"--jobs 5: this machine has 4 GPUs"):
        slots.machine_slots(5, cuda)
    wide = _on(cells, "cuda", Parallel("fsdp2", 4))[0]
    assert slots.fits(wide, shares[0]) is False and slots.fits(cuda[0], shares[0])
    assert slots.fits(cells[0], shares[0])  # a CPU cell fits any share


def test_bad_jobs_are_refused(cells, monkeypatch):
    with pytest.raises(OptbenchError, match="--jobs 0: must be 1 or more"):
        slots.machine_slots(0, cells)
    monkeypatch.setenv("OPTBENCH_NNODES", "2")
    with pytest.raises(OptbenchError, match="with OPTBENCH_NNODES set, cells run one at a time"):
        slots.machine_slots(2, cells)


def test_no_more_shares_than_cells(cells, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    shares = slots.machine_slots(8, cells[:2])
    assert len(shares) == 2 and shares[0].threads == 8 and shares[0].env["OPTBENCH_JOBS"] == "2"


@pytest.mark.slow
def test_an_interrupted_jobs_run_leaves_no_child_running(cells, tmp_path):
    from optbench.engine.runner import Hooks

    pids = []

    def interrupt(cell, result):
        raise KeyboardInterrupt  # Ctrl-C as the first result comes back

    with pytest.raises(KeyboardInterrupt):
        run_cells(cells, Hooks(on_start=lambda cell, pid: pids.append(pid)), on_done=interrupt,
                  jobs=2)
    assert 1 <= len(pids) <= 3
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]  # stopped and reaped
    # The runner is usable again afterwards.
    (result,) = run_cells(cells[:1])
    assert result.status == "ok"


@pytest.mark.slow
def test_two_jobs_store_the_same_fingerprints_as_one(cells, tmp_path):
    one, two = ResultStore(tmp_path / "one.sqlite"), ResultStore(tmp_path / "two.sqlite")
    run_cells(cells, on_done=lambda cell, r: one.save(r))
    results = run_cells(cells, on_done=lambda cell, r: two.save(r), jobs=2)
    assert [r.status for r in results] == ["ok"] * 3
    assert {r.fingerprint for r in one.runs()} == {r.fingerprint for r in two.runs()} \
        == {c.fingerprint for c in cells}
    shared = two.runs()
    assert {r.jobs for r in shared} == {2} and {r.jobs for r in one.runs()} == {1}
    assert {r.env["cpu_threads"] for r in shared} == {max(1, (os.cpu_count() or 1) // 2)}
    # The same training: loss and memory do not depend on the machine being shared.
    by_fp = {r.fingerprint: r for r in one.runs()}
    for r in shared:
        assert r.metrics["final_train_loss"] == pytest.approx(
            by_fp[r.fingerprint].metrics["final_train_loss"], rel=1e-4)
        assert r.metrics["optimizer_state_bytes"] == by_fp[r.fingerprint].metrics["optimizer_state_bytes"]
    text = write_report(runs_frame(shared), two.curves([]), tmp_path / "rep", "t")[0].read_text()
    assert "**3 of 3 results shared the machine** with other cells (`run --jobs 2`" in text


def _stored(store: ResultStore, cell, wall_s: float, step_ms: float, status: str = "ok") -> None:
    store.save(RunResult(suite=cell.suite, cell_id=cell.id, fingerprint=cell.fingerprint,
                         model=cell.model, optimizer=cell.optimizer.display,
                         optimizer_name=cell.optimizer.name, seq_len=cell.seq_len, device="cpu",
                         dtype="fp32", status=status, config=cell.config,
                         metrics={"step_ms": step_ms}, started_at=100.0, ended_at=100.0 + wall_s))


def test_the_dry_run_estimates_from_runs_alike_and_counts_the_unknown(write_suite, tmp_path):
    cells = expand(load_suite(write_suite(TINY_SUITE)))
    longer = expand(load_suite(write_suite(TINY_SUITE.replace("steps: 6", "steps: 26"), "l.yaml")))
    other_seq = expand(load_suite(write_suite(TINY_SUITE.replace("[32]", "[64]"), "s.yaml")))
    store = ResultStore(tmp_path / "p.sqlite")
    _stored(store, cells[0], wall_s=10.0, step_ms=500.0)  # adamw: 7 s fixed + 6 x 0.5 s
    _stored(store, cells[1], wall_s=4.0, step_ms=100.0)  # sgd: 3.4 s fixed + 6 x 0.1 s
    p = plan(cells, store, rerun=False)
    assert [c.stored for c in p.cells] == [True, True, False] and p.stored == 2
    # scale has no run of its own: the latest run alike (sgd's) stands in.
    assert p.todo[0].seconds == pytest.approx(4.0) and p.todo[0].basis == cells[1].id
    p = plan(longer, store, rerun=False)
    # 26 steps: adamw 7 s fixed + 26 x 0.5 s; sgd 3.4 s fixed + 26 x 0.1 s.
    assert [c.seconds for c in p.cells[:2]] == pytest.approx([7.0 + 13.0, 3.4 + 2.6])
    p = plan(other_seq, store, rerun=False)
    assert p.unknown == 3 and p.known_seconds == 0  # nothing alike at seq 64
    assert plan(cells, store, rerun=True).stored == 0


def test_cli_refuses_bad_jobs_and_the_dry_run_writes_nothing(write_suite, tmp_path):
    from typer.testing import CliRunner

    from optbench.cli import app

    suite, db = write_suite(TINY_SUITE), tmp_path / "none.sqlite"
    for jobs in ("0", "-2"):
        result = CliRunner().invoke(app, ["run", str(suite), "--jobs", jobs, "--db", str(db)])
        assert result.exit_code == 2 and f"--jobs {jobs}: must be 1 or more" in result.output
    result = CliRunner().invoke(app, ["run", str(suite), "--dry-run", "--jobs", "2", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "llama_tiny/adamw/seq32" in result.output and "3 to run" in result.output
    assert "nothing run (--dry-run)" in result.output and not db.exists()

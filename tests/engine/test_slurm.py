"""Cells as submitit jobs (optbench.engine.slurm), through submitit's real local executor: results
come back and are stored by the parent, a job that dies is `crashed` naming it, Ctrl-C cancels
the jobs not back yet, and bad --executor/--slurm input is one line with exit code 2."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from optbench.cli import app
from optbench.commands.common import pending_cells
from optbench.config.loader import load_suite
from optbench.config.suite import expand
from optbench.engine.runner import Hooks
from optbench.engine.slurm import SubmititOptions, parse_parameters, run_cells_submitit
from optbench.results.store import ResultStore
from tests.conftest import TINY_SUITE

TWO_CELLS = TINY_SUITE.replace("[adamw, sgd, scale]", "[adamw, sgd]")
# A cell that cannot end on its own within a test: whatever ends it is what the test is about.
ENDLESS = TWO_CELLS.replace("steps: 6", "steps: 100000")

runner = CliRunner()


def local_options(tmp_path: Path, **kw) -> SubmititOptions:
    # timeout_min: should a cancel fail, submitit's own limit still ends the job
    return SubmititOptions(**{"cluster": "local", "folder": tmp_path / "submitit",
                              "parameters": {"timeout_min": 2}, "poll_s": 0.2, **kw})


def gone(pid: int) -> bool:
    """The process has exited (a zombie not reaped yet counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.slow
def test_results_come_back_and_are_stored_like_a_local_run(write_suite, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # short relative paths: the summary line is not wrapped
    suite = write_suite(TWO_CELLS)
    db, jobs_dir = Path("r.sqlite"), Path("submitit")
    args = ["run", suite.name, "--db", str(db), "--executor", "submitit-local",
            "--submitit-dir", str(jobs_dir), "--slurm", "slurm_partition=gpu", "--slurm", "cpus_per_task=1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "as submitit jobs · logs in submitit · ignored here (SLURM only): slurm_partition" in result.output
    cells = expand(load_suite(suite))
    store = ResultStore(db)
    runs = store.latest_runs([c.fingerprint for c in cells])
    # the fingerprints a local run stores: the job returns run_cell's own RunResult
    assert [(r.fingerprint, r.status) for r in runs] == [(c.fingerprint, "ok") for c in cells]
    for run in runs:  # each result names its job, whose logs are under --submitit-dir
        assert run.env["executor"] == "local"
        assert (jobs_dir / f"{run.env['submitit_job']}_0_log.err").is_file()
    assert pending_cells(cells, store, rerun=False) == []
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "2 already stored, 0 to run" in again.output


@pytest.mark.slow
def test_cancelled_job_is_crashed_naming_it_and_the_rest_go_on(write_suite, tmp_path):
    endless = expand(load_suite(write_suite(ENDLESS, "endless.yaml")))[0]
    quick = expand(load_suite(write_suite(TWO_CELLS)))[1]
    events = []

    def on_start(cell, job_id):
        events.append(("start", cell.id))
        if cell is endless:  # as `job.cancel()` does for the local executor (scancel on SLURM)
            state["job"] = job_id
            threading.Timer(3.0, os.kill, (job_id, signal.SIGINT)).start()

    state = {}
    store = ResultStore(tmp_path / "r.sqlite")

    def on_done(cell, result):
        events.append(("done", cell.id))
        store.save(result)

    crashed, ok = run_cells_submitit([endless, quick], local_options(tmp_path, max_in_flight=1),
                                     Hooks(on_start=on_start), on_done)
    assert crashed.status == "crashed" and ok.status == "ok", (crashed.error, ok.error)
    assert f"submitit job {state['job']} ended without a result" in crashed.error
    assert crashed.env["submitit_job"] == str(state["job"])
    assert store.latest_runs([endless.fingerprint])[0].status == "crashed"
    # --jobs 1: the second job was submitted only once the first was back
    assert events == [("start", endless.id), ("done", endless.id), ("start", quick.id), ("done", quick.id)]


@pytest.mark.slow
def test_job_past_its_time_limit_is_crashed_naming_it(write_suite, tmp_path):
    """SLURM's path at a job's time limit: submitit's signal handler (here 30 s before the
    local executor's 1 min) ends the job's function with its own error."""
    cell = expand(load_suite(write_suite(ENDLESS)))[0]
    (result,) = run_cells_submitit([cell], local_options(tmp_path, parameters={"timeout_min": 1}))
    assert result.status == "crashed"
    assert result.error.startswith(f"submitit job {result.env['submitit_job']} failed:")
    assert "timed-out and not checkpointable" in result.error
    assert "UncompletedJobError" in result.traceback  # the job's stderr


@pytest.mark.slow
def test_ctrl_c_cancels_every_job_not_back(write_suite, tmp_path):
    cells = expand(load_suite(write_suite(ENDLESS)))
    jobs, running = [], []  # the local executor's job id is its controller's pid

    def ctrl_c_once_both_cells_train() -> None:
        deadline = time.time() + 60
        while not all(worker_below(job) for job in jobs) and time.time() < deadline:
            time.sleep(0.2)
        running.extend(p for job in jobs for p in [job, *descendants(job)])
        os.kill(os.getpid(), signal.SIGINT)  # as a terminal sends it, to this process only

    def on_start(cell, job_id):
        jobs.append(job_id)
        if len(jobs) == len(cells):
            threading.Thread(target=ctrl_c_once_both_cells_train, daemon=True).start()

    with pytest.raises(KeyboardInterrupt):
        run_cells_submitit(cells, local_options(tmp_path), Hooks(on_start=on_start))
    assert len(running) >= 2 * 3, running  # each job's controller, its task and the cell's worker
    deadline = time.time() + 30
    while not all(gone(pid) for pid in running) and time.time() < deadline:
        time.sleep(0.2)
    assert all(gone(pid) for pid in running)


def worker_below(pid: int) -> bool:
    """Whether the job's task has started the cell's worker process."""
    def cmdline(p: int) -> bytes:
        try:
            return Path(f"/proc/{p}/cmdline").read_bytes()
        except OSError:
            return b""
    return any(b"optbench.engine.worker" in cmdline(p) for p in descendants(pid))


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (a worker in a session of its own included)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def test_slurm_values_reach_submitit_typed():
    assert parse_parameters(["cpus_per_task=8", "mem_gb=2.5", "slurm_partition=gpu",
                             "slurm_exclusive=true", 'slurm_setup=["module load cuda"]']) == {
        "cpus_per_task": 8, "mem_gb": 2.5, "slurm_partition": "gpu", "slurm_exclusive": True,
        "slurm_setup": ["module load cuda"]}
    # Text that only looks like a number stays text: a node list, a job name.
    assert parse_parameters(["slurm_exclude=007", "name=1e3"]) == {"slurm_exclude": "007",
                                                                   "name": "1e3"}


@pytest.mark.parametrize("extra,device,words", [
    (["--executor", "submitit-local", "--slurm", "slurm_partitio=gpu"], "cpu",
     ["--slurm slurm_partitio=gpu", "Unknown argument 'partitio'"]),
    (["--executor", "submitit-local", "--slurm", "cpus=8"], "cpu", ["--slurm cpus=8", "cpus_per_task"]),
    (["--executor", "submitit-local", "--slurm", "cpus_per_task=many"], "cpu", ["cpus_per_task", "many"]),
    (["--executor", "submitit-local", "--slurm", "partition"], "cpu", ["'partition'", "KEY=VALUE"]),
    (["--executor", "submitit-local", "--slurm", "nodes=2"], "cpu", ["--slurm nodes", "one node"]),
    (["--slurm", "slurm_partition=gpu"], "cpu", ["--slurm", "--executor slurm"]),
    (["--executor", "slurm"], "auto", ["device auto", "device: cuda", "device: cpu"]),
    (["--executor", "slurm"], "cpu", ["srun", "--executor submitit-local"]),
])
def test_bad_executor_input_is_one_line_exit_2(write_suite, tmp_path, monkeypatch, extra, device, words):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun here, even on a SLURM machine
    suite = write_suite(TWO_CELLS.replace("device: cpu", f"device: {device}"))
    result = runner.invoke(app, ["run", str(suite), "--db", str(tmp_path / "r.sqlite"),
                                 "--submitit-dir", str(tmp_path / "submitit"), *extra])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for word in words:
        assert word in result.output, word
    assert not list((tmp_path / "submitit").glob("*_submitted.pkl"))  # nothing was submitted

"""Ctrl-C and kill of a running `optbench run`: nothing finished is lost, no orphan keeps training."""

from __future__ import annotations

import pytest

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import TINY_SUITE

pytestmark = pytest.mark.slow  # signals to real child processes

SLOW_TINY = TINY_SUITE.replace("steps: 6", "steps: 40")


def start_run(tmp_path: Path, suite: Path, db: Path) -> subprocess.Popen:
    env = dict(os.environ, TMPDIR=str(tmp_path))  # the worker's files land here: findable in /proc
    return subprocess.Popen(
        [sys.executable, "-m", "optbench.cli", "run", str(suite), "--db", str(db),
         "--reports", str(tmp_path / "reports")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
        # A shell's background job inherits SIGINT ignored, and Python then never raises
        # KeyboardInterrupt: give the child the default disposition, as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_stored_runs(db: Path, n: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if db.exists():
            try:
                with sqlite3.connect(db) as conn:
                    if conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] >= n:
                        return
            except sqlite3.OperationalError:
                pass  # table not created yet
        time.sleep(0.2)
    raise AssertionError(f"no {n} stored runs within {timeout}s")


def workers_under(path: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "optbench.engine.worker" in cmdline and str(path) in cmdline:
            pids.append(int(proc.name))
    return pids


def stored_statuses(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT status FROM runs ORDER BY run_id")]


def test_ctrl_c_keeps_finished_cells_and_resume_skips_them(write_suite, tmp_path):
    suite, db = write_suite(SLOW_TINY, "slow.yaml"), tmp_path / "r.sqlite"
    proc = start_run(tmp_path, suite, db)
    wait_for_stored_runs(db, 1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "interrupted" in out and "Traceback" not in out
    done = stored_statuses(db)
    assert done and set(done) == {"ok"}
    time.sleep(0.5)
    assert workers_under(tmp_path) == []  # the running cell's process was stopped too
    again = subprocess.run(
        [sys.executable, "-m", "optbench.cli", "run", str(suite), "--db", str(db), "--only", "*/adamw/*",
         "--reports", str(tmp_path / "reports")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert again.returncode == 0 and "1 already stored, 0 to run" in again.stdout


def test_killed_runner_takes_its_worker_with_it(write_suite, tmp_path):
    suite, db = write_suite(SLOW_TINY, "slow.yaml"), tmp_path / "r.sqlite"
    proc = start_run(tmp_path, suite, db)
    wait_for_stored_runs(db, 1)
    deadline = time.time() + 30
    while not workers_under(tmp_path) and time.time() < deadline:
        time.sleep(0.1)
    assert workers_under(tmp_path), "the second cell's worker never started"
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while workers_under(tmp_path) and time.time() < deadline:
        time.sleep(0.2)
    assert workers_under(tmp_path) == []
    assert stored_statuses(db) == ["ok"]  # the finished cell survived the kill

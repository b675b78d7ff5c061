"""Run cells, each in its own subprocess; hand each result on the moment it ends.

Data flows one way: suite -> cells -> runner -> store. The parent never parses results
out of log text: the worker writes a JSON outcome file; stdout carries progress only.
Storing is the caller's (`run_cells`'s `on_done`), so the engine knows no store.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from optbench.config.suite import Cell
from optbench.engine.outcome import CellOutcome, RunResult
from optbench.engine.worker import EVENT_PREFIX

STDERR_TAIL_LINES = 20


@dataclass
class Hooks:
    """Callbacks for a live display (and for tests that need the child's pid)."""

    on_start: Callable[[Cell, int], None] = lambda cell, pid: None
    on_event: Callable[[Cell, dict], None] = lambda cell, event: None


def run_cell(cell: Cell, hooks: Hooks | None = None) -> RunResult:
    """Run one cell in a fresh Python process; always returns a RunResult."""
    hooks = hooks or Hooks()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="optbench-cell-") as tmp:
        cell_path, result_path = Path(tmp, "cell.pkl"), Path(tmp, "result.json")
        cell_path.write_bytes(pickle.dumps(cell))
        proc = subprocess.Popen(
            [sys.executable, "-m", "optbench.engine.worker", str(cell_path), str(result_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True, env=_child_env(), start_new_session=True,
        )
        hooks.on_start(cell, proc.pid)
        stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        drain = threading.Thread(target=lambda: stderr_tail.extend(proc.stderr), daemon=True)
        drain.start()
        try:
            timed_out = _pump_events(proc, cell, hooks, cell.defaults.timeout_s)
        except BaseException:  # Ctrl-C or anything else: never leave the child running
            _kill(proc)
            raise
        drain.join(timeout=5)
        outcome = _read_result(result_path, proc.returncode, stderr_tail, timed_out, cell)
    outcome.started_at = outcome.started_at or started
    outcome.ended_at = outcome.ended_at or time.time()
    return RunResult.of(cell, outcome)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _pump_events(proc: subprocess.Popen, cell: Cell, hooks: Hooks, timeout_s: float | None) -> bool:
    """Forward progress events until the child exits; True if it was killed for time.

    The time limit starts at the worker's "start" event, so a first-time tokenization or a
    slow model build does not count against the training loop's limit.
    """
    timer = None
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        _kill(proc)

    try:
        for line in proc.stdout:
            if not line.startswith(EVENT_PREFIX):
                continue
            event = json.loads(line[len(EVENT_PREFIX):])
            if event.get("event") == "start" and timeout_s and timer is None:
                timer = threading.Timer(timeout_s, expire)
                timer.daemon = True
                timer.start()
            hooks.on_event(cell, event)
        proc.wait()
    finally:
        if timer:
            timer.cancel()
    return timed_out.is_set()


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _read_result(path: Path, returncode: int, stderr_tail, timed_out: bool,
                 cell: Cell) -> CellOutcome:
    if path.exists() and returncode == 0:
        return CellOutcome.from_json(json.loads(path.read_text()))
    if timed_out:
        why = f"timed out after {cell.defaults.timeout_s:g} s (defaults.timeout_s)"
    elif returncode < 0:
        why = f"process killed by {signal.Signals(-returncode).name}"
    else:
        why = f"process exited with code {returncode}"
    tail = "".join(stderr_tail).strip()
    return CellOutcome("crashed", why, tail or None)


def run_cells(
    cells: list[Cell], hooks: Hooks | None = None,
    on_done: Callable[[Cell, RunResult], None] = lambda cell, result: None,
) -> list[RunResult]:
    """Run each cell in turn, calling `on_done` (e.g. to store it) the moment it ends; a
    failing cell is a result like any other and the rest go on."""
    results = []
    for cell in cells:
        result = run_cell(cell, hooks)
        on_done(cell, result)
        results.append(result)
    return results

"""Run cells, each in its own subprocess; hand each result on the moment it ends.

Data flows one way: suite -> cells -> runner -> store. The parent never parses results
out of log text: the worker writes a JSON outcome file; stdout carries progress only.
Storing is the caller's (`run_cells`'s `on_done`), so the engine knows no store.
"""

from __future__ import annotations

import json
import os
import pickle
import queue
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from optbench.config.suite import Cell
from optbench.engine import launch
from optbench.engine.isolation import child_env, module_command
from optbench.engine.outcome import CellOutcome, RunResult
from optbench.engine.slots import Slot, fits, machine_slots
from optbench.engine.worker import EVENT_PREFIX

STDERR_TAIL_LINES = 20

# Children running now, so that an interrupted --jobs run can stop every one of them; once
# stopping, no new child starts.
_RUNNING: set[subprocess.Popen] = set()
_RUNNING_LOCK = threading.Lock()
_STOPPING = threading.Event()


@dataclass
class Hooks:
    """Callbacks for a live display (and for tests that need the child's pid)."""

    on_start: Callable[[Cell, int], None] = lambda cell, pid: None
    on_event: Callable[[Cell, dict], None] = lambda cell, event: None


def run_cell(cell: Cell, hooks: Hooks | None = None, slot: Slot | None = None) -> RunResult:
    """Run one cell in a fresh Python process (in `slot`'s share of the machine when cells run
    side by side); always returns a RunResult."""
    hooks = hooks or Hooks()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="optbench-cell-") as tmp:
        cell_path, result_path = Path(tmp, "cell.pkl"), Path(tmp, "result.json")
        cell_path.write_bytes(pickle.dumps(cell))
        with _RUNNING_LOCK:  # an interrupted --jobs run either sees this child or stops it here
            if _STOPPING.is_set():
                raise KeyboardInterrupt
            proc = subprocess.Popen(
                _command(cell, cell_path, result_path, Path(tmp, "logs")),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                text=True, env=_child_env(slot), start_new_session=True,
            )
            _RUNNING.add(proc)
        hooks.on_start(cell, proc.pid)
        stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        drain = threading.Thread(target=lambda: stderr_tail.extend(proc.stderr), daemon=True)
        drain.start()
        try:
            timed_out = _pump_events(proc, cell, hooks, cell.defaults.timeout_s)
        except BaseException:  # Ctrl-C or anything else: never leave the child running
            _kill(proc)
            raise
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(proc)
        drain.join(timeout=5)
        returncode = proc.returncode
        if cell.launches_ranks and returncode != 0 and result_path.exists() and not timed_out:
            # Rank 0 writes the result after the last collective of the cell, when every rank
            # has measured and evaluated: a rank that then dies in gloo's teardown ("terminate
            # called without an active exception") took nothing from it.
            returncode = 0
        outcome = _read_result(result_path, returncode, stderr_tail, timed_out, cell)
        if (note := _json_or_none(launch.elsewhere_path(result_path))) and returncode == 0:
            ranks = (f"rank {note['first_rank']}" if note["first_rank"] == note["last_rank"]
                     else f"ranks {note['first_rank']}-{note['last_rank']}")
            outcome = CellOutcome("skipped", (
                f"{ranks} ran on this node; rank 0 ran on {note['rank0_host']} (node 0), whose "
                "optbench stores the result"))
        if cell.launches_ranks and outcome.status == "crashed" and not timed_out:
            outcome = _rank_failure(result_path, Path(tmp, "logs"), outcome)
    outcome.started_at = outcome.started_at or started
    outcome.ended_at = outcome.ended_at or time.time()
    return RunResult.of(cell, outcome)


def _command(cell: Cell, cell_path: Path, result_path: Path, logs: Path) -> list[str]:
    """The worker; for a sharded cell, its ranks under torchrun (optbench.engine.launch)."""
    if cell.launches_ranks:
        return module_command("optbench.engine.launch", str(cell.parallel.nproc), str(logs),
                              str(cell_path), str(result_path), f"optbench-{cell.fingerprint}")
    return module_command("optbench.engine.worker", str(cell_path), str(result_path))


def _child_env(slot: Slot | None = None) -> dict[str, str]:
    env = child_env(slot.env if slot else None)
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
            if (event := _event(line)) is None:
                continue
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


# How long torchrun gets to stop its ranks on SIGTERM (it sends them SIGTERM, then SIGKILL after
# 30 s to one that ignores it) before its group is killed outright; ranks that were merely
# waiting then exit within a second on their own, as they watch their parent.
TERMINATE_GRACE_S = 35.0


def _event(line: str) -> dict | None:
    """The progress event on a line of the child's stdout, else None. torchrun's tee puts its
    rank header in front ('[default0]:@optbench {...}')."""
    if line.startswith("[") and "]:" in line:
        line = line.split("]:", 1)[1]
    if not line.startswith(EVENT_PREFIX):
        return None
    return json.loads(line[len(EVENT_PREFIX):])


def _kill(proc: subprocess.Popen) -> None:
    """Stop the child's process group: SIGTERM first, which torchrun passes on to its ranks
    (they run in sessions of their own), then SIGKILL."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, TERMINATE_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue
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


def _rank_failure(result_path: Path, logs: Path, crashed: CellOutcome) -> CellOutcome:
    """What ended a sharded cell. A rank torchrun saw fail without writing an outcome (killed,
    or dead before it could say why) is the cause: `crashed`, with the tail of its stderr. Else
    the first outcome a failing rank wrote (its error and traceback): the others' errors
    ("connection reset by peer") follow from it."""
    failures = _json_or_none(launch.failure_path(result_path)) or []
    written = {int(p.name.rpartition(".rank")[2]): p
               for p in result_path.parent.glob(result_path.name + ".rank*")
               if p.name.rpartition(".rank")[2].isdigit()}
    silent = [f for f in failures if f["rank"] not in written]
    if silent:
        first = silent[0]
        how = (f"killed by {first['signal']}" if first.get("signal")
               else f"exited with code {first['exitcode']}")
        tail = _tail(next(logs.glob(f"**/attempt_*/{first['local_rank']}/stderr.log"), None))
        return CellOutcome("crashed", f"rank {first['rank']} {how}", tail or crashed.traceback)
    for rank, path in sorted(written.items(), key=lambda item: item[1].stat().st_mtime):
        if (doc := _json_or_none(path)) is not None:
            outcome = CellOutcome.from_json(doc)
            outcome.error = f"rank {rank}: {outcome.error}"
            return outcome
    return crashed


def _json_or_none(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tail(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    return "\n".join(lines[-STDERR_TAIL_LINES:]).strip() or None


def run_cells(
    cells: list[Cell], hooks: Hooks | None = None,
    on_done: Callable[[Cell, RunResult], None] = lambda cell, result: None, jobs: int = 1,
) -> list[RunResult]:
    """Run the cells, calling `on_done` (e.g. to store it) in this thread the moment each ends;
    a failing cell is a result like any other and the rest go on. With `jobs` > 1, that many
    run at once, each in its own share of the machine (engine.slots); a cell that needs more
    GPUs than a share holds runs after them, alone."""
    if jobs == 1:
        results = []
        for cell in cells:
            result = run_cell(cell, hooks)
            on_done(cell, result)
            results.append(result)
        return results
    slots = machine_slots(jobs, cells)
    side_by_side = [c for c in cells if fits(c, slots[0])]
    alone = [c for c in cells if not fits(c, slots[0])]
    results = _run_side_by_side(side_by_side, slots, hooks, on_done)
    return results + run_cells(alone, hooks, on_done)


def _run_side_by_side(cells: list[Cell], slots: list[Slot], hooks: Hooks | None,
                      on_done: Callable[[Cell, RunResult], None]) -> list[RunResult]:
    free: queue.Queue[Slot] = queue.Queue()
    for slot in slots:
        free.put(slot)

    def in_a_slot(cell: Cell) -> RunResult:
        slot = free.get()
        try:
            return run_cell(cell, hooks, slot)
        finally:
            free.put(slot)

    results = []
    pool = ThreadPoolExecutor(max_workers=len(slots), thread_name_prefix="optbench-job")
    try:
        futures = {pool.submit(in_a_slot, cell): cell for cell in cells}
        for future in as_completed(futures):
            on_done(futures[future], future.result())
            results.append(future.result())
    except BaseException:  # Ctrl-C (or a failing on_done): start no more cells, stop those running
        _stop_all(pool)
        raise
    pool.shutdown()
    return results


def _stop_all(pool: ThreadPoolExecutor) -> None:
    pool.shutdown(wait=False, cancel_futures=True)
    with _RUNNING_LOCK:
        _STOPPING.set()
        running = list(_RUNNING)
    stoppers = [threading.Thread(target=_kill, args=(proc,), daemon=True) for proc in running]
    for t in stoppers:
        t.start()
    for t in stoppers:  # a plain worker dies at once; torchrun gets its grace
        t.join(TERMINATE_GRACE_S + 5)
    pool.shutdown(wait=True)
    _STOPPING.clear()

"""Child-process entry point: `python -m optbench.engine.worker CELL.pkl RESULT.json`.

Runs one cell in a fresh process so its memory never leaks into the next measurement
and a crash cannot take the suite down. Progress goes to stdout as JSON lines (for the
live display only); the result goes to RESULT.json, written atomically at the end.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import threading
import time
import traceback
from pathlib import Path

from optbench.engine.outcome import CellOutcome
from optbench.errors import informative_line

# A line on stdout that starts with this is a progress event; anything else is noise
# from libraries and is passed through untouched.
EVENT_PREFIX = "@optbench "


def emit(event: dict) -> None:
    sys.stdout.write(EVENT_PREFIX + json.dumps(event) + "\n")
    sys.stdout.flush()


def exit_with_parent(poll_s: float = 1.0) -> None:
    """Die when the runner dies (e.g. it was killed), instead of training on as an orphan."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def main(cell_path: str, result_path: str) -> int:
    exit_with_parent()
    started = time.time()
    cell = pickle.loads(Path(cell_path).read_bytes())
    outcome = run_guarded(cell)
    outcome.started_at, outcome.ended_at = started, time.time()
    tmp = Path(result_path + ".tmp")
    tmp.write_text(json.dumps(outcome.to_json()))
    os.replace(tmp, result_path)
    return 0


def run_guarded(cell) -> CellOutcome:
    """The cell trained (or, on `device: meta`, traced), with each way of failing mapped to a
    status (oom, error)."""
    import torch

    from optbench.engine.measure import environment

    env = environment(torch.device(cell.defaults.device))
    try:
        outcome = _run(cell)
    except Exception as exc:  # the message is the result: keep it, and the traceback
        if is_oom(exc):
            outcome = CellOutcome("oom", _one_line(exc))
        else:
            outcome = CellOutcome("error", f"{type(exc).__name__}: {_one_line(exc)}",
                                  traceback.format_exc())
    outcome.env = env
    return outcome


def _run(cell) -> CellOutcome:
    if cell.defaults.device == "meta":
        from optbench.engine.trace import estimate_cell

        return estimate_cell(cell, emit)
    from optbench.engine.train import train_cell

    return train_cell(cell, emit)


def is_oom(exc: Exception) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    # The CPU allocator raises a plain RuntimeError; its message is the only signal.
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def _one_line(exc: BaseException) -> str:
    return informative_line(str(exc)) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))

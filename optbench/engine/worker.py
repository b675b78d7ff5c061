"""Child-process entry point: `python -m optbench.engine.worker CELL.pkl RESULT.json`.

Runs one cell in a fresh process so its memory never leaks into the next measurement
and a crash cannot take the suite down. Progress goes to stdout as JSON lines (for the
live display only); the result goes to RESULT.json, written atomically at the end.

A sharded cell runs this on every rank under torchrun (`optbench.engine.launch`): each rank
joins the process group, rank 0 writes RESULT.json, and a rank that fails writes its outcome
to RESULT.json.rankN and exits 1, so torchrun stops the others at once instead of leaving
them waiting in a collective.
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


# Outcomes a rank reaches on its own; the others may be blocked in a collective meanwhile.
RANK_FAILURES = ("error", "oom")


def main(cell_path: str, result_path: str) -> int:
    exit_with_parent()
    started = time.time()
    cell = pickle.loads(Path(cell_path).read_bytes())
    rank = _join(cell)
    outcome = run_guarded(cell)
    outcome.started_at, outcome.ended_at = started, time.time()
    if rank is not None and outcome.status in RANK_FAILURES:
        write_outcome(outcome, rank_result_path(result_path, rank))
        return 1  # torchrun ends the cell's other ranks
    if rank in (None, 0):
        write_outcome(outcome, result_path)
    elif _first_on_another_node(rank):
        _note_elsewhere(result_path, rank)
    if rank is not None:
        from optbench.engine.parallel import leave_process_group

        leave_process_group()
    return 0


def _join(cell) -> int | None:
    """This rank's number in a sharded cell (after joining its group), None for one process."""
    if not cell.launches_ranks:
        return None
    import torch

    from optbench.engine.parallel import join_process_group

    from optbench.engine.parallel import ranks_per_node

    # A cell that will be skipped for want of GPUs still joins (over gloo) to say so.
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    on_gpus = cell.defaults.device == "cuda" and ranks_per_node(cell.parallel.nproc) <= gpus
    return join_process_group("cuda" if on_gpus else "cpu").rank


def _first_on_another_node(rank: int) -> bool:
    """This node's first rank, on a node other than rank 0's (a cell spread over nodes)."""
    return os.environ.get("LOCAL_RANK") == "0" and rank != 0


def _note_elsewhere(result_path: str, rank: int) -> None:
    from optbench.engine.launch import elsewhere_path

    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    note = {"rank0_host": os.environ.get("MASTER_ADDR", "?"), "first_rank": rank,
            "last_rank": rank + local - 1}
    path = elsewhere_path(result_path)
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(note))
    os.replace(tmp, path)


def rank_result_path(result_path: str | Path, rank: int) -> Path:
    """Where a failing rank of a sharded cell writes its own outcome."""
    return Path(f"{result_path}.rank{rank}")


def write_outcome(outcome: CellOutcome, path: str | Path) -> None:
    """Atomically: the file is whole or absent."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(outcome.to_json()))
    os.replace(tmp, path)


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
        from optbench.engine.rank_trace import estimate_cell

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

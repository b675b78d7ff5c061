"""What a run would do, before it does it (`optbench run --dry-run`): which cells are stored, and
how long the rest should take, from the stored step times of runs like them.

A cell's time is estimated from the most alike stored run with a result: the same model, seq
len, batch, strategy and device, and the same optimizer if one ran (a trial of it: its hparams
barely change the step time), else any optimizer. That run's wall time is split into a fixed
part (start-up, data, evaluation) and its steps (median step time), and the steps are scaled to
the cell's. Cells with nothing alike stored are counted as unknown, not guessed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from optbench.config.suite import Cell
from optbench.results.store import ResultStore, StoredRun


@dataclass
class PlannedCell:
    cell: Cell
    stored: bool
    seconds: float | None  # expected wall time; None when stored or nothing alike is
    basis: str = ""  # the stored run the estimate comes from


@dataclass
class Plan:
    cells: list[PlannedCell]

    @property
    def stored(self) -> int:
        return sum(p.stored for p in self.cells)

    @property
    def todo(self) -> list[PlannedCell]:
        return [p for p in self.cells if not p.stored]

    @property
    def known_seconds(self) -> float:
        return sum(p.seconds for p in self.todo if p.seconds is not None)

    @property
    def unknown(self) -> int:
        return sum(p.seconds is None for p in self.todo)


def _shape(cell_or_config) -> tuple:
    """What sets a step's time besides the optimizer."""
    d = cell_or_config["defaults"]
    parallel = d.get("parallel") or {}
    return (d.get("batch_size"), d.get("grad_accum", 1), d.get("device"), d.get("dtype"),
            parallel.get("strategy", "none"), parallel.get("nproc", 1))


def _wall(run: StoredRun) -> float | None:
    if run.started_at is None or run.ended_at is None:
        return None
    return max(0.0, run.ended_at - run.started_at)


def cell_seconds(cell: Cell, alike: list[StoredRun]) -> tuple[float | None, str]:
    """The cell's expected wall time and the run it is read from; (None, '') when none is alike."""
    shape = _shape(cell.config)
    same = [r for r in alike if (r.model, int(r.seq_len)) == (cell.model, cell.seq_len)
            and _shape(r.config) == shape and _wall(r) is not None and r.usable]
    same.sort(key=lambda r: (r.optimizer_name != cell.optimizer.name, -r.run_id))
    if not same:
        return None, ""
    run = same[0]
    steps = int(run.config["defaults"].get("steps", 0)) or 1
    step_s = run.metric("step_ms") / 1e3
    if not math.isfinite(step_s):  # no timed steps stored: scale the whole run
        return _wall(run) * cell.defaults.steps / steps, run.cell_id
    fixed = max(0.0, _wall(run) - steps * step_s)
    return fixed + cell.defaults.steps * step_s, run.cell_id


def plan(cells: list[Cell], store: ResultStore, rerun: bool) -> Plan:
    models = {c.model for c in cells}
    alike = store.runs(models=models, seq_lens={c.seq_len for c in cells}) if cells else []
    planned = []
    for cell in cells:
        stored = not rerun and store.has_result(cell.fingerprint)
        seconds, basis = (None, "") if stored else cell_seconds(cell, alike)
        planned.append(PlannedCell(cell, stored, seconds, basis))
    return Plan(planned)


def plan_without_store(cells: list[Cell]) -> Plan:
    """The plan when no store exists yet: every cell to run, no time known."""
    return Plan([PlannedCell(cell, False, None) for cell in cells])

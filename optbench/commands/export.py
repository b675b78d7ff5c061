"""`optbench export` (stored runs to W&B, TensorBoard, CSV, Parquet) and a suite's `log:`
(each cell streamed to W&B / TensorBoard while `run` trains it)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape

from optbench.commands.common import ensure_writable_dir, ensure_writable_file, is_suite_file
from optbench.config.loader import load_suite
from optbench.config.suite import Cell, LogTo, expand
from optbench.engine.outcome import RunResult
from optbench.errors import OptbenchError, informative_line, require_utf8
from optbench.render import export as out
from optbench.results.store import ResultStore, StoredRun, latest, runs_frame


@dataclass(frozen=True)
class Destinations:
    """What `export` was asked to write."""

    wandb_project: str | None = None  # --wandb [--project P]
    wandb_offline: bool = False
    wandb_dir: Path | None = None
    tensorboard: Path | None = None
    csv: Path | None = None
    parquet: Path | None = None

    def any(self) -> bool:
        return any(v is not None for v in (self.wandb_project, self.tensorboard, self.csv,
                                           self.parquet))


MUST_BE_TEXT = ", which it must be here"


def run_export(suite_arg: str | None, db: Path, reports_dir: Path, to: Destinations,
               console) -> int:
    if not to.any():
        raise OptbenchError("export: name a destination: --wandb, --tensorboard DIR, --csv FILE "
                            "or --parquet FILE")
    # TensorBoard, W&B and pyarrow take paths as UTF-8 text, and suite names are stored as
    # such: a name of other bytes is one line here, not a traceback from their writers.
    if to.parquet is not None:
        require_utf8(str(to.parquet), "--parquet", MUST_BE_TEXT)
    if suite_arg is not None and not is_suite_file(suite_arg):
        require_utf8(suite_arg, "SUITE", MUST_BE_TEXT)
    for path, option in ((to.csv, "--csv"), (to.parquet, "--parquet")):
        ensure_writable_file(path, option, store=db)
        ensure_writable_file(path and out.curves_path(path), f"{option} (its curves beside it)",
                             store=db)
    for directory, option in ((to.tensorboard, "--tensorboard"), (to.wandb_dir, "--wandb-dir")):
        if directory is not None:
            require_utf8(str(directory), option, MUST_BE_TEXT)
            ensure_writable_dir(directory, option)
    if not Path(db).exists():
        raise OptbenchError(f"{db}: no results store here; run a suite first")
    store = ResultStore(db)
    runs, suite_name = _selected(store, suite_arg)
    if not runs:
        what = f"suite '{suite_name}'" if suite_name else "the store"
        console.print(f"no stored results for {escape(what)}; nothing to export")
        return 0
    frame = runs_frame(runs)
    curves = store.curves(frame["run_id"])
    for path, fmt in ((to.csv, "csv"), (to.parquet, "parquet")):
        if path is not None:
            _write_table(frame, path, fmt)
            _write_table(curves, out.curves_path(path), fmt)
            console.print(f"{len(frame)} runs: {escape(str(path))} (curves: "
                          f"{escape(str(out.curves_path(path)))})", highlight=False)
    records = [_record(run, curves, reports_dir) for run in runs]
    for destination, label in _destinations(to):
        written = [out.export_record(destination, r) for r in records]
        console.print(f"{label}: {len(written)} runs, in {escape(_common_root(written))}",
                      highlight=False)
    return 0


def _write_table(frame, path: Path, fmt: str) -> None:
    try:
        out.write_table(frame, path, fmt)
    except OSError as exc:  # checked writable at the start: the disk filled, a mount went
        raise OptbenchError(f"{path}: cannot write ({exc.strerror})") from None


def _selected(store: ResultStore, suite_arg: str | None) -> tuple[list[StoredRun], str | None]:
    """A suite file: the latest run of each of its cells (what its report shows); a suite name:
    the latest run of each cell stored under it; nothing: every stored run."""
    if suite_arg is None:
        return store.runs(), None
    if is_suite_file(suite_arg):
        suite = load_suite(suite_arg)
        by_fp = {c.fingerprint: c for c in expand(suite)}
        runs = store.latest_runs(by_fp)
        for run in runs:  # under this suite's names, as its report shows a run stored by another
            cell = by_fp[run.fingerprint]
            run.suite, run.cell_id, run.optimizer = suite.name, cell.id, cell.optimizer.display
        return runs, suite.name
    runs = store.runs(suite=suite_arg)
    return latest(runs, key=lambda r: r.cell_id), suite_arg


def _record(run: StoredRun, curves, reports_dir: Path) -> out.CellRecord:
    rows = curves[curves["run_id"] == run.run_id]
    return out.CellRecord(
        suite=run.suite, cell_id=run.cell_id, run_id=run.run_id,
        config={**run.config, "status": run.status, "environment": run.env},
        tokens_per_step=run.tokens_per_step, metrics=run.metrics, status=run.status,
        error=informative_line(run.error) or None,
        curve=[(int(r.step), float(r.loss), None if r.lr != r.lr else float(r.lr))
               for r in rows.itertuples()],
        figures=_figures(Path(reports_dir) / run.suite, run.model),
    )


def _figures(report_dir: Path, model: str) -> list[Path]:
    """The suite report's PNGs of this model (loss_llama_9m.png, timeline_llama_9m_seq256.png)."""
    if not report_dir.is_dir():
        return []
    return sorted(p for p in report_dir.glob("*.png")
                  if p.stem.endswith(f"_{model}") or f"_{model}_" in p.stem)


def _destinations(to: Destinations):
    if to.wandb_project is not None:
        yield out.WandbDestination(to.wandb_project, to.wandb_offline, to.wandb_dir), "W&B" + (
            " (offline)" if to.wandb_offline else "")
    if to.tensorboard is not None:
        yield out.TensorBoardDestination(to.tensorboard), "TensorBoard"


def _common_root(paths: list[str]) -> str:
    return os.path.commonpath(paths) if paths else ""


# --- a suite's `log:`: streamed while running ---------------------------------------------


class StreamingLog:
    """The runner's progress events and finished results into the suite's `log:` destinations.
    A destination that fails is reported once and dropped: the suite goes on, and every result
    stays in the store (`optbench export` can send it later). With `run --jobs N` the events of
    several cells arrive from several threads: the lock guards the bookkeeping only, never a
    destination's network or disk work, so one slow upload does not hold the other cells."""

    def __init__(self, log: LogTo, console):
        self.console, self.lock = console, threading.Lock()
        self.destinations = []
        if log.wandb is not None:
            if log.wandb.dir:
                ensure_writable_dir(Path(log.wandb.dir), "log.wandb.dir")
            self.destinations.append(("W&B", out.WandbDestination(
                log.wandb.project, log.wandb.offline, log.wandb.dir or None)))
        if log.tensorboard:
            ensure_writable_dir(Path(log.tensorboard), "log.tensorboard")
            self.destinations.append(("TensorBoard", out.TensorBoardDestination(log.tensorboard)))
        self.open: dict[tuple[str, str], out.OpenRun] = {}

    def __bool__(self) -> bool:
        return bool(self.destinations)

    def on_event(self, cell: Cell, event: dict) -> None:
        if event.get("event") == "start":
            self._each(cell, lambda label, d: self._put(label, cell, d.open(_live_record(cell))))
        elif event.get("event") == "step":
            tokens = event["step"] * cell.tokens_per_step

            def log(label, destination):
                run = self._get(label, cell)
                if run is not None:
                    run.log_step(event["step"], tokens, event["loss"], None)
            self._each(cell, log)

    def on_done(self, cell: Cell, result: RunResult, run_id: int) -> None:
        """The stored result closes the cell's run: its metrics, the store's run id, status."""
        def finish(label, destination):
            run = self._pop(label, cell)
            if run is None and result.status == "skipped":
                return  # it never started: nothing ran, nothing to show
            if run is None:  # a crash before step 1: a run that says so
                run = destination.open(_live_record(cell))
            run.close({**result.metrics, "run_id": run_id}, [], result.status,
                      informative_line(result.error) or None)
        self._each(cell, finish)

    def close_all(self, status: str = "interrupted") -> None:
        """Close every run still open (Ctrl-C, a failed batch of jobs), so W&B finishes them
        and TensorBoard flushes their events."""
        with self.lock:
            left, self.open = list(self.open.values()), {}
        for run in left:
            try:
                run.close({}, [], status)
            except Exception:  # noqa: BLE001  (closing is best effort on the way out)
                pass

    def _put(self, label: str, cell: Cell, run: out.OpenRun) -> None:
        with self.lock:
            self.open[(label, cell.id)] = run

    def _get(self, label: str, cell: Cell) -> out.OpenRun | None:
        with self.lock:
            return self.open.get((label, cell.id))

    def _pop(self, label: str, cell: Cell) -> out.OpenRun | None:
        with self.lock:
            return self.open.pop((label, cell.id), None)

    def _each(self, cell: Cell, action) -> None:
        with self.lock:
            destinations = list(self.destinations)
        for label, destination in destinations:
            try:
                action(label, destination)
            except Exception as exc:  # a logging backend must never stop the suite
                with self.lock:
                    if (label, destination) not in self.destinations:
                        continue  # another thread dropped it already and said so
                    self.destinations.remove((label, destination))
                self.console.print(f"[yellow]log: {label} stopped at {escape(cell.id)}:[/] "
                                   f"{escape(informative_line(f'{type(exc).__name__}: {exc}'))}"
                                   "; results are still stored (optbench export sends them "
                                   "later)", highlight=False)


def _live_record(cell: Cell) -> out.CellRecord:
    return out.CellRecord(suite=cell.suite, cell_id=cell.id, run_id=None, config=cell.config,
                          tokens_per_step=cell.tokens_per_step)

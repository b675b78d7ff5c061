"""`optbench run`, `report` and `validate`: a suite's grid run into the store, and its report."""

from __future__ import annotations

import fnmatch
from pathlib import Path

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from optbench.commands.common import (ensure_writable_dir, pending_cells, run_into_store,
                                      store_kept_results)
from optbench.commands.export import StreamingLog
from optbench.commands.provenance import command_line
from optbench.config.loader import load_suite
from optbench.config.suite import Cell, Suite, expand
from optbench.errors import OptbenchError
from optbench.metrics import NOT_FAILED, RESULT_STATUSES
from optbench.render import report
from optbench.engine.slots import machine_slots
from optbench.engine.slurm import SubmititOptions, check_options
from optbench.results import tuning
from optbench.results.plan import plan, plan_without_store
from optbench.results.store import ResultStore, runs_frame


def select_cells(cells: list[Cell], suite: Suite, only: str | None) -> list[Cell]:
    if only is None:
        return cells
    chosen = [c for c in cells if fnmatch.fnmatchcase(c.id, only)]
    if not chosen:
        ids = ", ".join(c.id for c in cells[:6]) + (", ..." if len(cells) > 6 else "")
        raise OptbenchError(f"--only '{only}' matches no cell of suite '{suite.name}'; its cells: {ids}")
    return chosen


def run_suite(suite_path: Path, db: Path, reports_dir: Path, *, rerun: bool, only: str | None,
              console: Console, jobs: int = 1, executor: SubmititOptions | None = None) -> int:
    """Run what is not stored yet (in local processes, or as submitit jobs with `executor`),
    then write the suite's report; the exit code."""
    check_jobs(jobs)
    ensure_writable_dir(Path(reports_dir), "--reports")  # not after minutes of training
    suite = load_suite(suite_path)
    _check_device(suite, executor)
    cells = expand(suite)
    chosen = select_cells(cells, suite, only)
    store = ResultStore(db)
    store_kept_results(store, console)
    todo = pending_cells(chosen, store, rerun)
    if executor is not None:
        check_options(executor, todo)  # an unknown --slurm parameter fails before any submission
    how = _jobs_note(jobs, todo) if executor is None else _executor_note(executor, todo)
    console.print(
        f"suite [bold]{escape(suite.name)}[/]: {len(chosen)} cells, {len(chosen) - len(todo)} already"
        f" stored, {len(todo)} to run{how} · results in {escape(str(db))}",
        highlight=False,
    )
    stream = StreamingLog(suite.log, console)  # the suite's `log:` (W&B, TensorBoard), if any
    try:
        results = run_into_store(todo, store, console, jobs=jobs, executor=executor,
                                 stream=stream)
    except KeyboardInterrupt:
        cancelled = " · jobs not back yet were cancelled" if executor is not None else ""
        console.print(f"[yellow]interrupted[/]: finished cells are stored in {escape(str(db))};"
                      f" run again to resume{cancelled}")
        return 130
    finally:
        stream.close_all()  # runs a Ctrl-C or an error left open: finished, flushed
    # The report covers the whole suite, not just the cells this --only run touched.
    write_suite_report(suite, cells, store, reports_dir, console)
    failed = [r for r in results if r.status not in RESULT_STATUSES]
    if failed:
        console.print(f"[yellow]{len(failed)} of {len(results)} cells did not finish ok[/] (see the report)")
    # Exit 1 when a cell failed, so scripts and CI notice; a device skip is not a failure.
    return 1 if any(r.status not in NOT_FAILED for r in results) else 0


def _check_device(suite: Suite, executor: SubmititOptions | None) -> None:
    """`device: auto` would be resolved here, on the login node (usually without a GPU), not on
    the compute node the cell runs on."""
    if executor is not None and executor.cluster == "slurm" and suite.defaults.device == "auto":
        raise OptbenchError(f"suite '{suite.name}': device auto would be resolved on this login"
                            " node, not on the compute node: set `device: cuda` or `device: cpu`"
                            " under defaults for --executor slurm")


def _executor_note(executor: SubmititOptions, todo: list[Cell]) -> str:
    """' · as SLURM jobs, at most 4 in flight · logs in results/submitit'."""
    if not todo:
        return ""
    cap = f", at most {executor.max_in_flight} in flight" if executor.max_in_flight else ""
    ignored = executor.ignored()
    skip = f" · ignored here (SLURM only): {', '.join(ignored)}" if ignored else ""
    return (f" · as {executor.label} jobs{cap} · logs in {escape(str(executor.folder))}"
            f"{escape(skip)}")


def check_jobs(jobs: int) -> None:
    """Refused at once, even when every cell is stored and nothing would run."""
    if jobs < 1:
        raise OptbenchError(f"--jobs {jobs}: must be 1 or more")


def _jobs_note(jobs: int, todo: list[Cell]) -> str:
    """' · 2 at a time, 1 CPU thread each' under --jobs (refused here when it cannot be)."""
    if jobs == 1 or not todo:
        return ""
    slot = machine_slots(jobs, todo)[0]
    return f" · {jobs} at a time, {escape(slot.describe())} each"


def dry_run_suite(suite_path: Path, db: Path, *, rerun: bool, only: str | None, jobs: int,
                  console: Console) -> None:
    """The cells, which are stored, and the time the rest should take; nothing is run."""
    check_jobs(jobs)
    suite = load_suite(suite_path)
    chosen = select_cells(expand(suite), suite, only)
    store = ResultStore(db) if Path(db).exists() else None
    planned = plan(chosen, store, rerun) if store else plan_without_store(chosen)
    table = Table("Cell", "Fingerprint", "Stored", "Estimate", "From", box=box.SIMPLE_HEAD)
    for p in planned.cells:
        estimate = "—" if p.stored else ("unknown" if p.seconds is None else _duration(p.seconds))
        table.add_row(escape(p.cell.id), p.cell.fingerprint[:8], "yes" if p.stored else "no",
                      estimate, escape(p.basis))
    console.print(table)
    todo = planned.todo
    line = (f"suite [bold]{escape(suite.name)}[/]: {len(planned.cells)} cells, {planned.stored}"
            f" already stored, {len(todo)} to run{_jobs_note(jobs, [p.cell for p in todo])}")
    known = len(todo) - planned.unknown
    if known:
        line += (f" · about {_duration(planned.known_seconds / jobs)} for the {known} with a"
                 " stored run alike" + (f" (run {jobs} at a time; cells slow each other)"
                                        if jobs > 1 else ""))
    if planned.unknown:
        line += f" · {planned.unknown} with nothing alike stored: time unknown"
    console.print(line + " · nothing run (--dry-run)", highlight=False)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def report_suite(suite_path: Path, db: Path, reports_dir: Path, console: Console) -> None:
    ensure_writable_dir(Path(reports_dir), "--reports")
    if not Path(db).exists():
        raise OptbenchError(f"{db}: no results store here; run the suite first (optbench run SUITE --db {db})")
    suite = load_suite(suite_path)
    write_suite_report(suite, expand(suite), ResultStore(db), reports_dir, console)


def write_suite_report(suite: Suite, cells: list[Cell], store: ResultStore, reports_dir: Path,
                       console: Console) -> None:
    by_fp = {c.fingerprint: c for c in cells}
    runs = store.latest_runs(by_fp)
    if not runs:
        console.print("no stored results for this suite yet; nothing to report")
        return
    for run in runs:  # show each result under the suite's current cell id and label
        run.cell_id, run.optimizer = by_fp[run.fingerprint].id, by_fp[run.fingerprint].optimizer.display
    frame = runs_frame(runs)  # one run per cell: latest_runs chose it
    for table in report.rich_tables(frame):
        console.print(table)
    out = Path(reports_dir) / suite.name
    paths = report.write_report(frame, store.curves(frame["run_id"]), out,
                                title=f"optbench · {suite.name}", description=suite.description,
                                command=command_line(), store=str(store.path),
                                tuning=tuning.tuning_frame(runs),
                                sensitivity=tuning.sensitivity_frame(runs),
                                timelines=store.timelines(frame["run_id"]))
    console.print(f"report: {escape(str(out / 'summary.md'))} (+{len(paths) - 1} plots)",
                  highlight=False)


def validate_suites(paths: list[Path], console: Console) -> None:
    """Load and expand each suite (every check short of running); one ok line each."""
    for path in paths:
        suite = load_suite(path)
        cells = expand(suite)
        console.print(f"[green]ok[/] {escape(str(path))}: suite '{escape(suite.name)}', "
                      f"{len(cells)} cells", highlight=False)

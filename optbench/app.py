"""What the `run` and `report` commands do, with a live Rich display; cli.py stays thin."""

from __future__ import annotations

import fnmatch
from pathlib import Path

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from optbench.errors import OptbenchError
from optbench.runner import Hooks, pending_cells, run_cells
from optbench.store import RESULT_STATUSES, ResultStore, RunResult
from optbench.optimizers import resolve_hparams
from optbench.suite import Cell, Suite, expand, load_suite


def select_cells(suite: Suite, only: str | None) -> list[Cell]:
    cells = list(expand(suite))
    if only is None:
        return cells
    chosen = [c for c in cells if fnmatch.fnmatchcase(c.id, only)]
    if not chosen:
        ids = ", ".join(c.id for c in cells[:6]) + (", ..." if len(cells) > 6 else "")
        raise OptbenchError(f"--only '{only}' matches no cell of suite '{suite.name}'; its cells: {ids}")
    return chosen


def run_suite(suite_path: Path, db: Path, reports_dir: Path, *, rerun: bool, only: str | None,
              console: Console) -> int:
    suite = load_suite(suite_path)
    cells = select_cells(suite, only)
    store = ResultStore(db)
    todo = pending_cells(cells, store, rerun)
    console.print(
        f"suite [bold]{suite.name}[/]: {len(cells)} cells, {len(cells) - len(todo)} already stored,"
        f" {len(todo)} to run · results in {db}", highlight=False,
    )
    try:
        with LiveProgress(console, len(todo)) as live:
            results = run_cells(todo, store, hooks=live.hooks, on_done=live.done)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/]: finished cells are stored in {db}; run again to resume")
        return 130
    # The report covers the whole suite, not just the cells this --only run touched.
    _write_report(suite, list(expand(suite)), store, reports_dir, console, f"optbench run {suite_path}")
    failed = [r for r in results if r.status not in RESULT_STATUSES]
    if failed:
        console.print(f"[yellow]{len(failed)} of {len(results)} cells did not finish ok[/] (see the report)")
    # Exit 1 when a cell failed, so scripts and CI notice; a device skip is not a failure.
    return 1 if any(r.status not in (*RESULT_STATUSES, "skipped") for r in results) else 0


def run_with_progress(cells: list[Cell], store: ResultStore, console: Console) -> list[RunResult]:
    """Run and store `cells` under the live progress bar (nothing shown when there are none)."""
    if not cells:
        return []
    with LiveProgress(console, len(cells)) as live:
        return run_cells(cells, store, hooks=live.hooks, on_done=live.done)


def report_suite(suite_path: Path, db: Path, reports_dir: Path, console: Console) -> None:
    if not Path(db).exists():
        raise OptbenchError(f"{db}: no results store here; run the suite first (optbench run SUITE --db {db})")
    suite = load_suite(suite_path)
    _write_report(suite, list(expand(suite)), ResultStore(db), reports_dir, console,
                  f"optbench report {suite_path}")


def _write_report(suite: Suite, cells: list[Cell], store: ResultStore, reports_dir: Path,
                  console: Console, command: str) -> None:
    from optbench import report

    runs = store.latest_runs(c.fingerprint for c in cells)
    if not runs.empty:  # show each result under the suite's current cell id and label
        by_fp = {c.fingerprint: c for c in cells}
        runs["cell_id"] = runs["fingerprint"].map(lambda fp: by_fp[fp].id)
        runs["optimizer"] = runs["fingerprint"].map(lambda fp: by_fp[fp].optimizer.display)
    if runs.empty:
        console.print("no stored results for this suite yet; nothing to report")
        return
    curves = store.curves(runs["run_id"])
    for table in report.rich_tables(runs):
        console.print(table)
    out = Path(reports_dir) / suite.name
    provenance = f"Command: `{command}`; results store `{store.path}`."
    paths = report.write_report(runs, curves, out, title=f"optbench · {suite.name}",
                                description=suite.description, provenance=provenance)
    console.print(f"report: {out / 'summary.md'} (+{len(paths) - 1} plots)", highlight=False)


class LiveProgress:
    """A bar over the grid (cell i/N, current cell, elapsed, ETA) and a per-step status line."""

    def __init__(self, console: Console, total: int):
        self.console, self.total, self.index = console, total, 0
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            TextColumn("{task.fields[step]}"), console=console,
        )
        self.task = None
        self.hooks = Hooks(on_start=self._start, on_event=self._event)

    def __enter__(self) -> "LiveProgress":
        self.progress.__enter__()
        self.task = self.progress.add_task("starting", total=self.total, step="")
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def _start(self, cell: Cell, pid: int) -> None:
        self.index += 1
        self.progress.update(self.task, description=f"[{self.index}/{self.total}] {cell.id}", step="starting")

    def _event(self, cell: Cell, event: dict) -> None:
        if event.get("event") != "step":
            return
        tps = event.get("tokens_per_s")
        speed = f" · {tps:,.0f} tok/s" if tps else ""
        self.progress.update(
            self.task, step=f"step {event['step']}/{event['steps']} · loss {event['loss']:.3f}{speed}"
        )

    def done(self, cell: Cell, result: RunResult) -> None:
        self.progress.advance(self.task)
        self.console.print(_done_line(cell, result), highlight=False)


def _done_line(cell: Cell, r: RunResult) -> str:
    took = f"{(r.ended_at or 0) - (r.started_at or 0):.0f}s"
    m = r.metrics
    if r.status == "estimated":
        return (f"[green]✓[/] {cell.id}: estimated peak {m.get('peak_allocated_bytes', 0) / 2**20:,.1f}"
                f" MiB · state {m.get('optimizer_state_bytes', 0) / 2**20:,.1f} MiB ({took})")
    if r.status != "ok":
        return f"[red]✗[/] {cell.id}: {r.status} — {r.error} ({took})"
    return (f"[green]✓[/] {cell.id}: loss {m.get('final_train_loss', float('nan')):.3f}"
            f" · ppl {m.get('eval_ppl', float('nan')):.1f}"
            f" · peak {m.get('peak_allocated_bytes', 0) / 2**20:,.1f} MiB"
            f" · {m.get('tokens_per_s', 0):,.0f} tok/s ({took})")


# ------------------------------------------------------------------- estimate and fit


def estimate_targets(model: str, choices: list[str], seq_len: int | None, batch_size: int | None,
                     dtype: str | None, autocast: bool, grad_accum: int | None = None,
                     grad_clip: float | None = None) -> tuple[str, list[tuple]]:
    """(report name, [(workload, optimizer, hparams, label)]) for a model name or a suite file.

    With a model, AdamW always comes along: the table's ratios are to it. With a suite, its
    cells set everything; -o only picks optimizers by name.
    """
    from optbench.estimate import Workload, workload_of
    from optbench.optimizers import parse_choice

    parsed = [parse_choice(c) for c in choices]
    if model.endswith((".yaml", ".yml")) or Path(model).is_file():
        given = (seq_len, batch_size, dtype, grad_accum, grad_clip)
        if any(value is not None for value in given) or autocast:
            raise OptbenchError(f"--seq-len, --batch-size, --dtype, --autocast, --grad-accum and "
                                f"--grad-clip do not apply to a suite ({model}): its cells set them")
        if any(hp for _, hp in parsed):
            raise OptbenchError(f"-o NAME:key=value does not apply to a suite ({model}): its cells "
                                "set the hparams; -o NAME picks cells by optimizer")
        suite = load_suite(model)
        wanted = {name for name, _ in parsed}
        cells = [c for c in expand(suite) if not wanted or c.optimizer.name in wanted]
        if not cells:
            raise OptbenchError(f"{model}: no cell uses {', '.join(sorted(wanted))}")
        return suite.name, [(workload_of(c), c.optimizer.name, c.optimizer.hparams,
                             c.optimizer.display) for c in cells]
    workload = Workload(model, seq_len or 256, batch_size or 8, dtype or "bf16", autocast,
                        grad_accum or 1, grad_clip)
    for opt, hp in parsed:  # bad hparams fail now, before any tracing
        resolve_hparams(opt, hp, model)
    if not any(name == "adamw" for name, _ in parsed):
        parsed.insert(0, ("adamw", {}))
    name = f"{model}-seq{workload.seq_len}-bs{workload.batch_size}-{workload.dtype}"
    name += "-autocast" if autocast else ""
    return name, [(workload, opt, hp, _choice_label(opt, hp)) for opt, hp in parsed]


def _choice_label(name: str, hparams: dict) -> str:
    return name + ("" if not hparams else "(" + ",".join(f"{k}={v}" for k, v in hparams.items()) + ")")


def run_estimate(targets: list[tuple], on_each=lambda est: None) -> list:
    """Estimate every target; each model and dtype's traces are shared."""
    from optbench.estimate import estimator

    estimates = []
    for workload, opt, hparams, label in targets:
        est = estimator(workload.model, workload.dtype).estimate(workload, opt, hparams, label)
        on_each(est)
        estimates.append(est)
    return estimates


def run_fit(model: str, choices: list[str], budget: int, seq_len: int | None,
            batch_size: int | None, dtype: str, autocast: bool, grad_accum: int = 1,
            grad_clip: float | None = None, on_each=lambda r: None) -> tuple:
    """(axis, results): the largest batch size at seq_len, or with batch_size the largest seq len."""
    from optbench.estimate import Workload, estimator
    from optbench.fit import fit
    from optbench.optimizers import parse_choice

    if seq_len is not None and batch_size is not None:
        raise OptbenchError("fit searches one axis: give --seq-len to find the largest batch size, "
                            "or --batch-size to find the largest sequence length, not both")
    axis = "seq_len" if batch_size is not None else "batch_size"
    base = Workload(model, seq_len or 256, batch_size or 1, dtype, autocast, grad_accum, grad_clip)
    parsed = [parse_choice(choice) for choice in choices]
    for opt, hparams in parsed:  # bad hparams fail now, before any tracing
        resolve_hparams(opt, hparams, model)
    results = []
    for opt, hparams in parsed:
        result = fit(estimator(model, dtype), base, axis, budget, opt, hparams,
                     _choice_label(opt, hparams))
        on_each(result)
        results.append(result)
    return axis, base, results

"""`optbench compare`: select from the store, run what is missing, select again, then print
the tables and write the Markdown, figures, CSV and JSON."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rich.markup import escape

from optbench.commands.common import (ensure_writable_dir, ensure_writable_file, is_suite_file,
                                      run_into_store, store_kept_results, write_text)
from optbench.commands.provenance import command_line
from optbench.config.loader import load_suite
from optbench.config.suite import resolve_device
from optbench.errors import OptbenchError
from optbench.metrics import get_metric
from optbench.optimizers import get_spec
from optbench.render import compare as render
from optbench.results import compare as cmp
from optbench.results import tuning
from optbench.results.store import ResultStore


def run_compare(req: cmp.Request, db: Path, reports_dir: Path, *, by: str | None, run: bool,
                csv: Path | None, json_path: Path | None, console, log) -> Path:
    names, baseline, metrics = cmp.resolve(req)
    ensure_writable_dir(Path(reports_dir), "--reports")  # before any missing cell runs
    for path, option in ((csv, "--csv"), (json_path, "--json")):
        ensure_writable_file(path, option, store=db)
    req = cmp.canonical_parallel(req)
    if by is not None and by not in cmp.BY_AXES:
        raise OptbenchError(f"--by '{by}': accepted: {', '.join(cmp.BY_AXES)}")
    suite_name, suite_setup = _suite(req.suite)
    store = ResultStore(db)
    store_kept_results(store, log)
    runs = cmp.select(store, names, req, suite_name)
    pairs = cmp.wanted_pairs(runs, req)
    todo = cmp.missing_cells(runs, pairs, names, req, suite_setup, suite_name) if run else []
    if todo:
        log.print(f"running {len(todo)} missing results first ({escape(', '.join(c.id for c in todo))})",
                  highlight=False)
        run_into_store(todo, store, log)
        runs = cmp.select(store, names, req, suite_name)
    tables = [cmp.table_rows(runs, names, pair, metrics, baseline, cmp.parallels_at(runs, pair, req),
                             tuned=req.tuned) for pair in pairs]
    if not req.metrics:
        metrics = cmp.measured_defaults(metrics, tables)
    notes = [cmp.config_notes(runs, p) for p in pairs]
    selection = [cmp.tuned_notes(runs, names, p, cmp.parallels_at(runs, p, req)) if req.tuned else []
                 for p in pairs]
    curves = store.curves([r.run_id for r in runs])
    targets = [cmp.time_to_target(runs, names, pair, baseline, cmp.parallels_at(runs, pair, req),
                                  curves, tuned=req.tuned) for pair in pairs]
    comparison = render.Comparison(names, baseline, metrics, tables, notes,
                                   [cmp.group_title(runs, p) for p in pairs],
                                   cmp.runs_shown(runs, pairs, req.tuned), targets,
                                   selection, tuning.tuning_frame(runs),
                                   tuning.sensitivity_frame(runs))
    for table in render.rich_tables(comparison, chosen=bool(req.metrics)):
        console.print(table)
    canonical = dict.fromkeys(get_spec(n).name for n in req.names)
    out_dir = Path(reports_dir) / ("compare-" + "-".join(canonical))
    by_metric = metrics[0] if req.metrics else get_metric("peak_allocated_bytes")
    paths = render.write_markdown(comparison, curves, out_dir, command_line(), by, by_metric)
    if csv is not None:
        write_text(csv, render.long_frame(comparison).to_csv(index=False))
    if json_path is not None:
        write_text(json_path, render.to_json(comparison))
    console.print(f"report: {escape(str(paths[0]))} (+{len(paths) - 1} plots)", highlight=False)
    return paths[0]


def _suite(value: str | None):
    """(suite name to filter on, its (Defaults, DataConfig) when given as a YAML file)."""
    if value is None:
        return None, None
    if is_suite_file(value):
        suite = load_suite(value)
        defaults = dataclasses.replace(suite.defaults, device=resolve_device(suite.defaults.device))
        return suite.name, (defaults, suite.data)
    return value, None

"""`optbench check`: run (or read) a suite's results, judge them against a baseline, and print
the findings in the chosen format; or, with --update, rewrite the baseline."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from optbench.commands.common import ensure_writable_file, run_into_store, write_text
from optbench.config.loader import load_suite
from optbench.config.suite import Suite, expand
from optbench.errors import OptbenchError
from optbench.render import check as render
from optbench.results import check as chk
from optbench.results.store import ResultStore


def run_check(suite_path: Path, baseline_path: Path, db: Path, rule_specs: list[str], *,
              update: bool, from_store: bool, fmt: str, output: Path | None, console,
              log) -> int:
    """Validate every input first (bad rules, baseline or suite fail before minutes of
    running), then gather the results and judge or record them; the exit code."""
    ensure_writable_file(output, "--output", store=db)
    if update:
        ensure_writable_file(baseline_path, "--baseline", store=db, replaced=True)
    rules = chk.parse_rules(rule_specs)
    suite = load_suite(suite_path)
    # With --update the old baseline is optional (it is about to be replaced) and may be corrupt.
    baseline = _old_baseline(baseline_path) if update else chk.load_baseline(baseline_path)
    if baseline is not None and baseline.suite != suite.name and not update:
        raise OptbenchError(
            f"{baseline_path}: a baseline of suite '{baseline.suite}', not '{suite.name}' ({suite_path});"
            f" pass the suite's own baseline, or write one with --update"
        )
    current = gather(suite, db, from_store, log)
    if update:
        console.print(update_baseline(baseline_path, suite.name, current, baseline, rules, log),
                      highlight=False, markup=False)
        return 0
    findings = chk.compare(current, baseline, rules)
    context = render.Context(suite.name, baseline_path, chk.gated(rules),
                             chk.environment_drift(baseline, current))
    _emit(render.render(fmt, findings, context), output, log)
    log.print(f"check: {render.verdict(findings)}", highlight=False, markup=False)
    return chk.exit_code(findings)


def _old_baseline(path: Path) -> chk.Baseline | None:
    try:
        return chk.load_baseline(path)
    except OptbenchError:
        return None


def gather(suite: Suite, db: Path, from_store: bool, log) -> list[chk.Observed]:
    """The suite's results, one per cell in suite order.

    By default every cell runs now: a gate must measure the code as it is, and a stored result
    whose fingerprint still matches may come from before an edit to the optimizer's code (the
    fingerprint has its version, not its source). `from_store` reuses the latest stored result
    of each cell (a failure included) and runs only cells with none, for suites too expensive
    to re-run, after an `optbench run` of the same code.
    """
    cells = expand(suite)
    store = ResultStore(db)
    have = {r.fingerprint for r in store.latest_runs(c.fingerprint for c in cells)} if from_store else set()
    todo = [c for c in cells if c.fingerprint not in have]
    log.print(f"check {escape(suite.name)}: {len(cells)} cells, running {len(todo)}, results in "
              f"{escape(str(db))}", highlight=False)
    fresh = {r.fingerprint: r for r in run_into_store(todo, store, log)}
    stored = {r.fingerprint: r for r in store.latest_runs(
        [c.fingerprint for c in cells if c.fingerprint not in fresh], prefer_results=False)}
    results = {**stored, **fresh}
    return [chk.Observed.from_result(results[c.fingerprint], c.id) for c in cells
            if c.fingerprint in results]


def update_baseline(path: Path, suite: str, current: list[chk.Observed], old: chk.Baseline | None,
                    rules: dict[str, chk.Rule], log) -> str:
    """Write the baseline; first show what it changes against the old one, if one was readable."""
    if old is not None:
        log.print(render.text(chk.compare(current, old, rules),
                              render.Context(suite, path, chk.gated(rules), [])),
                  highlight=False, markup=False)
    chk.write_baseline(path, suite, current, rules)
    failed = [o.cell_id for o in current if not o.usable and o.status != "skipped"]
    if failed:
        log.print(f"warning: recorded as failing: {', '.join(failed)}", highlight=False, markup=False)
    return f"wrote {path}: {len(current)} cells of suite {suite}"


def _emit(text: str, output: Path | None, log) -> None:
    """Results to stdout (progress went to stderr, so stdout pipes cleanly) or to a file."""
    import sys

    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_text(output, text)
    log.print(f"wrote {escape(str(output))}", highlight=False)

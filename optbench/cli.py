"""optbench command line: each command a few lines that call library code."""

from __future__ import annotations

import functools
import sys
from enum import Enum
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console

from optbench.errors import OptbenchError

app = typer.Typer(
    help="Benchmark LLM-pretraining optimizers: memory, time and loss, side by side.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)
# Off a terminal (CI logs, pipes) Rich would wrap tables at 80 columns; logs can be wider.
console = Console() if Console().is_terminal else Console(width=160)
err_console = Console(stderr=True, width=None if Console(stderr=True).is_terminal else 400)

DB_OPTION = typer.Option(Path("results/optbench.sqlite"), "--db", help="SQLite results store.")
REPORTS_OPTION = typer.Option(Path("reports"), "--reports", help="Directory reports are written under.")


def user_errors(fn: Callable) -> Callable:
    """Bad input -> one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OptbenchError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@user_errors
def run(
    suite_path: Path = typer.Argument(..., metavar="SUITE", help="Suite YAML file, e.g. suites/quick.yaml."),
    db: Path = DB_OPTION,
    reports: Path = REPORTS_OPTION,
    rerun: bool = typer.Option(False, "--rerun", help="Run every cell again, even those with an ok result."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip cells whose fingerprint already has an ok result (default). --no-resume is the same as --rerun."),
    only: Optional[str] = typer.Option(None, "--only", help="Run only cells whose id matches this glob, e.g. 'llama_9m/*'."),
) -> None:
    """Run a suite's grid (each cell in its own process), store every result, write reports/<suite>/."""
    from optbench.app import run_suite

    code = run_suite(suite_path, db, reports, rerun=rerun or not resume, only=only, console=console)
    raise typer.Exit(code)


@app.command()
@user_errors
def validate(
    suite_paths: list[Path] = typer.Argument(..., metavar="SUITE...", help="Suite YAML files to check."),
) -> None:
    """Check suites without running them: keys, types, names, hparams, data files."""
    from optbench.suite import expand, load_suite

    for path in suite_paths:
        suite = load_suite(path)
        cells = list(expand(suite))
        console.print(f"[green]ok[/] {path}: suite '{suite.name}', {len(cells)} cells")


class ListWhat(str, Enum):
    models = "models"
    optimizers = "optimizers"
    suites = "suites"


@app.command("list")
@user_errors
def list_(
    what: ListWhat = typer.Argument(..., help="What to list: models, optimizers or suites."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show policies, defaults and formulas in full."),
    suites_dir: Path = typer.Option(Path("suites"), "--suites-dir", help="Where to look for suites."),
) -> None:
    """List the model sizes, the optimizer registry, or the shipped suites."""
    from optbench import listing

    table = {
        ListWhat.models: listing.models_table,
        ListWhat.optimizers: lambda: listing.optimizers_table(verbose),
        ListWhat.suites: lambda: listing.suites_table(suites_dir),
    }[what]()
    console.print(table)


@app.command()
@user_errors
def report(
    suite_path: Path = typer.Argument(..., metavar="SUITE", help="Suite YAML whose results to render."),
    db: Path = DB_OPTION,
    reports: Path = REPORTS_OPTION,
) -> None:
    """Re-render reports/<suite>/ from the store, without running anything."""
    from optbench.app import report_suite

    report_suite(suite_path, db, reports, console=console)


class Dtype(str, Enum):
    bf16 = "bf16"
    fp32 = "fp32"


OPTIMIZER_OPTION = typer.Option(
    [], "--optimizer", "-o",
    help="Optimizer (repeatable), optionally with hparams: NAME or NAME:key=value,key=value.")
JSON_OPTION = typer.Option(False, "--json", help="Print JSON instead of the table.")


@app.command()
@user_errors
def estimate(
    model: str = typer.Option(..., "--model", "-m", help="Model size (see `optbench list models`) or a suite YAML: estimate each of its cells."),
    optimizers: list[str] = OPTIMIZER_OPTION,
    seq_len: Optional[int] = typer.Option(None, "--seq-len", min=1, help="Sequence length [default: 256]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Batch size [default: 8]."),
    dtype: Dtype = typer.Option(Dtype.bf16, "--dtype", help="Dtype of weights, grads and state."),
    autocast: bool = typer.Option(False, "--autocast", help="bf16 autocast around forward+backward."),
    as_json: bool = JSON_OPTION,
    reports: Path = REPORTS_OPTION,
) -> None:
    """Peak training memory without a GPU: one step traced on fake tensors, with its breakdown."""
    from optbench.app import estimate_targets, run_estimate
    from optbench.estimate_report import estimates_json, rich_estimate_tables, write_estimate_report

    name, targets = estimate_targets(model, optimizers, seq_len, batch_size, dtype.value, autocast)
    with _status(f"tracing {len(targets)} estimates", quiet=as_json):
        estimates = run_estimate(targets)
    paths = write_estimate_report(estimates, reports, name, _command_line())
    if as_json:
        print(estimates_json(estimates))
        return
    for table in rich_estimate_tables(estimates):
        console.print(table)
    console.print(f"report: {paths[0]}" + (f" (+{len(paths) - 1} plots)" if len(paths) > 1 else ""))


@app.command()
@user_errors
def fit(
    memory: str = typer.Option(..., "--memory", help="Memory budget, e.g. 80GiB, 80GB, 24576MiB."),
    model: str = typer.Option(..., "--model", "-m", help="Model size (see `optbench list models`)."),
    optimizers: list[str] = OPTIMIZER_OPTION,
    seq_len: Optional[int] = typer.Option(None, "--seq-len", min=1, help="Find the largest batch size at this sequence length [default: 256]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Find the largest sequence length at this batch size instead."),
    dtype: Dtype = typer.Option(Dtype.bf16, "--dtype", help="Dtype of weights, grads and state."),
    autocast: bool = typer.Option(False, "--autocast", help="bf16 autocast around forward+backward."),
    as_json: bool = JSON_OPTION,
    reports: Path = REPORTS_OPTION,
) -> None:
    """Largest batch size (or sequence length) whose estimated peak fits in --memory."""
    from optbench.app import run_fit
    from optbench.estimate_report import fit_json, rich_fit_table, write_fit_report
    from optbench.fit import parse_memory

    budget = parse_memory(memory)
    with _status("searching", quiet=as_json):
        axis, base, results = run_fit(model, optimizers or ["adamw"], budget, seq_len, batch_size,
                                      dtype.value, autocast)
    fixed = f"batch {base.batch_size}" if axis == "seq_len" else f"seq {base.seq_len}"
    title = f"{model} · {fixed} · {dtype.value} · budget {memory}"
    name = f"{model}-{_safe(memory)}-{axis}"
    paths = write_fit_report(results, reports, name, title, _command_line())
    if as_json:
        print(fit_json(results))
        return
    console.print(rich_fit_table(results, title))
    console.print(f"report: {paths[0]}" + (f" (+{len(paths) - 1} plot)" if len(paths) > 1 else ""))


def _status(text: str, quiet: bool):
    import contextlib

    return contextlib.nullcontext() if quiet else err_console.status(text)


def _safe(text: str) -> str:
    return "".join(ch for ch in text if ch.isalnum() or ch in "._-")


def _command_line() -> str:
    return " ".join(["optbench", *sys.argv[1:]])


def main() -> None:
    """Console entry point: click's usage errors, too, become one line and exit code 2."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:  # Ctrl-C outside a suite run
        code = 130
    except Exception as exc:
        # Usage errors are click's ClickException, which newer Typer versions vendor under a
        # private module: recognise them by their interface rather than by import path.
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        ctx = getattr(exc, "ctx", None)
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        err_console.print(f"[bold red]error:[/] {exc.format_message()}{where}", highlight=False)
        code = exc.exit_code
    sys.exit(code or 0)


if __name__ == "__main__":
    main()

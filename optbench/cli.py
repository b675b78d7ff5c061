"""optbench command line: the Typer surface only — options, then one call into optbench.commands."""

from __future__ import annotations

import functools
import os
import sqlite3
import sys
from enum import Enum
from pathlib import Path
from typing import Callable, Optional

import typer
from typer.core import TyperGroup

from optbench.commands.provenance import record_argv
from optbench.console import console, err_console, print_error
from optbench.errors import OptbenchError


class _ArgvGroup(TyperGroup):
    """Records the command line it is invoked with (from a shell or a test's CliRunner), so
    every report can name the real command that made it; and makes click's usage errors one
    line and exit code 2 like every other bad input, whoever invokes the app."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        record_argv(sys.argv[1:] if args is None else list(args))
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except typer.Abort:  # Ctrl-C outside a suite run
            code = 130
        except Exception as exc:
            if not _is_usage_error(exc):
                raise
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `optbench`: the help, shown
                code = 0
            else:
                print_error(_usage_line(exc))
                code = exc.exit_code
        sys.exit(code if isinstance(code, int) else 0)


def _is_usage_error(exc: Exception) -> bool:
    """Click's usage errors are its ClickException, which newer Typer versions vendor under a
    private module: recognised by their interface rather than by import path."""
    return hasattr(exc, "format_message") and hasattr(exc, "exit_code")


def _usage_line(exc) -> str:
    ctx = getattr(exc, "ctx", None)
    where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return " ".join(f"{exc.format_message()}{where}".split())  # click wraps its lists


app = typer.Typer(
    cls=_ArgvGroup,
    help="Benchmark LLM-pretraining optimizers: memory, time and loss, side by side.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)

DB_OPTION = typer.Option(Path("results/optbench.sqlite"), "--db", help="SQLite results store.")
REPORTS_OPTION = typer.Option(Path("reports"), "--reports", help="Directory reports are written under.")


def user_errors(fn: Callable) -> Callable:
    """Bad input -> one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OptbenchError as exc:
            print_error(str(exc))
            raise typer.Exit(2) from None
        except sqlite3.DatabaseError as exc:  # a store whose later pages are damaged
            print_error(f"corrupt results database ({exc}); nothing was written to it. SQLite "
                        "recovers what it can: sqlite3 DB .recover | sqlite3 NEW.sqlite, then "
                        "--db NEW.sqlite")
            raise typer.Exit(2) from None
        except BrokenPipeError:  # the reader left (`| head`): silence and exit 1, as Rich does
            _stdout_to_devnull()
            raise typer.Exit(1) from None
        except OSError as exc:  # the last net: a disk that fills or a mount that goes mid-write
            where = f"{exc.filename}: " if exc.filename else "writing the output: "
            print_error(f"{where}{exc.strerror or exc}")
            raise typer.Exit(2) from None

    return wrapper


class RunExecutor(str, Enum):
    local = "local"
    slurm = "slurm"
    submitit_local = "submitit-local"


@app.command()
@user_errors
def run(
    suite_path: Path = typer.Argument(..., metavar="SUITE", help="Suite YAML file, e.g. suites/quick.yaml."),
    db: Path = DB_OPTION,
    reports: Path = REPORTS_OPTION,
    rerun: bool = typer.Option(False, "--rerun", help="Run every cell again, even those with an ok result."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip cells whose fingerprint already has an ok result (default). --no-resume is the same as --rerun."),
    only: Optional[str] = typer.Option(None, "--only", help="Run only cells whose id matches this glob, e.g. 'llama_9m/*'."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", show_default=False, help="Cells run at once: one per GPU on a GPU machine, the CPU cores split between them on CPU. The default 1 keeps measurements clean; the report says which results shared the machine. With --executor slurm|submitit-local: the most jobs in flight (default: every cell)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the cells, which are stored, and an estimate of the time left; run nothing."),
    executor: RunExecutor = typer.Option(RunExecutor.local, "--executor", help="local: each cell in a process here; slurm: each cell a SLURM job through submitit, results stored here as they come back; submitit-local: the same path with submitit's local executor, to try it on one machine."),
    slurm: list[str] = typer.Option([], "--slurm", metavar="KEY=VALUE", help="A submitit parameter for every job (repeatable), by submitit's names: slurm_partition=gpu, slurm_account=x, cpus_per_task=8, mem_gb=64, timeout_min=120."),
    submitit_dir: Path = typer.Option(Path("results/submitit"), "--submitit-dir", help="Where submitit keeps each job's script, pickles and logs (<job id>_0_log.out/.err)."),
) -> None:
    """Run a suite's grid (each cell in its own process, or SLURM job), store every result, write reports/<suite>/."""
    from optbench.commands.common import submitit_options
    from optbench.commands.run import dry_run_suite, run_suite

    if dry_run:
        # Under submitit, --jobs caps jobs in flight, not this machine's shares: estimate as one.
        local_jobs = (1 if jobs is None else jobs) if executor is RunExecutor.local else 1
        dry_run_suite(suite_path, db, rerun=rerun or not resume, only=only, jobs=local_jobs,
                      console=console)
        return
    options = submitit_options(executor.value, slurm, submitit_dir, jobs)
    code = run_suite(suite_path, db, reports, rerun=rerun or not resume, only=only,
                     jobs=1 if jobs is None else jobs,
                     console=console, executor=options)
    raise typer.Exit(code)


@app.command()
@user_errors
def validate(
    suite_paths: list[Path] = typer.Argument(..., metavar="SUITE...", help="Suite YAML files to check."),
) -> None:
    """Check suites without running them: keys, types, names, hparams, data files."""
    from optbench.commands.run import validate_suites

    validate_suites(suite_paths, console)


class ListWhat(str, Enum):
    models = "models"
    optimizers = "optimizers"
    suites = "suites"


@app.command("list")
@user_errors
def list_(
    what: ListWhat = typer.Argument(..., help="What to list: models, optimizers or suites."),
    names: Optional[list[str]] = typer.Argument(
        None, help="Optimizers only: just these entries (names or aliases).", show_default=False
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v",
        help="Optimizers: one table per entry with what runs, the code it is held against, the "
             "deviations that remain, every default with its source, policy and state formula.",
    ),
    suites_dir: Path = typer.Option(Path("suites"), "--suites-dir", help="Where to look for suites."),
) -> None:
    """List the model sizes, the optimizer registry, or the shipped suites."""
    from optbench.commands.listing import list_things

    list_things(what.value, verbose, suites_dir, console, names or [])


@app.command()
@user_errors
def report(
    suite_path: Path = typer.Argument(..., metavar="SUITE", help="Suite YAML whose results to render."),
    db: Path = DB_OPTION,
    reports: Path = REPORTS_OPTION,
) -> None:
    """Re-render reports/<suite>/ from the store, without running anything."""
    from optbench.commands.run import report_suite

    report_suite(suite_path, db, reports, console=console)


@app.command()
@user_errors
def export(
    suite: Optional[str] = typer.Argument(None, metavar="[SUITE]", help="A suite YAML (its cells' latest runs, as its report shows them) or a stored suite name; omitted: every stored run."),
    wandb: bool = typer.Option(False, "--wandb", help="One Weights & Biases run per cell: config, every metric, the loss by step and tokens, the report's figures (needs the export extra: see docs/export.md)."),
    project: str = typer.Option("optbench", "--project", help="W&B project."),
    offline: bool = typer.Option(False, "--offline", help="W&B offline mode: write the run files locally (`wandb sync DIR` uploads them later)."),
    wandb_dir: Optional[Path] = typer.Option(None, "--wandb-dir", help="Where W&B writes its files (default: ./wandb)."),
    tensorboard: Optional[Path] = typer.Option(None, "--tensorboard", metavar="DIR", help="One TensorBoard run per cell under DIR/SUITE/ (`tensorboard --logdir DIR`)."),
    csv: Optional[Path] = typer.Option(None, "--csv", metavar="FILE", help="The runs (one row each, metrics as columns) as CSV; their curves beside it as FILE's stem + .curves.csv."),
    parquet: Optional[Path] = typer.Option(None, "--parquet", metavar="FILE", help="The same as Parquet (pyarrow)."),
    db: Path = DB_OPTION,
    reports: Path = REPORTS_OPTION,
) -> None:
    """Send stored results where you read them: W&B, TensorBoard, CSV or Parquet."""
    from optbench.commands.export import Destinations, run_export

    given = [flag for flag, on in (("--project", project != "optbench"), ("--offline", offline),
                                   ("--wandb-dir", wandb_dir is not None)) if on]
    if given and not wandb:
        raise OptbenchError(f"{', '.join(given)}: W&B options; add --wandb to export to W&B")
    to = Destinations(wandb_project=project if wandb else None, wandb_offline=offline,
                      wandb_dir=wandb_dir, tensorboard=tensorboard, csv=csv, parquet=parquet)
    raise typer.Exit(run_export(suite, db, reports, to, console=console))


class ByAxis(str, Enum):
    seq_len = "seq_len"
    model = "model"


@app.command()
@user_errors
def compare(
    names: list[str] = typer.Argument(..., metavar="NAME...", help="Optimizers to compare (registry names or aliases), e.g. scale adam apollo."),
    model: list[str] = typer.Option([], "--model", help="Only this model (repeatable); with --seq-len, the tables to show and run."),
    seq_len: list[int] = typer.Option([], "--seq-len", help="Only this sequence length (repeatable)."),
    suite: Optional[str] = typer.Option(None, "--suite", help="Only results of this suite (a stored suite name, or a YAML file whose setup also runs what is missing)."),
    baseline: str = typer.Option("adamw", "--baseline", help="Optimizer the ratios are against (always shown)."),
    metric: list[str] = typer.Option([], "--metric", help="Metrics to show, in order (repeatable; default: memory and its parts, tokens/s, loss, eval ppl). The first is the --by plot's."),
    by: Optional[ByAxis] = typer.Option(None, "--by", help="Also plot one metric against seq_len or model, one line per optimizer."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Steps for results run now (default: the table's other rows' setup, else 50)."),
    device: Optional[str] = typer.Option(None, "--device", help="Device for results run now: auto, cpu or cuda."),
    parallel: list[str] = typer.Option([], "--parallel", help="Only this parallel strategy, as cell ids write it: none, ddpx2, fsdp2x2, zero1x2 (repeatable; default: one process and any stored). Missing results are run under it."),
    tuned: bool = typer.Option(False, "--tuned", help="Each optimizer's best trial of its search (lowest final eval loss, mean over seeds), the selection stated and edges flagged."),
    run: bool = typer.Option(True, "--run/--no-run", help="Run missing results first (default) or show them as missing."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Also write the numbers (bytes, ratios, best) as CSV."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write them as JSON."),
    db: Path = DB_OPTION,
    reports: Path = REPORTS_OPTION,
) -> None:
    """Optimizers side by side per model and seq len, from the store; writes reports/compare-<names>/."""
    from optbench.commands.compare import run_compare
    from optbench.results.compare import Request

    if device is not None and device not in ("auto", "cpu", "cuda"):
        raise OptbenchError(f"--device '{device}': accepted: auto, cpu, cuda")
    req = Request(tuple(names), baseline, tuple(model), tuple(seq_len), suite, tuple(metric), steps, device,
                  tuple(parallel), tuned)
    run_compare(req, db, reports, by=by.value if by else None, run=run, csv=csv, json_path=json_path,
                console=console, log=err_console)


class CheckFormat(str, Enum):
    text = "text"
    markdown = "markdown"
    junit = "junit"
    github = "github"


@app.command()
@user_errors
def check(
    suite_path: Path = typer.Argument(..., metavar="SUITE", help="Suite YAML to check, e.g. suites/ci_memory.yaml."),
    baseline: Path = typer.Option(..., "--baseline", help="Baseline JSON, e.g. baselines/ci_memory.json."),
    rules: list[str] = typer.Option([], "--rules", help="METRIC:TOLERANCE over the defaults (optimizer_state_bytes:0%, peak_allocated_bytes:+2%), e.g. tokens_per_s:-20% or peak_allocated_bytes:off. Repeat or comma-separate."),
    update: bool = typer.Option(False, "--update", help="Run the suite and write the baseline file instead of checking."),
    fmt: CheckFormat = typer.Option(CheckFormat.text, "--format", help="Output: text, markdown (PR comment), junit (XML), github (text + Actions annotations)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the output to this file instead of stdout."),
    from_store: bool = typer.Option(False, "--from-store", help="Use each cell's latest stored result; run only cells without one (default: run every cell now)."),
    db: Path = DB_OPTION,
) -> None:
    """Compare a suite's results with a baseline: exit 0 when nothing got worse, 1 on a regression or new failure, 2 on bad input."""
    from optbench.commands.check import run_check

    raise typer.Exit(run_check(suite_path, baseline, db, rules, update=update, from_store=from_store,
                               fmt=fmt.value, output=output, console=console, log=err_console))


class Dtype(str, Enum):
    bf16 = "bf16"
    fp32 = "fp32"


OPTIMIZER_OPTION = typer.Option(
    [], "--optimizer", "-o",
    help="Optimizer (repeatable), optionally with hparams: NAME or NAME:key=value,key=value.")
JSON_OPTION = typer.Option(False, "--json", help="Print JSON instead of the table.")
GRAD_ACCUM_OPTION = typer.Option(None, "--grad-accum", min=1, help="Micro-batches per step, each of --batch-size [default: 1].")
GRAD_CLIP_OPTION = typer.Option(None, "--grad-clip", min=0.0, help="Clip the gradient norm to this value in the step [default: no clipping].")


@app.command()
@user_errors
def parity(
    names: list[str] = typer.Argument(None, metavar="[NAME...]", help="Optimizers to check (default: the whole roster)."),
    strategy: list[str] = typer.Option(["ddp", "fsdp2", "zero1"], "--strategy", "-s", help="Strategies to check (repeatable): ddp, fsdp2, zero1."),
    nproc: int = typer.Option(2, "--nproc", help="Ranks (gloo on CPU; one GPU each with NCCL)."),
    steps: int = typer.Option(3, "--steps", help="Optimizer steps compared."),
    db: Path = DB_OPTION,
    reports: Path = REPORTS_OPTION,
) -> None:
    """Is each optimizer under DDP / FSDP2 / ZeRO-1 the same optimizer? Stores the verdicts; writes reports/parity/."""
    from optbench.commands.parity import run_parity

    run_parity(names or [], strategy, nproc, steps, db, reports, console, err_console)


EXACT_OPTION = typer.Option(
    False, "--exact",
    help="Trace every decoder layer. Default: trace forward+backward at 2, 3 and 4 layers and "
         "extrapolate each byte count to the model's depth (a decoder stack repeats one layer; the "
         "optimizer step is traced whole), which equals the full trace in a fraction of its time.")


PARALLEL_OPTION = typer.Option(
    "none", "--parallel",
    help="Estimate each rank under this strategy: none, ddp, fsdp2 or zero1 (with --nproc). "
         "Every rank is traced on fake tensors in torch's fake process group; the headline is "
         "the fullest rank.")
NPROC_OPTION = typer.Option(None, "--nproc", help="Ranks for --parallel, e.g. 8 for one node of 8 GPUs.")


@app.command()
@user_errors
def estimate(
    model: str = typer.Option(..., "--model", "-m", help="Model size (see `optbench list models`) or a suite YAML: estimate each of its cells."),
    optimizers: list[str] = OPTIMIZER_OPTION,
    seq_len: Optional[int] = typer.Option(None, "--seq-len", min=1, help="Sequence length [default: 256]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Batch size [default: 8]."),
    dtype: Optional[Dtype] = typer.Option(None, "--dtype", help="Dtype of weights, grads and state [default: bf16]."),
    autocast: bool = typer.Option(False, "--autocast", help="bf16 autocast around forward+backward."),
    grad_accum: Optional[int] = GRAD_ACCUM_OPTION,
    grad_clip: Optional[float] = GRAD_CLIP_OPTION,
    as_json: bool = JSON_OPTION,
    reports: Path = REPORTS_OPTION,
    exact: bool = EXACT_OPTION,
    timeline: bool = typer.Option(
        False, "--timeline",
        help="Also draw each optimizer's memory through one step (a full trace of every layer, "
             "slower): parts over forward, backward, clipping and the step, the peak marked."),
    strategy: str = PARALLEL_OPTION,
    nproc: Optional[int] = NPROC_OPTION,
) -> None:
    """Peak training memory without a GPU: one step traced on fake tensors, with its breakdown."""
    from optbench.commands.estimate import run_estimate

    run_estimate(model, optimizers, seq_len, batch_size, dtype.value if dtype else None, autocast,
                 grad_accum, grad_clip, as_json=as_json, reports=reports, console=console,
                 exact=exact, timeline=timeline, strategy=strategy, nproc=nproc)


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
    grad_accum: int = typer.Option(1, "--grad-accum", min=1, help="Micro-batches per step, each of the searched or given batch size."),
    grad_clip: Optional[float] = GRAD_CLIP_OPTION,
    as_json: bool = JSON_OPTION,
    reports: Path = REPORTS_OPTION,
    exact: bool = EXACT_OPTION,
    strategy: str = PARALLEL_OPTION,
    nproc: Optional[int] = NPROC_OPTION,
) -> None:
    """Largest batch size (or sequence length) whose estimated peak fits in --memory."""
    from optbench.commands.estimate import run_fit

    run_fit(memory, model, optimizers or ["adamw"], seq_len, batch_size, dtype.value, autocast,
            grad_accum, grad_clip, as_json=as_json, reports=reports, console=console, exact=exact,
            strategy=strategy, nproc=nproc)


def main() -> None:
    """Console entry point (`optbench`): the app in click's standalone mode, whose usage errors
    _ArgvGroup makes one line."""
    try:
        app()
    finally:
        _flush_stdout()


def _stdout_to_devnull() -> None:
    """Python's recipe for a stdout that cannot be written: its file descriptor pointed at
    /dev/null, so the flush at shutdown has nothing to fail on (nothing to do in a test's
    captured stdout, which has none)."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _flush_stdout() -> None:
    """What is left in stdout's buffer, written now: stdout on a full disk is one line, not
    the traceback Python would print while shutting down; a reader that left (`| head`) is
    silence, as Rich makes it."""
    if sys.stdout is None:  # started with stdout closed (`>&-`): nothing to flush
        return
    try:
        sys.stdout.flush()
    except ValueError:  # closed by someone else: nothing left to write
        return
    except OSError as exc:
        _stdout_to_devnull()
        if isinstance(exc, BrokenPipeError):
            raise SystemExit(1) from None
        print_error(f"standard output: cannot write ({exc.strerror})")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

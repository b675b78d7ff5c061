"""`optbench estimate` and `optbench fit`: peak memory traced on fake tensors, and the largest
batch or sequence length that fits a budget."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from optbench.commands.common import ensure_writable_dir, is_suite_file
from optbench.commands.provenance import command_line
from optbench.config.loader import load_suite
from optbench.config.suite import expand
from optbench.console import status
from optbench.engine.fit import fit, parse_memory
from optbench.config.suite import MAX_ESTIMATED_RANKS, PARALLEL_STRATEGIES, Parallel
from optbench.engine.rank_trace import estimator_for
from optbench.engine.trace import Estimate, Workload, workload_of
from optbench.errors import OptbenchError
from optbench.optimizers import parse_choice, resolve_hparams
from optbench.render import estimate as render


@dataclass(frozen=True)
class Target:
    """One estimate to make: a workload and an optimizer setup with its row label."""

    workload: Workload
    optimizer: str
    hparams: dict
    label: str
    parallel: Parallel = Parallel()  # a strategy: each rank estimated


def parallel_setting(strategy: str, nproc: int | None) -> Parallel:
    """--parallel and --nproc as a setting, or one line saying what they accept."""
    strategies = ", ".join(PARALLEL_STRATEGIES)
    if strategy not in PARALLEL_STRATEGIES:
        raise OptbenchError(f"--parallel '{strategy}' is not a strategy; accepted: {strategies}")
    if nproc is not None and not 1 <= nproc <= MAX_ESTIMATED_RANKS:
        raise OptbenchError(f"--nproc {nproc}: accepted 1..{MAX_ESTIMATED_RANKS} ranks")
    if strategy == "none":
        if nproc not in (None, 1):
            raise OptbenchError(f"--nproc {nproc} needs --parallel "
                                f"{' | '.join(PARALLEL_STRATEGIES[1:])}; none is one process")
        return Parallel()
    if nproc is None:
        raise OptbenchError(f"--parallel {strategy} needs --nproc N, the number of ranks "
                            "(e.g. --nproc 8 for one node of 8 GPUs)")
    return Parallel(strategy, nproc)


# The trace builds and steps through every micro-batch: 1,024 take minutes; more is a typo.
MAX_TRACED_GRAD_ACCUM = 1024


def check_step_options(grad_accum: int | None, grad_clip: float | None) -> None:
    """--grad-accum and --grad-clip as the trace can take them, or one line."""
    if grad_accum is not None and grad_accum > MAX_TRACED_GRAD_ACCUM:
        raise OptbenchError(f"--grad-accum {grad_accum}: accepted 1..{MAX_TRACED_GRAD_ACCUM} "
                            "(each micro-batch is traced)")
    if grad_clip is not None and not math.isfinite(grad_clip):
        raise OptbenchError(f"--grad-clip {grad_clip}: accepted a finite number (0 or more)")


def _with_ranks(label: str, setting: Parallel) -> str:
    """A row's label, with the strategy when sharded ('adamw · fsdp2x8'), as run reports say."""
    return f"{label} · {setting.label}" if setting.sharded else label

def estimate_targets(model: str, choices: list[str], seq_len: int | None, batch_size: int | None,
                     dtype: str | None, autocast: bool, grad_accum: int | None = None,
                     grad_clip: float | None = None,
                     setting: Parallel = Parallel()) -> tuple[str, list[Target]]:
    """(report name, targets) for a model name or a suite file.

    With a model, AdamW always comes along: the table's ratios are to it. With a suite, its
    cells set everything (their parallel setting included); -o only picks optimizers by name.
    """
    parsed = [parse_choice(c) for c in choices]
    if is_suite_file(model):
        given = (seq_len, batch_size, dtype, grad_accum, grad_clip)
        if any(value is not None for value in given) or autocast or setting.sharded:
            raise OptbenchError(f"--seq-len, --batch-size, --dtype, --autocast, --grad-accum, "
                                f"--grad-clip, --parallel and --nproc do not apply to a suite "
                                f"({model}): its cells set them")
        if any(hp for _, hp in parsed):
            raise OptbenchError(f"-o NAME:key=value does not apply to a suite ({model}): its cells "
                                "set the hparams; -o NAME picks cells by optimizer")
        suite = load_suite(model)
        wanted = {name for name, _ in parsed}
        cells = [c for c in expand(suite) if not wanted or c.optimizer.name in wanted]
        if not cells:
            raise OptbenchError(f"{model}: no cell uses {', '.join(sorted(wanted))}")
        return suite.name, [Target(workload_of(c), c.optimizer.name, c.optimizer.hparams,
                                   _with_ranks(c.optimizer.display, c.parallel), c.parallel)
                            for c in cells]
    workload = Workload(model, seq_len or 256, batch_size or 8, dtype or "bf16", autocast,
                        grad_accum or 1, grad_clip)
    _check_hparams(parsed, model)
    if not any(name == "adamw" for name, _ in parsed):
        parsed.insert(0, ("adamw", {}))
    name = f"{model}-seq{workload.seq_len}-bs{workload.batch_size}-{workload.dtype}"
    name += "-autocast" if autocast else ""
    name += f"-{setting.label}" if setting.sharded else ""
    return name, [Target(workload, opt, hp, _with_ranks(choice_label(opt, hp), setting), setting)
                  for opt, hp in parsed]


def _check_hparams(parsed: list[tuple[str, dict]], model: str) -> None:
    for opt, hp in parsed:  # bad hparams fail now, before any tracing
        resolve_hparams(opt, hp, model)


def choice_label(name: str, hparams: dict) -> str:
    return name + ("" if not hparams else "(" + ",".join(f"{k}={v}" for k, v in hparams.items()) + ")")


def estimate_all(targets: list[Target], exact: bool = False) -> list[Estimate]:
    """Estimate every target; each model, dtype and parallel setting's traces are shared."""
    return [estimator_for(t.workload.model, t.workload.dtype, t.parallel, exact).estimate(
        t.workload, t.optimizer, t.hparams, t.label) for t in targets]


def step_timelines(targets: list[Target], estimates: list[Estimate]) -> dict[str, list]:
    """label -> the memory timeline of one whole step (a full trace each, every layer; a
    sharded estimate's fullest rank, from its own trace), for the estimates that could be
    traced."""
    return {t.label: e.timeline if t.parallel.sharded else estimator_for(
                t.workload.model, t.workload.dtype, Parallel(), True).step_timeline(
                t.workload, t.optimizer, t.hparams)
            for t, e in zip(targets, estimates) if not e.error}


def run_estimate(model: str, optimizers: list[str], seq_len, batch_size, dtype, autocast,
                 grad_accum, grad_clip, *, as_json: bool, reports: Path, console,
                 exact: bool = False, timeline: bool = False, strategy: str = "none",
                 nproc: int | None = None) -> None:
    ensure_writable_dir(reports, "--reports")
    check_step_options(grad_accum, grad_clip)
    setting = parallel_setting(strategy, nproc)
    name, targets = estimate_targets(model, optimizers, seq_len, batch_size, dtype, autocast,
                                     grad_accum, grad_clip, setting)
    with status(f"tracing {len(targets)} estimates", quiet=as_json):
        estimates = estimate_all(targets, exact)
        timelines = step_timelines(targets, estimates) if timeline else None
    paths = render.write_estimate_report(estimates, reports, name, command_line(), timelines)
    if as_json:
        print(render.estimates_json(estimates))
        return
    for table in render.rich_estimate_tables(estimates):
        console.print(table)
    console.print(f"report: {paths[0]}" + (f" (+{len(paths) - 1} plots)" if len(paths) > 1 else ""),
                  highlight=False, markup=False)


def run_fit(memory: str, model: str, choices: list[str], seq_len: int | None,
            batch_size: int | None, dtype: str, autocast: bool, grad_accum: int,
            grad_clip: float | None, *, as_json: bool, reports: Path, console,
            exact: bool = False, strategy: str = "none", nproc: int | None = None) -> None:
    """The largest batch size at seq_len, or with batch_size the largest seq len, per optimizer
    (per rank under a parallel strategy: the fullest rank must fit)."""
    ensure_writable_dir(reports, "--reports")
    check_step_options(grad_accum, grad_clip)
    budget = parse_memory(memory)
    setting = parallel_setting(strategy, nproc)
    if seq_len is not None and batch_size is not None:
        raise OptbenchError("fit searches one axis: give --seq-len to find the largest batch size, "
                            "or --batch-size to find the largest sequence length, not both")
    axis = "seq_len" if batch_size is not None else "batch_size"
    base = Workload(model, seq_len or 256, batch_size or 1, dtype, autocast, grad_accum, grad_clip)
    parsed = [parse_choice(choice) for choice in choices]
    _check_hparams(parsed, model)
    with status("searching", quiet=as_json):
        results = [fit(estimator_for(model, dtype, setting, exact), base, axis, budget, opt, hp,
                       _with_ranks(choice_label(opt, hp), setting))
                   for opt, hp in parsed]
    fixed = f"batch {base.batch_size}" if axis == "seq_len" else f"seq {base.seq_len}"
    per_rank = f" · {setting.label}, per rank" if setting.sharded else ""
    title = (f"{model} · {fixed} · {dtype}{' + bf16 autocast' if autocast else ''}{per_rank}"
             f" · budget {memory}")
    name = "-".join([model, _safe(memory), axis, fixed.replace(" ", ""), dtype]
                    + (["autocast"] if autocast else []) + ([setting.label] if setting.sharded else []))
    paths = render.write_fit_report(results, reports, name, title, command_line())
    if as_json:
        print(render.fit_json(results))
        return
    console.print(render.rich_fit_table(results, title))
    console.print(f"report: {paths[0]}" + (f" (+{len(paths) - 1} plot)" if len(paths) > 1 else ""),
                  highlight=False, markup=False)


def _safe(text: str) -> str:
    return "".join(ch for ch in text if ch.isalnum() or ch in "._-")

"""The vocabulary every layer shares: metrics, memory parts, statuses, dtypes, units, numbers.

`compare` marks the best value of a column with `higher_is_better`, `check` takes the direction
of a regression from it, and both label columns with `label`. `exact_on_cpu` says the number is
a pure function of the code on the CPU (storage bytes counted by a tracker, not timed and not
float arithmetic), so a CI gate can hold it to the byte on any machine; the rest are recorded
but not gated by default.

Adding a memory part or a status is one edit here (plus, for a part, its colour in
optbench.render.figures); the tracker, the store, the tables and the gate read them from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from optbench.errors import OptbenchError, did_you_mean

# ----------------------------------------------------------------------------- units

MIB, GIB = 2**20, 2**30  # what tables and plots show (binary units, said in every caption)
GB = 10**9  # the papers' convention for their memory tables
DASH = "—"  # a value that was not measured or does not apply

# ----------------------------------------------------------------------------- statuses

# Every status a stored run can have, with what it means (the report's legend says this).
STATUSES: dict[str, str] = {
    "ok": "trained and measured",
    "estimated": "memory traced on fake tensors (a `device: meta` cell), nothing trained",
    "oom": "ran out of device memory",
    "diverged": "the loss became NaN or infinite",
    "crashed": "the cell's process died or ran past its time limit",
    "error": "the cell raised an error (the text is stored)",
    "skipped": "cannot run on this device (not a failure)",
}
# Statuses that carry results: `estimated` carries memory metrics only; whatever it lacks
# shows as not measured.
RESULT_STATUSES = ("ok", "estimated")
# A status that is not a failure: CLI exit codes and the gate leave it out.
NOT_FAILED = (*RESULT_STATUSES, "skipped")

# ----------------------------------------------------------------------------- dtypes

# Weight dtypes a suite may name; optbench.models maps them to torch dtypes.
DTYPES = ("fp32", "bf16")

# ----------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Metric:
    name: str  # as stored, unit in the name
    label: str  # short column header
    unit: str  # bytes | tokens/s | TFLOP/s | % | ms | nats | ppl
    higher_is_better: bool
    kind: str  # memory | time | loss: what a suite's device and noise do to it
    exact_on_cpu: bool = False


def _memory(name: str, label: str) -> Metric:
    return Metric(name, label, "bytes", higher_is_better=False, kind="memory", exact_on_cpu=True)


# The parts the tensor tracker splits a peak into, in stacking order, with their column labels.
MEMORY_PARTS: dict[str, str] = {
    "params": "Params",
    "grads": "Grads",
    "optimizer_state": "Opt state",
    "activations": "Activations",
    "temporaries": "Temps",
}


def part_metric(part: str) -> str:
    """The stored metric name of a memory part: 'grads' -> 'peak_grads_bytes'."""
    return f"peak_{part}_bytes"


PART_METRICS = tuple(part_metric(p) for p in MEMORY_PARTS)

# How tables show the peak's parts: the optimizer's part split in two, the state it keeps
# between steps (as much of it as was alive at the peak) and the transient scratch of
# `optimizer.step()` when the peak falls inside it. The tracker files both under one part; a
# paper's memory table counts only the first.
PEAK_COLUMNS: dict[str, str] = {
    "params": "Params",
    "grads": "Grads",
    "state_held": "State held",
    "step_scratch": "Step scratch",
    "activations": "Activations",
    "temporaries": "Temps",
}


def split_peak(parts: dict[str, float], state_kept: float) -> dict[str, float]:
    """The peak's parts keyed as PEAK_COLUMNS: the optimizer part split into the kept state it
    held and the step's scratch (the rest). They still sum to the peak."""
    opt = parts.get("optimizer_state", math.nan)
    held = min(opt, state_kept) if is_number(opt) and is_number(state_kept) else opt
    scratch = opt - held if is_number(opt) and is_number(held) else math.nan
    out = {key: parts.get(key, math.nan) for key in PEAK_COLUMNS}
    out.update(state_held=held, step_scratch=scratch)
    return out

_ALL = (
    _memory("optimizer_state_bytes", "State"),
    _memory("peak_allocated_bytes", "Peak"),
    _memory("tracked_peak_bytes", "Tracked peak"),
    *(_memory(part_metric(part), label) for part, label in MEMORY_PARTS.items()),
    _memory("paper_memory_bytes", "Paper conv."),
    # Allocator and driver views exist on CUDA only, where nothing is exact.
    Metric("peak_reserved_bytes", "Reserved", "bytes", False, "memory"),
    Metric("nvml_used_bytes", "NVML used", "bytes", False, "memory"),
    Metric("tokens_per_s", "Tokens/s", "tokens/s", True, "time"),  # over all ranks of a cell
    Metric("tokens_per_s_per_device", "Tokens/s/dev", "tokens/s", True, "time"),
    # Model FLOPs (optbench.models.ModelSize.flops_per_token) × tokens/s, over all ranks; MFU is
    # that over the devices' dense peak (optbench.hardware), on known GPUs only.
    Metric("model_tflops_per_s", "TFLOP/s", "TFLOP/s", True, "time"),
    Metric("mfu_percent", "MFU", "%", True, "time"),
    Metric("step_ms", "Step", "ms", False, "time"),
    Metric("fwd_bwd_ms", "Fwd+bwd", "ms", False, "time"),
    Metric("optimizer_step_ms", "Opt step", "ms", False, "time"),
    # compile: true only: the first compiled step's wall time less a timed step's median.
    Metric("compile_s", "Compile", "s", False, "time"),
    # Float results: bit-exact on one machine, not across CPUs (BLAS kernels, thread counts).
    Metric("final_train_loss", "Final loss", "nats", False, "loss"),
    Metric("eval_loss", "Eval loss", "nats", False, "loss"),
    Metric("eval_ppl", "Eval ppl", "ppl", False, "loss"),
)
METRICS: dict[str, Metric] = {m.name: m for m in _ALL}

# What `compare` shows by default, in this order: memory (and its parts), speed, loss.
COMPARE_DEFAULT = (
    "optimizer_state_bytes", "peak_allocated_bytes", *PART_METRICS, "tokens_per_s",
    "model_tflops_per_s", "mfu_percent", "final_train_loss", "eval_ppl",
)  # fmt: skip
# Throughput over all ranks of a cell, from the slowest rank's step time: one value per cell,
# not per rank (optbench.engine.train makes them after the merge: merge_rank_metrics tokens/s,
# flops_metrics TFLOP/s and MFU).
CELL_THROUGHPUT = ("tokens_per_s", "model_tflops_per_s", "mfu_percent")


# A sharded cell stores each rank's value of a memory or time metric as `name@rankN` beside the
# headline `name` (the max over ranks).
RANK_SEPARATOR = "@rank"


def rank_metric(name: str, rank: int) -> str:
    """'tracked_peak_bytes', 1 -> 'tracked_peak_bytes@rank1'."""
    return f"{name}{RANK_SEPARATOR}{rank}"


# Measured on each rank: stored per rank (`name@rankN`), the max over ranks as headline, as the
# slowest and the fullest rank bound a sharded run.
def _per_rank(name: str) -> bool:
    metric = METRICS.get(name)
    return (metric is not None and metric.kind in ("memory", "time")
            and metric.name not in CELL_THROUGHPUT)


def merge_ranks(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """One sharded cell's metrics from its ranks' (rank order), measured or estimated: what is
    the same on every rank (sizes, losses) from rank 0; memory and time per rank and at their
    max; the peak's parts from the rank with the largest peak (so they still sum to it)."""
    merged = dict(per_rank[0])
    for name in {n for metrics in per_rank for n in metrics if _per_rank(n)}:
        values = [metrics.get(name) for metrics in per_rank]
        for rank, value in enumerate(values):
            if value is not None:
                merged[rank_metric(name, rank)] = value
        merged[name] = max(v for v in values if v is not None)
    fullest = max(per_rank, key=lambda m: m.get("tracked_peak_bytes", -1))
    for name in (*PART_METRICS, "tracked_peak_bytes", "tracked_peak_step"):
        if name in fullest:
            merged[name] = fullest[name]
    return merged


def split_rank_metric(name: str) -> tuple[str, int | None]:
    """'tracked_peak_bytes@rank1' -> ('tracked_peak_bytes', 1); a headline -> (name, None)."""
    base, sep, rank = name.partition(RANK_SEPARATOR)
    if sep and rank.isdigit():
        return base, int(rank)
    return name, None


def get_metric(name: str) -> Metric:
    """A metric by stored name; a per-rank name is its metric, labelled with the rank."""
    base, rank = split_rank_metric(name)
    if rank is not None and base in METRICS:
        metric = METRICS[base]
        return Metric(name, f"{metric.label} r{rank}", metric.unit, metric.higher_is_better,
                      metric.kind, metric.exact_on_cpu)
    metric = METRICS.get(name)
    if metric is None:
        hint = did_you_mean(name, list(METRICS))
        raise OptbenchError(f"unknown metric '{name}'{hint}; known: {', '.join(METRICS)}")
    return metric


def is_better(metric: Metric, value: float, than: float) -> bool:
    return value > than if metric.higher_is_better else value < than


# ----------------------------------------------------------------------------- numbers


def is_number(value) -> bool:
    """A finite number (None, NaN and infinities are 'not measured')."""
    try:
        return value is not None and abs(float(value)) != float("inf") and value == value
    except (TypeError, ValueError):
        return False


def column_unit(metric: Metric) -> str:
    """The unit a table column states once in its header, so cells can be bare numbers."""
    return {"bytes": "MiB", "nats": "nats", "ppl": ""}.get(metric.unit, metric.unit)


def format_mib(nbytes) -> str:
    """MiB with one decimal, two below 10 MiB so tiny models don't all read '0.0'; '—' if none."""
    if not is_number(nbytes):
        return DASH
    mib = float(nbytes) / MIB
    return "0" if mib == 0 else f"{mib:,.1f}" if mib >= 10 else f"{mib:.2f}"


def format_tflops(value) -> str:
    """Three significant digits: a GPU's hundreds and a CPU's hundredths both read."""
    if not is_number(value):
        return DASH
    value = float(value)
    return f"{value:,.0f}" if value >= 99.95 else f"{value:#.3g}"


def format_ratio(value, base) -> str:
    """'0.75×', or '—' when either side is missing or the base is 0."""
    if not (is_number(value) and is_number(base)) or float(base) == 0:
        return DASH
    return f"{float(value) / float(base):.2f}×"


def format_number(metric: Metric, value: float | None) -> str:
    """A bare number in the column's unit (MiB for bytes), or '—' when not measured."""
    if not is_number(value):
        return DASH
    if metric.unit == "bytes":
        return format_mib(value)
    if metric.unit == "TFLOP/s":
        return format_tflops(value)
    spec = {"tokens/s": ",.0f", "ms": ",.1f", "nats": ".3f"}.get(metric.unit, ",.1f")
    return format(float(value), spec)


def format_value(metric: Metric, value: float | None, exact: bool = False) -> str:
    """A number with its unit: every byte when `exact` (a gate counts bytes), else as tables do."""
    if not is_number(value):
        return DASH
    if metric.unit == "bytes" and exact:
        return f"{int(value):,} B"
    unit = column_unit(metric)
    return format_number(metric, value) + (f" {unit}" if unit and value != 0 else "")

"""The metrics optbench compares, in one place: unit, direction, and whether a gate can trust it.

`compare` marks the best value of a column with `higher_is_better`, `check` takes the direction
of a regression from it, and both label columns with `label`. `exact_on_cpu` says the number is
a pure function of the code on the CPU (storage bytes counted by a tracker, not timed and not
float arithmetic), so a CI gate can hold it to the byte on any machine; the rest are recorded
but not gated by default.
"""

from __future__ import annotations

from dataclasses import dataclass

from optbench.errors import OptbenchError, did_you_mean


@dataclass(frozen=True)
class Metric:
    name: str  # as stored, unit in the name
    label: str  # short column header
    unit: str  # bytes | tokens/s | ms | nats | ppl
    higher_is_better: bool
    kind: str  # memory | time | loss: what a suite's device and noise do to it
    exact_on_cpu: bool = False


def _memory(name: str, label: str) -> Metric:
    return Metric(name, label, "bytes", higher_is_better=False, kind="memory", exact_on_cpu=True)


_ALL = (
    _memory("optimizer_state_bytes", "State"),
    _memory("peak_allocated_bytes", "Peak"),
    _memory("tracked_peak_bytes", "Tracked peak"),
    _memory("peak_params_bytes", "Params"),
    _memory("peak_grads_bytes", "Grads"),
    _memory("peak_optimizer_state_bytes", "Opt state"),
    _memory("peak_activations_bytes", "Activations"),
    _memory("peak_temporaries_bytes", "Temps"),
    _memory("paper_memory_bytes", "Paper conv."),
    # Allocator and driver views exist on CUDA only, where nothing is exact.
    Metric("peak_reserved_bytes", "Reserved", "bytes", False, "memory"),
    Metric("nvml_used_bytes", "NVML used", "bytes", False, "memory"),
    Metric("tokens_per_s", "Tokens/s", "tokens/s", True, "time"),
    Metric("step_ms", "Step", "ms", False, "time"),
    Metric("fwd_bwd_ms", "Fwd+bwd", "ms", False, "time"),
    Metric("optimizer_step_ms", "Opt step", "ms", False, "time"),
    # Float results: bit-exact on one machine, not across CPUs (BLAS kernels, thread counts).
    Metric("final_train_loss", "Final loss", "nats", False, "loss"),
    Metric("eval_loss", "Eval loss", "nats", False, "loss"),
    Metric("eval_ppl", "Eval ppl", "ppl", False, "loss"),
)
METRICS: dict[str, Metric] = {m.name: m for m in _ALL}

# What `compare` shows by default, in this order: memory (and its parts), speed, loss.
COMPARE_DEFAULT = (
    "optimizer_state_bytes", "peak_allocated_bytes", "peak_params_bytes", "peak_grads_bytes",
    "peak_optimizer_state_bytes", "peak_activations_bytes", "peak_temporaries_bytes", "tokens_per_s",
    "final_train_loss", "eval_ppl",
)  # fmt: skip

# Results whose metrics can be compared. `estimated` (memory from meta tensors, no training)
# carries memory metrics only; whatever it lacks shows as not measured.
from optbench.store import RESULT_STATUSES as USABLE_STATUSES  # noqa: E402  (ok, estimated)


def get_metric(name: str) -> Metric:
    metric = METRICS.get(name)
    if metric is None:
        hint = did_you_mean(name, list(METRICS))
        raise OptbenchError(f"unknown metric '{name}'{hint}; known: {', '.join(METRICS)}")
    return metric


def is_better(metric: Metric, value: float, than: float) -> bool:
    return value > than if metric.higher_is_better else value < than


def column_unit(metric: Metric) -> str:
    """The unit a table column states once in its header, so cells can be bare numbers."""
    return {"bytes": "MiB", "nats": "nats", "ppl": ""}.get(metric.unit, metric.unit)


def format_number(metric: Metric, value: float | None) -> str:
    """A bare number in the column's unit (MiB for bytes), or '—' when not measured."""
    if value is None or value != value:
        return "—"
    if metric.unit == "bytes":
        mib = value / 2**20  # two decimals below 10 MiB, so tiny models don't all read 0.0
        return "0" if mib == 0 else f"{mib:,.1f}" if mib >= 10 else f"{mib:.2f}"
    spec = {"tokens/s": ",.0f", "ms": ",.1f", "nats": ".3f"}.get(metric.unit, ",.1f")
    return format(value, spec)


def format_value(metric: Metric, value: float | None, exact: bool = False) -> str:
    """A number with its unit: every byte when `exact` (a gate counts bytes), else as tables do."""
    if value is None or value != value:
        return "—"
    if metric.unit == "bytes" and exact:
        return f"{int(value):,} B"
    unit = column_unit(metric)
    return format_number(metric, value) + (f" {unit}" if unit and value != 0 else "")

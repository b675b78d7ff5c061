"""One training burst of one cell, in the current process: the code the worker runs.

The loop is a trimmed pretraining loop (nanoGPT's bench.py in spirit): seeded batches of
packed windows, optional grad accumulation, clipping, a schedule, and measurements taken
around it without perturbing the timed steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from optbench import measure
from optbench.data import load_tokens
from optbench.models import build_model, get_model_size
from optbench.optimizers import build_optimizer, get_spec
from optbench.suite import Cell, LRSchedule

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Step 1 allocates the optimizer state and does first-time work (projectors, a first Hessian
# estimate); step 2 is the first to run with that state held. The peak is the larger of the two.
TRACKED_STEPS = (1, 2)
FINAL_LOSS_WINDOW = 5  # final train loss = mean of the last steps, a less noisy number

Emit = Callable[[dict[str, Any]], None]


class Diverged(Exception):
    """Loss became NaN or infinite."""


@dataclass
class Burst:
    """What a training burst accumulates as it goes."""

    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)
    fwd_bwd_ms: list[float] = field(default_factory=list)
    opt_ms: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def lr_factor(schedule: LRSchedule, steps: int) -> Callable[[int], float]:
    """Multiplier on the peak lr at 0-based step `i`: linear warm-up, then cosine or constant."""

    decay = DECAYS[schedule.kind]

    def factor(i: int) -> float:
        if i < schedule.warmup_steps:
            return (i + 1) / schedule.warmup_steps
        span = max(1, steps - schedule.warmup_steps)
        progress = min(1.0, (i - schedule.warmup_steps) / span)
        return schedule.min_ratio + (1.0 - schedule.min_ratio) * decay(progress)

    return factor


# Decay shapes after warm-up: progress z in [0, 1] -> factor from 1 down to 0 (the floor
# min_ratio is applied on top). REX is Chen et al., "REX: Revisiting Budgeted Training with
# an Improved Schedule" (MLSys 2022, arXiv:2107.04197): (1 - z) / (1/2 + (1 - z)/2).
DECAYS: dict[str, Callable[[float], float]] = {
    "cosine": lambda z: 0.5 * (1.0 + math.cos(math.pi * z)),
    "linear": lambda z: 1.0 - z,
    "rex": lambda z: (1.0 - z) / (0.5 + 0.5 * (1.0 - z)),
    "constant": lambda z: 1.0,
}


def lm_loss(model: torch.nn.Module, window: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on a [batch, seq_len+1] window, computed in float32."""
    logits = model(input_ids=window[:, :-1]).logits
    return F.cross_entropy(logits.float().flatten(0, 1), window[:, 1:].flatten())


def train_cell(cell: Cell, emit: Emit) -> dict[str, Any]:
    """Train, measure, evaluate. Returns {status, error, metrics, curve}; raises on bugs."""
    d = cell.defaults
    device = torch.device(d.device)
    if device.type == "meta":
        from optbench.estimate import estimate_cell

        return estimate_cell(cell, emit)
    if device.type == "cuda" and not torch.cuda.is_available():
        return {"status": "skipped", "error": "CUDA requested but not available on this machine"}
    spec = get_spec(cell.optimizer.name)
    if device.type not in spec.devices:
        return {"status": "skipped",
                "error": f"{spec.name} runs only on {', '.join(spec.devices)}, not {device.type}"}
    torch.manual_seed(d.seed)
    size = get_model_size(cell.model)
    tokens = load_tokens(cell.data, size.vocab_size)
    batches = tokens.train_batches(cell.seq_len, d.batch_size, d.seed)
    model = build_model(cell.model, DTYPES[d.dtype], device)
    optimizer = build_optimizer(cell.optimizer.name, model, **cell.optimizer.hparams)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(d.lr_schedule, d.steps))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    burst = Burst()
    burst.metrics["n_params"] = sum(p.numel() for p in model.parameters())
    burst.metrics["param_bytes"] = measure.param_bytes(model)
    # The registry's formula beside the measurement: a mismatch in a report is a red flag.
    burst.metrics["expected_optimizer_state_bytes"] = spec.expected_state_bytes(
        model, cell.optimizer.hparams)
    status, error = "ok", None
    emit({"event": "start"})  # data and model are ready: the cell's time limit starts here
    try:
        for step in range(1, d.steps + 1):
            _one_step(cell, model, optimizer, scheduler, batches, device, step, burst)
            emit({"event": "step", "step": step, "steps": d.steps, "loss": burst.losses[-1],
                  "tokens_per_s": _tokens_per_s(cell, burst.step_ms[-1:])})
    except Diverged as exc:
        status, error = "diverged", str(exc)
    if device.type == "cuda":
        burst.metrics.update(measure.cuda_memory(device))
    if status == "ok":
        burst.metrics.update(_evaluate(cell, model, tokens, device))
    _summarize(cell, burst)
    curve = [(i + 1, loss, lr) for i, (loss, lr) in enumerate(zip(burst.losses, burst.lrs))]
    return {"status": status, "error": error, "metrics": burst.metrics, "curve": curve}


def forward_backward(model, windows: list[torch.Tensor], autocast_device: str, autocast: bool,
                     create_graph: bool = False,
                     next_micro_batch: Callable[[], None] = lambda: None) -> float:
    """Forward and backward over the micro-batches (grads accumulate); the summed loss.

    Shared with the memory estimator, which traces this very code on fake tensors.
    """
    total = 0.0
    for i, window in enumerate(windows):
        if i:
            next_micro_batch()
        with torch.autocast(autocast_device, torch.bfloat16, enabled=autocast):
            loss = lm_loss(model, window) / len(windows)
        loss.backward(create_graph=create_graph)
        total += loss.item()
    return total


def optimizer_step(model, optimizer: torch.optim.Optimizer, grad_clip: float | None) -> None:
    """Clip, step, and drop the gradients (set_to_none, as the next backward re-creates them)."""
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _one_step(cell, model, optimizer, scheduler, batches, device, step, burst) -> None:
    d = cell.defaults
    create_graph = get_spec(cell.optimizer.name).needs_create_graph
    windows = [next(batches).to(device, non_blocking=True) for _ in range(d.grad_accum)]

    def fwd_bwd(next_micro_batch: Callable[[], None] = lambda: None) -> float:
        return forward_backward(model, windows, device.type, d.autocast, create_graph,
                                next_micro_batch)

    def full_step(next_micro_batch: Callable[[], None]) -> float:
        loss = fwd_bwd(next_micro_batch)
        optimizer_step(model, optimizer, d.grad_clip)
        return loss

    burst.lrs.append(optimizer.param_groups[0]["lr"])
    if step in TRACKED_STEPS:
        holder: list[float] = []
        peak = measure.tracked_peak(model, optimizer, lambda nxt: holder.append(full_step(nxt)))
        if peak["tracked_peak_bytes"] > burst.metrics.get("tracked_peak_bytes", -1):
            burst.metrics.update(peak, tracked_peak_step=step)
        loss = holder[0]
    else:
        fb, op, total = [], [], []
        with measure.stopwatch(device, total):
            with measure.stopwatch(device, fb):
                loss = fwd_bwd()
            with measure.stopwatch(device, op):
                optimizer_step(model, optimizer, d.grad_clip)
        if step > d.warmup:
            burst.fwd_bwd_ms += fb
            burst.opt_ms += op
            burst.step_ms += total
    scheduler.step()
    burst.losses.append(loss)
    if step == 1:
        burst.metrics["optimizer_state_bytes"] = measure.optimizer_state_bytes(optimizer)
    if not math.isfinite(loss):
        raise Diverged(f"loss is {loss} at step {step}")


def _tokens_per_s(cell: Cell, step_ms: list[float]) -> float | None:
    ms = measure.median(step_ms)
    if not ms:
        return None
    d = cell.defaults
    return d.batch_size * d.grad_accum * cell.seq_len / (ms / 1e3)


@torch.no_grad()
def _evaluate(cell: Cell, model, tokens, device) -> dict[str, float]:
    model.eval()
    batches = tokens.eval_batches(cell.seq_len, cell.defaults.batch_size, cell.defaults.eval_batches)
    # The last held-out batch may be short: weight each batch's mean loss by its rows.
    total = sum(lm_loss(model, b.to(device)).item() * len(b) for b in batches)
    model.train()
    eval_loss = total / sum(len(b) for b in batches)
    return {"eval_loss": eval_loss, "eval_ppl": math.exp(min(eval_loss, 700.0))}


def _summarize(cell: Cell, burst: Burst) -> None:
    m = burst.metrics
    m["steps"] = len(burst.losses)
    if burst.losses:
        tail = burst.losses[-FINAL_LOSS_WINDOW:]
        m["final_train_loss"] = sum(tail) / len(tail)
    for name, values in (("step_ms", burst.step_ms), ("fwd_bwd_ms", burst.fwd_bwd_ms),
                         ("optimizer_step_ms", burst.opt_ms)):
        if values:
            m[name] = measure.median(values)
    tps = _tokens_per_s(cell, burst.step_ms)
    if tps:
        m["tokens_per_s"] = tps
    if "peak_allocated_bytes" not in m and "tracked_peak_bytes" in m:
        m["peak_allocated_bytes"] = m["tracked_peak_bytes"]

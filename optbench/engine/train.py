"""One training burst of one cell, in the current process: the code the worker runs.

The loop is a trimmed pretraining loop (nanoGPT's bench.py in spirit): seeded batches of
packed windows, optional grad accumulation, clipping, a schedule, and measurements taken
around it without perturbing the timed steps: steps 1-2 run under the memory tracker and are
never timed; the others are timed with the tracker off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from optbench.config.schedules import lr_factor
from optbench.config.suite import Cell
from optbench.data import load_tokens
from optbench.engine import measure, parallel
from optbench.engine.outcome import CellOutcome
from optbench.engine.state_bytes import optimizer_state_bytes
from optbench.engine.step import (StepOptions, evaluation_weights, forward_backward, lm_loss,
                                  optimizer_step, train_step)
from optbench.hardware import peak_tflops
from optbench.metrics import merge_ranks
from optbench.models import build_model, get_model_size, torch_dtype
from optbench.optimizers import build_optimizer, get_spec

# Step 1 allocates the optimizer state and does first-time work (projectors, a first Hessian
# estimate); step 2 is the first to run with that state held. The peak is the larger of the two.
TRACKED_STEPS = (1, 2)
# With `compile: true`, the tracked steps run the eager model (the tracker's dispatch mode and
# compiled graphs do not mix); the next step is the compiled model's first: it compiles, and is
# timed apart as compile_s, never as a training step.
COMPILE_STEP = max(TRACKED_STEPS) + 1
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

    timeline: list = field(default_factory=list)  # of the tracked step with the larger peak
    compiled: Any = None  # torch.compile of the (wrapped) model, with `compile: true`
    compile_ms: float | None = None  # wall time of its first step, which compiled it

    def keep_larger_peak(self, peak: dict[str, int], step: int, timeline: list) -> None:
        if peak["tracked_peak_bytes"] > self.metrics.get("tracked_peak_bytes", -1):
            self.metrics.update(peak, tracked_peak_step=step)
            self.timeline = measure.thinned(timeline)


def step_options(cell: Cell) -> StepOptions:
    d = cell.defaults
    return StepOptions(torch.device(d.device).type, d.autocast,
                       get_spec(cell.optimizer.name).needs_create_graph, d.grad_clip)


def skip_reason(cell: Cell) -> str | None:
    """Why this cell cannot run on this machine, or None."""
    device = torch.device(cell.defaults.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return "CUDA requested but not available on this machine"
    per_node = parallel.ranks_per_node(cell.parallel.nproc)
    if device.type == "cuda" and per_node > torch.cuda.device_count():
        return (f"{cell.parallel.label} needs {per_node} GPUs on this node (one per rank); "
                f"it has {torch.cuda.device_count()}")
    spec = get_spec(cell.optimizer.name)
    if device.type not in spec.devices:
        return f"{spec.name} runs only on {', '.join(spec.devices)}, not {device.type}"
    if cell.defaults.compile and spec.needs_create_graph:
        return (f"compile: true cannot run {spec.name}: its step differentiates the gradient "
                "again (backward with create_graph), which torch.compile does not support")
    if cell.defaults.compile:
        return measure.compiler_missing(device.type)  # None when a compiler is there
    return None


def train_cell(cell: Cell, emit: Emit) -> CellOutcome:
    """Train, measure, evaluate; raises on bugs (the worker maps them to a status).

    A sharded cell runs this on every rank, in the process group the worker joined: each rank
    draws its own batches, the loss of a step is the mean over ranks, and rank 0 returns the
    merged metrics (every memory and time metric per rank, the max over ranks as headline).
    """
    if (why := skip_reason(cell)) is not None:
        return CellOutcome("skipped", why)
    d, ranks = cell.defaults, parallel.current_ranks()
    device = parallel.rank_device(d.device, ranks)
    torch.manual_seed(d.seed)  # the same weights on every rank
    with parallel.leader_first(ranks):  # rank 0 fills the token cache, the others read it
        tokens = load_tokens(cell.data, get_model_size(cell.model).vocab_size, corpus=cell.corpus)
    batches = tokens.train_batches(cell.seq_len, d.batch_size, parallel.rank_seed(d.seed, ranks.rank))
    model = build_model(cell.model, torch_dtype(d.dtype), device)
    static = _static_metrics(cell, model)  # of the whole model, before any sharding
    wrapped = parallel.wrap_model(model, cell.parallel.strategy)
    optimizer, unsupported = None, None
    try:
        optimizer = parallel.build_parallel_optimizer(cell.optimizer.name, model,
                                                      cell.parallel.strategy, **cell.optimizer.hparams)
    except parallel.Unsupported as exc:
        unsupported = str(exc)
    # ZeRO-1 builds the class on each rank's own share: one rank may refuse where the others
    # do not, and all must skip together rather than wait in different collectives.
    if (why := parallel.first_error(unsupported, ranks)) is not None:
        return CellOutcome("skipped", why)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(d.lr_schedule, d.steps))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    burst = Burst(metrics=static, compiled=torch.compile(wrapped) if d.compile else None)
    status, error = _train(cell, wrapped, optimizer, scheduler, batches, burst,
                           emit if ranks.local_rank == 0 else _silent, ranks)
    if device.type == "cuda":
        burst.metrics.update(measure.cuda_memory(device))
    if status == "ok":
        with evaluation_weights(optimizer):
            burst.metrics.update(_evaluate(cell, wrapped, tokens, device))
    _summarize(cell, burst)
    per_rank = parallel.gather_to_leader(burst.metrics, ranks)
    metrics = merge_rank_metrics(per_rank, cell) if per_rank and ranks.world > 1 else burst.metrics
    metrics.update(flops_metrics(cell, metrics, device))
    curve = [(i + 1, loss, lr) for i, (loss, lr) in enumerate(zip(burst.losses, burst.lrs))]
    # The timeline is this rank's (rank 0's for a sharded cell: the one that stores results).
    return CellOutcome(status, error, metrics=metrics, curve=curve, timeline=burst.timeline)


def _silent(event: dict[str, Any]) -> None:
    """Only each node's first rank reports progress (its runner's time limit starts on it):
    one line per step, not one per rank."""


def _train(cell: Cell, model, optimizer, scheduler, batches, burst: Burst, emit: Emit,
           ranks: parallel.Ranks) -> tuple[str, str | None]:
    """The steps; (status, error). Every rank sees the same mean loss, so all stop together."""
    d, device = cell.defaults, next(model.parameters()).device
    opts = step_options(cell)
    emit({"event": "start"})  # data and model are ready: the cell's time limit starts here
    try:
        for step in range(1, d.steps + 1):
            windows = [next(batches).to(device, non_blocking=True) for _ in range(d.grad_accum)]
            _one_step(cell, opts, model, optimizer, windows, step, burst, ranks)
            scheduler.step()
            emit({"event": "step", "step": step, "steps": d.steps, "loss": burst.losses[-1],
                  "tokens_per_s": _tokens_per_s(cell, burst.step_ms[-1:])})
    except Diverged as exc:
        return "diverged", str(exc)
    return "ok", None


def _one_step(cell: Cell, opts: StepOptions, model, optimizer, windows, step: int,
              burst: Burst, ranks: parallel.Ranks) -> None:
    """One step, either tracked (memory) or timed (speed); its loss and lr go into `burst`."""
    burst.lrs.append(optimizer.param_groups[0]["lr"])
    if step in TRACKED_STEPS:
        timeline: list = []
        with measure.tracked_peak(model, optimizer, timeline) as peak:
            loss = train_step(model, optimizer, windows, opts)
        burst.keep_larger_peak(peak, step, timeline)
    else:
        device = next(model.parameters()).device  # stopwatch synchronizes it
        forward_model = burst.compiled if burst.compiled is not None else model
        with measure.stopwatch(device) as total:
            with measure.stopwatch(device) as fwd_bwd:
                loss = forward_backward(forward_model, windows, opts)
            with measure.stopwatch(device) as opt:
                optimizer_step(model, optimizer, opts.grad_clip)
        if burst.compiled is not None and step == COMPILE_STEP:
            burst.compile_ms = total.ms
        elif step > cell.defaults.warmup:
            burst.step_ms.append(total.ms)
            burst.fwd_bwd_ms.append(fwd_bwd.ms)
            burst.opt_ms.append(opt.ms)
    burst.losses.append(parallel.mean_over_ranks(loss, ranks))  # outside the timed region
    loss = burst.losses[-1]
    if step == 1:  # the state is allocated lazily, in the first step
        burst.metrics["optimizer_state_bytes"] = optimizer_state_bytes(optimizer)
    if not math.isfinite(loss):
        raise Diverged(f"loss is {loss} at step {step}")


def _static_metrics(cell: Cell, model: torch.nn.Module) -> dict[str, float]:
    """What is known before training: sizes, and the registry's state formula — beside the
    measurement in a report, a mismatch is a red flag."""
    return {
        "n_params": sum(p.numel() for p in model.parameters()),
        "param_bytes": measure.param_bytes(model),
        "expected_optimizer_state_bytes": get_spec(cell.optimizer.name).expected_state_bytes(
            model, cell.optimizer.hparams),
        "model_flops_per_token": get_model_size(cell.model).flops_per_token(cell.seq_len),
    }


def flops_metrics(cell: Cell, metrics: dict[str, float], device: torch.device) -> dict[str, float]:
    """Model TFLOP/s over all ranks from the cell's tokens/s, and MFU where the device is a GPU
    of known peak (optbench.hardware): achieved over peak × ranks, in percent."""
    tokens_per_s = metrics.get("tokens_per_s")
    if not tokens_per_s:
        return {}
    tflops = tokens_per_s * get_model_size(cell.model).flops_per_token(cell.seq_len) / 1e12
    out = {"model_tflops_per_s": tflops}
    if device.type == "cuda":
        # bf16 autocast multiplies in bf16 whatever the weights' dtype: its peak is the bf16 one.
        compute = "bf16" if cell.defaults.autocast else cell.defaults.dtype
        peak = peak_tflops(torch.cuda.get_device_name(device), compute)
        if peak:
            out["mfu_percent"] = 100 * tflops / (peak * cell.parallel.nproc)
    return out


def tokens_per_step(cell: Cell) -> int:
    """Tokens one optimizer step trains on, over all ranks (`batch_size` is per rank)."""
    return cell.tokens_per_step


def _tokens_per_s(cell: Cell, step_ms: list[float]) -> float | None:
    ms = measure.median(step_ms)
    return tokens_per_step(cell) / (ms / 1e3) if ms else None


def merge_rank_metrics(per_rank: list[dict[str, float]], cell: Cell) -> dict[str, float]:
    """One cell's metrics from its ranks' (rank order), as `metrics.merge_ranks` merges them;
    tokens/s from the slowest rank's step time, over all ranks' tokens and per device."""
    merged = merge_ranks(per_rank)
    if merged.get("step_ms"):
        merged["tokens_per_s"] = tokens_per_step(cell) / (merged["step_ms"] / 1e3)
        merged["tokens_per_s_per_device"] = merged["tokens_per_s"] / len(per_rank)
    return merged


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
    if burst.compile_ms is not None and "step_ms" in m:
        m["compile_s"] = max(burst.compile_ms - m["step_ms"], 0.0) / 1e3
    if "peak_allocated_bytes" not in m and "tracked_peak_bytes" in m:
        m["peak_allocated_bytes"] = m["tracked_peak_bytes"]

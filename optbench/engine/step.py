"""One training step — forward, backward, clip, `optimizer.step()`, zero grad — as every path
runs it: a measured run (optbench.engine.train), a traced estimate (optbench.engine.trace) on
fake tensors, and the real-tensor peak an estimate is held against."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class StepOptions:
    """How a step runs, apart from the model, the optimizer and the batch."""

    device_type: str = "cpu"  # autocast's device type
    autocast: bool = False  # bf16 autocast around forward+backward
    create_graph: bool = False  # backward keeps its graph: the optimizer differentiates p.grad
    grad_clip: float | None = None  # max global grad norm; None: no clipping


def lm_loss(model: torch.nn.Module, window: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on a [batch, seq_len+1] window, computed in float32."""
    logits = model(input_ids=window[:, :-1]).logits
    return F.cross_entropy(logits.float().flatten(0, 1), window[:, 1:].flatten())


def forward_backward(model: torch.nn.Module, windows: list[torch.Tensor],
                     opts: StepOptions) -> float:
    """Forward and backward over the micro-batches (grads accumulate); the mean loss. Under DDP
    or FSDP2 the gradients are reduced across ranks once, on the last micro-batch, as a
    training loop with accumulation does."""
    total = 0.0
    for i, window in enumerate(windows):
        with _gradient_sync(model, i == len(windows) - 1):
            with torch.autocast(opts.device_type, torch.bfloat16, enabled=opts.autocast):
                loss = lm_loss(model, window) / len(windows)
            loss.backward(create_graph=opts.create_graph)
        total += loss.item()
    return total


@contextlib.contextmanager
def _gradient_sync(model: torch.nn.Module, sync: bool) -> Iterator[None]:
    """DDP's `no_sync()` / FSDP2's `set_requires_gradient_sync(False)` unless `sync`; nothing
    for a model that is not wrapped."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper: sync is DDP's / FSDP's
    if sync:
        yield
    elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   grad_clip: float | None) -> None:
    """Clip, step, and drop the gradients (set_to_none, as the next backward re-creates them)."""
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               windows: list[torch.Tensor], opts: StepOptions) -> float:
    """One whole step; its loss."""
    loss = forward_backward(model, windows, opts)
    optimizer_step(model, optimizer, opts.grad_clip)
    return loss


@contextlib.contextmanager
def evaluation_weights(optimizer: torch.optim.Optimizer | None) -> Iterator[None]:
    """Within the block the model holds the weights to evaluate. Schedule-free optimizers train
    at one point (y) and evaluate at another (the average x): their `eval()` moves the
    weights there and `train()` back, the protocol of facebookresearch/schedule_free and
    pytorch_optimizer. An optimizer without both methods (torch's have neither) is left alone."""
    switch = optimizer if all(callable(getattr(optimizer, m, None)) for m in ("eval", "train")) \
        else None
    if switch is not None:
        switch.eval()
    try:
        yield
    finally:
        if switch is not None:
            switch.train()

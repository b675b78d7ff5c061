"""Data-parallel strategies on the same model code: DDP, FSDP2 and ZeRO-1, inside a process
group that torchrun started (gloo on CPU, NCCL on CUDA).

torch's own wrappers only, no collective of ours: `DistributedDataParallel`; `fully_shard` per
decoder layer and then the root, always on an explicit device mesh (without one, a machine that
sees a GPU moves CPU params to CUDA, pytorch#132471); `ZeroRedundancyOptimizer` over the
registry entry's own class and param groups.

Groundwork for sharded cells (issue 12): the parity harness (`optbench.engine.parity`) uses it;
suites, the runner and the reports do not yet.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from optbench.errors import OptbenchError, informative_line
from optbench.optimizers import build_optimizer

STRATEGIES = ("none", "ddp", "fsdp2", "zero1")


class Unsupported(OptbenchError):
    """This optimizer cannot run under this strategy; the message says why, in one line."""


def wrap_model(model: nn.Module, strategy: str) -> nn.Module:
    """The module to run forward/backward through. FSDP2 shards `model` in place (its params
    become DTensors), so build the optimizer after this."""
    if strategy in ("none",):
        return model
    if strategy in ("ddp", "zero1"):
        device_ids = [model.device.index] if model.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if strategy == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(model.device.type, (dist.get_world_size(),))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    raise OptbenchError(f"unknown parallel strategy '{strategy}'; known: {', '.join(STRATEGIES)}")


def build_parallel_optimizer(name: str, model: nn.Module, strategy: str,
                             **hparams: Any) -> torch.optim.Optimizer:
    """The registry's optimizer for `model` (already wrapped); for zero1, the same class and
    param groups with each rank keeping the state of its share of the params."""
    optimizer = build_optimizer(name, model, **hparams)
    if strategy != "zero1":
        return optimizer
    return _zero1(optimizer)


def _zero1(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """ZeRO rebuilds the class on each rank's share of the params, as cls(params, **defaults):
    defaults are filtered to what the constructor names (torch's AdamW stores keys it does not
    take)."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    cls = type(optimizer)
    accepted = constructor_parameters(cls)
    if accepted is None:
        raise Unsupported(f"ZeRO-1 rebuilds the optimizer from params; {cls.__name__} is not "
                          "built from params (several optimizers in one, or no params argument)")
    defaults = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    groups = [dict(g) for g in optimizer.param_groups]
    try:
        return ZeroRedundancyOptimizer(groups, optimizer_class=cls, **defaults)
    except Exception as exc:  # the class rejects ZeRO's per-rank rebuild
        raise Unsupported(f"ZeRO-1 cannot rebuild {cls.__name__}: {error_line(exc)}") from exc


def constructor_parameters(cls: type) -> set[str] | None:
    """The keyword names the constructor of `cls` takes after its params, looked up through
    subclasses that only pass *args/**kwargs on; None when it takes no params first."""
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = list(inspect.signature(klass.__init__).parameters.values())[1:]
        kinds = {p.kind for p in parameters}
        if kinds <= {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}:
            continue  # a pass-through __init__: the next class down says what it takes
        first = parameters[0] if parameters else None
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        if first is None or first.kind not in positional or first.name not in ("params",
                                                                               "param_groups"):
            return None
        return {p.name for p in parameters[1:]}
    return None


def full_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter whole (an FSDP2 shard gathered), detached, by name."""
    return {
        name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach()
        for name, p in model.named_parameters()
    }


def error_line(exc: BaseException) -> str:
    """An exception as one line: its type and the informative line of its text."""
    return f"{type(exc).__name__}: {informative_line(str(exc))}"[:300]

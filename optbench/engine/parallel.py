"""Data-parallel strategies on the same model code: DDP, FSDP2 and ZeRO-1, inside a process
group that torchrun started (gloo on CPU, NCCL on CUDA).

torch's own wrappers only, no collective of ours: `DistributedDataParallel`; `fully_shard` per
decoder layer and then the root, always on an explicit device mesh (without one, a machine that
sees a GPU moves CPU params to CUDA, pytorch#132471); `ZeroRedundancyOptimizer` over the
registry entry's own class and param groups.

A sharded cell (`optbench.engine.train`) and the parity harness (`optbench.engine.parity`) run
on it; `optbench.engine.launch` starts the ranks.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from optbench.config.suite import PARALLEL_STRATEGIES as STRATEGIES
from optbench.errors import OptbenchError, informative_line
from optbench.optimizers import build_optimizer


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in its cell: rank 0 of 1 when the cell is one process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def leader(self) -> bool:
        """Rank 0: it emits progress and writes the cell's result."""
        return self.rank == 0


def join_process_group(device_type: str) -> Ranks:
    """Join the group torchrun set up (its env: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*): NCCL
    with one GPU per rank on CUDA, gloo on CPU. Collectives keep torch's timeout (10-30 min):
    rank 0's first tokenization or a large model's build may hold the others at a barrier for
    long, and a cell's `timeout_s` is the runner's, from the start of training."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank)


def leave_process_group() -> None:
    """Leave together: a rank that tears its connections down while another is still in its
    last collective makes gloo abort that one."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def ranks_per_node(nproc: int) -> int:
    """Ranks of a cell on this node: torchrun's LOCAL_WORLD_SIZE inside a rank, else the
    cell's ranks over the nodes (OPTBENCH_NNODES)."""
    from optbench.config.suite import launch_nodes

    local = os.environ.get("LOCAL_WORLD_SIZE")
    return int(local) if local and local.isdigit() else nproc // launch_nodes()


def first_error(local_error: str | None, ranks: Ranks) -> str | None:
    """The first rank's error if any rank has one, on every rank (so all take the same path)."""
    if ranks.world == 1:
        return local_error
    errors: list[str | None] = [None] * ranks.world
    dist.all_gather_object(errors, local_error)
    return next((e for e in errors if e), None)


def current_ranks() -> Ranks:
    """This process's place, read from the joined group (one process when there is none)."""
    if not dist.is_initialized():
        return Ranks()
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def rank_device(device: str, ranks: Ranks) -> torch.device:
    """The device a rank runs on: its own GPU (cuda:LOCAL_RANK) on CUDA."""
    if device == "cuda" and ranks.world > 1:
        return torch.device("cuda", ranks.local_rank)
    return torch.device(device)


def rank_seed(seed: int, rank: int) -> int:
    """The batch-order seed of a rank: rank 0 keeps the suite's seed (it draws the batches the
    one-process cell draws); every other rank gets its own stream, never another seed's."""
    if rank == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0] >> 1)


@contextlib.contextmanager
def leader_first(ranks: Ranks) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. tokenizing into the shared cache), the others after."""
    if ranks.world > 1 and not ranks.leader:
        dist.barrier()
    yield
    if ranks.world > 1 and ranks.leader:
        dist.barrier()


def mean_over_ranks(value: float, ranks: Ranks) -> float:
    """The mean of a float over the ranks (the global batch's loss from each rank's)."""
    if ranks.world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64,
                          device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(tensor)
    return float(tensor.item()) / ranks.world


def gather_to_leader(obj: Any, ranks: Ranks) -> list[Any] | None:
    """Every rank's `obj`, in rank order, on rank 0 (None on the others)."""
    if ranks.world == 1:
        return [obj]
    out = [None] * ranks.world if ranks.leader else None
    dist.gather_object(obj, out, dst=0)
    return out


class Unsupported(OptbenchError):
    """This optimizer cannot run under this strategy; the message says why, in one line."""


def wrap_model(model: nn.Module, strategy: str, mesh=None) -> nn.Module:
    """The module to run forward/backward through. FSDP2 shards `model` in place (its params
    become DTensors), so build the optimizer after this; on `mesh` when given (a per-rank
    estimate makes it before entering fake-tensor mode), else on one over all ranks."""
    if strategy in ("none",):
        return model
    if strategy in ("ddp", "zero1"):
        device_ids = [model.device.index] if model.device.type == "cuda" else None
        # ZeRO-1 shards the optimizer only: gradients are averaged by DDP, as torch's
        # ZeroRedundancyOptimizer documentation pairs them.
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if strategy == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = mesh or init_device_mesh(model.device.type, (dist.get_world_size(),))
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
    if all(callable(getattr(optimizer, m, None)) for m in ("eval", "train")):
        raise Unsupported(f"ZeRO-1 cannot evaluate {cls.__name__}: its eval() moves only each "
                          "rank's own share of the weights to the evaluation point")
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

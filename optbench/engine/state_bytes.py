"""Bytes held by an optimizer's state, counted from the tensors themselves.

Counting storages rather than tensors makes views (a state entry that slices another)
count once, and skipping the parameters' storages keeps an optimizer that keeps a
reference to its parameter in `state` from being charged for the model's weights.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from optbench.optimizers.kernels import is_sharded

StorageKey = tuple[torch.device, int]


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every distinct storage reachable from `optimizer.state`, parameters excluded.

    Under sharding, this rank's bytes: an FSDP2 shard (DTensor) counts its local tensor, and
    ZeRO-1 (`ZeroRedundancyOptimizer`) the optimizer over this rank's share of the params.
    """
    return sum(t.untyped_storage().nbytes() for t in state_tensors(optimizer))


def state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """One tensor per distinct storage reachable from `optimizer.state`, parameters excluded."""
    local = getattr(optimizer, "optim", None)  # ZeRO-1 keeps this rank's optimizer here
    if isinstance(local, torch.optim.Optimizer):
        optimizer = local
    seen = {_storage_key(local_part(p)) for group in optimizer.param_groups for p in group["params"]}
    out = []
    for tensor in map(local_part, _tensors(list(optimizer.state.values()), visited=set())):
        key = _storage_key(tensor)
        if key not in seen:
            seen.add(key)
            out.append(tensor)
    return out


def state_tensors_of(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> list[torch.Tensor]:
    """The tensors of one parameter's state (none before its first step)."""
    return list(_tensors(optimizer.state.get(param, {}), visited=set()))


def local_part(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor (an FSDP2 shard); any other tensor as it is."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def _storage_key(tensor: torch.Tensor) -> StorageKey:
    # The storage's own identity, not its data pointer: fake tensors (memory estimates)
    # have no data, and every one of them would share pointer 0.
    return tensor.device, tensor.untyped_storage()._cdata


def _tensors(obj: Any, visited: set[int]) -> Iterator[torch.Tensor]:
    """Tensors inside nested dicts, lists, tuples and plain objects' attributes.

    Optimizer state is mostly plain containers, but some optimizers keep helper objects there
    (pytorch_optimizer's GaLoreProjector holds its projection matrix as an attribute).
    `visited` guards against objects that refer back to each other.
    """
    if isinstance(obj, torch.Tensor):
        yield obj
        return
    if id(obj) in visited:
        return
    visited.add(id(obj))
    if isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value, visited)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value, visited)
    elif hasattr(obj, "__dict__"):
        yield from _tensors(vars(obj), visited)

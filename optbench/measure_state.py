"""Bytes held by an optimizer's state, counted from the tensors themselves.

Counting storages rather than tensors makes views (a state entry that slices another)
count once, and skipping the parameters' storages keeps an optimizer that keeps a
reference to its parameter in `state` from being charged for the model's weights.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

StorageKey = tuple[torch.device, int]


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every distinct storage reachable from `optimizer.state`, parameters excluded."""
    seen = {_storage_key(p) for group in optimizer.param_groups for p in group["params"]}
    total = 0
    for tensor in _tensors(list(optimizer.state.values())):
        key = _storage_key(tensor)
        if key not in seen:
            seen.add(key)
            total += tensor.untyped_storage().nbytes()
    return total


def _storage_key(tensor: torch.Tensor) -> StorageKey:
    return tensor.device, tensor.untyped_storage().data_ptr()


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Tensors inside nested dicts, lists, tuples and plain objects' attributes.

    Optimizer state is mostly plain containers, but some optimizers keep helper objects there
    (pytorch_optimizer's GaLoreProjector holds its projection matrix as an attribute).
    """
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)
    elif hasattr(obj, "__dict__"):
        yield from _tensors(vars(obj))

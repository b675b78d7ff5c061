"""Small pieces shared by the in-house optimizers."""

from __future__ import annotations

from typing import Any, Callable

import torch


def run_closure(closure: Callable[[], Any] | None) -> Any:
    """torch.optim's closure convention: re-evaluate the loss with grad enabled, if given."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()

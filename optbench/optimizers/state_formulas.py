"""Byte rules shared by the entries' exact state formulas (`OptimizerSpec.expected_state_bytes`).

Each rule is written once here, so two entries that keep the same kind of state (torch's
`step` tensor, AdamW's two moments) cannot count it two different ways.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from optbench.optimizers.policy import param_roles

BytesOf = Callable[[torch.Tensor], int]  # one parameter -> the state bytes it gets


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """Parameters an optimizer is handed (frozen ones would never get state)."""
    return [p for p in model.parameters() if p.requires_grad]


def elements_bytes(numel: int, like: torch.Tensor) -> int:
    """`numel` elements of `like`'s dtype (state kept in the parameter's dtype)."""
    return numel * like.element_size()


def tensor_bytes(p: torch.Tensor) -> int:
    return elements_bytes(p.numel(), p)


def torch_step_bytes() -> int:
    """torch.optim's per-parameter `step` (AdamW, Adafactor): a 0-d tensor of torch's scalar
    dtype, float32 unless the default dtype is float64 (fused AdamW always uses float32;
    optbench never makes float64 the default)."""
    return 8 if torch.get_default_dtype() == torch.float64 else 4


def adamw_bytes(p: torch.Tensor) -> int:
    """torch.optim.AdamW on one parameter: exp_avg and exp_avg_sq (param dtype) and `step`."""
    return 2 * tensor_bytes(p) + torch_step_bytes()


def params_bytes(params: Iterable[torch.Tensor], bytes_of: BytesOf = tensor_bytes) -> int:
    return sum(bytes_of(p) for p in params)


def per_param(bytes_of: BytesOf) -> Callable[[nn.Module, dict], int]:
    """A state formula summing `bytes_of` over every trainable parameter, whatever the hparams."""
    return lambda model, hp: params_bytes(trainable(model), bytes_of)


def role_bytes(model: nn.Module, *roles: str, bytes_of: BytesOf = tensor_bytes) -> int:
    """`bytes_of` summed over the parameters of these policy roles (optbench.optimizers.policy)."""
    found = param_roles(model)
    return params_bytes((p for role in roles for _, p in found.get(role, [])), bytes_of)

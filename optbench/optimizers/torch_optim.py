"""The baseline entries, torch.optim AdamW and SGD, on every trainable parameter.

They are registered before every other entry (the package imports this module first), so
they lead `list_specs()`. torch.optim's other entries (sgd_momentum, adafactor) are in
`library` with the rest of the maintained-library optimizers.
"""

from __future__ import annotations

import torch
from torch import nn

from optbench.optimizers.registry import OptimizerSpec, register
from optbench.optimizers.state_formulas import adamw_bytes, per_param, trainable

adamw_state_bytes = per_param(adamw_bytes)


def build_adamw(model: nn.Module, hp: dict) -> torch.optim.Optimizer:
    return torch.optim.AdamW(trainable(model), **hp)


def build_sgd(model: nn.Module, hp: dict) -> torch.optim.Optimizer:
    return torch.optim.SGD(trainable(model), **hp)


register(
    OptimizerSpec(
        name="adamw",
        aliases=("adam",),
        factory=build_adamw,
        source="torch.optim.AdamW",
        paper=(
            "Loshchilov & Hutter, Decoupled Weight Decay Regularization, ICLR 2019, "
            "arXiv:1711.05101"
        ),
        policy="every trainable parameter in one group: AdamW with the same lr and weight decay",
        default_hparams={
            "lr": 1e-3,
            "betas": (0.9, 0.999),
            "eps": 1e-8,
            "weight_decay": 0.0,
            "foreach": None,  # None: torch picks the implementation for the device
            "fused": None,
        },
        state_formula=(
            "2 × params × bytes/elem (exp_avg, exp_avg_sq, param dtype) "
            "+ 4 B float32 `step` per param tensor"
        ),
        expected_state_bytes=adamw_state_bytes,
    )
)

register(
    OptimizerSpec(
        name="sgd",
        factory=build_sgd,
        source="torch.optim.SGD",
        paper="Robbins & Monro, A Stochastic Approximation Method, Ann. Math. Statist. 1951",
        policy="every trainable parameter in one group: plain SGD, no momentum",
        # No momentum hparam: with momentum 0 torch.optim.SGD keeps no state at all.
        default_hparams={"lr": 1e-2, "weight_decay": 0.0},
        state_formula="0 B (momentum 0 stores no momentum_buffer)",
        expected_state_bytes=lambda model, hp: 0,
    )
)

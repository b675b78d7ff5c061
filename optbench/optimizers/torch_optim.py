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

# The AdamW authors' Lua Torch code: the update (adam_type 1 = decoupled decay) and its defaults.
_ADAMW_LUA = "loshchil/AdamW-and-SGDW: UPDATETORCHFILES/adam.lua (optim.adam defaults)"


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
        reference=(
            "loshchil/AdamW-and-SGDW: UPDATETORCHFILES/adam.lua (optim.adam, adam_type 1), "
            "train.lua (Trainer:train, weightDecaycurrent); runs torch.optim.AdamW, not held "
            "against it in a test"
        ),
        deviations=(
            "torch.optim.AdamW decays p by lr_t × weight_decay; the authors' train.lua by "
            "η_t × λ_norm, with η_t = lr_t / lr the schedule multiplier and λ_norm = λ / "
            "sqrt(batches per epoch × restart period in epochs). The same rule with "
            "weight_decay = λ_norm / lr; no effect at the default 0.",
        ),
        default_sources={
            "lr": "torch.optim.AdamW default; the same in " + _ADAMW_LUA,
            "betas": "torch.optim.AdamW default; the same in " + _ADAMW_LUA,
            "eps": "torch.optim.AdamW default; the same in " + _ADAMW_LUA,
            "weight_decay": (
                "optbench choice: no decay (torch.optim.AdamW's default is 1e-2), as in "
                + _ADAMW_LUA
                + " and the SCALE repo's AdamW baseline (OptimAI-Lab/Minimalist_LLM_Pretraining: "
                "mem_eff_pt/utils/args.py, --weight_decay default 0.0)"
            ),
            "foreach": "torch.optim.AdamW default (None: torch picks the implementation)",
            "fused": "torch.optim.AdamW default (None: torch picks the implementation)",
        },
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
        reference=(
            "no authors' code (Robbins & Monro 1951: p -= lr·g); runs torch.optim.SGD "
            "(SGD.step, momentum 0)"
        ),
        deviations=(),
        default_sources={
            "lr": (
                "optbench choice, no recorded reason (torch.optim.SGD's default is 1e-3); the "
                "paper suites pass their own (lr 0.5 in suites/llama_*.yaml)"
            ),
            "weight_decay": "torch.optim.SGD default",
        },
    )
)

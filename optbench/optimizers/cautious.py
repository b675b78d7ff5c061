"""Cautious optimizers (C-Optim: Liang et al., Cautious Optimizers: Improving Training with One
Line of Code, arXiv:2411.16085): the update is masked where it disagrees in sign with the
gradient, and the mask rescaled so the update keeps its size.

- cautious_lion: pytorch_optimizer.Lion with `cautious=True`, the authors' C-Lion to the bit.
- cautious_adamw: in-house (`CautiousAdamW`), since no maintained library at hand has it:
  pytorch_optimizer 4.1.0's AdamW is torch's (no mask), its StableAdamW takes `cautious` and
  ignores it, and AdEMAMix with alpha 0 would keep a third, unused buffer. It follows the
  authors' kyleliang919/C-Optim c_adamw.py (AdamW.step) line by line and is held to that rule
  in float64 by tests/optimizers/test_optimizers_canon.py.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from optbench.optimizers.common import run_closure
from optbench.optimizers.library import every_param, po_factory, po_source
from optbench.optimizers.registry import OptimizerSpec, register
from optbench.optimizers.state_formulas import per_param, tensor_bytes, trainable

PAPER = (
    "Liang et al., Cautious Optimizers: Improving Training with One Line of Code, 2024, "
    "arXiv:2411.16085"
)
_C_ADAMW = "kyleliang919/C-Optim: c_adamw.py"
_C_LION = "kyleliang919/C-Optim: c_lion.py"
MASK_FLOOR = 1e-3  # the authors' mask.mean().clamp_(min=1e-3)


class CautiousAdamW(torch.optim.Optimizer):
    """C-AdamW, as the authors' per-parameter loop:

        p ← p - lr·wd·p                                  (decoupled decay, first)
        m ← β1·m + (1-β1)·g ;  v ← β2·v + (1-β2)·g²
        step = lr·√(1-β2^t)/(1-β1^t)   (lr when correct_bias is off)
        φ = 1[m·g > 0] ;  φ ← φ / max(mean(φ), 1e-3)
        p ← p - step·(m·φ)/(√v + eps)

    State: exp_avg and exp_avg_sq in the param dtype; `step` a Python int (the authors').
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, correct_bias: bool = True):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"CautiousAdamW: lr, eps, weight_decay ≥ 0 and betas in [0, 1) "
                             f"(got lr={lr}, betas={betas}, eps={eps}, wd={weight_decay})")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      correct_bias=correct_bias))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p: torch.Tensor, group: dict) -> None:
        grad, state = p.grad, self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        (beta1, beta2), lr = group["betas"], group["lr"]
        if group["weight_decay"] > 0:
            p.add_(p, alpha=-lr * group["weight_decay"])
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = exp_avg_sq.sqrt().add_(group["eps"])
        step_size = lr
        if group["correct_bias"]:
            t = state["step"]
            step_size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        mask = (exp_avg * grad > 0).to(grad.dtype)
        mask.div_(mask.mean().clamp_(min=MASK_FLOOR))
        p.addcdiv_(exp_avg * mask, denom, value=-step_size)


def _build_cautious_adamw(model: nn.Module, hp: dict) -> torch.optim.Optimizer:
    return CautiousAdamW(trainable(model), **hp)


def _spec(name: str, **fields) -> None:
    register(OptimizerSpec(name=name, version="1", devices=("cpu", "cuda"), paper=PAPER,
                           **fields))


_spec(
    "cautious_adamw",
    factory=_build_cautious_adamw,
    source="in-house (optbench.optimizers.cautious.CautiousAdamW), the authors' C-AdamW",
    policy=every_param("C-AdamW (AdamW with the cautious mask)"),
    default_hparams={"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.0,
                     "correct_bias": True},
    state_formula="2 × n × B per param (exp_avg, exp_avg_sq; param dtype); step a Python int",
    expected_state_bytes=per_param(lambda p: 2 * tensor_bytes(p)),
    reference=(
        f"{_C_ADAMW} (AdamW.step, the per-parameter loop), held to it in float64 by "
        "tests/optimizers/test_optimizers_canon.py"
    ),
    deviations=(
        "The mask is scaled by 1/max(mean, 1e-3) as in the authors' current code; the paper's "
        "first release scaled by numel/(sum + 1) and decayed after the update.",
    ),
    default_sources={
        key: _C_ADAMW + " (AdamW.__init__); the README's LLaMA-60M run uses lr 1e-3, wd 0"
        for key in ("lr", "betas", "eps", "weight_decay", "correct_bias")
    },
)

_spec(
    "cautious_lion",
    factory=po_factory("Lion", fixed={"cautious": True}),
    source=po_source("Lion") + " (cautious=True)",
    policy=every_param("C-Lion (Lion with the cautious mask)"),
    default_hparams={"lr": 1e-4, "betas": (0.95, 0.98), "weight_decay": 0.0},
    state_formula="n × B per param (exp_avg, param dtype); step lives in the param group",
    expected_state_bytes=per_param(tensor_bytes),
    reference=(
        f"{_C_LION} (update_fn); runs {po_source('Lion')} with cautious=True, held to the "
        "authors' rule in float64 by tests/optimizers/test_optimizers_canon.py"
    ),
    deviations=(),
    default_sources={
        key: _C_LION + " (Lion.__init__; pytorch_optimizer's Lion defaults to betas (0.9, 0.99))"
        for key in ("lr", "betas", "weight_decay")
    },
)

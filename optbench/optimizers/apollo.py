"""APOLLO and APOLLO-Mini as the official code runs them (Zhu et al., arXiv:2412.05270).

Follows apollo_torch/apollo.py (class AdamW, `step`) and apollo_torch/random_projector.py
(GradientProjector, `stable_randn`, `next_seed`) of github.com/zhuhanqing/APOLLO, at their
defaults (proj="random", proj_type="std", scale_front=False, disable_nl=False,
correct_bias=True). Per parameter, t = its own step count after the increment:

Projected group (has a "rank" key; 2-D [m, n] gradient G, rank r):
  projector  refreshed when it is missing or (t-1) % update_proj_gap == 0, i.e. before updates
             1, gap+1, 2·gap+1, ...: P = randn(shape, Generator(G.device).manual_seed(seed),
             float32) / sqrt(r), cast to the param dtype; shape [r, n] ("right") if m >= n,
             else [m, r] ("left"). Then seed <- next_seed(seed): the last of 15 int64 draws
             from a CPU generator seeded with seed. The first seed is the parameter's 1-based
             index over all param groups (the official __init__).
  R = G Pᵀ ([m, r]) if m >= n else Pᵀ G ([r, n])
  M = β1 M + (1-β1) R;  V = β2 V + (1-β2) R²;  N = M / (sqrt(V) + eps)
  channel-wise: d = 0 if R.shape[0] < R.shape[1] else 1; s = ‖N‖_d / (‖R‖_d + 1e-8),
                unsqueezed to [m, 1] when d = 1 (one factor per row, m >= n), [n] when d = 0
                (one per column)
  tensor-wise:  s = ‖N‖_F / (‖R‖_F + 1e-8)
  U = G ⊙ s   (the FULL-rank gradient, scaled)
  norm-growth limiter from the second update on: ℓ = max(‖U‖ / (u_prev + 1e-8), 1.01) / 1.01,
             U <- U / ℓ, u_prev <- ‖U_before‖ / ℓ (first update: u_prev <- ‖U‖)
  p <- p - lr·sqrt(1-β2^t)/(1-β1^t) · sqrt(scale) · U
Other groups: the same AdamW without projection:
  p <- p - lr·sqrt(1-β2^t)/(1-β1^t) · M / (sqrt(V) + eps).
Every group, after its update: p <- p - lr·weight_decay·p (the plain lr, not bias-corrected).

State per projected param: "projector" (param dtype), "exp_avg", "exp_avg_sq" (low-rank shape,
param dtype), "scaled_grad" (0-d, param dtype), "step" and "seed" (Python ints). Per other
param: "exp_avg", "exp_avg_sq" (full size), "step", "seed".
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from optbench.optimizers.common import run_closure
from optbench.optimizers.kernels import is_sharded, shard_like

SCALE_TYPES = ("channel", "tensor")
_LIMITER_GROWTH = 1.01  # Fira's norm-growth limiter, as APOLLO applies it
_NEXT_SEED_DRAWS = 0xF  # random_projector.next_seed's `adv`


def stable_randn(shape: tuple[int, ...], seed: int, device: torch.device) -> torch.Tensor:
    """Standard normal float32 draws from a generator of `device` seeded with `seed`."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)


def next_seed(seed: int) -> int:
    """The official seed chain: the last of 15 int64 draws from a CPU generator at `seed`."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, torch.iinfo(torch.int64).max, (_NEXT_SEED_DRAWS,), generator=generator)
    return int(draws[-1])


def random_projector(grad: torch.Tensor, rank: int, seed: int) -> torch.Tensor:
    """[rank, n] if m >= n else [m, rank]: Gaussian / sqrt(rank) in float32, in grad's dtype."""
    m, n = grad.shape
    shape = (rank, n) if m >= n else (m, rank)
    return (stable_randn(shape, seed, grad.device) / math.sqrt(rank)).to(grad.dtype)


class Apollo(torch.optim.Optimizer):
    """Official APOLLO update; groups with a "rank" key (and "update_proj_gap", "scale",
    "scale_type") are projected, the others get the same AdamW without projection."""

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0.0 or eps < 0.0 or weight_decay < 0.0:
            raise ValueError(f"APOLLO lr, eps, weight_decay must be >= 0: {lr, eps, weight_decay}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"APOLLO betas must be in [0, 1): {betas}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        index = 0
        for group in self.param_groups:
            if "rank" in group:
                if group.get("scale_type") not in SCALE_TYPES:
                    raise ValueError(f"APOLLO scale_type must be one of {SCALE_TYPES}")
                if any(p.ndim != 2 for p in group["params"]):
                    raise ValueError("APOLLO projects 2-D parameters only")
            for p in group["params"]:
                index += 1
                if p.requires_grad:
                    self.state[p]["seed"] = index  # official: the 1-based index over all groups

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if "rank" in group:
                for p in params:
                    self._projected_update(group, p)
            else:
                self._adamw_update(group, params)
            if group["weight_decay"] > 0.0:
                torch._foreach_add_(params, params, alpha=-group["lr"] * group["weight_decay"])
        return loss

    def _next_step(self, group: dict, p: torch.Tensor) -> float:
        """Increments the param's step; returns lr·sqrt(1-β2^t)/(1-β1^t)."""
        state = self.state[p]
        state["step"] = state.get("step", 0) + 1
        beta1, beta2 = group["betas"]
        t = state["step"]
        return group["lr"] * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)

    def _adamw_update(self, group: dict, params: list[torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        for p in params:
            state = self.state[p]
            if "exp_avg" not in state:
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
        step_sizes = [-self._next_step(group, p) for p in params]
        grads = [p.grad for p in params]
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denoms, group["eps"])
        torch._foreach_addcdiv_(params, exp_avgs, denoms, step_sizes)

    def _projected_update(self, group: dict, p: torch.Tensor) -> None:
        state = self.state[p]
        sharded = is_sharded(p.grad)
        # FSDP2: every rank runs the update on the whole gradient (an all-gather), keeps its rows.
        full_grad = p.grad.full_tensor() if sharded else p.grad
        # Step 1: project (the official projector sees the step count before the increment).
        if "projector" not in state or state.get("step", 0) % group["update_proj_gap"] == 0:
            state["projector"] = random_projector(full_grad, group["rank"], state["seed"])
            state["seed"] = next_seed(state["seed"])
        projector = state["projector"]
        m, n = full_grad.shape
        grad = full_grad @ projector.t() if m >= n else projector.t() @ full_grad
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(grad)
            state["exp_avg_sq"] = torch.zeros_like(grad)
        step_size = self._next_step(group, p)
        # Step 2: low-rank AdamW moments and update.
        beta1, beta2 = group["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        norm_grad = exp_avg / exp_avg_sq.sqrt().add_(group["eps"])
        # Step 3: channel-wise or tensor-wise scaling factor.
        if group["scale_type"] == "channel":
            dim = 0 if norm_grad.shape[0] < norm_grad.shape[1] else 1
            factor = torch.linalg.vector_norm(norm_grad, dim=dim) / (
                torch.linalg.vector_norm(grad, dim=dim) + 1e-8
            )
            if dim == 1:
                factor = factor.unsqueeze(1)
        else:
            factor = torch.linalg.vector_norm(norm_grad) / (torch.linalg.vector_norm(grad) + 1e-8)
        # Step 4: scale the full-rank gradient; norm-growth limiter; sqrt(scale).
        scaled_grad = full_grad * factor
        scaled_norm = torch.linalg.vector_norm(scaled_grad)
        if "scaled_grad" in state:
            # max(ratio, 1.01) / 1.01 on the device: exactly 1 unless the norm grew past 1.01x.
            ratio = scaled_norm / (state["scaled_grad"] + 1e-8)
            limiter = torch.where(ratio < _LIMITER_GROWTH, 1.0, ratio / _LIMITER_GROWTH)
            scaled_grad.div_(limiter)
            state["scaled_grad"] = scaled_norm / limiter
        else:
            state["scaled_grad"] = scaled_norm
        if group["scale"] != 1.0:  # sqrt(1) = 1 exactly: skipping it changes no bit
            scaled_grad.mul_(math.sqrt(group["scale"]))
        p.add_(shard_like(scaled_grad, p) if sharded else scaled_grad, alpha=-step_size)

"""SCALE: column-normalized SGD with momentum on the last layer only (Glentis et al., 2025).

Update rule, following the authors' reference implementation (decoupled weight decay
`p *= 1 - lr * wd` on every group, with that group's lr):

- matrix (2-D attention/MLP weights, [out, in]): p -= lr * g / max(rms_row(g), eps),
  rms over the input dimension, one value per output row.
- embedding ([vocab, hidden]): the same, rms over the vocab dimension (per hidden column).
- lm_head ([vocab, hidden]): m = beta*m + (1-beta)*g (no bias correction), then
  p -= lr * m / max(rms_row(m), eps), rms over hidden, per vocab row. The buffer stores
  m/(1-beta) (see `_momentum`); for a constant beta the update is the same.
- adam (1-D norm weights): AdamW with its own lr, written as the reference code does:
  p -= adam_lr * sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + adam_eps)   (eps before bias correction).

The only state is the lm_head momentum and the norms' two moments (plus a Python-int step).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from optbench.errors import OptbenchError
from optbench.optimizers.common import run_closure
from optbench.optimizers.kernels import normalized_step_
from optbench.optimizers.policy import param_roles
from optbench.optimizers.registry import OptimizerSpec, register
from optbench.optimizers.state_formulas import params_bytes, tensor_bytes

ROLES = ("matrix", "embedding", "lm_head", "adam")

# The authors' code (OptimAI-Lab/Minimalist_LLM_Pretraining) and its launch scripts.
_REPO = "OptimAI-Lab/Minimalist_LLM_Pretraining: "
_OPTIMIZER = _REPO + "mem_eff_pt/pt_scale/scale_optimizer.py"
_SCRIPTS = _REPO + "scripts/*_scale.sh, 60M to 7B"
_ARGS = "mem_eff_pt/utils/args.py"

PAPER = (
    "Glentis, Li, Han, Hong, 'A Minimalist Optimizer Design for LLM Pretraining' "
    "(SCALE: Stochastic Column-normAlized Last-layer momEntum), 2025, arXiv:2506.16659"
)


class Scale(torch.optim.Optimizer):
    """SCALE over param groups tagged with group["role"] in ROLES (see `scale_param_groups`).

    The "adam" group's "lr" is adam_lr; every other group uses lr.
    """

    def __init__(
        self,
        param_groups: list[dict],
        lr: float = 1e-3,
        momentum: float = 0.9,
        adam_lr: float = 1e-3,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
        weight_decay: float = 0.0,
        eps: float = 1e-8,
    ) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"SCALE momentum must be in [0, 1), got {momentum}")
        for group in param_groups:
            role = group.get("role")
            if role not in ROLES:
                raise ValueError(f"SCALE group role must be one of {ROLES}, got {role!r}")
            if role == "adam":
                # Its own "lr" key, so an LR scheduler scales adam_lr by the same factor as lr.
                group.setdefault("lr", adam_lr)
        defaults = dict(
            lr=lr,
            momentum=momentum,
            adam_betas=tuple(adam_betas),
            adam_eps=adam_eps,
            weight_decay=weight_decay,
            eps=eps,
        )
        super().__init__(param_groups, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if group["weight_decay"] != 0:
                torch._foreach_mul_(params, 1.0 - group["lr"] * group["weight_decay"])
            if group["role"] == "adam":
                self._adam_update(group, params)
            else:
                self._normalized_update(group, params)
        return loss

    def _normalized_update(self, group: dict, params: list[torch.Tensor]) -> None:
        # One tensor at a time, its norms then its update back to back: the second read of
        # the direction then hits cache (L2/L3) instead of DRAM. A foreach pass of all norms
        # followed by a foreach pass of all updates reads every direction from DRAM twice.
        role, eps, alpha = group["role"], group["eps"], -group["lr"]
        if role == "lm_head":
            # The buffer is m/(1-beta): scaling eps alike gives exactly the EMA form's update.
            eps /= 1.0 - group["momentum"]
        for p in params:
            direction = self._momentum(group, p) if role == "lm_head" else p.grad
            dim = 0 if role == "embedding" else 1
            normalized_step_(p, direction, dim, eps, alpha)

    def _momentum(self, group: dict, p: torch.Tensor) -> torch.Tensor:
        """buf = beta*buf + g, i.e. buf = m/(1-beta) for the EMA m = beta*m + (1-beta)*g.

        torch.optim.SGD's convention; one fused pass (`add(g, buf, alpha=beta, out=buf)`)
        where the EMA needs lerp_, measured 1.5x slower on CPU. Row normalization cannot see
        the constant factor.
        """
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        buf = state["momentum_buffer"]
        return torch.add(p.grad, buf, alpha=group["momentum"], out=buf)

    def _adam_update(self, group: dict, params: list[torch.Tensor]) -> None:
        beta1, beta2 = group["adam_betas"]
        exp_avgs, exp_avg_sqs, step_sizes = [], [], []
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0  # a Python int: no tensor, no bytes, no device sync
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            t = state["step"]
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            step_sizes.append(-group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t))
        grads = [p.grad for p in params]
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denoms, group["adam_eps"])
        torch._foreach_addcdiv_(params, exp_avgs, denoms, step_sizes)


# The shared policy roles (optbench.optimizers.policy) under the names SCALE's groups use.
_SCALE_ROLE = {"embedding": "embedding", "lm_head": "lm_head", "hidden_matrix": "matrix",
               "vector": "adam"}


def scale_roles(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Trainable (name, param) pairs by SCALE role, in model order; empty roles omitted."""
    embedding = model.get_input_embeddings().weight
    if embedding is model.get_output_embeddings().weight:
        raise OptbenchError("SCALE needs untied embeddings (tie_word_embeddings=False)")
    return {_SCALE_ROLE[role]: pairs for role, pairs in param_roles(model).items()}


def scale_param_groups(model: nn.Module) -> list[dict]:
    """Param groups with "role" and "param_names": the policy, printable as data."""
    return [
        {"role": role, "param_names": [n for n, _ in pairs], "params": [p for _, p in pairs]}
        for role, pairs in scale_roles(model).items()
    ]


def build_scale(model: nn.Module, hparams: dict) -> Scale:
    return Scale(scale_param_groups(model), **hparams)


def scale_state_bytes(model: nn.Module, hp: dict) -> int:
    roles = scale_roles(model)
    head = params_bytes(p for _, p in roles.get("lm_head", []))
    norms = params_bytes((p for _, p in roles.get("adam", [])), lambda p: 2 * tensor_bytes(p))
    return head + norms


register(
    OptimizerSpec(
        name="scale",
        factory=build_scale,
        source="in-house (optbench.optimizers.scale), after the authors' reference SCALE code",
        paper=PAPER,
        policy=(
            "matrix: every 2-D weight except embedding and lm_head, SGD step g / rms over input "
            "dim (per output row); embedding: g / rms over vocab (per hidden column); lm_head: "
            "momentum then m / rms over hidden (per vocab row); adam: 1-D params (norm weights), "
            "AdamW with adam_lr; decoupled weight decay lr*wd on every group"
        ),
        default_hparams={
            "lr": 1e-3,
            "momentum": 0.9,
            "adam_lr": 1e-3,
            "adam_betas": (0.9, 0.999),
            "adam_eps": 1e-8,
            "weight_decay": 0.0,
            "eps": 1e-8,
        },
        state_formula=(
            "lm_head params × bytes/elem (momentum) + 2 × 1-D params × bytes/elem "
            "(exp_avg, exp_avg_sq); step is a Python int (0 B)"
        ),
        expected_state_bytes=scale_state_bytes,
        # The SCALE paper's settings: lr 1e-3 up to 350M, 2e-4 at 1B, 1e-4 at 7B; the norms'
        # AdamW lr 2e-2 up to 350M, 1e-3 at 1B and 7B.
        defaults_by_model={
            **{m: {"lr": 1e-3, "adam_lr": 2e-2} for m in ("llama_60m", "llama_130m", "llama_350m")},
            "llama_1b": {"lr": 2e-4, "adam_lr": 1e-3},
            "llama_7b": {"lr": 1e-4, "adam_lr": 1e-3},
        },
        reference=(
            _OPTIMIZER + " (SCALE.step), mem_eff_pt/utils/train_utils.py (build_optimizer: param "
            "groups); in-house, held against a float64 transcription of it in "
            "tests/optimizers/test_optimizers.py"
        ),
        deviations=(
            "The lm_head buffer stores m/(1-β) (torch.optim.SGD's convention, one fused op) "
            "where the authors' code stores the EMA m; eps is scaled alike, so the update is the "
            "same up to rounding, but the saved state's values differ by that factor.",
            "In bf16 the row RMS is accumulated in float32 and applied in one fused "
            "p += -lr·sqrt(n)·d·(1/||d||); the authors square, average and divide in bf16. The "
            "same math; the rounding differs (the bf16 test holds to rtol 1e-2).",
        ),
        default_sources={
            "lr": (
                _REPO + "scripts/60m_scale.sh, 130m, 350m (--lr 1e-3; 1B and 7B via "
                "defaults_by_model); the " + _ARGS + " default is 1e-4"
            ),
            "momentum": _SCRIPTS + " (--momentum 0.9)",
            "adam_lr": (
                _REPO + "scripts/1b_scale.sh, 7b_scale.sh (--adam_lr 1e-3); the 60M-350M "
                "scripts take the " + _ARGS + " default 2e-2 (defaults_by_model)"
            ),
            "adam_betas": _REPO + _ARGS + " (--adam_beta_1 0.9, --adam_beta_2 0.999)",
            "adam_eps": _REPO + "mem_eff_pt/utils/train_utils.py (build_optimizer: adamw_eps=1e-8)",
            "weight_decay": _SCRIPTS + " (--weight_decay 0.0)",
            "eps": _OPTIMIZER + " (SCALE.step: clamp_min_(1e-8), hard-coded there)",
        },
    )
)

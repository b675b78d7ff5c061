"""Matrix optimizers: a special update on 2-D weights, an Adam-type optimizer on the rest.

Every entry here is a `Policy` (role -> treatment) plus one torch optimizer per treatment,
stepped together by `Composite`. Entries:

- muon: torch.optim.Muon on hidden matrices, torch AdamW elsewhere.
- swan, sinkgd, root: in-house updates (`MatrixSGD`) on hidden matrices, AdamW elsewhere.
- SCALE ablations (colnorm_sgd, rownorm_sgd, signsgd, nsnorm_sgd, sgd_lastlayer_momentum):
  `MatrixSGD` on every matrix incl. embedding and lm_head, SCALE's own Adam on vectors.

In-house updates, on a gradient G of shape [out, in] = [m, n] (torch layout), p <- p*(1-lr*wd)
then p <- p - lr*D(G):

- swan (Ma et al., arXiv:2412.13148): GradNorm G~ = (G - mean_row) / std_row (per output row,
  over the n inputs); GradWhitening D = (G~ G~^T)^{-1/2} G~ by the coupled Newton-Schulz
  iteration Y0 = X X^T, Z0 = I, T = (3I - Z Y)/2, Y <- Y T, Z <- T Z (X = G~/||G~||_F, so
  Z X -> (G~ G~^T)^{-1/2} G~); then D <- sqrt(mn) D / ||D||_F (the paper's update rescaling).
  Tall matrices whiten the [n, n] side: G~(G~^T G~)^{-1/2} is the same matrix, full rank.
- sinkgd (Scetbon et al., arXiv:2502.06742, SR-Sinkhorn, Alg. 3): L times,
  X <- sqrt(n) X / ||row||, then X <- sqrt(m) X / ||column||.
- root (He et al., arXiv:2511.20626, and the authors' `class ROOT` / `root5`): M <- mu*M + G,
  U = G + mu*M (Nesterov); B = U - T_eps(U), T the soft-threshold at eps = the 0.9-quantile
  of |U| (so B is U clipped to [-eps, eps]); D = 0.2*sqrt(max(m, n)) * NS5(B), the quintic
  coefficients looked up by (min, max) of the shape in the authors' table (`ROOT_NS`, the
  2048-wide shapes, e.g. llama_1b's attention), Muon's for any other shape. Its AdamW part
  (embedding, lm_head, norms) is the authors' too: the ROOT lr and weight decay, eps added
  before bias correction (SCALE's Adam form, `Scale` role "adam").
- colnorm: SCALE's normalization, g / rms over the input dim (vocab for the embedding).
- rownorm: the other axis. sign: sign(g). newton_schulz: Muon's quintic iteration on g.
- sgd, and sgd with EMA momentum m <- beta*m + (1-beta)*g (lm_head only).

Transforms run in float32 at least (float64 stays float64) and batch same-shape matrices.
The tensor math they compose (Newton-Schulz, whitening, Sinkhorn, the quantile, the row/column
normalized step) is in `optbench.optimizers.kernels`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable

import torch
from torch import nn

from optbench.optimizers.common import run_closure
from optbench.optimizers.kernels import (
    MUON_NS,
    frobenius_normalized,
    is_sharded,
    newton_schulz,
    normalized_step_,
    quantile,
    root_ns_coefficients,
    shard_like,
    sinkhorn,
    whiten,
)
from optbench.optimizers.policy import Policy, param_roles
from optbench.optimizers.registry import OptimizerSpec, register
from optbench.optimizers.scale import PAPER as SCALE_PAPER
from optbench.optimizers.scale import Scale
from optbench.optimizers.state_formulas import adamw_bytes, role_bytes, tensor_bytes

Groups = list[dict]
Maker = Callable[[Groups, dict], torch.optim.Optimizer]  # (param groups, hparams) -> optimizer

BATCH_ELEMS = 1 << 26  # gradient elements per batched transform (256 MB as float32)


# --- Composite: several optimizers stepped as one ------------------------------------


class Composite(torch.optim.Optimizer):
    """One optimizer per treatment, each on its own parameters, stepped as one.

    The composite's param_groups are the parts' own group dicts and its state is one table the
    parts share, so an LR scheduler scales every part, zero_grad reaches every parameter, and
    optimizer_state_bytes / state_dict see every part's state. The parts' own state_dict()
    is not usable (the shared table holds other parts' parameters): save the composite's.
    """

    def __init__(self, parts: dict[str, torch.optim.Optimizer]) -> None:
        self.parts = parts
        super().__init__([g for part in parts.values() for g in part.param_groups], {})
        for part in parts.values():
            self.state.update(part.state)
        self._share()

    def _share(self) -> None:
        """Point the parts at the composite's groups (in order) and its state table."""
        groups = iter(self.param_groups)
        for part in self.parts.values():
            part.param_groups = [next(groups) for _ in part.param_groups]
            part.state = self.state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)  # builds new group dicts and a new state table
        self._share()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for part in self.parts.values():
            part.step()
        return loss


def split_by_treatment(model: nn.Module, policy: Policy) -> dict[str, Groups]:
    """treatment -> one param group per role; the hidden matrices' treatment first.

    First because training logs param_groups[0]["lr"] as the run's lr.
    """
    roles = param_roles(model)
    order = ("hidden_matrix", "embedding", "lm_head", "vector")
    out: dict[str, Groups] = {}
    for role in (r for r in order if r in roles):
        pairs = roles[role]
        names, params = [n for n, _ in pairs], [p for _, p in pairs]
        group = {"role": role, "param_names": names, "params": params}
        out.setdefault(policy.treatment(role), []).append(group)
    return out


def build_composite(
    model: nn.Module, policy: Policy, makers: dict[str, Maker], hp: dict
) -> Composite:
    groups = split_by_treatment(model, policy)
    return Composite({t: makers[t](g, hp) for t, g in groups.items()})


# --- MatrixSGD: in-house matrix updates ---------------------------------------------


class MatrixSGD(torch.optim.Optimizer):
    """p <- p*(1 - lr*wd) - lr*D(g) with D = DIRECTIONS[group["direction"]].

    A group with momentum mu > 0 keeps one buffer per parameter (its only state) and feeds D,
    by momentum_form: "ema" m = mu*m + (1-mu)*g (SCALE's last-layer momentum); "sum"
    M = mu*M + g; "nesterov" g + mu*M with that M (ROOT's code). Keller Jordan's Muon uses
    the EMA form (lerp) instead, as torch.optim.Muon does: the muon entry runs that.
    Direction options (eps, ns_steps, ...) live in the group: printed and saved with it.
    """

    def __init__(
        self,
        param_groups: Groups,
        direction: str,
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        momentum_form: str = "ema",
        **options: Any,
    ) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}; known: {sorted(DIRECTIONS)}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if momentum_form not in ("ema", "sum", "nesterov"):
            raise ValueError(f"momentum_form must be ema, sum or nesterov, got {momentum_form!r}")
        defaults = dict(
            direction=direction, lr=lr, weight_decay=weight_decay, momentum=momentum,
            momentum_form=momentum_form, **options,
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
            grads = [p.grad for p in params]
            if group["momentum"] > 0:
                grads = self._momentum(group, params, grads)
            DIRECTIONS[group["direction"]](group, params, grads)
        return loss

    def _momentum(self, group: dict, params: list, grads: list) -> list[torch.Tensor]:
        mu, form = group["momentum"], group["momentum_form"]
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            bufs.append(state["momentum_buffer"])
        if form == "ema":
            torch._foreach_lerp_(bufs, grads, 1.0 - mu)
            return bufs
        torch._foreach_mul_(bufs, mu)
        torch._foreach_add_(bufs, grads)
        return torch._foreach_add(grads, bufs, alpha=mu) if form == "nesterov" else bufs


def _input_dim(group: dict) -> int:
    """The dim indexing a matrix's inputs: [out, in]; the embedding is [vocab=in, hidden]."""
    return 0 if group["role"] == "embedding" else 1


def _colnorm(group: dict, params: list, grads: list) -> None:
    # SCALE's own kernel: a broadcast [out,1] / [1,in] scale, no normalized copy of g.
    for p, g in zip(params, grads):
        normalized_step_(p, g, _input_dim(group), group["eps"], -group["lr"])


def _rownorm(group: dict, params: list, grads: list) -> None:
    for p, g in zip(params, grads):
        normalized_step_(p, g, 1 - _input_dim(group), group["eps"], -group["lr"])


def _sign(group: dict, params: list, grads: list) -> None:
    torch._foreach_add_(params, torch._foreach_sign(grads), alpha=-group["lr"])


def _plain(group: dict, params: list, grads: list) -> None:
    torch._foreach_add_(params, grads, alpha=-group["lr"])


def _batched(transform: Callable[[torch.Tensor, dict], torch.Tensor]) -> Callable:
    """A [b, m, n] -> [b, m, n] transform applied to same-shape matrices in batches.

    A batch holds at most BATCH_ELEMS gradient elements: its float32 copies are transient
    memory the benchmark measures, so they stay bounded (~1 GB) whatever the model size.
    """

    def apply(group: dict, params: list, grads: list) -> None:
        # FSDP2: every rank transforms whole matrices, gathered a batch at a time, and keeps
        # its rows of the update.
        sharded = bool(grads) and is_sharded(grads[0])
        by_shape: dict[tuple, list[int]] = defaultdict(list)
        for i, g in enumerate(grads):
            by_shape[(tuple(g.shape), g.dtype)].append(i)
        for (_, dtype), same in by_shape.items():
            acc = torch.promote_types(dtype, torch.float32)
            per = max(1, BATCH_ELEMS // grads[same[0]].numel())
            for idx in (same[i : i + per] for i in range(0, len(same), per)):
                whole = [grads[i].full_tensor() if sharded else grads[i] for i in idx]
                d = transform(torch.stack(whole).to(acc), group).to(dtype)
                updates = list(d.unbind())
                if sharded:
                    updates = [shard_like(u, params[i]) for u, i in zip(updates, idx)]
                torch._foreach_add_([params[i] for i in idx], updates, alpha=-group["lr"])

    return apply


def _swan(x: torch.Tensor, group: dict) -> torch.Tensor:
    eps = group["eps"]
    centered = x - x.mean(dim=-1, keepdim=True)
    std = centered.square().mean(dim=-1, keepdim=True).sqrt()
    d = whiten(centered / std.clamp_min(eps), group["ns_steps"], eps)
    m, n = x.shape[-2:]
    return math.sqrt(m * n) * frobenius_normalized(d, eps)


def _sinkhorn(x: torch.Tensor, group: dict) -> torch.Tensor:
    return sinkhorn(x, group["sinkhorn_iters"], group["eps"])


def _ns(x: torch.Tensor, group: dict) -> torch.Tensor:
    return newton_schulz(x, group["ns_steps"], group["eps"])


def _root(x: torch.Tensor, group: dict) -> torch.Tensor:
    """ROOT: B = U - T_eps(U) with soft-threshold T at eps = 0.9-quantile of |U|, which is U
    clipped to [-eps, eps]; then Newton-Schulz with the shape's coefficients (`ROOT_NS`, else
    Muon's), times Moonlight's 0.2*sqrt(max(m, n))."""
    t = quantile(x.abs().flatten(-2), group["threshold_quantile"]) + 1e-9
    t = t[:, None, None]
    clipped = torch.minimum(torch.maximum(x, -t), t)
    m, n = x.shape[-2:]
    update = newton_schulz(clipped, group["ns_steps"], group["eps"], root_ns_coefficients(m, n))
    return 0.2 * math.sqrt(max(m, n)) * update


# Directions that transform same-shape matrices in batches capped at BATCH_ELEMS: their step's
# scratch grows with the layers until the cap (OptimizerSpec.step_extrapolates).
BATCHED_DIRECTIONS = ("newton_schulz", "swan", "sinkgd", "root")

DIRECTIONS: dict[str, Callable[[dict, list, list], None]] = {
    "colnorm": _colnorm,
    "rownorm": _rownorm,
    "sign": _sign,
    "sgd": _plain,
    "newton_schulz": _batched(_ns),
    "swan": _batched(_swan),
    "sinkgd": _batched(_sinkhorn),
    "root": _batched(_root),
}


# --- state bytes ------------------------------------------------------------------------


NON_MATRIX = ("embedding", "lm_head", "vector")
ADAMW_FORMULA = (
    "2 × (embedding + lm_head + 1-D) params × bytes/elem (AdamW exp_avg, exp_avg_sq) "
    "+ 4 B float32 `step` per such tensor"
)


def _adamw_role_bytes(model: nn.Module) -> int:
    """torch AdamW's state on every parameter outside the hidden matrices."""
    return role_bytes(model, *NON_MATRIX, bytes_of=adamw_bytes)


def _int_step_adam_role_bytes(model: nn.Module) -> int:
    """`Scale`'s Adam state (two moments, int step) on every parameter outside the hidden
    matrices."""
    return role_bytes(model, *NON_MATRIX, bytes_of=lambda p: 2 * tensor_bytes(p))


# --- makers and hparams ---------------------------------------------------------------

ADAMW_HPARAMS = {
    "adamw_lr": 1e-3,
    "adamw_betas": (0.9, 0.999),
    "adamw_eps": 1e-8,
    "adamw_weight_decay": 0.0,
}


_KJ_MUON = "KellerJordan/Muon: muon.py"
# The training script in that folder that defines class ROOT and root5 (its file name was not
# recorded when it was read).
_ROOT_CODE = "huawei-noah/Efficient-Computing: Optimization/ROOT, training script"
_TORCH_ADAMW = "torch.optim.AdamW default (the AdamW part)"
_ADAMW_DEFAULT_SOURCES = {
    "adamw_lr": _TORCH_ADAMW,
    "adamw_betas": _TORCH_ADAMW,
    "adamw_eps": _TORCH_ADAMW,
    "adamw_weight_decay": "optbench choice: 0, no decay on embedding, lm_head and norms "
                          "(torch's AdamW default is 0.01)",
}

# KellerJordan/Muon muon.py, (SingleDevice)MuonWithAuxAdam: the adam groups' defaults.
MUON_ADAMW_HPARAMS = {
    "adamw_lr": 3e-4,
    "adamw_betas": (0.9, 0.95),
    "adamw_eps": 1e-10,
    "adamw_weight_decay": 0.0,
}


def _adamw(groups: Groups, hp: dict) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        groups,
        lr=hp["adamw_lr"],
        betas=hp["adamw_betas"],
        eps=hp["adamw_eps"],
        weight_decay=hp["adamw_weight_decay"],
    )


def _muon(groups: Groups, hp: dict) -> torch.optim.Optimizer:
    keys = ("lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "eps", "ns_steps",
            "adjust_lr_fn")
    return torch.optim.Muon(groups, **{k: hp[k] for k in keys})


def _matrix_sgd(direction: str, *option_keys: str, momentum_key: str | None = None) -> Maker:
    def make(groups: Groups, hp: dict) -> torch.optim.Optimizer:
        momentum = hp[momentum_key] if momentum_key else 0.0
        options = {k: hp[k] for k in option_keys}
        return MatrixSGD(groups, direction, hp["lr"], hp["weight_decay"], momentum, **options)

    return make


def _root_maker(groups: Groups, hp: dict) -> torch.optim.Optimizer:
    form = "nesterov" if hp["nesterov"] else "sum"
    options = {k: hp[k] for k in ("eps", "ns_steps", "threshold_quantile")}
    return MatrixSGD(
        groups, "root", hp["lr"], hp["weight_decay"], hp["momentum"], form, **options
    )


def _eps_first_adam(groups: Groups, lr: float, betas: tuple, eps: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with eps added to sqrt(v) before bias correction, p *= 1 - lr*wd first, and a
    Python-int step: the form of SCALE's and ROOT's code (`Scale`'s "adam" role)."""
    adam_groups = [{**g, "role": "adam"} for g in groups]
    return Scale(adam_groups, adam_lr=lr, adam_betas=betas, adam_eps=eps,
                 weight_decay=weight_decay)


def _scale_adam(groups: Groups, hp: dict) -> torch.optim.Optimizer:
    """SCALE's own Adam form for the ablations' vectors."""
    return _eps_first_adam(groups, hp["adam_lr"], hp["adam_betas"], hp["adam_eps"],
                           hp["weight_decay"])


def _root_adamw(groups: Groups, hp: dict) -> torch.optim.Optimizer:
    """ROOT's AdamW part: the ROOT lr and weight decay, its own betas and eps (authors' code)."""
    return _eps_first_adam(groups, hp["lr"], hp["adamw_betas"], hp["adamw_eps"],
                           hp["weight_decay"])


def _spec(
    name: str,
    source: str,
    paper: str,
    policy: Policy,
    makers: dict[str, Maker],
    hparams: dict,
    state_formula: str,
    state_bytes: Callable[[nn.Module], int],
    batched: bool = False,
    **described: Any,
) -> OptimizerSpec:
    """`described`: version, reference, deviations, default_sources (OptimizerSpec fields).
    `batched`: its matrix treatment is a BATCHED_DIRECTIONS one (same-shape matrices of every
    layer transformed together, at most BATCH_ELEMS at a time)."""
    return OptimizerSpec(
        name=name,
        factory=lambda model, hp: build_composite(model, policy, makers, hp),
        source=source,
        paper=paper,
        policy=policy.describe(),
        default_hparams=hparams,
        state_formula=state_formula,
        expected_state_bytes=lambda model, hp: state_bytes(model),
        devices=("cpu", "cuda"),
        step_extrapolates=not batched,
        **described,
    )


# --- entries: matrix update on hidden matrices, AdamW elsewhere ---------------------

POLICIES = {
    t: Policy.of(hidden_matrix=t, embedding="adamw", lm_head="adamw", vector="adamw")
    for t in ("muon", "swan", "sinkgd", "root")
}

register(
    _spec(
        "muon",
        source="torch.optim.Muon on hidden matrices + torch.optim.AdamW (optbench Composite)",
        version="2",  # 2: the authors' AdamW part (lr 3e-4, betas (0.9, 0.95), eps 1e-10)
        reference=(
            f"{_KJ_MUON} (SingleDeviceMuonWithAuxAdam.step, muon_update, adam_update, "
            "zeropower_via_newtonschulz5)"
        ),
        deviations=(
            "torch.optim.Muon divides by max(||X||_F, eps) before Newton-Schulz where the authors "
            "divide by ||X||_F + 1e-7: a relative difference of 1e-7/||X||_F (~1e-8 of the "
            "update on llama_tiny), larger only when the momentum is near zero.",
            "Both orthogonalize in bfloat16, but torch fuses b*A + c*A@A into addmm, so the "
            "rounding differs: 1.8-2.4 % of the update after 3 steps on llama_tiny; with "
            "float64 Newton-Schulz on both sides the two agree to 1e-7 (tests/optimizers/"
            "test_optimizers_matrix.py).",
            "The authors' Adam part is its own loop (eps after the bias correction); torch's "
            "AdamW computes the same update.",
        ),
        default_sources={
            "lr": _KJ_MUON + " (SingleDeviceMuonWithAuxAdam: muon group lr 0.02)",
            "weight_decay": _KJ_MUON + " (muon group weight_decay 0)",
            "momentum": _KJ_MUON + " (muon group momentum 0.95)",
            "nesterov": _KJ_MUON + " (muon_update nesterov=True)",
            "ns_coefficients": _KJ_MUON + " (zeropower_via_newtonschulz5)",
            "eps": _KJ_MUON + " (zeropower_via_newtonschulz5: + 1e-7)",
            "ns_steps": _KJ_MUON + " (muon_update ns_steps=5)",
            "adjust_lr_fn": _KJ_MUON + " (muon_update: max(1, rows/cols)**0.5, torch's 'original')",
            "adamw_lr": _KJ_MUON + " (adam groups lr 3e-4)",
            "adamw_betas": _KJ_MUON + " (adam groups betas (0.9, 0.95))",
            "adamw_eps": _KJ_MUON + " (adam groups eps 1e-10)",
            "adamw_weight_decay": _KJ_MUON + " (adam groups weight_decay 0)",
        },
        paper=(
            "Jordan et al., Muon: An optimizer for hidden layers in neural networks, 2024 "
            "(kellerjordan.github.io/posts/muon); Liu et al., Muon is Scalable for LLM "
            "Training, arXiv:2502.16982"
        ),
        policy=POLICIES["muon"],
        makers={"muon": _muon, "adamw": _adamw},
        hparams={
            "lr": 0.02,
            "weight_decay": 0.0,
            "momentum": 0.95,
            "nesterov": True,
            "ns_coefficients": MUON_NS,
            "eps": 1e-7,
            "ns_steps": 5,
            "adjust_lr_fn": "original",  # a string: the registry's null type accepts no names
            **MUON_ADAMW_HPARAMS,
        },
        state_formula="hidden-matrix params × bytes/elem (momentum_buffer) + " + ADAMW_FORMULA,
        state_bytes=lambda m: role_bytes(m, "hidden_matrix") + _adamw_role_bytes(m),
    )
)

register(
    _spec(
        "swan",
        batched=True,
        source="in-house (optbench.optimizers.matrix, MatrixSGD 'swan') + torch.optim.AdamW",
        paper=(
            "Ma, Gong, Scetbon, Meeds, SWAN: SGD with Normalization and Whitening Enables "
            "Stateless LLM Training, ICML 2025, arXiv:2412.13148"
        ),
        policy=POLICIES["swan"],
        makers={"swan": _matrix_sgd("swan", "eps", "ns_steps"), "adamw": _adamw},
        hparams={"lr": 1e-3, "weight_decay": 0.0, "eps": 1e-8, "ns_steps": 10, **ADAMW_HPARAMS},
        reference=(
            "paper arXiv:2412.13148 (Alg. 1-3: GradNorm, GradWhitening); no authors' code is "
            "public (announced for microsoft/msr_optim)"
        ),
        deviations=(
            "ns_steps 10 is unconfirmed: the paper's iteration count could not be read here; 10 "
            "(with beta 0.8) is what third-party code attributes to it. 10 steps of the coupled "
            "iteration from X/||X||_F stay far from the exact whitening on large matrices: "
            "relative distance to U V^T 0.41 on a 2048 x 2048 Gaussian gradient, 0.93 on a "
            "rank-8-plus-noise one (0.06 and 0.30 at 20 steps; benchmarks/swan_whitening.py); "
            "raise ns_steps to get closer.",
            "The update is rescaled to the norm of the GradNorm output, D <- ||G~||_F D / ||D||_F "
            "with ||G~||_F = sqrt(mn) (RMS 1), the 'optional rescaling' third-party summaries of "
            "the paper give; its exact form in the paper could not be confirmed here.",
        ),
        default_sources={
            "lr": "optbench choice: 1e-3, no paper value could be confirmed",
            "weight_decay": "optbench choice: 0, as the GaLore-style LLaMA runs the paper follows",
            "eps": "optbench choice: GradNorm's std floor and the whitening's norm floor",
            "ns_steps": "third-party SWAN code's 'beta 0.8, ns_steps 10' for arXiv:2412.13148; "
                        "unconfirmed against the paper",
            **_ADAMW_DEFAULT_SOURCES,
        },
        state_formula="0 B on hidden matrices (stateless) + " + ADAMW_FORMULA,
        state_bytes=_adamw_role_bytes,
    )
)

register(
    _spec(
        "sinkgd",
        batched=True,
        source="in-house (optbench.optimizers.matrix, MatrixSGD 'sinkgd') + torch.optim.AdamW",
        paper=(
            "Scetbon, Ma, Gong, Meeds, Gradient Multi-Normalization for Stateless and Scalable "
            "LLM Training (SinkGD), arXiv:2502.06742"
        ),
        policy=POLICIES["sinkgd"],
        makers={"sinkgd": _matrix_sgd("sinkgd", "eps", "sinkhorn_iters"), "adamw": _adamw},
        hparams={
            "lr": 1e-3, "weight_decay": 0.0, "eps": 1e-8, "sinkhorn_iters": 5, **ADAMW_HPARAMS
        },
        reference=(
            "paper arXiv:2502.06742 (Alg. 3, SR-Sinkhorn); no authors' code is public "
            "(announced for microsoft/msr_optim)"
        ),
        deviations=(
            "Held against the paper's algorithm only, in float64 (tests/optimizers/"
            "test_optimizers_matrix.py): there is no authors' code to compare.",
        ),
        default_sources={
            "lr": "optbench choice: 1e-3, no paper value for these sizes",
            "weight_decay": "optbench choice: 0",
            "eps": "optbench choice: the row/column norm floor",
            "sinkhorn_iters": "optbench choice: 5 (the paper's L unconfirmed here)",
            **_ADAMW_DEFAULT_SOURCES,
        },
        state_formula="0 B on hidden matrices (stateless) + " + ADAMW_FORMULA,
        state_bytes=_adamw_role_bytes,
    )
)


register(
    _spec(
        "root",
        batched=True,
        source=(
            "in-house (optbench.optimizers.matrix, MatrixSGD 'root', and Scale's Adam form for "
            "embedding, lm_head and norms)"
        ),
        version="2",  # 2: per-shape coefficients; the authors' AdamW part and weight decay
        reference=_ROOT_CODE + " (ROOT.step, root5, simple_quantile, get_optimizer)",
        deviations=(
            "The authors' script ties lm_head to the embedding; optbench's LLaMA models are "
            "untied, and both get the AdamW part, as the authors' param split does.",
            "Newton-Schulz runs batched over same-shape matrices (the same arithmetic per "
            "matrix); the authors' root5 is torch.compile'd, one matrix at a time.",
        ),
        default_sources={
            "lr": _ROOT_CODE + " (ROOT.__init__ lr 1e-3)",
            "weight_decay": _ROOT_CODE + " (ROOT.__init__ wd 0.1, both parts)",
            "momentum": _ROOT_CODE + " (ROOT.__init__ momentum 0.95)",
            "nesterov": _ROOT_CODE + " (ROOT.__init__ nesterov True)",
            "threshold_quantile": _ROOT_CODE + " (ROOT.step: simple_quantile(|g|, 0.9))",
            "eps": _ROOT_CODE + " (root5: X / (||X|| + 1e-7))",
            "ns_steps": _ROOT_CODE + " (ROOT.__init__ root_steps 5)",
            "adamw_betas": _ROOT_CODE + " (ROOT.__init__ adamw_betas (0.9, 0.95))",
            "adamw_eps": _ROOT_CODE + " (ROOT.__init__ adamw_eps 1e-8)",
        },
        paper=(
            "He, Han, Zhou, Chen, Liu, Chen, Wang, ROOT: Robust Orthogonalized Optimizer for "
            "Neural Network Training, arXiv:2511.20626"
        ),
        policy=POLICIES["root"],
        makers={"root": _root_maker, "adamw": _root_adamw},
        hparams={
            "lr": 1e-3,
            "weight_decay": 0.1,
            "momentum": 0.95,
            "nesterov": True,
            "threshold_quantile": 0.9,
            "eps": 1e-7,
            "ns_steps": 5,
            "adamw_betas": (0.9, 0.95),
            "adamw_eps": 1e-8,
        },
        state_formula=(
            "hidden-matrix params × bytes/elem (momentum_buffer) + 2 × (embedding + lm_head + "
            "1-D) params × bytes/elem (AdamW moment1, moment2; int step, 0 B)"
        ),
        state_bytes=lambda m: role_bytes(m, "hidden_matrix") + _int_step_adam_role_bytes(m),
    )
)


# --- entries: SCALE ablations (arXiv:2506.16659), every matrix in-house, SCALE's Adam on 1-D

SCALE_ADAM_HPARAMS = {"adam_lr": 1e-3, "adam_betas": (0.9, 0.999), "adam_eps": 1e-8}
SCALE_ADAM_FORMULA = (
    "2 × 1-D params × bytes/elem (SCALE's Adam exp_avg, exp_avg_sq; int step, 0 B)"
)


def _every_matrix(treatment: str) -> Policy:
    return Policy.of(
        hidden_matrix=treatment, embedding=treatment, lm_head=treatment, vector="scale_adam"
    )


def _ablation(name: str, what: str, policy: Policy, makers: dict, hparams: dict,
              formula: str, state_bytes: Callable[[nn.Module], int],
              batched: bool = False) -> OptimizerSpec:
    return _spec(
        name,
        batched=batched,
        source=f"in-house (optbench.optimizers.matrix): SCALE ablation, {what}",
        paper=SCALE_PAPER + " (ablation)",
        policy=policy,
        makers={**makers, "scale_adam": _scale_adam},
        hparams={**hparams, "weight_decay": 0.0, **SCALE_ADAM_HPARAMS},
        state_formula=formula,
        state_bytes=state_bytes,
        reference=(
            "paper arXiv:2506.16659 (SCALE's ablations of normalization and momentum); the "
            "norms' Adam is the form of the SCALE authors' code (optbench.optimizers.scale)"
        ),
        default_sources={
            **{k: "optbench choice: the ablations' lr and options are not published per size"
               for k in hparams},
            "weight_decay": "optbench choice: 0, as the scale entry",
            **{k: "as the scale entry's (optbench.optimizers.scale)" for k in SCALE_ADAM_HPARAMS},
        },
    )


def _vector_adam_bytes(model: nn.Module) -> int:
    return role_bytes(model, "vector", bytes_of=lambda p: 2 * tensor_bytes(p))


for _name, _direction, _what, _options in [
    ("colnorm_sgd", "colnorm", "g / rms over each matrix's input dim, no momentum",
     {"lr": 1e-3, "eps": 1e-8}),
    ("rownorm_sgd", "rownorm", "g / rms over each matrix's output dim, no momentum",
     {"lr": 1e-3, "eps": 1e-8}),
    ("signsgd", "sign", "sign(g) on every matrix, no momentum", {"lr": 1e-3}),
    ("nsnorm_sgd", "newton_schulz", "Muon's Newton-Schulz orthogonalization of g, no momentum",
     {"lr": 0.02, "eps": 1e-7, "ns_steps": 5}),
]:
    _keys = tuple(k for k in _options if k != "lr")
    register(
        _ablation(
            _name,
            _what,
            _every_matrix(_direction),
            {_direction: _matrix_sgd(_direction, *_keys)},
            _options,
            "0 B on matrices (stateless) + " + SCALE_ADAM_FORMULA,
            _vector_adam_bytes,
            batched=_direction in BATCHED_DIRECTIONS,
        )
    )

register(
    _ablation(
        "sgd_lastlayer_momentum",
        "plain SGD on every matrix, EMA momentum on lm_head only",
        Policy.of(
            hidden_matrix="sgd", embedding="sgd", lm_head="sgd_momentum", vector="scale_adam"
        ),
        {"sgd": _matrix_sgd("sgd"), "sgd_momentum": _matrix_sgd("sgd", momentum_key="momentum")},
        {"lr": 0.1, "momentum": 0.9},
        "lm_head params × bytes/elem (momentum_buffer) + " + SCALE_ADAM_FORMULA,
        lambda m: role_bytes(m, "lm_head") + _vector_adam_bytes(m),
    )
)

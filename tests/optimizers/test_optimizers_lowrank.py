"""Gradient-projection optimizers: exact state bytes, group policy, low-rank state, training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from optbench.engine.state_bytes import optimizer_state_bytes
from optbench.models import build_model
from optbench.optimizers import expected_state_bytes, build_optimizer, get_spec
from optbench.optimizers import lowrank  # noqa: F401  (registers the entries)

NAMES = ["galore", "fira", "apollo", "apollo_mini", "conda"]
ADAMW_NAMES = {"model.embed_tokens.weight", "lm_head.weight"}


def _model_with_grads(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("llama_tiny", dtype)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    return model


def _is_projected(group: dict) -> bool:
    # GaLore/Fira/APOLLO project groups with a "rank" key; PolicyConda marks its group.
    return group.get("projected", "rank" in group)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", NAMES)
def test_state_bytes_match_formula_after_first_step(name, dtype):
    model = _model_with_grads(dtype)
    opt = build_optimizer(name, model)
    opt.step()
    assert optimizer_state_bytes(opt) == expected_state_bytes(name, model)


@pytest.mark.parametrize("name", NAMES)
def test_policy_projects_exactly_the_hidden_matrices(name):
    model = _model_with_grads()
    opt = build_optimizer(name, model)
    projected = [n for g in opt.param_groups if _is_projected(g) for n in g["param_names"]]
    plain = [n for g in opt.param_groups if not _is_projected(g) for n in g["param_names"]]
    hidden = [
        n for n, p in model.named_parameters() if p.ndim == 2 and n not in ADAMW_NAMES
    ]
    assert projected == hidden and len(hidden) == 2 * 7
    assert all(n.endswith("proj.weight") for n in projected)
    assert ADAMW_NAMES <= set(plain) and all(n in ADAMW_NAMES or "norm" in n for n in plain)
    opt.step()  # the library, not just the groups: only hidden matrices get a projector
    params = dict(model.named_parameters())
    for n in plain:
        state = opt.state[params[n]]
        assert "projector" not in state and state["exp_avg"].shape == params[n].shape, n
    assert all("projector" in opt.state[params[n]] for n in projected)


@pytest.mark.parametrize("rank", [8, 128], ids=["rank8", "rank128-capped"])
def test_galore_state_is_low_rank(rank):
    model = _model_with_grads()
    opt = build_optimizer("galore", model, rank=rank)
    opt.step()
    hidden = [p for g in opt.param_groups if "rank" in g for p in g["params"]]
    for p in hidden:
        m, n = p.shape
        r = min(rank, m, n)
        state = opt.state[p]
        projector = state["projector"].ortho_matrix
        assert projector.shape == ((r, n) if m >= n else (m, r))
        assert state["exp_avg"].shape == state["exp_avg_sq"].shape == ((m, r) if m >= n else (r, n))
        assert torch.linalg.matrix_rank(projector.float()) == r


@pytest.mark.parametrize("name", ["apollo", "apollo_mini"])
def test_apollo_update_is_the_full_gradient_times_the_scaling_factor(name):
    """The official APOLLO update is the FULL-rank gradient times a per-channel (apollo) or
    per-tensor (apollo_mini) factor, not a rank-r back-projection (pytorch_optimizer's)."""
    model = _model_with_grads(torch.float64)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(name, model, rank=8 if name == "apollo" else 1)
    opt.step()
    for n, p in model.named_parameters():
        if not n.endswith("proj.weight"):
            continue
        delta, grad = p.detach() - before[n], p.grad
        m, k = delta.shape
        assert torch.linalg.matrix_rank(delta) == min(m, k), n
        ratio = delta / grad  # -step_size * sqrt(scale) * s, s broadcast over the full matrix
        if name == "apollo_mini":
            expected = ratio.mean().expand_as(ratio)
        elif m >= k:  # right projector [r, k]: one factor per row
            expected = ratio.mean(dim=1, keepdim=True).expand_as(ratio)
        else:  # left projector [m, r]: one factor per column
            expected = ratio.mean(dim=0, keepdim=True).expand_as(ratio)
        torch.testing.assert_close(ratio, expected, msg=n)
        assert (ratio < 0).all(), n


# --- float64 reference of the official APOLLO update ------------------------------------
# Written from github.com/zhuhanqing/APOLLO apollo_torch/apollo.py (AdamW.__init__ seeds,
# AdamW.step) and apollo_torch/random_projector.py (stable_randn, next_seed,
# GradientProjector.project / get_orthogonal_matrix), at the defaults proj="random",
# proj_type="std", scale_front=False, disable_nl=False, correct_bias=True.


def _official_randn(shape, seed):
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator, device="cpu", dtype=torch.float32)


def _official_next_seed(seed, adv=0xF):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, torch.iinfo(torch.int64).max, (adv,), generator=generator).tolist()[-1]


class _OfficialApollo:
    """One state dict per parameter, in the official script's group order: the regular params
    (model order), then the attn/mlp weights (model order); seeds are 1-based indices."""

    def __init__(self, model, hp, projected_names):
        named = list(model.named_parameters())
        regular = [(n, p) for n, p in named if n not in projected_names]
        lowrank = [(n, p) for n, p in named if n in projected_names]
        self.order = regular + lowrank
        self.projected = set(projected_names)
        self.params = {n: p.detach().clone() for n, p in named}
        self.state = {n: {"seed": i + 1} for i, (n, _) in enumerate(self.order)}
        self.hp = hp
        self.limited = []  # names whose norm-growth limiter fired (> 1)

    def step(self, grads):
        hp = self.hp
        beta1, beta2 = hp["betas"]
        for name, _ in self.order:
            p, full_grad, state = self.params[name], grads[name], self.state[name]
            grad = full_grad
            state.setdefault("step", 0)
            if name in self.projected:  # Step 1 (random_projector.GradientProjector, std)
                m, n = full_grad.shape
                r = min(hp["rank"], m, n)
                if "projector" not in state or state["step"] % hp["update_proj_gap"] == 0:
                    shape = (r, n) if m >= n else (m, r)  # "right" if m >= n else "left"
                    proj = _official_randn(shape, state["seed"]) / math.sqrt(r)  # float32
                    state["projector"] = proj.to(full_grad.dtype)
                    state["seed"] = _official_next_seed(state["seed"])
                proj = state["projector"]
                grad = full_grad @ proj.t() if m >= n else proj.t() @ full_grad
            if "exp_avg" not in state:
                state["exp_avg"] = torch.zeros_like(grad)
                state["exp_avg_sq"] = torch.zeros_like(grad)
            state["step"] += 1
            t = state["step"]
            # Step 2: low-rank AdamW
            state["exp_avg"] = beta1 * state["exp_avg"] + (1 - beta1) * grad
            state["exp_avg_sq"] = beta2 * state["exp_avg_sq"] + (1 - beta2) * grad * grad
            denom = state["exp_avg_sq"].sqrt() + hp["eps"]
            step_size = hp["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
            norm_grad = state["exp_avg"] / denom
            if name in self.projected:
                # Step 3: channel-wise / tensor-wise scaling factor
                if hp["scale_type"] == "channel":
                    norm_dim = 0 if norm_grad.shape[0] < norm_grad.shape[1] else 1
                    factor = torch.norm(norm_grad, dim=norm_dim) / (
                        torch.norm(grad, dim=norm_dim) + 1e-8
                    )
                    if norm_dim == 1:
                        factor = factor.unsqueeze(1)
                else:
                    factor = torch.norm(norm_grad) / (torch.norm(grad) + 1e-8)
                # Step 4: the raw full-rank gradient, scaled; Fira's norm-growth limiter
                scaled_grad = full_grad * factor
                if "scaled_grad" in state:
                    scaled_norm = torch.norm(scaled_grad)
                    limiter = max(scaled_norm / (state["scaled_grad"] + 1e-8), 1.01) / 1.01
                    scaled_grad = scaled_grad / limiter
                    state["scaled_grad"] = scaled_norm / limiter
                    if float(limiter) > 1.0:
                        self.limited.append(name)
                else:
                    state["scaled_grad"] = torch.norm(scaled_grad)
                norm_grad = scaled_grad * math.sqrt(hp["scale"])
            p = p - step_size * norm_grad
            if hp["weight_decay"] > 0.0:
                p = p - hp["lr"] * hp["weight_decay"] * p
            self.params[name] = p


@pytest.mark.parametrize("name", ["apollo", "apollo_mini"])
def test_apollo_matches_the_official_update_in_float64(name):
    """Three steps on llama_tiny with random gradients, checked after each: gap 2, so the
    official refresh schedule (before updates 1 and 3, keeping the projector for update 2, the
    next seed for update 3) is pinned; the norm-growth limiter fires for some matrices and not
    for others; weight decay on."""
    torch.manual_seed(0)
    model = build_model("llama_tiny", torch.float64)
    overrides = {"update_proj_gap": 2, "weight_decay": 0.1, "lr": 0.01}
    if name == "apollo":
        overrides["rank"] = 8
    hp = {**get_spec(name).default_hparams, **overrides}
    assert hp["scale_type"] == ("channel" if name == "apollo" else "tensor")
    projected = [n for n, p in model.named_parameters() if n.endswith("proj.weight")]
    reference = _OfficialApollo(model, hp, projected)
    opt = build_optimizer(name, model, **overrides)
    params = dict(model.named_parameters())
    for step, grad_scale in enumerate([1.0, 3.0, 0.5]):
        grads = {n: grad_scale * torch.randn_like(p) for n, p in params.items()}
        for n, p in params.items():
            p.grad = grads[n].clone()
        opt.step()
        reference.step(grads)
        for n, p in params.items():
            torch.testing.assert_close(p.detach(), reference.params[n], msg=f"step {step + 1}: {n}")
            state, ref_state = opt.state[p], reference.state[n]
            assert state["step"] == ref_state["step"] and state["seed"] == ref_state["seed"], n
            if n in reference.projected:
                torch.testing.assert_close(state["projector"], ref_state["projector"], msg=n)
                torch.testing.assert_close(state["scaled_grad"], ref_state["scaled_grad"], msg=n)
    # Both branches of the limiter's max(ratio, 1.01) were taken.
    assert 0 < len(set(reference.limited)) < len(projected), reference.limited


def test_conda_unprojected_groups_take_an_adamw_step():
    """PolicyConda's other groups: first AdamW step, eps before bias correction (the library's)."""
    model = _model_with_grads()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer("conda", model)
    opt.step()
    hp = get_spec("conda").default_hparams
    (b1, b2), eps = hp["betas"], hp["eps"]
    step_size = hp["lr"] * (1 - b2) ** 0.5 / (1 - b1)
    params = dict(model.named_parameters())
    plain = [n for g in opt.param_groups if not g["projected"] for n in g["param_names"]]
    for n in plain:
        g = params[n].grad
        expected = before[n] - step_size * (1 - b1) * g / ((1 - b2) ** 0.5 * g.abs() + eps)
        torch.testing.assert_close(params[n].detach(), expected, msg=n)


def test_state_bytes_count_tensors_held_by_objects():
    class Holder:
        def __init__(self) -> None:
            self.matrix = torch.zeros(3, 5)

    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.1)
    opt.state[p] = {"projector": Holder()}
    assert optimizer_state_bytes(opt) == 3 * 5 * 4


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_default_hparams_lower_the_loss_on_a_fixed_batch(name):
    torch.manual_seed(0)
    model = build_model("llama_tiny")
    ids = torch.randint(0, model.config.vocab_size, (4, 33))
    opt = build_optimizer(name, model)
    losses = []
    for _ in range(15):
        logits = model(ids[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses

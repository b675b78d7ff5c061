"""Matrix optimizers (optbench.optimizers.matrix): float64 references, state bytes, Composite."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from optbench.engine.state_bytes import optimizer_state_bytes
from optbench.models import build_model
from optbench.optimizers import expected_state_bytes, build_optimizer, get_spec
from optbench.optimizers import kernels, matrix
from optbench.optimizers.kernels import newton_schulz, whiten
from optbench.optimizers.matrix import Composite

SCALE_ABLATIONS = [
    "colnorm_sgd", "rownorm_sgd", "signsgd", "nsnorm_sgd", "sgd_lastlayer_momentum"
]  # SCALE's policy: every matrix in-house, SCALE's Adam on vectors
IN_HOUSE = ["swan", "sinkgd", "root", *SCALE_ABLATIONS]
NAMES = ["muon", *IN_HOUSE]
SCALE_POLICY = set(SCALE_ABLATIONS)

# Non-default values, so a wrongly wired hparam shows up in the reference comparison.
HP = {
    "swan": {"lr": 0.003, "weight_decay": 0.1, "ns_steps": 7},
    "sinkgd": {"lr": 0.003, "weight_decay": 0.1, "sinkhorn_iters": 3},
    # ROOT's AdamW part shares its lr and weight decay, as the authors' class does.
    "root": {"lr": 0.003, "weight_decay": 0.1, "momentum": 0.9, "threshold_quantile": 0.8,
             "ns_steps": 4, "adamw_betas": (0.8, 0.9), "adamw_eps": 1e-6},
    "colnorm_sgd": {"lr": 0.02},
    "rownorm_sgd": {"lr": 0.02},
    "signsgd": {"lr": 0.002},
    "nsnorm_sgd": {"lr": 0.03, "ns_steps": 4},
    "sgd_lastlayer_momentum": {"lr": 0.2, "momentum": 0.8},
}
ADAMW_HP = {"adamw_lr": 0.004, "adamw_betas": (0.8, 0.95), "adamw_eps": 1e-6,
            "adamw_weight_decay": 0.05}
SCALE_ADAM_HP = {"adam_lr": 0.004, "adam_betas": (0.8, 0.95), "adam_eps": 1e-6,
                 "weight_decay": 0.1}


def _hparams(name: str) -> dict:
    if name == "root":
        return dict(HP[name])
    return {**HP[name], **(SCALE_ADAM_HP if name in SCALE_POLICY else ADAMW_HP)}


def _role(name: str, p: torch.Tensor) -> str:
    if name == "model.embed_tokens.weight":
        return "embedding"
    if name == "lm_head.weight":
        return "lm_head"
    return "hidden_matrix" if p.ndim == 2 else "vector"


def _grads(model: torch.nn.Module) -> dict:
    """Rows 1e3 apart in scale, one zero row: normalizations and their eps matter."""
    grads = {}
    for name, p in model.named_parameters():
        g = torch.randn_like(p)
        if p.ndim == 2:
            rows = torch.logspace(-2, 1, p.shape[0], dtype=p.dtype)[torch.randperm(p.shape[0])]
            g *= rows[:, None]
            g[3] = 0
        grads[name] = g
    return grads


# ---------------------------------------------------------------- float64 references


def _swan(g: torch.Tensor, hp: dict) -> torch.Tensor:
    """SWAN: GradNorm, then GradWhitening (G G^T)^{-1/2} G by Newton-Schulz, then rescale."""
    m, n = g.shape
    mean = g.mean(dim=1, keepdim=True)
    std = ((g - mean) ** 2).mean(dim=1, keepdim=True).sqrt()
    gn = (g - mean) / std.clamp_min(1e-8)
    x = gn if m <= n else gn.T  # whiten the smaller Gram matrix
    x = x / x.norm()
    y, z, eye = x @ x.T, torch.eye(x.shape[0], dtype=g.dtype), torch.eye(x.shape[0], dtype=g.dtype)
    for _ in range(hp["ns_steps"]):
        t = (3 * eye - z @ y) / 2
        y, z = y @ t, t @ z
    d = z @ x if m <= n else (z @ x).T
    return math.sqrt(m * n) * d / d.norm()


def _sinkgd(g: torch.Tensor, hp: dict) -> torch.Tensor:
    """SR-Sinkhorn: rows to l2 norm sqrt(n), then columns to sqrt(m), L times."""
    m, n = g.shape
    x = g
    for _ in range(hp["sinkhorn_iters"]):
        x = math.sqrt(n) * x / x.norm(dim=1, keepdim=True).clamp_min(1e-8)
        x = math.sqrt(m) * x / x.norm(dim=0, keepdim=True).clamp_min(1e-8)
    return x


MUON_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
# The authors' root5 COEFF_MAP_CANONICAL (huawei-noah/Efficient-Computing, Optimization/ROOT).
AUTHORS_ROOT_TABLE = {
    (2048, 2048): (3.4916, -4.8224, 2.1095),
    (2048, 16384): (3.1943, -3.8221, 1.5322),
    (2048, 3072): (3.4509, -4.5790, 1.9325),
    (2048, 8192): (2.9794, -3.6674, 1.6207),
}


def _muon_ns(g: torch.Tensor, hp: dict, coefficients=MUON_COEFFICIENTS) -> torch.Tensor:
    """Muon's quintic Newton-Schulz: X <- aX + b(XX^T)X + c(XX^T)^2 X from X = G/(||G||_F+eps)."""
    a, b, c = coefficients
    x = g if g.shape[0] <= g.shape[1] else g.T
    x = x / (x.norm() + 1e-7)
    for _ in range(hp["ns_steps"]):
        gram = x @ x.T
        x = a * x + b * gram @ x + c * gram @ gram @ x
    return x if g.shape[0] <= g.shape[1] else x.T


def _root(u: torch.Tensor, hp: dict, table: dict) -> torch.Tensor:
    """ROOT (the authors' ROOT.step and root5): O = soft-threshold of U at its quantile,
    B = U - O, Newton-Schulz with the coefficients of B's (min, max) shape from `table`
    (Muon's for any other shape), Moonlight's 0.2*sqrt(max(m, n))."""
    eps = torch.quantile(u.abs().flatten(), hp["threshold_quantile"]) + 1e-9
    outliers = u.sign() * torch.relu(u.abs() - eps)
    coefficients = table.get((min(u.shape), max(u.shape)), MUON_COEFFICIENTS)
    return 0.2 * math.sqrt(max(u.shape)) * _muon_ns(u - outliers, hp, coefficients)


def _rms_normalized(g: torch.Tensor, dim: int) -> torch.Tensor:
    return g / g.square().mean(dim=dim, keepdim=True).sqrt().clamp_min(1e-8)


def _input_dim(role: str) -> int:
    return 0 if role == "embedding" else 1  # the embedding is [vocab=input, hidden]


def _matrix_direction(name: str, role: str, g: torch.Tensor, hp: dict, table: dict) -> torch.Tensor:
    if name == "swan":
        return _swan(g, hp)
    if name == "sinkgd":
        return _sinkgd(g, hp)
    if name == "colnorm_sgd":
        return _rms_normalized(g, _input_dim(role))
    if name == "rownorm_sgd":
        return _rms_normalized(g, 1 - _input_dim(role))
    if name == "signsgd":
        return g.sign()
    if name == "nsnorm_sgd":
        return _muon_ns(g, hp)
    if name == "root":
        return _root(g, hp, table)
    return g  # sgd_lastlayer_momentum: g, or the lm_head's EMA (applied by the caller)


def _reference_step(name: str, params: dict, grads: dict, state: dict, t: int,
                    table: dict = AUTHORS_ROOT_TABLE) -> None:
    hp = _hparams(name)
    scale_policy = name in SCALE_POLICY
    for key, p in params.items():
        g, role = grads[key], _role(key, p)
        if role == "vector" or (role != "hidden_matrix" and not scale_policy):
            if name == "root":
                _root_adamw_reference(p, g, state, key, t, hp)
            else:
                _adam_reference(p, g, state, key, t, hp, scale_form=scale_policy)
            continue
        p.mul_(1 - hp["lr"] * hp.get("weight_decay", 0.0))
        if name == "sgd_lastlayer_momentum" and role == "lm_head":
            g = state[key] = hp["momentum"] * state.get(key, 0) + (1 - hp["momentum"]) * g
        if name == "root":  # M = mu*M + G, Nesterov: U = G + mu*M
            state[key] = hp["momentum"] * state.get(key, 0) + g
            g = g + hp["momentum"] * state[key]
        p.sub_(hp["lr"] * _matrix_direction(name, role, g, hp, table))


def _adam_reference(p, g, state, key, t, hp, scale_form: bool) -> None:
    """torch AdamW, or SCALE's Adam form (eps added before the bias correction)."""
    prefix = "adam" if scale_form else "adamw"
    lr, (b1, b2), eps = hp[prefix + "_lr"], hp[prefix + "_betas"], hp[prefix + "_eps"]
    p.mul_(1 - lr * hp["weight_decay" if scale_form else "adamw_weight_decay"])
    m = state[key + ".m"] = b1 * state.get(key + ".m", 0) + (1 - b1) * g
    v = state[key + ".v"] = b2 * state.get(key + ".v", 0) + (1 - b2) * g * g
    if scale_form:
        p.sub_(lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (v.sqrt() + eps))
    else:
        p.sub_(lr / (1 - b1**t) * m / (v.sqrt() / math.sqrt(1 - b2**t) + eps))


def _root_adamw_reference(p, g, state, key, t, hp) -> None:
    """The authors' ROOT "AdamW backup": the ROOT lr and weight decay (p *= 1 - lr*wd first),
    its own betas and eps, eps added to sqrt(v) before the bias correction."""
    (b1, b2), eps = hp["adamw_betas"], hp["adamw_eps"]
    p.mul_(1 - hp["lr"] * hp["weight_decay"])
    m = state[key + ".m"] = b1 * state.get(key + ".m", 0) + (1 - b1) * g
    v = state[key + ".v"] = b2 * state.get(key + ".v", 0) + (1 - b2) * g * g
    p.sub_(hp["lr"] * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (v.sqrt() + eps))


@pytest.mark.parametrize("name", IN_HOUSE)
def test_two_steps_match_float64_reference(name):
    _assert_two_steps_match_reference(name)


def test_one_matrix_per_batch_matches_the_reference(monkeypatch):
    monkeypatch.setattr(matrix, "BATCH_ELEMS", 1)
    _assert_two_steps_match_reference("root")


def test_root_takes_each_shape_s_coefficients_from_the_table(monkeypatch):
    """llama_tiny has no 2048-wide matrix, so its two shapes are put in the table: the square
    attention weights and the [172, 64] / [64, 172] MLP weights (keyed by (min, max)) then
    run on the authors' 2048 x 2048 and 2048 x 8192 coefficients."""
    table = {(64, 64): AUTHORS_ROOT_TABLE[(2048, 2048)], (64, 172): AUTHORS_ROOT_TABLE[(2048, 8192)]}
    monkeypatch.setattr(kernels, "ROOT_NS", table)
    _assert_two_steps_match_reference("root", table)
    with pytest.raises(AssertionError):  # Muon's coefficients everywhere are another update
        _assert_two_steps_match_reference("root", {})


def test_root_table_is_the_authors_and_keys_by_min_max():
    assert kernels.ROOT_NS == AUTHORS_ROOT_TABLE
    assert kernels.root_ns_coefficients(2048, 2048) == (3.4916, -4.8224, 2.1095)  # llama_1b attn
    assert kernels.root_ns_coefficients(8192, 2048) == kernels.root_ns_coefficients(2048, 8192)
    assert kernels.root_ns_coefficients(5461, 2048) == kernels.MUON_NS  # llama_1b MLP: untabulated
    assert kernels.root_ns_coefficients(4096, 4096) == kernels.MUON_NS  # llama_7b


def _assert_two_steps_match_reference(name: str, table: dict = AUTHORS_ROOT_TABLE) -> None:
    torch.manual_seed(0)
    model = build_model("llama_tiny", torch.float64)
    reference = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(name, model, **_hparams(name))
    state: dict = {}
    for t in (1, 2):
        grads = _grads(model)
        for key, p in model.named_parameters():
            p.grad = grads[key].clone()
        opt.step()
        _reference_step(name, reference, grads, state, t, table)
    for key, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), reference[key], rtol=1e-10, atol=1e-13, msg=key)


def _polar(x: torch.Tensor) -> torch.Tensor:
    """U V^T over the nonzero singular values: (X X^T)^{-1/2} X, pseudo-inverse where singular."""
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    keep = s > 1e-10 * s.max()
    return u[..., keep] @ vh[..., keep, :]


@pytest.mark.parametrize("shape", [(3, 40, 90), (2, 90, 40)], ids=["wide", "tall"])
def test_whitening_converges_to_the_polar_factor(shape):
    x = torch.randn(*shape, dtype=torch.float64)
    x = x - x.mean(dim=-1, keepdim=True)  # GradNorm's centering: the tall Gram is singular
    expected = torch.stack([_polar(m) for m in x])
    torch.testing.assert_close(whiten(x, steps=40, eps=1e-12), expected, rtol=0, atol=1e-8)


def test_muon_newton_schulz_lands_near_the_polar_factor():
    x = torch.randn(4, 64, 172, dtype=torch.float64)
    s = torch.linalg.svdvals(newton_schulz(x, steps=5, eps=1e-7))
    assert s.min() > 0.5 and s.max() < 1.3  # Muon's quintic: S' ~ U(0.5, 1.5), not exactly 1


# ---------------------------------------------------------------- per entry on llama_tiny


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", NAMES)
def test_state_bytes_match_formula(name, dtype):
    torch.manual_seed(0)
    model = build_model("llama_tiny", dtype)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt = build_optimizer(name, model)
    opt.step()
    assert optimizer_state_bytes(opt) == expected_state_bytes(name, model) > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_default_hparams_lower_the_loss(name):
    torch.manual_seed(0)
    model = build_model("llama_tiny")
    ids = torch.randint(0, model.config.vocab_size, (4, 32))
    opt = build_optimizer(name, model)
    losses = []
    for _ in range(15):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


@pytest.mark.parametrize("name", NAMES)
def test_policy_puts_exactly_the_hidden_matrices_in_the_matrix_treatment(name):
    model = build_model("llama_tiny")
    opt = build_optimizer(name, model)
    parts = [[n for g in p.param_groups for n in g["param_names"]] for p in opt.parts.values()]
    hidden = [n for n, p in model.named_parameters() if p.ndim == 2 and n.endswith("proj.weight")]
    vectors = [n for n, p in model.named_parameters() if p.ndim == 1]
    assert len(hidden) == 2 * 7
    if name in SCALE_POLICY:  # SCALE's policy: embedding and lm_head are in-house matrices too
        assert set(hidden) <= set(parts[0]) and parts[-1] == vectors
        matrices = [n for n, p in model.named_parameters() if p.ndim == 2]
        assert sorted(sum(parts[:-1], [])) == sorted(matrices)
    else:  # listed first: its lr is the one training logs
        assert parts == [hidden, ["model.embed_tokens.weight", "lm_head.weight", *vectors]]


@pytest.mark.parametrize("name", NAMES)
def test_lambdalr_scales_every_group_of_every_part(name):
    opt = build_optimizer(name, build_model("llama_tiny"))
    assert isinstance(opt, Composite) and len(opt.parts) >= 2
    initial = [g["lr"] for g in opt.param_groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    opt.step()
    scheduler.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([lr / 2 for lr in initial])
    part_lrs = [g["lr"] for part in opt.parts.values() for g in part.param_groups]
    assert part_lrs == pytest.approx([lr / 2 for lr in initial])


def _muon_alone(model: torch.nn.Module) -> list[torch.optim.Optimizer]:
    """The muon entry's defaults, as two plain torch optimizers."""
    hp = get_spec("muon").default_hparams
    hidden = [p for n, p in model.named_parameters() if n.endswith("proj.weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("proj.weight")]
    return [
        torch.optim.Muon(hidden, lr=hp["lr"], weight_decay=0.0, momentum=hp["momentum"]),
        torch.optim.AdamW(rest, lr=hp["adamw_lr"], betas=hp["adamw_betas"], eps=hp["adamw_eps"],
                          weight_decay=0.0),
    ]


def test_composite_steps_like_its_parts_alone_under_a_scheduler():
    torch.manual_seed(0)
    model = build_model("llama_tiny")
    twin = copy.deepcopy(model)
    opt = build_optimizer("muon", model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    alone = _muon_alone(twin)
    for _ in range(2):
        for a, b in zip(model.parameters(), twin.parameters()):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        opt.step()
        scheduler.step()
        for part in alone:
            part.step()
            for group in part.param_groups:
                group["lr"] /= 2  # what the scheduler must have done to the composite's parts
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["muon", "sgd_lastlayer_momentum"])
def test_state_dict_round_trip(name):
    torch.manual_seed(0)
    model = build_model("llama_tiny")
    opt = build_optimizer(name, model)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    clone = build_optimizer(name, model)
    clone.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert optimizer_state_bytes(clone) == optimizer_state_bytes(opt)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(before[n])
    clone.step()  # the loaded state is what the parts use
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), after[n], rtol=0, atol=0, msg=n)


# ---------------------------------------------------------------- the authors' defaults


def test_muon_runs_keller_jordan_s_defaults():
    """KellerJordan/Muon muon.py, SingleDeviceMuonWithAuxAdam: muon groups lr 0.02, momentum
    0.95, wd 0; adam groups lr 3e-4, betas (0.9, 0.95), eps 1e-10, wd 0."""
    opt = build_optimizer("muon", build_model("llama_tiny"))
    (muon_group,) = opt.parts["muon"].param_groups
    assert (muon_group["lr"], muon_group["momentum"], muon_group["weight_decay"]) == (0.02, 0.95, 0)
    assert muon_group["nesterov"] and muon_group["ns_steps"] == 5
    for group in opt.parts["adamw"].param_groups:
        assert group["lr"] == 3e-4 and tuple(group["betas"]) == (0.9, 0.95)
        assert group["eps"] == 1e-10 and group["weight_decay"] == 0
    overridden = build_optimizer("muon", build_model("llama_tiny"), adamw_betas=(0.8, 0.99))
    assert all(tuple(g["betas"]) == (0.8, 0.99) for g in overridden.parts["adamw"].param_groups)


def test_root_adamw_part_shares_lr_and_weight_decay():
    """The authors' ROOT class: one lr and wd 0.1 for both parts, AdamW betas (0.9, 0.95)."""
    opt = build_optimizer("root", build_model("llama_tiny"), lr=0.004)
    for part in opt.parts.values():
        for group in part.param_groups:
            assert group["lr"] == 0.004 and group["weight_decay"] == 0.1
    for group in opt.parts["adamw"].param_groups:
        assert tuple(group["adam_betas"]) == (0.9, 0.95) and group["adam_eps"] == 1e-8


class KellerJordanMuon:
    """KellerJordan/Muon muon.py, SingleDeviceMuonWithAuxAdam.step at its defaults: muon_update
    (EMA momentum, Nesterov, zeropower_via_newtonschulz5 in bfloat16 as written there,
    max(1, rows/cols)**0.5) on the hidden matrices; adam_update (eps after the bias correction)
    elsewhere; p *= 1 - lr*wd before each update."""

    def __init__(self, params: dict, ns_dtype: torch.dtype = torch.bfloat16) -> None:
        self.params = {n: p.detach().clone() for n, p in params.items()}
        self.state: dict[str, dict] = {n: {} for n in params}
        self.ns_dtype = ns_dtype

    def _newtonschulz5(self, g: torch.Tensor, steps: int = 5) -> torch.Tensor:
        a, b, c = MUON_COEFFICIENTS
        x = g.to(self.ns_dtype)
        tall = g.size(-2) > g.size(-1)
        x = x.mT if tall else x
        x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
        for _ in range(steps):
            gram = x @ x.mT
            x = a * x + (b * gram + c * gram @ gram) @ x
        return x.mT if tall else x

    def step(self, grads: dict) -> None:
        for name, g in grads.items():
            p, state = self.params[name], self.state[name]
            zeros = torch.zeros_like(g)
            if name.endswith("proj.weight"):  # lr 0.02, momentum 0.95, wd 0
                buf = torch.lerp(state.get("momentum_buffer", zeros), g, 0.05)
                state["momentum_buffer"] = buf
                update = self._newtonschulz5(torch.lerp(g, buf, 0.95))
                update = update * max(1, g.size(-2) / g.size(-1)) ** 0.5
                self.params[name] = p - 0.02 * update.to(p.dtype)
                continue
            # lr 3e-4, betas (0.9, 0.95), eps 1e-10, wd 0
            t = state["step"] = state.get("step", 0) + 1
            m = state["exp_avg"] = torch.lerp(state.get("exp_avg", zeros), g, 0.1)
            v = state["exp_avg_sq"] = torch.lerp(state.get("exp_avg_sq", zeros), g * g, 0.05)
            update = (m / (1 - 0.9**t)) / ((v / (1 - 0.95**t)).sqrt() + 1e-10)
            self.params[name] = p - 3e-4 * update


def _muon_steps(model, reference, steps: int = 3) -> None:
    params = dict(model.named_parameters())
    opt = build_optimizer("muon", model)
    for _ in range(steps):
        grads = _grads(model)
        for n, p in params.items():
            p.grad = grads[n].clone()
        opt.step()
        reference.step(grads)


def _float64_zeropower(grad, ns_coefficients, ns_steps, eps):
    """torch.optim._muon._zeropower_via_newtonschulz without its cast to bfloat16."""
    a, b, c = ns_coefficients
    x = grad.T if grad.size(0) > grad.size(1) else grad
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if grad.size(0) > grad.size(1) else x


def test_muon_follows_keller_jordan_s_code_exactly_with_float64_newton_schulz(monkeypatch):
    """Three steps, gradients with per-row scales and a zero row, Newton-Schulz in float64 on
    both sides: momentum, Nesterov, the shape factor, the AdamW part and every default are the
    authors'."""
    monkeypatch.setattr(torch.optim._muon, "_zeropower_via_newtonschulz", _float64_zeropower)
    torch.manual_seed(0)
    model = build_model("llama_tiny", torch.float64)
    reference = KellerJordanMuon(dict(model.named_parameters()), ns_dtype=torch.float64)
    _muon_steps(model, reference)
    for n, p in model.named_parameters():
        # rtol 1e-7: torch divides by max(||X||, eps), the authors by ||X|| + 1e-7 (a deviation
        # of eps/||X||: ~1e-8 of the update here).
        torch.testing.assert_close(p.detach(), reference.params[n], rtol=1e-7, atol=1e-9, msg=n)


def test_muon_as_shipped_agrees_with_keller_jordan_s_bfloat16_code_to_its_rounding():
    """Both orthogonalize in bfloat16 (torch fuses b*A + c*A@A into addmm, so rounding
    differs): a few % of the update on the hidden matrices, exact elsewhere."""
    torch.manual_seed(0)
    model = build_model("llama_tiny", torch.float64)
    params = dict(model.named_parameters())
    start = {n: p.detach().clone() for n, p in params.items()}
    reference = KellerJordanMuon(params)
    _muon_steps(model, reference)
    for n, p in params.items():
        if n.endswith("proj.weight"):
            moved = (reference.params[n] - start[n]).norm()
            assert (p.detach() - reference.params[n]).norm() / moved < 5e-2, n
        else:
            torch.testing.assert_close(p.detach(), reference.params[n], rtol=1e-10, atol=1e-13,
                                       msg=n)


def test_exactly_the_entries_with_a_batched_direction_are_traced_at_full_depth():
    """OptimizerSpec.step_extrapolates is False where a MatrixSGD part transforms matrices in
    batches across layers (BATCHED_DIRECTIONS), and only there."""
    from optbench.models import build_model
    from optbench.optimizers import list_specs, resolve_hparams
    from optbench.optimizers.matrix import BATCHED_DIRECTIONS, Composite, MatrixSGD

    model = build_model("llama_tiny", device="meta")
    for spec in list_specs():
        if spec.needs_create_graph:
            continue
        optimizer = spec.factory(model, resolve_hparams(spec.name, {}, "llama_tiny"))
        parts = optimizer.parts.values() if isinstance(optimizer, Composite) else [optimizer]
        batched = any(isinstance(part, MatrixSGD) and group["direction"] in BATCHED_DIRECTIONS
                      for part in parts for group in part.param_groups)
        assert spec.step_extrapolates == (not batched), spec.name

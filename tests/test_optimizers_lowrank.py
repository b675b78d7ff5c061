"""Gradient-projection optimizers: exact state bytes, group policy, low-rank state, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from optbench.measure_state import optimizer_state_bytes
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


def test_apollo_update_has_the_projection_rank():
    """Pins the deviation in the spec's source: the library projects APOLLO's update back from
    rank r (the official code scales the full gradient). A library change should fail here."""
    model = _model_with_grads()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer("apollo", model, rank=8)
    opt.step()
    for n, p in model.named_parameters():
        if "proj" in n:
            assert torch.linalg.matrix_rank(p.detach() - before[n]) == 8, n


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

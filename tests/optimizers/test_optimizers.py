"""Optimizer registry, SCALE against a float64 reference, and exact optimizer-state bytes."""

from __future__ import annotations

import copy
import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from optbench.errors import OptbenchError
from optbench.engine.state_bytes import optimizer_state_bytes
from optbench.models import build_model
from optbench.optimizers import (
    expected_state_bytes,
    build_optimizer,
    get_spec,
    list_specs,
    register,
    registry,
    resolve_hparams,
    scale_param_groups,
)
from optbench.optimizers.kernels import column_norm_cpu

# ---------------------------------------------------------------- registry


def test_registry_names_and_alias():
    # The in-house entries come first; other modules (and their tests) register more after them.
    assert [s.name for s in list_specs()][:3] == ["adamw", "sgd", "scale"]
    assert get_spec("adam") is get_spec("adamw")
    assert isinstance(build_optimizer("adam", build_model("llama_tiny")), torch.optim.AdamW)


def test_unknown_optimizer_suggests_and_lists():
    with pytest.raises(OptbenchError) as err:
        get_spec("adamm")
    known = ", ".join(sorted(s.name for s in list_specs()))
    assert str(err.value) == f"unknown optimizer 'adamm' (did you mean 'adamw'?); known: {known}"
    assert {"adamw", "scale", "sgd"} <= set(known.split(", "))  # canonical names, sorted


def test_register_rejects_duplicate_name_or_alias():
    names = [s.name for s in list_specs()]
    spec = get_spec("sgd")
    for clash in ({"name": "sgd"}, {"name": "adam"}, {"name": "new", "aliases": ("scale",)}):
        with pytest.raises(ValueError, match="already registered"):
            register(dataclasses.replace(spec, **clash))
    assert [s.name for s in list_specs()] == names


def test_override_replaces_in_place_or_registers_for_the_block_only():
    names, sgd = [s.name for s in list_specs()], get_spec("sgd")
    with registry.override(dataclasses.replace(sgd, version="999")):
        assert get_spec("sgd").version == "999"
        assert [s.name for s in list_specs()] == names  # same place: fingerprints, listings
    assert get_spec("sgd") is sgd
    with registry.override(dataclasses.replace(sgd, name="sgd_probe")):
        assert get_spec("sgd_probe").source == sgd.source
    assert [s.name for s in list_specs()] == names
    with pytest.raises(ValueError, match="keeps its aliases"):
        with registry.override(dataclasses.replace(get_spec("adamw"), aliases=())):
            pass
    assert get_spec("adam") is get_spec("adamw")


def test_unregister_removes_the_entry_and_its_aliases():
    probe = dataclasses.replace(get_spec("sgd"), name="sgd_probe", aliases=("sgd_alias",))
    register(probe)
    assert registry.unregister("sgd_alias") is probe
    for name in ("sgd_probe", "sgd_alias"):
        with pytest.raises(OptbenchError, match="unknown optimizer"):
            get_spec(name)


def test_importing_the_package_leaves_the_slow_libraries_unimported():
    # pytorch_optimizer and bitsandbytes take seconds to import: only their factories do.
    code = ("import sys, optbench.optimizers; "
            "print(sorted({'pytorch_optimizer', 'bitsandbytes'} & set(sys.modules)))")
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_resolve_hparams_defaults_overrides_and_yaml_values():
    assert resolve_hparams("adamw", {}) == get_spec("adamw").default_hparams
    hp = resolve_hparams("adam", {"lr": "3e-4", "betas": [0.9, 0.95], "fused": True})
    assert hp["lr"] == 3e-4 and hp["betas"] == (0.9, 0.95) and hp["fused"] is True
    overrides = {"adam_betas": [0.8, 0.99]}
    assert resolve_hparams("scale", overrides)["adam_betas"] == (0.8, 0.99)
    assert overrides == {"adam_betas": [0.8, 0.99]}  # the caller's dict is left alone


def test_resolve_hparams_rejects_unknown_key_and_bad_values():
    expected = r"no hparam 'lrr' \(did you mean 'lr'\?\); accepted: lr, weight_decay"
    with pytest.raises(OptbenchError, match=expected):
        resolve_hparams("sgd", {"lrr": 0.1})
    with pytest.raises(OptbenchError, match="'momentum'"):
        resolve_hparams("sgd", {"momentum": 0.9})  # state-changing option deliberately not accepted
    for bad in ({"lr": "fast"}, {"lr": True}, {"betas": [0.9]}, {"fused": "yes"}):
        with pytest.raises(OptbenchError, match="optimizer 'adamw' hparam"):
            resolve_hparams("adamw", bad)


# ---------------------------------------------------------------- state bytes


def _param(*shape: int) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.zeros(*shape))


def test_state_bytes_empty_state():
    opt = torch.optim.SGD([_param(3, 4)], lr=0.1)
    assert optimizer_state_bytes(opt) == 0


def test_state_bytes_views_nested_and_params_skipped():
    p, q = _param(10), _param(4)
    opt = torch.optim.SGD([p, q], lr=0.1)
    base = torch.zeros(8, dtype=torch.float64)  # 64 bytes, reached through three views
    opt.state[p] = {"a": base[:4], "nested": {"b": [base[4:], (base.view(2, 4), 7)]}, "param": q}
    opt.state[q] = {"c": torch.zeros(3, dtype=torch.int16), "self": p[2:5]}  # + 6 bytes
    assert optimizer_state_bytes(opt) == 64 + 6


def _step_once(name: str, dtype: torch.dtype, **hparams) -> tuple[int, int]:
    torch.manual_seed(0)
    model = build_model("llama_tiny", dtype)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt = build_optimizer(name, model, **hparams)
    opt.step()
    return optimizer_state_bytes(opt), expected_state_bytes(name, model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", ["adamw", "sgd", "scale"])
def test_expected_state_bytes_match_measured(name, dtype):
    measured, expected = _step_once(name, dtype)
    assert measured == expected
    assert (measured > 0) == (name != "sgd")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", [{"foreach": True}, {"fused": True}], ids=["foreach", "fused"])
def test_adamw_state_bytes_for_every_implementation(impl, dtype):
    measured, expected = _step_once("adamw", dtype, **impl)
    assert measured == expected


# ---------------------------------------------------------------- SCALE


def test_scale_policy_roles():
    groups = {g["role"]: g["param_names"] for g in scale_param_groups(build_model("llama_tiny"))}
    assert groups["embedding"] == ["model.embed_tokens.weight"]
    assert groups["lm_head"] == ["lm_head.weight"]
    assert len(groups["matrix"]) == 2 * 7
    assert all(n.endswith("proj.weight") for n in groups["matrix"])
    assert len(groups["adam"]) == 2 * 2 + 1 and all("norm" in n for n in groups["adam"])


def test_scale_rejects_tied_embeddings():
    model = build_model("llama_tiny")
    model.lm_head.weight = model.model.embed_tokens.weight
    with pytest.raises(OptbenchError, match="untied"):
        build_optimizer("scale", model)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["fp64", "bf16"])
def test_cpu_column_norm_over_several_blocks(dtype):
    t = torch.randn(5000, 100, dtype=torch.float64).to(dtype)  # 2 row blocks, the last partial
    acc = torch.promote_types(dtype, torch.float32)
    expected = torch.linalg.vector_norm(t.to(acc), dim=0, keepdim=True)
    rtol = 1e-5 if dtype == torch.bfloat16 else 1e-12  # bf16: float32 sums in another order
    torch.testing.assert_close(column_norm_cpu(t, acc), expected, rtol=rtol, atol=0)


HP = {"lr": 0.02, "momentum": 0.8, "adam_lr": 0.005, "adam_betas": (0.85, 0.99),
      "adam_eps": 1e-8, "weight_decay": 0.1, "eps": 1e-8}


def _role(name: str, p: torch.Tensor) -> str:
    if name == "model.embed_tokens.weight":
        return "embedding"
    if name == "lm_head.weight":
        return "lm_head"
    return "matrix" if p.ndim == 2 else "adam"


def _reference_step(params: dict, grads: dict, state: dict, t: int) -> None:
    """SCALE written straight from the equations (the authors' code), in float64."""
    b1, b2 = HP["adam_betas"]
    for name, p in params.items():
        g, role = grads[name], _role(name, p)
        lr = HP["adam_lr"] if role == "adam" else HP["lr"]
        p.mul_(1 - lr * HP["weight_decay"])
        if role == "adam":
            m = state[name + ".m"] = b1 * state.get(name + ".m", 0) + (1 - b1) * g
            v = state[name + ".v"] = b2 * state.get(name + ".v", 0) + (1 - b2) * g * g
            p.sub_(lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (v.sqrt() + HP["adam_eps"]))
            continue
        if role == "lm_head":
            g = state[name] = HP["momentum"] * state.get(name, 0) + (1 - HP["momentum"]) * g
        rms = g.square().mean(dim=0 if role == "embedding" else 1, keepdim=True).sqrt()
        p.sub_(lr * g / rms.clamp_min(HP["eps"]))


def _random_grads(model: torch.nn.Module) -> dict:
    """Rows/columns differing in scale by 1e4, plus a zero and a below-eps row and column."""
    grads = {}
    for name, p in model.named_parameters():
        g = torch.randn_like(p)
        if p.ndim == 2:
            rows, cols = p.shape
            g *= torch.logspace(-3, 1, rows, dtype=p.dtype)[torch.randperm(rows)].unsqueeze(1)
            g *= torch.logspace(-1, 1, cols, dtype=p.dtype)[torch.randperm(cols)]
            g[3], g[:, 5] = 0, 0
            g[7], g[:, 9] = 1e-9 * torch.randn_like(g[7]), 1e-9 * torch.randn_like(g[:, 9])
        grads[name] = g
    return grads


@pytest.mark.parametrize("steps", [1, 2])
def test_scale_matches_float64_reference(steps):
    torch.manual_seed(0)
    model = build_model("llama_tiny", torch.float64)
    reference = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer("scale", model, **HP)
    state: dict = {}
    for t in range(1, steps + 1):
        grads = _random_grads(model)
        for name, p in model.named_parameters():
            p.grad = grads[name].clone()
        opt.step()
        _reference_step(reference, grads, state, t)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), reference[name], rtol=1e-12, atol=1e-14, msg=name)


def test_scale_bf16_step_tracks_the_float64_reference():
    torch.manual_seed(0)
    model = build_model("llama_tiny", torch.bfloat16)
    reference = {n: p.detach().double() for n, p in model.named_parameters()}
    grads = _random_grads(model)
    for name, p in model.named_parameters():
        p.grad = grads[name]
    build_optimizer("scale", model, **HP).step()
    _reference_step(reference, {n: g.double() for n, g in grads.items()}, {}, 1)
    for name, p in model.named_parameters():  # bf16 rounding of params and of row scales
        torch.testing.assert_close(p.detach().double(), reference[name], rtol=1e-2, atol=1e-3)


def test_scale_state_dict_round_trip_and_scheduler_scales_adam_lr():
    torch.manual_seed(0)
    model = build_model("llama_tiny")
    grads = _random_grads(model)
    for name, p in model.named_parameters():
        p.grad = grads[name]
    opt = build_optimizer("scale", model, lr=0.01, adam_lr=0.004)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert {g["role"]: g["lr"] for g in opt.param_groups}["adam"] == pytest.approx(0.002)
    opt.step()
    scheduler.step()
    clone = build_optimizer("scale", model, lr=0.01, adam_lr=0.004)
    clone.load_state_dict(copy.deepcopy(opt.state_dict()))  # load_state_dict shares tensors
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    after_opt = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(before[name])
    clone.step()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), after_opt[name], rtol=0, atol=0, msg=name)


# ---------------------------------------------------------------- training


@pytest.mark.slow
@pytest.mark.parametrize("name", [s.name for s in list_specs()])
def test_default_hparams_lower_the_loss_on_a_fixed_batch(name):
    torch.manual_seed(0)
    model = build_model("llama_tiny")
    ids = torch.randint(0, model.config.vocab_size, (4, 32))
    opt = build_optimizer(name, model)
    losses = []
    for _ in range(20):
        loss = model(input_ids=ids, labels=ids).loss  # transformers shifts labels internally
        loss.backward(create_graph=get_spec(name).needs_create_graph)  # Hessian-vector products
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    if name == "kron":  # lr 3e-4, a third of AdamW's as its authors advise: a slow, steady start
        assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < losses[0], losses
    elif name == "prodigy":  # learns, then its estimated step overshoots (docs/optimizers.md)
        assert min(losses) < losses[0] - 0.2, losses
    else:
        assert losses[-1] < losses[0] - 0.2, losses

"""GaLore, Fira and Conda against float64 references of their authors' code, refresh schedule
included.

The references are written from jiaweizzhao/GaLore galore_torch/adamw.py (+ galore_projector.py),
xichen-fy/Fira optimizer_torch/fira_adamw.py (+ gradient_projection.py) and jie040109/Conda
conda_torch/conda.py (+ projector.py). As there, the SVD runs in float32 on the cast matrix and
its factor is cast back; everything else is float64. Gap 2, so that a 5-step run refreshes the
subspace (the authors: before updates 1, 3, 5), and gradients with per-row and per-column
scales, so that a mix-up of the projected side or of the norm axis cannot pass.
"""

from __future__ import annotations

import math

import pytest
import torch

from optbench.models import build_model
from optbench.optimizers import build_optimizer, get_spec
from optbench.optimizers import lowrank, projection

STEPS = 5
GAP = 2
NAMES = ["galore", "fira", "conda"]


def _svd_factor(matrix: torch.Tensor, side: str, rank: int | None) -> torch.Tensor:
    """The authors' get_orthogonal_matrix: SVD of the float32 cast, factor cast back."""
    u, _, vh = torch.linalg.svd(matrix.float(), full_matrices=False)
    factor = vh[:rank, :] if side == "right" else u[:, :rank]
    return factor.to(matrix.dtype)


class AuthorsProjectedAdam:
    """The authors' AdamW step with GaLore's, Fira's or Conda's projection ("std" type) on the
    projected params, plain AdamW (eps outside the sqrt, before bias correction) on the rest.
    Per-param 0-based step count: the projector sees it before the increment."""

    def __init__(self, kind: str, params: dict, projected: set, hp: dict) -> None:
        self.kind, self.hp, self.projected = kind, hp, projected
        self.params = {n: p.detach().clone() for n, p in params.items()}
        self.state: dict[str, dict] = {n: {"step": 0} for n in params}
        self.refreshed: dict[str, list[int]] = {n: [] for n in projected}

    def _basis(self, name: str, grad: torch.Tensor, basis_of: torch.Tensor) -> torch.Tensor:
        state = self.state[name]
        if "ortho" not in state or state["step"] % self.hp["update_proj_gap"] == 0:
            side = "right" if grad.shape[0] >= grad.shape[1] else "left"
            rank = None if self.kind == "conda" else self.hp["rank"]
            state["ortho"] = _svd_factor(basis_of, side, rank)
            self.refreshed[name].append(state["step"] + 1)  # before this 1-based update
        return state["ortho"]

    @staticmethod
    def _project(x: torch.Tensor, ortho: torch.Tensor) -> torch.Tensor:
        return x @ ortho.t() if x.shape[0] >= x.shape[1] else ortho.t() @ x

    def _back(self, low: torch.Tensor, ortho: torch.Tensor, tall: bool) -> torch.Tensor:
        return (low @ ortho if tall else ortho @ low) * self.hp["scale"]

    def step(self, grads: dict) -> None:
        for name, full_grad in grads.items():
            self._step_one(name, full_grad)

    def _step_one(self, name: str, full_grad: torch.Tensor) -> None:
        hp, state, p = self.hp, self.state[name], self.params[name]
        beta1, beta2 = hp["betas"]
        projected = name in self.projected
        tall = full_grad.dim() == 2 and full_grad.shape[0] >= full_grad.shape[1]
        state.setdefault("exp_avg", torch.zeros_like(full_grad))
        grad, exp_avg = full_grad, state["exp_avg"]
        if self.kind == "conda":
            # Conda: the momentum first, in full size; its SVD gives the basis.
            state["exp_avg"] = exp_avg = beta1 * exp_avg + (1 - beta1) * full_grad
            if projected:
                ortho = self._basis(name, full_grad, basis_of=exp_avg)
                grad, exp_avg = self._project(full_grad, ortho), self._project(exp_avg, ortho)
        elif projected:
            ortho = self._basis(name, full_grad, basis_of=full_grad)
            grad = self._project(full_grad, ortho)
        if self.kind != "conda":
            if state["exp_avg"].shape != grad.shape:  # low-rank moments, made on first use
                state["exp_avg"] = torch.zeros_like(grad)
            state["exp_avg"] = exp_avg = beta1 * state["exp_avg"] + (1 - beta1) * grad
        exp_avg_sq = state.get("exp_avg_sq", torch.zeros_like(grad))
        state["exp_avg_sq"] = exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
        state["step"] += 1
        t = state["step"]
        step_size = hp["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        norm_grad = exp_avg / (exp_avg_sq.sqrt() + hp["eps"])
        if projected:
            back = self._back(norm_grad, state["ortho"], tall)
            if self.kind == "fira":
                back = back + self._fira_residual(state, full_grad, grad, norm_grad, tall)
            norm_grad = back
        p = p - step_size * norm_grad
        self.params[name] = p - hp["lr"] * hp["weight_decay"] * p

    def _fira_residual(self, state, full_grad, grad, norm_grad, tall) -> torch.Tensor:
        """Fira's norm-based scaling of what the projection drops, then its norm-growth limiter."""
        norm_dim = 0 if norm_grad.shape[0] < norm_grad.shape[1] else 1
        factor = norm_grad.norm(dim=norm_dim) / (grad.norm(dim=norm_dim) + 1e-8)
        if norm_dim == 1:
            factor = factor.unsqueeze(1)
        scaled = (full_grad - self._back(grad, state["ortho"], tall)) * factor
        if "scaling_grad" in state:
            scaled_norm = scaled.norm()
            limiter = max(scaled_norm / (state["scaling_grad"] + 1e-8), 1.01) / 1.01
            scaled = scaled / limiter
            state["scaling_grad"] = scaled_norm / limiter
        else:
            state["scaling_grad"] = scaled.norm()
        return scaled


def _scaled_gradients(params: dict, steps: int) -> list[dict]:
    """Per step, per param: diag(rows) · N · diag(cols), the scales log-uniform over 10^±1 and
    fixed over the run (as a layer's are), N fresh standard normal."""
    gen = torch.Generator().manual_seed(1234)

    def scales(n: int) -> torch.Tensor:
        return 10 ** (2 * torch.rand(n, generator=gen, dtype=torch.float64) - 1)

    fixed = {n: (scales(p.shape[0]), scales(p.shape[-1])) for n, p in params.items()}
    out = []
    for _ in range(steps):
        step = {}
        for n, p in params.items():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            rows, cols = fixed[n]
            step[n] = rows[:, None] * noise * cols if p.dim() == 2 else noise * rows
        out.append(step)
    return out


def _setup(name: str):
    torch.manual_seed(0)
    model = build_model("llama_tiny", torch.float64)
    overrides = {"update_proj_gap": GAP, "weight_decay": 0.1, "lr": 0.01}
    if name != "conda":
        overrides["rank"] = 8
    hp = {**get_spec(name).default_hparams, **overrides}
    params = dict(model.named_parameters())
    projected = {n for n, p in params.items() if n.endswith("proj.weight")}
    return model, overrides, hp, params, projected


def _run(opt, reference, params, on_step) -> None:
    for step, grads in enumerate(_scaled_gradients(params, STEPS), start=1):
        for n, p in params.items():
            p.grad = grads[n].clone()
        opt.step()
        reference.step(grads)
        on_step(step)


def _relative_gap(params: dict, start: dict, reference) -> float:
    """The largest |p - p_ref| over a param's own displacement from its start, over params."""
    return max(
        float((p.detach() - reference.params[n]).norm() / (reference.params[n] - start[n]).norm())
        for n, p in params.items()
    )


@pytest.mark.parametrize("name", NAMES)
def test_matches_the_authors_code_in_float64_with_refreshes(name):
    model, overrides, hp, params, projected = _setup(name)
    reference = AuthorsProjectedAdam(name, params, projected, hp)
    opt = build_optimizer(name, model, **overrides)

    def check(step: int) -> None:
        for n, p in params.items():
            torch.testing.assert_close(p.detach(), reference.params[n], msg=f"step {step}: {n}")

    _run(opt, reference, params, check)
    # The authors' schedule really refreshed: before updates 1, 3, 5 of every matrix.
    assert all(steps == [1, 3, 5] for steps in reference.refreshed.values())
    # A tall and a wide matrix were both projected (the MLP's up and down projections).
    shapes = {tuple(params[n].shape) for n in projected}
    assert any(a > b for a, b in shapes) and any(a < b for a, b in shapes)


def _library_class(name: str):
    from pytorch_optimizer import Fira, GaLore
    from pytorch_optimizer.optimizer.conda import Conda

    return {"galore": GaLore, "fira": Fira, "conda": Conda}[name]


@pytest.mark.parametrize("name", NAMES)
def test_the_library_schedule_alone_fails_this_reference(name):
    """The check above can fail: pytorch_optimizer's own step (refresh before updates 1, 2, 4)
    agrees with the authors' update 1 and leaves it at update 2 by several % of the update."""
    model, overrides, hp, params, projected = _setup(name)
    start = {n: p.detach().clone() for n, p in params.items()}
    reference = AuthorsProjectedAdam(name, params, projected, hp)
    built = build_optimizer(name, model, **overrides)
    library = _library_class(name)
    if name == "conda":
        # The library's Conda projects every 2-D param: the projected group alone is compared.
        groups = [g for g in built.param_groups if g["projected"]]
        names = {n for g in groups for n in g["param_names"]}
        params = {n: p for n, p in params.items() if n in names}
        reference = AuthorsProjectedAdam(name, params, projected, hp)
    else:
        groups = built.param_groups
    opt = library([{k: v for k, v in g.items() if k != "step"} for g in groups])
    gaps = {}
    def record(step: int) -> None:
        gaps[step] = _relative_gap(params, start, reference)

    _run(opt, reference, params, record)
    assert gaps[1] < 1e-9, gaps
    assert gaps[2] > 0.02, gaps


@pytest.mark.parametrize("name", NAMES)
def test_the_registry_builds_the_authors_schedule_class(name):
    opt = build_optimizer(name, build_model("llama_tiny"))
    expected = {
        "galore": projection.authors_galore(),
        "fira": projection.authors_fira(),
        "conda": projection.policy_conda(),
    }[name]
    assert type(opt) is expected
    assert isinstance(opt, _library_class(name))  # still the library's class underneath


def test_the_projector_refreshes_on_the_authors_count():
    """One projector, gap 3: the library's 1-based steps 1..7 refresh as the authors' 0-based
    counts 0, 3, 6 do, i.e. before updates 1, 4, 7."""
    projector = projection.authors_step_projector()(
        rank=2, update_proj_gap=3, scale=1.0, projection_type="std"
    )
    refreshed = []
    for t in range(1, 8):
        before = projector.ortho_matrix
        projector.project(torch.randn(6, 4, dtype=torch.float64), t)
        if projector.ortho_matrix is not before:
            refreshed.append(t)
    assert refreshed == [1, 4, 7]


def test_the_classes_unpickle_by_name():
    import pickle

    for name in ("AuthorsGaLore", "AuthorsFira", "PolicyConda", "AuthorsStepProjector"):
        cls = getattr(projection, name)
        assert pickle.loads(pickle.dumps(cls)) is cls
    assert lowrank.build_galore  # the factories stay where the registry entries live


@pytest.mark.parametrize("name", NAMES)
def test_the_installed_library_hands_its_projector_a_1_based_count(name):
    """pytorch_optimizer 4.1.0 increments first: update 1 is count 1, hence t - 1."""
    assert projection.library_first_count(_library_class(name)) == 1


def test_the_probe_reads_a_library_that_counts_from_0():
    """A library whose step already passes the authors' 0-based count gets no correction."""

    class CountsFromZero(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {})

        def init_group(self, group):
            pass

        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    self.state[p]["projector"].project(p.grad, 0)

    assert projection.library_first_count(CountsFromZero) == 0


def test_a_projector_loaded_from_the_library_s_own_class_is_put_on_the_authors_schedule():
    from pytorch_optimizer import GaLore
    from pytorch_optimizer.optimizer.utils.galore import GaLoreProjector

    p = torch.nn.Parameter(torch.randn(6, 4, dtype=torch.float64))
    group = {"params": [p], "rank": 2, "update_proj_gap": 2, "scale": 1.0, "projection_type": "std"}
    p.grad = torch.randn_like(p)
    library = GaLore([dict(group)])
    library.step()
    saved = library.state[p]["projector"]
    assert type(saved) is GaLoreProjector
    authors = projection.authors_galore()([dict(group)])
    authors.load_state_dict(library.state_dict())
    p.grad = torch.randn_like(p)
    authors.step()  # update 2: the authors' count 1, gap 2: the loaded subspace is kept
    kept = authors.state[p]["projector"]
    assert type(kept) is projection.authors_step_projector() and kept.first_count == 1
    torch.testing.assert_close(kept.ortho_matrix, saved.ortho_matrix)

"""pytorch_optimizer's GaLore, Fira and Conda, run on their authors' projector schedule.

The authors' code (jiaweizzhao/GaLore galore_torch/adamw.py, xichen-fy/Fira
optimizer_torch/fira_adamw.py, jie040109/Conda conda_torch/conda.py) calls the projector with
the step count *before* incrementing it, so the subspace is recomputed before updates 1,
gap+1, 2·gap+1, ... pytorch_optimizer 4.1.0 increments `group["step"]` first and passes that,
so it refreshes before updates 1, gap, 2·gap, ... (gap 2: 1, 2, 4 instead of 1, 3, 5). The
update rule is otherwise the authors' (tests/optimizers/test_optimizers_projection.py holds all
three against float64 references of the authors' step).

The correction is the thinnest there is: the classes stay the library's, and before the
library's step looks for a projector, `install_projectors` puts one in `state["projector"]`:
the library's GaLoreProjector, handed the authors' 0-based count, t - 1 for the library's
1-based t. The library creates a projector only where none is, so the rest of its step runs
as written. The 1 is not assumed: `library_first_count` probes, once per class, which count
the installed library hands its projector on update 1, so a release that changes its own
schedule cannot silently move ours. The library keeps one step count per group where the
authors keep one per param: the same whenever every param has a gradient at every step, as
in every optbench run.

Also here: PolicyConda, Conda restricted to the groups marked "projected" (the library projects
every 2-D parameter of every group; the authors' script projects only its attn/mlp group).

pytorch_optimizer takes seconds to import, so each class is defined on first use (the
functions below, cached): importing this module does not import the library. The classes are
pickled by name, and found again through the module's `__getattr__`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import torch

from optbench.optimizers.common import run_closure


@functools.cache
def authors_step_projector() -> type:
    from pytorch_optimizer.optimizer.utils.galore import GaLoreProjector

    class AuthorsStepProjector(GaLoreProjector):
        """GaLoreProjector refreshing on the authors' count: the library calls project() with
        its group step, `first_count` on update 1 (1 in 4.1.0); the authors' projector sees
        their 0-based count, so it is handed num_steps - first_count."""

        def __init__(self, *args: Any, first_count: int = 1, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.first_count = first_count

        def project(self, grad: torch.Tensor, num_steps: int, *args: Any, **kwargs: Any):
            return super().project(grad, num_steps - self.first_count, *args, **kwargs)

    return _named(AuthorsStepProjector)


@functools.cache
def library_first_count(optimizer_cls: type) -> int:
    """The step count `optimizer_cls` hands its projector on update 1 (pytorch_optimizer 4.1.0:
    1, as it increments first; the authors' code: 0). Probed once, on one 2 x 2 parameter, so
    that a library release that changes its own schedule cannot silently shift ours."""
    from pytorch_optimizer.optimizer.utils.galore import GaLoreProjector

    seen: list[int] = []

    class Recording(GaLoreProjector):
        def project(self, grad: torch.Tensor, num_steps: int, *args: Any, **kwargs: Any):
            seen.append(num_steps)
            return super().project(grad, num_steps, *args, **kwargs)

    p = torch.nn.Parameter(torch.zeros(2, 2))
    p.grad = torch.ones(2, 2)
    options = {"update_proj_gap": 1, "scale": 1.0, "projection_type": "std"}
    optimizer = optimizer_cls([{"params": [p], "rank": 2, **options}])
    optimizer.init_group(optimizer.param_groups[0])  # Conda makes its moments in empty state only
    optimizer.state[p]["projector"] = Recording(rank=None, **options)
    optimizer.step()
    return seen[0]


def install_projectors(optimizer: torch.optim.Optimizer, group: dict, rank: int | None) -> None:
    """An AuthorsStepProjector for each 2-D param of `group` with a gradient: what the library's
    step would create there, on the authors' schedule. A plain GaLoreProjector already there
    (state loaded from the library's own class) becomes one, keeping its subspace."""
    from pytorch_optimizer.optimizer.utils.galore import GaLoreProjector

    projector = authors_step_projector()
    first_count = library_first_count(_library_base(type(optimizer)))
    for p in group["params"]:
        if p.grad is None or p.dim() != 2:
            continue
        state = optimizer.state[p]
        existing = state.get("projector")
        if existing is None:
            state["projector"] = projector(
                rank=rank,
                update_proj_gap=group["update_proj_gap"],
                scale=group["scale"],
                projection_type=group["projection_type"],
                first_count=first_count,
            )
        elif type(existing) is GaLoreProjector:
            converted = projector.__new__(projector)
            converted.__dict__.update(existing.__dict__, first_count=first_count)
            state["projector"] = converted


def _library_base(cls: type) -> type:
    """The pytorch_optimizer class an Authors*/Policy* subclass derives from."""
    return next(c for c in cls.__mro__ if c.__module__.startswith("pytorch_optimizer."))


def _named(cls: type) -> type:
    cls.__qualname__ = cls.__name__  # defined in a function: pickled by module + name
    return cls


def _on_authors_schedule(base: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """`base` (GaLore or Fira, which project groups with "rank") on the authors' schedule."""

    class Authors(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            library_first_count(base)  # probed now, never inside a measured step

        @torch.no_grad()
        def step(self, closure: Callable[[], Any] | None = None) -> Any:
            loss = run_closure(closure)  # first: the projectors go where gradients are
            for group in self.param_groups:
                if "rank" in group:
                    install_projectors(self, group, group["rank"])
            super().step()
            return loss

    Authors.__name__ = f"Authors{base.__name__}"
    Authors.__doc__ = f"pytorch_optimizer.{base.__name__} on the authors' refresh schedule."
    return _named(Authors)


@functools.cache
def authors_galore() -> type[torch.optim.Optimizer]:
    from pytorch_optimizer import GaLore

    return _on_authors_schedule(GaLore)


@functools.cache
def authors_fira() -> type[torch.optim.Optimizer]:
    from pytorch_optimizer import Fira

    return _on_authors_schedule(Fira)


@functools.cache
def policy_conda() -> type[torch.optim.Optimizer]:
    from pytorch_optimizer.optimizer.conda import Conda
    from pytorch_optimizer.optimizer.utils.galore import update_unprojected_foreach

    class PolicyConda(Conda):
        """Conda on the authors' refresh schedule, projecting only groups with
        group["projected"]; the others get the library's AdamW, the path Conda itself runs for
        its 1-D params (`update_unprojected_foreach`)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            library_first_count(Conda)  # probed now, never inside a measured step

        @torch.no_grad()
        def step(self, closure: Callable[[], Any] | None = None) -> Any:
            loss = run_closure(closure)
            all_groups = self.param_groups
            # Conda.step walks self.param_groups and projects every 2-D param it finds there.
            self.param_groups = [g for g in all_groups if g["projected"]]
            try:
                for group in self.param_groups:
                    # The moments first: Conda's init_group creates them only in empty state.
                    self.init_group(group)
                    install_projectors(self, group, rank=None)  # Conda: the full SVD basis
                super().step()
            finally:
                self.param_groups = all_groups
            for group in all_groups:
                if not group["projected"]:
                    self._adamw_step(group)
            return loss

        def _adamw_step(self, group: dict) -> None:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                return
            states = [self.state[p] for p in params]
            for p, state in zip(params, states):
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
            group["step"] = group.get("step", 0) + 1
            beta1, beta2 = group["betas"]
            step_size = (
                group["lr"]
                * math.sqrt(self.debias(beta2, group["step"]))
                / self.debias(beta1, group["step"])
            )
            update_unprojected_foreach(
                group,
                params,
                [p.grad for p in params],
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                step_size,
                group["lr"],
                self.maximize,
            )

    return _named(PolicyConda)


_CLASSES = {
    "AuthorsStepProjector": authors_step_projector,
    "AuthorsGaLore": authors_galore,
    "AuthorsFira": authors_fira,
    "PolicyConda": policy_conda,
}


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        return _CLASSES[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

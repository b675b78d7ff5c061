"""Param-group policies: which parameters of a model get which treatment.

This is where fairness lives. A policy is data — a mapping from a parameter *role* to a
*treatment* — so it can be printed (`optbench list optimizers --verbose`) and stored with
every result, instead of being scattered through optimizer code.

Roles, from the model's structure (not from name patterns):
- embedding: the token embedding (`model.get_input_embeddings().weight`)
- lm_head: the output projection (`model.get_output_embeddings().weight`)
- hidden_matrix: every other 2-D weight (attention q/k/v/o, MLP gate/up/down)
- vector: 1-D parameters (RMSNorm weights, biases)
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from optbench.errors import OptbenchError

ROLES = ("embedding", "lm_head", "hidden_matrix", "vector")
NamedParams = list[tuple[str, nn.Parameter]]


@dataclass(frozen=True)
class Policy:
    """role -> treatment, e.g. {"hidden_matrix": "galore", "embedding": "adamw", ...}."""

    treatments: tuple[tuple[str, str], ...]  # (role, treatment) pairs, every role exactly once

    @staticmethod
    def of(**by_role: str) -> "Policy":
        missing = [r for r in ROLES if r not in by_role]
        unknown = [r for r in by_role if r not in ROLES]
        if missing or unknown:
            raise ValueError(f"a policy names every role once: missing {missing}, unknown {unknown}")
        return Policy(tuple((role, by_role[role]) for role in ROLES))

    def treatment(self, role: str) -> str:
        return dict(self.treatments)[role]

    def describe(self) -> str:
        """'hidden_matrix: galore; embedding, lm_head, vector: adamw'."""
        by_treatment: dict[str, list[str]] = {}
        for role, treatment in self.treatments:
            by_treatment.setdefault(treatment, []).append(role)
        return "; ".join(f"{', '.join(roles)}: {t}" for t, roles in by_treatment.items())

    def groups(self, model: nn.Module) -> dict[str, NamedParams]:
        """treatment -> the (name, param) pairs it gets, in model order; empty ones omitted."""
        out: dict[str, NamedParams] = {}
        for role, params in param_roles(model).items():
            out.setdefault(self.treatment(role), []).extend(params)
        return out


def param_roles(model: nn.Module) -> dict[str, NamedParams]:
    """Trainable (name, param) pairs by role, in model order; empty roles omitted."""
    embedding = _weight(model, "get_input_embeddings")
    head = _weight(model, "get_output_embeddings")
    roles: dict[str, NamedParams] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            roles.setdefault(_role(name, p, embedding, head), []).append((name, p))
    return roles


def _role(name: str, p: nn.Parameter, embedding, head) -> str:
    if p is embedding:
        return "embedding"
    if p is head:
        return "lm_head"
    if p.ndim == 2:
        return "hidden_matrix"
    if p.ndim < 2:
        return "vector"
    raise OptbenchError(f"no param-group role for {p.ndim}-D parameter '{name}'")


def _weight(model: nn.Module, getter: str) -> nn.Parameter | None:
    module = getattr(model, getter, lambda: None)()
    return getattr(module, "weight", None)

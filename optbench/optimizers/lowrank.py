"""Gradient-projection optimizers: GaLore, Fira, Conda from pytorch_optimizer, on their authors'
projector refresh schedule (`optbench.optimizers.projection`); APOLLO(-Mini) in-house
(`optbench.optimizers.apollo`, the official update).

Policy, as the papers' training scripts run it: the projection applies to the attention and MLP
weights only (role hidden_matrix); embedding, lm_head and norm weights get plain AdamW in the
same optimizer, with the same lr. In pytorch_optimizer's GaLore and Fira, and in the in-house
APOLLO, a group is projected iff it has a "rank" key, so the AdamW params simply go in a group
without one.
Conda projects every 2-D parameter of every group, so `PolicyConda` (in `projection`) restricts
it to the groups marked "projected" (the official Conda code projects only its attn/mlp group).

Rank: r = min(rank, rows, cols) per matrix, so small models (llama_tiny is 64 wide) work; the
official APOLLO code would otherwise draw an [r, n] random "projection" to a dimension larger
than the matrix (it does not cap; at the paper sizes and ranks the cap never binds).
Matrices with different capped ranks go in separate groups.

State after the first step (projectors are created then). For a projected [m, n] weight, with
`std` projection (the smaller side is projected):
- projector: [r, n] if m >= n else [m, r], i.e. r × min(m, n) elements, in the param dtype
  (GaLore/Fira: SVD in float32, cast back, in a GaLoreProjector object under state["projector"];
  APOLLO: Gaussian / sqrt(r) drawn in float32 from a per-param seed, cast back, the tensor itself
  under state["projector"]);
- exp_avg, exp_avg_sq of the projected gradient: [m, r] or [r, n], i.e. r × max(m, n) each;
- Fira: "scaling_grad", APOLLO: "scaled_grad", the 0-d norm kept by the norm-growth limiter
  (param dtype).
Conda keeps full-size moments and a full SVD basis (see `conda_state_bytes`). Steps are Python
ints in the param groups (APOLLO: per param, with the projector seed), 0 B.

pytorch_optimizer takes seconds to import, so the library's classes are subclassed on first use
(`projection.authors_galore()` ...): importing this module does not import the library.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from optbench.optimizers.apollo import Apollo
from optbench.optimizers.policy import NamedParams, Policy
from optbench.optimizers.projection import authors_fira, authors_galore, policy_conda
from optbench.optimizers.registry import OptimizerSpec, StateBytes, register
from optbench.optimizers.state_formulas import elements_bytes, params_bytes, tensor_bytes

DEFAULT_RANK = 128  # the papers' 60M rank; other paper sizes get theirs via defaults_by_model


def _policy(treatment: str) -> Policy:
    return Policy.of(embedding="adamw", lm_head="adamw", hidden_matrix=treatment, vector="adamw")


def _group(pairs: NamedParams, **options: Any) -> dict:
    return {"param_names": [n for n, _ in pairs], "params": [p for _, p in pairs], **options}


def _capped_rank(rank: int, p: torch.Tensor) -> int:
    return min(rank, *p.shape)


def _split(model: nn.Module, treatment: str) -> tuple[NamedParams, NamedParams]:
    """(AdamW params, projected hidden matrices), in model order."""
    groups = _policy(treatment).groups(model)
    return groups.get("adamw", []), groups.get(treatment, [])


def lowrank_param_groups(model: nn.Module, treatment: str, rank: int, **projection: Any) -> list:
    """One AdamW group (no "rank" key), then one projected group per capped rank."""
    adamw, hidden = _split(model, treatment)
    by_rank: dict[int, NamedParams] = {}
    for name, p in hidden:
        by_rank.setdefault(_capped_rank(rank, p), []).append((name, p))
    plain = [_group(adamw)] if adamw else []
    return plain + [_group(pairs, rank=r, **projection) for r, pairs in by_rank.items()]


# --- state bytes ------------------------------------------------------------------------


def _adamw_bytes(params: NamedParams) -> int:
    """The projecting optimizers' own AdamW: exp_avg, exp_avg_sq; steps are Python ints."""
    return params_bytes((p for _, p in params), lambda p: 2 * tensor_bytes(p))


def _projected_bytes(p: torch.Tensor, rank: int, limiter: bool) -> int:
    r, small, large = _capped_rank(rank, p), min(p.shape), max(p.shape)
    return elements_bytes(r * small + 2 * r * large + int(limiter), p)


def _lowrank_state_bytes(treatment: str, limiter: bool) -> StateBytes:
    def state_bytes(model: nn.Module, hp: dict) -> int:
        adamw, hidden = _split(model, treatment)
        return _adamw_bytes(adamw) + sum(_projected_bytes(p, hp["rank"], limiter) for _, p in hidden)

    return state_bytes


def conda_state_bytes(model: nn.Module, hp: dict) -> int:
    # Full-rank SVD basis (rank None): Vh [n, n] if m >= n else U [m, m]; exp_avg and
    # exp_avg_sq stay [m, n] under `std` (the rotation keeps the shape).
    adamw, hidden = _split(model, "conda projection")
    projected = sum(elements_bytes(min(p.shape) ** 2 + 2 * p.numel(), p) for _, p in hidden)
    return _adamw_bytes(adamw) + projected


# --- factories --------------------------------------------------------------------------


def _adam_options(hp: dict) -> dict:
    return {k: hp[k] for k in ("lr", "betas", "eps", "weight_decay")}


def _projection(hp: dict) -> dict:
    return {"update_proj_gap": hp["update_proj_gap"], "scale": hp["scale"]}


def build_galore(model: nn.Module, hp: dict) -> torch.optim.Optimizer:
    groups = lowrank_param_groups(
        model, "galore projection", hp["rank"], projection_type=hp["proj_type"], **_projection(hp)
    )
    return authors_galore()(groups, **_adam_options(hp))


def build_fira(model: nn.Module, hp: dict) -> torch.optim.Optimizer:
    groups = lowrank_param_groups(
        model, "fira projection", hp["rank"], projection_type=hp["proj_type"], **_projection(hp)
    )
    return authors_fira()(groups, **_adam_options(hp))


def build_apollo(model: nn.Module, hp: dict) -> Apollo:
    # The official defaults: random projector (proj "random"), on the smaller side (proj_type
    # "std"). The AdamW group comes first, as in the official training script, so the
    # per-param projector seeds (1-based index over all groups) are the official ones.
    groups = lowrank_param_groups(
        model, "apollo projection", hp["rank"], scale_type=hp["scale_type"], **_projection(hp)
    )
    return Apollo(groups, **_adam_options(hp))


def conda_param_groups(model: nn.Module) -> list[dict]:
    adamw, hidden = _split(model, "conda projection")
    groups = [_group(adamw, projected=False), _group(hidden, projected=True)]
    return [g for g in groups if g["params"]]


def build_conda(model: nn.Module, hp: dict) -> torch.optim.Optimizer:
    return policy_conda()(
        conda_param_groups(model),
        projection_type=hp["proj_type"],
        **_projection(hp),
        **_adam_options(hp),
    )


# --- registry entries ---------------------------------------------------------------------

_ADAMW_TERM = (
    "AdamW params (embedding, lm_head, norms): 2 × numel × bytes/elem (exp_avg, exp_avg_sq)"
)
_STEP_TERM = "steps are Python ints in the param groups (0 B); exact at the default hparams"
_SCHEDULE_NOTE = (
    "; refreshes its projector on the authors' schedule, before updates 1, gap+1, 2·gap+1, ... "
    "(optbench.optimizers.projection: the library's own refreshes before 1, gap, 2·gap)"
)
# Defaults of the GaLore paper's LLaMA-60M run, as its README's torchrun_main.py command has
# them; Fira's scripts repeat them (alpha = scale 0.25).
_GALORE_DEFAULTS = "jiaweizzhao/GaLore: README.md (torchrun_main.py command, LLaMA-60M)"
_GALORE_OPTIMIZER = "jiaweizzhao/GaLore: galore_torch/adamw.py (AdamW.__init__)"
_FIRA_DEFAULTS = "xichen-fy/Fira: pre_training_c4/scripts/llama_60m.sh"
_FIRA_OPTIMIZER = "xichen-fy/Fira: optimizer_torch/fira_adamw.py (AdamW.__init__)"
_CONDA_SCRIPT = "jie040109/Conda: examples/llama/scripts/llama_60m_conda.sh"
_CONDA_OPTIMIZER = "jie040109/Conda: conda_torch/conda.py (Conda.__init__)"
_RANK_NOTE = "; per model size: the paper's Table 2 rank (defaults_by_model)"
_STEP_PER_GROUP = (
    "The library counts steps per group, the authors per param (bias correction, refresh): "
    "the same whenever every param has a gradient at every step, as in every optbench run."
)


def _lowrank_formula(rank: int, limiter: bool) -> str:
    limiter_term = " + 1 (0-d `scaling_grad` norm of the norm-growth limiter)" if limiter else ""
    return (
        f"{_ADAMW_TERM}; each hidden [m, n] matrix, r = min(rank, m, n), rank hparam "
        f"(default {rank}; the paper's rank per model size): "
        f"(r × min(m, n) projector + 2 × r × max(m, n) low-rank exp_avg, exp_avg_sq"
        f"{limiter_term}) "
        f"× bytes/elem, all in the param dtype; {_STEP_TERM}"
    )


def _apollo_formula(rank: int) -> str:
    return (
        f"{_ADAMW_TERM}; each hidden [m, n] matrix, r = min(rank, m, n), rank hparam "
        f"(default {rank}; the paper's rank per model size): (r × min(m, n) random projector + "
        f"2 × r × max(m, n) low-rank exp_avg, exp_avg_sq + 1 (0-d `scaled_grad` norm of the "
        f"norm-growth limiter)) × bytes/elem, all in the param dtype; per-param `step` and "
        f"projector `seed` are Python ints (0 B); exact at the default hparams"
    )


def _galore_hparams(**overrides: Any) -> dict:
    hp = {
        "lr": 0.01,
        "betas": (0.9, 0.999),
        "eps": 1e-6,
        "weight_decay": 0.0,
        "rank": DEFAULT_RANK,
        "update_proj_gap": 200,
        "scale": 0.25,
        "proj_type": "std",
    }
    return {**hp, **overrides}


def _apollo_hparams(**overrides: Any) -> dict:
    hp = _galore_hparams(scale=1.0, scale_type="channel")
    del hp["proj_type"]  # the official proj "random", proj_type "std": the smaller side
    return {**hp, **overrides}


def _conda_hparams() -> dict:
    hp = _galore_hparams(betas=(0.9, 0.99), eps=1e-8, update_proj_gap=2000)
    del hp["rank"]  # Conda rotates into the full SVD basis of its momentum: no rank
    return hp


_APOLLO_SOURCE = (
    "In-house optbench.optimizers.apollo.Apollo, written from the official "
    "apollo_torch/apollo.py (AdamW.step) and apollo_torch/random_projector.py "
    "(GradientProjector, stable_randn, next_seed) of github.com/zhuhanqing/APOLLO, read through "
    "the fork yao-matrix/APOLLO and copies, at the official defaults (proj random, proj_type std, "
    "scale_front False, norm-growth limiter on, correct_bias True): the low-rank AdamW moments of "
    "R = G Pᵀ (or Pᵀ G) give the channel-wise (or tensor-wise) factor s = ‖M/(√V+eps)‖ / "
    "(‖R‖ + 1e-8); the update is the FULL gradient G ⊙ s, through Fira's norm-growth limiter "
    "(1.01), times sqrt(scale) (APOLLO-Mini: sqrt(128)), at lr·sqrt(1-β2^t)/(1-β1^t); weight "
    "decay p -= lr·wd·p after the update; per-param step counts; the projector is Gaussian/sqrt(r) "
    "drawn in float32 from a per-param seed (its 1-based index over all groups, then next_seed "
    "at each refresh), refreshed before updates 1, gap+1, 2·gap+1, .... The AdamW params get the "
    "official code's un-projected path. Replaces pytorch_optimizer.APOLLO 4.1.0, which projects "
    "the scaled gradient back (a rank-r update), applies `scale` twice, draws projectors from the "
    "global RNG and decays with the bias-corrected step size. Deviations left: the rank is capped "
    "at min(m, n) per matrix (the official code would draw an r > min(m, n) projector; never binds "
    "at the paper sizes and ranks), and hidden matrices with different capped ranks go in "
    "separate groups, which can reorder the per-param seeds (never at the paper sizes)."
)
# `source` is hashed into every cell's fingerprint: kept word for word while the update is
# unchanged, so stored APOLLO results stay comparable.
_APOLLO_REFERENCE = (
    "zhuhanqing/APOLLO: apollo_torch/apollo.py (AdamW.step), apollo_torch/random_projector.py "
    "(GradientProjector, stable_randn, next_seed), read through the fork yao-matrix/APOLLO"
)
_APOLLO_DEVIATIONS = (
    "pytorch_optimizer.APOLLO 4.1.0 is not used: it projects the scaled gradient back (a rank-r "
    "update), applies `scale` twice, draws projectors from the global RNG and decays with the "
    "bias-corrected step size.",
    "The rank is capped at min(m, n) per matrix (the authors' code would draw an r > min(m, n) "
    "projector); never binds at the paper sizes and ranks.",
    "Hidden matrices with different capped ranks go in separate groups, which can reorder the "
    "per-param seeds; never at the paper sizes.",
)
_APOLLO_SCRIPT = "yao-matrix/APOLLO: scripts/pretrain_c4/llama_60m_apollo.sh"
_APOLLO_MINI_SCRIPT = "yao-matrix/APOLLO: scripts/pretrain_c4/llama_60m_apollo_mini.sh"
_APOLLO_OPTIMIZER = "yao-matrix/APOLLO: apollo_torch/apollo.py (AdamW.__init__)"


def _apollo_sources(script: str) -> dict[str, str]:
    return {
        "lr": script,
        "betas": _APOLLO_OPTIMIZER,
        "eps": _APOLLO_OPTIMIZER,
        "weight_decay": script,
        "rank": script + _RANK_NOTE,
        "update_proj_gap": script,
        "scale": script + " (apollo_scale)",
        "scale_type": script,
    }


# Per-size ranks the papers trained with (GaLore Table 2 and its 7B run; APOLLO Table 2).
GALORE_RANKS = {"llama_60m": 128, "llama_130m": 256, "llama_350m": 256, "llama_1b": 512,
                "llama_7b": 1024}
APOLLO_RANKS = {"llama_60m": 128, "llama_130m": 192, "llama_350m": 256, "llama_1b": 256,
                "llama_7b": 256}


def _by_model(**per_hparam: dict[str, object]) -> dict[str, dict]:
    """{hparam: {model: value}} -> {model: {hparam: value}}."""
    out: dict[str, dict] = {}
    for hparam, by_model in per_hparam.items():
        for model, value in by_model.items():
            out.setdefault(model, {})[hparam] = value
    return out


register(
    OptimizerSpec(
        name="galore",
        factory=build_galore,
        source="pytorch_optimizer.GaLore 4.1.0 (groups with 'rank' are projected)" + _SCHEDULE_NOTE,
        paper=(
            "Zhao, Zhang, Chen, Wang, Anandkumar, Tian, GaLore: Memory-Efficient LLM Training by "
            "Gradient Low-Rank Projection, ICML 2024, arXiv:2403.03507"
        ),
        policy=_policy("galore projection").describe(),
        default_hparams=_galore_hparams(),
        state_formula=_lowrank_formula(DEFAULT_RANK, limiter=False),
        expected_state_bytes=_lowrank_state_bytes("galore projection", False),
        version="2",  # 2: the authors' refresh schedule
        defaults_by_model=_by_model(rank=GALORE_RANKS),
        reference=(
            "jiaweizzhao/GaLore: galore_torch/adamw.py (AdamW.step), "
            "galore_torch/galore_projector.py, torchrun_main.py (param groups)"
        ),
        deviations=(
            "The projector keeps the r rows/columns of the SVD factor it uses (r × min(m, n) "
            "elements); in float32 the authors' keeps a view of the whole factor (min(m, n)²). "
            "The update is the same; optbench reports the memory the library's class needs.",
            "The rank is capped at min(m, n) per matrix, so the tiny CPU sizes run; never binds "
            "at the paper sizes and ranks.",
            _STEP_PER_GROUP,
        ),
        default_sources={
            "lr": _GALORE_DEFAULTS,
            "betas": _GALORE_OPTIMIZER,
            "eps": _GALORE_OPTIMIZER,
            "weight_decay": _GALORE_DEFAULTS + " (--weight_decay 0)",
            "rank": _GALORE_DEFAULTS + _RANK_NOTE,
            "update_proj_gap": _GALORE_DEFAULTS,
            "scale": _GALORE_DEFAULTS + " (galore_scale 0.25)",
            "proj_type": "jiaweizzhao/GaLore: torchrun_main.py (proj_type 'std')",
        },
    )
)

register(
    OptimizerSpec(
        name="fira",
        factory=build_fira,
        source="pytorch_optimizer.Fira 4.1.0 (groups with 'rank' are projected)" + _SCHEDULE_NOTE,
        paper=(
            "Chen et al., Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank "
            "Constraint?, 2024, arXiv:2410.01623"
        ),
        policy=_policy("fira projection").describe(),
        default_hparams=_galore_hparams(),
        state_formula=_lowrank_formula(DEFAULT_RANK, limiter=True),
        expected_state_bytes=_lowrank_state_bytes("fira projection", True),
        version="2",  # 2: the authors' refresh schedule
        defaults_by_model=_by_model(rank=GALORE_RANKS),
        reference=(
            "xichen-fy/Fira: optimizer_torch/fira_adamw.py (AdamW.step: norm-based scaling of "
            "the residual, norm-growth limiter 1.01), optimizer_torch/gradient_projection.py"
        ),
        deviations=(
            "The rank is capped at min(m, n) per matrix, so the tiny CPU sizes run; never binds "
            "at the paper sizes and ranks.",
            _STEP_PER_GROUP,
        ),
        default_sources={
            "lr": _FIRA_DEFAULTS,
            "betas": _FIRA_OPTIMIZER,
            "eps": _FIRA_OPTIMIZER,
            "weight_decay": _FIRA_DEFAULTS,
            "rank": _FIRA_DEFAULTS + _RANK_NOTE,
            "update_proj_gap": _FIRA_DEFAULTS,
            "scale": _FIRA_DEFAULTS + " (alpha 0.25)",
            "proj_type": "xichen-fy/Fira: optimizer_torch/gradient_projection.py (proj_type 'std')",
        },
    )
)

_APOLLO_PAPER = (
    "Zhu et al., APOLLO: SGD-like Memory, AdamW-level Performance, MLSys 2025, arXiv:2412.05270"
)

register(
    OptimizerSpec(
        name="apollo",
        factory=build_apollo,
        source=_APOLLO_SOURCE,
        paper=_APOLLO_PAPER,
        policy=_policy("apollo projection").describe() + " (channel-wise scaling)",
        default_hparams=_apollo_hparams(),
        state_formula=_apollo_formula(DEFAULT_RANK),
        expected_state_bytes=_lowrank_state_bytes("apollo projection", True),
        version="2",
        defaults_by_model=_by_model(rank=APOLLO_RANKS),
        reference=_APOLLO_REFERENCE,
        deviations=_APOLLO_DEVIATIONS,
        default_sources=_apollo_sources(_APOLLO_SCRIPT),
    )
)

register(
    OptimizerSpec(
        name="apollo_mini",
        factory=build_apollo,
        source=_APOLLO_SOURCE,
        paper=_APOLLO_PAPER + " (APOLLO-Mini: rank 1, tensor-wise scaling)",
        policy=_policy("apollo projection").describe() + " (rank 1, tensor-wise scaling)",
        default_hparams=_apollo_hparams(rank=1, scale=128.0, scale_type="tensor"),
        state_formula=_apollo_formula(1),
        expected_state_bytes=_lowrank_state_bytes("apollo projection", True),
        version="2",
        defaults_by_model={"llama_130m": {"scale": 192.0}},  # APOLLO-Mini's 130M setting
        reference=_APOLLO_REFERENCE,
        deviations=_APOLLO_DEVIATIONS + (
            "The authors' APOLLO-Mini scripts pass --scale_front (sqrt(scale) before the "
            "norm-growth limiter); optbench scales after it. The limiter compares norms of "
            "successive updates, so the constant factor cancels except in its 1e-8 floor.",
        ),
        default_sources={
            **_apollo_sources(_APOLLO_MINI_SCRIPT),
            "rank": _APOLLO_MINI_SCRIPT + " (rank 1)",
            "scale": _APOLLO_MINI_SCRIPT + " (apollo_scale 128; 192 at 130M: "
                     "llama_130m_apollo_mini.sh)",
        },
    )
)

register(
    OptimizerSpec(
        name="conda",
        factory=build_conda,
        source=(
            "pytorch_optimizer Conda 4.1.0 via PolicyConda (projects only the 'projected' group)"
            + _SCHEDULE_NOTE
        ),
        paper=(
            "Conda: Column-Normalized Adam for Training Large Language Models Faster, 2025, "
            "arXiv:2509.24218"
        ),
        policy=_policy("conda projection").describe(),
        default_hparams=_conda_hparams(),
        state_formula=(
            f"{_ADAMW_TERM}; each hidden [m, n] matrix: (min(m, n)² full SVD basis of exp_avg + "
            f"2 × m × n exp_avg, exp_avg_sq) × bytes/elem, all in the param dtype; {_STEP_TERM}"
        ),
        expected_state_bytes=conda_state_bytes,
        version="2",  # 2: the authors' refresh schedule
        reference=(
            "jie040109/Conda: conda_torch/conda.py (Conda.step), conda_torch/projector.py "
            "(CondaProjector), examples/llama/torchrun_main.py (param groups)"
        ),
        # pytorch_optimizer's Conda projects every 2-D param of every group; PolicyConda keeps
        # the authors' split (attn/mlp projected, the rest on the un-projected AdamW path), so
        # that split needs no deviation: the float64 reference test covers both groups.
        deviations=(_STEP_PER_GROUP,),
        default_sources={
            "lr": _CONDA_SCRIPT,
            "betas": _CONDA_SCRIPT,
            "eps": _CONDA_OPTIMIZER,
            "weight_decay": _CONDA_SCRIPT,
            "update_proj_gap": _CONDA_SCRIPT,
            "scale": _CONDA_SCRIPT + " (conda_scale 0.25)",
            "proj_type": "jie040109/Conda: examples/llama/torchrun_main.py (--proj_type 'std')",
        },
    )
)

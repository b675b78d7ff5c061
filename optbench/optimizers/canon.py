"""The 2025 benchmark canon: what the EPFL suite (Semenov, Pagliardini & Jaggi, Benchmarking
Optimizers for Large Language Model Pretraining, arXiv:2509.01440) and modded-nanogpt's optimizer
track compare, beside the memory-efficient line the rest of the catalogue holds.

Library classes first (pytorch_optimizer), each held to what its authors' code does: the
`reference`, `deviations` and `default_sources` of every entry say where they differ. Every
state formula was read off the library source and is checked exactly, in float32 and bfloat16,
by tests/optimizers/test_optimizers_canon.py. Notation: n = elements of a parameter tensor,
B = bytes per element of the parameter dtype.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from optbench.optimizers.library import every_param, po_default, po_factory, po_source, runs_as_is
from optbench.optimizers.matrix import MUON_ADAMW_HPARAMS, NON_MATRIX, split_by_treatment
from optbench.optimizers.policy import Policy, param_roles
from optbench.optimizers.registry import OptimizerSpec, register
from optbench.optimizers.state_formulas import (elements_bytes, params_bytes, per_param,
                                                role_bytes, tensor_bytes, trainable)

_DEVICES = ("cpu", "cuda")
_EPFL = (
    "epfml/llm-optimizer-benchmark (Semenov, Pagliardini & Jaggi, arXiv:2509.01440), its 124M "
    "scripts"
)


def _spec(name: str, **fields) -> None:
    register(OptimizerSpec(name=name, version="1", devices=_DEVICES, **fields))


def _n_times(k: int):
    """k state tensors shaped like each parameter, in its dtype."""
    return per_param(lambda p: k * tensor_bytes(p))


# --- SOAP ------------------------------------------------------------------------------

_SOAP = "nikhilvyas/SOAP: soap.py"
_SOAP_MAX_DIM = 10000


def _soap_bytes(model: nn.Module, hp: dict) -> int:
    """exp_avg, exp_avg_sq; per side of a matrix no longer than max_precondition_dim its
    Kronecker factor GG and eigenbasis Q, d × d each (a longer side is left unpreconditioned)."""
    total = 0
    for p in trainable(model):
        total += 2 * tensor_bytes(p)
        if p.ndim >= 2:
            sides = [d for d in p.shape if d <= hp["max_precondition_dim"]]
            total += sum(2 * d * d for d in sides) * p.element_size()
    return total


_spec(
    "soap",
    factory=po_factory("SOAP"),
    source=po_source("SOAP"),
    paper=(
        "Vyas et al., SOAP: Improving and Stabilizing Shampoo using Adam, ICLR 2025, "
        "arXiv:2409.11321"
    ),
    policy=every_param(
        "SOAP (Adam in Shampoo's eigenbasis; a side over max_precondition_dim and 1-D params "
        "unpreconditioned: plain Adam there)"
    ),
    default_hparams={
        "lr": 3e-3,
        "betas": (0.95, 0.95),
        "weight_decay": 0.01,
        "precondition_frequency": 10,
        "max_precondition_dim": _SOAP_MAX_DIM,
        "eps": 1e-8,
        "correct_bias": True,
        "normalize_gradient": False,
    },
    state_formula=(
        "2 × n × B (exp_avg, exp_avg_sq) per param; per ≥2-D param, for each side d ≤ "
        "max_precondition_dim: 2 × d² × B (GG and Q, param dtype); a longer side (the 32000 "
        "vocab) and 1-D params keep no factor"
    ),
    expected_state_bytes=_soap_bytes,
    reference=(
        f"{_SOAP} (SOAP.step, update_preconditioner, get_orthogonal_matrix_QR); "
        + runs_as_is(po_source("SOAP"))
    ),
    deviations=(
        "The library keeps exp_avg in the original coordinates and projects it every step where "
        "the authors keep it in the eigenbasis: the same update, within 4e-7 relative over 25 "
        "float32 steps with two QR refreshes.",
        "In bf16 runs GG and Q are kept in bf16 (the first eigendecomposition in float64, the QR "
        "refreshes in float32); the authors' code keeps GG in float32 and fails on bf16 params.",
        "The first step only builds the preconditioner (no update, as the authors'), counted per "
        "param group, not per parameter.",
    ),
    default_sources={
        "lr": _SOAP + " (SOAP.__init__) and README usage; = " + po_default("SOAP"),
        "betas": _SOAP + " (SOAP.__init__) and README usage; = " + po_default("SOAP"),
        "weight_decay": _SOAP + " (SOAP.__init__) and README usage; = " + po_default("SOAP"),
        "precondition_frequency": _SOAP + " (SOAP.__init__) and README usage",
        "max_precondition_dim": _SOAP + " (SOAP.__init__: max_precond_dim 10000)",
        "eps": _SOAP + " (SOAP.__init__)",
        "correct_bias": _SOAP + " (SOAP.__init__)",
        "normalize_gradient": _SOAP + " (SOAP.__init__: normalize_grads False)",
    },
)

# --- MARS ------------------------------------------------------------------------------

_MARS = "AGI-Arena/MARS: MARS/optimizers/mars.py"

_spec(
    "mars",
    factory=po_factory("MARS", fixed={"mars_type": "adamw"}),
    source=po_source("MARS") + " (mars_type='adamw')",
    paper=(
        "Yuan et al., MARS: Unleashing the Power of Variance Reduction for Training Large "
        "Models, ICML 2025, arXiv:2411.10438"
    ),
    policy=every_param(
        "MARS-AdamW (variance-reduced gradient on ≥2-D params, embeddings included; AdamW with "
        "lr_1d, betas_1d and weight_decay_1d on 1-D params, as the authors' optimize_1d=False)"
    ),
    # mars_type 'lion' / 'shampoo' keep other state: fixed at the authors' default.
    default_hparams={
        "lr": 3e-3,
        "betas": (0.95, 0.99),
        "gamma": 0.025,
        "lr_1d": 3e-3,
        "betas_1d": (0.9, 0.95),
        "weight_decay": 0.0,
        "weight_decay_1d": 0.1,
        "eps": 1e-8,
    },
    state_formula="3 × n × B per param (exp_avg, exp_avg_sq, last_grad; param dtype)",
    expected_state_bytes=_n_times(3),
    reference=f"{_MARS} (MARS.step, update_fn); " + runs_as_is(po_source("MARS")),
    deviations=(
        "eps is added before the bias correction, (√v + eps)/√(1-β2^t), where the authors add it "
        "after, √v/√(1-β2^t) + eps: about 1e-6 relative at eps 1e-8.",
        "The library copies the last gradient into its own buffer (last_grad, counted in the "
        "state); the authors keep a reference to p.grad, which the training loop frees or "
        "zeroes, so their state is one buffer smaller on paper.",
    ),
    default_sources={
        "lr": _MARS + " (MARS.__init__); its GPT-2 small config (config/train_gpt2_small_mars.py) "
        "uses 6e-3",
        "betas": _MARS + " (MARS.__init__) and every GPT-2 config",
        "gamma": _MARS + " (MARS.__init__) and every GPT-2 config",
        "lr_1d": _MARS + " (MARS.__init__)",
        "betas_1d": _MARS + " (MARS.__init__)",
        "weight_decay": _MARS + " (MARS.__init__); the GPT-2 configs use 1e-2",
        "weight_decay_1d": _MARS + " (MARS.__init__)",
        "eps": _MARS + " (MARS.__init__)",
    },
)

# --- AdEMAMix --------------------------------------------------------------------------

_ADEMAMIX = "apple/ml-ademamix: pytorch/ademamix.py"


def _build_ademamix(model: nn.Module, hp: dict) -> torch.optim.Optimizer:
    """The authors' decoupled weight decay; t_alpha_beta3 0 means no warm-up (the library's
    None, which the registry's typed hparams cannot override with a step count)."""
    import pytorch_optimizer

    options = {**hp, "t_alpha_beta3": hp["t_alpha_beta3"] or None}
    return pytorch_optimizer.AdEMAMix(trainable(model), weight_decouple=True, **options)


_spec(
    "ademamix",
    factory=_build_ademamix,
    source=po_source("AdEMAMix") + " (weight_decouple=True)",
    paper=(
        "Pagliardini, Ablin & Grangier, The AdEMAMix Optimizer: Better, Faster, Older, "
        "ICLR 2025, arXiv:2409.03137"
    ),
    policy=every_param("AdEMAMix (a fast and a slow EMA of the gradient, mixed by alpha)"),
    default_hparams={
        "lr": 1e-3,
        "betas": (0.9, 0.999, 0.9999),
        "alpha": 2.0,
        "t_alpha_beta3": 0,
        "weight_decay": 0.0,
        "eps": 1e-8,
    },
    state_formula="3 × n × B per param (exp_avg, exp_avg_sq, exp_avg_slow; param dtype)",
    expected_state_bytes=_n_times(3),
    reference=f"{_ADEMAMIX} (AdEMAMix.step); " + runs_as_is(po_source("AdEMAMix")),
    deviations=(
        "One warm-up length (t_alpha_beta3) drives both the alpha and the beta3 schedules, where "
        "the authors take two (alpha_warmup, beta3_warmup); their README sets both to the run's "
        "length, which one value does too.",
    ),
    default_sources={
        "lr": _ADEMAMIX + " (AdEMAMix.__init__); = " + po_default("AdEMAMix"),
        "betas": _ADEMAMIX + " (AdEMAMix.__init__); = " + po_default("AdEMAMix"),
        "alpha": (
            _ADEMAMIX + " (AdEMAMix.__init__: 2.0; the library's default is 5.0); the README's "
            "LLM runs use 8 with t_alpha_beta3 = the run's steps"
        ),
        "t_alpha_beta3": (
            _ADEMAMIX + " (AdEMAMix.__init__: alpha_warmup and beta3_warmup None, i.e. off)"
        ),
        "weight_decay": _ADEMAMIX + " (AdEMAMix.__init__, decoupled); the README's LLM runs "
        "use 0.1",
        "eps": _ADEMAMIX + " (AdEMAMix.__init__)",
    },
)

# --- ADOPT -----------------------------------------------------------------------------

_ADOPT = "iShohei220/adopt: src/adopt/adopt.py"


def adopt_clip(step: int) -> float:
    """The authors' clipping bound (t-1)^0.25 at the library's 1-based step t: the library's
    own default lambda takes t^0.25, one step ahead. A module-level function, so a state_dict
    holding it pickles."""
    return (step - 1) ** 0.25


def _build_adopt(model: nn.Module, hp: dict) -> torch.optim.Optimizer:
    optimizer = po_factory("ADOPT", fixed={"clip_lambda": adopt_clip})(model, hp)
    # The library keeps clip_lambda as an attribute, not in `defaults`: put it there too, so a
    # rebuild from defaults (ZeRO-1's per-rank copy of the class) keeps the authors' schedule.
    optimizer.defaults["clip_lambda"] = adopt_clip
    return optimizer


_spec(
    "adopt",
    factory=_build_adopt,
    source=po_source("ADOPT") + " (clip_lambda (t-1)^0.25, the authors')",
    paper=(
        "Taniguchi et al., ADOPT: Modified Adam Can Converge with Any β2 with the Optimal Rate, "
        "NeurIPS 2024, arXiv:2411.02853"
    ),
    policy=every_param("ADOPT (normalize by the previous v, then momentum; clipped early on)"),
    default_hparams={
        "lr": 1e-3,
        "betas": (0.9, 0.9999),
        "eps": 1e-6,
        "weight_decay": 0.0,
        "weight_decouple": False,
    },
    state_formula="2 × n × B per param (exp_avg, exp_avg_sq; param dtype)",
    expected_state_bytes=_n_times(2),
    reference=(
        f"{_ADOPT} (ADOPT, _single_tensor_adopt); " + runs_as_is(po_source("ADOPT"))
        + " with the authors' clipping schedule"
    ),
    deviations=(
        "With decoupled weight decay the library decays from step 1, where the authors' first "
        "step only initializes v; no effect at the default weight_decay 0.",
    ),
    default_sources={
        "lr": _ADOPT + " (ADOPT.__init__); its GPT-2 config (gpt/config/train_gpt2.py) uses 6e-4",
        "betas": _ADOPT + " (ADOPT.__init__); = " + po_default("ADOPT"),
        "eps": _ADOPT + " (ADOPT.__init__); = " + po_default("ADOPT"),
        "weight_decay": _ADOPT + " (ADOPT.__init__); its GPT-2 config uses 0.1, decoupled",
        "weight_decouple": (
            _ADOPT + " (ADOPT.__init__: decouple False); the README asks for True when ADOPT "
            "replaces AdamW"
        ),
    },
)

# --- Prodigy ---------------------------------------------------------------------------

_PRODIGY = "konstmish/prodigy: prodigyopt/prodigy.py"

_spec(
    "prodigy",
    factory=po_factory("Prodigy"),
    source=po_source("Prodigy"),
    paper=(
        "Mishchenko & Defazio, Prodigy: An Expeditiously Adaptive Parameter-Free Learner, "
        "ICML 2024, arXiv:2306.06101"
    ),
    policy=every_param("Prodigy (Adam whose step size d is estimated online; lr scales d)"),
    # beta3 (None: √β2) and growth_rate (inf) cannot be given as typed hparams: left as the
    # authors' defaults.
    default_hparams={
        "lr": 1.0,
        "betas": (0.9, 0.999),
        "d0": 1e-6,
        "d_coef": 1.0,
        "weight_decay": 0.0,
        "weight_decouple": True,
        "bias_correction": False,
        "safeguard_warmup": False,
        "eps": 1e-8,
    },
    state_formula=(
        "4 × n × B per param (s, p0: a copy of the initial weights, exp_avg, exp_avg_sq; param "
        "dtype); the param group also holds d_numerator and d_de_nom (1-element float32), "
        "which optimizer.state does not"
    ),
    expected_state_bytes=_n_times(4),
    reference=f"{_PRODIGY} (Prodigy.step); " + runs_as_is(po_source("Prodigy")),
    deviations=(
        "The step size d is computed with the first param group's lr and applied to every "
        "group; the authors refuse groups with different lrs (optbench builds one group).",
        "No slice_p: the authors' option to estimate d on every p-th element (less memory) is "
        "not in the library.",
    ),
    default_sources={
        "lr": _PRODIGY + " (Prodigy.__init__) and README: keep 1, tune d_coef",
        "betas": _PRODIGY + " (Prodigy.__init__)",
        "d0": _PRODIGY + " (Prodigy.__init__)",
        "d_coef": _PRODIGY + " (Prodigy.__init__)",
        "weight_decay": _PRODIGY + " (Prodigy.__init__); the README suggests trying 0 to 0.1",
        "weight_decouple": _PRODIGY + " (Prodigy.__init__: decouple True)",
        "bias_correction": _PRODIGY + " (Prodigy.__init__: use_bias_correction False)",
        "safeguard_warmup": (
            _PRODIGY + " (Prodigy.__init__); the README asks for True under an lr warm-up"
        ),
        "eps": _PRODIGY + " (Prodigy.__init__)",
    },
)

# --- Schedule-Free AdamW --------------------------------------------------------------

_SF = "facebookresearch/schedule_free: schedulefree/adamw_schedulefree.py"

_spec(
    "schedulefree_adamw",
    factory=po_factory("ScheduleFreeAdamW"),
    source=po_source("ScheduleFreeAdamW"),
    paper="Defazio et al., The Road Less Scheduled, NeurIPS 2024, arXiv:2405.15682",
    policy=every_param(
        "Schedule-Free AdamW (trains at y, evaluates at the average x: optimizer.eval() before "
        "evaluation, .train() after)"
    ),
    default_hparams={
        "lr": 2.5e-3,
        "betas": (0.9, 0.999),
        "weight_decay": 0.0,
        "r": 0.0,
        "weight_lr_power": 2.0,
        "warmup_steps": 0,
        "eps": 1e-8,
    },
    state_formula="2 × n × B per param (z, exp_avg_sq; param dtype)",
    expected_state_bytes=_n_times(2),
    reference=(
        f"{_SF} (AdamWScheduleFree.step, .train, .eval); "
        + runs_as_is(po_source("ScheduleFreeAdamW"))
    ),
    deviations=(
        "The library starts in train mode and never refuses a step in eval mode; the authors' "
        "starts in eval mode and refuses. optbench switches it to eval for every evaluation and "
        "back (optbench.engine.step.evaluation_weights), so results are the same.",
        "Schedule-free replaces the lr schedule: run it with `lr_schedule: {kind: constant}` "
        "and its own warmup_steps, as its authors do; a suite's cosine or WSD schedule still "
        "scales its lr, which the comparison then includes.",
    ),
    default_sources={
        "lr": _SF + " (AdamWScheduleFree.__init__); = " + po_default("ScheduleFreeAdamW"),
        "betas": _SF + " (AdamWScheduleFree.__init__); the README suggests β1 0.95-0.98 for "
        "long runs",
        "weight_decay": _SF + " (AdamWScheduleFree.__init__)",
        "r": _SF + " (AdamWScheduleFree.__init__)",
        "weight_lr_power": _SF + " (AdamWScheduleFree.__init__)",
        "warmup_steps": _SF + " (AdamWScheduleFree.__init__); the README asks for a warm-up",
        "eps": _SF + " (AdamWScheduleFree.__init__)",
    },
)

# --- Muon-family from the library: NorMuon, D-Muon ----------------------------------------

_KJ_ROLES = Policy.of(hidden_matrix="muon", embedding="adamw", lm_head="adamw", vector="adamw")


def _muon_groups(model: nn.Module, policy: Policy, muon: dict, adamw: dict) -> list[dict]:
    """The library's Muon-style param groups: one per role, `use_muon` on the hidden
    matrices (with `muon` options), AdamW inside the same class on the rest (`adamw`)."""
    groups = []
    for treatment, role_groups in split_by_treatment(model, policy).items():
        options = muon if treatment != "adamw" else adamw
        groups += [{**g, "use_muon": treatment != "adamw", **options} for g in role_groups]
    return groups


def _hidden_and_rest_bytes(hidden: Callable[[torch.Tensor], int]):
    """`hidden` per hidden matrix; exp_avg and exp_avg_sq on every other parameter."""
    return lambda model, hp: (role_bytes(model, "hidden_matrix", bytes_of=hidden)
                              + role_bytes(model, *NON_MATRIX,
                                           bytes_of=lambda p: 2 * tensor_bytes(p)))


_NORMUON = "zichongli5/NorMuon: normuon.py"
_NORMUON_POLICY = Policy.of(hidden_matrix="normuon", embedding="adamw", lm_head="adamw",
                            vector="adamw")


def _build_normuon(model: nn.Module, hp: dict) -> torch.optim.Optimizer:
    import pytorch_optimizer

    muon = {k: hp[k] for k in ("lr", "momentum", "beta2", "weight_decay", "nesterov",
                               "ns_steps", "eps")}
    adamw = {"lr": hp["adamw_lr"], "betas": hp["adamw_betas"], "eps": hp["adamw_eps"],
             "weight_decay": hp["adamw_weight_decay"]}
    return pytorch_optimizer.NorMuon(_muon_groups(model, _NORMUON_POLICY, muon, adamw))


def _row_second_moment_bytes(p: torch.Tensor) -> int:
    """momentum_buffer (like p) + second_momentum_buffer, one value per output row [m, 1]."""
    return tensor_bytes(p) + elements_bytes(p.shape[0], p)


_spec(
    "normuon",
    factory=_build_normuon,
    source=po_source("NorMuon") + " (use_muon on hidden matrices, its AdamW on the rest)",
    paper=(
        "Li et al., NorMuon: Making Muon more efficient and scalable, 2025, arXiv:2510.05491"
    ),
    policy=_NORMUON_POLICY.describe(),
    default_hparams={
        "lr": 0.02,
        "momentum": 0.95,
        "beta2": 0.95,
        "weight_decay": 0.0,
        "nesterov": True,
        "ns_steps": 5,
        "eps": 1e-10,
        **MUON_ADAMW_HPARAMS,
    },
    state_formula=(
        "hidden matrices [m, n]: n·m × B (momentum_buffer) + m × B (second_momentum_buffer, "
        "per output row); embedding, lm_head, 1-D: 2 × n × B (exp_avg, exp_avg_sq); all in "
        "param dtype, step in the group"
    ),
    expected_state_bytes=_hidden_and_rest_bytes(_row_second_moment_bytes),
    reference=(
        f"{_NORMUON} (normuon_update, SingleDeviceNorMuonWithAuxAdam.step); "
        + runs_as_is(po_source("NorMuon"))
    ),
    deviations=(
        "The row normalization runs in the gradient's dtype (float32 in fp32 runs) where the "
        "authors run it on the bfloat16 Newton-Schulz output: about 2 % of the update in fp32; "
        "the Newton-Schulz step itself agrees in float64.",
        "Adam's step count is per group in the library, per parameter in the authors' code: the "
        "same while every parameter gets a gradient every step.",
    ),
    default_sources={
        **{k: _NORMUON + " (SingleDeviceNorMuonWithAuxAdam: muon group defaults)"
           for k in ("lr", "momentum", "beta2", "weight_decay", "nesterov", "ns_steps")},
        "eps": po_default("NorMuon") + " (the authors add 1e-10 to the row norm too)",
        **{k: _NORMUON + " (adam groups, as Keller Jordan's Muon)" for k in MUON_ADAMW_HPARAMS},
    },
)

_DMUON_EPFL = "epfml/llm-optimizer-benchmark: src/optim/muon.py"


def _build_dmuon(model: nn.Module, hp: dict) -> torch.optim.Optimizer:
    """Moonlight's update-RMS matching (0.2·√max(m, n), `use_adjusted_lr`) and decoupled weight
    decay on hidden matrices; the same lr on the AdamW part, as the EPFL suite runs it."""
    import pytorch_optimizer

    muon = {"lr": hp["lr"], "momentum": hp["momentum"], "nesterov": hp["nesterov"],
            "weight_decay": hp["weight_decay"], "ns_steps": hp["ns_steps"],
            "use_adjusted_lr": True}
    adamw = {"lr": hp["lr"], "betas": hp["adamw_betas"], "eps": hp["adamw_eps"],
             "weight_decay": hp["adamw_weight_decay"]}
    return pytorch_optimizer.Muon(_muon_groups(model, _KJ_ROLES, muon, adamw))


_spec(
    "dmuon",
    factory=_build_dmuon,
    source=po_source("Muon") + " (use_adjusted_lr: update RMS matched to AdamW's; one lr)",
    paper=(
        "Liu et al., Muon is Scalable for LLM Training, arXiv:2502.16982 (the RMS matching and "
        "weight decay), as defined and tuned in Semenov, Pagliardini & Jaggi, arXiv:2509.01440"
    ),
    policy=_KJ_ROLES.describe(),
    default_hparams={
        "lr": 1e-3,
        "weight_decay": 0.1,
        "momentum": 0.95,
        "nesterov": True,
        "ns_steps": 5,
        "adamw_betas": (0.8, 0.999),
        "adamw_eps": 1e-8,
        "adamw_weight_decay": 0.0,
    },
    state_formula=(
        "hidden matrices: n × B (momentum_buffer); embedding, lm_head, 1-D: 2 × n × B "
        "(exp_avg, exp_avg_sq); all in param dtype, step in the group"
    ),
    expected_state_bytes=_hidden_and_rest_bytes(tensor_bytes),
    reference=(
        f"{_DMUON_EPFL} (DistributedMuon.step, adjust_lr_wd_for_muon), from MoonshotAI/"
        "Moonlight: examples/toy_train.py (Muon.adjust_lr_for_muon); "
        + runs_as_is(po_source("Muon"))
    ),
    deviations=(
        "The library's momentum is an EMA where the EPFL code accumulates (buf = μ·buf + g); "
        "Newton-Schulz normalizes its input, so only rounding differs (about 3 % of the update, "
        "from bfloat16 Newton-Schulz).",
        "The AdamW part divides eps by √(1-β2^t) (bias correction after eps): about 0.5 % on "
        "those parameters after a few steps.",
        "The EPFL code gives Muon every ≥2-D tensor with fewer than 10000 rows; optbench gives it "
        "the hidden matrices by role, which is the same split for LLaMA (the 32000-row "
        "embedding and lm_head go to AdamW either way).",
    ),
    default_sources={
        "lr": _EPFL + " (scripts/124m/d-muon.sh: lr 1e-3 for both parts)",
        "weight_decay": _EPFL + " (scripts/124m/d-muon.sh: 0.1)",
        "momentum": _DMUON_EPFL + " (DistributedMuon.__init__) and the 124m script",
        "nesterov": _DMUON_EPFL + " (DistributedMuon.__init__) and the 124m script",
        "ns_steps": _DMUON_EPFL + " (DistributedMuon.__init__)",
        "adamw_betas": _EPFL + " (scripts/124m/d-muon.sh: betas (0.8, 0.999))",
        "adamw_eps": _DMUON_EPFL + " (DistributedMuon.__init__: 1e-8)",
        "adamw_weight_decay": _DMUON_EPFL + " (no decay on the AdamW part: embedding and norms)",
    },
)

# --- Scion -----------------------------------------------------------------------------

_SCION = "LIONS-EPFL/scion: scion.py"
# The authors' untied-embedding setup (examples/shallow-nanogpt, 'Mixed'; the EPFL suite's
# untied partition): role -> (LMO norm, its options, radius).
_SCION_NORMS = {
    "embedding": ("COL", {"transpose": True}, 1.0),
    "hidden_matrix": ("SPECTRAL", {"max_scale": True}, 3.0),
    "lm_head": ("SIGN", {}, 10.0),
    "vector": ("BIAS", {}, 1.0),
}
_SCION_POLICY = Policy.of(
    embedding="Scion, column-norm LMO, radius 1",
    hidden_matrix="Scion, spectral LMO, radius 3",
    lm_head="Scion, sign LMO, radius 10",
    vector="Scion, RMS LMO, radius 1",
)


def _build_scion(model: nn.Module, hp: dict) -> torch.optim.Optimizer:
    import pytorch_optimizer
    from pytorch_optimizer.optimizer.scion import LMONorm

    groups = []
    for role, pairs in param_roles(model).items():
        norm, options, radius = _SCION_NORMS[role]
        groups.append({"params": [p for _, p in pairs], "role": role,
                       "param_names": [n for n, _ in pairs], "norm_type": LMONorm[norm],
                       "norm_kwargs": options, "scale": radius})
    return pytorch_optimizer.SCION(groups, lr=hp["lr"], momentum=hp["momentum"],
                                   constraint=hp["constraint"],
                                   weight_decay=hp["weight_decay"])


_spec(
    "scion",
    factory=_build_scion,
    source=po_source("SCION") + " (a norm and radius per parameter role)",
    paper=(
        "Pethick et al., Training Deep Learning Models with Norm-Constrained LMOs, ICML 2025, "
        "arXiv:2502.07529"
    ),
    policy=_SCION_POLICY.describe(),
    default_hparams={"lr": 1e-3, "momentum": 0.1, "constraint": True, "weight_decay": 0.0},
    state_formula="n × B per param (d: the averaged gradient, param dtype); step in the group",
    expected_state_bytes=_n_times(1),
    reference=f"{_SCION} (Scion.step, the norms); " + runs_as_is(po_source("SCION")),
    deviations=(
        "The weights keep the model's own initialization; the authors call Scion's init() to "
        "draw them from each layer's norm ball first.",
        "The spectral LMO's Newton-Schulz rounds differently from the authors' (about 2.5 % of "
        "the update); the sign LMO is the same to the bit.",
        "momentum is the weight of the new gradient, d ← (1-momentum)·d + momentum·g, as in the "
        "authors' code (0.1 there means 0.9 in the usual convention).",
    ),
    default_sources={
        "lr": _SCION + " (Scion.__init__)",
        "momentum": _SCION + " (README: momentum 0.1; the class default 1.0 is no averaging)",
        "constraint": _SCION + " (Scion.__init__: unconstrained False, the constrained update)",
        "weight_decay": po_default("SCION") + " (the authors' Scion has none; used only "
                        "unconstrained)",
    },
)

# --- PSGD Kron ---------------------------------------------------------------------------

_KRON = "evanatyourservice/kron_torch: kron_torch/kron.py"


def _kron_bytes(model: nn.Module, hp: dict) -> int:
    """momentum_buffer (param dtype); float32 preconditioner factors Q: a dense d × d factor
    per dim no larger than max_size_triangular of a tensor with ≥ min_ndim_triangular dims,
    a diagonal (d) otherwise (always for 1-D)."""
    total = 0
    for p in trainable(model):
        total += tensor_bytes(p)
        dense = p.ndim >= hp["min_ndim_triangular"]
        total += 4 * sum(d * d if dense and d <= hp["max_size_triangular"] else d
                         for d in p.shape)
    return total


_spec(
    "kron",
    factory=po_factory("Kron"),
    source=po_source("Kron"),
    paper=(
        "Li, Preconditioned Stochastic Gradient Descent, IEEE TNNLS 2018, arXiv:1512.04202; "
        "Kronecker-factored preconditioners, arXiv:1809.10232 (PSGD Kron as in kron_torch)"
    ),
    policy=every_param("PSGD Kron (Kronecker-factored preconditioner, momentum)"),
    default_hparams={
        "lr": 3e-4,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "max_size_triangular": 8192,
        "min_ndim_triangular": 2,
    },
    state_formula=(
        "per param: n × B (momentum_buffer) + float32 factors Q: d² × 4 B per dim d ≤ "
        "max_size_triangular of a ≥2-D param, d × 4 B (diagonal) per other dim and for 1-D "
        "(the 32000 vocab: diagonal); update_counter in the first group"
    ),
    expected_state_bytes=_kron_bytes,
    reference=f"{_KRON} (Kron.step, _update_precond); " + runs_as_is(po_source("Kron")),
    deviations=(
        "The library does not add kron_torch's damping noise to the gradient before a "
        "preconditioner update; with updates off, the two match to the bit.",
        "The ~1 % rebalancing of the factors draws from NumPy's global random state, not "
        "kron_torch's generator seeded at 42.",
    ),
    default_sources={
        "lr": _KRON + " (Kron.__init__; the library's default is 1e-3)",
        "momentum": _KRON + " (Kron.__init__: b1 0.9)",
        "weight_decay": _KRON + " (Kron.__init__); the README suggests 3-10× AdamW's",
        "max_size_triangular": _KRON + " (Kron.__init__)",
        "min_ndim_triangular": _KRON + " (Kron.__init__)",
    },
)

# --- Signum ----------------------------------------------------------------------------

_SIGNUM = "epfml/llm-optimizer-benchmark: src/optim/sign.py"


def _signum_bytes(model: nn.Module, hp: dict) -> int:
    """A momentum buffer like each parameter; none at momentum 0 (plain signSGD)."""
    return params_bytes(trainable(model)) if hp["momentum"] > 0 else 0


_spec(
    "signum",
    factory=po_factory("SignSGD"),
    source=po_source("SignSGD"),
    paper=(
        "Bernstein et al., signSGD: Compressed Optimisation for Non-Convex Problems, ICML 2018, "
        "arXiv:1802.04434"
    ),
    policy=every_param("Signum (sign of the momentum)"),
    default_hparams={"lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0},
    state_formula="n × B per param (momentum_buffer, param dtype); 0 at momentum 0",
    expected_state_bytes=_signum_bytes,
    reference=f"{_SIGNUM} (Signum.step, the EPFL suite's); " + runs_as_is(po_source("SignSGD")),
    deviations=(
        "No Nesterov option, which the EPFL suite's 210M and larger runs use.",
        "The momentum buffer starts at zero where the EPFL code starts it at the weights "
        "(clone(p)), so the first steps differ; with a zero buffer the two agree to the bit.",
    ),
    default_sources={
        "lr": _EPFL + " (scripts/124m/signum.sh: 1e-3)",
        "momentum": _EPFL + " (scripts/124m/signum.sh: the CLI default 0.9)",
        "weight_decay": po_default("SignSGD") + "; the EPFL scripts use 0.1",
    },
)

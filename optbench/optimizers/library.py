"""Optimizers taken as-is from maintained libraries: torch.optim, bitsandbytes, pytorch_optimizer.

(torch.optim's AdamW and SGD are the baseline entries, in `torch_optim`.)

Every state formula below was read off the library source at the version named in `source`
and is checked exactly, in float32 and bfloat16, by
tests/optimizers/test_optimizers_library.py.
Notation: n = elements of a parameter tensor, B = bytes per element of the parameter dtype.

Options that change *which* state exists (momentum 0, AMSGrad bounds, SPAM density, bnb's
optim_bits / min_8bit_size) are deliberately not accepted as hparams, so the formula holds
for every accepted configuration (the same convention as the core `sgd` entry).

The libraries are imported inside the factories: pytorch_optimizer and bitsandbytes each
take seconds to import, which every `optbench` command would otherwise pay.
"""

from __future__ import annotations

import math
from importlib.metadata import version

import torch
from torch import nn

from optbench.optimizers.policy import ROLES, Policy
from optbench.optimizers.registry import Factory, OptimizerSpec, register
from optbench.optimizers.state_formulas import per_param, tensor_bytes, torch_step_bytes, trainable

_BNB_BLOCK = 256  # bitsandbytes' CPU/CUDA block size for 8-bit states (hard-coded in init_state)
_BNB_MIN_8BIT = 4096  # bnb's min_8bit_size default: smaller tensors keep float32 states
_BNB_QMAP_BYTES = 2 * 256 * 4  # the two shared float32 quantization maps (signed, unsigned)


def _po_source(cls: str) -> str:
    return f"pytorch_optimizer.{cls} {version('pytorch_optimizer')}"


def _every_param(treatment: str) -> str:
    return Policy.of(**{role: treatment for role in ROLES}).describe()


def _po_factory(cls: str, fixed: dict | None = None) -> Factory:
    """A factory for pytorch_optimizer.<cls> over every trainable param, plus fixed options."""

    def build(model: nn.Module, hp: dict) -> torch.optim.Optimizer:
        import pytorch_optimizer

        return getattr(pytorch_optimizer, cls)(trainable(model), **hp, **(fixed or {}))

    return build


# --- torch.optim ---------------------------------------------------------------------


def _build_sgd_momentum(model: nn.Module, hp: dict) -> torch.optim.Optimizer:
    return torch.optim.SGD(trainable(model), momentum=0.9, **hp)


def _adafactor_bytes(p: nn.Parameter) -> int:
    # >= 2-D: row and column factors over the last two dims (grad dtype); else a full variance.
    if p.ndim >= 2:
        rows = p.numel() // p.shape[-1]
        cols = p.numel() // p.shape[-2]
        factors = (rows + cols) * p.element_size()
    else:
        factors = tensor_bytes(p)
    return factors + torch_step_bytes()


def _build_adafactor(model: nn.Module, hp: dict) -> torch.optim.Optimizer:
    return torch.optim.Adafactor(trainable(model), **hp)


# --- bitsandbytes --------------------------------------------------------------------


def _build_adamw8bit(model: nn.Module, hp: dict) -> torch.optim.Optimizer:
    import bitsandbytes

    return bitsandbytes.optim.AdamW8bit(trainable(model), **hp)


def _adamw8bit_bytes(model: nn.Module, hp: dict) -> int:
    params = trainable(model)
    total = 0
    for p in params:
        n = p.numel()
        if n < _BNB_MIN_8BIT:
            total += 2 * n * 4  # float32 state1/state2 whatever the param dtype
        else:
            total += 2 * n + 2 * math.ceil(n / _BNB_BLOCK) * 4  # uint8 states + absmax1/2
    # qmap1/qmap2 are the same two tensors for every 8-bit param: counted once.
    if any(p.numel() >= _BNB_MIN_8BIT for p in params):
        total += _BNB_QMAP_BYTES
    return total


# --- pytorch_optimizer: Adam-mini -------------------------------------------------------

# pytorch_optimizer.AdamMini's partition, by parameter-name substring (its own rules).
_MINI_EMBED = ("embed", "embd", "wte", "lm_head.weight", "output.weight")
_MINI_QK = ("k_proj.weight", "q_proj.weight", "wq.weight", "wk.weight")


def _build_adam_mini(model: nn.Module, hp: dict) -> torch.optim.Optimizer:
    import pytorch_optimizer

    config = model.config
    return pytorch_optimizer.AdamMini(
        model,
        num_embeds=config.hidden_size,
        num_heads=config.num_attention_heads,
        num_query_groups=config.num_key_value_heads,
        **hp,
    )


def _adam_mini_bytes(model: nn.Module, hp: dict) -> int:
    """All state is float32 (m is allocated as float32 even for bf16 params)."""
    config = model.config
    per_head = config.hidden_size * config.hidden_size // config.num_attention_heads
    total = 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        n = p.numel()
        if any(block in name for block in _MINI_EMBED):
            total += 2 * n * 4  # m and a per-element v: plain Adam
        elif any(block in name for block in _MINI_QK):
            total += n * 4 + (n // per_head) * 4  # m + one v per head
        else:
            # The rest (LLaMA has no fused attn.qkv weight, AdamMini's third kind):
            total += n * 4 + 4 + 4  # m + 0-d v_mean + 0-d `dimension` (numel as float32)
    return total


# --- pytorch_optimizer: Hessian-based -----------------------------------------------------


def _hessian_factory(cls: str) -> Factory:
    """pytorch_optimizer's Hutchinson optimizers differentiate p.grad again inside step().

    That second backward runs through attention, and SDPA's fused CPU/CUDA kernels have no
    double backward, so the model is switched to eager attention (the same math).
    """
    build = _po_factory(cls)

    def build_eager(model: nn.Module, hp: dict) -> torch.optim.Optimizer:
        model.set_attn_implementation("eager")
        return build(model, hp)

    return build_eager


# --- entries ---------------------------------------------------------------------------

_DEVICES = ("cpu", "cuda")


def _spec(name: str, **fields) -> None:
    register(OptimizerSpec(name=name, version="1", devices=_DEVICES, **fields))


_spec(
    "sgd_momentum",
    factory=_build_sgd_momentum,
    source=f"torch.optim.SGD {torch.__version__} (momentum=0.9)",
    paper=(
        "Sutskever, Martens, Dahl & Hinton, On the importance of initialization and momentum "
        "in deep learning, ICML 2013 (heavy ball: Polyak 1964; no arXiv id)"
    ),
    policy=_every_param("SGD with momentum 0.9"),
    # momentum is fixed at 0.9: at 0 torch keeps no buffer and the formula would not hold.
    default_hparams={"lr": 1e-2, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False},
    state_formula="params × B (momentum_buffer, param dtype)",
    expected_state_bytes=per_param(tensor_bytes),
)

_spec(
    "adafactor",
    factory=_build_adafactor,
    source=f"torch.optim.Adafactor {torch.__version__}",
    paper=(
        "Shazeer & Stern, Adafactor: Adaptive Learning Rates with Sublinear Memory Cost, "
        "ICML 2018, arXiv:1804.04235"
    ),
    policy=_every_param("Adafactor (factored second moment, no first moment)"),
    # torch's defaults are the paper's: relative step min(lr, 1/sqrt(t)), beta2_t = 1 - t^-0.8,
    # eps2 = 1e-3 (eps1 None: the dtype's machine epsilon), d = 1 update clipping.
    default_hparams={
        "lr": 1e-2,
        "beta2_decay": -0.8,
        "eps": (None, 1e-3),
        "d": 1.0,
        "weight_decay": 0.0,
        "foreach": None,
        "maximize": False,
    },
    state_formula=(
        "per ≥2-D param [..., r, c]: (n/c + n/r) × B (row_var, col_var, param dtype); "
        "per 1-D param: n × B (variance); + 4 B float32 `step` per param tensor"
    ),
    expected_state_bytes=per_param(_adafactor_bytes),
)

_spec(
    "adamw8bit",
    factory=_build_adamw8bit,
    source=f"bitsandbytes.optim.AdamW8bit {version('bitsandbytes')}",
    paper=(
        "Dettmers, Lewis, Shleifer & Zettlemoyer, 8-bit Optimizers via Block-wise "
        "Quantization, ICLR 2022, arXiv:2110.02861"
    ),
    policy=_every_param("AdamW with block-wise 8-bit states (float32 below 4096 elements)"),
    # optim_bits, min_8bit_size, amsgrad, max_unorm and paging change the state: fixed.
    default_hparams={"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2},
    state_formula=(
        "per param with n ≥ 4096: 2n B (uint8 state1, state2) + 2 × ceil(n/256) × 4 B "
        "(float32 absmax1, absmax2); per param with n < 4096: 2 × n × 4 B (float32 "
        "state1, state2, whatever the param dtype); + 2048 B once for the two shared float32 "
        "qmaps (256 entries each); step is a Python int (0 B)"
    ),
    expected_state_bytes=_adamw8bit_bytes,
)

_spec(
    "lion",
    factory=_po_factory("Lion"),
    source=_po_source("Lion"),
    paper="Chen et al., Symbolic Discovery of Optimization Algorithms, 2023, arXiv:2302.06675",
    policy=_every_param("Lion"),
    # Paper: lr 3-10x below AdamW's, betas (0.9, 0.99), decoupled weight decay.
    default_hparams={"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0},
    state_formula="params × B (exp_avg, param dtype); step lives in the param group (0 B)",
    expected_state_bytes=per_param(tensor_bytes),
)

_spec(
    "adam_mini",
    factory=_build_adam_mini,
    source=_po_source("AdamMini"),
    paper=(
        "Zhang et al., Adam-mini: Use Fewer Learning Rates To Gain More, 2024, "
        "arXiv:2406.16793"
    ),
    policy=Policy.of(
        embedding="Adam (per-element v)",
        lm_head="Adam (per-element v)",
        hidden_matrix="Adam-mini (q/k: one v per head; other matrices: one v per tensor)",
        vector="Adam-mini (one v per tensor), no weight decay",
    ).describe(),
    # Paper's Llama settings; num_embeds / num_heads / num_query_groups come from the model.
    default_hparams={"lr": 1e-3, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1},
    state_formula=(
        "all float32 whatever the param dtype: embedding and lm_head 2 × n × 4 B (m, v); "
        "q_proj/k_proj n × 4 B (m) + heads × 4 B (v_mean); every other tensor n × 4 B (m) "
        "+ 4 B (0-d v_mean) + 4 B (0-d float32 `dimension`)"
    ),
    expected_state_bytes=_adam_mini_bytes,
)

_ADAM_LIKE = "2 × params × B (exp_avg, {second}, param dtype); step lives in the param group"

_spec(
    "adabelief",
    factory=_po_factory("AdaBelief"),
    source=_po_source("AdaBelief"),
    paper=(
        "Zhuang et al., AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed "
        "Gradients, NeurIPS 2020, arXiv:2010.07468"
    ),
    policy=_every_param("AdaBelief"),
    # ams_bound adds max_exp_avg_var: not accepted.
    default_hparams={
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-16,
        "weight_decay": 0.0,
        "weight_decouple": True,
        "rectify": False,
    },
    state_formula=_ADAM_LIKE.format(second="exp_avg_var"),
    expected_state_bytes=per_param(lambda p: 2 * tensor_bytes(p)),
)

_spec(
    "exadam",
    factory=_po_factory("EXAdam"),
    source=_po_source("EXAdam"),
    paper=(
        "Adly, EXAdam: The Power of Adaptive Cross-Moments, 2024, arXiv:2412.20302"
    ),
    policy=_every_param("EXAdam"),
    default_hparams={"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    state_formula=_ADAM_LIKE.format(second="exp_avg_sq"),
    expected_state_bytes=per_param(lambda p: 2 * tensor_bytes(p)),
)

_spec(
    "adamp",
    factory=_po_factory("AdamP"),
    source=_po_source("AdamP"),
    paper=(
        "Heo et al., AdamP: Slowing Down the Slowdown for Momentum Optimizers on "
        "Scale-invariant Weights, ICLR 2021, arXiv:2006.08217"
    ),
    policy=_every_param("AdamP (projection on scale-invariant weights, cosine test delta)"),
    default_hparams={
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.0,
        "delta": 0.1,
        "wd_ratio": 0.1,
        "nesterov": False,
    },
    state_formula=_ADAM_LIKE.format(second="exp_avg_sq"),
    expected_state_bytes=per_param(lambda p: 2 * tensor_bytes(p)),
)


def _spam_bytes(p: nn.Parameter) -> int:
    # Every 2-D param gets a bool update mask, even at density 1 (all True).
    mask = p.numel() if p.ndim == 2 else 0
    return 2 * tensor_bytes(p) + mask


_spec(
    "spam",
    factory=_po_factory("SPAM", fixed={"density": 1.0}),
    source=_po_source("SPAM") + " (density=1.0)",
    paper=(
        "Huang et al., SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM Training, "
        "ICLR 2025, arXiv:2501.06842"
    ),
    policy=_every_param("SPAM (dense: density 1)"),
    # density < 1 shrinks the moments to the masked entries: fixed at 1 (full SPAM).
    default_hparams={
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-6,
        "weight_decay": 0.0,
        "warmup_epoch": 50,
        "threshold": 5000,
        "grad_accu_steps": 20,
        "update_proj_gap": 500,
    },
    state_formula=(
        "2 × params × B (exp_avg, exp_avg_sq, param dtype, stored flat) + 2-D params × 1 B "
        "(bool mask); total_step/current_step are Python ints (0 B)"
    ),
    expected_state_bytes=per_param(_spam_bytes),
)

_spec(
    "stable_spam",
    factory=_po_factory("StableSPAM"),
    source=_po_source("StableSPAM"),
    paper=(
        "Huang et al., Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit Adam, "
        "2025, arXiv:2502.17055"
    ),
    policy=_every_param("Stable-SPAM"),
    # t_max (cosine momentum warm-up) defaults to None, which registry coercion cannot
    # override with an int: left at the library default (off) and not accepted.
    default_hparams={
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "gamma1": 0.7,
        "gamma2": 0.9,
        "theta": 0.999,
        "eps": 1e-8,
        "weight_decay": 0.0,
        "update_proj_gap": 1000,
    },
    state_formula=(
        "2 × params × B (exp_avg, exp_avg_sq) + 3 × B per param tensor (0-d m_norm_t, "
        "v_norm_t, m_max_t), all in param dtype"
    ),
    expected_state_bytes=per_param(lambda p: 2 * tensor_bytes(p) + 3 * p.element_size()),
)

_spec(
    "sgd_sai",
    factory=_po_factory("SGDSaI", fixed={"momentum": 0.9}),
    source=_po_source("SGDSaI") + " (momentum=0.9)",
    paper=(
        "Xu et al., No More Adam: Learning Rate Scaling at Initialization is All You Need, "
        "2024, arXiv:2412.11768"
    ),
    policy=_every_param("SGD-SaI (per-tensor lr scale from the first step's gradient SNR)"),
    # momentum fixed: at 0 no momentum_buffer is kept.
    default_hparams={"lr": 1e-2, "weight_decay": 1e-2, "eps": 1e-8},
    state_formula=(
        "params × B (momentum_buffer) + B per param tensor (0-d gsnr), param dtype"
    ),
    expected_state_bytes=per_param(lambda p: tensor_bytes(p) + p.element_size()),
)

_HESSIAN_POLICY = " (model switched to eager attention: Hessian-vector products)"

_spec(
    "adahessian",
    factory=_hessian_factory("AdaHessian"),
    source=_po_source("AdaHessian"),
    paper=(
        "Yao et al., ADAHESSIAN: An Adaptive Second Order Optimizer for Machine Learning, "
        "AAAI 2021, arXiv:2006.00719"
    ),
    policy=_every_param("AdaHessian") + _HESSIAN_POLICY,
    # The authors' code defaults (lr 0.15, eps 1e-4). The library's eps 1e-16 lets an entry
    # whose Hessian-diagonal estimate rounds to 0 take a ~1e14 step: bf16 diverges at step 1.
    default_hparams={
        "lr": 0.15,
        "betas": (0.9, 0.999),
        "eps": 1e-4,
        "weight_decay": 0.0,
        "hessian_power": 1.0,
        "update_period": 1,
        "num_samples": 1,
        "hessian_distribution": "rademacher",
    },
    state_formula=(
        "3 × params × B (exp_avg, exp_hessian_diag_sq, hessian: the Hutchinson estimate, "
        "param dtype)"
    ),
    expected_state_bytes=per_param(lambda p: 3 * tensor_bytes(p)),
    needs_create_graph=True,
)

_spec(
    "sophia",
    factory=_hessian_factory("SophiaH"),
    source=_po_source("SophiaH"),
    paper=(
        "Liu et al., Sophia: A Scalable Stochastic Second-order Optimizer for Language Model "
        "Pre-training, ICLR 2024, arXiv:2305.14342 (SophiaH: Hutchinson estimator)"
    ),
    policy=_every_param("SophiaH") + _HESSIAN_POLICY,
    default_hparams={
        "lr": 6e-2,
        "betas": (0.96, 0.99),
        "p": 1e-2,
        "eps": 1e-12,
        "weight_decay": 0.0,
        "update_period": 10,
        "num_samples": 1,
        "hessian_distribution": "gaussian",
    },
    state_formula=(
        "3 × params × B (momentum, hessian_moment, hessian: the Hutchinson estimate, "
        "param dtype); step lives in the param group"
    ),
    expected_state_bytes=per_param(lambda p: 3 * tensor_bytes(p)),
    needs_create_graph=True,
)

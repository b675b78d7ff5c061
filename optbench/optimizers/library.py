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


def po_source(cls: str) -> str:
    return f"pytorch_optimizer.{cls} {version('pytorch_optimizer')}"


def every_param(treatment: str) -> str:
    return Policy.of(**{role: treatment for role in ROLES}).describe()


def po_factory(cls: str, fixed: dict | None = None) -> Factory:
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
    build = po_factory(cls)

    def build_eager(model: nn.Module, hp: dict) -> torch.optim.Optimizer:
        model.set_attn_implementation("eager")
        return build(model, hp)

    return build_eager


# --- entries ---------------------------------------------------------------------------

_DEVICES = ("cpu", "cuda")


def _spec(name: str, **fields) -> None:
    register(OptimizerSpec(name=name, version="1", devices=_DEVICES, **fields))


# Provenance (`reference`, `deviations`, `default_sources`). No test here compares a library
# class with the authors' code, so each reference says so.
def runs_as_is(what: str) -> str:
    return f"runs {what}, not held against it in a test"


def po_default(cls: str) -> str:
    return f"library default: pytorch_optimizer.{cls}"


def _torch_default(cls: str) -> str:
    return f"torch.optim.{cls} default"


_ADAFACTOR_ALG6 = "paper arXiv:1804.04235, Algorithm 6 (proposed hyperparameters)"
_ADABELIEF_INIT = (
    "juntang-zhuang/Adabelief-Optimizer: pypi_packages/adabelief_pytorch0.2.1/adabelief_pytorch/"
    "AdaBelief.py (AdaBelief.__init__)"
)
_EXADAM_INIT = "AhmedMostafa16/EXAdam: exadam.py (EXAdam.__init__)"
_SPAM_INIT = "TianjinYellow/SPAM-Optimizer: galore_torch/SPAM.py (AdamW.__init__)"
_STABLE_INIT = "TianjinYellow/StableSPAM: galore_torch/stablespam.py (StableSPAM.__init__)"
_ADAHESSIAN_INIT = "amirgholami/adahessian: instruction/adahessian.py (Adahessian.__init__)"
_EAGER = (
    "The model is switched to eager attention and every step runs backward(create_graph=True), "
    "since SDPA has no double backward: the same math, but step time and activation memory are "
    "not comparable with the other entries'."
)


_spec(
    "sgd_momentum",
    factory=_build_sgd_momentum,
    source=f"torch.optim.SGD {torch.__version__} (momentum=0.9)",
    paper=(
        "Sutskever, Martens, Dahl & Hinton, On the importance of initialization and momentum "
        "in deep learning, ICML 2013 (heavy ball: Polyak 1964; no arXiv id)"
    ),
    policy=every_param("SGD with momentum 0.9"),
    # momentum is fixed at 0.9: at 0 torch keeps no buffer and the formula would not hold.
    default_hparams={"lr": 1e-2, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False},
    state_formula="params × B (momentum_buffer, param dtype)",
    expected_state_bytes=per_param(tensor_bytes),
    reference=(
        "no authors' code found (Sutskever et al. 2013; Polyak 1964); runs torch.optim.SGD "
        "(SGD.step, momentum=0.9), the heavy-ball form buf = μ·buf + g, p -= lr·buf"
    ),
    deviations=(
        "Momentum is fixed at 0.9 (at 0 torch keeps no buffer and the state formula would not "
        "hold); Sutskever et al. raise μ over training towards a μ_max of 0.9 to 0.999.",
        "torch applies the current lr to the whole buffer (p -= lr_t·buf) where the paper's "
        "velocity accumulates lr·g (v = μ·v - ε·g); the same for a constant lr, but under a "
        "schedule past gradients move with the current lr.",
    ),
    default_sources={
        "lr": (
            "optbench choice, no recorded reason (torch.optim.SGD's default is 1e-3); suites "
            "pass their own"
        ),
        "dampening": _torch_default("SGD"),
        "weight_decay": _torch_default("SGD") + " (coupled L2: added to the gradient)",
        "nesterov": _torch_default("SGD"),
    },
)

_spec(
    "adafactor",
    factory=_build_adafactor,
    source=f"torch.optim.Adafactor {torch.__version__}",
    paper=(
        "Shazeer & Stern, Adafactor: Adaptive Learning Rates with Sublinear Memory Cost, "
        "ICML 2018, arXiv:1804.04235"
    ),
    policy=every_param("Adafactor (factored second moment, no first moment)"),
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
    reference=(
        "tensorflow/tensor2tensor: tensor2tensor/utils/adafactor.py (AdafactorOptimizer), the "
        "code the paper points to; " + runs_as_is(f"torch.optim.Adafactor {torch.__version__}")
    ),
    deviations=(
        "torch floors the variance estimate at eps1² (eps1 None: the param dtype's machine "
        "epsilon, 1.2e-7 in fp32 and 7.8e-3 in bf16) where the paper and tensor2tensor add "
        "eps1 = 1e-30 to g²; in bf16 this shrinks the update of every entry whose gradient RMS "
        "is below 7.8e-3.",
        "lr caps the relative step, rho_t = min(lr, 1/sqrt(t)), where the paper has a constant "
        "1e-2: the same at the default lr.",
        "The row and column factors are kept in the param dtype (bf16 in bf16 runs); "
        "tensor2tensor keeps its slots in float32.",
        "Weight decay is torch's decoupled lr × weight_decay, which the paper does not have; no "
        "effect at the default 0.",
    ),
    default_sources={
        "lr": _ADAFACTOR_ALG6 + ": rho_t = min(1e-2, 1/sqrt(t)); = torch.optim.Adafactor default",
        "beta2_decay": _ADAFACTOR_ALG6 + ": beta2_t = 1 - t^-0.8; = torch.optim.Adafactor default",
        "eps": (
            _torch_default("Adafactor") + ": eps2 1e-3 as in Algorithm 6; eps1 None (machine "
            "epsilon) instead of the paper's 1e-30"
        ),
        "d": _ADAFACTOR_ALG6 + ": d = 1; = torch.optim.Adafactor default",
        "weight_decay": _torch_default("Adafactor"),
        "foreach": _torch_default("Adafactor") + " (None: the per-tensor loop)",
        "maximize": _torch_default("Adafactor"),
    },
)

_spec(
    "adamw8bit",
    factory=_build_adamw8bit,
    source=f"bitsandbytes.optim.AdamW8bit {version('bitsandbytes')}",
    paper=(
        "Dettmers, Lewis, Shleifer & Zettlemoyer, 8-bit Optimizers via Block-wise "
        "Quantization, ICLR 2022, arXiv:2110.02861"
    ),
    policy=every_param("AdamW with block-wise 8-bit states (float32 below 4096 elements)"),
    # optim_bits, min_8bit_size, amsgrad, max_unorm and paging change the state: fixed.
    default_hparams={"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2},
    state_formula=(
        "per param with n ≥ 4096: 2n B (uint8 state1, state2) + 2 × ceil(n/256) × 4 B "
        "(float32 absmax1, absmax2); per param with n < 4096: 2 × n × 4 B (float32 "
        "state1, state2, whatever the param dtype); + 2048 B once for the two shared float32 "
        "qmaps (256 entries each); step is a Python int (0 B)"
    ),
    expected_state_bytes=_adamw8bit_bytes,
    reference=(
        "bitsandbytes-foundation/bitsandbytes: bitsandbytes/optim/adamw.py (AdamW8bit), "
        "bitsandbytes/optim/optimizer.py (Optimizer2State): the authors' own library, run as-is"
    ),
    deviations=(
        "The model keeps its plain nn.Embedding, with 8-bit states like every other matrix; the "
        "paper trains its language models with the stable embedding layer "
        "(bnb.nn.StableEmbedding: layer norm, 32-bit states), left out so that every optimizer "
        "trains the same model.",
        "Since bitsandbytes 0.44 the states are quantized in blocks of 256 elements, not the "
        "paper's 2048 (CHANGELOG.md: more accurate); the state formula counts 256.",
    ),
    default_sources={
        key: "bitsandbytes-foundation/bitsandbytes: bitsandbytes/optim/adamw.py "
        "(AdamW8bit.__init__)"
        for key in ("lr", "betas", "eps", "weight_decay")
    },
)

_spec(
    "lion",
    factory=po_factory("Lion"),
    source=po_source("Lion"),
    paper="Chen et al., Symbolic Discovery of Optimization Algorithms, 2023, arXiv:2302.06675",
    policy=every_param("Lion"),
    # Paper: lr 3-10x below AdamW's, betas (0.9, 0.99), decoupled weight decay.
    default_hparams={"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0},
    state_formula="params × B (exp_avg, param dtype); step lives in the param group (0 B)",
    expected_state_bytes=per_param(tensor_bytes),
    reference="google/automl: lion/lion_pytorch.py (Lion.step); " + runs_as_is(po_source("Lion")),
    deviations=(
        "pytorch_optimizer forms the interpolation and the momentum with lerp, m + (1-β)(g - m), "
        "where the authors write β·m + (1-β)·g: equal up to rounding, which can only flip the "
        "sign of an entry whose interpolation is about 0.",
    ),
    default_sources={
        key: "google/automl: lion/lion_pytorch.py (Lion.__init__); = " + po_default("Lion")
        for key in ("lr", "betas", "weight_decay")
    },
)

_spec(
    "adam_mini",
    factory=_build_adam_mini,
    source=po_source("AdamMini"),
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
    reference=(
        "zyushun/Adam-mini: adam_mini/adam_mini.py (Adam_mini.step, v1.1.1), examples/llama/"
        "train.py (its Llama setup); " + runs_as_is(po_source("AdamMini"))
    ),
    deviations=(
        "pytorch_optimizer.AdamMini has the authors' partition before v1.1.0 (Oct 2024): plain "
        "Adam for embedding and lm_head, one v per tensor for v_proj, o_proj and the MLP. Since "
        "v1.1.0 the authors keep one v per row (token) for embedding and lm_head and one per "
        "output neuron for v_proj, o_proj and the MLP, so optbench keeps more state for the "
        "former and a coarser v for the latter than the authors' current code.",
        "All state is float32 whatever the param dtype; the authors' follows the param dtype "
        "(bf16 in bf16 runs), so the bf16 state here is larger than theirs.",
    ),
    default_sources={
        "lr": (
            "zyushun/Adam-mini: adam_mini/adam_mini.py (Adam_mini.__init__; the library's "
            "default is 1.0); examples/llama/train_configs/*.toml use 1e-4 to 2e-4"
        ),
        "betas": "zyushun/Adam-mini: examples/llama/train.py (Adam_mini(betas=(0.9, 0.95)))",
        "eps": "zyushun/Adam-mini: adam_mini/adam_mini.py (Adam_mini.__init__); = library default",
        "weight_decay": (
            "zyushun/Adam-mini: examples/llama/train.py (weight_decay=0.1); = library default"
        ),
    },
)

_ADAM_LIKE = "2 × params × B (exp_avg, {second}, param dtype); step lives in the param group"

_spec(
    "adabelief",
    factory=po_factory("AdaBelief"),
    source=po_source("AdaBelief"),
    paper=(
        "Zhuang et al., AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed "
        "Gradients, NeurIPS 2020, arXiv:2010.07468"
    ),
    policy=every_param("AdaBelief"),
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
    reference=(
        "juntang-zhuang/Adabelief-Optimizer: pypi_packages/adabelief_pytorch0.2.1/"
        "adabelief_pytorch/AdaBelief.py (AdaBelief.step); " + runs_as_is(po_source("AdaBelief"))
    ),
    deviations=(),
    default_sources={
        **{
            key: _ADABELIEF_INIT + "; = " + po_default("AdaBelief")
            for key in ("lr", "betas", "eps", "weight_decay", "weight_decouple")
        },
        "rectify": (
            po_default("AdaBelief") + "; juntang-zhuang/Adabelief-Optimizer: README.md "
            "(usage example, rectify=False); the authors' package defaults to True, as does "
            "their README's Transformer row"
        ),
    },
)

_spec(
    "exadam",
    factory=po_factory("EXAdam"),
    source=po_source("EXAdam"),
    paper=(
        "Adly, EXAdam: The Power of Adaptive Cross-Moments, 2024, arXiv:2412.20302"
    ),
    policy=every_param("EXAdam"),
    default_hparams={"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    state_formula=_ADAM_LIKE.format(second="exp_avg_sq"),
    expected_state_bytes=per_param(lambda p: 2 * tensor_bytes(p)),
    reference=(
        "AhmedMostafa16/EXAdam: exadam.py (EXAdam.step, 2025-04 version, without the first "
        "release's ln(sqrt(2(t+1))) step-size factor); " + runs_as_is(po_source("EXAdam"))
    ),
    deviations=(),
    default_sources={
        "lr": _EXADAM_INIT + "; = library default; its README suggests 3e-4 for NLP",
        "betas": _EXADAM_INIT + "; = library default",
        "eps": _EXADAM_INIT + "; = library default",
        "weight_decay": _EXADAM_INIT + "; = library default; its README suggests 1e-5 for NLP",
    },
)

_spec(
    "adamp",
    factory=po_factory("AdamP"),
    source=po_source("AdamP"),
    paper=(
        "Heo et al., AdamP: Slowing Down the Slowdown for Momentum Optimizers on "
        "Scale-invariant Weights, ICLR 2021, arXiv:2006.08217"
    ),
    policy=every_param("AdamP (projection on scale-invariant weights, cosine test delta)"),
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
    reference=(
        "clovaai/AdamP: adamp/adamp.py (AdamP.step, AdamP._projection); "
        + runs_as_is(po_source("AdamP"))
    ),
    deviations=(
        "pytorch_optimizer adds eps before the bias correction, sqrt(1-β2^t) / (sqrt(v) + eps), "
        "the authors after it, 1 / (sqrt(v) / sqrt(1-β2^t) + eps): the effective eps is "
        "eps / sqrt(1-β2^t), ~32× larger at step 1; it matters only while sqrt(v̂) is near eps.",
    ),
    default_sources={
        key: "clovaai/AdamP: adamp/adamp.py (AdamP.__init__); = " + po_default("AdamP")
        for key in ("lr", "betas", "eps", "weight_decay", "delta", "wd_ratio", "nesterov")
    },
)


def _spam_bytes(p: nn.Parameter) -> int:
    # Every 2-D param gets a bool update mask, even at density 1 (all True).
    mask = p.numel() if p.ndim == 2 else 0
    return 2 * tensor_bytes(p) + mask


_spec(
    "spam",
    factory=po_factory("SPAM", fixed={"density": 1.0}),
    source=po_source("SPAM") + " (density=1.0)",
    paper=(
        "Huang et al., SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM Training, "
        "ICLR 2025, arXiv:2501.06842"
    ),
    policy=every_param("SPAM (dense: density 1)"),
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
    reference=(
        "TianjinYellow/SPAM-Optimizer: galore_torch/SPAM.py (AdamW.step, exported as SPAM), "
        "torchrun_main.py (param groups); " + runs_as_is(po_source("SPAM") + " with density 1")
    ),
    deviations=(
        "The library gives every 2-D param a mask (embedding and lm_head too), the authors only "
        "the attention and MLP weights; at density 1 every mask is all True, so only the state "
        "differs (the masks, counted in the formula).",
        "Weight decay reaches the masked params; in the authors' code it does not (it decays a "
        "copy, p.data[mask].add_(...)). No effect at the default 0.",
        "The warm-up after each momentum reset runs one step ahead of the authors' "
        "CosineDecay.get_dr (scale 1 - dr(t+1), theirs 1 - dr(t)); negligible.",
    ),
    default_sources={
        "lr": _SPAM_INIT + " and ReadMe.md (lr=0.001); scripts/130m.sh uses 8e-4",
        "betas": _SPAM_INIT + "; = library default",
        "eps": _SPAM_INIT + "; = library default",
        "weight_decay": _SPAM_INIT + "; the scripts pass --weight_decay 0",
        "warmup_epoch": (
            po_default("SPAM") + "; the authors' class default and ReadMe.md use 150, and "
            "their torchrun_main.py passes the lr warm-up (--warmup_steps) instead"
        ),
        "threshold": _SPAM_INIT + "; = library default",
        "grad_accu_steps": _SPAM_INIT + "; = library default",
        "update_proj_gap": _SPAM_INIT + ": DeltaT=500; = library default",
    },
)

_spec(
    "stable_spam",
    factory=po_factory("StableSPAM"),
    source=po_source("StableSPAM"),
    paper=(
        "Huang et al., Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit Adam, "
        "2025, arXiv:2502.17055"
    ),
    policy=every_param("Stable-SPAM"),
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
    reference=(
        "TianjinYellow/StableSPAM: galore_torch/stablespam.py (StableSPAM.step), utils/setup.py; "
        + runs_as_is(po_source("StableSPAM"))
    ),
    deviations=(
        "t_max, the cosine warm-up of beta1 and gamma1 (eta_min 0.5), is off: its None default "
        "cannot be overridden with an int by registry coercion. The authors' LLaMA runs set it "
        "to the total steps (total_T, utils/argparse.py default 20000; ReadMe.MD: better LLMs).",
        "At a momentum reset (every update_proj_gap steps) the library zeroes the moments before "
        "that step's update and keeps the global step in the norm and max-clipping bias "
        "corrections; the authors' code still updates with the old moments on that step (bias-"
        "corrected as step 1) and restarts the per-param step counter of those corrections at 1, "
        "which loosens the spike clipping for a while after each reset.",
    ),
    default_sources={
        "lr": _STABLE_INIT + "; ReadMe.MD's BF16 LLaMA-130M example uses 8e-4",
        "betas": _STABLE_INIT + "; = library default",
        "gamma1": _STABLE_INIT + " and ReadMe.MD usage; its BF16 LLaMA-130M example uses 0.85",
        "gamma2": _STABLE_INIT + " and ReadMe.MD usage; its BF16 LLaMA-130M example uses 0.99999",
        "theta": _STABLE_INIT + ": gamma3=0.999, as in every ReadMe.MD example",
        "eps": _STABLE_INIT,
        "weight_decay": _STABLE_INIT + "; ReadMe.MD examples pass --weight_decay 0",
        "update_proj_gap": _STABLE_INIT + " and ReadMe.MD's BF16 LLaMA-130M example",
    },
)

_spec(
    "sgd_sai",
    factory=po_factory("SGDSaI", fixed={"momentum": 0.9}),
    source=po_source("SGDSaI") + " (momentum=0.9)",
    paper=(
        "Xu et al., No More Adam: Learning Rate Scaling at Initialization is All You Need, "
        "2024, arXiv:2412.11768"
    ),
    policy=every_param("SGD-SaI (per-tensor lr scale from the first step's gradient SNR)"),
    # momentum fixed: at 0 no momentum_buffer is kept.
    default_hparams={"lr": 1e-2, "weight_decay": 1e-2, "eps": 1e-8},
    state_formula=(
        "params × B (momentum_buffer) + B per param tensor (0-d gsnr), param dtype"
    ),
    expected_state_bytes=per_param(lambda p: tensor_bytes(p) + p.element_size()),
    reference=(
        "AnonymousAlethiometer/SGD_SaI: sgd_sai/sgd_sai.py (SGD_sai.warmup_step, SGD_sai.step; "
        "v1.0.3); " + runs_as_is(po_source("SGDSaI") + " with momentum 0.9")
    ),
    deviations=(
        "For 1-D params (the norm weights) the library's lr scale is the gradient norm ||g||, "
        "not the g-SNR ||g|| / (std(g) + eps) the authors compute for every tensor, so the "
        "norms' effective lr differs from theirs.",
        "The momentum buffer starts at zero and is an EMA, so step 1 moves by (1 - momentum)·g "
        "and the first ~10 steps are smaller; the authors start the buffer at g.",
    ),
    default_sources={
        key: "AnonymousAlethiometer/SGD_SaI: sgd_sai/sgd_sai.py (SGD_sai.__init__); = "
        + po_default("SGDSaI")
        for key in ("lr", "weight_decay", "eps")
    },
)

_HESSIAN_POLICY = " (model switched to eager attention: Hessian-vector products)"

_spec(
    "adahessian",
    factory=_hessian_factory("AdaHessian"),
    source=po_source("AdaHessian"),
    paper=(
        "Yao et al., ADAHESSIAN: An Adaptive Second Order Optimizer for Machine Learning, "
        "AAAI 2021, arXiv:2006.00719"
    ),
    policy=every_param("AdaHessian") + _HESSIAN_POLICY,
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
    reference=(
        "amirgholami/adahessian: instruction/adahessian.py (Adahessian.get_trace, "
        "Adahessian.step), transformer/fairseq/optim/adahessian.py; "
        + runs_as_is(po_source("AdaHessian"))
    ),
    deviations=(
        "No spatial averaging: the authors average |Hv| over each row of a 2-D weight "
        "(spatial_average_block_size -1; their Transformer script averages blocks of 32) before "
        "the second moment; the library keeps the per-element estimate, a noisier denominator.",
        _EAGER,
    ),
    default_sources={
        **{key: _ADAHESSIAN_INIT for key in ("eps", "weight_decay", "hessian_power")},
        "lr": _ADAHESSIAN_INIT + "; their Transformer script (transformer/config/adahessian.sh) "
        "uses 0.047",
        "betas": _ADAHESSIAN_INIT + "; their Transformer script uses (0.9, 0.98)",
        "update_period": _ADAHESSIAN_INIT + " (a Hessian estimate every step); = library default",
        "num_samples": _ADAHESSIAN_INIT + " (one vector per step); = library default",
        "hessian_distribution": _ADAHESSIAN_INIT + " (Rademacher v); = library default",
    },
)

_spec(
    "sophia",
    factory=_hessian_factory("SophiaH"),
    source=po_source("SophiaH"),
    paper=(
        "Liu et al., Sophia: A Scalable Stochastic Second-order Optimizer for Language Model "
        "Pre-training, ICLR 2024, arXiv:2305.14342 (SophiaH: Hutchinson estimator)"
    ),
    policy=every_param("SophiaH") + _HESSIAN_POLICY,
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
    reference=(
        "Liuhong99/Sophia: sophia.py (SophiaG.step, SophiaG.update_hessian), the authors' only "
        "released code (Sophia-G); no authors' Sophia-H code found. "
        + runs_as_is(po_source("SophiaH") + ", the paper's Hutchinson variant")
    ),
    deviations=(
        "Hutchinson estimate u ⊙ Hu every update_period steps (the paper's Sophia-H); the "
        "authors' released SophiaG instead uses the Gauss-Newton-Bartlett estimate (squared "
        "gradients of labels sampled from the model).",
        "The update is lr·clip(m / max(h, eps), ±p) where the authors write "
        "lr·clip(m / (ρ·bs·h + 1e-15), 1), bs the tokens per batch: the same form with their "
        "lr = lr·p, so lr here is not comparable with theirs.",
        _EAGER,
        "SophiaH differentiates the gradient only every update_period (10) steps, yet the "
        "double backward runs on every step: its time and memory are overstated (the authors' "
        "SophiaG needs no double backward at all).",
    ),
    default_sources={
        "lr": (
            po_default("SophiaH") + "; lr × p = 6e-4, the authors' GPT-2 small lr "
            "(Liuhong99/Sophia: config/train_gpt2_small_sophiag.py)"
        ),
        "betas": po_default("SophiaH") + "; the authors' SophiaG uses (0.965, 0.99)",
        "p": po_default("SophiaH") + "; = rho in the authors' README example",
        "eps": po_default("SophiaH"),
        "weight_decay": (
            po_default("SophiaH") + "; the authors' SophiaG default is 0.1, their GPT-2 "
            "configs 0.2"
        ),
        "update_period": (
            po_default("SophiaH") + "; = the authors' Hessian interval (Liuhong99/Sophia: "
            "config/train_gpt2_small_sophiag.py, interval = 10)"
        ),
        "num_samples": po_default("SophiaH"),
        "hessian_distribution": po_default("SophiaH"),
    },
)

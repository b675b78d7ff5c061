"""LLaMA size registry -> transformers.LlamaForCausalLM, built from a config, never from a hub.

The five paper sizes are the configs GaLore / APOLLO / SCALE trained (vocab 32000,
rms_norm_eps 1e-6, silu, untied embeddings). The small sizes exist so a 2-core CPU can
train something real in seconds; they use a smaller vocabulary because at vocab 32000 the
embeddings alone would be most of a 9M-parameter model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from optbench.errors import OptbenchError, did_you_mean
from optbench.metrics import DTYPES


@dataclass(frozen=True)
class ModelSize:
    """One LLaMA shape. Field names follow transformers.LlamaConfig."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    max_position_embeddings: int
    vocab_size: int = 32000
    note: str = ""

    def n_params(self) -> int:
        """Parameter count from the shape alone (untied embeddings, no biases)."""
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        per_layer = 4 * h * h + 3 * h * i + 2 * h  # q,k,v,o + gate,up,down + two RMSNorms
        return 2 * v * h + self.num_hidden_layers * per_layer + h  # embed + lm_head + final norm

    def matmul_params(self) -> int:
        """Weights that multiply activations: every Linear of the decoder layers and lm_head.
        The embedding is a lookup (no FLOPs); the norms' few elementwise FLOPs are left out."""
        h, i = self.hidden_size, self.intermediate_size
        return self.num_hidden_layers * (4 * h * h + 3 * h * i) + self.vocab_size * h

    def flops_per_token(self, seq_len: int) -> int:
        """Model FLOPs of one training token, forward and backward (PaLM, Chowdhery et al.
        2022, arXiv:2204.02311, Appendix B): 6·N for the matmul weights (2 forward, 4 backward
        per weight) plus 12·L·h·T for attention's two matmuls (QKᵀ and AV) over T positions,
        counted in full as PaLM and torch's FLOP counter count them, not halved for the
        causal mask. Activation recomputation is not counted: model FLOPs, not hardware FLOPs.
        """
        attention = 12 * self.num_hidden_layers * self.hidden_size * seq_len
        return 6 * self.matmul_params() + attention


MODEL_SIZES: dict[str, ModelSize] = {
    m.name: m
    for m in [
        ModelSize("llama_tiny", 64, 172, 2, 4, 256, vocab_size=512, note="unit tests"),
        ModelSize("llama_9m", 256, 688, 6, 4, 1024, vocab_size=8192, note="CPU, quick suite"),
        ModelSize("llama_20m", 384, 1024, 8, 6, 1024, vocab_size=8192, note="CPU, quick suite"),
        ModelSize("llama_60m", 512, 1376, 8, 8, 1024, note="GaLore/APOLLO/SCALE config"),
        ModelSize("llama_130m", 768, 2048, 12, 12, 1024, note="GaLore/APOLLO/SCALE config"),
        ModelSize("llama_350m", 1024, 2736, 24, 16, 1024, note="GaLore/APOLLO/SCALE config"),
        ModelSize("llama_1b", 2048, 5461, 24, 32, 1024, note="GaLore/APOLLO/SCALE config"),
        ModelSize("llama_7b", 4096, 11008, 32, 32, 2048, note="GaLore/APOLLO/SCALE config"),
    ]
}


_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # optbench.metrics.DTYPES


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a dtype name a suite may give ('fp32', 'bf16')."""
    try:
        return _TORCH_DTYPES[name]
    except KeyError:
        raise OptbenchError(f"dtype '{name}' is not one of: {', '.join(DTYPES)}") from None


def get_model_size(name: str) -> ModelSize:
    try:
        return MODEL_SIZES[name]
    except KeyError:
        known = ", ".join(MODEL_SIZES)
        raise OptbenchError(
            f"unknown model '{name}'{did_you_mean(name, list(MODEL_SIZES))}; known models: {known}"
        ) from None


def llama_config(size: ModelSize):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=size.vocab_size,
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers,
        num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_attention_heads,
        max_position_embeddings=size.max_position_embeddings,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )


def build_model(
    name: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
    layers: int | None = None,
) -> torch.nn.Module:
    """A freshly initialised LlamaForCausalLM of that size (seed the RNG first for determinism);
    with `layers`, the same shape with that many decoder layers (the estimator's shallow
    traces)."""
    from transformers import LlamaForCausalLM

    size = get_model_size(name)
    if layers is not None:
        size = dataclasses.replace(size, num_hidden_layers=layers)
    with torch.device(device):
        model = LlamaForCausalLM(llama_config(size))
    return model.to(dtype=dtype)

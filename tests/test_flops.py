"""Model FLOPs per token against torch's own FLOP counter, and the GPU peak table's matching."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from optbench.hardware import GPU_PEAKS, gpu_peak, peak_tflops
from optbench.models import MODEL_SIZES, build_model, get_model_size


@pytest.mark.parametrize("seq_len", [16, 48])
def test_flops_per_token_is_what_torch_counts_for_forward_and_backward(seq_len):
    """torch's FlopCounterMode counts every matmul of the step, attention's included (in full,
    as PaLM's formula does): the closed form must equal it exactly. Eager attention, since the
    counter has no formula for SDPA's fused CPU kernel (it would count attention as 0)."""
    torch.manual_seed(0)
    model = build_model("llama_tiny")
    model.set_attn_implementation("eager")
    batch = 3
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    expected = get_model_size("llama_tiny").flops_per_token(seq_len) * batch * seq_len
    assert counter.get_total_flops() == expected


def test_matmul_params_are_the_weights_of_every_linear():
    model = build_model("llama_tiny")
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert get_model_size("llama_tiny").matmul_params() == linear


def test_flops_per_token_of_llama_7b_at_2048_by_hand():
    size = MODEL_SIZES["llama_7b"]
    n = 32 * (4 * 4096**2 + 3 * 4096 * 11008) + 32000 * 4096
    assert size.flops_per_token(2048) == 6 * n + 12 * 32 * 4096 * 2048


def test_tflops_keep_three_digits_without_a_dangling_point():
    from optbench.metrics import format_tflops

    assert [format_tflops(v) for v in (0.14, 0.0123, 12.0, 99.96, 412.7)] == [
        "0.140", "0.0123", "12.0", "100", "413"]


@pytest.mark.parametrize(("name", "label"), [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"),
    ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200"),
    ("NVIDIA H200 NVL", "H200 NVL"),
    ("NVIDIA GH200 480GB", "GH200"),
    ("NVIDIA A100-SXM4-80GB", "A100"),
    ("NVIDIA A100 80GB PCIe", "A100"),
    ("NVIDIA A10", "A10"),
    ("NVIDIA L4", "L4"),
    ("NVIDIA L40S", "L40S"),
])
def test_gpu_names_match_by_whole_words(name, label):
    assert gpu_peak(name).label == label


@pytest.mark.parametrize("name", ["NVIDIA A10G", "NVIDIA L40", "Tesla V100-SXM2-32GB",
                                  "NVIDIA GeForce RTX 4090", "x86_64", ""])
def test_a_gpu_outside_the_table_has_no_peak(name):
    """'A10G' is not the A10, 'L40' not the L40S: no MFU rather than a wrong one."""
    assert gpu_peak(name) is None and peak_tflops(name, "bf16") is None


def test_the_table_has_both_dtypes_and_no_entry_is_shadowed():
    for i, entry in enumerate(GPU_PEAKS):
        assert set(entry.tflops) == {"bf16", "fp32"} and entry.source
        assert entry.tflops["bf16"] > entry.tflops["fp32"] > 0
        # an earlier entry whose words are a subset would always win over this one
        assert not any(set(e.words) <= set(entry.words) for e in GPU_PEAKS[:i])

"""Peak dense matmul throughput of known GPUs, the denominator of MFU (model FLOPs utilization).

MFU = model FLOPs per second achieved / (the device's peak × devices). The peak is the vendor's
dense figure (no 2:4 sparsity) for the dtype the weights train in: bf16 on the tensor cores;
fp32 without TF32, since torch multiplies fp32 matrices in full fp32 unless
`torch.backends.cuda.matmul.allow_tf32` is set (its default is off). A GPU missing here, and
every CPU, gets no MFU: throughput in TFLOP/s only.

Names are matched by whole words of `torch.cuda.get_device_name()` ("NVIDIA H100 80GB HBM3",
"NVIDIA A100-SXM4-80GB"), never by substring: "L40S" contains "L4" and "A100" contains "A10".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DATASHEET = "NVIDIA {} datasheet, dense"


@dataclass(frozen=True)
class GpuPeak:
    """One GPU's peaks in TFLOP/s by optbench dtype name; the words that name it."""

    label: str
    words: tuple[str, ...]  # all of them must be words of the device name
    tflops: dict[str, float]
    source: str


# Most specific first: the first entry whose words are all in the name wins.
GPU_PEAKS: tuple[GpuPeak, ...] = (
    GpuPeak("H100 PCIe", ("h100", "pcie"), {"bf16": 756.5, "fp32": 51.0},
            _DATASHEET.format("H100 Tensor Core GPU (PCIe)")),
    GpuPeak("H100 NVL", ("h100", "nvl"), {"bf16": 835.5, "fp32": 60.0},
            _DATASHEET.format("H100 Tensor Core GPU (NVL)")),
    GpuPeak("H100 SXM", ("h100",), {"bf16": 989.5, "fp32": 67.0},
            _DATASHEET.format("H100 Tensor Core GPU (SXM)")),
    GpuPeak("H200 NVL", ("h200", "nvl"), {"bf16": 835.5, "fp32": 60.0},
            _DATASHEET.format("H200 Tensor Core GPU (NVL)")),
    GpuPeak("H200", ("h200",), {"bf16": 989.5, "fp32": 67.0},
            _DATASHEET.format("H200 Tensor Core GPU (SXM)")),
    GpuPeak("GH200", ("gh200",), {"bf16": 989.5, "fp32": 67.0},
            _DATASHEET.format("GH200 Grace Hopper Superchip")),
    GpuPeak("A100", ("a100",), {"bf16": 312.0, "fp32": 19.5},
            _DATASHEET.format("A100 Tensor Core GPU")),
    GpuPeak("A10", ("a10",), {"bf16": 125.0, "fp32": 31.2}, _DATASHEET.format("A10 Tensor Core GPU")),
    GpuPeak("L40S", ("l40s",), {"bf16": 362.0, "fp32": 91.6}, _DATASHEET.format("L40S GPU")),
    GpuPeak("L4", ("l4",), {"bf16": 121.0, "fp32": 30.3}, _DATASHEET.format("L4 Tensor Core GPU")),
)


def name_words(device_name: str) -> set[str]:
    """'NVIDIA A100-SXM4-80GB' -> {'nvidia', 'a100', 'sxm4', '80gb'}."""
    return set(re.split(r"[^0-9a-z]+", device_name.lower())) - {""}


def gpu_peak(device_name: str) -> GpuPeak | None:
    """The table's entry for a CUDA device name, or None when the GPU is not in the table."""
    words = name_words(device_name)
    return next((g for g in GPU_PEAKS if set(g.words) <= words), None)


def peak_tflops(device_name: str, dtype: str) -> float | None:
    """The dense peak for this GPU and weight dtype ('bf16', 'fp32'), or None if unknown."""
    peak = gpu_peak(device_name)
    return peak.tflops.get(dtype) if peak else None

"""Pure tensor kernels of the in-house updates: norms, normalizations, matrix iterations.

Functions of tensors and numbers only (no optimizer state, no param groups), so one kernel
serves every update rule that needs it (SCALE and its ablations share `normalized_step_`;
Muon-style and ROOT share `newton_schulz`) and can be tested against a reference alone.
Matrix kernels take [..., m, n] batches. Kernels ending in "_" work in place, like torch's.
"""

from __future__ import annotations

import math

import torch

MUON_NS = (3.4445, -4.7750, 2.0315)  # Muon's quintic Newton-Schulz coefficients (a, b, c)
# ROOT's per-shape coefficients, keyed by (min, max) of the matrix shape: COEFF_MAP_CANONICAL
# of the authors' `root5` (huawei-noah/Efficient-Computing, Optimization/ROOT). Every other
# shape falls back to MUON_NS there.
ROOT_NS = {
    (2048, 2048): (3.4916, -4.8224, 2.1095),
    (2048, 16384): (3.1943, -3.8221, 1.5322),
    (2048, 3072): (3.4509, -4.5790, 1.9325),
    (2048, 8192): (2.9794, -3.6674, 1.6207),
}


def root_ns_coefficients(m: int, n: int) -> tuple[float, float, float]:
    """ROOT's quintic coefficients for an [m, n] matrix: the table's, else Muon's."""
    return ROOT_NS.get((min(m, n), max(m, n)), MUON_NS)


_BLOCK_ELEMS = 1 << 18  # 1 MB of float32: a row block that stays in L2 between its two ops


# --- per-row and per-column normalization ----------------------------------------------


def normalized_step_(
    p: torch.Tensor, d: torch.Tensor, dim: int, eps: float, alpha: float
) -> None:
    """p += alpha * d / max(rms(d over dim), eps), the rms kept per row (dim 1) or column (dim 0).

    rms = ||d|| / sqrt(n), so alpha / max(rms, eps) = alpha*sqrt(n) / max(||d||, eps*sqrt(n)):
    one reduction, two in-place ops on the small [rows, 1] / [1, cols] result, and one
    multiply-add whose `value` carries alpha*sqrt(n) and whose broadcast scale means no
    normalized copy of d is ever materialized. The inverse norms are cast to d's dtype because
    a bf16 addcmul_ with a float32 operand converts whole bf16 tensors to float32 first (5x
    slower step on CPU).
    """
    root = math.sqrt(d.shape[dim])  # a DTensor's shape is the whole matrix's
    inverse = axis_norm(d, dim).clamp_min_(eps * root).reciprocal_()
    if is_sharded(p):  # FSDP2: update the local shard with its block of the norms
        p, d = p.to_local(), d.to_local()
    p.addcmul_(d, inverse.to(d.dtype), value=alpha * root)


def is_sharded(t: torch.Tensor) -> bool:
    """A DTensor (an FSDP2 shard); checked by its API, so torch.distributed.tensor (0.5 s) is
    imported only where one exists."""
    return hasattr(t, "placements") and hasattr(t, "to_local")


def shard_like(whole: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`whole`, the same on every rank, as a DTensor laid out like the DTensor `param`: each
    rank takes its own chunk, with no communication (src_data_rank=None)."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(whole, param.device_mesh, param.placements, src_data_rank=None)


def axis_norm(t: torch.Tensor, dim: int) -> torch.Tensor:
    """||t|| over dim, keepdim, as float32 or wider (reductions accumulate in float32 anyway);
    for a DTensor, the local block matching its shard (`sharded_axis_norm`)."""
    acc = torch.promote_types(t.dtype, torch.float32)
    if is_sharded(t):
        return sharded_axis_norm(t, dim).to(acc)
    if dim == 0 and t.device.type == "cpu":
        return column_norm_cpu(t, acc)
    # No dtype= argument: for bf16 that would first copy the whole tensor to float32.
    return torch.linalg.vector_norm(t, dim=dim, keepdim=True).to(acc)


def sharded_axis_norm(t: torch.Tensor, dim: int) -> torch.Tensor:
    """||t|| over dim of a DTensor, as the plain block that lines up with t's local shard.

    DTensor's own reduction: where `dim` is the sharded one (FSDP2 shards rows, so the
    embedding's norm over the vocab), the partial norms are all-reduced, one [1, n] vector per
    step; where it is not (a norm per row), nothing is communicated.
    """
    from torch.distributed.tensor import Replicate

    norms = torch.linalg.vector_norm(t, dim=dim, keepdim=True)
    placements = [Replicate() if p.is_partial() else p for p in norms.placements]
    return norms.redistribute(placements=placements).to_local()


def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(t)


def column_norm_cpu(t: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """Column norms [1, n] of a tall matrix: squares of ~1 MB row blocks, summed by BLAS.

    torch's CPU vector_norm over dim 0 is a strided reduction, ~20x slower than reading the
    tensor once (65 ms for the 32000x512 embedding); squaring a cache-sized block and adding
    `ones @ block` into the sums costs about two reads.
    """
    rows = max(1, _BLOCK_ELEMS // t.shape[1])
    block = torch.empty(min(rows, t.shape[0]), t.shape[1], dtype=acc)
    ones = torch.ones(1, block.shape[0], dtype=acc)
    sumsq = torch.zeros(1, t.shape[1], dtype=acc)
    chunks = t.split(rows)
    if _is_fake(t):  # a memory trace: every block reuses the buffers above, one shows it all
        chunks = chunks[:1]
    for chunk in chunks:
        squares = block[: chunk.shape[0]]
        if chunk.dtype == acc:
            torch.mul(chunk, chunk, out=squares)
        else:  # widen first so squares of bf16 values are not rounded to bf16
            squares.copy_(chunk).square_()
        sumsq.addmm_(ones[:, : chunk.shape[0]], squares)
    return sumsq.sqrt_()


# --- matrix iterations -----------------------------------------------------------------


def tall_to_wide(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Work on the side with fewer rows: X X^T is then the smaller Gram matrix."""
    tall = x.shape[-2] > x.shape[-1]
    return (x.mT if tall else x), tall


def frobenius_norm(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True)


def frobenius_normalized(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x / frobenius_norm(x).clamp_min(eps)


def newton_schulz(x: torch.Tensor, steps: int, eps: float, coeffs=MUON_NS) -> torch.Tensor:
    """Muon's quintic iteration X <- aX + (bA + cA^2)X, A = XX^T, from X0 = G/(||G||_F + eps).

    "+ eps" as in Keller Jordan's Muon and ROOT's code (torch.optim.Muon clamps instead).
    """
    a, b, c = coeffs
    x, tall = tall_to_wide(x)
    x = x / (frobenius_norm(x) + eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


def whiten(x: torch.Tensor, steps: int, eps: float) -> torch.Tensor:
    """(X X^T)^{-1/2} X by the coupled Newton-Schulz iteration for the inverse square root.

    With X scaled to ||X||_F = 1, Y = XX^T has eigenvalues in [0, 1], inside the iteration's
    convergence region (0, 3); the scale cancels in Z X.
    """
    x, tall = tall_to_wide(x)
    x = frobenius_normalized(x, eps)
    y = x @ x.mT
    eye = torch.eye(y.shape[-1], dtype=y.dtype, device=y.device).expand_as(y)
    z = eye
    for _ in range(steps):
        t = 0.5 * (3.0 * eye - z @ y)
        y, z = y @ t, t @ z
    out = z @ x
    return out.mT if tall else out


def sinkhorn(x: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    """SR-Sinkhorn, `iters` times: rows to l2 norm sqrt(n), then columns to sqrt(m)."""
    m, n = x.shape[-2:]
    for _ in range(iters):
        x = x * (math.sqrt(n) / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(eps))
        x = x * (math.sqrt(m) / torch.linalg.vector_norm(x, dim=-2, keepdim=True).clamp_min(eps))
    return x


def quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row q-quantile of [b, N], linear interpolation (torch.quantile caps N at 2^24)."""
    pos = q * (x.shape[-1] - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    low = torch.kthvalue(x, lo + 1, dim=-1).values
    return torch.lerp(low, torch.kthvalue(x, hi + 1, dim=-1).values, pos - lo)

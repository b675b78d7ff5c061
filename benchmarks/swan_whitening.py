"""How close SWAN's Newton-Schulz whitening gets to the exact one, by step count.

For each shape and kind of gradient: GradNorm (per-row centring and scaling, as the swan entry),
then `kernels.whiten` with k steps, against the exact whitening (G G^T)^{-1/2} G = U V^T from an
SVD. Printed: the relative Frobenius distance of the direction (both rescaled to the same norm, as
SWAN rescales its update), float64.

    python benchmarks/swan_whitening.py [--steps 5 10 20 40] [--seed 0]
"""

from __future__ import annotations

import argparse

import torch

from optbench.optimizers.kernels import whiten

SHAPES = [(64, 172), (512, 1376), (2048, 2048)]  # llama_tiny MLP, llama_60m MLP, llama_1b attn


def grad_norm(g: torch.Tensor) -> torch.Tensor:
    mean = g.mean(dim=1, keepdim=True)
    std = (g - mean).square().mean(dim=1, keepdim=True).sqrt()
    return (g - mean) / std.clamp_min(1e-8)


def exact_whitening(x: torch.Tensor) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    keep = s > 1e-10 * s.max()  # GradNorm's centring makes the tall Gram singular
    return u[:, keep] @ vh[keep]


def distance(approx: torch.Tensor, exact: torch.Tensor) -> float:
    approx = approx * (exact.norm() / approx.norm())
    return float((approx - exact).norm() / exact.norm())


def gradients(shape: tuple[int, int], gen: torch.Generator) -> dict[str, torch.Tensor]:
    noise = torch.randn(shape, generator=gen, dtype=torch.float64)
    low = torch.randn(shape[0], 8, generator=gen, dtype=torch.float64)
    low = low @ torch.randn(8, shape[1], generator=gen, dtype=torch.float64)
    return {"gaussian": noise, "rank-8 + noise": low + 0.1 * noise}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 40])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(args.seed)
    print("| shape | gradient | " + " | ".join(f"{k} steps" for k in args.steps) + " |")
    print("|---|---|" + "---:|" * len(args.steps))
    for shape in SHAPES:
        for kind, g in gradients(shape, gen).items():
            x = grad_norm(g)
            exact = exact_whitening(x)
            cells = [f"{distance(whiten(x, k, 1e-8), exact):.3f}" for k in args.steps]
            print(f"| {shape[0]} × {shape[1]} | {kind} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()

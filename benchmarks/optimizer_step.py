"""Time one `optimizer.step()` per optimizer against the cheapest possible update.

The floor is `torch._foreach_add_(params, grads, alpha=-lr)`: one read of each param and
grad and one write of each param, which no optimizer that reads the gradient can beat.

    python benchmarks/optimizer_step.py --model llama_60m --dtype fp32 --repeats 10 --rounds 3
    python benchmarks/optimizer_step.py --optimizers adamw:fused=true scale
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from typing import Callable

import torch

from optbench.models import build_model
from optbench.optimizers import build_optimizer, parse_choice

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
REFERENCE = "adamw:fused=true"  # the "ratio to AdamW (fused)" column divides by this row
DEFAULT_OPTIMIZERS = ["adamw", "adamw:foreach=true", REFERENCE, "sgd", "scale"]
FLOOR = "floor (`_foreach_add_`)"


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> list:
    """Wall time of each of `repeats` calls after `warmup` untimed ones (synchronized on CUDA)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def measure(model: torch.nn.Module, choices: list[str], args: argparse.Namespace) -> dict:
    """Median step ms of the floor and of each choice, keyed by label."""
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad for p in params]
    floor_step = functools.partial(torch._foreach_add_, params, grads, alpha=-1e-6)
    samples: dict[str, list[float]] = {FLOOR: [], **{choice: [] for choice in choices}}
    # Rounds interleave the candidates, so a burst of load elsewhere on the machine
    # lands on all of them rather than on whichever happened to be running.
    for _ in range(args.rounds):
        with torch.no_grad():
            samples[FLOOR] += time_ms(floor_step, device, args.warmup, args.repeats)
        for choice in choices:
            name, hparams = parse_choice(choice)
            optimizer = build_optimizer(name, model, **hparams)
            samples[choice] += time_ms(optimizer.step, device, args.warmup, args.repeats)
            del optimizer  # free its state before the next one allocates
    return {key: statistics.median(times) for key, times in samples.items()}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="llama_60m")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per round")
    parser.add_argument(
        "--optimizers", nargs="+", default=DEFAULT_OPTIMIZERS,
        help="name[:key=value,...] each, e.g. adamw:fused=true",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(cores or 1)
    torch.manual_seed(0)
    model = build_model(args.model, DTYPES[args.dtype], args.device)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    choices = list(dict.fromkeys([*args.optimizers, REFERENCE]))  # the reference always runs
    median = measure(model, choices, args)

    n = sum(p.numel() for p in model.parameters())
    print(f"{args.model} ({n / 1e6:.1f}M params), {args.dtype}, {args.device}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds}x{args.repeats} steps, "
          f"torch {torch.__version__}\n")
    print("| optimizer | median step ms | ratio to floor | ratio to AdamW (fused) |")
    print("|---|---:|---:|---:|")
    for key, ms in median.items():
        print(f"| {key} | {ms:.2f} | {ms / median[FLOOR]:.2f} | {ms / median[REFERENCE]:.2f} |")


if __name__ == "__main__":
    main()

"""Estimated peak (fake tensors) against the peak measured on real tensors, per optimizer.

On CPU the measurement is the same tensor tracker on real tensors (steps 1 and 2, the larger
peak); on CUDA it is also `torch.cuda.max_memory_allocated`, the allocator's own count.

    python benchmarks/estimate_accuracy.py --models llama_60m llama_130m          # CPU, fp32
    python benchmarks/estimate_accuracy.py --device cuda --dtype bf16 --models llama_60m
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import time
import warnings

import torch

from optbench.engine.trace import Estimator, Workload, measured_peak
from optbench.optimizers import list_specs

MIB = 2**20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["llama_60m", "llama_130m"])
    parser.add_argument("--optimizers", nargs="+", default=[s.name for s in list_specs()])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    return parser.parse_args()


def measured_in_fresh_process(workload: Workload, name: str, device: str) -> dict:
    """Each measurement in its own process, as optbench runs cells: a long loop of real models
    in one process grows its resident memory by fragmentation, and on CUDA one optimizer's
    cached blocks would sit in the next one's numbers."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(measured_peak, workload, name, None, device).result()


def main() -> None:
    args = parse_args()
    warnings.simplefilter("ignore")
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"{args.dtype}, seq {args.seq_len}, batch {args.batch_size}, {device_name}, "
          f"torch {torch.__version__}\n")
    cuda_col = " | CUDA max allocated (MiB) | estimate / CUDA" if args.device == "cuda" else ""
    print(f"| model | optimizer | estimate (MiB) | tracked on real tensors (MiB) | estimate / tracked"
          f"{cuda_col} | estimate s | measure s |")
    print("|---|---|---:|---:|---:|" + ("---:|---:|" if cuda_col else "") + "---:|---:|")
    for model in args.models:
        estimator = Estimator(model, args.dtype)
        workload = Workload(model, args.seq_len, args.batch_size, args.dtype)
        for name in args.optimizers:
            start = time.perf_counter()
            est = estimator.estimate(workload, name)
            est_s, start = time.perf_counter() - start, time.perf_counter()
            if est.error:
                print(f"| {model} | {name} | not traceable: {est.error} |")
                continue
            real = measured_in_fresh_process(workload, name, args.device)
            real_s = time.perf_counter() - start
            tracked = real["tracked_peak_bytes"]
            cuda = ""
            if args.device == "cuda":
                alloc = real["cuda_max_allocated_bytes"]
                cuda = f" | {alloc / MIB:,.1f} | {est.peak_bytes / alloc:.4f}"
                torch.cuda.empty_cache()
            print(f"| {model} | {name} | {est.peak_bytes / MIB:,.1f} | {tracked / MIB:,.1f} | "
                  f"{est.peak_bytes / tracked:.4f}{cuda} | {est_s:.1f} | {real_s:.1f} |", flush=True)


if __name__ == "__main__":
    main()

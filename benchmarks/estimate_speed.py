"""The depth-extrapolated estimate (traces at 2, 3 and 4 layers) against the full trace (--exact):
time side by side in one run, the ratio, and whether every byte agrees.

    python benchmarks/estimate_speed.py                                  # llama_7b x 4, and fit
    python benchmarks/estimate_speed.py --models llama_60m llama_130m --optimizers all --no-fit

Each side starts from a cold estimator (no shared traces), as a fresh `optbench estimate` does;
the imports every command pays once are timed apart.
Exit status 1 when an extrapolated estimate differs from its full trace in any byte.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

from optbench.engine.fit import fit
from optbench.engine.trace import DepthEstimator, Estimate, Estimator, Workload
from optbench.optimizers import list_specs

GIB = 2**30


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["llama_7b"])
    parser.add_argument("--optimizers", nargs="+", default=["adamw", "scale", "apollo_mini", "muon"],
                        help="names, or 'all' for the whole roster")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--fit-memory-gib", type=float, default=80.0)
    parser.add_argument("--no-fit", action="store_true", help="time estimates only")
    return parser.parse_args()


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def same(a: Estimate, b: Estimate) -> bool:
    if a.error or b.error:
        return bool(a.error) == bool(b.error)
    return (a.parts == b.parts and a.optimizer_state_bytes == b.optimizer_state_bytes
            and a.n_params == b.n_params and a.paper_bytes == b.paper_bytes)


def estimates(model: str, names: list[str], args, exact: bool) -> dict[str, Estimate]:
    est = Estimator(model, args.dtype) if exact else DepthEstimator(model, args.dtype, from_layers=0)
    w = Workload(model, args.seq_len, args.batch_size, args.dtype)
    return {n: est.estimate(w, n) for n in names}


def fits(model: str, names: list[str], args, exact: bool) -> dict[str, int]:
    est = Estimator(model, args.dtype) if exact else DepthEstimator(model, args.dtype)
    base = Workload(model, args.seq_len, 1, args.dtype)
    budget = int(args.fit_memory_gib * GIB)
    return {n: fit(est, base, "batch_size", budget, n).largest for n in names}


def main() -> int:
    args = parse_args()
    names = [s.name for s in list_specs()] if args.optimizers == ["all"] else args.optimizers
    warnings.simplefilter("ignore")
    # The imports (transformers, the fake-tensor machinery) cost any command the same few
    # seconds once: pay them before timing, and say how long they took.
    _, t_imports = timed(lambda: Estimator("llama_tiny", args.dtype).estimate(
        Workload("llama_tiny", 32, 1, args.dtype), "adamw"))
    print(f"imports and first trace: {t_imports:.1f} s (not in the times below)")
    differ = 0
    for model in args.models:
        fast, t_fast = timed(lambda: estimates(model, names, args, exact=False))
        full, t_full = timed(lambda: estimates(model, names, args, exact=True))
        for n in names:
            ok = same(fast[n], full[n])
            differ += not ok
            peak = "error" if full[n].error else f"{full[n].peak_bytes / GIB:8.3f} GiB"
            print(f"{model:11} {n:18} {peak}  {'equal' if ok else 'DIFFERS'}"
                  + ("" if ok or full[n].error else
                     f" (extrapolated {fast[n].peak_bytes} vs full {full[n].peak_bytes} bytes)"))
        print(f"{model}: estimate x{len(names)}: extrapolated {t_fast:.1f} s, --exact {t_full:.1f} s,"
              f" {t_full / t_fast:.1f}x faster")
        if args.no_fit:
            continue
        fit_fast, tf_fast = timed(lambda: fits(model, names, args, exact=False))
        fit_full, tf_full = timed(lambda: fits(model, names, args, exact=True))
        differ += fit_fast != fit_full
        print(f"{model}: fit {args.fit_memory_gib:g} GiB at seq {args.seq_len} x{len(names)}:"
              f" extrapolated {tf_fast:.1f} s, --exact {tf_full:.1f} s, {tf_full / tf_fast:.1f}x"
              f" faster; largest batch {fit_fast} ({'equal' if fit_fast == fit_full else 'DIFFERS: ' + str(fit_full)})")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())

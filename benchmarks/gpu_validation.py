"""The GPU validation run: optbench's CUDA paths on one GPU in under 5 minutes, written to
docs/gpu-validation.md.

    python benchmarks/gpu_validation.py                 # on a machine with CUDA
    python benchmarks/gpu_validation.py --out /tmp/x.md # anywhere else to write it

What it does, each cell in its own process through optbench's own runner (as `optbench run`):
- a small bf16 suite on llama_60m (AdamW, bitsandbytes' 8-bit AdamW, SCALE, APOLLO-Mini, Muon,
  GaLore; seq 256, batch 8, 20 steps): peak `max_memory_allocated`, reserved bytes, NVML used
  bytes and tokens/s, each held against the fake-tensor estimate of the same step;
- model TFLOP/s and MFU against the GPU's dense peak (optbench.hardware) of each of them;
- AdamW again under `compile: true`, its tokens/s beside the eager row and its compile time
  (its estimate is of the eager step, the only one optbench traces);
- one cell sized to run out of memory (llama_1b, batch 512 at seq 2048), which must end with
  status `oom`, not a crash.

Without CUDA it says so in one line and exits 0, after running the same logic on a tiny CPU
suite (llama_tiny, fp32) without writing the docs page.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from optbench.config.loader import load_suite
from optbench.config.suite import expand
from optbench.engine.runner import run_cells
from optbench.engine.trace import estimator, workload_of

MIB = 2**20
DOC = Path(__file__).resolve().parents[1] / "docs" / "gpu-validation.md"

GPU_SUITE = """\
name: gpu_validation
defaults: {device: cuda, dtype: bf16, steps: 20, warmup: 5, batch_size: 8, eval_batches: 2,
           grad_clip: 1.0, timeout_s: 240}
grid:
  models: [llama_60m]
  seq_lens: [256]
  optimizers: [adamw, adamw8bit, scale, apollo_mini, muon, galore]
data: {source: kjv, max_tokens: 400000}
"""
COMPILE_SUITE = GPU_SUITE.replace("name: gpu_validation", "name: gpu_validation_compiled").replace(
    "timeout_s: 240}", "timeout_s: 240, compile: true}").replace(
    "optimizers: [adamw, adamw8bit, scale, apollo_mini, muon, galore]",
    "optimizers: [{name: adamw, label: adamw-compiled}]")
OOM_SUITE = """\
name: gpu_validation_oom
defaults: {device: cuda, dtype: bf16, steps: 4, warmup: 1, batch_size: 512, eval_batches: 1,
           timeout_s: 120}
grid: {models: [llama_1b], seq_lens: [2048], optimizers: [adamw]}
data: {source: kjv, max_tokens: 400000}
"""
CPU_SUITE = """\
name: gpu_validation_cpu_check
defaults: {device: cpu, dtype: fp32, steps: 4, warmup: 1, batch_size: 2, eval_batches: 1}
grid: {models: [llama_tiny], seq_lens: [32], optimizers: [adamw, scale]}
data: {source: kjv, max_tokens: 60000}
"""


def cells_of(text: str, folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "suite.yaml"
    path.write_text(text)
    return expand(load_suite(path))


def rows_for(results, cells) -> list[dict]:
    """Per cell: measured metrics beside the estimate of the same step."""
    rows = []
    for cell, r in zip(cells, results):
        w = workload_of(cell)
        est = estimator(cell.model, w.dtype).estimate(w, cell.optimizer.name, cell.optimizer.hparams)
        m = r.metrics
        rows.append({
            "optimizer": cell.optimizer.display, "status": r.status,
            "estimate": None if est.error else est.peak_bytes,
            "allocated": m.get("peak_allocated_bytes"), "reserved": m.get("peak_reserved_bytes"),
            "nvml": m.get("nvml_used_bytes"), "tokens_per_s": m.get("tokens_per_s"),
            "tflops": m.get("model_tflops_per_s"), "mfu": m.get("mfu_percent"),
            "compile_s": m.get("compile_s"), "error": r.error,
        })
    return rows


def _mib(value) -> str:
    return "—" if value is None else f"{value / MIB:,.1f}"


def _num(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def markdown(rows: list[dict], oom: dict | None, env: dict, command: str) -> str:
    lines = ["# GPU validation", "",
             f"_Measured {env['date']} on {env['device']} (driver {env['driver']}), torch "
             f"{env['torch']}, CUDA {env['cuda']}, Python {env['python']}. Command: `{command}`._",
             "", "llama_60m, bf16, seq 256, batch 8, 20 steps; each cell in its own process "
             "through optbench's runner. *Estimate* is `optbench estimate` for the same step "
             "(fake tensors, no GPU); *Allocated* is `torch.cuda.max_memory_allocated`.", "",
             "| Optimizer | Status | Estimate (MiB) | Allocated (MiB) | Estimate / allocated | "
             "Reserved (MiB) | NVML used (MiB) | Tokens/s | TFLOP/s | MFU (%) | Compile (s) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ratio = (f"{r['estimate'] / r['allocated']:.3f}" if r["estimate"] and r["allocated"]
                 else "—")
        tps = "—" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:,.0f}"
        extra = [_num(r.get(k), f) for k, f in (("tflops", ".1f"), ("mfu", ".1f"),
                                                 ("compile_s", ".1f"))]
        lines.append(f"| {r['optimizer']} | {r['status']} | {_mib(r['estimate'])} | "
                     f"{_mib(r['allocated'])} | {ratio} | {_mib(r['reserved'])} | "
                     f"{_mib(r['nvml'])} | {tps} | {' | '.join(extra)} |")
    if oom is not None:
        verdict = "as it should" if oom["status"] == "oom" else "**not** as it should"
        lines += ["", f"Forced OOM (llama_1b, batch 512 at seq 2048): status `{oom['status']}`, "
                      f"{verdict}" + (f" — {oom['error']}" if oom.get("error") else "") + "."]
    return "\n".join(lines) + "\n"


def environment() -> dict:
    from optbench.engine.measure import nvml_driver

    return {"date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(0),
            "driver": nvml_driver() or "unknown", "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DOC, help="where to write the page")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        if not torch.cuda.is_available():
            cells = cells_of(CPU_SUITE, Path(tmp))
            rows = rows_for(run_cells(cells), cells)
            markdown(rows, None, {"date": "", "device": "cpu", "driver": "", "torch": "",
                                  "cuda": "", "python": ""}, "")
            ok = all(r["status"] == "ok" and r["estimate"] for r in rows)
            print(f"no CUDA device here: CPU-side logic checked on {len(rows)} tiny cells "
                  f"({'ok' if ok else 'FAILED'}); {args.out} left as it is")
            return 0 if ok else 1
        cells = cells_of(GPU_SUITE, Path(tmp)) + cells_of(COMPILE_SUITE, Path(tmp) / "compiled")
        rows = rows_for(run_cells(cells), cells)
        oom_cells = cells_of(OOM_SUITE, Path(tmp))
        (oom,) = run_cells(oom_cells)
    command = "python benchmarks/gpu_validation.py" + (f" --out {args.out}" if args.out != DOC else "")
    text = markdown(rows, {"status": oom.status, "error": oom.error}, environment(), command)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0 if all(r["status"] == "ok" for r in rows) and oom.status == "oom" else 1


if __name__ == "__main__":
    sys.exit(main())

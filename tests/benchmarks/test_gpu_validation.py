"""benchmarks/gpu_validation.py without CUDA: one line, exit 0, after running its own logic on a
tiny CPU suite; and the page it writes from canned rows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_without_cuda_it_checks_its_cpu_side_and_says_so_in_one_line(tmp_path):
    out = tmp_path / "page.md"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_validation.py"),
                           "--out", str(out)], capture_output=True, text=True, timeout=600,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines == [f"no CUDA device here: CPU-side logic checked on 2 tiny cells (ok); {out} "
                     "left as it is"]
    assert not out.exists()


def test_the_page_holds_each_estimate_against_the_allocator_and_the_oom_verdict():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_validation
    finally:
        sys.path.pop(0)
    rows = [{"optimizer": "adamw", "status": "ok", "estimate": 300 * 2**20,
             "allocated": 320 * 2**20, "reserved": 400 * 2**20, "nvml": 900 * 2**20,
             "tokens_per_s": 12345.6, "error": None}]
    env = {"date": "2026-12-06", "device": "NVIDIA H100", "driver": "560.1", "torch": "2.13.0",
           "cuda": "12.8", "python": "3.11.7"}
    text = gpu_validation.markdown(rows, {"status": "oom", "error": "CUDA out of memory"}, env,
                                   "python benchmarks/gpu_validation.py")
    assert "| adamw | ok | 300.0 | 320.0 | 0.938 | 400.0 | 900.0 | 12,346 |" in text
    assert "on NVIDIA H100 (driver 560.1), torch 2.13.0, CUDA 12.8" in text
    assert "status `oom`, as it should — CUDA out of memory." in text

"""Measurements of one training cell: tracked peak memory, allocator stats, NVML, timing.

Definitions (DESIGN.md): peak memory on CPU comes from a tensor-storage tracker
(torch's MemTracker) running over one whole training step taken after the optimizer
state exists; on CUDA the headline is `torch.cuda.max_memory_allocated` over the run,
and the tracker still gives the breakdown. Timed steps never run under the tracker.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from typing import Any, Callable, Iterator

import torch

from optbench.measure_state import optimizer_state_bytes  # noqa: F401  (re-exported)

# MemTracker's reference types -> the five parts we report. "Temp" is memory the backward
# pass allocates besides gradients (activation gradients); "Other" is anything made outside a
# module's forward/backward (the loss, the optimizer's scratch tensors).
_PART_OF_REFTYPE = {
    "Parameter": "params",
    "Buffer": "params",
    "Gradient": "grads",
    "Optstate": "optimizer_state",
    "Activation": "activations",
    "Temp": "temporaries",
    "Other": "temporaries",
}
PARTS = ("params", "grads", "optimizer_state", "activations", "temporaries")


def tracked_peak(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
    run_step: Callable[[Callable[[], None]], Any],
) -> dict[str, int]:
    """Run `run_step(next_micro_batch)` under MemTracker; the peak total and its parts, in bytes.

    `run_step` must call `next_micro_batch()` before each forward after the first: MemTracker
    refuses a second forward of the root module unless its per-module stats are cleared
    (the peak it has seen is kept). Works on real and on fake tensors alike.
    """
    tracker = _state_aware_tracker()
    tracker.track_external(*([model] if optimizer is None else [model, optimizer]))
    with tracker:
        run_step(tracker.reset_mod_stats)
    snapshots = tracker.get_tracker_snapshot("peak")
    out = {f"peak_{part}_bytes": 0 for part in PARTS}
    for snapshot in snapshots.values():
        for reftype, nbytes in snapshot.items():
            part = _PART_OF_REFTYPE.get(getattr(reftype, "value", str(reftype)))
            if part is not None:
                out[f"peak_{part}_bytes"] += int(nbytes)
    out["tracked_peak_bytes"] = sum(out[f"peak_{p}_bytes"] for p in PARTS)
    return out


def _state_aware_tracker():
    """A MemTracker whose optimizer walk sees all the state optbench counts.

    MemTracker's own walk only looks at the top-level values of each per-parameter state
    dict: it misses tensors in nested containers and helper objects (the low-rank methods'
    projectors), which would then be left out of the peak, and it crashes on optimizers that
    keep a non-dict entry in `optimizer.state` (SPAM). Overriding its one walk method keeps
    the rest of the tracker as torch ships it.
    """
    from torch.distributed._tools.mem_tracker import MemTracker

    from optbench.measure_state import state_tensors

    class StateAwareMemTracker(MemTracker):
        def _track_optimizer_states(self, reftype, optimizer) -> None:
            for tensor in state_tensors(optimizer):
                self._update_and_maybe_create_winfos(tensor, reftype)

    return StateAwareMemTracker()


def param_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def stopwatch(device: torch.device, into: list[float]) -> Iterator[None]:
    """Append the wall time of the block, in ms, with the device synchronized on both ends."""
    synchronize(device)
    start = time.perf_counter()
    yield
    synchronize(device)
    into.append((time.perf_counter() - start) * 1e3)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def cuda_memory(device: torch.device) -> dict[str, int]:
    """Allocator peaks since the last reset, plus what NVML sees on the device."""
    out = {
        "peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
        "peak_reserved_bytes": torch.cuda.max_memory_reserved(device),
    }
    used = nvml_used_bytes(device)
    if used is not None:
        out["nvml_used_bytes"] = used
    return out


def nvml_used_bytes(device: torch.device) -> int | None:
    """This process's device memory as NVML sees it (driver + context included), else None."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = _nvml_handle(pynvml, device)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory:
                    return int(proc.usedGpuMemory)
            # Containers often hide pids from NVML: fall back to the whole device.
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no NVML, not NVIDIA: the metric is simply absent
        return None


def _nvml_handle(pynvml, device: torch.device):
    """NVML's handle for this CUDA device, found by UUID: NVML numbers the physical GPUs and
    ignores CUDA_VISIBLE_DEVICES, so CUDA index 0 may be another NVML index."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = str(torch.cuda.get_device_properties(index).uuid)
    try:
        return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    except pynvml.NVMLError:
        return pynvml.nvmlDeviceGetHandleByIndex(index)


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware a result was measured on."""
    import platform
    import socket
    import subprocess

    import optbench

    import transformers

    env: dict[str, Any] = {
        "optbench": optbench.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,  # the model code: activations follow it
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": platform.processor() or platform.machine(),
    }
    if device.type == "cuda" and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(device)
        env["driver"] = _nvml_driver()
    try:
        env["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=os.path.dirname(__file__),
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


def _nvml_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
            return version.decode() if isinstance(version, bytes) else version
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None

"""Measurements of one training cell: tracked peak memory, allocator stats, NVML, timing.

Definitions (docs/metrics.md): peak memory on CPU comes from a tensor-storage tracker
(torch's MemTracker) running over one whole training step taken after the optimizer
state exists; on CUDA the headline is `torch.cuda.max_memory_allocated` over the run,
and the tracker still gives the breakdown. Timed steps never run under the tracker.
"""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from optbench.engine.slots import jobs_sharing
from optbench.engine.state_bytes import state_tensors
from optbench.metrics import MEMORY_PARTS, part_metric

# MemTracker's reference types -> the memory parts we report (optbench.metrics). "Temp" is
# memory the backward pass allocates besides gradients (activation gradients); "Other" is
# anything made outside a module's forward/backward (the loss, the optimizer's scratch tensors).
_PART_OF_REFTYPE = {
    "Parameter": "params",
    "Buffer": "params",
    "Gradient": "grads",
    "Optstate": "optimizer_state",
    "Activation": "activations",
    "Temp": "temporaries",
    "Other": "temporaries",
}


# A memory timeline point: the phase of the step, then the live bytes of each memory part
# (MEMORY_PARTS order) at that moment.
TIMELINE_PHASES = ("forward", "backward", "other", "optimizer step")


@contextlib.contextmanager
def tracked_peak(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                 timeline: list | None = None, moments: dict | None = None,
                 places: Callable[[], list[str]] | None = None) -> Iterator[dict[str, int]]:
    """Track the block under MemTracker; the dict it yields is filled, on exit, with the peak
    total (`tracked_peak_bytes`) and its parts (`peak_<part>_bytes`), in bytes. With a
    `timeline` list, every moment the tracker checks for a new peak (after each op, and in its
    module and optimizer hooks) is appended to it as [phase index, *part bytes]: its largest
    total is the peak.

    Works on real and on fake tensors alike. Several forwards in the block (micro-batches of
    one step) are fine: see `_state_aware_tracker_class`.

    With a `moments` dict, the fullest moment of each (phase, place) of the step is kept in it
    as {(phase, place): part bytes}: the places are the embedding, the first and the last
    decoder layer, the final norm, the head and outside any module (`step_places`). Each such
    moment's bytes are a line in the number of layers, where the step's peak (the largest of
    them) need not be: the depth-extrapolating estimator takes each to depth before the max.
    `places`, when given, says where each moment is instead of the module tracker (an
    optimizer step, which runs outside any module: the parameter it is at).
    """
    tracker = state_aware_tracker()
    tracker.timeline, tracker.moments, tracker.places = timeline, moments, places
    tracker.layers = getattr(getattr(model, "config", None), "num_hidden_layers", 0)
    tracker.track_external(*([model] if optimizer is None else [model, optimizer]))
    peak: dict[str, int] = {}
    with tracker:
        yield peak
    peak.update(_peak_parts(tracker.get_tracker_snapshot("peak")))


def _peak_parts(snapshots: dict) -> dict[str, int]:
    out = {part_metric(part): 0 for part in MEMORY_PARTS}
    for snapshot in snapshots.values():
        for reftype, nbytes in snapshot.items():
            part = _PART_OF_REFTYPE.get(getattr(reftype, "value", str(reftype)))
            if part is not None:
                out[part_metric(part)] += int(nbytes)
    out["tracked_peak_bytes"] = sum(out[part_metric(p)] for p in MEMORY_PARTS)
    return out


TIMELINE_POINTS = 1500  # what a stored timeline keeps at most: a figure needs no more


def thinned(timeline: list[list[int]], points: int = TIMELINE_POINTS) -> list[list[int]]:
    """At most about `points` moments of a timeline, evenly spaced, always keeping the peak
    and the first moment of each phase (so the figure's peak and boundaries stay exact)."""
    if len(timeline) <= points:
        return timeline
    every = -(-len(timeline) // points)
    totals = [sum(p[1:]) for p in timeline]
    peak = totals.index(max(totals))
    keep = [i for i, p in enumerate(timeline)
            if i % every == 0 or i == peak or i == len(timeline) - 1
            or (i and p[0] != timeline[i - 1][0])]
    return [timeline[i] for i in keep]


_PLACE_MARKERS = (("head", "lm_head"), ("norm", "model.norm"), ("embed", "embed_tokens"))


def _layer_index(name: str) -> int | None:
    """The decoder layer a module or parameter name is in ('...layers.3.mlp' -> 3), or None."""
    number = name.partition(".layers.")[2].split(".", 1)[0]
    return int(number) if number.isdigit() else None


def _ends(index: int, layers: int) -> list[str]:
    """'first' / 'last' for the ends of the stack (both for one layer), none between."""
    return [place for place, at in (("first", 0), ("last", layers - 1)) if index == at]


def _marked(names: list[str]) -> list[str]:
    for place, marker in _PLACE_MARKERS:
        if any(marker in name for name in names):
            return [place]
    return ["outside"]


def parameter_place(name: str, layers: int) -> list[str]:
    """Where a parameter is, by its name, in step_places' terms."""
    index = _layer_index(name)
    return _ends(index, layers) if index is not None else _marked([name])


def step_places(parents, backward: bool, layers: int) -> list[str]:
    """Where in the model a moment of the step is: 'first' / 'last' decoder layer (both for a
    one-layer model; none for the layers between, whose moments lie between those two),
    'head', 'norm', 'embed', or 'outside' any module. The module tracker can keep a finished
    submodule among the parents, so the current layer is the highest index going forward and
    the lowest going backward."""
    indices = [i for i in map(_layer_index, parents) if i is not None]
    if indices:
        return _ends(min(indices) if backward else max(indices), layers)
    return _marked(list(parents))


def _parts_now(snapshot: dict) -> list[int]:
    """Live bytes per memory part (MEMORY_PARTS order) in a tracker's current snapshot."""
    out = dict.fromkeys(MEMORY_PARTS, 0)
    for device_snap in snapshot.values():
        for reftype, nbytes in device_snap.items():
            part = _PART_OF_REFTYPE.get(getattr(reftype, "value", str(reftype)))
            if part is not None:
                out[part] += int(nbytes)
    return list(out.values())


def peak_parts(peak: dict[str, int]) -> dict[str, int]:
    """{part: bytes} of a tracked peak."""
    return {part: int(peak[part_metric(part)]) for part in MEMORY_PARTS}


def state_aware_tracker():
    """A fresh tracker (see `_state_aware_tracker_class`)."""
    return _state_aware_tracker_class()()


@functools.cache
def _state_aware_tracker_class() -> type:
    """A MemTracker whose optimizer walk sees all the state optbench counts, and that follows
    gradient accumulation. (Made on first use: torch.distributed is not imported before.)

    MemTracker's own walk only looks at the top-level values of each per-parameter state
    dict: it misses tensors in nested containers and helper objects (the low-rank methods'
    projectors), which would then be left out of the peak, and it crashes on optimizers that
    keep a non-dict entry in `optimizer.state` (SPAM). And it refuses a second forward of the
    root module ("multiple iterative calls") unless its per-module stats are cleared first;
    within one step that second forward is the next micro-batch, so the stats are cleared
    there (the peak seen so far is kept). The rest is the tracker as torch ships it.
    """
    from torch.distributed._tools.mem_tracker import MemTracker

    class StateAwareMemTracker(MemTracker):
        def _track_optimizer_states(self, reftype, optimizer) -> None:
            for tensor in state_tensors(optimizer):
                self._update_and_maybe_create_winfos(tensor, reftype)

        timeline: list | None = None
        moments: dict | None = None
        places: Callable[[], list[str]] | None = None
        layers: int = 0

        def _update_peak_stats(self, peak_state) -> None:
            super()._update_peak_stats(peak_state)
            if self.timeline is None and self.moments is None:
                return
            parts = _parts_now(self._curr_mem_snap)
            phase = self._phase()
            if self.timeline is not None:
                self.timeline.append([phase, *parts])
            if self.moments is not None:
                places = self.places() if self.places is not None else step_places(
                    self._mod_tracker.parents, self._mod_tracker.is_bw, self.layers)
                for place in places:
                    kept = self.moments.get((phase, place))
                    if kept is None or sum(parts) > sum(kept):
                        self.moments[(phase, place)] = parts

        def _phase(self) -> int:
            if self._in_opt:
                return TIMELINE_PHASES.index("optimizer step")
            if self._mod_tracker.is_bw:
                return TIMELINE_PHASES.index("backward")
            if set(self._mod_tracker.parents) - {"Global"}:
                return TIMELINE_PHASES.index("forward")
            return TIMELINE_PHASES.index("other")

        def _pre_fw_hook(self, module, inputs) -> None:
            if module in self.memory_tracking and not self._mod_tracker.is_bw:
                name = self._mod_tracker.get_known_fqn(module)
                if set(self._mod_tracker.parents) - {name} == {"Global"}:  # the root, again
                    self.reset_mod_stats()
            super()._pre_fw_hook(module, inputs)

    return StateAwareMemTracker


def param_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Lap:
    ms: float = float("nan")


@contextlib.contextmanager
def stopwatch(device: torch.device) -> Iterator[Lap]:
    """The wall time of the block, in ms (set on exit), with the device synchronized on both
    ends so queued kernels are counted where they run."""
    lap = Lap()
    synchronize(device)
    start = time.perf_counter()
    yield lap
    synchronize(device)
    lap.ms = (time.perf_counter() - start) * 1e3


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
        "jobs": jobs_sharing(),  # cells that ran on this machine at once (run --jobs)
        "device": str(device),
        "device_name": platform.processor() or platform.machine(),
    }
    if device.type == "cuda" and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(device)
        env["driver"] = nvml_driver()
    try:
        env["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=os.path.dirname(__file__),
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


def nvml_driver() -> str | None:
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


def compiler_missing(device_type: str) -> str | None:
    """Why torch.compile cannot run here, or None: TorchInductor builds C++ kernels for the CPU
    and, on CUDA, Triton builds a C launcher, each with a compiler found on PATH ($CXX / $CC
    first). Said before a cell starts, instead of an error deep inside the first step."""
    import shutil

    if device_type == "cpu":
        names, what = (os.environ.get("CXX", ""), "g++", "clang++", "c++"), "C++ compiler"
    else:
        names, what = (os.environ.get("CC", ""), "gcc", "clang", "cc"), "C compiler"
    if any(name and shutil.which(name) for name in names):
        return None
    return (f"compile: true needs a {what} on PATH for TorchInductor's {device_type} kernels "
            f"({', '.join(n for n in names if n)} not found); install one, or set compile: false")

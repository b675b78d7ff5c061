"""Per-rank peak memory of a sharded training step, without a GPU or a second process.

Each rank is traced on its own, in this process: torch's fake process group (the `fake`
backend: collectives that complete at once and move no data) gives it its rank and world
size, fake tensors give it parameters without memory, and then the strategy's own wrapper
(`parallel.wrap_model`: DDP, FSDP2's `fully_shard`, ZeRO-1's `ZeroRedundancyOptimizer`) shards
exactly as on N devices, and the tracker that measures real runs (`measure.tracked_peak`)
follows two training steps, as a real sharded cell tracks its steps 1 and 2. Ranks whose
shards have the same shapes run the same code on the same shapes: each distinct rank is
traced once (DDP: one; FSDP2: a few, found from the split before anything is wrapped, so 1,024
ranks cost about what 3 do; ZeRO-1: every rank is wrapped to learn its split).

DDP was not written for fake tensors; three things make it run on them, none of which moves
a byte the tracker counts:
- its constructor checks, by reading their data, that every rank's params have the same
  shapes: skipped (a fake group has no other rank whose shapes could differ);
- the fake group's all-reduce completes with no tensor, where DDP expects the bucket back:
  torch's own `noop_hook` hands DDP its bucket, which is what an in-place all-reduce returns;
- when DDP rebuilds its buckets (start of step 2) it writes the new bucket order into small
  int32 index tensors through accessors: those few are real tensors, made outside the
  tracker (4 bytes per parameter tensor, freed before forward starts).

Held against real 2-process CPU runs (gloo) in tests/engine/test_rank_estimate.py: every rank's
peak and each of its parts equal to the byte for AdamW and SCALE under DDP, FSDP2 and ZeRO-1.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator
from unittest import mock

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from optbench.config.suite import Parallel
from optbench.engine import measure, parallel
from optbench.engine.measure import peak_parts
from optbench.engine.outcome import CellOutcome
from optbench.engine.state_bytes import local_part, optimizer_state_bytes
from optbench.engine.step import train_step
from optbench.engine.trace import (DepthEstimator, Estimate, Estimator, NotTraceable,
                                   PlaceholderScalars, Traced, Workload, attention_kernel,
                                   estimator, fill, not_traceable, state_summary, workload_of)
from optbench.errors import OptbenchError
from optbench.optimizers import get_spec, resolve_hparams


@dataclass
class RankTrace:
    """What one rank's two traced steps give (the fuller step's parts and timeline)."""

    parts: dict[str, int]
    state: dict[str, int]
    state_bytes: int  # as a real run counts it (optimizer_state_bytes: local shards)
    param_values: int  # parameter elements this rank holds (its shards under FSDP2)
    selections: int
    attention: str
    timeline: list


class RankEstimator:
    """Each rank's estimate of one model and dtype under one strategy and rank count."""

    def __init__(self, model: str, dtype: str, setting: Parallel) -> None:
        if not setting.sharded:
            raise ValueError("a RankEstimator estimates the ranks of a strategy, not 'none'")
        self.model_name, self.dtype, self.setting = model, dtype, setting
        self.base = Estimator(model, dtype)  # the fake model and batches; nothing traced
        self.layers = self.base.layers
        self._alike: dict[tuple, list[int]] = {}  # per optimizer setup: rank -> its first alike

    @property
    def meta_model(self) -> torch.nn.Module:
        return self.base.meta_model

    def estimate(self, workload: Workload, optimizer: str, hparams: dict | None = None,
                 label: str | None = None) -> Estimate:
        """The fullest rank's estimate, every rank's in `.ranks`; an error row when a rank
        cannot be traced or the strategy cannot run this optimizer (ZeRO-1 over a composite)."""
        if (workload.model, workload.dtype) != (self.model_name, self.dtype):
            raise ValueError(f"this RankEstimator traces {self.model_name} in {self.dtype}")
        name = get_spec(optimizer).name
        resolved = resolve_hparams(name, hparams or {}, workload.model)
        est = Estimate(label or name, name, resolved, workload, parallel=self.setting.label)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            try:
                traces = self._trace_ranks(est)
            except (NotTraceable, parallel.Unsupported) as exc:
                est.error, est.unsupported = str(exc), isinstance(exc, parallel.Unsupported)
                return est
        est.ranks = [self._rank_estimate(est, trace) for trace in traces]
        fullest = max(est.ranks, key=lambda r: r.peak_bytes)
        for key in ("parts", "n_params", "param_bytes", "paper_state_values", "paper_bytes",
                    "attention", "note"):
            setattr(est, key, getattr(fullest, key))
        est.optimizer_state_bytes = max(r.optimizer_state_bytes for r in est.ranks)
        est.timeline = traces[est.ranks.index(fullest)].timeline
        return est

    def _rank_estimate(self, est: Estimate, trace: RankTrace) -> Estimate:
        rank = Estimate(est.label, est.optimizer, est.hparams, est.workload, parts=trace.parts,
                        parallel=est.parallel)
        fill(rank, self.dtype, self.layers, Traced([trace.parts], trace.state, trace.selections,
                                                   trace.attention))
        rank.optimizer_state_bytes = trace.state_bytes
        # The papers' convention for what this rank holds: its own params and state values.
        rank.paper_bytes = 2 * trace.param_values + trace.state["paper_bytes"]
        return rank

    def _trace_ranks(self, est: Estimate) -> list[RankTrace]:
        """Every rank's trace in rank order; a rank shaped like one already traced reuses it.
        Shapes do not depend on the batch: after an optimizer's first estimate only one rank
        of each shape is wrapped and traced again (what `fit`'s probes need)."""
        if dist.is_initialized():
            raise OptbenchError("a per-rank estimate runs its own fake process group; this "
                                "process is already in one")
        nproc = self.setting.nproc
        setup = (est.optimizer, repr(sorted(est.hparams.items())))
        alike = self._alike.get(setup)  # rank -> the first rank shaped like it
        layout = self._layout_twins() if alike is None else None
        traced: dict[tuple, RankTrace] = {}
        keys = {}
        with _quiet_torch_logs():
            for rank in sorted(set(alike if alike is not None else layout)):
                with fake_rank(rank, nproc):
                    keys[rank] = self._trace_rank(est, traced)
        if alike is None:
            first: dict[tuple, int] = {}
            alike = self._alike[setup] = [first.setdefault(keys[layout[r]], layout[r])
                                          for r in range(nproc)]
        return [traced[keys[alike[rank]]] for rank in range(nproc)]

    def _layout_twins(self) -> list[int]:
        """Rank -> the first rank holding parameters of the same local shapes, known before
        anything is wrapped where the strategy's split is plain: DDP replicates (one layout);
        FSDP2 splits each parameter's rows in chunks of ceil(rows / world) (torch.chunk), so
        of 1024 ranks only a few differ. ZeRO-1's split is its optimizer's own: every rank is
        wrapped, and traced only if its shapes are new."""
        nproc, strategy = self.setting.nproc, self.setting.strategy
        if strategy == "ddp":
            return [0] * nproc
        if strategy != "fsdp2":
            return list(range(nproc))
        rows = [p.shape[0] if p.dim() else 1 for p in self.base.fake_model().parameters()]
        first: dict[tuple, int] = {}
        return [first.setdefault(tuple(fsdp2_local_rows(n, rank, nproc) for n in rows), rank)
                for rank in range(nproc)]

    def _trace_rank(self, est: Estimate, traced: dict[tuple, RankTrace]) -> tuple:
        """This rank's shape key, its trace added to `traced` unless a rank so shaped is there."""
        strategy = self.setting.strategy
        mesh = _mesh(self.setting) if strategy == "fsdp2" else None  # made outside fake mode
        model = self.base.fake_model()
        spec = get_spec(est.optimizer)
        with self.base.fake_mode, PlaceholderScalars() as placeholders, _RealBucketIndices():
            with not_traceable(est.optimizer, f"{self.setting.label} wrapping"):
                wrapped = _wrap(model, strategy, mesh, self.base.fake_mode)
            optimizer = _build(est, model, strategy)
            key = shape_key(model, optimizer)
            if key in traced:
                return key
            windows = self.base.windows(est.workload)
            opts = est.workload.step_options(create_graph=spec.needs_create_graph)
            best: tuple[dict, list] | None = None
            for _ in range(2):
                timeline: list = []
                with not_traceable(est.optimizer, "a training step"):
                    with measure.tracked_peak(wrapped, optimizer, timeline) as peak:
                        train_step(wrapped, optimizer, windows, opts)
                if best is None or peak["tracked_peak_bytes"] > sum(best[0].values()):
                    best = (peak_parts(peak), timeline)
            traced[key] = RankTrace(best[0], state_summary(optimizer),
                                    optimizer_state_bytes(optimizer), _local_values(model),
                                    placeholders.selections, attention_kernel(model),
                                    measure.thinned(best[1]))
        return key


def fsdp2_local_rows(rows: int, rank: int, world: int) -> int:
    """Rows of a parameter that FSDP2 places on `rank`: torch.chunk's split of dim 0 into
    chunks of ceil(rows / world), the last ranks holding fewer or none."""
    chunk = -(-rows // world)
    return max(0, min(chunk, rows - rank * chunk))


def _build(est: Estimate, model: torch.nn.Module, strategy: str) -> torch.optim.Optimizer:
    """The optimizer as the strategy builds it; `parallel.Unsupported` (ZeRO-1 over what it
    cannot rebuild) passes through, so the row says why as a real cell's skip does."""
    with not_traceable(est.optimizer, "its constructor", passing=(parallel.Unsupported,)):
        return parallel.build_parallel_optimizer(est.optimizer, model, strategy, **est.hparams)


# Torch's own log lines that an estimate would otherwise print: DTensor warns, once and as rank
# 0, that a CPU mesh redistributes a shard by all-gather + chunk rather than all-to-all (true of
# the estimate, said in docs/estimate.md); fake tensors log the whole traceback of an op that
# fails on them, which the estimate's row already states in one line.
_QUIETED = {"torch.distributed.tensor._collective_utils": logging.ERROR,
            "torch._subclasses.fake_tensor": logging.CRITICAL}


@contextlib.contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    logs = {logging.getLogger(name): level for name, level in _QUIETED.items()}
    before = {log: log.level for log in logs}
    for log, level in logs.items():
        log.setLevel(level)
    try:
        yield
    finally:
        for log, level in before.items():
            log.setLevel(level)


@contextlib.contextmanager
def fake_rank(rank: int, world: int) -> Iterator[None]:
    """This process as `rank` of `world` in torch's fake process group, for the block."""
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers 'fake'

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _mesh(setting: Parallel):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (setting.nproc,))


def _wrap(model: torch.nn.Module, strategy: str, mesh, fake_mode) -> torch.nn.Module:
    if strategy not in ("ddp", "zero1"):
        return parallel.wrap_model(model, strategy, mesh)
    from torch.distributed.algorithms.ddp_comm_hooks.debugging_hooks import noop_hook

    with mock.patch("torch.nn.parallel.distributed._verify_param_shape_across_processes"):
        wrapped = parallel.wrap_model(model, strategy)
    wrapped.register_comm_hook(None, noop_hook)
    wrapped.reducer = _RebuildWithRealIndices(wrapped.reducer, fake_mode)
    return wrapped


class _RealBucketIndices(TorchDispatchMode):
    """While DDP rebuilds its buckets, its int32 index tensors are real (it fills them through
    accessors); every other tensor stays fake."""

    rebuilding = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (_RealBucketIndices.rebuilding and func is torch.ops.aten.empty.memory_format
                and kwargs.get("dtype") == torch.int32):
            with _disable_current_modes():
                return func(*args, **kwargs)
        return func(*args, **kwargs)


class _RebuildWithRealIndices:
    """DDP's reducer, its bucket rebuild run with real index tensors (_RealBucketIndices),
    which it copies to and from fake ones (the fake mode lets them in for that moment)."""

    def __init__(self, reducer, fake_mode) -> None:
        self._reducer, self._fake_mode = reducer, fake_mode

    def __getattr__(self, name: str):
        return getattr(self._reducer, name)

    def _rebuild_buckets(self) -> bool:
        _RealBucketIndices.rebuilding = self._fake_mode.allow_non_fake_inputs = True
        try:
            return self._reducer._rebuild_buckets()
        finally:
            _RealBucketIndices.rebuilding = self._fake_mode.allow_non_fake_inputs = False


def shape_key(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple:
    """What makes two ranks' traces differ: the shapes of the params each holds, and of those
    its optimizer steps (ZeRO-1's share) group by group, with each group's settings."""
    local = getattr(optimizer, "optim", optimizer)
    held = tuple(tuple(local_part(p).shape) for p in model.parameters())
    groups = tuple((tuple(tuple(local_part(p).shape) for p in g["params"]),
                    repr(sorted((k, v) for k, v in g.items() if k != "params")))
                   for g in local.param_groups)
    return held, groups


def _local_values(model: torch.nn.Module) -> int:
    return sum(local_part(p).numel() for p in model.parameters())


@functools.lru_cache(maxsize=8)
def estimator_for(model: str, dtype: str, setting: Parallel = Parallel(),
                  exact: bool = False) -> Estimator | DepthEstimator | RankEstimator:
    """One shared estimator per model, dtype and parallel setting within a process: per rank
    under a strategy; else the depth-extrapolating one, or with `exact` the full trace."""
    if setting.sharded:
        return RankEstimator(model, dtype, setting)
    return estimator(model, dtype, exact)


def estimate_cell(cell, emit: Callable[[dict], None]) -> CellOutcome:
    """A `device: meta` cell: the estimate stored like a run (per rank under a strategy),
    with status "estimated"."""
    emit({"event": "start"})
    w = workload_of(cell)
    found = estimator_for(cell.model, w.dtype, cell.parallel)
    est = found.estimate(w, cell.optimizer.name, cell.optimizer.hparams, cell.optimizer.display)
    if est.error:  # a strategy's refusal ends the cell as a run's does: skipped, with why
        return CellOutcome("skipped" if est.unsupported else "error", est.error)
    metrics = est.metrics()
    metrics["expected_optimizer_state_bytes"] = get_spec(est.optimizer).expected_state_bytes(
        found.meta_model, est.hparams)
    return CellOutcome("estimated", metrics=metrics, timeline=est.timeline)


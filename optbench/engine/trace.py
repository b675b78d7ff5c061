"""Peak training memory without a GPU: one training step traced on fake tensors.

The model is built on the `meta` device (no memory, no init compute), then each parameter is
re-created under `FakeTensorMode`: tensors with shapes, dtypes and storages but no data. The
same MemTracker that measures real CPU runs (`measure.tracked_peak`) then follows a training
step on them, so an estimate and a measurement count exactly the same bytes.

Forward and backward do not depend on the optimizer, and the optimizer step does not depend on
the batch. So a workload's forward+backward is traced once, each optimizer's two first steps
once (on fake gradients), and the peak of a whole step is

    max(forward+backward peak + optimizer state,   # step 2: the state is held throughout
        each traced optimizer step's own peak)      # params + grads + state + its scratch

which is what a single trace of the whole step would see. Optimizers whose step needs the
backward graph (AdaHessian, Sophia: Hessian-vector products) are traced whole instead.

Assumptions, stated with every estimate: CPU kernels' memory behaviour (SDPA's flash kernel
keeps the output and log-sum-exp, never seq x seq scores, as CUDA's flash kernel does; CPU
autocast's cast lists), and no allocator caching or fragmentation (a CUDA run's
`max_memory_allocated` is the closest real number; `reserved` is higher).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from optbench.engine import measure
from optbench.engine.measure import peak_parts
from optbench.engine.outcome import CellOutcome
from optbench.engine.state_bytes import state_tensors, state_tensors_of
from optbench.engine.step import StepOptions, forward_backward, optimizer_step, train_step
from optbench.errors import OptbenchError, informative_line
from optbench.metrics import DTYPES, MEMORY_PARTS, merge_ranks, part_metric
from optbench.models import build_model, get_model_size, torch_dtype
from optbench.optimizers import get_spec, resolve_hparams

PAPER_BYTES_PER_VALUE = 2  # the papers' tables count every weight and state value in bf16
# Past this many logits (batch x seq x vocab) a tensor's byte size no longer fits in int64.
MAX_LOGIT_ELEMENTS = 2**56


@dataclass(frozen=True)
class Workload:
    """What one training step processes: the shape of the traced step."""

    model: str
    seq_len: int
    batch_size: int
    dtype: str = "bf16"  # fp32 | bf16: weights, grads and (for most optimizers) state
    autocast: bool = False  # bf16 autocast around forward+backward
    grad_accum: int = 1
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        get_model_size(self.model)  # unknown name -> OptbenchError with the known ones
        if self.dtype not in DTYPES:
            raise OptbenchError(f"dtype '{self.dtype}' is not one of: {', '.join(DTYPES)}")
        for key in ("seq_len", "batch_size", "grad_accum"):
            if getattr(self, key) < 1:
                raise OptbenchError(f"{key} must be a positive integer, got {getattr(self, key)}")
        logits = self.batch_size * self.seq_len * get_model_size(self.model).vocab_size
        if logits > MAX_LOGIT_ELEMENTS:
            raise OptbenchError(f"batch size {self.batch_size} × seq len {self.seq_len} is too large "
                                f"to trace: the logits alone would exceed 2^56 elements")

    def step_options(self, create_graph: bool = False, device_type: str = "cpu") -> StepOptions:
        return StepOptions(device_type, self.autocast, create_graph, self.grad_clip)


@dataclass
class Estimate:
    """One optimizer's estimated peak on one workload, in bytes."""

    label: str
    optimizer: str
    hparams: dict[str, Any]
    workload: Workload
    parts: dict[str, int] = field(default_factory=dict)  # MEMORY_PARTS -> bytes at the peak
    optimizer_state_bytes: int = 0
    n_params: int = 0
    param_bytes: int = 0  # the weights alone, as a measured run stores it
    paper_state_values: int = 0  # state elements, floating ones counted at 2 bytes
    paper_bytes: int = 0
    attention: str = ""
    note: str = ""
    error: str | None = None
    unsupported: bool = False  # the error is the strategy's refusal (ZeRO-1), not the trace's
    # Sharded (optbench.engine.rank_trace): the strategy's label ('fsdp2x8'), each rank's own
    # estimate in rank order, and the fullest rank's timeline; this estimate is the fullest
    # rank's, its state the largest any rank keeps.
    parallel: str = "none"
    ranks: list["Estimate"] = field(default_factory=list)
    timeline: list = field(default_factory=list, repr=False)

    @property
    def peak_bytes(self) -> int:
        return sum(self.parts.values())

    def metrics(self) -> dict[str, float]:
        """The metric names a measured run stores, so reports, compare and check read both;
        a sharded estimate's per rank and at their max, as a sharded run's."""
        if self.ranks:
            return merge_ranks([rank.metrics() for rank in self.ranks])
        m = {part_metric(part): self.parts.get(part, 0) for part in MEMORY_PARTS}
        m.update(tracked_peak_bytes=self.peak_bytes, peak_allocated_bytes=self.peak_bytes,
                 optimizer_state_bytes=self.optimizer_state_bytes, n_params=self.n_params,
                 param_bytes=self.param_bytes,
                 paper_memory_bytes=self.paper_bytes)
        return m


class NotTraceable(Exception):
    """An optimizer step that fake tensors cannot follow (the reason is the message)."""


@dataclass
class Traced:
    """What one trace of a step gives: the parts at every moment that can be its peak
    (forward+backward with the state held, each optimizer step; or each whole step), the
    state's bytes, value-dependent selections and the attention kernel."""

    candidates: list[dict[str, int]]
    state: dict[str, int]
    selections: int
    attention: str
    # The optimizer steps' moments by name: their peaks ('step1', 'step2'), or from a shallow
    # copy each placed moment ('step2 optimizer step at last mlp.up_proj.weight').
    moments: dict[str, dict[str, int]] = field(default_factory=dict)


class PlaceholderScalars(torch.utils._python_dispatch.TorchDispatchMode):
    """Answers the few value-dependent ops fake tensors cannot: `.item()` reads 1.0 / 1 /
    True; `nonzero` and boolean-mask indexing select every element. Scalar reads are mostly
    step counters and norms that decide no allocation; where memory does depend on values
    (SPAM keeps moments only for its masked entries, density 1 by default) selecting
    everything is the upper bound. `selections` counts those, so an estimate can say so."""

    def __init__(self) -> None:
        super().__init__()
        self.selections = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        aten = torch.ops.aten
        if func is aten._local_scalar_dense.default:
            dtype = args[0].dtype
            return True if dtype == torch.bool else 1.0 if dtype.is_floating_point else 1
        if func is aten.nonzero.default:
            self.selections += 1
            t = args[0]
            return torch.empty((t.numel(), t.dim()), dtype=torch.long, device=t.device)
        if func in _MASK_INDEXING and any(_is_mask(i) for i in args[1]):
            self.selections += 1
            args = (args[0], _full_selections(args[1]), *args[2:])
        return func(*args, **(kwargs or {}))


_MASK_INDEXING = (torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default,
                  torch.ops.aten.index_put_.default, torch.ops.aten._index_put_impl_.default)


def _is_mask(index) -> bool:
    return isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)


def _full_selections(indices) -> list:
    """Each boolean mask of k dims -> k integer indices as long as the mask: all selected."""
    out = []
    for index in indices:
        if _is_mask(index):
            out += [torch.empty(index.numel(), dtype=torch.long, device=index.device)] * index.dim()
        else:
            out.append(index)
    return out


class _StepPlaces(TorchDispatchMode):
    """Which parameter an optimizer step is at, for its moments' places: an op on a
    parameter, its gradient or its state moves the step there (measure.parameter_place);
    ops on the temporaries that follow stay with it; an op over several places at once (a
    foreach over every parameter, clipping's total norm) is 'global'."""

    def __init__(self, model: torch.nn.Module, layers: int) -> None:
        super().__init__()
        self.model, self.layers = model, layers
        self.place_of: dict[int, tuple[str, ...]] = {}
        self.current: tuple[str, ...] = ("outside",)

    @contextlib.contextmanager
    def watching(self, optimizer: torch.optim.Optimizer) -> Iterator[None]:
        """Know this step's tensors (gradients are new each step, state from step 2 on)."""
        self.place_of.clear()
        for name, p in self.model.named_parameters():
            # Each parameter of a layer its own place ('last mlp.up_proj.weight'): moments at
            # two of them may grow apart with depth (step 1 makes each one's state as it goes).
            within = name.partition(".layers.")[2].partition(".")[2]
            place = tuple(f"{where} {within}".strip()
                          for where in measure.parameter_place(name, self.layers))
            tensors = [p, p.grad] + list(state_tensors_of(optimizer, p))
            for t in tensors:
                if isinstance(t, torch.Tensor):
                    # A weak reference: holding the tensor would keep a state entry the step
                    # replaces alive; once it dies, its storage's address may be a new tensor's.
                    self.place_of[t.untyped_storage()._cdata] = (place, weakref.ref(t))
        self.current = ("outside",)
        with self:
            yield

    def now(self) -> list[str]:
        return list(self.current)

    def _place(self, tensor: torch.Tensor) -> tuple[str, ...] | None:
        known = self.place_of.get(tensor.untyped_storage()._cdata)
        if known is None or known[1]() is None:
            return None
        return known[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        seen = {self._place(t) for t in torch.utils._pytree.tree_leaves((args, kwargs))
                if isinstance(t, torch.Tensor)} - {None}
        if len(seen) == 1:
            self.current = seen.pop()
        elif seen:
            self.current = ("global",)
        return func(*args, **(kwargs or {}))


class Estimator:
    """Traces for one model and dtype, cached, so many optimizers and workloads share them."""

    def __init__(self, model: str, dtype: str = "bf16", layers: int | None = None) -> None:
        from torch._subclasses.fake_tensor import FakeTensorMode

        self.model_name, self.dtype = model, dtype
        self.layers = layers or get_model_size(model).num_hidden_layers
        # The moments DepthEstimator extrapolates, recorded only by its shallow copies: they
        # cost the tracker time on every op.
        self.record_moments = layers is not None
        self.meta_model = build_model(model, torch_dtype(dtype), "meta", layers=layers)
        self.fake_mode = FakeTensorMode()
        self._fwd_bwd: dict[Workload, dict[str, int]] = {}
        self._steps: dict[tuple, tuple] = {}

    def estimate(self, workload: Workload, optimizer: str, hparams: dict | None = None,
                 label: str | None = None) -> Estimate:
        """The peak of a full training step (the larger of steps 1 and 2), or an error row."""
        est, traced = self.traced(workload, optimizer, hparams, label)
        if traced is not None:
            est.parts = max(traced.candidates, key=lambda parts: sum(parts.values()))
            fill(est, self.dtype, self.layers, traced)
        return est

    def traced(self, workload: Workload, optimizer: str, hparams: dict | None = None,
               label: str | None = None) -> tuple[Estimate, "Traced | None"]:
        """The estimate row (its error set when the step cannot be traced) and what was traced:
        every moment that can be the step's peak, before the largest is taken."""
        self._check(workload)
        name = get_spec(optimizer).name
        resolved = resolve_hparams(name, hparams or {}, workload.model)
        est = Estimate(label or name, name, resolved, workload)
        with warnings.catch_warnings():
            # Library chatter (create_graph reference cycles, fake data pointers) is not news here.
            warnings.simplefilter("ignore", UserWarning)
            try:
                traced = self._trace(est)
            except NotTraceable as exc:
                est.error = str(exc)
                return est, None
        return est, traced

    def _check(self, workload: Workload) -> None:
        if (workload.model, workload.dtype) != (self.model_name, self.dtype):
            raise ValueError(f"this Estimator traces {self.model_name} in {self.dtype}, "
                             f"not {workload.model} in {workload.dtype}")

    def _trace(self, est: Estimate) -> "Traced":
        if get_spec(est.optimizer).needs_create_graph:
            return self._trace_whole(est)
        return self._trace_composed(est)

    # -- the two ways to get a step's candidate peaks

    def _trace_composed(self, est: Estimate) -> "Traced":
        state, step_peaks, selections, attention, _ = self._optimizer_steps(est)
        fb = {**self.fwd_bwd_peak(est.workload), "optimizer_state": state["bytes"]}
        return Traced([fb, *step_peaks], state, selections, attention)

    def _trace_whole(self, est: Estimate) -> "Traced":
        w = est.workload
        model = self.fake_model()
        with self.fake_mode, PlaceholderScalars() as placeholders:
            optimizer = build_traced(est, model)
            windows = self.windows(w)
            opts = w.step_options(create_graph=get_spec(est.optimizer).needs_create_graph)
            peaks = []
            with not_traceable(est.optimizer, "a training step"):
                for _ in range(2):
                    with measure.tracked_peak(model, optimizer) as peak:
                        train_step(model, optimizer, windows, opts)
                    peaks.append(peak_parts(peak))
            state = state_summary(optimizer)
        return Traced(peaks, state, placeholders.selections, attention_kernel(model))

    # -- traces

    def traced_steps(self, workload: Workload, optimizer: str, hparams: dict | None = None,
                     label: str | None = None) -> tuple[Estimate, "Traced | None"]:
        """The estimate row and the optimizer's two steps alone, traced on fake gradients (no
        forward or backward): their peaks as moments 'step1', 'step2', or on a shallow copy
        the fullest moment of each step, phase and parameter place ('step2 optimizer step at
        last')."""
        self._check(workload)
        name = get_spec(optimizer).name
        est = Estimate(label or name, name, resolve_hparams(name, hparams or {}, workload.model),
                       workload)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            try:
                state, peaks, selections, attention, placed = self._optimizer_steps(est)
            except NotTraceable as exc:
                est.error = str(exc)
                return est, None
        moments = placed or {f"step{i + 1}": peak for i, peak in enumerate(peaks)}
        return est, Traced(peaks, state, selections, attention, moments)

    def step_timeline(self, workload: Workload, optimizer: str,
                      hparams: dict | None = None) -> list[list[int]]:
        """The memory timeline of one whole training step (steps 1 and 2 traced, the one with
        the larger peak kept): what `estimate --timeline` draws. Its largest total is the
        estimate's peak (the composed peak equals a whole-step trace's)."""
        self._check(workload)
        name = get_spec(optimizer).name
        est = Estimate(name, name, resolve_hparams(name, hparams or {}, workload.model), workload)
        model = self.fake_model()
        best: list = []
        with warnings.catch_warnings(), self.fake_mode, PlaceholderScalars():
            warnings.simplefilter("ignore", UserWarning)
            optimizer_ = build_traced(est, model)
            opts = workload.step_options(create_graph=get_spec(name).needs_create_graph)
            windows = self.windows(workload)
            for _ in range(2):
                timeline: list = []
                with not_traceable(name, "a training step"):
                    with measure.tracked_peak(model, optimizer_, timeline):
                        train_step(model, optimizer_, windows, opts)
                if not best or _top(timeline) > _top(best):
                    best = timeline
        return measure.thinned(best)

    def fwd_bwd_peak(self, workload: Workload) -> dict[str, int]:
        """Peak parts of forward+backward alone (no optimizer state), cached per workload."""
        return self._fwd_bwd_trace(workload)[0]

    def fwd_bwd_moments(self, workload: Workload) -> dict[str, dict[str, int]]:
        """The fullest moment of each (phase, place) of forward+backward (measure.step_places)."""
        return self._fwd_bwd_trace(workload)[1]

    def _fwd_bwd_trace(self, workload: Workload) -> tuple[dict[str, int], dict]:
        self._check(workload)
        key = dataclasses.replace(workload, grad_clip=None)
        if key not in self._fwd_bwd:
            model = self.fake_model()
            moments: dict = {}
            with self.fake_mode, PlaceholderScalars():  # the loss's .item()
                windows = self.windows(workload)
                with measure.tracked_peak(model, None,
                                          moments=moments if self.record_moments else None) as peak:
                    forward_backward(model, windows, workload.step_options())
            self._fwd_bwd[key] = (peak_parts(peak), _named_moments(moments))
        return self._fwd_bwd[key]

    def _optimizer_steps(self, est: Estimate) -> tuple[dict, list[dict], int, str, dict]:
        """State summary, the peak parts of steps 1 and 2, value-dependent selections,
        attention, and (for a shallow copy, record_moments) the fullest moment of each step,
        phase and place, the place being the parameter the step is at (_StepPlaces)."""
        key = (est.optimizer, repr(sorted(est.hparams.items())), est.workload.grad_clip)
        if key not in self._steps:
            model = self.fake_model()
            moments: dict = {}
            with self.fake_mode, PlaceholderScalars() as placeholders:
                optimizer = build_traced(est, model)
                places = _StepPlaces(model, self.layers) if self.record_moments else None
                peaks = []
                for step in range(2):
                    for p in model.parameters():
                        p.grad = torch.empty_like(p) if p.requires_grad else None
                    found: dict = {}
                    with not_traceable(est.optimizer, "optimizer.step()"), \
                            places.watching(optimizer) if places else contextlib.nullcontext():
                        with measure.tracked_peak(model, optimizer, moments=found if places else None,
                                                  places=places.now if places else None) as peak:
                            optimizer_step(model, optimizer, est.workload.grad_clip)
                    peaks.append(peak_parts(peak))
                    moments.update({f"step{step + 1} {name}": parts
                                    for name, parts in _named_moments(found).items()})
                state = state_summary(optimizer)
            self._steps[key] = (state, peaks, placeholders.selections, attention_kernel(model),
                                moments)
        return self._steps[key]

    def fake_model(self) -> torch.nn.Module:
        """A fresh fake copy: an optimizer may change its model (AdaHessian: eager attention)."""
        model = copy.deepcopy(self.meta_model)
        with self.fake_mode:
            for module in model.modules():
                for registry in (module._parameters, module._buffers):
                    for key, t in registry.items():
                        if t is not None:
                            registry[key] = _fake_like(t)
        return model

    def windows(self, w: Workload) -> list[torch.Tensor]:
        vocab = get_model_size(w.model).vocab_size
        return [torch.randint(0, vocab, (w.batch_size, w.seq_len + 1)) for _ in range(w.grad_accum)]


def _named_moments(moments: dict) -> dict[str, dict[str, int]]:
    """measure's {(phase, place): part bytes} as {'backward at last': {part: bytes}}."""
    return {f"{measure.TIMELINE_PHASES[phase]} at {place}": dict(zip(MEMORY_PARTS, parts))
            for (phase, place), parts in moments.items()}


def _top(timeline: list[list[int]]) -> int:
    return max((sum(point[1:]) for point in timeline), default=-1)


def fill(est: Estimate, dtype: str, layers: int, traced: Traced) -> None:
    """The estimate's counts for its model at `layers` decoder layers, and its notes."""
    size = dataclasses.replace(get_model_size(est.workload.model), num_hidden_layers=layers)
    est.n_params = size.n_params()
    est.param_bytes = est.n_params * torch_dtype(dtype).itemsize
    est.optimizer_state_bytes = traced.state["bytes"]
    est.paper_state_values = traced.state["paper_bytes"] // PAPER_BYTES_PER_VALUE
    est.paper_bytes = PAPER_BYTES_PER_VALUE * est.n_params + traced.state["paper_bytes"]
    est.attention = traced.attention
    if traced.selections:
        est.note = f"upper bound: {traced.selections} mask selections taken as full"


# The depths a deep model's estimate is extrapolated from: the line through the last two, the
# first to check that the step is a line in depth at all (held against full traces in the
# tests and in benchmarks/estimate_speed.py).
SHALLOW_DEPTHS = (2, 3, 4)
# Below this many layers a full trace is cheaper than the three shallow ones (llama_60m's 8
# layers: 45 s in full against 78 s for the roster); llama_350m, 1b and 7b are extrapolated.
EXTRAPOLATE_FROM_LAYERS = 16


class DepthEstimator:
    """Estimates of a deep model from forward+backward traced on shallow copies of it.

    Forward+backward depends on the batch (so `fit` traces it at every probe) and is a repeat
    of one decoder layer: at each of its moments that can be the peak (the fullest of each
    phase and place, measure.step_places) each part's bytes are a line in the number of
    layers. Traces at 3 and 4 layers give the lines; the trace at 2 layers must lie on them too
    (at 1 the first layer is also the last), else the model is traced whole. The optimizer
    step does not depend on the batch and is extrapolated the same way, once per optimizer,
    with the parameter it is at as the place (the embedding, the first and the last layer's,
    the final norm, the head; 'global' for an op over every parameter): its peak is not a line
    in depth (SWAN's and NS-norm SGD's scratch is their largest matrix's until what they keep
    per layer outgrows it), but each such moment is; a step whose moments are not, or that
    works on several layers at once with a cap (OptimizerSpec.step_extrapolates), is traced
    at full depth. The estimate takes each moment at the model's depth, the state held, and
    then the largest, as a full trace would."""

    def __init__(self, model: str, dtype: str = "bf16",
                 from_layers: int = EXTRAPOLATE_FROM_LAYERS) -> None:
        self.model_name, self.dtype = model, dtype
        self.layers = get_model_size(model).num_hidden_layers
        self.from_layers = max(from_layers, max(SHALLOW_DEPTHS) + 1)
        self.shallow = [Estimator(model, dtype, layers=d) for d in SHALLOW_DEPTHS]

    @functools.cached_property
    def meta_model(self) -> torch.nn.Module:
        return build_model(self.model_name, torch_dtype(self.dtype), "meta")

    @functools.cached_property
    def exact(self) -> Estimator:
        return Estimator(self.model_name, self.dtype)

    def estimate(self, workload: Workload, optimizer: str, hparams: dict | None = None,
                 label: str | None = None) -> Estimate:
        whole = get_spec(optimizer).needs_create_graph  # its step needs the batch's graph
        if self.layers < self.from_layers or whole:
            return self.exact.estimate(workload, optimizer, hparams, label)
        moments = self._fwd_bwd_moments(workload)
        if moments is None:  # not a line in depth: trace every layer
            return self.exact.estimate(workload, optimizer, hparams, label)
        est, traced = self._steps_at_depth(workload, optimizer, hparams, label)
        if traced is None:
            return est
        held = {**{k: {**m, "optimizer_state": traced.state["bytes"]} for k, m in moments.items()},
                **traced.moments}
        est.parts = max(held.values(), key=lambda parts: sum(parts.values()))
        fill(est, self.dtype, self.layers, traced)
        return est

    def _fwd_bwd_moments(self, workload: Workload) -> dict[str, dict[str, int]] | None:
        """Forward+backward's moments at the model's depth; None when one is not a line."""
        return _moments_at_depth([e.fwd_bwd_moments(workload) for e in self.shallow],
                                 self.layers)

    def _steps_at_depth(self, workload: Workload, optimizer: str, hparams: dict | None,
                        label: str | None) -> tuple[Estimate, "Traced | None"]:
        """The optimizer's two steps at the model's depth: each moment (step, phase, the
        parameter it is at) and the state's counts taken along their lines from the shallow
        traces, or, where one is not a line, the steps traced at full depth."""
        if not get_spec(optimizer).step_extrapolates:  # its scratch is capped past some depth
            return self.exact.traced_steps(workload, optimizer, hparams, label)
        shallow = [e.traced_steps(workload, optimizer, hparams, label) for e in self.shallow]
        if any(traced is None for _, traced in shallow):
            return self.exact.traced_steps(workload, optimizer, hparams, label)
        first, low, high = (traced for _, traced in shallow)
        moments = _moments_at_depth([t.moments for t in (first, low, high)], self.layers)
        counts = [{**t.state, "selections": t.selections} for t in (first, low, high)]
        if moments is None or not _on_line(*counts) or len({first.attention, high.attention}) > 1:
            return self.exact.traced_steps(workload, optimizer, hparams, label)
        at_depth = _at_depth(counts[1], counts[2], self.layers)
        state = {"bytes": at_depth["bytes"], "paper_bytes": at_depth["paper_bytes"]}
        est = shallow[2][0]
        return est, Traced(list(moments.values()), state, at_depth["selections"], high.attention,
                           moments)


def _moments_at_depth(shallow: list[dict[str, dict[str, int]]],
                      layers: int) -> dict[str, dict[str, int]] | None:
    """Each moment of the traces at SHALLOW_DEPTHS taken to `layers` along its line; None
    when the traces do not have the same moments or one is not on its line."""
    first, low, high = shallow
    if not set(first) == set(low) == set(high):
        return None
    if not all(_on_line(first[k], low[k], high[k]) for k in high):
        return None
    return {k: _at_depth(low[k], high[k], layers) for k in high}


def _on_line(first: dict[str, int], low: dict[str, int], high: dict[str, int]) -> bool:
    """Whether every count at the first depth is where the line through the others puts it."""
    d0 = SHALLOW_DEPTHS[0]
    return all(_line(low.get(k, 0), high.get(k, 0), d0) == first.get(k, 0)
               for k in dict.fromkeys([*first, *low, *high]))


def _line(low: int, high: int, layers: int) -> int:
    """The value at `layers` on the line through the last two shallow depths."""
    d1, d2 = SHALLOW_DEPTHS[-2:]
    return low + (high - low) * (layers - d1) // (d2 - d1)


def _keys(low: dict, high: dict) -> list:
    return list(dict.fromkeys([*low, *high]))


def _at_depth(low: dict[str, int], high: dict[str, int], layers: int) -> dict[str, int]:
    return {key: _line(low.get(key, 0), high.get(key, 0), layers) for key in _keys(low, high)}


def _fake_like(t: torch.Tensor) -> torch.Tensor:
    fake = torch.empty(t.shape, dtype=t.dtype, device="cpu")
    if isinstance(t, torch.nn.Parameter):
        return torch.nn.Parameter(fake, requires_grad=t.requires_grad)
    return fake


def build_traced(est: Estimate, model: torch.nn.Module) -> torch.optim.Optimizer:
    with not_traceable(est.optimizer, "its constructor"):
        return get_spec(est.optimizer).factory(model, est.hparams)


@contextlib.contextmanager
def not_traceable(optimizer: str, where: str, passing: tuple = ()) -> Iterator[None]:
    """Any failure inside becomes NotTraceable with a one-line reason (the row says why), but
    the exception types in `passing`, which the caller handles itself."""
    try:
        yield
    except passing:
        raise
    except Exception as exc:
        first = informative_line(str(exc))[:160]
        raise NotTraceable(f"{optimizer} cannot be traced on fake tensors: {where} raised "
                           f"{type(exc).__name__}: {first}") from exc


def state_summary(optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Real bytes of the state, and its bytes under the papers' 2-bytes-a-value convention
    (integer state, e.g. 8-bit moments and their indices, keeps its own width)."""
    tensors = state_tensors(optimizer)
    real = sum(t.untyped_storage().nbytes() for t in tensors)
    paper = sum(t.numel() * (PAPER_BYTES_PER_VALUE if t.is_floating_point() else t.element_size())
                for t in tensors)
    return {"bytes": real, "paper_bytes": paper}


def attention_kernel(model: torch.nn.Module) -> str:
    impl = getattr(model.config, "_attn_implementation", None) or "sdpa"
    if impl == "sdpa":
        return "sdpa (flash kernel: output + log-sum-exp kept, no seq×seq scores)"
    return f"{impl} (seq×seq attention scores kept for backward)"


@functools.lru_cache(maxsize=8)
def estimator(model: str, dtype: str, exact: bool = False) -> Estimator | DepthEstimator:
    """One shared estimator per model and dtype within a process: the depth-extrapolating one,
    or with `exact` the full trace."""
    return Estimator(model, dtype) if exact else DepthEstimator(model, dtype)


def workload_of(cell) -> Workload:
    """The traced step of a suite cell (its model, seq len, batch, dtype, autocast, ...)."""
    d = cell.defaults
    return Workload(cell.model, cell.seq_len, d.batch_size, d.dtype, d.autocast, d.grad_accum,
                    d.grad_clip)


def measured_peak(workload: Workload, optimizer: str, hparams: dict | None = None,
                  device: str = "cpu", seed: int = 0) -> dict[str, int]:
    """The same two steps on real tensors: what an estimate is held against.

    On CPU the peak comes from the same tracker; on CUDA also `max_memory_allocated`
    (as `cuda_max_allocated_bytes`), the allocator's own count.
    """
    torch.manual_seed(seed)
    name = get_spec(optimizer).name
    resolved = resolve_hparams(name, hparams or {}, workload.model)
    model = build_model(workload.model, torch_dtype(workload.dtype), device)
    opt = get_spec(name).factory(model, resolved)
    vocab = get_model_size(workload.model).vocab_size
    windows = [torch.randint(0, vocab, (workload.batch_size, workload.seq_len + 1), device=device)
               for _ in range(workload.grad_accum)]
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    opts = workload.step_options(get_spec(name).needs_create_graph, device_type)
    if device_type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    peaks = []
    for _ in range(2):
        with measure.tracked_peak(model, opt) as peak:
            train_step(model, opt, windows, opts)
        peaks.append(peak)
    out = max(peaks, key=lambda p: p["tracked_peak_bytes"])
    if device_type == "cuda":
        out["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return out

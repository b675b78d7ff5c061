"""A suite and its cells as frozen dataclasses: what a benchmark is, once its YAML is read.

A suite is a grid (model × optimizer and its search space's trials × sequence length ×
parallel strategy × seed) sharing one set of training
defaults and one data source. `expand` turns it into cells, each fully resolved (hparams,
device) and carrying its identity — config and fingerprint — computed once, when it is made.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterator

from optbench.config import sweep
from optbench.config.schedules import LRSchedule
from optbench.config.sweep import Search
from optbench.data import DataConfig, corpus_key
from optbench.models import get_model_size
from optbench.optimizers import get_spec, resolve_hparams

# Bump when what a run measures, or how, changes: old results then stop matching.
MEASUREMENT_VERSION = "2"  # 2: temporaries split from activations in the peak breakdown
# meta: nothing is trained; each cell's peak memory is traced on fake tensors
# (optbench.engine.trace) and stored with status "estimated".
DEVICES = ("auto", "cpu", "cuda", "meta")
# How a cell's ranks share the work (optbench.engine.parallel): none is one process; the others
# run `nproc` ranks under torchrun, each on its own batches.
PARALLEL_STRATEGIES = ("none", "ddp", "fsdp2", "zero1")


@dataclass(frozen=True)
class Parallel:
    """A data-parallel strategy and its rank count; `batch_size` is per rank."""

    strategy: str = "none"  # none | ddp | fsdp2 | zero1
    nproc: int = 1  # ranks (processes), one device each on CUDA

    @property
    def sharded(self) -> bool:
        """More than the plain one-process cell (a 1-rank DDP cell included)."""
        return self.strategy != "none"

    @property
    def label(self) -> str:
        """'fsdp2x2', as in cell ids; 'none' for one process."""
        return f"{self.strategy}x{self.nproc}" if self.sharded else "none"


def parallel_from_label(label: str) -> Parallel | None:
    """'none' and 'fsdp2x2' (as cell ids write them) -> Parallel; None for anything else."""
    if label == "none":
        return Parallel()
    strategy, _, count = label.rpartition("x")
    if strategy in PARALLEL_STRATEGIES[1:] and count.isdigit() and int(count) >= 1:
        return Parallel(strategy, int(count))
    return None


# A per-rank estimate (device meta, `estimate --parallel`) builds every rank's model in one
# process to learn its shard shapes: more than this would take long, and no job has them.
MAX_ESTIMATED_RANKS = 1024

PARALLEL_FORMS = "none, STRATEGYxN (e.g. fsdp2x2) or {strategy: fsdp2, nproc: 2}"


@dataclass(frozen=True)
class Defaults:
    """Training and measurement settings shared by every cell of a suite."""

    device: str = "auto"  # auto (cuda if available) | cpu | cuda | meta (estimate memory only)
    dtype: str = "fp32"  # dtype of the weights (and so of grads and most optimizer state)
    autocast: bool = False  # bf16 autocast of forward/backward on top of the weights' dtype
    seed: int = 0  # seeds weights, batch order and any randomness in the optimizer
    steps: int = 50  # optimizer steps per cell
    warmup: int = 3  # first steps left out of the timing (compile, allocator, lazy state)
    batch_size: int = 8  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr_schedule: LRSchedule = field(default_factory=LRSchedule)
    grad_clip: float | None = 1.0  # max global grad norm; null disables clipping
    eval_batches: int = 4  # held-out batches for eval loss / perplexity
    timeout_s: float | None = None  # limit on a cell's training loop (after data and model load); past it 'crashed'
    parallel: Parallel = field(default_factory=Parallel)  # ranks and strategy (grid.parallel overrides)
    compile: bool = False  # run the model under torch.compile (TorchInductor); compile time apart


@dataclass(frozen=True)
class OptimizerChoice:
    """One optimizer of the grid: a registry name, hparam overrides, and a display label."""

    name: str
    hparams: dict[str, Any] = field(default_factory=dict)
    label: str | None = None  # defaults to the name; needed to tell two setups of one name apart
    # A search space: one cell per trial. None: the suite's `search.space`; {}: no search.
    sweep: dict[str, Any] | None = None

    @property
    def display(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class Grid:
    """The axes of the benchmark: every combination is one cell."""

    models: tuple[str, ...]
    optimizers: tuple[OptimizerChoice, ...]
    seq_lens: tuple[int, ...]
    parallel: tuple[Parallel, ...] = ()  # empty: every cell takes defaults.parallel
    seeds: tuple[int, ...] = ()  # empty: every cell takes defaults.seed; else one cell per seed


@dataclass(frozen=True)
class WandbLog:
    """Weights & Biases as a destination: one W&B run per cell (optbench.render.export)."""

    project: str = "optbench"
    offline: bool = False  # write the run files locally only (`wandb sync` uploads them later)
    dir: str = ""  # where wandb keeps its files; empty: wandb's own default, ./wandb


@dataclass(frozen=True)
class LogTo:
    """Where `run` streams each cell while it trains, beside the store (`log:` in a suite).
    Not part of any cell's configuration: where results are sent changes no result."""

    wandb: WandbLog | None = None
    tensorboard: str = ""  # a directory: one TensorBoard run per cell under DIR/SUITE/


@dataclass(frozen=True)
class Suite:
    """A benchmark suite, exactly the keys of its YAML file (plus `include:`)."""

    name: str
    grid: Grid
    description: str = ""
    defaults: Defaults = field(default_factory=Defaults)
    data: DataConfig = field(default_factory=DataConfig)
    search: Search = field(default_factory=Search)  # how `sweep` spaces become trials
    log: LogTo = field(default_factory=LogTo)  # streamed to W&B / TensorBoard while running


@dataclass(frozen=True)
class Cell:
    """One model × optimizer × seq_len run, fully resolved (hparams and device included).

    Made by `make_cell`, which computes `config` and `fingerprint` once: both are read for
    every store look-up, and building them means registry and model look-ups and a hash.
    """

    suite: str
    model: str
    optimizer: OptimizerChoice
    seq_len: int
    defaults: Defaults
    data: DataConfig
    corpus: str  # content hash of the data (data.corpus_key)
    config: dict[str, Any] = field(compare=False)  # everything that determines the result
    fingerprint: str = ""  # hash of `config` with the data named by its content
    seed_in_id: bool = field(default=False, compare=False)  # the suite has a seeds axis

    @property
    def parallel(self) -> Parallel:
        return self.defaults.parallel

    @property
    def tokens_per_step(self) -> int:
        """Tokens one optimizer step trains on, over all ranks (`batch_size` is per rank)."""
        d = self.defaults
        return d.parallel.nproc * d.batch_size * d.grad_accum * self.seq_len

    @property
    def launches_ranks(self) -> bool:
        """Whether the cell's ranks run as processes under torchrun: a sharded cell that trains.
        A `device: meta` cell estimates every rank in one process (optbench.engine.rank_trace)."""
        return self.parallel.sharded and self.defaults.device != "meta"

    @property
    def id(self) -> str:
        parts = [self.model, self.optimizer.display, f"seq{self.seq_len}"]
        if self.parallel.sharded:
            parts.append(self.parallel.label)
        if self.seed_in_id:
            parts.append(f"seed{self.defaults.seed}")
        return "/".join(parts)


def make_cell(suite: str, model: str, optimizer: OptimizerChoice, seq_len: int,
              defaults: Defaults, data: DataConfig, corpus: str, seed_in_id: bool = False) -> Cell:
    """A cell with its config and fingerprint computed."""
    config = cell_config(model, optimizer, seq_len, defaults, data)
    return Cell(suite, model, optimizer, seq_len, defaults, data, corpus, config,
                fingerprint(config, corpus), seed_in_id)


def cell_config(model: str, optimizer: OptimizerChoice, seq_len: int, defaults: Defaults,
                data: DataConfig) -> dict[str, Any]:
    """Everything that determines a result; stored with it and hashed into the fingerprint."""
    spec = get_spec(optimizer.name)
    return {
        "model": dataclasses.asdict(get_model_size(model)),
        "optimizer": {
            "name": spec.name,
            "label": optimizer.display,
            "hparams": _jsonable(optimizer.hparams),
            "version": spec.version,
            "source": spec.source,
            "policy": spec.policy,  # which params get which treatment: part of fairness
        },
        "seq_len": seq_len,
        "defaults": dataclasses.asdict(defaults),
        "data": dataclasses.asdict(data),
        "measurement_version": MEASUREMENT_VERSION,
    }


# Settings that bound a run but do not change what it measures stay out of the hash.
_NOT_FINGERPRINTED = ("timeout_s",)


def fingerprint(config: dict[str, Any], corpus: str) -> str:
    """Hash of the resolved config, with the data named by its content, not its path."""
    view = json.loads(json.dumps(config, default=str))
    for key in _NOT_FINGERPRINTED:
        view["defaults"].pop(key, None)
    # One process is what every cell was before strategies existed: its results stay comparable.
    if view["defaults"].get("parallel", {}).get("strategy", "none") == "none":
        view["defaults"].pop("parallel", None)
    if not view["defaults"].get("compile", False):  # eager, as every cell was before
        view["defaults"].pop("compile", None)
    schedule = view["defaults"].get("lr_schedule", {})
    if schedule.get("kind") != "wsd":  # only WSD reads it: earlier results keep their hash
        schedule.pop("cooldown_fraction", None)
    view["data"].pop("path", None)
    view["optimizer"].pop("label", None)  # a display name: relabelling is not a new experiment
    view["data"]["corpus"] = corpus
    blob = json.dumps(view, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _jsonable(value: Any) -> Any:
    """Tuples -> lists so a config survives a JSON round trip unchanged."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


# Several nodes (docs/parallel.md#several-nodes): every node runs `optbench run` with these set,
# and a sharded cell's ranks are spread over the nodes by torchrun's static rendezvous, node 0
# (whose optbench stores the results) holding rank 0.
NNODES_ENV, NODE_RANK_ENV, MASTER_ENV = "OPTBENCH_NNODES", "OPTBENCH_NODE_RANK", "OPTBENCH_MASTER"


def launch_nodes() -> int:
    """How many nodes a sharded cell's ranks are spread over (OPTBENCH_NNODES; 1 when unset)."""
    return _env_count(NNODES_ENV, "1", minimum=1)


def node_rank() -> int:
    """This node's place, 0..nodes-1 (OPTBENCH_NODE_RANK, else SLURM's SLURM_NODEID)."""
    import os

    from optbench.errors import OptbenchError

    nodes = launch_nodes()
    rank = _env_count(NODE_RANK_ENV, os.environ.get("SLURM_NODEID", ""), minimum=0)
    if nodes > 1 and rank >= nodes:
        raise OptbenchError(f"{NODE_RANK_ENV}={rank}: accepted 0..{nodes - 1} ({NNODES_ENV}={nodes})")
    return rank


def master_endpoint() -> tuple[str, int]:
    """HOST:PORT of node 0, where every node's torchrun meets (OPTBENCH_MASTER)."""
    import os

    from optbench.errors import OptbenchError

    host, _, port = os.environ.get(MASTER_ENV, "").rpartition(":")
    if not host or not port.isdigit():
        raise OptbenchError(f"{NNODES_ENV}={launch_nodes()} needs {MASTER_ENV}=HOST:PORT, node 0's "
                            "address and a free port (e.g. its hostname:29500)")
    return host, int(port)


def _env_count(name: str, fallback: str, minimum: int) -> int:
    import os

    from optbench.errors import OptbenchError

    raw = os.environ.get(name, "").strip() or fallback or str(minimum)
    if not raw.isdigit() or int(raw) < minimum:
        raise OptbenchError(f"{name}={raw!r}: expected an integer >= {minimum}")
    return int(raw)


def check_launch_env() -> None:
    """One-line errors for the several-node settings, before any cell runs."""
    if launch_nodes() > 1:
        node_rank()
        master_endpoint()


def expand(suite: Suite, corpus: str | None = None) -> list[Cell]:
    """Cells in grid order (model, then seq_len, then optimizer, then parallel strategy, then
    seed), hparams and device resolved.

    The corpus is hashed here unless `corpus` is given (every cell of a suite shares it).
    """
    defaults = dataclasses.replace(suite.defaults, device=resolve_device(suite.defaults.device))
    corpus = corpus_key(suite.data) if corpus is None else corpus
    return list(_cells(suite, defaults, corpus))


def _trials(choice: OptimizerChoice, model: str, search: Search) -> Iterator[OptimizerChoice]:
    """A resolved choice per trial of its search space (one when it has none): the registry's
    name, every hparam resolved, and the trial's label."""
    base = resolve_hparams(choice.name, choice.hparams, model)
    for trial in sweep.trials(search.space_of(choice.sweep), search, "sweep"):
        hparams = resolve_hparams(choice.name, {**choice.hparams, **sweep.apply(trial, base)}, model)
        # Store the registry's name (an alias like `adam` stays visible as the label).
        yield dataclasses.replace(choice, name=get_spec(choice.name).name, hparams=hparams,
                                  label=sweep.label(choice.display, trial), sweep={})


def _cells(suite: Suite, defaults: Defaults, corpus: str) -> Iterator[Cell]:
    strategies = suite.grid.parallel or (defaults.parallel,)
    seeds = suite.grid.seeds or (defaults.seed,)
    for model in suite.grid.models:
        for seq_len in suite.grid.seq_lens:
            for resolved in (trial for choice in suite.grid.optimizers
                             for trial in _trials(choice, model, suite.search)):
                for parallel in strategies:
                    for seed in seeds:
                        setup = dataclasses.replace(defaults, parallel=parallel, seed=seed)
                        yield make_cell(suite.name, model, resolved, seq_len, setup, suite.data,
                                        corpus, seed_in_id=bool(suite.grid.seeds))

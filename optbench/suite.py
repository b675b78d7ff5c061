"""Suite YAML -> frozen dataclasses -> cells.

A suite is a grid (model × optimizer × sequence length) sharing one set of training
defaults and one data source. `load_suite` validates everything it can without running:
unknown keys, wrong types, unknown model/optimizer names and hparams, bad ranges,
missing data files — each as one OptbenchError line naming the file and key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from optbench import typed
from optbench.data import DataConfig, validate_data_config
from optbench.errors import OptbenchError
from optbench.models import get_model_size
from optbench.optimizers import get_spec, resolve_hparams

# Bump when what a run measures, or how, changes: old results then stop matching.
MEASUREMENT_VERSION = "1"
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("fp32", "bf16")
SCHEDULES = ("cosine", "linear", "rex", "constant")


@dataclass(frozen=True)
class LRSchedule:
    """Learning-rate schedule applied as a factor on every param group's lr."""

    kind: str = "cosine"  # cosine | linear | rex | constant, each after a linear warm-up
    warmup_steps: int = 10  # linear warm-up from lr/warmup_steps to lr
    min_ratio: float = 0.1  # floor of the decay, as a fraction of the peak lr


@dataclass(frozen=True)
class Defaults:
    """Training and measurement settings shared by every cell of a suite."""

    device: str = "auto"  # auto (cuda if available) | cpu | cuda
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
    timeout_s: float | None = None  # wall-clock limit per cell; past it the cell is 'crashed'


@dataclass(frozen=True)
class OptimizerChoice:
    """One optimizer of the grid: a registry name, hparam overrides, and a display label."""

    name: str
    hparams: dict[str, Any] = field(default_factory=dict)
    label: str | None = None  # defaults to the name; needed to tell two setups of one name apart

    @property
    def display(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class Grid:
    """The axes of the benchmark: every combination is one cell."""

    models: tuple[str, ...]
    optimizers: tuple[OptimizerChoice, ...]
    seq_lens: tuple[int, ...]


@dataclass(frozen=True)
class Suite:
    """A benchmark suite, exactly the keys of its YAML file (plus `include:`)."""

    name: str
    grid: Grid
    description: str = ""
    defaults: Defaults = field(default_factory=Defaults)
    data: DataConfig = field(default_factory=DataConfig)


@dataclass(frozen=True)
class Cell:
    """One model × optimizer × seq_len run, fully resolved (hparams and device included)."""

    suite: str
    model: str
    optimizer: OptimizerChoice
    seq_len: int
    defaults: Defaults
    data: DataConfig

    @property
    def id(self) -> str:
        return f"{self.model}/{self.optimizer.display}/seq{self.seq_len}"

    def config(self) -> dict[str, Any]:
        """Everything that determines the result; stored with it and hashed into the fingerprint."""
        spec = get_spec(self.optimizer.name)
        return {
            "model": dataclasses.asdict(get_model_size(self.model)),
            "optimizer": {
                "name": spec.name,
                "label": self.optimizer.display,
                "hparams": _jsonable(self.optimizer.hparams),
                "version": spec.version,
                "source": spec.source,
                "policy": spec.policy,  # which params get which treatment: part of fairness
            },
            "seq_len": self.seq_len,
            "defaults": dataclasses.asdict(self.defaults),
            "data": dataclasses.asdict(self.data),
            "measurement_version": MEASUREMENT_VERSION,
        }

    @property
    def fingerprint(self) -> str:
        blob = json.dumps(self.config(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _jsonable(value: Any) -> Any:
    """Tuples -> lists so a config survives a JSON round trip unchanged."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# ---------------------------------------------------------------- loading


def load_suite(path: str | Path) -> Suite:
    """Parse, merge `include:`s, type-check and validate a suite file."""
    path = Path(path)
    where = str(path)
    raw = _read_with_includes(path, seen=())
    raw.setdefault("name", path.stem)
    grid_raw = raw.get("grid")
    if isinstance(grid_raw, dict) and "optimizers" in grid_raw:
        grid_raw["optimizers"] = _normalize_optimizers(grid_raw["optimizers"], where)
    suite = typed.build(Suite, raw, where)
    _validate(suite, where)
    return suite


def _read_with_includes(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if not path.is_file():
        raise OptbenchError(f"{path}: no such suite file")
    if path.resolve() in seen:
        raise OptbenchError(f"{path}: include cycle ({' -> '.join(str(p) for p in seen)})")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise OptbenchError(f"{path}: invalid YAML{at}: {problem}") from None
    if not isinstance(raw, dict):
        raise OptbenchError(f"{path}: expected a mapping of suite keys (name, grid, ...)")
    include = raw.pop("include", None)
    if include is None:
        return raw
    if not isinstance(include, str):
        raise OptbenchError(f"{path}: include: expected a path to another suite file")
    base = _read_with_includes(path.parent / include, seen + (path.resolve(),))
    base.pop("name", None)  # the including suite has its own identity
    return _deep_merge(base, raw)


def _deep_merge(base: dict, over: dict) -> dict:
    """Mappings merge key by key; anything else (lists included) is replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _normalize_optimizers(items: Any, where: str) -> Any:
    """Allow `- adamw` as shorthand for `- {name: adamw}`."""
    if not isinstance(items, list):
        return items
    return [{"name": item} if isinstance(item, str) else item for item in items]


def _validate(suite: Suite, where: str) -> None:
    d = suite.defaults
    _one_of(d.device, DEVICES, f"{where}: defaults.device")
    _one_of(d.dtype, DTYPES, f"{where}: defaults.dtype")
    _one_of(d.lr_schedule.kind, SCHEDULES, f"{where}: defaults.lr_schedule.kind")
    for key in ("steps", "batch_size", "grad_accum", "eval_batches"):
        _positive(getattr(d, key), f"{where}: defaults.{key}")
    if d.warmup < 0 or d.warmup >= d.steps - 1:
        raise OptbenchError(
            f"{where}: defaults.warmup: {d.warmup} leaves no timed step; "
            f"accepted: 0 <= warmup <= steps - 2 (steps is {d.steps})"
        )
    if d.lr_schedule.warmup_steps < 0:
        raise OptbenchError(f"{where}: defaults.lr_schedule.warmup_steps: must be >= 0")
    if not 0.0 <= d.lr_schedule.min_ratio <= 1.0:
        raise OptbenchError(f"{where}: defaults.lr_schedule.min_ratio: accepted 0..1")
    if d.grad_clip is not None and d.grad_clip <= 0:
        raise OptbenchError(f"{where}: defaults.grad_clip: must be > 0 (or null to disable)")
    if d.timeout_s is not None and d.timeout_s <= 0:
        raise OptbenchError(f"{where}: defaults.timeout_s: must be > 0 (or null for no limit)")
    _validate_grid(suite.grid, where)
    validate_data_config(suite.data, f"{where}: data")


def _validate_grid(grid: Grid, where: str) -> None:
    for key in ("models", "optimizers", "seq_lens"):
        if not getattr(grid, key):
            raise OptbenchError(f"{where}: grid.{key}: must list at least one entry")
    for i, model in enumerate(grid.models):
        _named(lambda: get_model_size(model), f"{where}: grid.models[{i}]")
    for i, choice in enumerate(grid.optimizers):
        key = f"{where}: grid.optimizers[{i}]"
        _named(lambda: get_spec(choice.name), key)
        for model in grid.models:
            _named(lambda: resolve_hparams(choice.name, choice.hparams, model), f"{key}.hparams")
    labels = [c.display for c in grid.optimizers]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise OptbenchError(
            f"{where}: grid.optimizers: '{dupes[0]}' appears twice; give each setup a distinct `label`"
        )
    for i, seq_len in enumerate(grid.seq_lens):
        _positive(seq_len, f"{where}: grid.seq_lens[{i}]")
        for model in grid.models:
            limit = get_model_size(model).max_position_embeddings
            if seq_len > limit:
                raise OptbenchError(
                    f"{where}: grid.seq_lens[{i}]: {seq_len} exceeds {model}'s max_seq {limit}"
                )


def _named(lookup, where: str) -> None:
    """Re-raise a registry's error with the file and key in front."""
    try:
        lookup()
    except OptbenchError as exc:
        raise OptbenchError(f"{where}: {exc}") from None


def _one_of(value: str, accepted: tuple[str, ...], where: str) -> None:
    if value not in accepted:
        raise OptbenchError(f"{where}: '{value}' is not accepted; accepted: {', '.join(accepted)}")


def _positive(value: int, where: str) -> None:
    if value <= 0:
        raise OptbenchError(f"{where}: {value} must be a positive integer")


# ---------------------------------------------------------------- expansion


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def expand(suite: Suite) -> Iterator[Cell]:
    """Cells in grid order (model, then seq_len, then optimizer), hparams and device resolved."""
    defaults = dataclasses.replace(suite.defaults, device=resolve_device(suite.defaults.device))
    for model in suite.grid.models:
        for seq_len in suite.grid.seq_lens:
            for choice in suite.grid.optimizers:
                hparams = resolve_hparams(choice.name, choice.hparams, model)
                resolved = dataclasses.replace(choice, hparams=hparams)
                yield Cell(suite.name, model, resolved, seq_len, defaults, suite.data)

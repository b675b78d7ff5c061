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
from optbench.data import DataConfig, corpus_key, validate_data_config
from optbench.errors import OptbenchError
from optbench.models import get_model_size
from optbench.optimizers import get_spec, resolve_hparams

# Bump when what a run measures, or how, changes: old results then stop matching.
MEASUREMENT_VERSION = "2"  # 2: temporaries split from activations in the peak breakdown
# meta: nothing is trained; each cell's peak memory is traced on fake tensors (optbench.estimate)
# and stored with status "estimated".
DEVICES = ("auto", "cpu", "cuda", "meta")
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
    corpus: str = ""  # content hash of the data (data.corpus_key), computed once per expand

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
        return _fingerprint(self.config(), self.corpus)


# Settings that bound a run but do not change what it measures stay out of the hash.
_NOT_FINGERPRINTED = ("timeout_s",)


def _fingerprint(config: dict[str, Any], corpus: str) -> str:
    """Hash of the resolved config, with the data named by its content, not its path."""
    view = json.loads(json.dumps(config, default=str))
    for key in _NOT_FINGERPRINTED:
        view["defaults"].pop(key, None)
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
    suite = dataclasses.replace(suite, data=_relative_to(suite.data, path.parent))
    _validate(suite, where)
    _reject_duplicate_cells(suite, where)
    return suite


def _relative_to(data: DataConfig, suite_dir: Path) -> DataConfig:
    """Relative data paths are relative to the suite file, like `include:`, not to the cwd."""
    changes = {}
    if data.path and not Path(data.path).expanduser().is_absolute():
        changes["path"] = str((suite_dir / data.path).resolve())
    tokenizer = Path(data.tokenizer)
    if data.tokenizer != "bpe" and not tokenizer.is_absolute() and (suite_dir / tokenizer).exists():
        changes["tokenizer"] = str((suite_dir / tokenizer).resolve())
    return dataclasses.replace(data, **changes) if changes else data


def _reject_duplicate_cells(suite: Suite, where: str) -> None:
    for key in ("models", "seq_lens"):
        values = list(getattr(suite.grid, key))
        dupes = sorted({str(v) for v in values if values.count(v) > 1})
        if dupes:
            raise OptbenchError(f"{where}: grid.{key}: '{dupes[0]}' is listed twice")
    seen: dict[str, str] = {}
    for cell in expand(suite):
        other = seen.setdefault(cell.fingerprint, cell.id)
        if other != cell.id:
            raise OptbenchError(
                f"{where}: grid.optimizers: cells {other} and {cell.id} are the same configuration"
            )


def _read_with_includes(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if not path.is_file():
        raise OptbenchError(f"{path}: no such suite file")
    if path.resolve() in seen:
        raise OptbenchError(f"{path}: include cycle ({' -> '.join(str(p) for p in seen)})")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as exc:
        raise OptbenchError(f"{path}: not UTF-8 text (byte {exc.start}); save the suite as UTF-8") from None
    except OSError as exc:
        raise OptbenchError(f"{path}: cannot read ({exc.strerror})") from None
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML would keep the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


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
    if not 0 <= d.seed < 2**63:
        raise OptbenchError(f"{where}: defaults.seed: {d.seed} is out of range; accepted 0 <= seed < 2^63")
    # Steps 1-2 run under the memory tracker and the first `warmup` are untimed. (A meta
    # suite trains nothing: it traces steps 1 and 2 whatever `steps` says.)
    if d.device != "meta" and (d.warmup < 0 or d.steps <= max(d.warmup, 2)):
        raise OptbenchError(
            f"{where}: defaults.warmup: {d.warmup} with steps {d.steps} leaves no timed step; "
            f"accepted: 0 <= warmup and steps > max(warmup, 2)"
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
    corpus = corpus_key(suite.data)
    for model in suite.grid.models:
        for seq_len in suite.grid.seq_lens:
            for choice in suite.grid.optimizers:
                hparams = resolve_hparams(choice.name, choice.hparams, model)
                # Store the registry's name (an alias like `adam` stays visible as the label).
                resolved = dataclasses.replace(choice, name=get_spec(choice.name).name,
                                               hparams=hparams, label=choice.display)
                yield Cell(suite.name, model, resolved, seq_len, defaults, suite.data, corpus)

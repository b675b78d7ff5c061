"""Suite YAML -> a validated `Suite`: includes merged, keys and types checked, names resolved.

`load_suite` validates everything it can without running: unknown keys, wrong types, unknown
model/optimizer names and hparams, bad ranges, missing data files — each as one OptbenchError
line naming the file and key. The YAML keys are exactly the dataclass fields (config.suite).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from optbench.config import schema, sweep
from optbench.config.sweep import SEARCH_METHODS, Search
from optbench.config.schedules import SCHEDULES
from optbench.config.suite import (
    DEVICES,
    MAX_ESTIMATED_RANKS,
    PARALLEL_FORMS,
    PARALLEL_STRATEGIES,
    Grid,
    Parallel,
    NNODES_ENV,
    Suite,
    check_launch_env,
    expand,
    launch_nodes,
    parallel_from_label,
    resolve_device,
)
from optbench.data import DataConfig, validate_data_config
from optbench.errors import OptbenchError, one_line
from optbench.metrics import DTYPES
from optbench.models import get_model_size
from optbench.optimizers import get_spec, resolve_hparams


# Ranks one cell may start on this node: torchrun's one process per device, with room for a
# large node; beyond it a typo (nproc: 200) would fork hundreds of processes.
MAX_RANKS = 64


def load_suite(path: str | Path) -> Suite:
    """Parse, merge `include:`s, type-check and validate a suite file."""
    path = Path(path)
    where = str(path)
    raw = _read_with_includes(path, seen=())
    # A suite's name names its report folder: from the file name, made safe; given, checked.
    raw.setdefault("name", re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._") or "suite")
    grid_raw = raw.get("grid")
    if isinstance(grid_raw, dict) and "optimizers" in grid_raw:
        grid_raw["optimizers"] = _normalize_optimizers(grid_raw["optimizers"], where)
    if isinstance(grid_raw, dict) and isinstance(grid_raw.get("parallel"), (str, dict)):
        grid_raw["parallel"] = [grid_raw["parallel"]]
    if isinstance(grid_raw, dict) and isinstance(grid_raw.get("parallel"), list):
        grid_raw["parallel"] = [_parallel_shorthand(item, f"{where}: grid.parallel[{i}]")
                                for i, item in enumerate(grid_raw["parallel"])]
    defaults_raw = raw.get("defaults")
    if isinstance(defaults_raw, dict) and "parallel" in defaults_raw:
        defaults_raw["parallel"] = _parallel_shorthand(defaults_raw["parallel"],
                                                       f"{where}: defaults.parallel")
    suite = schema.build(Suite, raw, where)
    suite = dataclasses.replace(suite, data=_relative_to(suite.data, path.parent))
    _validate(suite, where)
    _reject_duplicate_cells(suite, where)
    return suite


def _relative_to(data: DataConfig, suite_dir: Path) -> DataConfig:
    """Relative data paths are relative to the suite file, like `include:`, not to the cwd."""
    changes = {}
    if data.path and not _home_expanded(data.path, "data.path").is_absolute():
        changes["path"] = str((suite_dir / data.path).resolve())
    tokenizer = _home_expanded(data.tokenizer, "data.tokenizer")
    if data.tokenizer != "bpe" and not tokenizer.is_absolute() and (suite_dir / tokenizer).exists():
        changes["tokenizer"] = str((suite_dir / tokenizer).resolve())
    return dataclasses.replace(data, **changes) if changes else data


def _home_expanded(path: str, key: str) -> Path:
    """`~` and `~user` expanded; one line for a user this machine does not have."""
    try:
        return Path(path).expanduser()
    except RuntimeError as exc:  # ~nosuchuser: "Could not determine home directory"
        raise OptbenchError(f"{key}: {path!r}: {exc}") from None


def _reject_duplicate_cells(suite: Suite, where: str) -> None:
    for key in ("models", "seq_lens", "parallel", "seeds"):
        values = [getattr(v, "label", v) for v in getattr(suite.grid, key)]
        dupes = sorted({str(v) for v in values if values.count(v) > 1})
        if dupes:
            raise OptbenchError(f"{where}: grid.{key}: '{dupes[0]}' is listed twice")
    seen: dict[str, str] = {}
    # Every cell of a suite reads the same data: no need to hash the corpus to compare them.
    for cell in expand(suite, corpus=""):
        other = seen.setdefault(cell.fingerprint, cell.id)
        if other != cell.id:
            raise OptbenchError(
                f"{where}: grid.optimizers: cells {other} and {cell.id} are the same configuration"
            )


MAX_INCLUDES = 32  # a chain of includes deeper than this is a mistake, not a design


def _read_with_includes(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if len(seen) > MAX_INCLUDES:
        raise OptbenchError(f"{path}: include chain deeper than {MAX_INCLUDES} files")
    try:
        path = path.expanduser()
        found = path.is_file()
    except (OSError, ValueError, RuntimeError) as exc:  # too long, a NUL byte, ~nosuchuser
        raise OptbenchError(f"{one_line(str(path), 120)}: not a usable file path "
                            f"({one_line(str(exc), 80)})") from None
    if not found:
        raise OptbenchError(f"{one_line(str(path), 200)}: no such suite file")
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
        raise OptbenchError(f"{path}: invalid YAML{at}: {one_line(problem)}") from None
    except (ValueError, TypeError, OverflowError, AttributeError) as exc:  # a tag's value: !!int abc, !!timestamp x
        raise OptbenchError(f"{path}: invalid YAML: a tagged value cannot be read "
                            f"({one_line(str(exc))})") from None
    except RecursionError:
        raise OptbenchError(f"{path}: invalid YAML: nested too deeply (a suite is a few levels "
                            "of mappings and lists)") from None
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
    """SafeLoader that refuses a key given twice in one mapping (YAML would keep the last), and
    text that is not text: a lone surrogate ("\\udc80"), which no report file can hold."""

    def construct_scalar(self, node):
        value = super().construct_scalar(node)
        if isinstance(value, str) and any("\ud800" <= c <= "\udfff" for c in value):
            raise yaml.constructor.ConstructorError(
                None, None, "a lone surrogate escape (\\ud800-\\udfff) is not a character; "
                "write the character itself", node.start_mark)
        return value

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (list, dict, set)):
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a name, not a list or mapping", key_node.start_mark)
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


def _parallel_shorthand(item: Any, where: str) -> Any:
    """'none' and 'fsdp2x2' (as in cell ids) stand for their mappings; mappings pass as they are."""
    if not isinstance(item, str):
        return item
    parallel = parallel_from_label(item)
    if parallel is None:
        raise OptbenchError(f"{where}: '{item}' is not a parallel setting; accepted: {PARALLEL_FORMS}, "
                            f"with a strategy of {', '.join(PARALLEL_STRATEGIES)}")
    return dataclasses.asdict(parallel)


def _validate(suite: Suite, where: str) -> None:
    _suite_name(suite.name, where)
    d = suite.defaults
    _one_of(d.device, DEVICES, f"{where}: defaults.device")
    _one_of(d.dtype, DTYPES, f"{where}: defaults.dtype")
    _one_of(d.lr_schedule.kind, SCHEDULES, f"{where}: defaults.lr_schedule.kind")
    for key in ("steps", "batch_size", "grad_accum", "eval_batches"):
        _positive(getattr(d, key), f"{where}: defaults.{key}")
    _seed(d.seed, f"{where}: defaults.seed")
    for i, seed in enumerate(suite.grid.seeds):
        _seed(seed, f"{where}: grid.seeds[{i}]")
    # Steps 1-2 run under the memory tracker and the first `warmup` are untimed. (A meta
    # suite trains nothing: it traces steps 1 and 2 whatever `steps` says.)
    if d.compile and d.device == "meta":
        raise OptbenchError(f"{where}: defaults.compile: a device: meta suite traces the eager "
                            "step and compiles nothing; accepted: false (or omit it) with meta")
    # With compile, step 3 compiles the model and is not timed either.
    untimed = 3 if d.compile else 2
    if d.device != "meta" and (d.warmup < 0 or d.steps <= max(d.warmup, untimed)):
        raise OptbenchError(
            f"{where}: defaults.warmup: {d.warmup} with steps {d.steps} leaves no timed step; "
            f"accepted: 0 <= warmup and steps > max(warmup, {untimed})"
            + (" (with compile: true, step 3 compiles)" if d.compile else "")
        )
    if d.lr_schedule.warmup_steps < 0:
        raise OptbenchError(f"{where}: defaults.lr_schedule.warmup_steps: must be >= 0")
    if not 0.0 <= d.lr_schedule.min_ratio <= 1.0:
        raise OptbenchError(f"{where}: defaults.lr_schedule.min_ratio: accepted 0..1")
    if not 0.0 <= d.lr_schedule.cooldown_fraction <= 1.0:
        raise OptbenchError(f"{where}: defaults.lr_schedule.cooldown_fraction: "
                            f"{d.lr_schedule.cooldown_fraction} is not in 0..1")
    if d.grad_clip is not None and d.grad_clip <= 0:
        raise OptbenchError(f"{where}: defaults.grad_clip: must be > 0 (or null to disable)")
    if d.timeout_s is not None and d.timeout_s <= 0:
        raise OptbenchError(f"{where}: defaults.timeout_s: must be > 0 (or null for no limit)")
    _validate_search(suite.search, where)
    _validate_grid(suite.grid, where, suite.search)
    if suite.grid.parallel:
        for i, parallel in enumerate(suite.grid.parallel):
            validate_parallel(parallel, d.device, f"{where}: grid.parallel[{i}]")
    else:
        validate_parallel(d.parallel, d.device, f"{where}: defaults.parallel")
    validate_data_config(suite.data, f"{where}: data")


def validate_parallel(parallel: Parallel, device: str, where: str) -> None:
    """A parallel setting for cells on `device`, checked against this node (its GPUs and the
    several-node settings); `where` names it in the one-line error (a suite key, an option)."""
    _one_of(parallel.strategy, PARALLEL_STRATEGIES, f"{where}.strategy")
    _positive(parallel.nproc, f"{where}.nproc")
    if not parallel.sharded and parallel.nproc != 1:
        raise OptbenchError(f"{where}.nproc: {parallel.nproc} ranks need a strategy "
                            f"({', '.join(PARALLEL_STRATEGIES[1:])}); strategy none is one process")
    if not parallel.sharded:
        return
    if device == "meta":  # every rank is estimated in this process: no launch, no GPUs
        if parallel.nproc > MAX_ESTIMATED_RANKS:
            raise OptbenchError(f"{where}.nproc: {parallel.nproc} ranks; a per-rank estimate "
                                f"takes 1..{MAX_ESTIMATED_RANKS}")
        return
    check_launch_env()
    nodes = launch_nodes()
    if parallel.nproc % nodes:
        raise OptbenchError(f"{where}.nproc: {parallel.nproc} ranks do not split evenly over "
                            f"{nodes} nodes ({NNODES_ENV}); use a multiple of {nodes}")
    if parallel.nproc // nodes > MAX_RANKS:
        raise OptbenchError(f"{where}.nproc: {parallel.nproc // nodes} ranks on one node; "
                            f"accepted 1..{MAX_RANKS} per node")
    if resolve_device(device) == "cuda":
        import torch

        per_node = parallel.nproc // nodes
        if per_node > torch.cuda.device_count():
            raise OptbenchError(f"{where}.nproc: {per_node} ranks per node need {per_node} GPUs "
                                f"(one per rank); this machine has {torch.cuda.device_count()}")


def _validate_search(search: Search, where: str) -> None:
    _one_of(search.method, SEARCH_METHODS, f"{where}: search.method")
    _positive(search.trials, f"{where}: search.trials")
    if search.trials > MAX_TRIALS:
        raise OptbenchError(f"{where}: search.trials: {search.trials} trials; accepted: up to "
                            f"{MAX_TRIALS:,} (each is a cell that trains)")
    _seed(search.seed, f"{where}: search.seed")


def _validate_sweep(choice, models, search: Search, key: str) -> None:
    """Every trial of the space (its own, else the suite's `search.space`) resolves for every
    model: its hparams exist and take the values (a factor scales a number)."""
    where = f"{key}.sweep" if choice.sweep is not None else f"{key}, from search.space"
    trials = sweep.trials(search.space_of(choice.sweep), search, where)  # raises on a malformed space
    for trial in trials:
        for model in models:
            base = resolve_hparams(choice.name, choice.hparams, model)
            _named(lambda: resolve_hparams(choice.name, {**choice.hparams,
                                                         **sweep.apply(trial, base)}, model), where)


SUITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
LABEL_REFUSED = set("/\\[]")


def _suite_name(name: str, where: str) -> None:
    """A suite's name is its report folder's name: a plain file name, never a path."""
    if not SUITE_NAME.fullmatch(name):
        raise OptbenchError(f"{where}: name: '{one_line(name, 60)}' is not a plain file name; "
                            "accepted: letters, digits, '.', '_', '-' (up to 100, not starting "
                            "with '.', '_' or '-')")


def _label(label: str, where: str) -> None:
    """A label is part of cell ids, printed everywhere: printable, one line, no path separator
    or bracket (Rich markup), up to 100 characters."""
    if not label or len(label) > 100 or not label.isprintable() or LABEL_REFUSED & set(label):
        raise OptbenchError(f"{where}: '{one_line(label, 60)}' is not a usable label; accepted: "
                            "1 to 100 printable characters without / \\ [ ]")


def _validate_grid(grid: Grid, where: str, search: Search = Search()) -> None:
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
        _validate_sweep(choice, grid.models, search, key)
    for i, choice in enumerate(grid.optimizers):
        if choice.label is not None:
            _label(choice.label, f"{where}: grid.optimizers[{i}].label")
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


def _seed(seed: int, where: str) -> None:
    if not 0 <= seed < 2**63:
        raise OptbenchError(f"{where}: {seed} is out of range; accepted 0 <= seed < 2^63")


def _named(lookup, where: str) -> None:
    """Re-raise a registry's error with the file and key in front."""
    try:
        lookup()
    except OptbenchError as exc:
        raise OptbenchError(f"{where}: {exc}") from None


def _one_of(value: str, accepted: tuple[str, ...], where: str) -> None:
    if value not in accepted:
        raise OptbenchError(f"{where}: '{value}' is not accepted; accepted: {', '.join(accepted)}")


MAX_TRIALS = 10_000  # each trial is a cell per model, seed and sequence length
MAX_COUNT = 10**12  # far past any real run; a count of 10^400 is a typo, said before it runs


def _positive(value: int, where: str) -> None:
    if value <= 0:
        raise OptbenchError(f"{where}: {one_line(str(value), 40)} must be a positive integer")
    if value > MAX_COUNT:
        raise OptbenchError(f"{where}: {one_line(str(value), 40)} is too large; accepted: 1 to "
                            f"10^12")

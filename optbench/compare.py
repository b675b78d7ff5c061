"""`optbench compare`: named optimizers side by side, per model × seq len, from the store.

For each (model, seq len, optimizer) the latest ok result is taken, whatever suite made it
(an `estimated` one, memory only, when there is no measured one). Rows of one table may then
come from different setups; each row names its config, and a note under the table says which
settings differ, so results are never mixed silently. Missing results are run first, with the
setup the table's other rows share when they share one (so the new rows are comparable),
else with a default setup.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from optbench.errors import OptbenchError, did_you_mean
from optbench.metrics import COMPARE_DEFAULT, USABLE_STATUSES, Metric, get_metric, is_better

DEFAULT_MODEL, DEFAULT_SEQ_LEN = "llama_9m", 128  # the quick suite's smaller model and longer seq
BY_AXES = ("seq_len", "model")


@dataclass(frozen=True)
class Request:
    """What the user asked to compare (names as typed; canonicalized by `resolve`)."""

    names: tuple[str, ...]
    baseline: str = "adamw"
    models: tuple[str, ...] = ()
    seq_lens: tuple[int, ...] = ()
    suite: str | None = None  # a stored suite name, or a suite YAML (its setup runs what is missing)
    metrics: tuple[str, ...] = ()
    steps: int | None = None
    device: str | None = None


def resolve(req: Request) -> tuple[list[str], str, list[Metric]]:
    """(canonical names, baseline first; baseline name; metrics) or one-line errors."""
    from optbench.models import get_model_size
    from optbench.optimizers import get_spec

    names = [get_spec(n).name for n in req.names]
    baseline = get_spec(req.baseline).name
    for model in req.models:
        get_model_size(model)
    metrics = [get_metric(m) for m in (req.metrics or COMPARE_DEFAULT)]
    return list(dict.fromkeys([baseline, *names])), baseline, metrics


# ----------------------------------------------------------------------------- selection


def select(store, names: list[str], req: Request, suite_name: str | None) -> pd.DataFrame:
    """One row per (model, seq_len, optimizer name): the latest ok run, else the latest usable."""
    runs = store.runs_of(names, req.models, req.seq_lens, suite_name, statuses=USABLE_STATUSES)
    if runs.empty:
        return runs
    runs["_rank"] = runs["status"].map({s: i for i, s in enumerate(reversed(USABLE_STATUSES))})
    runs = runs.sort_values(["_rank", "run_id"]).groupby(
        ["model", "seq_len", "optimizer_name"]).tail(1).drop(columns="_rank")
    return runs.reset_index(drop=True)


def wanted_pairs(runs: pd.DataFrame, req: Request) -> list[tuple[str, int]]:
    """(model, seq_len) tables to show: the asked product, else what is stored, else a default."""
    if req.models and req.seq_lens:
        return [(m, s) for m in req.models for s in req.seq_lens]
    stored = sorted({(m, int(s)) for m, s in zip(runs.get("model", []), runs.get("seq_len", []))})
    if stored:
        return stored
    return [(m, s) for m in (req.models or (DEFAULT_MODEL,)) for s in (req.seq_lens or (DEFAULT_SEQ_LEN,))]


def missing_cells(runs: pd.DataFrame, pairs, names: list[str], req: Request, suite_setup,
                  suite_name: str | None = None) -> list:
    """Cells to run so that every table has every optimizer; stored under `suite_name` (the
    --suite given, so that they pass its filter next time) or 'compare'."""
    from optbench.data import corpus_key
    from optbench.optimizers import resolve_hparams
    from optbench.suite import Cell, OptimizerChoice

    have = {(m, int(s), n) for m, s, n in zip(runs.get("model", []), runs.get("seq_len", []),
                                             runs.get("optimizer_name", []))}
    cells, corpora = [], {}
    for model, seq_len in pairs:
        todo = [n for n in names if (model, seq_len, n) not in have]
        if not todo:
            continue
        defaults, data = suite_setup or _shared_setup(runs, model, seq_len) or _default_setup()
        defaults = _with_overrides(defaults, req)
        _check_fits(model, seq_len, defaults)
        corpus = corpora.setdefault(json.dumps(dataclasses.asdict(data)), corpus_key(data))
        for name in todo:
            choice = OptimizerChoice(name, resolve_hparams(name, {}, model), label=name)
            cells.append(Cell(suite_name or "compare", model, choice, seq_len, defaults, data, corpus))
    return cells


def _shared_setup(runs: pd.DataFrame, model: str, seq_len: int):
    """(Defaults, DataConfig) that every stored row of this table shares, else None."""
    from optbench import typed
    from optbench.data import DataConfig
    from optbench.suite import Defaults

    rows = runs[(runs["model"] == model) & (runs["seq_len"] == seq_len)] if len(runs) else runs
    setups = {json.dumps({k: json.loads(c)[k] for k in ("defaults", "data")}, sort_keys=True)
              for c in rows.get("config_json", [])}
    if len(setups) != 1:
        return None
    setup = json.loads(setups.pop())
    return typed.build(Defaults, setup["defaults"], "stored config: defaults"), \
        typed.build(DataConfig, setup["data"], "stored config: data")


def _default_setup():
    from optbench.data import DataConfig
    from optbench.suite import Defaults

    return Defaults(device="auto"), DataConfig()


def _with_overrides(defaults, req: Request):
    from optbench.suite import resolve_device

    changes = {k: v for k, v in (("steps", req.steps), ("device", req.device)) if v is not None}
    defaults = dataclasses.replace(defaults, **changes)
    return dataclasses.replace(defaults, device=resolve_device(defaults.device))


def _check_fits(model: str, seq_len: int, defaults) -> None:
    from optbench.models import get_model_size

    limit = get_model_size(model).max_position_embeddings
    if seq_len > limit:
        raise OptbenchError(f"--seq-len {seq_len}: exceeds {model}'s max_seq {limit}")
    if defaults.steps <= max(defaults.warmup, 2):
        raise OptbenchError(f"--steps {defaults.steps}: must be > {max(defaults.warmup, 2)} "
                            f"(steps 1-2 are tracked and the first {defaults.warmup} untimed)")


# ----------------------------------------------------------------------------- tables


def config_label(row: pd.Series) -> str:
    """'quick a7521b91': the suite that made the row and its config's fingerprint."""
    return f"{row['suite']} {str(row['fingerprint'])[:8]}"


def table_rows(runs: pd.DataFrame, names: list[str], pair, metrics: list[Metric],
               baseline: str) -> pd.DataFrame:
    """One row per name in `names` order for one (model, seq_len); absent ones as 'missing'."""
    model, seq_len = pair
    group = runs[(runs["model"] == model) & (runs["seq_len"] == seq_len)] if len(runs) else runs
    by_name = {row["optimizer_name"]: row for _, row in group.iterrows()}
    base = by_name.get(baseline)
    rows = []
    for name in names:
        row = by_name.get(name)
        out: dict[str, Any] = {"model": model, "seq_len": seq_len, "optimizer": name,
                               "status": "missing" if row is None else row["status"],
                               "config": "" if row is None else config_label(row),
                               "run_id": None if row is None else int(row["run_id"])}
        for m in metrics:
            value = _value(row, m.name)
            out[m.name] = value
            out[f"{m.name}_vs_{baseline}"] = _ratio(value, _value(base, m.name))
        rows.append(out)
    frame = pd.DataFrame(rows)
    frame["best"] = _best(frame, metrics)
    return frame


def _value(row, metric: str) -> float:
    if row is None or metric not in row.index:
        return np.nan
    value = row[metric]
    return float(value) if value is not None and pd.notna(value) else np.nan


def _ratio(value: float, base: float) -> float:
    return value / base if np.isfinite(value) and np.isfinite(base) and base != 0 else np.nan


def _best(frame: pd.DataFrame, metrics: list[Metric]) -> list[list[str]]:
    """Per row, the metrics where it is best; none when a column has one value or all tie."""
    best = [[] for _ in range(len(frame))]
    for m in metrics:
        values = frame[m.name].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        if len(np.unique(finite)) < 2:
            continue
        top = finite.max() if m.higher_is_better else finite.min()
        for i, v in enumerate(values):
            if v == top:
                best[i].append(m.name)
    return best


def config_notes(runs: pd.DataFrame, pair) -> list[str]:
    """What differs between the setups of one table's rows (the optimizer part aside)."""
    model, seq_len = pair
    group = runs[(runs["model"] == model) & (runs["seq_len"] == seq_len)] if len(runs) else runs
    flat = {config_label(row): _flatten({k: v for k, v in json.loads(row["config_json"]).items()
                                         if k != "optimizer"})
            for _, row in group.iterrows()}
    if len({json.dumps(f, sort_keys=True) for f in flat.values()}) < 2:
        return []
    keys = sorted({k for f in flat.values() for k in f})
    differ = [k for k in keys if len({json.dumps(f.get(k)) for f in flat.values()}) > 1]
    return [f"{k}: " + ", ".join(f"{json.dumps(f.get(k))} ({label})" for label, f in flat.items())
            for k in differ]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def fmt_cell(metric: Metric, value: float, ratio: float, best: bool) -> str:
    """'12.0 MiB (0.08×) ★': value, ratio to the baseline, and a star where best."""
    from optbench.metrics import format_number

    text = format_number(metric, value)
    if np.isfinite(ratio):
        text += f" ({ratio:.2f}×)"
    return text + (" ★" if best else "")


# ----------------------------------------------------------------------------- the command


def run_compare(req: Request, db: Path, reports_dir: Path, *, by: str | None, run: bool,
                csv: Path | None, json_path: Path | None, console, log, command: str) -> Path:
    """Select, run what is missing, select again, then print and write everything."""
    from optbench import compare_report as cr
    from optbench.app import run_with_progress
    from optbench.store import ResultStore

    names, baseline, metrics = resolve(req)
    if by is not None and by not in BY_AXES:
        raise OptbenchError(f"--by '{by}': accepted: {', '.join(BY_AXES)}")
    suite_name, suite_setup = _suite(req.suite)
    store = ResultStore(db)
    runs = select(store, names, req, suite_name)
    pairs = wanted_pairs(runs, req)
    todo = missing_cells(runs, pairs, names, req, suite_setup, suite_name) if run else []
    if todo:
        log.print(f"running {len(todo)} missing results first ({', '.join(c.id for c in todo)})",
                  highlight=False)
        run_with_progress(todo, store, log)
        runs = select(store, names, req, suite_name)
    tables = [table_rows(runs, names, pair, metrics, baseline) for pair in pairs]
    cmp = cr.Comparison(names, baseline, metrics, tables, [config_notes(runs, p) for p in pairs],
                        [cr.group_title(runs, p) for p in pairs], runs)
    for table in cr.rich_tables(cmp, chosen=bool(req.metrics)):
        console.print(table)
    out_dir = Path(reports_dir) / ("compare-" + "-".join(dict.fromkeys(_canonical(req.names))))
    curves = store.curves(runs["run_id"]) if len(runs) else store.curves([])
    by_metric = metrics[0] if req.metrics else get_metric("peak_allocated_bytes")
    paths = cr.write_markdown(cmp, curves, out_dir, command, by, by_metric)
    if csv is not None:
        _write(csv, cr.long_frame(cmp).to_csv(index=False))
    if json_path is not None:
        _write(json_path, cr.to_json(cmp))
    console.print(f"report: {paths[0]} (+{len(paths) - 1} plots)", highlight=False)
    return paths[0]


def _canonical(names) -> list[str]:
    from optbench.optimizers import get_spec

    return [get_spec(n).name for n in names]


def _suite(value: str | None):
    """(suite name to filter on, its (Defaults, DataConfig) when given as a YAML file)."""
    if value is None:
        return None, None
    if value.endswith((".yaml", ".yml")) or Path(value).is_file():
        from optbench.suite import load_suite, resolve_device

        suite = load_suite(value)
        defaults = dataclasses.replace(suite.defaults, device=resolve_device(suite.defaults.device))
        return suite.name, (defaults, suite.data)
    return value, None


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OptbenchError(f"{path}: cannot write ({exc.strerror})") from None

"""What `optbench compare` selects and computes: named optimizers side by side, per model ×
seq len, from the store.

For each (model, seq len, optimizer) the latest ok result is taken, whatever suite made it
(an `estimated` one, memory only, when there is no measured one). Rows of one table may then
come from different setups; each row names its config, and a note under the table says which
settings differ, so results are never mixed silently. Missing results are found here (and run
by optbench.commands.compare) with the setup the table's other rows share when they share one
(so the new rows are comparable), else with a default setup.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from optbench.config import schema
from optbench.config.loader import MAX_COUNT, validate_parallel
from optbench.config.suite import (
    PARALLEL_STRATEGIES,
    Cell,
    Defaults,
    OptimizerChoice,
    make_cell,
    parallel_from_label,
    resolve_device,
)
from optbench.data import DataConfig, corpus_key
from optbench.engine.train import FINAL_LOSS_WINDOW
from optbench.errors import OptbenchError, require_utf8
from optbench.metrics import COMPARE_DEFAULT, RESULT_STATUSES, Metric, get_metric
from optbench.models import get_model_size
from optbench.optimizers import get_spec, resolve_hparams
from optbench.results import stats
from optbench.results.store import ResultStore, StoredRun, latest
from optbench.results.tuning import (
    best_only,
    best_trial,
    complete,
    edge_notes,
    searches,
    setup_view,
    ordered,
    reference,
    trial_key,
    trials_at,
)

DEFAULT_MODEL, DEFAULT_SEQ_LEN = "llama_9m", 128  # the quick suite's smaller model and longer seq
BY_AXES = ("seq_len", "model")
Pair = tuple[str, int]  # (model, seq_len): one table


@dataclass(frozen=True)
class Request:
    """What the user asked to compare (names as typed; canonicalized by `resolve`)."""

    names: tuple[str, ...]
    baseline: str = "adamw"
    models: tuple[str, ...] = ()
    seq_lens: tuple[int, ...] = ()
    suite: str | None = None  # a stored suite name (a YAML file is resolved by the command)
    metrics: tuple[str, ...] = ()
    steps: int | None = None
    device: str | None = None
    parallel: tuple[str, ...] = ()  # 'none', 'fsdp2x2', ...: only these (and run them if missing)
    tuned: bool = False  # each optimizer's best trial of its search only


def resolve(req: Request) -> tuple[list[str], str, list[Metric]]:
    """(canonical names, baseline first; baseline name; metrics) or one-line errors."""
    names = [get_spec(n).name for n in req.names]
    baseline = get_spec(req.baseline).name
    for model in req.models:
        get_model_size(model)
    for seq_len in req.seq_lens:
        if not 0 < seq_len <= MAX_COUNT:
            raise OptbenchError(f"--seq-len {seq_len}: accepted: a positive number of tokens")
    if req.steps is not None and not 0 < req.steps <= MAX_COUNT:
        raise OptbenchError(f"--steps {req.steps}: accepted: 1..{MAX_COUNT:.0e}")
    if req.suite is not None:
        require_utf8(req.suite, "--suite", "; suite names are")
    metrics = [get_metric(m) for m in (req.metrics or COMPARE_DEFAULT)]
    for label in req.parallel:
        parallel = parallel_from_label(label)
        if parallel is None:
            raise OptbenchError(f"--parallel '{label}': accepted: none or STRATEGYxN with a "
                                f"strategy of {', '.join(PARALLEL_STRATEGIES[1:])}, e.g. fsdp2x2")
        # Its form only: whether this node can launch it depends on the device of the cells
        # that would run (a `device: meta` suite's are estimated), checked in missing_cells.
        validate_parallel(parallel, "meta", f"--parallel {label}")
    return list(dict.fromkeys([baseline, *names])), baseline, metrics


def canonical_parallel(req: Request) -> Request:
    """The request with its --parallel labels as stored ('ddpx02' -> 'ddpx2')."""
    labels = tuple(parallel_from_label(label).label for label in req.parallel)
    return dataclasses.replace(req, parallel=tuple(dict.fromkeys(labels)))


# ----------------------------------------------------------------------------- selection


def select(store: ResultStore, names: list[str], req: Request,
           suite_name: str | None) -> list[StoredRun]:
    """One run per (model, seq_len, optimizer name, parallel strategy, seed): the latest ok run,
    else the latest usable."""
    runs = store.runs(optimizer_names=names, models=req.models, seq_lens=req.seq_lens,
                      suite=suite_name, statuses=RESULT_STATUSES)
    runs = [r for r in runs if not req.parallel or r.parallel in req.parallel]
    return latest(runs, key=lambda r: (r.model, r.seq_len, r.optimizer_name, trial_key(r),
                                       r.parallel, r.seed))


def _at(runs: list[StoredRun], pair: Pair) -> list[StoredRun]:
    return [r for r in runs if (r.model, r.seq_len) == pair]


def wanted_pairs(runs: list[StoredRun], req: Request) -> list[Pair]:
    """(model, seq_len) tables to show: the asked product, else what is stored, else a default."""
    if req.models and req.seq_lens:
        return [(m, s) for m in req.models for s in req.seq_lens]
    stored = sorted({(r.model, int(r.seq_len)) for r in runs})
    if stored:
        return stored
    return [(m, s) for m in (req.models or (DEFAULT_MODEL,)) for s in (req.seq_lens or (DEFAULT_SEQ_LEN,))]


Setup = tuple[Defaults, DataConfig]


def missing_cells(runs: list[StoredRun], pairs: list[Pair], names: list[str], req: Request,
                  suite_setup: Setup | None, suite_name: str | None = None) -> list[Cell]:
    """Cells to run so that every table has every optimizer; stored under `suite_name` (the
    --suite given, so that they pass its filter next time) or 'compare'."""
    have = {(r.model, int(r.seq_len), r.optimizer_name, r.parallel) for r in runs}
    cells, corpora = [], {}
    for model, seq_len in pairs:
        todo = [(n, p) for p in (req.parallel or ("none",)) for n in names
                if (model, seq_len, n, p) not in have]
        if not todo:
            continue
        defaults, data = suite_setup or _shared_setup(_at(runs, (model, seq_len))) or _default_setup()
        defaults = _with_overrides(defaults, req)
        _check_fits(model, seq_len, defaults)
        corpus = corpora.setdefault(json.dumps(dataclasses.asdict(data)), corpus_key(data))
        for name, label in todo:
            choice = OptimizerChoice(name, resolve_hparams(name, {}, model), label=name)
            setup = dataclasses.replace(defaults, parallel=parallel_from_label(label))
            validate_parallel(setup.parallel, setup.device, f"--parallel {label}")
            cells.append(make_cell(suite_name or "compare", model, choice, seq_len, setup,
                                   data, corpus))
    return cells


def _shared_setup(group: list[StoredRun]) -> Setup | None:
    """(Defaults, DataConfig) that every stored row of this table shares, else None."""
    setups = {json.dumps(setup_view(r.config), sort_keys=True) for r in group}
    if len(setups) != 1:
        return None
    setup = json.loads(setups.pop())
    return schema.build(Defaults, setup["defaults"], "stored config: defaults"), \
        schema.build(DataConfig, setup["data"], "stored config: data")


def _default_setup() -> Setup:
    return Defaults(device="auto"), DataConfig()


def _with_overrides(defaults: Defaults, req: Request) -> Defaults:
    changes = {k: v for k, v in (("steps", req.steps), ("device", req.device)) if v is not None}
    defaults = dataclasses.replace(defaults, **changes)
    return dataclasses.replace(defaults, device=resolve_device(defaults.device))


def _check_fits(model: str, seq_len: int, defaults: Defaults) -> None:
    limit = get_model_size(model).max_position_embeddings
    if seq_len > limit:
        raise OptbenchError(f"--seq-len {seq_len}: exceeds {model}'s max_seq {limit}")
    if defaults.steps <= max(defaults.warmup, 2):
        raise OptbenchError(f"--steps {defaults.steps}: must be > {max(defaults.warmup, 2)} "
                            f"(steps 1-2 are tracked and the first {defaults.warmup} untimed)")


# ----------------------------------------------------------------------------- tables


def config_label(run: StoredRun) -> str:
    """'quick a7521b91': the suite that made the row and its config's fingerprint."""
    return f"{run.suite} {str(run.fingerprint)[:8]}"


def row_label(name: str, parallel: str) -> str:
    """'scale', or 'scale · fsdp2x2' for a sharded row."""
    return name if parallel == "none" else f"{name} · {parallel}"


def parallels_at(runs: list[StoredRun], pair: Pair, req: Request) -> list[str]:
    """The strategies one table shows: those asked for, else one process and any stored."""
    if req.parallel:
        return list(req.parallel)
    stored = {r.parallel for r in _at(runs, pair)} - {"none"}
    return ["none", *sorted(stored)]


def tuned_notes(runs: list[StoredRun], names: list[str], pair: Pair,
                parallels: list[str]) -> list[str]:
    """The selection, said per search: which trial won out of how many (and how many were out
    for a failed or missing seed), and any edge."""
    groups = trials_at(runs, pair)
    notes = []
    for name, parallel in [(n, p) for n in names for p in parallels]:
        for trials in searches(groups.get((name, parallel), {})).values():
            best = best_trial(trials)
            if best is None or len(trials) < 2:
                continue
            out = len(trials) - len(complete(trials))
            notes.append(f"{row_label(best[0].optimizer, parallel)}: best of {len(trials)} trials"
                         + (f" ({out} out: a seed failed, diverged or is missing)" if out else ""))
            notes += edge_notes(trials, best)
    return notes


def table_rows(runs: list[StoredRun], names: list[str], pair: Pair, metrics: list[Metric],
               baseline: str, parallels: list[str] = ("none",), tuned: bool = False) -> pd.DataFrame:
    """One row per name in `names` order, and under it each of its trials (a search space's
    setups, labelled as the suite did) and strategies, for one (model, seq_len); absent ones as
    'missing'. Ratios are against the baseline under the row's own strategy, else the
    baseline's one-process run. A row with several seeds holds each metric's mean over them,
    its 95 % interval and a t-test's verdict against the baseline's seeds."""
    model, seq_len = pair
    groups = trials_at(runs, pair)
    if tuned:  # each optimizer's best trial only, the baseline's included
        groups = best_only(groups)
    rows = []
    for name, parallel in [(n, p) for n in names for p in parallels]:
        base = reference(groups, baseline, parallel)
        for seeds in ordered(groups.get((name, parallel), {}), name) or [[]]:
            rows.append(_row(model, seq_len, name, parallel, seeds, base, metrics, baseline))
    frame = pd.DataFrame(rows)
    frame["best"] = _best(frame, metrics)
    return frame


# Default columns that exist on some devices only: left out when no row has a value (MFU
# needs a GPU of known peak, so a CPU comparison has none).
WHERE_MEASURED = ("mfu_percent",)


def measured_defaults(metrics: list[Metric], tables: list[pd.DataFrame]) -> list[Metric]:
    """The default metrics less those of WHERE_MEASURED that no table row measured."""
    def measured(name: str) -> bool:
        return any(name in t and t[name].notna().any() for t in tables)
    return [m for m in metrics if m.name not in WHERE_MEASURED or measured(m.name)]


def _row(model: str, seq_len: int, name: str, parallel: str, seeds: list[StoredRun],
         base: list[StoredRun], metrics: list[Metric], baseline: str) -> dict[str, Any]:
    latest_run = max(seeds, key=lambda r: r.run_id) if seeds else None
    config = "" if latest_run is None else config_label(latest_run)
    label = latest_run.optimizer if latest_run is not None and "@" in latest_run.optimizer else name
    out: dict[str, Any] = {
        "model": model, "seq_len": seq_len, "name": name, "parallel": parallel,
        "optimizer": row_label(label, parallel), "seeds": len(seeds),
        "reference": bool(seeds) and seeds == base,
        "status": "missing" if latest_run is None else latest_run.status,
        "config": config + (f" ×{len(seeds)} seeds" if len(seeds) > 1 else ""),
        "run_id": None if latest_run is None else latest_run.run_id}
    for m in metrics:
        values, base_values = _by_seed(seeds, m), _by_seed(base, m)
        value = float(np.mean(list(values.values()))) if values else np.nan
        base_value = float(np.mean(list(base_values.values()))) if base_values else np.nan
        out[m.name] = value
        out[f"{m.name}_vs_{baseline}"] = _ratio(value, base_value)
        out.update(_seed_columns(m, values, base_values, seeds == base))
    return out


def _by_seed(runs: list[StoredRun], m: Metric) -> dict[int, float]:
    """{seed: value} of the runs that measured the metric (a trial's runs are one per seed)."""
    return {r.seed: v for r in runs if np.isfinite(v := r.metric(m.name))}


def _seed_columns(m: Metric, values: dict[int, float], base: dict[int, float],
                  is_baseline: bool) -> dict:
    """`<metric>_ci_low/_ci_high` (95 % interval of the mean over seeds, NaN under 2 seeds),
    `<metric>_verdict` against the baseline's seeds ('' when not both have 2) and its test:
    paired over the same seeds, else Welch's (stats.seed_test)."""
    summary = stats.summarize(list(values.values())) if values else None
    verdict = test = ""
    if len(values) >= 2 and len(base) >= 2 and not is_baseline:
        result = stats.seed_test(values, base, m.higher_is_better)
        verdict, test = result.verdict, result.test
    return {f"{m.name}_ci_low": summary.ci_low if summary else np.nan,
            f"{m.name}_ci_high": summary.ci_high if summary else np.nan,
            f"{m.name}_verdict": verdict, f"{m.name}_test": test}


def runs_shown(runs: list[StoredRun], pairs: list[Pair], tuned: bool) -> list[StoredRun]:
    """The runs the tables show (what figures draw): with `tuned`, each optimizer's best trial."""
    if not tuned:
        return runs
    return [r for pair in pairs for trials in best_only(trials_at(runs, pair)).values()
            for seeds in trials.values() for r in seeds]


def time_to_target(runs: list[StoredRun], names: list[str], pair: Pair, baseline: str,
                   parallels: list[str], curves: pd.DataFrame, tuned: bool = False) -> pd.DataFrame:
    """Per row of one table: when its training loss, smoothed as `final_train_loss` is, first
    reaches the baseline's final loss (the mean over the baseline's seeds), in steps, tokens and
    estimated seconds (steps x the median step time), and the speedup: the steps the baseline
    needed over these. Over seeds, the mean of the seeds' steps (`None` unless every seed gets
    there); `reached` says how many did. With `tuned`, each optimizer's best trial only."""
    by_run = {run_id: (list(g["step"]), list(g["loss"])) for run_id, g in curves.groupby("run_id")}
    groups = trials_at(runs, pair, keep=lambda r: r.run_id in by_run and r.status == "ok")
    if tuned:  # each optimizer's best trial, the target the baseline's best
        groups = best_only(groups)
    rows = []
    for parallel in parallels:
        base = reference(groups, baseline, parallel)
        if not base:
            continue
        target = float(np.mean([stats.smoothed(by_run[r.run_id][1], FINAL_LOSS_WINDOW)[-1]
                                for r in base]))
        # A baseline seed that ends above the mean of its seeds' final losses never reaches that
        # target: it counts with all its steps, as its final loss is the target's own part.
        base_steps = float(np.mean([
            stats.steps_to_target(*by_run[r.run_id], target, FINAL_LOSS_WINDOW)
            or by_run[r.run_id][0][-1] for r in base]))
        for name in names:
            for seeds in ordered(groups.get((name, parallel), {}), name):
                rows.append(_target_row(name, parallel, seeds, by_run, target, base_steps,
                                        is_baseline=seeds == base))
    return pd.DataFrame(rows)


def _mean_steps(runs: list[StoredRun], by_run: dict, target: float) -> tuple[float | None, int]:
    """(mean steps to target over the runs that reach it, or None if any does not; how many do)."""
    steps = [stats.steps_to_target(*by_run[r.run_id], target, FINAL_LOSS_WINDOW) for r in runs]
    reached = [s for s in steps if s is not None]
    return (float(np.mean(reached)) if len(reached) == len(steps) else None), len(reached)


def _target_row(name: str, parallel: str, seeds: list[StoredRun], by_run: dict, target: float,
                base_steps: float | None, is_baseline: bool) -> dict[str, Any]:
    steps, reached = _mean_steps(seeds, by_run, target)
    if is_baseline:
        steps, reached = base_steps, len(seeds)
    step_ms = [r.metric("step_ms") for r in seeds]
    ms = float(np.mean(step_ms)) if all(np.isfinite(step_ms)) else None
    tokens = seeds[0].tokens_per_step
    label = seeds[-1].optimizer if "@" in seeds[-1].optimizer else name
    return {"optimizer": row_label(label, parallel), "name": name, "target": target,
            "seeds": len(seeds), "reached": reached, "steps": steps,
            "tokens": steps * tokens if steps is not None and tokens else None,
            "seconds": steps * ms / 1e3 if steps is not None and ms else None,
            "speedup": base_steps / steps if steps and base_steps else None}


def _ratio(value: float, base: float) -> float:
    return value / base if np.isfinite(value) and np.isfinite(base) and base != 0 else np.nan


def _best(frame: pd.DataFrame, metrics: list[Metric]) -> list[list[str]]:
    """Per row, the metrics where it is best; none when a column has one value or all tie, and
    none where seeds give verdicts instead (a best mean may be noise)."""
    best = [[] for _ in range(len(frame))]
    for m in metrics:
        if frame[f"{m.name}_verdict"].astype(bool).any():
            continue
        values = frame[m.name].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        if len(np.unique(finite)) < 2:
            continue
        top = finite.max() if m.higher_is_better else finite.min()
        for i, v in enumerate(values):
            if v == top:
                best[i].append(m.name)
    return best


def config_notes(runs: list[StoredRun], pair: Pair) -> list[str]:
    """What differs between the setups of one table's rows (the optimizer part aside)."""
    flat = {config_label(r): _flatten(setup_view(r.config) | {
        k: v for k, v in r.config.items() if k not in ("optimizer", "defaults", "data")})
        for r in _at(runs, pair)}
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


def group_title(runs: list[StoredRun], pair: Pair) -> str:
    model, seq_len = pair
    setups = " / ".join(dict.fromkeys(f"{r.device} {r.dtype}" for r in _at(runs, pair)))
    return " · ".join(p for p in (model, f"seq {seq_len}", setups) if p)

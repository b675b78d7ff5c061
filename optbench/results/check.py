"""`optbench check`'s rules, marks and baseline file: a suite's results against a committed
baseline, metric by metric, asv style.

Each gated metric of each cell gets one mark:

    +  worse than the baseline beyond the rule's tolerance   (fails the check)
    !  the cell failed now and did not in the baseline        (fails the check)
    -  better beyond the tolerance
    ~  within the tolerance
    x  not comparable: the cell's fingerprint or optimizer version changed, a value is
       missing on either side, the cell is new, or it could not run on this device

A changed fingerprint is `x`, never `+`: a deliberate change (new hparams, a bumped optimizer
version) needs `--update`, not a false regression. The direction of "worse" comes from the
metric's higher-is-better flag (optbench.metrics), so a rule only says how far.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from optbench.engine.outcome import RunResult
from optbench.errors import OptbenchError, informative_line
from optbench.metrics import (
    METRICS,
    RESULT_STATUSES,
    STATUSES,
    Metric,
    get_metric,
    rank_metric,
    split_rank_metric,
)

BASELINE_FORMAT = 1
MARKS = {
    "+": "worse beyond the rule",
    "!": "newly failing",
    "-": "better beyond the rule",
    "~": "within the rule",
    "x": "not comparable",
}
FAILING_MARKS = ("+", "!")
# CI defaults: state bytes are exact (a single extra byte is a change someone made); the
# tracked peak gets 2% for harmless shifts in temporaries. Timing and loss are not gated: on
# shared CI machines time is noise, and float losses differ across CPUs.
DEFAULT_RULES = ("optimizer_state_bytes:0%", "peak_allocated_bytes:+2%")
# Environment keys kept in a baseline: what a footprint depends on, nothing that changes on
# every update (host, time, commit), so the file diffs cleanly.
ENV_KEYS = ("optbench", "torch", "transformers", "cuda", "python", "device", "device_name")


# ----------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    """How far `metric` may move in its worse direction before it is a regression."""

    metric: str
    tolerance: float | None  # a fraction of the baseline value; None: recorded, not gated

    def __str__(self) -> str:
        if self.tolerance is None:
            return "off"
        if self.tolerance == 0:
            return "0%"
        sign = "-" if get_metric(self.metric).higher_is_better else "+"
        return f"{sign}{self.tolerance * 100:g}%"


_RULE_SYNTAX = "METRIC:TOLERANCE, e.g. peak_allocated_bytes:+2% (tolerance: N%, +N%, -N% or off)"
_TOLERANCE = re.compile(r"^([+-]?)(\d+(?:\.\d+)?)%$")


def parse_rules(specs: Iterable[str], defaults: Iterable[str] = DEFAULT_RULES) -> dict[str, Rule]:
    """The default rules overridden by `specs` (each 'metric:tol', or several comma-separated)."""
    rules: dict[str, Rule] = {}
    for spec in [*defaults, *specs]:
        for part in filter(None, (p.strip() for p in spec.split(","))):
            rule = parse_rule(part)
            rules[rule.metric] = rule
    return rules


def parse_rule(text: str) -> Rule:
    name, sep, tol = text.partition(":")
    if not sep or not name.strip() or not tol.strip():
        raise OptbenchError(f"--rules '{text}': expected {_RULE_SYNTAX}")
    metric = _named_metric(name.strip(), text)
    tol = tol.strip()
    if tol.lower() == "off":
        return Rule(metric.name, None)
    match = _TOLERANCE.match(tol)
    if not match:
        raise OptbenchError(f"--rules '{text}': tolerance '{tol}' is not a percentage; expected {_RULE_SYNTAX}")
    sign, number = match.group(1), float(match.group(2))
    worse = "-" if metric.higher_is_better else "+"
    if sign and sign != worse and number != 0:
        way = "higher" if metric.higher_is_better else "lower"
        raise OptbenchError(
            f"--rules '{text}': {way} is better for {metric.name}, so its tolerance is how far it may"
            f" {'fall' if metric.higher_is_better else 'grow'}: write {worse}{number:g}% or {number:g}%"
        )
    return Rule(metric.name, number / 100)


def _named_metric(name: str, text: str) -> Metric:
    try:
        return get_metric(name)
    except OptbenchError as exc:
        raise OptbenchError(f"--rules '{text}': {exc}") from None


def gated(rules: dict[str, Rule]) -> list[Rule]:
    return [r for r in rules.values() if r.tolerance is not None]


# ----------------------------------------------------------------------------- results


@dataclass
class Observed:
    """One cell's result as check needs it, from a fresh run, the store or a baseline file."""

    cell_id: str
    fingerprint: str
    optimizer: str  # registry name
    optimizer_version: str
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    env: dict[str, Any] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        return self.status in RESULT_STATUSES

    @classmethod
    def from_result(cls, r: RunResult, cell_id: str | None = None) -> "Observed":
        """From a run just made or read back from the store, under the suite's current id."""
        metrics = {k: float(v) for k, v in r.metrics.items()
                   if split_rank_metric(k)[0] in METRICS and v == v}
        return cls(cell_id or r.cell_id, r.fingerprint, r.optimizer_name, _version(r.config),
                   r.status, metrics, r.error, dict(r.env))


def _version(config: dict) -> str:
    return str(config.get("optimizer", {}).get("version", "?"))


# ----------------------------------------------------------------------------- baseline file


@dataclass
class Baseline:
    path: Path
    suite: str
    environment: dict[str, Any]
    cells: dict[str, Observed]


def write_baseline(path: Path, suite: str, observed: list[Observed], rules: dict[str, Rule]) -> None:
    """JSON with sorted keys, one value per line: a footprint change is a one-line diff.

    Kept per cell: every metric exact on the CPU (so a rule added later has a value to compare
    with) plus any other metric a rule gates now; never timestamps or hosts.
    """
    keep = {m.name for m in METRICS.values() if m.exact_on_cpu} | {r.metric for r in gated(rules)}
    keep |= {k for o in observed for k in o.metrics if split_rank_metric(k)[0] in keep}
    env = next((o.env for o in observed if o.env), {})
    doc = {
        "optbench_baseline": BASELINE_FORMAT,
        "suite": suite,
        "environment": {k: env[k] for k in ENV_KEYS if env.get(k) is not None},
        "cells": {o.cell_id: _cell_doc(o, keep) for o in observed},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)  # never leave a half-written baseline behind


def _cell_doc(o: Observed, keep: set[str]) -> dict[str, Any]:
    doc = {
        "fingerprint": o.fingerprint,
        "optimizer": o.optimizer,
        "optimizer_version": o.optimizer_version,
        "status": o.status,
        "metrics": {k: _plain(v) for k, v in o.metrics.items() if k in keep and v == v},
    }
    if not o.usable and o.error:
        doc["error"] = o.error.strip().splitlines()[0]
    return doc


def _plain(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def load_baseline(path: Path) -> Baseline:
    """Read and validate a baseline file; every problem is one line naming the file and key."""
    path = Path(path)
    if not path.is_file():
        raise OptbenchError(
            f"{path}: no such baseline file; create it with `optbench check SUITE --baseline {path} --update`"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise OptbenchError(f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OptbenchError(f"{path}: cannot read baseline ({exc})") from None
    except (RecursionError, ValueError):  # 10^5-deep nesting; a 5000-digit number
        raise OptbenchError(f"{path}: not a baseline optbench can read (nested too deeply or a "
                            "number too long); rewrite it with --update") from None
    _expect(isinstance(doc, dict), path, "top level", "a JSON object")
    _expect(doc.get("optbench_baseline") == BASELINE_FORMAT, path, "optbench_baseline",
            f"{BASELINE_FORMAT} (this optbench's baseline format)")
    _expect(isinstance(doc.get("suite"), str), path, "suite", "the suite's name (a string)")
    _expect(isinstance(doc.get("environment", {}), dict), path, "environment", "an object")
    cells = doc.get("cells")
    _expect(isinstance(cells, dict), path, "cells", "an object of cell id -> result")
    return Baseline(path, doc["suite"], doc.get("environment", {}),
                    {cid: _load_cell(path, cid, c) for cid, c in cells.items()})


def _load_cell(path: Path, cell_id: str, doc: Any) -> Observed:
    key = f"cells['{cell_id}']"
    _expect(isinstance(doc, dict), path, key, "an object")
    for name in ("fingerprint", "optimizer", "optimizer_version", "status"):
        _expect(isinstance(doc.get(name), str), path, f"{key}.{name}", "a string")
    _expect(doc["status"] in STATUSES, path, f"{key}.status",
            f"one of {', '.join(STATUSES)}, not {json.dumps(doc['status'])[:40]}")
    metrics = doc.get("metrics", {})
    _expect(isinstance(metrics, dict), path, f"{key}.metrics", "an object of metric -> number")
    for name, value in metrics.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        _expect(ok, path, f"{key}.metrics.{name}", f"a number, not {json.dumps(value)[:40]}")
        _expect(_finite(value), path, f"{key}.metrics.{name}",
                f"a finite number, not {json.dumps(value)[:40]}")
    return Observed(cell_id, doc["fingerprint"], doc["optimizer"], doc["optimizer_version"],
                    doc["status"], {k: float(v) for k, v in metrics.items()}, doc.get("error"))


def _finite(value: float) -> bool:
    """NaN would be 'within' every rule and pass the gate; 1e999 reads as infinity; a
    400-digit integer is past any float."""
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _expect(ok: bool, path: Path, key: str, what: str) -> None:
    if not ok:
        raise OptbenchError(f"{path}: {key}: expected {what}; fix the file or rewrite it with --update")


# ----------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Finding:
    """One (cell, metric) of the check."""

    cell_id: str
    metric: str
    mark: str
    baseline: float | None = None
    current: float | None = None
    rule: Rule | None = None
    note: str = ""

    @property
    def change(self) -> float | None:
        """Relative change, current / baseline - 1; None when either is missing or base is 0."""
        if self.baseline is None or self.current is None or self.baseline == 0:
            return None
        return self.current / self.baseline - 1


def compare(current: list[Observed], baseline: Baseline, rules: dict[str, Rule]) -> list[Finding]:
    """Findings in suite order, each cell's gated metrics in rule order; then baseline-only cells."""
    findings = []
    for obs in current:
        base = baseline.cells.get(obs.cell_id)
        why_not = _cell_not_comparable(obs, base)
        for rule in gated(rules):
            if why_not is not None:
                mark, note = why_not
                findings.append(Finding(obs.cell_id, rule.metric, mark, rule=rule, note=note))
                continue
            for name in [rule.metric, *_rank_metrics(rule.metric, obs, base)]:
                findings.append(_mark_metric(obs, base, rule, name))
    seen = {o.cell_id for o in current}
    for cell_id in baseline.cells:
        if cell_id not in seen:
            note = "in the baseline but not in the suite (--update drops it)"
            findings += [Finding(cell_id, r.metric, "x", rule=r, note=note) for r in gated(rules)]
    return findings


def _cell_not_comparable(obs: Observed, base: Observed | None) -> tuple[str, str] | None:
    """(mark, note) when the whole cell has no comparable numbers, else None."""
    if obs.status == "skipped":
        return "x", f"skipped here: {_first_line(obs.error)}"
    if not obs.usable:
        if base is not None and not base.usable:
            return "x", f"{obs.status}, as in the baseline ({base.status})"
        return "!", f"{obs.status}: {_first_line(obs.error)}"
    if base is None:
        return "x", "new cell, not in the baseline (--update adds it)"
    if not base.usable:
        return "x", f"baseline status is {base.status}; now {obs.status} (--update records it)"
    if base.optimizer_version != obs.optimizer_version:
        return "x", (f"optimizer {obs.optimizer} version changed "
                     f"{base.optimizer_version} -> {obs.optimizer_version} (--update)")
    if base.fingerprint != obs.fingerprint:
        return "x", f"config changed: fingerprint {base.fingerprint} -> {obs.fingerprint} (--update)"
    return None


def _rank_metrics(name: str, *observed: Observed) -> list[str]:
    """The per-rank names of `name` either side holds (a sharded cell's ranks), in rank order:
    the rule that gates a headline gates each rank's value too."""
    ranks = {split_rank_metric(k)[1] for o in observed for k in o.metrics
             if split_rank_metric(k)[0] == name}
    return [rank_metric(name, r) for r in sorted(ranks - {None})]


def _mark_metric(obs: Observed, base: Observed, rule: Rule, name: str | None = None) -> Finding:
    metric = get_metric(name or rule.metric)
    old, new = base.metrics.get(metric.name), obs.metrics.get(metric.name)
    if old is None or new is None:
        note = ("not in the baseline (--update records every gated metric)" if old is None
                else f"not measured by this run ({obs.status})")
        return Finding(obs.cell_id, metric.name, "x", old, new, rule, note)
    # Positive `worse_by` means a move in the bad direction, whatever the metric's direction.
    worse_by = (old - new) if metric.higher_is_better else (new - old)
    limit = rule.tolerance * abs(old)
    mark = "+" if worse_by > limit else "-" if -worse_by > limit else "~"
    return Finding(obs.cell_id, metric.name, mark, old, new, rule)


def _first_line(text: str | None) -> str:
    return informative_line(text) or "(no error text)"


def exit_code(findings: list[Finding]) -> int:
    """0 when nothing got worse or newly failed, else 1 (2, bad input, is raised earlier)."""
    return 1 if any(f.mark in FAILING_MARKS for f in findings) else 0


def counts(findings: list[Finding]) -> dict[str, int]:
    return {mark: sum(f.mark == mark for f in findings) for mark in MARKS}


def environment_drift(baseline: Baseline, current: list[Observed]) -> list[str]:
    """'torch 2.13.0 -> 2.14.0' for each recorded version that differs: peaks may follow it."""
    env = next((o.env for o in current if o.env), {})
    return [f"{k} {baseline.environment[k]} -> {env[k]}" for k in ENV_KEYS
            if k in baseline.environment and k in env and str(env[k]) != str(baseline.environment[k])]

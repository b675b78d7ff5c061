"""The tuning protocol's reading of stored runs (issue 13): trials grouped per optimizer, the
best trial chosen by a stated rule, its edges flagged, its gain over the default setting, and
the points of an LR-sensitivity plot.

A *trial* is one setting of an optimizer's hparams (one point of a suite's search space); its
runs are its seeds. The best trial of an optimizer × model × seq len × strategy is the one
with the lowest final eval loss (after the last training step, never an intermediate point),
mean over its seeds. Picking the best of N trials favours it a little (the winner's curse):
the tuned-vs-default gain is an upper estimate, and the verdict against the default says
whether it is more than seed noise.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from optbench.errors import OptbenchError
from optbench.optimizers import resolve_hparams
from optbench.results import stats
from optbench.results.store import StoredRun

SELECTION_METRIC = "eval_loss"  # the best trial: lowest final eval loss, mean over its seeds
SELECTION_RULE = ("each optimizer's trial with the lowest final eval loss (after the last "
                  "training step, never an intermediate point), mean over its seeds")
SENSITIVITY_HPARAM = "lr"

Pair = tuple[str, int]  # (model, seq_len)
Trials = dict[str, list[StoredRun]]  # trial key -> its runs (seeds), in seed order
Group = tuple[str, str]  # (optimizer name, strategy)


def trial_key(run: StoredRun) -> str:
    """A run's setup of its optimizer (its resolved hparams): one trial of a search space."""
    return json.dumps(run.config.get("optimizer", {}).get("hparams", {}), sort_keys=True)


def trials_at(runs: list[StoredRun], pair: Pair, keep=lambda r: True) -> dict[Group, Trials]:
    """(optimizer name, strategy) -> its trials at one (model, seq len), each trial's runs by seed."""
    out: dict[Group, Trials] = {}
    for r in sorted(runs, key=lambda r: r.seed):
        if (r.model, int(r.seq_len)) == pair and keep(r):
            out.setdefault((r.optimizer_name, r.parallel), {}).setdefault(trial_key(r), []).append(r)
    return out


def is_default_label(label: str, name: str) -> bool:
    """Whether a trial's label is the optimizer's default setting: its bare name (no search),
    or every factor 1x ('adamw@lr=1x')."""
    if "@" not in label:
        return True
    settings = label.partition("@")[2].split(",")
    return all(s.endswith("=1x") for s in settings)


def ordered(trials: Trials, name: str) -> list[list[StoredRun]]:
    """An optimizer's trials: the one labelled by its bare name (no search) first, else the
    one at its default values (every factor 1x), then by label."""
    return sorted(trials.values(), key=lambda t: (t[-1].optimizer != name,
                                                  not is_default_label(t[-1].optimizer, name),
                                                  t[-1].optimizer))


def default_trial(trials: Trials, name: str) -> list[StoredRun] | None:
    """The trial at the optimizer's default setting: labelled so (its bare name, or every
    factor 1x), else the one whose hparams are the registry's defaults for the model (a list
    that happens to hold the default value); None when the search left it out."""
    first = ordered(trials, name)[:1]
    if first and is_default_label(first[0][-1].optimizer, name):
        return first[0]
    for seeds in trials.values():
        if trial_key(seeds[0]) == _registry_default_key(name, seeds[0].model):
            return seeds
    return None


def _registry_default_key(name: str, model: str) -> str | None:
    try:  # a run stored under an optimizer the registry no longer has: no default to know
        return json.dumps(resolve_hparams(name, {}, model), sort_keys=True)
    except OptbenchError:
        return None


def reference(groups: dict[Group, Trials], baseline: str, parallel: str) -> list[StoredRun]:
    """The baseline's runs ratios and verdicts are against: under the row's strategy, else one
    process; its first trial (the bare-named one when it was swept)."""
    trials = groups.get((baseline, parallel)) or groups.get((baseline, "none"))
    return ordered(trials, baseline)[0] if trials else []


def selection_values(seeds: list[StoredRun]) -> list[float]:
    return [v for v in (r.metric(SELECTION_METRIC) for r in seeds) if np.isfinite(v)]


def best_trial(trials: Trials) -> list[StoredRun] | None:
    """The trial with the lowest mean final eval loss over its seeds (the end of training, never
    an intermediate point); None when no trial has one."""
    scored = [(float(np.mean(v)), seeds) for seeds in trials.values()
              if (v := selection_values(seeds))]
    return min(scored, key=lambda s: s[0])[1] if scored else None


def best_only(groups: dict[Group, Trials]) -> dict[Group, Trials]:
    """Each optimizer's best trial alone (what `compare --tuned` shows)."""
    return {key: ({trial_key(b[0]): b} if (b := best_trial(t)) else {}) for key, t in groups.items()}


def swept(trials: Trials) -> list[str]:
    """The hparams whose value differs between the trials, in name order."""
    settings = [json.loads(key) for key in trials]
    names = sorted({k for s in settings for k in s})
    return [k for k in names if len({json.dumps(s.get(k)) for s in settings}) > 1]


def edge_notes(trials: Trials, best: list[StoredRun]) -> list[str]:
    """For each hparam the search varied, whether the best trial's value is the smallest or the
    largest tried: the optimum may lie outside the range."""
    hparams = [json.loads(key) for key in trials]
    chosen = json.loads(trial_key(best[0]))
    notes = []
    for name in sorted(chosen):
        tried = sorted({h.get(name) for h in hparams if _is_number(h.get(name))})
        if len(tried) < 2 or chosen[name] not in (tried[0], tried[-1]):
            continue
        end = "largest" if chosen[name] == tried[-1] else "smallest"
        notes.append(f"{best[0].optimizer}: {name} {chosen[name]:g} is the {end} tried "
                     f"({len(tried)} values, {tried[0]:g} to {tried[-1]:g}): widen the range")
    return notes


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def chosen_text(trials: Trials, best: list[StoredRun]) -> str:
    """The chosen values of the swept hparams, with the factor the label gives: 'lr 0.002 (2x)'."""
    hparams = json.loads(trial_key(best[0]))
    factors = dict(s.split("=", 1) for s in best[0].optimizer.partition("@")[2].split(",") if "=" in s)
    parts = []
    for name in swept(trials):
        value = hparams.get(name)
        text = f"{value:.3g}" if _is_number(value) else str(value)
        factor = factors.get(name, "")
        parts.append(f"{name} {text}" + (f" ({factor})" if factor.endswith("x") else ""))
    return ", ".join(parts)


def tuning_frame(runs: list[StoredRun]) -> pd.DataFrame:
    """One row per optimizer × model × seq len × strategy that was searched (more than one
    trial): how many trials and seeds, the chosen setting, its final eval loss against the
    default setting's, and whether that gain is more than seed noise."""
    rows = []
    for pair in sorted({(r.model, int(r.seq_len)) for r in runs}):
        for (name, parallel), trials in trials_at(runs, pair, keep=_finished).items():
            if len(trials) > 1 and (best := best_trial(trials)) is not None:
                rows.append(_tuning_row(pair, name, parallel, trials, best))
    return pd.DataFrame(rows)


def _finished(run: StoredRun) -> bool:
    return run.status == "ok"


def _tuning_row(pair: Pair, name: str, parallel: str, trials: Trials,
                best: list[StoredRun]) -> dict[str, Any]:
    tuned = stats.summarize(selection_values(best))
    default = default_trial(trials, name)
    default_values = selection_values(default) if default else []
    row = {"model": pair[0], "seq_len": pair[1], "name": name, "parallel": parallel,
           "trials": len(trials), "seeds": len(best), "chosen": chosen_text(trials, best),
           "label": best[0].optimizer, "eval_loss": tuned.mean,
           "eval_loss_ci": (tuned.ci_high - tuned.ci_low) / 2,
           "default_eval_loss": float(np.mean(default_values)) if default_values else math.nan,
           "edges": edge_notes(trials, best)}
    row["delta"] = row["eval_loss"] - row["default_eval_loss"]
    row["verdict"] = row["test"] = ""
    if default is best:
        row["verdict"] = "default is best"
    elif len(default_values) >= 2 and tuned.n >= 2:
        result = stats.seed_test(_by_seed(best), _by_seed(default), higher_is_better=False)
        row["verdict"], row["test"] = result.verdict, result.test
    return row


def _by_seed(seeds: list[StoredRun]) -> dict[int, float]:
    return {r.seed: v for r in seeds if np.isfinite(v := r.metric(SELECTION_METRIC))}


def sensitivity_frame(runs: list[StoredRun], hparam: str = SENSITIVITY_HPARAM) -> pd.DataFrame:
    """Points of the sensitivity plot: per optimizer × model × seq len × strategy whose search
    varied `hparam`, each trial at the best trial's other settings, with its final eval loss
    over seeds (mean, sample std, n) and whether it is the chosen one."""
    rows = []
    for pair in sorted({(r.model, int(r.seq_len)) for r in runs}):
        for (name, parallel), trials in trials_at(runs, pair, keep=_finished).items():
            best = best_trial(trials)
            if best is None or hparam not in swept(trials):
                continue
            rest = _without(trial_key(best[0]), hparam)
            for key, seeds in trials.items():
                values = selection_values(seeds)
                if _without(key, hparam) != rest or not values:
                    continue
                s = stats.summarize(values)
                rows.append({"model": pair[0], "seq_len": pair[1], "name": name,
                             "parallel": parallel, "value": float(json.loads(key)[hparam]),
                             "mean": s.mean, "std": 0.0 if s.n == 1 else s.std, "seeds": s.n,
                             "chosen": seeds is best})
    return pd.DataFrame(rows)


def _without(key: str, hparam: str) -> str:
    settings = json.loads(key)
    settings.pop(hparam, None)
    return json.dumps(settings, sort_keys=True)

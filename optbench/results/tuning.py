"""The tuning protocol's reading of stored runs (issue 13): trials grouped per optimizer, the
best trial chosen by a stated rule, its edges flagged, its gain over the default setting, and
the points of an LR-sensitivity plot.

A *trial* is one setting of an optimizer's hparams (one point of a suite's search space); its
runs are its seeds. A *search* is the trials of one suite
entry, named by its label before '@' ('adamw' for 'adamw@lr=2x'; two labelled setups of one
optimizer are two searches). The best trial of a search at a model × seq len × strategy is the
one with the lowest final eval loss (after the last training step, never an intermediate
point), mean over its seeds, among its *complete* trials: every seed of the search finished ok.
A trial with a diverged, failed or missing seed is out (it counts as tried for the edge flags):
otherwise a trial that diverged on the hard seed would win on the easy one. Picking the best of N trials favours it a little (the winner's curse):
the tuned-vs-default gain is an upper estimate, and the verdict against the default says
whether it is more than seed noise.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterator

import numpy as np
import pandas as pd

from optbench.errors import OptbenchError
from optbench.optimizers import resolve_hparams
from optbench.results import stats
from optbench.results.store import StoredRun

SELECTION_METRIC = "eval_loss"  # the best trial: lowest final eval loss, mean over its seeds
SELECTION_RULE = ("each optimizer's trial with the lowest final eval loss (after the last "
                  "training step, never an intermediate point), mean over its seeds; a trial "
                  "with a failed, diverged or missing seed is out")
SENSITIVITY_HPARAM = "lr"

Pair = tuple[str, int]  # (model, seq_len)
Trials = dict[str, list[StoredRun]]  # trial key -> its runs (seeds), in seed order
Group = tuple[str, str]  # (optimizer name, strategy)


def setup_view(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config's setup (defaults and data) without its parallel strategy, which each
    row states in its label, and its seed (a trial's seeds are one setup)."""
    defaults = {k: v for k, v in config["defaults"].items() if k not in ("parallel", "seed")}
    return {"defaults": defaults, "data": config["data"]}


def trial_key(run: StoredRun) -> str:
    """One trial: the run's resolved hparams. Its setup is not part of it: compare takes the
    latest result whatever suite made it, and notes when the rows' setups differ."""
    return json.dumps(hparams_of(run), sort_keys=True)


def hparams_of(run: StoredRun) -> dict[str, Any]:
    return run.config.get("optimizer", {}).get("hparams", {})


def search_label(run: StoredRun) -> str:
    """The suite entry a run's trial belongs to: its label before '@'."""
    return run.optimizer.partition("@")[0]


def searches(trials: Trials) -> dict[str, Trials]:
    """One optimizer's trials split by the search (suite entry) each belongs to."""
    out: dict[str, Trials] = {}
    for key, seeds in trials.items():
        out.setdefault(search_label(seeds[-1]), {})[key] = seeds
    return out


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
    """An optimizer's trials: the one at its default setting first (default_trial), then by
    search and in numeric order of their hparams."""
    default = default_trial(trials, name)
    return sorted(trials.values(), key=lambda t: (t is not default, search_label(t[-1]),
                                                  _value_order(t[-1])))


def _value_order(run: StoredRun) -> list:
    """Trials in numeric order of their hparams (text order would put 10x before 2x)."""
    return [(k, (0, v, "") if _is_number(v) else (1, 0, str(v)))
            for k, v in sorted(hparams_of(run).items())]


def default_trial(trials: Trials, name: str) -> list[StoredRun] | None:
    """The trial at the optimizer's default setting: labelled by the bare name, else every
    factor 1x, else the one whose hparams are the registry's defaults for the model (a list
    that happens to hold the default value); None when the search left it out."""
    runs = list(trials.values())
    for is_default in (lambda t: t[-1].optimizer == name,
                       lambda t: is_default_label(t[-1].optimizer, name),
                       lambda t: _jsonable(hparams_of(t[0])) == _registry_defaults(name, t[0].model)):
        if (found := next((t for t in runs if is_default(t)), None)) is not None:
            return found
    return None


def _registry_defaults(name: str, model: str) -> Any:
    try:  # a run stored under an optimizer the registry no longer has: no default to know
        return _jsonable(resolve_hparams(name, {}, model))
    except OptbenchError:
        return None


def _jsonable(hparams: dict) -> Any:
    return json.loads(json.dumps(hparams, sort_keys=True))


def reference(groups: dict[Group, Trials], baseline: str, parallel: str) -> list[StoredRun]:
    """The baseline's runs ratios and verdicts are against: under the row's strategy, else one
    process; its first trial (the bare-named one when it was swept)."""
    trials = groups.get((baseline, parallel)) or groups.get((baseline, "none"))
    if not trials:
        return []
    return ordered(searches(trials).get(baseline, trials), baseline)[0]


def selection_values(seeds: list[StoredRun]) -> list[float]:
    return [v for v in (r.metric(SELECTION_METRIC) for r in seeds) if np.isfinite(v)]


def complete(trials: Trials) -> Trials:
    """The trials with a finished result on every seed of their search."""
    seeds = {r.seed for runs in trials.values() for r in runs}
    return {key: runs for key, runs in trials.items()
            if {r.seed for r in runs} == seeds and len(selection_values(runs)) == len(runs)
            and all(r.status == "ok" for r in runs)}


def best_trial(trials: Trials) -> list[StoredRun] | None:
    """The complete trial with the lowest mean final eval loss over its seeds (the end of
    training, never an intermediate point); None when no trial is complete."""
    scored = [(float(np.mean(selection_values(seeds))), seeds) for seeds in complete(trials).values()]
    return min(scored, key=lambda s: s[0])[1] if scored else None


def best_only(groups: dict[Group, Trials]) -> dict[Group, Trials]:
    """Each search's best trial alone (what `compare --tuned` shows)."""
    out = {}
    for key, trials in groups.items():
        best = [b for search in searches(trials).values() if (b := best_trial(search))]
        out[key] = {trial_key(b[0]): b for b in best}
    return out


def swept(trials: Trials) -> list[str]:
    """The hparams whose value differs between the trials, in name order."""
    settings = [hparams_of(seeds[0]) for seeds in trials.values()]
    names = sorted({k for s in settings for k in s})
    return [k for k in names if len({json.dumps(s.get(k)) for s in settings}) > 1]


def edge_notes(trials: Trials, best: list[StoredRun]) -> list[str]:
    """For each hparam the search varied, whether the best trial's value is the smallest or the
    largest tried: the optimum may lie outside the range."""
    hparams = [hparams_of(seeds[0]) for seeds in trials.values()]
    chosen = hparams_of(best[0])
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
    hparams = hparams_of(best[0])
    factors = dict(s.split("=", 1) for s in best[0].optimizer.partition("@")[2].split(",") if "=" in s)
    parts = []
    for name in swept(trials):
        value = hparams.get(name)
        text = f"{value:.3g}" if _is_number(value) else str(value)
        factor = factors.get(name, "")
        parts.append(f"{name} {text}" + (f" ({factor})" if factor.endswith("x") else ""))
    return ", ".join(parts)


def searched(runs: list[StoredRun]) -> Iterator[tuple[Pair, str, str, Trials]]:
    """((model, seq len), search label, strategy, its trials) of every search with more than
    one trial, whatever its runs' statuses (a failed trial was still tried)."""
    for pair in sorted({(r.model, int(r.seq_len)) for r in runs}):
        for (_, parallel), trials in trials_at(runs, pair).items():
            for label, search in searches(trials).items():
                if len(search) > 1:
                    yield pair, label, parallel, search


def tuning_frame(runs: list[StoredRun]) -> pd.DataFrame:
    """One row per search (optimizer entry × model × seq len × strategy) of more than one
    trial: how many trials (and how many are out), seeds, the chosen setting, its final eval
    loss against the default setting's, and whether that gain is more than seed noise."""
    rows = [_tuning_row(pair, label, parallel, trials, best)
            for pair, label, parallel, trials in searched(runs)
            if (best := best_trial(trials)) is not None]
    return pd.DataFrame(rows)


def _tuning_row(pair: Pair, label: str, parallel: str, trials: Trials,
                best: list[StoredRun]) -> dict[str, Any]:
    tuned = stats.summarize(selection_values(best))
    default = default_trial(trials, best[0].optimizer_name)
    default_values = selection_values(default) if default and default in complete(trials).values() else []
    row = {"model": pair[0], "seq_len": pair[1], "name": label, "parallel": parallel,
           "trials": len(trials), "out": len(trials) - len(complete(trials)), "seeds": len(best),
           "chosen": chosen_text(trials, best), "label": best[0].optimizer,
           "eval_loss": tuned.mean, "eval_loss_ci": (tuned.ci_high - tuned.ci_low) / 2,
           "default_eval_loss": float(np.mean(default_values)) if default_values else math.nan,
           "default_tried": default is not None, "edges": edge_notes(trials, best)}
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
    """Points of the sensitivity plot: per search whose trials varied `hparam`, each complete
    trial at the best trial's other settings, with its final eval loss over seeds (mean,
    sample std, n) and whether it is the chosen one."""
    rows = []
    for pair, label, parallel, trials in searched(runs):
        best = best_trial(trials)
        if best is None or hparam not in swept(trials):
            continue
        rest = _without(best[0], hparam)
        for seeds in complete(trials).values():
            if _without(seeds[0], hparam) != rest:
                continue
            s = stats.summarize(selection_values(seeds))
            rows.append({"model": pair[0], "seq_len": pair[1], "name": label,
                         "parallel": parallel, "value": float(hparams_of(seeds[0])[hparam]),
                         "mean": s.mean, "std": 0.0 if s.n == 1 else s.std, "seeds": s.n,
                         "chosen": seeds is best})
    return pd.DataFrame(rows)


def _without(run: StoredRun, hparam: str) -> str:
    """The run's trial with one hparam left out: the other settings a sensitivity line holds."""
    settings = dict(hparams_of(run))
    settings.pop(hparam, None)
    return json.dumps(settings, sort_keys=True)

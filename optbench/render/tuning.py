"""The tuning views (results.tuning's frames, drawn): the best-hparams table with each
optimizer's gain over its default setting, and the LR-sensitivity figure — final eval loss
against the learning rate, one line per optimizer, seed spread as error bars, the chosen point
marked — that optimizer papers show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from optbench.render.figures import new_figure, optimizer_styles, safe_name, save_figure
from optbench.render.markdown import LEFT_ALIGNED, rows_table
from optbench.results.tuning import SELECTION_RULE, SENSITIVITY_HPARAM

TUNING_HEADER = ["Optimizer", "Trials", "Seeds", "Chosen", "Eval loss (tuned)",
                 "Eval loss (default)", "Δ tuned − default", "Verdict"]


def _row_name(row: pd.Series) -> str:
    return row["name"] if row["parallel"] == "none" else f"{row['name']} · {row['parallel']}"


def _loss(value: float, ci: float = np.nan) -> str:
    if not np.isfinite(value):
        return "—"
    return f"{value:.3f}" + (f" ± {ci:.3f}" if np.isfinite(ci) else "")


def tuning_cells(frame: pd.DataFrame) -> list[list[str]]:
    """The best-hparams table's rows, formatted."""
    out = []
    for _, row in frame.iterrows():
        delta = row["delta"]
        default = (_loss(row["default_eval_loss"]) if np.isfinite(row["default_eval_loss"])
                   else "failed" if row.get("default_tried") else "not tried")
        trials = str(row["trials"]) + (f" ({row['out']} out)" if row.get("out") else "")
        out.append([_row_name(row), trials, str(row["seeds"]), row["chosen"] or "—",
                    _loss(row["eval_loss"], row["eval_loss_ci"]), default,
                    f"{delta:+.3f}" if np.isfinite(delta) else "—", row["verdict"] or "—"])
    return out


TUNING_CAPTION = (
    f"Best trial per optimizer: {SELECTION_RULE} (`N out` in Trials). Eval loss in nats, ± half the 95 % interval "
    "over seeds; default = the trial at the optimizer's default setting (every factor 1×); "
    "the verdict is a t-test of the chosen trial's seeds against the default's, paired over the "
    "same seeds (Welch's when they differ; the best of "
    "several trials is favoured a little by chance, so read a small gain with care)")


def edge_lines(frame: pd.DataFrame) -> list[str]:
    return [note for notes in frame["edges"] for note in notes] if len(frame) else []


def markdown_lines(frame: pd.DataFrame) -> list[str]:
    """The section under one (model, seq len): the table, its caption and any edge flags."""
    if frame.empty:
        return []
    lines = [f"**Tuning.** {TUNING_CAPTION}.", "",
             rows_table(TUNING_HEADER, tuning_cells(frame), LEFT_ALIGNED | {"Chosen", "Verdict"}),
             ""]
    edges = edge_lines(frame)
    if edges:
        lines += ["**On the edge of the searched range:**", "", *[f"- {e}" for e in edges], ""]
    return lines


def best_trials_only(runs: pd.DataFrame, tuning: pd.DataFrame) -> pd.DataFrame:
    """The runs of a (prepared) runs frame that figures show when a search ran: an optimizer's
    chosen trial (every seed of it) where it searched, all of its runs where it did not. Two
    dozen trial curves in one plot read as noise; the sensitivity figure shows every trial."""
    if tuning.empty or runs.empty:
        return runs
    chosen = {(r.model, r.seq_len, r.name, r.parallel): r.label for r in tuning.itertuples()}
    trial = [label[:len(label) - len(suffix)] if suffix else label
             for label, suffix in zip(runs["optimizer"], runs["series_suffix"])]
    keys = zip(runs["model"], runs["seq_len"], [t.partition("@")[0] for t in trial], runs["parallel"])
    keep = [chosen.get(key, t) == t for key, t in zip(keys, trial)]
    return runs[keep]


def plot_sensitivity(model: str, points: pd.DataFrame, path: Path) -> Path | None:
    """Final eval loss against lr for one model, a panel per (seq len, strategy); None when no
    optimizer's search varied lr."""
    points = points[points["model"] == model] if len(points) else points
    if points.empty:
        return None
    panels = list(points.groupby(["seq_len", "parallel"], sort=True))
    styles = optimizer_styles(points["name"])
    fig = new_figure(5.2 * len(panels) + 1.6, 3.9)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, ((seq_len, parallel), panel) in zip(axes, panels):
        _sensitivity_axis(ax, panel, styles)
        where = f"seq {seq_len}" + ("" if parallel == "none" else f" · {parallel}")
        ax.set_title(where, fontsize=10)
    handles = [Line2D([], [], color=styles[n]["color"], marker=styles[n]["marker"], mfc="none",
                      label=n) for n in sorted(styles)]
    handles.append(Line2D([], [], color="black", marker="*", ls="none", ms=12, label="chosen"))
    fig.legend(handles=handles, loc="outside right center", title="optimizer")
    seeds = int(points["seeds"].max())
    spread = "± one std over seeds" if seeds > 1 else "one seed: no spread"
    fig.suptitle(f"{model}: final eval loss vs learning rate ({spread})", fontsize=11)
    return save_figure(fig, path)


def _sensitivity_axis(ax, panel: pd.DataFrame, styles: dict) -> None:
    for name, line in panel.groupby("name", sort=True):
        line = line.sort_values("value")
        style = styles[name]
        ax.errorbar(line["value"], line["mean"], yerr=line["std"], color=style["color"],
                    ls=style["linestyle"], marker=style["marker"], mfc="none", ms=6, capsize=3,
                    lw=1.6)
        chosen = line[line["chosen"]]
        ax.plot(chosen["value"], chosen["mean"], ls="none", marker="*", ms=14,
                color=style["color"], mec="black", mew=0.8, zorder=5)
    ax.set_xscale("log")
    ax.set_xlabel(f"{SENSITIVITY_HPARAM} (log scale)")
    ax.set_ylabel("final eval loss (nats)")
    ax.grid(True, which="both", alpha=0.3)


def sensitivity_figures(points: pd.DataFrame, out_dir: Path) -> list[tuple[str, Path]]:
    """(alt text, path) per model with a searched lr."""
    if points.empty:
        return []
    out = []
    for model in sorted(points["model"].unique()):
        path = plot_sensitivity(model, points, out_dir / f"lr_sensitivity_{safe_name(model)}.png")
        if path is not None:
            out.append((f"{model}: final eval loss vs learning rate", path))
    return out

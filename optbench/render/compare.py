"""Render a comparison: terminal tables, Markdown with figures, CSV and JSON.

Figures share the suite report's look (optbench.render.figures): the same colour, line style and
marker per optimizer, the same loss and memory-breakdown figures, plus a throughput-vs-memory
scatter and, with `--by`, one metric against sequence length or model size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table
from rich.text import Text

from optbench.metrics import MIB, PART_METRICS, Metric, column_unit, format_number
from optbench.render import tuning as render_tuning
from optbench.render.figures import (THROUGHPUT_LABEL, new_figure, optimizer_handles,
                                     optimizer_styles, plot_loss, plot_memory, safe_name,
                                     save_figure, thousands)
from optbench.render.frames import model_order, optimizer_order, prepare_runs
from optbench.render.markdown import generated_line, rows_table
from optbench.results import tuning
from optbench.results.store import StoredRun, runs_frame

STATUS_STYLE = {"ok": "green", "estimated": "yellow", "missing": "red"}


VERDICT_MARK = {"better": "better", "worse": "worse", "within noise": "≈ noise"}


def fmt_cell(metric: Metric, value: float, ratio: float, best: bool,
             ci: tuple[float, float] = (np.nan, np.nan), verdict: str = "") -> str:
    """'12.0 MiB (0.08×) ★': value, ratio to the baseline, and a star where best. Over seeds:
    '5.62 ± 0.03 (0.98×) better': the mean, the half-width of its 95 % interval, and the
    t-test's verdict against the baseline instead of a star."""
    text = format_number(metric, value)
    low, high = ci
    if np.isfinite(low) and np.isfinite(high) and high > low:
        text += f" ± {format_number(metric, (high - low) / 2)}"
    if np.isfinite(ratio):
        text += f" ({ratio:.2f}×)"
    if verdict:
        return text + f" {VERDICT_MARK.get(verdict, verdict)}"
    return text + (" ★" if best else "")


@dataclass
class Comparison:
    """Everything a rendering needs; `tables` are compare.table_rows frames, one per pair."""

    names: list[str]
    baseline: str
    metrics: list[Metric]
    tables: list[pd.DataFrame]
    notes: list[list[str]]  # per table: how the rows' setups differ
    titles: list[str]
    runs: list[StoredRun]  # the selected stored runs (for figures)
    targets: list[pd.DataFrame] = None  # per table: compare.time_to_target rows
    selection: list[list[str]] = None  # per table, with --tuned: which trial won, any edge
    tuning: pd.DataFrame = None  # results.tuning.tuning_frame of the runs: searched optimizers
    sensitivity: pd.DataFrame = None  # results.tuning.sensitivity_frame: the lr plot's points

    def __post_init__(self):
        if self.tuning is None:
            self.tuning = pd.DataFrame()
        if self.sensitivity is None:
            self.sensitivity = pd.DataFrame()
        if self.targets is None:
            self.targets = [pd.DataFrame() for _ in self.tables]
        if self.selection is None:
            self.selection = [[] for _ in self.tables]


def _header(m: Metric) -> str:
    unit = column_unit(m)
    return f"{m.label} ({unit})" if unit and unit.lower() != m.label.lower() else m.label


def _cells(frame: pd.DataFrame, cmp: Comparison, metrics: list[Metric]) -> list[list[str]]:
    out = []
    for _, row in frame.iterrows():
        # The baseline's own ratios are 1.00× by definition: leave them out.
        ratio = (lambda m: np.nan) if row.get("reference", row["name"] == cmp.baseline) else (
            lambda m: row[f"{m.name}_vs_{cmp.baseline}"])
        values = [fmt_cell(m, row[m.name], ratio(m), m.name in row["best"],
                           (row.get(f"{m.name}_ci_low", np.nan), row.get(f"{m.name}_ci_high", np.nan)),
                           row.get(f"{m.name}_verdict", "")) for m in metrics]
        out.append([row["optimizer"], row["status"], row["config"] or "—", *values])
    return out


def caption(cmp: Comparison) -> str:
    text = (f"(×) = ratio to {cmp.baseline} · ★ = best in the column · MiB = 2^20 bytes · "
            f"— = not measured · Config = suite and config fingerprint of the row")
    if any((t["seeds"] > 1).any() for t in cmp.tables if "seeds" in t):
        text += (f" · over seeds: mean ± half the 95 % interval, and a t-test against "
                 f"{cmp.baseline} (p < 0.05: better / worse, else ≈ noise) instead of ★: paired"
                 f" over the same seeds (seed k gives every optimizer the same initial weights"
                 f" and batches), Welch's when the seeds differ")
    shared = sum(r.jobs > 1 for r in cmp.runs)
    if shared:
        text += (f" · {shared} of {len(cmp.runs)} results ran beside other cells (run --jobs):"
                 f" their times and throughput are not what a cell alone measures")
    return text


def terminal_metrics(cmp: Comparison, chosen: bool) -> list[Metric]:
    """The terminal gets the headline columns unless metrics were chosen; parts go to the Markdown."""
    return cmp.metrics if chosen else [m for m in cmp.metrics if m.name not in PART_METRICS]


def rich_tables(cmp: Comparison, chosen: bool = False) -> list[Table]:
    metrics = terminal_metrics(cmp, chosen)
    note = "" if chosen else " · parts of the peak in the report"
    tables = []
    for frame, title, notes, targets, selection in zip(cmp.tables, cmp.titles, cmp.notes,
                                                       cmp.targets, cmp.selection):
        picked = "".join(f"\n{n}" for n in ([SELECTION_RULE, *selection] if selection else []))
        table = Table(title=title, caption=caption(cmp) + note
                      + "".join(f"\n⚠ setups differ: {n}" for n in notes) + picked)
        for col in ["Optimizer", "Status", "Config", *(_header(m) for m in metrics)]:
            table.add_column(col, justify="left" if col in ("Optimizer", "Status", "Config") else "right",
                             no_wrap=col == "Config")
        for cells in _cells(frame, cmp, metrics):
            # Stored text (labels, configs) is never Rich markup.
            table.add_row(Text(cells[0]), Text(cells[1], style=STATUS_STYLE.get(cells[1], "red")),
                          *(Text(c) for c in cells[2:]))
        tables.append(table)
        if len(targets):
            tables.append(_target_table(cmp, targets))
        if len(searched := _tuning_at(cmp, frame)):
            tables.append(_tuning_table(searched))
    return tables


def _tuning_at(cmp: Comparison, frame: pd.DataFrame) -> pd.DataFrame:
    """The searched optimizers of one table (its model and seq len)."""
    if cmp.tuning.empty or frame.empty:
        return pd.DataFrame()
    model, seq_len = frame["model"].iloc[0], frame["seq_len"].iloc[0]
    return cmp.tuning[(cmp.tuning["model"] == model) & (cmp.tuning["seq_len"] == seq_len)]


def _tuning_table(searched: pd.DataFrame) -> Table:
    edges = render_tuning.edge_lines(searched)
    table = Table(caption=render_tuning.TUNING_CAPTION + "".join(f"\n⚠ {e}" for e in edges))
    for col in render_tuning.TUNING_HEADER:
        table.add_column(col, justify="left" if col in ("Optimizer", "Chosen", "Verdict") else "right")
    for cells in render_tuning.tuning_cells(searched):
        table.add_row(*(Text(str(c)) for c in cells))  # stored text, not markup
    return table


def _target_table(cmp: Comparison, targets: pd.DataFrame) -> Table:
    table = Table(caption=target_caption(cmp, targets))
    for col in TARGET_HEADER:
        table.add_column(col, justify="left" if col == "Optimizer" else "right")
    for cells in target_cells(targets):
        table.add_row(*(Text(str(c)) for c in cells))  # stored text, not markup
    return table


# ----------------------------------------------------------------------------- exports


def long_frame(cmp: Comparison) -> pd.DataFrame:
    """All tables as one frame of raw numbers (bytes, not MiB), for CSV."""
    frame = pd.concat(cmp.tables, ignore_index=True)
    frame["best"] = frame["best"].map(";".join)
    frame["run_id"] = frame["run_id"].astype("Int64")
    for m in cmp.metrics:  # bytes are integers: no '71526628.0' in a spreadsheet
        if m.unit == "bytes":
            frame[m.name] = frame[m.name].round().astype("Int64")
    return frame


def to_json(cmp: Comparison) -> str:
    tables = []
    for frame, notes in zip(cmp.tables, cmp.notes):
        rows = []
        for _, row in frame.iterrows():
            metrics = {m.name: {"value": _num(row[m.name]), "unit": m.unit,
                                f"vs_{cmp.baseline}": _num(row[f"{m.name}_vs_{cmp.baseline}"]),
                                "best": m.name in row["best"], "higher_is_better": m.higher_is_better}
                       for m in cmp.metrics}
            rows.append({"optimizer": row["optimizer"], "parallel": row["parallel"],
                         "status": row["status"],
                         "config": row["config"] or None, "run_id": _num(row["run_id"]), "metrics": metrics})
        tables.append({"model": frame["model"].iloc[0], "seq_len": int(frame["seq_len"].iloc[0]),
                       "setup_differences": notes, "rows": rows})
    doc = {"baseline": cmp.baseline, "optimizers": cmp.names, "tables": tables}
    return json.dumps(doc, indent=2) + "\n"


def _num(value):
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return None
    return int(value) if float(value).is_integer() else float(value)


# ----------------------------------------------------------------------------- time to target

SELECTION_RULE = f"Tuned: {tuning.SELECTION_RULE}, among those of its search that are stored."
TARGET_HEADER = ["Optimizer", "Target (nats)", "Seeds reaching", "Steps", "Tokens",
                 "Time (s, est.)", "Speedup"]


def target_cells(frame: pd.DataFrame) -> list[list[str]]:
    """Formatted time-to-target rows: 'not reached' where a seed never gets there."""
    out = []
    for _, row in frame.iterrows():
        reached = row["steps"] is not None and np.isfinite(row["steps"])
        fmt = lambda v, spec: format(float(v), spec) if v is not None and np.isfinite(v) else "—"  # noqa: E731
        out.append([row["optimizer"], f"{row['target']:.3f}", f"{row['reached']} of {row['seeds']}",
                    fmt(row["steps"], ",.1f") if reached else "not reached",
                    fmt(row["tokens"], ",.0f"), fmt(row["seconds"], ",.1f"),
                    (fmt(row["speedup"], ".2f") + "×") if row["speedup"] is not None
                    and np.isfinite(row["speedup"]) else "—"])
    return out


def target_caption(cmp: Comparison, frame: pd.DataFrame) -> str:
    return (f"Time to {cmp.baseline}'s final loss (the target: the mean of its last 5 steps, "
            f"over its seeds, under the row's strategy; each curve smoothed the same way): the "
            f"first step at or below it, as tokens, and as time at the median step time; "
            f"speedup = {cmp.baseline}'s steps / these")


# ----------------------------------------------------------------------------- markdown


def write_markdown(cmp: Comparison, curves: pd.DataFrame, out_dir: Path, command: str,
                   by: str | None, by_metric: Metric) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# optbench compare: {', '.join(cmp.names)}", "",
             generated_line(command), "",
             f"Each row is the latest ok result of that optimizer at that model and sequence"
             f" length in the results store (with several seeds, their mean). {caption(cmp)}.", ""]
    for frame, title, notes, targets, selection in zip(cmp.tables, cmp.titles, cmp.notes,
                                                       cmp.targets, cmp.selection):
        header = ["Optimizer", "Status", "Config", *(_header(m) for m in cmp.metrics)]
        cells = _cells(frame, cmp, cmp.metrics)
        lines += [f"## {title}", "", rows_table(header, cells), ""]
        if notes:
            lines += ["**Setups differ** (these rows are not like for like):", "",
                      *[f"- `{n}`" for n in notes], ""]
        if selection:
            lines += [f"**{SELECTION_RULE}**", "", *[f"- {n}" for n in selection], ""]
        if len(targets):
            lines += [f"**{target_caption(cmp, targets)}.**", "",
                      rows_table(TARGET_HEADER, target_cells(targets)), ""]
        lines += render_tuning.markdown_lines(_tuning_at(cmp, frame))
    written = []
    figures_written = figures(cmp, curves, out_dir, by, by_metric)
    figures_written += render_tuning.sensitivity_figures(cmp.sensitivity, out_dir)
    for alt, path in figures_written:
        lines += [f"![{alt}]({path.name})", ""]
        written.append(path)
    summary = out_dir / "summary.md"
    summary.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8",
                       errors="backslashreplace")  # a path of undecodable bytes
    return [summary, *written]


# ----------------------------------------------------------------------------- figures


def _plot_frame(cmp: Comparison) -> pd.DataFrame:
    """The selected runs labelled as the table's rows are (the optimizer's name, or a trial's
    label such as 'adamw@lr=2x'), as optbench.report's figures expect."""
    runs = runs_frame(cmp.runs)
    runs["optimizer"] = [label if "@" in label else name
                         for label, name in zip(runs["optimizer"], runs["optimizer_name"])]
    return prepare_runs(runs)  # a sharded run becomes 'scale · fsdp2x2', as in the tables


def figures(cmp: Comparison, curves: pd.DataFrame, out_dir: Path, by: str | None,
            by_metric: Metric) -> list[tuple[str, Path]]:
    if not cmp.runs:
        return []
    runs = _plot_frame(cmp)
    styles = optimizer_styles(runs["optimizer"])
    out = []
    for model in model_order(runs):
        model_runs = runs[runs["model"] == model]
        name = safe_name(model)
        out += [
            (f"{model}: training loss", plot_loss(
                model, model_runs, curves, styles, cmp.baseline, out_dir / f"loss_{name}.png")),
            (f"{model}: peak memory by component", plot_memory(
                model, model_runs, cmp.baseline, out_dir / f"memory_{name}.png")),
            (f"{model}: throughput vs peak memory", _plot_scatter(
                model, model_runs, styles, cmp.baseline, out_dir / f"throughput_vs_memory_{name}.png")),
        ]  # fmt: skip
    if by:
        out.append((f"{by_metric.name} by {by}", _plot_by(
            runs, by, by_metric, styles, cmp.baseline, out_dir / f"{by_metric.name}_by_{by}.png")))
    return [(alt, path) for alt, path in out if path is not None]


def _plot_scatter(model: str, runs: pd.DataFrame, styles, baseline: str, path: Path) -> Path | None:
    """Tokens/s against peak MiB, one marker per optimizer; up and to the left is better."""
    ok = runs[np.isfinite(runs["tokens_per_s"]) & np.isfinite(runs["peak_allocated_bytes"])]
    if ok.empty:
        return None
    labels = optimizer_order(ok["optimizer"], baseline)
    several = ok["seq_len"].nunique() > 1
    fig = new_figure(7.5, 4.8)
    ax = fig.subplots()
    for label in labels:
        rows = ok[ok["optimizer"] == label].sort_values("seq_len")
        style = styles[label]
        ax.plot(rows["peak_allocated_bytes"] / MIB, rows["tokens_per_s"], ls=":" if several else "none",
                color=style["color"], marker=style["marker"], ms=9, mfc="none", mew=1.8, label=label)
        if several:  # which point is which sequence length
            for x, y, seq in zip(rows["peak_allocated_bytes"] / MIB, rows["tokens_per_s"], rows["seq_len"]):
                ax.annotate(f"{seq}", (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8, color="gray")
    ax.set_xlabel("peak memory (MiB)")
    ax.set_ylabel(THROUGHPUT_LABEL)
    thousands(ax.xaxis)
    thousands(ax.yaxis)
    # Room right of and above the highest point for the seq-len labels.
    ax.set_xlim(0, ok["peak_allocated_bytes"].max() / MIB * 1.12)
    ax.set_ylim(0, ok["tokens_per_s"].max() * 1.12)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", title="optimizer")
    note = " (labels: seq len)" if several else ""
    ax.set_title(f"{model}: throughput vs peak memory{note}\nbetter: up and to the left", fontsize=11)
    return save_figure(fig, path)


def _plot_by(runs: pd.DataFrame, by: str, metric: Metric, styles, baseline: str, path: Path) -> Path | None:
    """`metric` against seq len (one panel per model) or model (one panel per seq len)."""
    ok = runs[np.isfinite(runs[metric.name])] if metric.name in runs else runs.iloc[0:0]
    if ok.empty:
        return None
    models = [m for m in model_order(runs) if m in set(ok["model"])]
    panels = models if by == "seq_len" else sorted(ok["seq_len"].unique())
    fig = new_figure(2.0 + 4.2 * len(panels), 4.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    scale = MIB if metric.unit == "bytes" else 1
    for ax, panel in zip(axes, panels):
        at = ok[ok["model"] == panel] if by == "seq_len" else ok[ok["seq_len"] == panel]
        xs = sorted(at["seq_len"].unique()) if by == "seq_len" else [m for m in models if m in set(at["model"])]
        for label in optimizer_order(at["optimizer"], baseline):
            rows = at[at["optimizer"] == label].set_index(by)
            present = [x for x in xs if x in rows.index]
            ax.plot([xs.index(x) for x in present], rows.loc[present, metric.name] / scale, **styles[label],
                    label=label, ms=8, mfc="none", mew=1.6)
        ax.set_xticks(range(len(xs)), [str(x) for x in xs])
        ax.set_xlabel("sequence length (tokens)" if by == "seq_len" else "model (by size)")
        ax.set_title(str(panel) if by == "seq_len" else f"seq {panel}", fontsize=10)
        ax.grid(alpha=0.3)
        thousands(ax.yaxis)
    unit = column_unit(metric)
    axes[0].set_ylabel(f"{metric.name}" + (f" ({unit})" if unit else ""))
    handles = optimizer_handles(optimizer_order(ok["optimizer"], baseline), styles, marker=True)
    fig.legend(handles=handles, loc="outside right upper", title="optimizer")
    better = "higher" if metric.higher_is_better else "lower"
    fig.suptitle(f"{metric.label} by {'sequence length' if by == 'seq_len' else 'model size'} ({better} is better)")
    return save_figure(fig, path)

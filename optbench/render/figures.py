"""PNG figures of stored runs: loss curves, memory breakdowns, throughput, peak vs seq len.

Every figure takes a runs frame (optbench.render.frames) and writes one file. Styles come from
the sorted labels of the whole report, so one optimizer looks the same in every figure.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from optbench.metrics import MEMORY_PARTS, MIB, RESULT_STATUSES, is_number, part_metric
from optbench.render.frames import (METRIC_COLUMNS, SERIES_SEPARATOR, ok_with, optimizer_order,
                                    sorted_group)

DPI = 120
# Each memory part's colour in every stacked figure (the parts themselves: optbench.metrics).
PART_COLORS = {
    "params": "#4C72B0",
    "grads": "#DD8452",
    "optimizer_state": "#C44E52",
    "activations": "#55A868",
    "temporaries": "#8172B3",
}
# (legend name, stored metric, colour) per part, in stacking order.
PEAK_PARTS = [(part.replace("_", " "), part_metric(part), PART_COLORS[part]) for part in MEMORY_PARTS]
# On CUDA the allocator's peak can exceed the tracked parts; drawing the rest keeps bar == peak.
UNATTRIBUTED, UNATTRIBUTED_COLOR = "unattributed (allocator)", "#BBBBBB"


# Ten well-separated colours; past ten optimizers the colours repeat with the next line
# style, and the marker shifts as well: (colour, line style) is unique for up to 40
# optimizers, (colour, marker) for up to 100.
PALETTE = "tab10"
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = "osD^vPX*<>"
# Past this many optimizers a legend beside the axes would be taller than the figure, so it
# goes below the axes in columns; past this many, throughput is drawn as horizontal bars.
SIDE_LEGEND_MAX = 10
GROUPED_BARS_MAX = 8


def optimizer_styles(labels) -> dict[str, dict]:
    """{label: {color, linestyle, marker}} from the sorted labels of the whole report, so every
    figure agrees. Colour alone repeats past ten optimizers; the line style (and marker) tells
    them apart. Markers also tell apart lines that coincide (same optimizer, another lr).

    A sharded series ('scale · fsdp2x2') keeps its optimizer's colour and takes a line style
    and marker of its strategy, so one optimizer's strategies read as one family."""
    labels = sorted(set(labels))
    bases = sorted({_series_base(label) for label in labels})
    colors = matplotlib.colormaps[PALETTE].colors
    styles = {}
    for i, base in enumerate(bases):
        hue, cycle = i % len(colors), i // len(colors)
        family = [label for label in labels if _series_base(label) == base]
        for j, label in enumerate(sorted(family, key=lambda x: (x != base, x))):
            styles[label] = {
                "color": colors[hue],
                "linestyle": LINESTYLES[(cycle + j) % len(LINESTYLES)],
                "marker": MARKERS[(hue + cycle + j) % len(MARKERS)],
            }
    return styles


def _series_base(label: str) -> str:
    """'scale · fsdp2x2' -> 'scale' (optbench.render.frames names sharded series so)."""
    return str(label).split(SERIES_SEPARATOR, 1)[0]


def thousands(axis) -> None:
    """Tick labels with thousands separators, and decimals where the ticks are fractions (a
    tiny model's memory axis runs in steps of 0.5 MiB)."""
    axis.set_major_formatter(FuncFormatter(
        lambda x, _: f"{x:,.0f}" if abs(x) >= 10 or float(x).is_integer() else f"{x:.3g}"))


def new_figure(width: float, height: float) -> Figure:
    # A bare Figure (no pyplot) renders with Agg, touches no global backend state and is
    # garbage-collected like any object, so there is nothing to close.
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_figure(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    return path


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def optimizer_handles(labels: list[str], styles: dict[str, dict], marker: bool = False):
    """Legend lines in each optimizer's colour and line style (and marker, where plotted)."""
    return [
        Line2D([], [], color=styles[label]["color"], ls=styles[label]["linestyle"], lw=1.8,
               marker=styles[label]["marker"] if marker else None, ms=7, mfc="none", mew=1.4,
               label=label)
        for label in labels
    ]  # fmt: skip


LEGEND_FONT = 9
LEGEND_ROW_IN = 0.215  # height of one legend row at LEGEND_FONT, inches
LEGEND_CHAR_IN = 0.075  # average label character width at LEGEND_FONT, inches


def legend_columns(labels: list[str], width: float) -> tuple[int, float]:
    """(columns, extra figure height in inches) for a legend below the axes of a figure
    `width` inches wide: as many columns as the longest label allows, the height to fit."""
    longest = max((len(label) for label in labels), default=1)
    column_in = 0.9 + LEGEND_CHAR_IN * longest  # handle + padding + text
    ncols = max(1, min(len(labels), int((width - 0.4) // column_in)))
    rows = math.ceil(len(labels) / ncols)
    return ncols, 0.55 + LEGEND_ROW_IN * rows  # 0.55: legend title and padding


def optimizer_legend(fig: Figure, handles: list, ncols: int | None) -> None:
    """Beside the axes when ncols is None (few optimizers), else below them in ncols columns.
    Entries fill column by column, so the legend still reads baseline first, then A to Z."""
    if ncols is None:
        # Centred on the right: top-aligned, it can run into a suptitle on a narrow figure.
        fig.legend(handles=handles, loc="outside right center", title="optimizer")
        return
    fig.legend(handles=handles, loc="outside lower center", title="optimizer", ncols=ncols,
               fontsize=LEGEND_FONT, title_fontsize=LEGEND_FONT + 1, handlelength=3.0,
               columnspacing=1.4, frameon=False)  # fmt: skip


def _loss_ylim(curves: pd.DataFrame) -> tuple[float, float] | None:
    """Y range from runs that did not blow up, so one diverged curve can't flatten the rest."""
    sane = curves.loc[curves["status"] != "diverged", "loss"]
    if sane.empty:
        return None
    low, high = sane.min(), sane.max()
    pad = 0.04 * (high - low) or 0.1
    return low - pad, high + pad


NOT_OK_MARKER = "X"


def _plot_loss_curve(ax, steps: pd.Series, loss: pd.Series, style: dict, ok: bool) -> None:
    """Smoothed line over a faint raw curve, in the optimizer's colour and line style; a run
    that did not finish ok ends in a cross (line styles already tell optimizers apart)."""
    color, ls = style["color"], style["linestyle"]
    window = max(1, len(loss) // 25)
    if window == 1:
        shown = loss
    else:
        shown = loss.rolling(window, min_periods=1, center=True).mean()
        ax.plot(steps, loss, color=color, lw=0.8, alpha=0.25)
    ax.plot(steps, shown, color=color, lw=1.6, ls=ls)
    if not ok:
        ax.plot(steps.iloc[-1:], shown.iloc[-1:], ls="none", marker=NOT_OK_MARKER, ms=9,
                color=color, mec="black", mew=0.6)  # fmt: skip


def plot_loss(
    model: str, model_runs: pd.DataFrame, curves: pd.DataFrame, styles, baseline: str, path: Path
) -> Path | None:
    if curves.empty:  # may even lack columns when nothing was ever logged
        return None
    data = curves.merge(model_runs[["run_id", "seq_len", "optimizer", "status"]], on="run_id")
    data = data[np.isfinite(data["loss"].astype(float))]
    if data.empty:
        return None
    seqs = sorted(data["seq_len"].unique())
    labels = optimizer_order(data["optimizer"], baseline)
    handles = optimizer_handles(labels, styles)
    if (data["status"] != "ok").any():
        handles.append(Line2D([], [], color="gray", lw=1.6, marker=NOT_OK_MARKER, ms=9,
                              mec="black", mew=0.6, label="run not ok (ends at ✕)"))
    if len(labels) <= SIDE_LEGEND_MAX:
        width, height, ncols = 4.6 * len(seqs) + 2.0, 4.4, None
    else:
        width = max(8.0, 4.6 * len(seqs) + 0.6)
        ncols, extra = legend_columns([h.get_label() for h in handles], width)
        height = 4.4 + extra
    fig = new_figure(width, height)
    axes = fig.subplots(1, len(seqs), sharey=True, squeeze=False)[0]
    for ax, seq in zip(axes, seqs):
        at_seq = data[data["seq_len"] == seq]
        for label in optimizer_order(at_seq["optimizer"], baseline):
            curve = at_seq[at_seq["optimizer"] == label].sort_values("step")
            ok = curve["status"].iloc[0] == "ok"
            _plot_loss_curve(ax, curve["step"], curve["loss"].astype(float), styles[label], ok)
        ax.set_title(f"seq {seq}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("training loss (nats/token)")
    if (ylim := _loss_ylim(data)) is not None:
        axes[0].set_ylim(*ylim)
    optimizer_legend(fig, handles, ncols)
    fig.suptitle(f"{model}: training loss vs step")
    return save_figure(fig, path)


def _peak_parts_mib(group: pd.DataFrame) -> list[tuple[str, np.ndarray, str]]:
    """(name, MiB per row, colour) for each stacked segment; unattributed only if any."""
    parts = [(name, group[col].fillna(0).to_numpy() / MIB, c) for name, col, c in PEAK_PARTS]
    tracked = sum(mib for _, mib, _ in parts)
    peak = group["peak_allocated_bytes"].fillna(0).to_numpy(dtype=float) / MIB
    rest = np.clip(peak - tracked, 0, None)
    if (rest > 0.005 * tracked).any():  # ignore float noise on CPU, where parts == peak
        parts.append((UNATTRIBUTED, rest, UNATTRIBUTED_COLOR))
    return parts


def _plot_memory_axis(ax, group: pd.DataFrame) -> tuple[float, set[str]]:
    """Stacked horizontal bars for one seq_len; returns the largest total and segment names.
    A row without a measured peak (a run that is not ok, in side-by-side panels) shows its
    status where the bar would be."""
    y = np.arange(len(group))
    measured = np.isfinite(group["peak_allocated_bytes"].to_numpy(dtype=float))
    left = np.zeros(len(group))
    names = set()
    for name, mib, color in _peak_parts_mib(group):
        ax.barh(y, mib, left=left, height=0.62, color=color, edgecolor="white", lw=0.5)
        left += mib
        names.add(name)
    for yi, total, is_measured, status in zip(y, left, measured, group["status"]):
        text, color = (f"  {total:,.1f} MiB", "black") if is_measured else (f"  {status}", "gray")
        ax.text(total, yi, text, va="center", fontsize=9, color=color)
    ax.set_yticks(y, group["optimizer"])
    ax.set_ylim(len(group) - 0.5, -0.5)  # baseline on top, as in the tables
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    return float(left.max()), names


# the left) instead of stacked, which would make a figure metres tall.
STACKED_BARS_MAX = 16


def _aligned_groups(
    model_runs: pd.DataFrame, seqs: list, labels: list[str], metric: str
) -> list[pd.DataFrame]:
    """One frame per seq len with a row for every label, in `labels` order, so side-by-side
    panels can share their y axis. Rows without an ok value of `metric` keep their status
    (or 'not run') and get NaN metrics, so they draw as a labelled gap."""
    groups = []
    for seq in seqs:
        at_seq = model_runs[model_runs["seq_len"] == seq].set_index("optimizer")
        rows = []
        for label in labels:
            row = at_seq.loc[label].copy() if label in at_seq.index else pd.Series(
                {"status": "not run", **{c: np.nan for c in METRIC_COLUMNS}})
            if not (row["status"] in RESULT_STATUSES and is_number(row[metric])):
                row[METRIC_COLUMNS] = np.nan
            rows.append(row.rename(label))
        groups.append(pd.DataFrame(rows).rename_axis("optimizer").reset_index())
    return groups


def _side_by_side(seqs: list, groups: list[pd.DataFrame]) -> bool:
    return len(seqs) > 1 and sum(len(g) for g in groups) > STACKED_BARS_MAX


def _bar_panels(
    seqs: list, groups: list[pd.DataFrame], width: float, row_in: float
) -> tuple[Figure, list, bool]:
    """(figure, axes, side_by_side) for per-seq-len panels of horizontal bars: stacked (one
    above the other, each with its own rows) for a few bars, else side by side with a shared
    y axis, as tall as one panel. `groups` must be aligned when side by side."""
    if not _side_by_side(seqs, groups):
        if sum(len(g) for g in groups) > STACKED_BARS_MAX:  # one long panel: tighter rows
            row_in = min(row_in, 0.3)
        fig = new_figure(width, 1.3 + sum(row_in * len(g) + 0.8 for g in groups))
        ratios = [len(g) + 1 for g in groups]
        axes = fig.subplots(len(seqs), 1, sharex=True, squeeze=False, height_ratios=ratios)
        return fig, list(axes[:, 0]), False
    longest = max(len(str(label)) for g in groups for label in g["optimizer"])
    fig = new_figure(0.6 + 0.08 * longest + 3.7 * len(seqs), 1.6 + 0.3 * len(groups[0]))
    return fig, list(fig.subplots(1, len(seqs), sharey=True, squeeze=False)[0]), True


def plot_memory(model: str, model_runs: pd.DataFrame, baseline: str, path: Path) -> Path | None:
    ok = ok_with(model_runs, "peak_allocated_bytes")
    seqs = sorted(ok["seq_len"].unique())
    if not seqs:
        return None
    groups = [sorted_group(ok[ok["seq_len"] == seq], baseline) for seq in seqs]
    if _side_by_side(seqs, groups):
        labels = optimizer_order(ok["optimizer"], baseline)
        groups = _aligned_groups(model_runs, seqs, labels, "peak_allocated_bytes")
    fig, axes, side = _bar_panels(seqs, groups, 9.5, 0.45)
    peak, names = 0.0, set()
    for ax, seq, group in zip(axes, seqs, groups):
        ax_peak, ax_names = _plot_memory_axis(ax, group)
        peak, names = max(peak, ax_peak), names | ax_names
        ax.set_title(f"seq {seq}", fontsize=10)
        if side:  # each panel its own scale: activations grow with the sequence length
            ax.set_xlim(0, ax_peak * 1.35 or 1)
            ax.set_xlabel("memory at the peak moment (MiB)")
            thousands(ax.xaxis)
    if not side:
        axes[0].set_xlim(0, peak * 1.22 or 1)  # room for the total labels right of the bars
        axes[-1].set_xlabel("memory at the peak moment (MiB)")
        thousands(axes[-1].xaxis)
    segments = [(n, c) for n, _, c in PEAK_PARTS] + [(UNATTRIBUTED, UNATTRIBUTED_COLOR)]
    handles = [Patch(color=c, label=n) for n, c in segments if n in names]
    # Below the axes: at the top it would collide with the suptitle.
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    fig.suptitle(f"{model}: peak memory by component")
    return save_figure(fig, path)


def _compact(value: float) -> str:
    return f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.0f}"


THROUGHPUT_LABEL = "throughput (tokens/s, median over timed steps)"
THROUGHPUT_COLOR = "#4C72B0"


def plot_throughput(
    model: str, model_runs: pd.DataFrame, styles, baseline: str, path: Path
) -> Path | None:
    """Grouped vertical bars per seq len for a few optimizers; past GROUPED_BARS_MAX, where
    the bars get too thin and the colours too alike, horizontal bars named on the y axis."""
    ok = ok_with(model_runs, "tokens_per_s")
    if ok.empty:
        return None
    labels = optimizer_order(model_runs["optimizer"], baseline)
    colors = {styles[label]["color"] for label in labels}
    if len(labels) > GROUPED_BARS_MAX or len(colors) < len(labels):  # bars matched by colour
        return _plot_throughput_rows(model, model_runs, ok, baseline, path)
    seqs = sorted(model_runs["seq_len"].unique())
    # Every label gets a slot, so a failed run shows as a labelled gap rather than vanishing.
    width = 0.8 / len(labels)
    fig = new_figure(max(6.0, 0.55 * len(seqs) * len(labels) + 3.5), 4.6)
    ax = fig.subplots()
    for i, label in enumerate(labels):
        rows = model_runs[model_runs["optimizer"] == label]
        x = np.array([seqs.index(s) - 0.4 + (i + 0.5) * width for s in rows["seq_len"]])
        done = ((rows["status"] == "ok") & np.isfinite(rows["tokens_per_s"])).to_numpy()
        values = rows["tokens_per_s"][done]
        bars = ax.bar(x[done], values, width * 0.92, color=styles[label]["color"])
        ax.bar_label(bars, [_compact(v) for v in values], padding=2, fontsize=8)
        for xi, status in zip(x[~done], rows["status"][~done]):
            ax.text(xi, 0, f" {status}", rotation=90, ha="center", va="bottom", size=8, c="gray")
    ax.set_xticks(range(len(seqs)), [str(s) for s in seqs])
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel(THROUGHPUT_LABEL)
    thousands(ax.yaxis)
    ax.set_ylim(0, ok["tokens_per_s"].max() * 1.15)  # headroom for the value labels
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    # Explicit handles: an optimizer whose every run failed has no bar to take a colour from.
    handles = [Patch(color=styles[label]["color"], label=label) for label in labels]
    fig.legend(handles=handles, loc="outside right upper", title="optimizer")
    # An axes title, unlike a suptitle, can't collide with the legend beside the axes.
    ax.set_title(f"{model}: training throughput")
    return save_figure(fig, path)


def _plot_throughput_axis(ax, group: pd.DataFrame, base_tps: float) -> float:
    """Horizontal bars for one seq len, baseline on top; a run that is not ok keeps its row,
    with its status where the bar would be. Returns the largest value drawn (0 if none)."""
    y = np.arange(len(group))
    tps = group["tokens_per_s"].to_numpy(dtype=float)
    done = ((group["status"] == "ok").to_numpy()) & np.isfinite(tps)
    # One colour: with the names on the axis, per-optimizer colours (which repeat past ten)
    # would only suggest groups that aren't there. The baseline is the dashed reference line.
    ax.barh(y[done], tps[done], height=0.62, color=THROUGHPUT_COLOR)
    if is_number(base_tps):
        ax.axvline(base_tps, color="gray", ls="--", lw=1, zorder=0.5)
    for yi, value, is_done, status in zip(y, tps, done, group["status"]):
        if not is_done:
            ax.text(0, yi, f"  {status}", va="center", fontsize=9, color="gray")
            continue
        ratio = f" ({value / base_tps:.2f}×)" if is_number(base_tps) and base_tps > 0 else ""
        ax.text(value, yi, f"  {_compact(value)}{ratio}", va="center", fontsize=9)
    ax.set_yticks(y, group["optimizer"])
    ax.set_ylim(len(group) - 0.5, -0.5)  # baseline on top, as in the tables
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    return float(tps[done].max()) if done.any() else 0.0


def _plot_throughput_rows(
    model: str, model_runs: pd.DataFrame, ok: pd.DataFrame, baseline: str, path: Path
) -> Path:
    """One panel of horizontal bars per seq len, value and ratio to the baseline beside each
    bar: readable for any number of optimizers, like the memory figure."""
    seqs = sorted(model_runs["seq_len"].unique())
    groups = [sorted_group(model_runs[model_runs["seq_len"] == seq], baseline) for seq in seqs]
    if _side_by_side(seqs, groups):
        labels = optimizer_order(model_runs["optimizer"], baseline)
        groups = _aligned_groups(model_runs, seqs, labels, "tokens_per_s")
    fig, axes, side = _bar_panels(seqs, groups, 9.5, 0.28)
    for ax, seq, group in zip(axes, seqs, groups):
        base = group[(group["optimizer"] == baseline) & (group["status"] == "ok")]
        base_tps = float(base["tokens_per_s"].iloc[0]) if len(base) else np.nan
        top = _plot_throughput_axis(ax, group, base_tps)
        ax.set_title(f"seq {seq}", fontsize=10)
        if side:  # each panel its own scale: throughput can fall with the sequence length
            ax.set_xlim(0, top * 1.45 or 1)  # room for the labels right of the bars
            ax.set_xlabel("tokens/s")
            thousands(ax.xaxis)
    if side:
        fig.supxlabel(THROUGHPUT_LABEL, fontsize=10)
    else:
        axes[0].set_xlim(0, ok["tokens_per_s"].max() * 1.3)  # room for the labels
        axes[-1].set_xlabel(THROUGHPUT_LABEL)
        thousands(axes[-1].xaxis)
    has_base = (ok["optimizer"] == baseline).any()
    note = f" (dashed line and × = vs {baseline})" if has_base else ""
    fig.suptitle(f"{model}: training throughput{note}")
    return save_figure(fig, path)


def plot_peak_vs_seq(
    model: str, model_runs: pd.DataFrame, styles, baseline: str, path: Path
) -> Path | None:
    ok = ok_with(model_runs, "peak_allocated_bytes")
    seqs = sorted(ok["seq_len"].unique())
    if len(seqs) < 2:
        return None
    labels = optimizer_order(ok["optimizer"], baseline)
    if len(labels) <= SIDE_LEGEND_MAX:
        width, height, ncols = 7.5, 4.6, None
    else:
        width = 9.5
        ncols, extra = legend_columns(labels, width)
        height = 5.0 + extra
    fig = new_figure(width, height)
    ax = fig.subplots()
    for label in labels:
        rows = ok[ok["optimizer"] == label].sort_values("seq_len")
        mib = rows["peak_allocated_bytes"] / MIB
        ax.plot(rows["seq_len"], mib, **styles[label], label=label, ms=8, mfc="none", mew=1.6)
    ax.set_xscale("log", base=2)  # sequence lengths are usually powers of two
    ax.set_xticks(seqs, [str(s) for s in seqs])
    ax.minorticks_off()
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("peak memory (MiB)")
    thousands(ax.yaxis)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if ncols is None:
        fig.legend(loc="outside right upper", title="optimizer")
    else:
        optimizer_legend(fig, optimizer_handles(labels, styles, marker=True), ncols)
    ax.set_title(f"{model}: peak memory vs sequence length")
    return save_figure(fig, path)


def model_figures(
    model: str, model_runs: pd.DataFrame, curves: pd.DataFrame, styles, baseline: str, out_dir: Path
) -> list[tuple[str, Path]]:
    """(alt text, path) of each figure written for one model; figures without data are skipped."""
    name = safe_name(model)
    figures = [
        ("training loss", plot_loss(
            model, model_runs, curves, styles, baseline, out_dir / f"loss_{name}.png")),
        ("peak memory by component", plot_memory(
            model, model_runs, baseline, out_dir / f"memory_{name}.png")),
        ("throughput", plot_throughput(
            model, model_runs, styles, baseline, out_dir / f"throughput_{name}.png")),
        ("peak memory vs sequence length", plot_peak_vs_seq(
            model, model_runs, styles, baseline, out_dir / f"peak_vs_seq_{name}.png")),
    ]  # fmt: skip
    return [(f"{model}: {alt}", path) for alt, path in figures if path is not None]

"""The memory timeline of one training step, drawn: live bytes by part (params, grads,
optimizer state, activations, temporaries) over the moments of forward, backward, the work in
between (loss, clipping) and `optimizer.step()`, phase boundaries marked and the peak
annotated; one panel per optimizer, and an overlay of their totals. It shows at a glance where
each optimizer peaks: SCALE at the end of backward, AdamW inside its step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.patches import Patch

from optbench.metrics import MEMORY_PARTS, MIB
from optbench.render.figures import PART_COLORS, new_figure, save_figure

# optbench.engine.measure.TIMELINE_PHASES, by index (render does not import the engine).
PHASES = ("forward", "backward", "other", "optimizer step")
PHASE_NAMES = {"forward": "forward", "backward": "backward", "other": "loss / clip",
               "optimizer step": "step"}


def _arrays(timeline: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    points = np.asarray(timeline, dtype=float)
    return points[:, 0].astype(int), points[:, 1:] / MIB  # phases, parts in MiB


def _boundaries(phases: np.ndarray) -> list[tuple[int, str]]:
    """(first moment, name) of the step's main phases: forward from the start, backward from
    its first moment, what lies between backward and the optimizer (loss, clipping) and the
    optimizer step from theirs. Short excursions (an op between two modules) draw no line."""
    index = {name: i for i, name in enumerate(PHASES)}
    first = lambda name, start=0: next(  # noqa: E731
        (i for i in range(start, len(phases)) if phases[i] == index[name]), None)
    backward, step = first("backward"), first("optimizer step")
    out = [(0, "forward")]
    if backward is not None:
        out.append((backward, "backward"))
        last_backward = max(i for i in range(len(phases)) if phases[i] == index["backward"])
        between = first("other", last_backward)
        if between is not None and (step is None or between < step):
            out.append((between, "other"))
    if step is not None:
        out.append((step, "optimizer step"))
    return out


def _panel(ax, label: str, timeline: list[list[int]]) -> None:
    phases, parts = _arrays(timeline)
    x = np.arange(len(parts))
    ax.stackplot(x, parts.T, colors=[PART_COLORS[p] for p in MEMORY_PARTS], linewidth=0)
    top = parts.sum(axis=1).max()
    marks = _boundaries(phases)
    for j, (start, name) in enumerate(marks):
        ax.axvline(start, color="#555555", lw=0.6, ls=":")
        if j + 1 < len(marks) and marks[j + 1][0] - start < 0.04 * len(x):
            continue  # a short phase (clipping): its line, and the next phase's label
        ax.text(start, top * 1.02, PHASE_NAMES[name], fontsize=7, rotation=90, va="bottom",
                ha="right", color="#333333")
    peak = int(parts.sum(axis=1).argmax())
    ax.annotate(f"peak {top:,.1f} MiB\n({PHASE_NAMES[PHASES[phases[peak]]]})", (peak, top),
                xytext=(0.5, 0.93), textcoords="axes fraction", ha="center", fontsize=8,
                arrowprops={"arrowstyle": "->", "lw": 0.8})
    ax.set_ylim(0, top * 1.35)
    ax.set_title(label, fontsize=10)
    ax.set_xlabel("moment of the step (tracker updates)", fontsize=8)
    ax.set_ylabel("live MiB")


def plot_timelines(title: str, timelines: dict[str, list[list[int]]], path: Path) -> Path | None:
    """One stacked-area panel per optimizer, in a grid; None without timelines."""
    timelines = {k: v for k, v in timelines.items() if v}
    if not timelines:
        return None
    cols = min(3, len(timelines))
    rows = -(-len(timelines) // cols)
    fig = new_figure(4.6 * cols, 3.4 * rows + 0.6)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, (label, timeline) in zip(axes, timelines.items()):
        _panel(ax, label, timeline)
    for ax in axes[len(timelines):]:
        ax.set_visible(False)
    handles = [Patch(color=PART_COLORS[p], label=label) for p, label in MEMORY_PARTS.items()]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    fig.suptitle(f"{title}: live memory through one training step", fontsize=11)
    return save_figure(fig, path)


def plot_overlay(title: str, timelines: dict[str, list[list[int]]], styles: dict[str, dict],
                 path: Path) -> Path | None:
    """Each optimizer's total live memory over the step (x: its share of the step's moments,
    as steps differ in length), its peak marked; None under two timelines."""
    timelines = {k: v for k, v in timelines.items() if v}
    if len(timelines) < 2:
        return None
    fig = new_figure(7.5, 4.0)
    ax = fig.subplots()
    for label, timeline in timelines.items():
        _, parts = _arrays(timeline)
        total = parts.sum(axis=1)
        x = np.linspace(0, 1, len(total))
        style = styles.get(label, {})
        ax.plot(x, total, label=label, color=style.get("color"), ls=style.get("linestyle", "-"),
                lw=1.4)
        peak = int(total.argmax())
        ax.plot(x[peak], total[peak], marker="o", color=style.get("color"), ms=5)
    ax.set_xlabel("share of the step (forward → backward → step)")
    ax.set_ylabel("live MiB")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside right center", title="optimizer")
    fig.suptitle(f"{title}: total live memory through one step (● peak)", fontsize=11)
    return save_figure(fig, path)

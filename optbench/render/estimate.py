"""Tables, Markdown and plots for `optbench estimate` and `optbench fit`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.ticker import LogLocator, NullLocator, StrMethodFormatter
from rich.table import Table
from rich.text import Text

from optbench.engine.fit import FitResult
from optbench.engine.trace import Estimate, Workload
from optbench.metrics import DASH, GB, GIB, MEMORY_PARTS, MIB, PEAK_COLUMNS, split_peak
from optbench.render.figures import (PEAK_PARTS, new_figure, optimizer_styles, safe_name,
                                     save_figure)
from optbench.render.markdown import generated_line, rows_table
from optbench.render.timeline import plot_overlay, plot_timelines

REFERENCE = "adamw"
PAPER_FORMULA = (
    "paper convention (GB = 10^9 B) = 2 B × (parameters + optimizer-state values), "
    "integer state (8-bit moments) at its own width; no gradients, activations or temporaries"
)


def workload_title(w: Workload) -> str:
    accum = f" × {w.grad_accum} micro-batches" if w.grad_accum > 1 else ""
    autocast = " + bf16 autocast" if w.autocast else ""
    return f"{w.model} · seq {w.seq_len} · batch {w.batch_size}{accum} · {w.dtype}{autocast}"


def group_by_workload(estimates: list[Estimate]) -> dict[Workload, list[Estimate]]:
    groups: dict[Workload, list[Estimate]] = {}
    for est in estimates:
        groups.setdefault(est.workload, []).append(est)
    return groups


def _unit(estimates: list[Estimate]) -> tuple[str, int]:
    largest = max((e.peak_bytes for e in estimates if not e.error), default=0)
    return ("GiB", GIB) if largest >= GIB else ("MiB", MIB)


def estimate_rows(estimates: list[Estimate]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows of one workload's table; AdamW (if there) is the reference."""
    unit, scale = _unit(estimates)
    refs = {e.parallel: e for e in reversed(estimates) if e.optimizer == REFERENCE and not e.error}
    header = ["Optimizer", f"Peak ({unit})", f"State ({unit})",
              *[f"{label} ({unit})" for label in PEAK_COLUMNS.values()],
              f"Peak vs {REFERENCE}", "Paper conv. (GB)", "Note"]
    rows = []
    for e in estimates:
        if e.error:
            why = "not supported" if e.unsupported else "not traceable"
            rows.append([e.label, why, *[DASH] * (len(header) - 3), e.error])
            continue
        ref = refs.get(e.parallel)  # AdamW under the same strategy
        ratio = f"{e.peak_bytes / ref.peak_bytes:.2f}×" if ref else DASH
        rows.append([e.label, f"{e.peak_bytes / scale:,.2f}",
                     f"{e.optimizer_state_bytes / scale:,.2f}",
                     *[f"{v / scale:,.2f}" for v in split_peak(e.parts, _kept_at_peak(e)).values()],
                     ratio, _gb(e.paper_bytes), e.note])
    return header, rows


def _kept_at_peak(e: Estimate) -> int:
    """The state kept by the rank whose peak the row shows (the fullest), which the split of
    its peak into state held and step scratch needs; the row's *State* is the largest kept."""
    if not e.ranks:
        return e.optimizer_state_bytes
    return max(e.ranks, key=lambda r: r.peak_bytes).optimizer_state_bytes


def rank_rows(estimates: list[Estimate]) -> tuple[list[str], list[list[str]]]:
    """Each rank of the sharded estimates: its peak, its state and the peak's parts; ranks in
    a row that hold the same bytes share one line ('0-7')."""
    ranked = [e for e in estimates if e.ranks]
    unit, scale = _unit([r for e in ranked for r in e.ranks])
    header = ["Optimizer", "Rank", f"Peak ({unit})", f"State ({unit})",
              *[f"{label} ({unit})" for label in PEAK_COLUMNS.values()]]
    rows = []
    for e in ranked:
        for first, last, r in _alike_ranks(e.ranks):
            rows.append([e.label, str(first) if first == last else f"{first}-{last}",
                         f"{r.peak_bytes / scale:,.2f}", f"{r.optimizer_state_bytes / scale:,.2f}",
                         *[f"{v / scale:,.2f}"
                           for v in split_peak(r.parts, r.optimizer_state_bytes).values()]])
    return header, rows


def _alike_ranks(ranks: list[Estimate]) -> list[tuple[int, int, Estimate]]:
    """(first rank, last rank, its estimate) for each run of ranks holding the same bytes."""
    runs: list[tuple[int, int, Estimate]] = []
    for i, r in enumerate(ranks):
        if runs and (runs[-1][2].parts, runs[-1][2].optimizer_state_bytes) == (
                r.parts, r.optimizer_state_bytes):
            runs[-1] = (runs[-1][0], i, runs[-1][2])
        else:
            runs.append((i, i, r))
    return runs


def _gb(nbytes: int) -> str:
    value = nbytes / GB
    return f"{value:,.2f}" if value >= 1 else f"{value:.3g}"


def rich_estimate_tables(estimates: list[Estimate]) -> list[Table]:
    tables = []
    for workload, group in group_by_workload(estimates).items():
        header, rows = estimate_rows(group)
        table = Table(title=workload_title(workload),
                      caption=f"traced on fake tensors · attention: {_attention(group)}")
        for col in header:  # the optimizer's label whole: it names the row
            table.add_column(col, justify="left" if col in ("Optimizer", "Note") else "right",
                             overflow="fold", no_wrap=col == "Optimizer")
        for row in rows:
            table.add_row(*(Text(str(c)) for c in row))  # stored text, not markup
        tables.append(table)
        if any(e.ranks for e in group):
            tables.append(_rich_table(f"{workload_title(workload)} · per rank", *rank_rows(group)))
    return tables


def _rich_table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for col in header:
        table.add_column(col, justify="left" if col == "Optimizer" else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(Text(str(c)) for c in row))  # stored text, not markup
    return table


def _attention(group: list[Estimate]) -> str:
    kinds = sorted({e.attention for e in group if e.attention})
    return "; ".join(kinds) or DASH


ASSUMPTIONS = [
    "- **Traced**: one training step (forward, backward, clip, `optimizer.step()`, zero grad)"
    " followed on fake tensors by the same tensor tracker that measures CPU runs; the peak is"
    " the larger of steps 1 and 2 (optimizer state is created lazily in step 1).",
    "- **Assumed**: CPU kernels' memory behaviour. SDPA attention uses the flash kernel (output"
    " and log-sum-exp kept, no seq×seq scores), as CUDA's flash kernel does; autocast follows"
    " CPU autocast's cast lists. No allocator caching or fragmentation: compare with CUDA's"
    " `max_memory_allocated`, not `reserved` or what nvidia-smi shows.",
    "- **Columns**: *State* is what the optimizer keeps between steps (what a paper's memory"
    " table counts); the parts are the tracker's split at the peak moment: *State held* is as"
    " much of that state as was alive then, *Step scratch* the transient tensors of"
    " `optimizer.step()` when the peak falls inside the step, and *Temps* are activation"
    " gradients and whatever else a step allocates outside forward, backward and the"
    " optimizer step.",
    f"- **{PAPER_FORMULA[0].upper()}{PAPER_FORMULA[1:]}.**",
]
SHARDED = (
    "- **Sharded** (`optimizer · fsdp2x8`): each rank traced on its own in torch's fake process"
    " group (collectives that move no data), under the strategy's own wrapper; the row is the"
    " fullest rank, its *State* the largest any rank keeps, *Per rank* lists every rank. A"
    " paper-convention figure counts the rank's own params and state. Batch size is per rank."
    " DDP and ZeRO-1 keep gradient buckets (a flat copy of the gradients) from step 2 on: the"
    " tracker files them under *Activations*, as in a real CPU run; the timeline is the"
    " fullest rank's."
)


def write_estimate_report(estimates: list[Estimate], out_dir: Path, name: str,
                          command: str, timelines: dict[str, list] | None = None) -> list[Path]:
    """reports/estimate-<name>.md with a table and a stacked-bar plot per workload, and with
    `timelines` (estimate label -> one step's memory timeline) the timeline figures."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"estimate-{safe_name(name)}"
    sharded = [SHARDED] if any(e.ranks for e in estimates) else []
    lines = [f"# Memory estimate: {name}", "", generated_line(command), "", *ASSUMPTIONS,
             *sharded, ""]
    written = []
    for i, (workload, group) in enumerate(group_by_workload(estimates).items()):
        header, rows = estimate_rows(group)
        lines += [f"## {workload_title(workload)}", "", f"Attention: {_attention(group)}.", "",
                  rows_table(header, rows), ""]
        if any(e.ranks for e in group):
            lines += ["Per rank:", "", rows_table(*rank_rows(group)), ""]
        png = out_dir / f"{stem}-{i + 1}.png"
        if _plot_breakdown(group, workload, png):
            lines += [f"![peak memory breakdown]({png.name})", ""]
            written.append(png)
        mine = {e.label: (timelines or {}).get(e.label) for e in group}
        title = workload_title(workload)
        for alt, path in ((f"{title}: memory through one step", plot_timelines(
                              title, mine, out_dir / f"{stem}-{i + 1}-timeline.png")),
                          (f"{title}: total memory through one step", plot_overlay(
                              title, mine, optimizer_styles(list(mine)),
                              out_dir / f"{stem}-{i + 1}-timeline-overlay.png"))):
            if path is not None:
                lines += [f"![{alt}]({path.name})", ""]
                written.append(path)
    md = out_dir / f"{stem}.md"
    md.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8",
                  errors="backslashreplace")  # a path of undecodable bytes
    return [md, *written]


def _plot_breakdown(group: list[Estimate], workload: Workload, path: Path) -> bool:
    """Horizontal stacked bars: the peak of each optimizer split into its five parts."""
    ok = [e for e in group if not e.error]
    if not ok:
        return False
    unit, scale = _unit(ok)
    fig = new_figure(10.0, 1.8 + 0.42 * len(ok))
    ax = fig.add_subplot()
    y = np.arange(len(ok))[::-1]
    left = np.zeros(len(ok))
    for (name, _, color), part in zip(PEAK_PARTS, MEMORY_PARTS):
        widths = np.array([e.parts[part] / scale for e in ok])
        ax.barh(y, widths, left=left, color=color, label=name, height=0.7)
        left += widths
    for yi, total in zip(y, left):
        ax.text(total, yi, f" {total:,.2f}", va="center", fontsize=8)
    ax.set_yticks(y, [e.label for e in ok])
    ax.set_xlim(0, left.max() * 1.15)
    ax.set_xlabel(f"estimated peak ({unit})")
    per_rank = " · the fullest rank" if any(e.ranks for e in ok) else ""
    ax.set_title(f"Estimated peak memory · {workload_title(workload)}{per_rank}", fontsize=10)
    fig.legend(loc="outside right center", fontsize=8, title="part", title_fontsize=8)
    save_figure(fig, path)
    return True


def estimates_json(estimates: list[Estimate]) -> str:
    out = []
    for e in estimates:
        out.append({
            "optimizer": e.optimizer, "label": e.label, "hparams": e.hparams,
            "workload": vars(e.workload), "error": e.error, "note": e.note or None,
            "attention": e.attention or None,
            "peak_bytes": None if e.error else e.peak_bytes,
            "parts_bytes": None if e.error else e.parts,
            "optimizer_state_bytes": None if e.error else e.optimizer_state_bytes,
            "paper_convention_bytes": None if e.error else e.paper_bytes,
            "parallel": e.parallel,
            "ranks": [{"rank": i, "peak_bytes": r.peak_bytes, "parts_bytes": r.parts,
                       "optimizer_state_bytes": r.optimizer_state_bytes}
                      for i, r in enumerate(e.ranks)],
        })
    return json.dumps(out, indent=2, default=str)


# ------------------------------------------------------------------------------- fit


def fit_rows(results: list[FitResult]) -> tuple[list[str], list[list[str]]]:
    axis = results[0].axis.replace("_", " ")
    unit, scale = ("GiB", GIB) if results[0].budget_bytes >= GIB else ("MiB", MIB)
    header = ["Optimizer", f"Largest {axis}", f"Peak there ({unit})", f"Headroom ({unit})",
              f"Next {axis} needs ({unit})", "Note"]
    rows = []
    for r in results:
        if r.error:
            why = "not supported" if r.unsupported else "not traceable"
            rows.append([r.label, why, DASH, DASH, DASH, r.error])
            continue
        above = {n: p for n, p in r.probes.items() if n > r.largest}
        nxt = above[min(above)] / scale if above else None
        if r.largest == 0:
            note = f"does not fit even at {axis} 1"
        else:
            note = "; ".join(filter(None, ["search limit reached" if r.limit_reached else "",
                                           r.note]))
        peak = r.probes.get(r.largest)
        rows.append([r.label, str(r.largest),
                     DASH if peak is None else f"{peak / scale:,.2f}",
                     DASH if peak is None else _headroom(r.budget_bytes - peak, scale),
                     DASH if nxt is None else f"{nxt:,.2f} (at {min(above)})", note])
    return header, rows


def _headroom(nbytes: int, scale: int) -> str:
    """Two decimals, or MiB when that would round a real headroom to 0.00 GiB."""
    if scale == GIB and 0 < nbytes < 0.005 * GIB:
        return f"{nbytes / MIB:,.1f} MiB"
    return f"{nbytes / scale:,.2f}"


def rich_fit_table(results: list[FitResult], title: str) -> Table:
    header, rows = fit_rows(results)
    table = Table(title=title, caption="estimated peaks, traced on fake tensors · "
                                       "MiB = 2^20 B, GiB = 2^30 B")
    for col in header:
        table.add_column(col, justify="left" if col in ("Optimizer", "Note") else "right")
    for row in rows:
        table.add_row(*(Text(str(c)) for c in row))  # stored text, not markup
    return table


def write_fit_report(results: list[FitResult], out_dir: Path, name: str, title: str,
                     command: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"fit-{safe_name(name)}"
    header, rows = fit_rows(results)
    lines = [f"# Fit: {title}", "", generated_line(command), "", *ASSUMPTIONS[:2], "",
             rows_table(header, rows), ""]
    png = out_dir / f"{stem}.png"
    written = []
    if _plot_fit(results, png):
        lines += [f"![peak memory vs {results[0].axis}]({png.name})", ""]
        written.append(png)
    md = out_dir / f"{stem}.md"
    md.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8",
                  errors="backslashreplace")  # a path of undecodable bytes
    return [md, *written]


def _plot_fit(results: list[FitResult], path: Path) -> bool:
    """Estimated peak against the searched axis, one line per optimizer, and the budget."""
    traced = [r for r in results if r.probes]
    if not traced:
        return False
    styles = optimizer_styles([r.label for r in traced])
    unit, scale = ("GiB", GIB) if traced[0].budget_bytes >= GIB else ("MiB", MIB)
    fig = new_figure(8.0, 4.8)
    ax = fig.add_subplot()
    for r in traced:
        xs = sorted(r.probes)
        style = styles[r.label]
        ax.plot(xs, [r.probes[x] / scale for x in xs], color=style["color"], ls=style["linestyle"],
                marker=style["marker"], mfc="none", label=f"{r.label} (fits up to {r.largest})")
    budget = traced[0].budget_bytes / scale
    ax.axhline(budget, color="black", lw=1.2, ls="--", label=f"budget {budget:,.1f} {unit}")
    ax.set_xscale("log", base=2)
    ax.set_xlim(left=0.9)
    ax.xaxis.set_major_locator(LogLocator(base=2))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.set_xlabel(traced[0].axis.replace("_", " ") + " (log scale; markers are traced points)")
    ax.set_ylabel(f"estimated peak ({unit})")
    ax.set_ylim(0, max(budget, *(max(r.probes.values()) / scale for r in traced)) * 1.08)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    return True


def fit_json(results: list[FitResult]) -> str:
    return json.dumps([{
        "optimizer": r.label, "axis": r.axis, "budget_bytes": r.budget_bytes,
        "largest": None if r.error else r.largest, "limit_reached": r.limit_reached,
        "peak_bytes_at_largest": r.probes.get(r.largest), "error": r.error,
        "probes": {str(k): v for k, v in sorted(r.probes.items())},
    } for r in results], indent=2)

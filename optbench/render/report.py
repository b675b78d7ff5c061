"""The suite report: Markdown with PNG figures, and Rich tables for the terminal.

Everything here is a pure function of two DataFrames read from the results store (`runs`: one
row per cell, optbench.results.store.runs_frame; `curves`: per-step loss in long format), so a
report can be re-rendered at any time without training anything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table
from rich.text import Text

from optbench.errors import informative_line
from optbench.metrics import (DASH, MEMORY_PARTS, PEAK_COLUMNS, RESULT_STATUSES, STATUSES,
                              format_mib, format_ratio, format_tflops, is_number, part_metric,
                              rank_metric, split_peak, split_rank_metric)
from optbench.optimizers.sharding import known_parity
from optbench.render import timeline as render_timeline
from optbench.render import tuning as render_tuning
from optbench.render.figures import model_figures, optimizer_styles, safe_name
from optbench.render.frames import (SERIES_SEPARATOR, group_title, grouped, model_order,
                                    prepare_runs, resolve_baseline, series_baseline, setup_label)
from optbench.render.markdown import LEFT_ALIGNED, fence, generated_line, markdown_table

__all__ = ["rich_tables", "summary_frame", "write_report"]

ERROR_CHARS = 60



def _fmt(value, spec: str) -> str:
    return format(float(value), spec) if is_number(value) else DASH


def _status_text(row: pd.Series) -> str:
    line = informative_line(row["error"])
    if row["status"] in RESULT_STATUSES or not line:
        return str(row["status"])
    short = line if len(line) <= ERROR_CHARS else line[: ERROR_CHARS - 1].rstrip() + "…"
    return f"{row['status']}: {short}"


PART_COLUMNS = tuple(f"{label} (MiB)" for label in PEAK_COLUMNS.values())
# The terminal gets the headline columns; the breakdown lives in summary.md.
TFLOPS_COLUMN, MFU_COLUMN = "TFLOP/s", "MFU (%)"
BREAKDOWN_COLUMNS = (*PART_COLUMNS, "fwd+bwd / opt (ms)", "Tokens/step", TFLOPS_COLUMN)


def _columns(baseline: str) -> list[str]:
    return [
        "Optimizer", "Status", "State (MiB)", "Peak (MiB)", *PART_COLUMNS,
        f"Peak vs {baseline}", f"State vs {baseline}", "Tokens/step",
        "Tokens/s", TFLOPS_COLUMN, MFU_COLUMN, "Step (ms)", "fwd+bwd / opt (ms)",
        "Final train loss", "Eval ppl",
    ]  # fmt: skip


def _without_empty_mfu(frame: pd.DataFrame) -> pd.DataFrame:
    """MFU exists on GPUs of known peak only: on a CPU-only report the column is left out."""
    if MFU_COLUMN in frame.columns and (frame[MFU_COLUMN] == DASH).all():
        return frame.drop(columns=MFU_COLUMN)
    return frame


def _format_row(row: pd.Series, base: pd.Series | None, baseline: str) -> list[str]:
    """One table row. Failed rows keep only name and status: their metrics are partial at best."""
    if row["status"] not in RESULT_STATUSES:
        return [str(row["optimizer"]), _status_text(row)] + [DASH] * (len(_columns(baseline)) - 2)
    ok_base = base is not None and base["status"] in RESULT_STATUSES
    peak_base = base["peak_allocated_bytes"] if ok_base else np.nan
    state_base = base["optimizer_state_bytes"] if ok_base else np.nan
    split = DASH
    if is_number(row["fwd_bwd_ms"]) or is_number(row["optimizer_step_ms"]):
        split = f"{_fmt(row['fwd_bwd_ms'], ',.1f')} / {_fmt(row['optimizer_step_ms'], ',.1f')}"
    return [
        str(row["optimizer"]),
        str(row["status"]),
        format_mib(row["optimizer_state_bytes"]),
        format_mib(row["peak_allocated_bytes"]),
        *(format_mib(v) for v in _split_peak(row, lambda metric: row[metric])),
        format_ratio(row["peak_allocated_bytes"], peak_base),
        format_ratio(row["optimizer_state_bytes"], state_base),
        _fmt(row["tokens_per_step"], ",.0f"),
        _fmt(row["tokens_per_s"], ",.0f"),
        format_tflops(row["model_tflops_per_s"]),
        _fmt(row["mfu_percent"], ".1f"),
        _fmt(row["step_ms"], ",.1f"),
        split,
        _fmt(row["final_train_loss"], ".3f"),
        _fmt(row["eval_ppl"], ",.1f"),
    ]


def _group_frame(group: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Formatted rows of one (model, seq_len) group, baseline first. A sharded row's ratios are
    against the baseline under the same strategy (per rank against per rank) when it ran."""
    by_label = {row["optimizer"]: row for _, row in group.iterrows()}
    rows = []
    for _, row in group.iterrows():
        base = by_label.get(series_baseline(baseline, row["series_suffix"]), by_label.get(baseline))
        rows.append(_format_row(row, base, baseline))
    return pd.DataFrame(rows, columns=_columns(baseline))


def summary_frame(runs: pd.DataFrame, baseline: str = "adamw") -> pd.DataFrame:
    """Human-facing summary, one formatted row (strings) per (model, seq_len, optimizer).

    Sorted by model size, then seq_len, then optimizer with `baseline` first. Memory is in
    MiB (2**20 bytes); ratios are against the `baseline` row of the same model and seq_len.
    """
    baseline = resolve_baseline(runs, baseline)
    columns = ["Model", "Seq len", *_columns(baseline)]
    frames = []
    for model, seq_len, group in grouped(prepare_runs(runs), baseline):
        frame = _group_frame(group, baseline)
        frame.insert(0, "Seq len", seq_len)
        frame.insert(0, "Model", model)
        frames.append(frame)
    if not frames:
        return _without_empty_mfu(pd.DataFrame(columns=columns))
    return _without_empty_mfu(pd.concat(frames, ignore_index=True)[columns])


def rich_tables(runs: pd.DataFrame, baseline: str = "adamw") -> list[Table]:
    """The summary for the terminal: one table per (model, seq_len)."""
    tables = []
    baseline = resolve_baseline(runs, baseline)
    for model, seq_len, group in grouped(prepare_runs(runs), baseline):
        full = _group_frame(group, baseline)
        # The terminal gets the headline columns; the breakdown lives in summary.md.
        frame = _without_empty_mfu(full[[c for c in full.columns if c not in BREAKDOWN_COLUMNS]])
        table = Table(title=group_title(model, seq_len, group),
                      caption="MiB = 2^20 bytes · breakdown in summary.md")
        for col in frame.columns:
            table.add_column(col, justify="left" if col in LEFT_ALIGNED else "right")
        for cells in frame.itertuples(index=False):
            status = Text(cells[1], style="green" if cells[1] in RESULT_STATUSES else "red")
            # Cells hold stored text (labels, the start of an error): never Rich markup.
            table.add_row(Text(cells[0]), status, *(Text(c) for c in cells[2:]))
        tables.append(table)
    return tables


# ----------------------------------------------------------------------------- per rank

PER_RANK_COLUMNS = ["Optimizer", "Rank", "State (MiB)", "Peak (MiB)", *PART_COLUMNS,
                    "Step (ms)", "fwd+bwd / opt (ms)"]


def _split_peak(row: pd.Series, value) -> list[float]:
    """The peak's parts as the tables show them (metrics.PEAK_COLUMNS), `value(metric)` reading
    the row's (or one rank's) numbers."""
    parts = {part: value(part_metric(part)) for part in MEMORY_PARTS}
    return list(split_peak(parts, value("optimizer_state_bytes")).values())


def _rank_value(row: pd.Series, metric: str, rank: int):
    return row.get(rank_metric(metric, rank), np.nan)


def per_rank_frame(group: pd.DataFrame) -> pd.DataFrame:
    """One formatted row per rank of every sharded run with results in `group`."""
    rows = []
    for _, row in group[(group["parallel"] != "none")
                        & group["status"].isin(RESULT_STATUSES)].iterrows():
        ranks = sorted({split_rank_metric(c)[1] for c in row.index
                        if split_rank_metric(c)[1] is not None and is_number(row[c])})
        for rank in ranks:
            value = lambda metric: _rank_value(row, metric, rank)  # noqa: E731
            rows.append([
                str(row["optimizer"]), str(rank),
                format_mib(value("optimizer_state_bytes")),
                format_mib(value("peak_allocated_bytes")),
                *(format_mib(v) for v in _split_peak(row, value)),
                _fmt(value("step_ms"), ",.1f"),
                f"{_fmt(value('fwd_bwd_ms'), ',.1f')} / {_fmt(value('optimizer_step_ms'), ',.1f')}",
            ])
    return pd.DataFrame(rows, columns=PER_RANK_COLUMNS)


def parity_lines(group: pd.DataFrame) -> list[str]:
    """For each sharded row whose optimizer the parity harness found not equivalent to one
    process under that strategy, what it found: such a row measures another optimizer."""
    lines = []
    seen = set()
    ran = group[(group["parallel"] != "none") & group["status"].isin(RESULT_STATUSES)]
    for _, row in ran.iterrows():
        strategy = str(row["parallel"]).rpartition("x")[0]
        key = (row["optimizer_name"], strategy)
        verdict = known_parity(row["optimizer_name"]).get(strategy, "")
        if key in seen or not verdict.startswith("differs"):
            continue
        seen.add(key)
        lines.append(f"- **{row['optimizer_name']} under {strategy}**: {verdict}")
    if not lines:
        return []
    return ["**Not the same optimizer when sharded** (the parity harness, docs/parallel.md):", "",
            *lines, ""]


# ----------------------------------------------------------------------------- markdown


def _legend_lines(baseline: str, sharded: bool) -> list[str]:
    lines = [
        "**Columns** (MiB = 2^20 bytes; a `—` means not measured or not applicable):",
        "",
        f"- **Status** — {', '.join(STATUSES)}; a row without results shows"
        " the start of its error (full text under Failures) and no metrics.",
        "- **State (MiB)** — bytes of optimizer state, measured after the first optimizer step"
        " (state is allocated lazily).",
        "- **Peak (MiB)** — peak memory of training: on CUDA `torch.cuda.max_memory_allocated`"
        " over the whole run; on CPU the tensor tracker's peak of live tensors over steps 1 and 2"
        " (state allocation and first-time work, then a step with the state held).",
        f"- **{' / '.join(PEAK_COLUMNS.values())} (MiB)** — what the live tensors were at the"
        " peak moment. *State held* is as much of the optimizer's kept state (the State column:"
        " what a paper's memory table counts) as was alive then; *Step scratch* is what"
        " `optimizer.step()` had allocated besides, when the peak falls inside it; Temps are"
        " activation gradients and whatever a step allocates outside forward, backward and the"
        " optimizer step. They sum to Peak on CPU; on CUDA the allocator's Peak can be a little"
        " larger.",
        f"- **Peak vs {baseline}** — this row's Peak divided by the {baseline} row's Peak at the"
        f" same model and sequence length, under the same parallel strategy when {baseline} ran"
        f" under it (`—` when {baseline} is missing or not ok).",
        f"- **State vs {baseline}** — the same ratio for optimizer state.",
        "- **Tokens/step** — tokens one optimizer step trains on, over all ranks:"
        " ranks × batch_size × grad_accum × seq len.",
        "- **Tokens/s** — training throughput over all ranks, median over the timed steps after"
        " warm-up.",
        "- **TFLOP/s** — model FLOPs per second over all ranks: Tokens/s × FLOPs per token,"
        " 6·N (N: the weights of every matmul, lm_head included, the embedding not) + 12·L·h·T"
        " for attention (L layers, width h, sequence length T), as PaLM counts them"
        " (docs/metrics.md).",
        "- **MFU (%)** — TFLOP/s over the dense peak of the GPUs the cell ran on (bf16 or fp32,"
        " by the dtype matmuls run in: bf16 under autocast) × ranks; only on GPUs in optbench's peak table, so never on CPU"
        " (the column is then left out).",
        "- **Step (ms)** — wall time of one training step, median over the timed steps;"
        " **fwd+bwd / opt (ms)** splits it into forward+backward (with DDP's gradient all-reduce)"
        " and `optimizer.step()` (with any collective the optimizer issues).",
        "- **Final train loss** — training loss (nats/token), mean over the last 5 steps.",
        "- **Eval ppl** — perplexity, exp(eval loss), on held-out batches.",
    ]
    if sharded:  # said only where such rows are
        lines.append(
            "- **Rows named `optimizer · strategyxN`** ran N ranks under torchrun (ddp, fsdp2 or"
            " zero1; `batch_size` is per rank, each rank draws its own batches), or, with status"
            " `estimated`, had each of N ranks traced on fake tensors. Their memory and"
            " time columns are the max over ranks; each rank's values are under *Per rank*.")
    return lines


def _failure_lines(runs: pd.DataFrame, baseline: str) -> list[str]:
    lines = []
    for model, seq_len, group in grouped(runs, baseline):
        for _, row in group[~group["status"].isin(RESULT_STATUSES)].iterrows():
            error = row["error"].strip() if isinstance(row["error"], str) else ""
            text = error or "(no error text recorded)"
            rule = fence(text)
            where = f"{model} · seq {seq_len} · {row['optimizer']}"
            lines += [
                f"- **{where}** — {row['status']} (run {row['run_id']}, cell `{row['cell_id']}`)",
                "",
                f"  {rule}text",
                *[f"  {line}" for line in text.splitlines()],
                f"  {rule}",
                "",
            ]
    return lines


def _timeline_figures(model: str, seq_len: int, runs: pd.DataFrame, timelines: dict[int, list],
                      styles: dict, out_dir: Path) -> list[tuple[str, Path]]:
    """The memory timeline of one step per optimizer of one (model, seq len), and their overlay:
    one run per series (seeds share their memory), those that stored a timeline."""
    group = runs[(runs["model"] == model) & (runs["seq_len"] == seq_len)]
    chosen: dict[str, list] = {}
    for _, row in group.iterrows():
        label = str(row["optimizer"]).split(SERIES_SEPARATOR + "seed")[0]
        if label not in chosen and timelines.get(int(row["run_id"])):
            chosen[label] = timelines[int(row["run_id"])]
    name = f"{safe_name(model)}_seq{seq_len}"
    out = [(f"{model} · seq {seq_len}: memory through one step, per optimizer",
            render_timeline.plot_timelines(f"{model} · seq {seq_len}", chosen,
                                           out_dir / f"timeline_{name}.png")),
           (f"{model} · seq {seq_len}: total memory through one step",
            render_timeline.plot_overlay(f"{model} · seq {seq_len}", chosen, styles,
                                         out_dir / f"timeline_overlay_{name}.png"))]
    return [(alt, path) for alt, path in out if path is not None]


def _frame_or_empty(frame: pd.DataFrame | None) -> pd.DataFrame:
    return pd.DataFrame() if frame is None else frame


def _at(frame: pd.DataFrame | None, model: str, seq_len: int | None = None) -> pd.DataFrame:
    """A results.tuning frame's rows at one model (and seq len); empty when there is none."""
    if frame is None or frame.empty:
        return pd.DataFrame()
    keep = frame["model"] == model
    if seq_len is not None:
        keep &= frame["seq_len"] == seq_len
    return frame[keep]


def _shared_machine_lines(runs: pd.DataFrame) -> list[str]:
    """Said when results were measured while other cells ran beside them (run --jobs)."""
    shared = runs[runs["jobs"].fillna(1) > 1] if "jobs" in runs else runs.iloc[0:0]
    if shared.empty:
        return []
    jobs = ", ".join(str(int(j)) for j in sorted(shared["jobs"].unique()))
    return [f"**{len(shared)} of {len(runs)} results shared the machine** with other cells"
            f" (`run --jobs {jobs}`: each cell got its share of the CPU cores, or its own GPU):"
            " their times and throughput are not what a cell alone would measure; memory and loss"
            " are (up to float rounding with fewer threads). Rerun them with `--rerun --jobs 1`"
            " for clean timings.", ""]


def _provenance_line(runs: pd.DataFrame, command: str, store: str) -> str:
    n_ok = int((runs["status"] == "ok").sum())
    n_est = int((runs["status"] == "estimated").sum())
    counts = f"{n_ok} ok" + (f", {n_est} estimated" if n_est else "")
    what = f"{len(runs)} results ({counts})" + (f" in `{store}`" if store else "")
    return generated_line(command, what)


def _model_heading(model: str, model_runs: pd.DataFrame) -> str:
    n_params = model_runs["n_params"].max()
    return f"## {model} ({n_params / 1e6:.1f}M parameters)" if is_number(n_params) else f"## {model}"


# ----------------------------------------------------------------------------- report


def write_report(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    out_dir: Path,
    title: str,
    description: str = "",
    baseline: str = "adamw",
    command: str = "",
    store: str = "",
    tuning: pd.DataFrame | None = None,
    sensitivity: pd.DataFrame | None = None,
    timelines: dict[int, list] | None = None,
) -> list[Path]:
    """Write out_dir/summary.md and its PNG figures; return the paths written (summary first).
    `command` (the real command line) and `store` (the results database) go in its provenance;
    `tuning` and `sensitivity` (results.tuning's frames) add the tuning views where a search
    ran."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    baseline = resolve_baseline(runs, baseline)
    runs = prepare_runs(runs)
    shown_runs = render_tuning.best_trials_only(runs, _frame_or_empty(tuning))
    styles = optimizer_styles(shown_runs["optimizer"])  # the figures' series
    lines = [f"# {title}", ""]
    if description.strip():
        lines += [description.strip(), ""]
    sharded = bool((runs["parallel"] != "none").any())
    lines += [_provenance_line(runs, command, store), "", *_shared_machine_lines(runs),
              *_legend_lines(baseline, sharded), ""]
    if runs.empty:
        lines += ["No results to report.", ""]
    written: list[Path] = []
    for model in model_order(runs):
        model_runs = runs[runs["model"] == model]
        lines += [_model_heading(model, model_runs), ""]
        for _, seq_len, group in grouped(model_runs, baseline):
            setup = setup_label(group)
            lines += [f"### seq {seq_len}" + (f" · {setup}" if setup else ""), ""]
            lines += [markdown_table(_without_empty_mfu(_group_frame(group, baseline))), ""]
            ranks = per_rank_frame(group)
            if len(ranks):
                lines += ["**Per rank** (Peak and parts: each rank's tracked peak on CPU, its"
                          " allocator peak on CUDA; State: the rank's own shards):", "",
                          markdown_table(ranks), ""]
            lines += parity_lines(group)
            lines += render_tuning.markdown_lines(_at(tuning, model, seq_len))
            for alt, path in _timeline_figures(model, seq_len, shown_runs, timelines or {},
                                               styles, out_dir):
                lines += [f"![{alt}]({path.name})", ""]
                written.append(path)
        shown = shown_runs[shown_runs["model"] == model]
        if len(shown) < len(model_runs):
            lines += [f"_Figures: each searched optimizer's best trial only ({len(shown)} of"
                      f" {len(model_runs)} runs); every trial is in the tables above and in the"
                      " learning-rate figure._", ""]
        figures = model_figures(model, shown, curves, styles, baseline, out_dir)
        figures += render_tuning.sensitivity_figures(_at(sensitivity, model), out_dir)
        for alt, path in figures:
            lines += [f"![{alt}]({path.name})", ""]
            written.append(path)
    if (~runs["status"].isin(RESULT_STATUSES)).any():
        lines += ["## Failures", "", *_failure_lines(runs, baseline)]
    summary = out_dir / "summary.md"
    summary.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8",
                       errors="backslashreplace")  # a path of undecodable bytes
    return [summary, *written]

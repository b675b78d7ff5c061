"""Runs frames (one row per run, metrics as columns) put in report order: models by size, seq
lens ascending, the baseline first. Shared by every renderer of stored runs."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from optbench.metrics import PART_METRICS, RESULT_STATUSES

METRIC_COLUMNS = [
    "n_params", "param_bytes", "optimizer_state_bytes", "peak_allocated_bytes", *PART_METRICS,
    "peak_reserved_bytes", "nvml_used_bytes", "tokens_per_s", "tokens_per_s_per_device",
    "tokens_per_step", "model_flops_per_token", "model_tflops_per_s", "mfu_percent",
    "step_ms", "fwd_bwd_ms", "optimizer_step_ms", "compile_s", "final_train_loss", "eval_loss",
    "eval_ppl",
    "steps",
]  # fmt: skip


SERIES_SEPARATOR = " · "


def prepare_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Every metric column present (NaN where not measured), rows oldest first. Which run stands
    for a cell is the store's decision (optbench.results.store.latest), made before rendering.

    A sharded run is its own series: its optimizer label becomes 'scale · fsdp2x2', so tables,
    legends and colours tell it from the one-process 'scale' (whose label stays as it was); so
    is each seed when the runs have several ('scale · seed1')."""
    runs = runs.copy()
    for col in METRIC_COLUMNS:
        if col not in runs.columns:
            runs[col] = np.nan
    runs[METRIC_COLUMNS] = runs[METRIC_COLUMNS].astype(float)
    if "parallel" not in runs.columns:
        runs["parallel"] = "none"
    runs["parallel"] = runs["parallel"].fillna("none")
    suffix = pd.Series("", index=runs.index)
    sharded = runs["parallel"] != "none"
    suffix[sharded] = SERIES_SEPARATOR + runs.loc[sharded, "parallel"]
    if "seed" in runs.columns and runs["seed"].nunique() > 1:  # a seeds axis: one series each
        suffix = suffix + SERIES_SEPARATOR + "seed" + runs["seed"].astype(int).astype(str)
    runs["series_suffix"] = suffix
    runs["optimizer"] = runs["optimizer"].astype(str) + suffix
    return runs.sort_values("run_id", kind="stable")


def series_baseline(baseline: str, suffix: str) -> str:
    """The label of the baseline's run in the same series ('adamw · fsdp2x2 · seed1')."""
    return f"{baseline}{suffix}"


def model_order(runs: pd.DataFrame) -> list[str]:
    """Models by size (n_params); models whose runs all failed (no size) last, as first seen."""
    first_seen = {m: i for i, m in enumerate(dict.fromkeys(runs["model"]))}
    size = runs.groupby("model")["n_params"].max()
    # NaN never compares, so unknown sizes get a placeholder and sort on first_seen alone.
    return sorted(
        first_seen,
        key=lambda m: (pd.isna(size[m]), 0 if pd.isna(size[m]) else size[m], first_seen[m]),
    )


def resolve_baseline(runs: pd.DataFrame, baseline: str) -> str:
    """The label to compare against: `baseline` itself if a row has that label, else the first
    label whose registry name is `baseline` (a suite may say `adam` or label its AdamW)."""
    if runs.empty or (runs["optimizer"] == baseline).any() or "optimizer_name" not in runs:
        return baseline
    named = runs.loc[runs["optimizer_name"] == baseline, "optimizer"]
    return str(named.iloc[0]) if len(named) else baseline


def optimizer_order(labels, baseline: str) -> list[str]:
    """Baseline first so every table and legend reads as 'reference, then the rest'."""
    return sorted(set(labels), key=lambda label: (label != baseline, label))


def sorted_group(group: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Baseline first, then by label, so each optimizer's strategies sit together."""
    order = {label: i for i, label in enumerate(optimizer_order(group["optimizer"], baseline))}
    return group.sort_values("optimizer", key=lambda s: s.map(order))


def grouped(runs: pd.DataFrame, baseline: str) -> Iterator[tuple[str, int, pd.DataFrame]]:
    """(model, seq_len, rows) in report order; rows sorted with the baseline first."""
    for model in model_order(runs):
        model_runs = runs[runs["model"] == model]
        for seq_len in sorted(model_runs["seq_len"].unique()):
            group = model_runs[model_runs["seq_len"] == seq_len]
            yield model, int(seq_len), sorted_group(group, baseline)


def setup_label(group: pd.DataFrame) -> str:
    """'cpu fp32' (or several, joined) for table titles; '' when unknown."""
    pairs = [
        " ".join(str(v) for v in (device, dtype) if pd.notna(v))
        for device, dtype in zip(group["device"], group["dtype"])
    ]
    return " / ".join(p for p in dict.fromkeys(pairs) if p)


def group_title(model: str, seq_len: int, group: pd.DataFrame) -> str:
    return " · ".join(p for p in (model, f"seq {seq_len}", setup_label(group)) if p)



def ok_with(model_runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    return model_runs[model_runs["status"].isin(RESULT_STATUSES) & np.isfinite(model_runs[metric])]


# Past this many bars in all, per-seq-len panels go side by side (optimizer names once, on

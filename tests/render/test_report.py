"""Report rendering from hand-built result frames: numbers, ordering, failures, figures."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from optbench.render.figures import optimizer_styles
from optbench.render.report import rich_tables, summary_frame, write_report

MIB = 2**20
LONG_ERROR = (
    "ValueError: scale rank 512 exceeds min(hidden, intermediate) for layer "
    "model.layers.0.mlp.up_proj | check the suite file"
)
CRASH_TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "runner.py", line 1, in run\n'
    "RuntimeError: boom in adamw step"
)


def _row(run_id: int, model: str, opt: str, seq: int, status: str = "ok", error=None, **metrics):
    base = dict(
        run_id=run_id, suite="test", cell_id=f"{model}/{opt}/seq{seq}", model=model,
        optimizer=opt, optimizer_name=opt, seq_len=seq, status=status, error=error,
        device="cpu", dtype="fp32",
    )  # fmt: skip
    return base | metrics


def _ok(run_id, model, opt, seq, *, n_params, params, grads, state, acts, tps=1000.0, peak=None):
    """An ok row from its peak parts in MiB; peak defaults to their sum (as on CPU)."""
    peak = peak if peak is not None else (params + grads + state + acts) * MIB
    return _row(
        run_id, model, opt, seq,
        n_params=n_params, param_bytes=params * MIB, optimizer_state_bytes=state * MIB,
        peak_allocated_bytes=peak, peak_params_bytes=params * MIB, peak_grads_bytes=grads * MIB,
        peak_optimizer_state_bytes=state * MIB, peak_activations_bytes=acts * MIB,
        tokens_per_s=tps, step_ms=100.0, fwd_bwd_ms=90.0, optimizer_step_ms=10.0,
        final_train_loss=4.5, eval_loss=4.6, eval_ppl=math.exp(4.6), steps=30,
    )  # fmt: skip


def _failed(run_id, model, opt, seq, status, error):
    """A failed row: no metrics at all, as the store returns for a crash before step 1."""
    return _row(run_id, model, opt, seq, status=status, error=error)


@pytest.fixture
def runs() -> pd.DataFrame:
    return canned_runs()


def canned_runs() -> pd.DataFrame:
    """Three optimizers, two models, two seq lens, with a crash and an error."""
    small, big = dict(n_params=9e6), dict(n_params=20e6)
    rows = [
        # llama_20m first, so ordering by size (not by appearance) is exercised.
        _ok(1, "llama_20m", "sgd", 256, **big, params=80, grads=80, state=0, acts=240),
        _ok(2, "llama_20m", "scale", 256, **big, params=80, grads=80, state=20, acts=240),
        _failed(3, "llama_20m", "adamw", 256, "crashed", CRASH_TRACEBACK),
        _ok(4, "llama_20m", "adamw", 128, **big, params=80, grads=80, state=160, acts=120),
        _ok(5, "llama_20m", "sgd", 128, **big, params=80, grads=80, state=0, acts=120),
        _failed(6, "llama_20m", "scale", 128, "error", LONG_ERROR),
        # llama_9m seq 128: adamw peak 200 MiB, sgd 100 MiB -> 0.50x; scale state 10/40 -> 0.25x.
        _ok(7, "llama_9m", "scale", 128, **small, params=20, grads=20, state=10, acts=100),
        _ok(8, "llama_9m", "adamw", 128, **small, params=20, grads=20, state=40, acts=120),
        _ok(9, "llama_9m", "sgd", 128, **small, params=20, grads=20, state=0, acts=60),
        # 300e6 bytes / 2**20 = 286.10 MiB; parts don't matter for the peak column here.
        _ok(10, "llama_9m", "adamw", 256, **small, params=20, grads=20, state=40, acts=200,
            peak=300e6),
        _ok(11, "llama_9m", "sgd", 256, **small, params=20, grads=20, state=0, acts=200),
        _ok(12, "llama_9m", "scale", 256, **small, params=20, grads=20, state=10, acts=200),
    ]  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture
def curves(runs: pd.DataFrame) -> pd.DataFrame:
    """30 decreasing steps for every ok run, 5 steps for the crashed one."""
    rows = []
    for run in runs.itertuples():
        n = 30 if run.status == "ok" else 5 if run.status == "crashed" else 0
        for step in range(1, n + 1):
            loss = 9.0 * np.exp(-step / 20) + 3.0
            rows.append(dict(run_id=run.run_id, cell_id=run.cell_id, step=step, loss=loss, lr=1e-3))
    return pd.DataFrame(rows)


def _row_of(frame: pd.DataFrame, model: str, seq: int, opt: str) -> pd.Series:
    hit = frame[(frame["Model"] == model) & (frame["Seq len"] == seq) & (frame["Optimizer"] == opt)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_summary_frame_numbers_and_ratios(runs):
    frame = summary_frame(runs)
    sgd = _row_of(frame, "llama_9m", 128, "sgd")
    assert sgd["Peak (MiB)"] == "100.0"
    assert sgd["Peak vs adamw"] == "0.50×"
    assert sgd["State (MiB)"] == "0"
    assert sgd["fwd+bwd / opt (ms)"] == "90.0 / 10.0"
    assert _row_of(frame, "llama_9m", 128, "scale")["State vs adamw"] == "0.25×"
    assert _row_of(frame, "llama_9m", 128, "adamw")["Peak vs adamw"] == "1.00×"
    assert _row_of(frame, "llama_9m", 256, "adamw")["Peak (MiB)"] == "286.1"


def test_tflops_always_and_mfu_only_when_some_row_has_it(runs):
    runs = runs.assign(model_tflops_per_s=0.0123)
    frame = summary_frame(runs)
    assert _row_of(frame, "llama_9m", 128, "sgd")["TFLOP/s"] == "0.0123"
    assert "MFU (%)" not in frame.columns  # a CPU report: no peak, so no column of dashes
    runs.loc[runs["run_id"] == 9, ["model_tflops_per_s", "mfu_percent"]] = [412.7, 41.73]
    frame = summary_frame(runs)
    assert _row_of(frame, "llama_9m", 128, "sgd")["MFU (%)"] == "41.7"
    assert _row_of(frame, "llama_9m", 128, "sgd")["TFLOP/s"] == "413"
    assert _row_of(frame, "llama_9m", 128, "adamw")["MFU (%)"] == "—"


def test_summary_frame_orders_by_size_then_seq_then_baseline_first(runs):
    frame = summary_frame(runs)
    keys = list(zip(frame["Model"], frame["Seq len"], frame["Optimizer"]))
    expected = [
        (model, seq, opt)
        for model in ("llama_9m", "llama_20m")
        for seq in (128, 256)
        for opt in ("adamw", "scale", "sgd")
    ]
    assert keys == expected


def test_missing_or_failed_baseline_gives_dash(runs):
    frame = summary_frame(runs)
    sgd = _row_of(frame, "llama_20m", 256, "sgd")
    assert sgd["Peak vs adamw"] == "—" and sgd["State vs adamw"] == "—"
    assert sgd["Peak (MiB)"] == "400.0"  # its own numbers still show
    crashed = _row_of(frame, "llama_20m", 256, "adamw")
    assert crashed["Status"] == "crashed: RuntimeError: boom in adamw step"
    assert crashed["Peak (MiB)"] == "—" and crashed["Tokens/s"] == "—"
    no_baseline = summary_frame(runs[runs["optimizer"] != "adamw"])
    assert set(no_baseline["Peak vs adamw"]) == {"—"}


def test_failed_row_error_is_short_in_table(runs):
    status = _row_of(summary_frame(runs), "llama_20m", 128, "scale")["Status"]
    assert status.startswith("error: ValueError: scale rank 512")
    assert status.endswith("…") and len(status) <= len("error: ") + 60


def test_custom_baseline_names_columns_and_goes_first(runs):
    frame = summary_frame(runs, baseline="sgd")
    assert "Peak vs sgd" in frame.columns
    assert list(frame["Optimizer"][:3]) == ["sgd", "adamw", "scale"]
    assert _row_of(frame, "llama_9m", 128, "adamw")["Peak vs sgd"] == "2.00×"


def test_write_report(tmp_path, runs, curves):
    paths = write_report(
        runs, curves, tmp_path, "Test report", "Canned data.", command="optbench report s.yaml",
        store="results/x.sqlite",
    )
    summary = tmp_path / "summary.md"
    assert paths[0] == summary and all(p.exists() for p in paths)
    text = summary.read_text()
    assert text.startswith("# Test report\n")
    assert "Canned data." in text
    assert "Command: `optbench report s.yaml`" in text and "in `results/x.sqlite`" in text
    assert "MiB = 2^20 bytes" in text
    # Sections: models by size, seq lens ascending, setup in the heading.
    assert text.index("## llama_9m") < text.index("## llama_20m")
    assert "### seq 128 · cpu fp32" in text
    # Numbers and the baseline row first within a table.
    section = text[text.index("## llama_9m") : text.index("## llama_20m")]
    assert "| 286.1 |" in section and "| 0.50× |" in section
    assert section.index("| adamw |") < section.index("| scale |") < section.index("| sgd |")
    # Failures: the table keeps a short, pipe-escaped error; the list has the full text.
    failures = text[text.index("## Failures") :]
    assert LONG_ERROR in failures and CRASH_TRACEBACK.splitlines()[0] in failures
    assert "| error: ValueError: scale rank 512" in text
    assert "\\|" not in failures  # escaping is for table cells only
    # Every image link points at a written file, and every written PNG is linked.
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links and all((tmp_path / link).exists() for link in links)
    pngs = {p.name for p in paths if p.suffix == ".png"}
    assert set(links) == pngs
    for model in ("llama_9m", "llama_20m"):
        for kind in ("loss", "memory", "throughput", "peak_vs_seq"):
            assert f"{kind}_{model}.png" in pngs


def test_pipe_table_rows_have_same_cell_count(tmp_path, runs, curves):
    write_report(runs, curves, tmp_path, "t")
    lines = (tmp_path / "summary.md").read_text().splitlines()
    table_lines = [line for line in lines if line.startswith("| ")]
    counts = {len(re.findall(r"(?<!\\)\|", line)) for line in table_lines}
    assert counts == {20}  # 19 columns: no MFU on CPU


def test_single_seq_len_skips_peak_vs_seq(tmp_path, runs, curves):
    paths = write_report(runs[runs["seq_len"] == 128], curves, tmp_path, "t")
    names = {p.name for p in paths}
    assert "memory_llama_9m.png" in names and "peak_vs_seq_llama_9m.png" not in names


def test_all_failed_still_writes_summary(tmp_path):
    runs = pd.DataFrame(
        [
            _failed(1, "llama_9m", "adamw", 128, "crashed", "RuntimeError: no"),
            _failed(2, "llama_9m", "sgd", 128, "oom", "CUDA out of memory"),
            _failed(3, "llama_20m", "scale", 256, "skipped", None),
        ]
    )
    empty_curves = pd.DataFrame(columns=["run_id", "cell_id", "step", "loss", "lr"])
    paths = write_report(runs, empty_curves, tmp_path / "out", "All failed")
    assert paths == [tmp_path / "out" / "summary.md"]
    text = paths[0].read_text()
    assert "## Failures" in text and "CUDA out of memory" in text
    assert "(no error text recorded)" in text
    assert "![" not in text


def test_no_runs_at_all(tmp_path):
    runs = pd.DataFrame(columns=list(_row(0, "m", "o", 1)))
    assert summary_frame(runs).empty
    assert rich_tables(runs) == []
    [summary] = write_report(runs, pd.DataFrame(), tmp_path, "Empty")
    assert "No results to report." in summary.read_text()


def test_rich_tables_one_per_model_and_seq(runs):
    tables = rich_tables(runs)
    assert [t.title for t in tables] == [
        "llama_9m · seq 128 · cpu fp32",
        "llama_9m · seq 256 · cpu fp32",
        "llama_20m · seq 128 · cpu fp32",
        "llama_20m · seq 256 · cpu fp32",
    ]
    assert all(t.row_count == 3 for t in tables)
    assert tables[0].columns[0].header == "Optimizer"
    assert [str(c) for c in tables[0].columns[0].cells] == ["adamw", "scale", "sgd"]


# ----------------------------------------------------------------------------- many optimizers


def _many_runs(n_opt: int, seqs: tuple[int, ...]) -> pd.DataFrame:
    """n_opt optimizers (adamw plus opt_01..) at each seq len, with a crash and an oom."""
    names = ["adamw"] + [f"opt_{i:02d}" for i in range(1, n_opt)]
    rows, run_id = [], 0
    for seq in seqs:
        for i, name in enumerate(names):
            run_id += 1
            if i == 3 and seq == seqs[-1]:
                rows.append(_failed(run_id, "llama_9m", name, seq, "crashed", CRASH_TRACEBACK))
            elif i == 5:
                rows.append(_failed(run_id, "llama_9m", name, seq, "oom", "CUDA out of memory"))
            else:
                rows.append(_ok(run_id, "llama_9m", name, seq, n_params=9e6, params=20, grads=20,
                                state=i, acts=seq / 4, tps=1000.0 + 37 * i))  # fmt: skip
    return pd.DataFrame(rows)


def _curves_for(runs: pd.DataFrame) -> pd.DataFrame:
    rows = [
        dict(run_id=run.run_id, cell_id=run.cell_id, step=step, lr=1e-3,
             loss=9.0 * np.exp(-step / (10 + run.run_id % 17)) + 3.0)
        for run in runs.itertuples()
        for step in range(1, {"ok": 30, "crashed": 5}.get(run.status, 0) + 1)
    ]  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seqs", [(128,), (128, 256)])
def test_report_with_30_optimizers_writes_every_figure(tmp_path, seqs):
    runs = _many_runs(30, seqs)
    paths = write_report(runs, _curves_for(runs), tmp_path, "Roster")
    names = {p.name for p in paths}
    kinds = ("loss", "memory", "throughput") + (("peak_vs_seq",) if len(seqs) > 1 else ())
    assert names == {"summary.md"} | {f"{kind}_llama_9m.png" for kind in kinds}
    for path in paths[1:]:
        with Image.open(path) as image:
            width, height = image.size
        # Figures grow to fit their legends and rows, but stay within a screen or two.
        assert 500 <= width <= 2600 and 300 <= height <= 2600, (path.name, image.size)
    text = (tmp_path / "summary.md").read_text()
    assert all(f"| opt_{i:02d} |" in text for i in range(1, 30))


@pytest.mark.parametrize("n", [1, 3, 10, 11, 20, 30, 40])
def test_optimizer_styles_are_distinct(n):
    labels = [f"opt_{i:02d}" for i in range(n)]
    styles = optimizer_styles(reversed(labels))  # independent of input order
    assert set(styles) == set(labels)
    colors = [tuple(s["color"]) for s in styles.values()]
    color_ls = {(tuple(s["color"]), s["linestyle"]) for s in styles.values()}
    color_marker = {(tuple(s["color"]), s["marker"]) for s in styles.values()}
    assert len(color_ls) == n and len(color_marker) == n
    if n <= 10:  # a few optimizers: distinct colours and plain lines, as before
        assert len(set(colors)) == n and {s["linestyle"] for s in styles.values()} == {"-"}
    assert styles == optimizer_styles(labels)



def test_baseline_is_found_by_registry_name_when_labelled_otherwise():
    from optbench.render.frames import resolve_baseline
    from optbench.render.report import summary_frame

    frame = canned_runs()
    relabelled = frame.assign(optimizer=frame["optimizer"].replace({"adamw": "adam"}))
    assert resolve_baseline(relabelled, "adamw") == "adam"
    table = summary_frame(relabelled)
    assert "Peak vs adam" in table.columns
    assert (table["Peak vs adam"] != "—").any()


def test_stored_text_with_rich_markup_renders_as_text(runs):
    """An error or label holding '[/]' or '[bold]' is shown as written, never parsed."""
    from rich.console import Console

    runs = runs.copy()
    runs.loc[runs["run_id"] == 3, "error"] = "RuntimeError: bad [/] and [bold]x"
    console = Console(record=True, width=400)
    for table in rich_tables(runs):
        console.print(table)
    assert "RuntimeError: bad [/] and [bold]x" in console.export_text()

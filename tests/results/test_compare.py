"""`optbench compare`: selection from the store, ratios and best marks, config provenance,
missing and estimated rows, exports, figures, running what is missing, bad input."""

from __future__ import annotations

import dataclasses
import json
import re
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from optbench.results import compare as cmp
from optbench.cli import app
from optbench.engine.outcome import RunResult
from optbench.results.store import ResultStore
from optbench.config.loader import load_suite
from optbench.config.suite import OptimizerChoice, expand

runner = CliRunner()
GRID = """\
name: grid
defaults: {device: cpu, steps: 4, warmup: 1, batch_size: 2, eval_batches: 1}
grid: {models: [llama_tiny], seq_lens: [16, 32], optimizers: [adamw, sgd, scale]}
data: {source: kjv, max_tokens: 60000}
"""
STATE = {"adamw": 2000, "sgd": 0, "scale": 300}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def canned(cell, status="ok", **extra) -> RunResult:
    name = cell.optimizer.name
    metrics = {"optimizer_state_bytes": STATE.get(name, 900), "peak_allocated_bytes": 10_000 + STATE.get(name, 900),
               "peak_params_bytes": 5000, "peak_grads_bytes": 0, "peak_activations_bytes": 5000,
               "peak_optimizer_state_bytes": STATE.get(name, 900), "tokens_per_s": 100.0 + len(name),
               "final_train_loss": {"adamw": 5.0, "sgd": 6.0}.get(name, 5.5), "eval_ppl": 150.0, **extra}
    return RunResult(
        suite=cell.suite, cell_id=cell.id, fingerprint=cell.fingerprint, model=cell.model,
        optimizer=cell.optimizer.display, optimizer_name=name, seq_len=cell.seq_len, device="cpu",
        dtype="fp32", status=status, config=cell.config, metrics=metrics,
        curve=[(i, 6.0 - 0.1 * i, 1e-3) for i in range(1, 5)],
    )


@pytest.fixture
def store(write_suite, tmp_path):
    suite = write_suite(GRID, "grid.yaml")
    db = tmp_path / "r.sqlite"
    s = ResultStore(db)
    for cell in expand(load_suite(suite)):
        s.save(canned(cell))
    return db, s, suite


def run_json(db, tmp_path, *args):
    out = tmp_path / "c.json"
    result = invoke("compare", *args, "--db", db, "--reports", tmp_path / "reports", "--no-run", "--json", out)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text()), result


def row(doc, seq_len, optimizer):
    table = next(t for t in doc["tables"] if t["seq_len"] == seq_len)
    return next(r for r in table["rows"] if r["optimizer"] == optimizer)


def test_tables_ratios_best_marks_and_alias(store, tmp_path):
    db, _, _ = store
    doc, result = run_json(db, tmp_path, "scale", "adam", "sgd")
    assert doc["optimizers"] == ["adamw", "scale", "sgd"]  # alias canonical, baseline first
    assert [t["seq_len"] for t in doc["tables"]] == [16, 32]
    scale = row(doc, 16, "scale")["metrics"]
    assert scale["optimizer_state_bytes"]["value"] == 300
    assert scale["optimizer_state_bytes"]["vs_adamw"] == pytest.approx(0.15)
    assert row(doc, 16, "sgd")["metrics"]["optimizer_state_bytes"]["best"]  # lower is better
    assert not scale["optimizer_state_bytes"]["best"]
    assert scale["tokens_per_s"]["best"]  # higher is better: 'scale' is the longest name here
    assert row(doc, 16, "adamw")["metrics"]["final_train_loss"]["best"]
    assert not any(r["metrics"]["eval_ppl"]["best"] for r in doc["tables"][0]["rows"])  # all tie
    assert not any(r["metrics"]["peak_grads_bytes"]["best"] for r in doc["tables"][0]["rows"])
    assert "llama_tiny · seq 16 · cpu fp32" in result.stdout and "★" in result.stdout
    summary = (tmp_path / "reports" / "compare-scale-adamw-sgd" / "summary.md").read_text()
    assert "| sgd | ok | grid " in summary and "0 ★" in summary
    for link in re.findall(r"\]\(([^)]+\.png)\)", summary):
        assert (tmp_path / "reports" / "compare-scale-adamw-sgd" / link).is_file(), link
    assert "throughput_vs_memory_llama_tiny.png" in summary and "loss_llama_tiny.png" in summary


def test_rows_say_which_config_and_what_differs(store, tmp_path, write_suite):
    db, s, _ = store
    other = write_suite(GRID.replace("steps: 4", "steps: 9").replace("name: grid", "name: other"), "o.yaml")
    for cell in expand(load_suite(other)):
        if cell.optimizer.name == "scale":
            s.save(canned(cell))  # the newest scale results come from another setup
    doc, result = run_json(db, tmp_path, "scale")
    scale, adamw = row(doc, 16, "scale"), row(doc, 16, "adamw")
    assert scale["config"].startswith("other ") and adamw["config"].startswith("grid ")
    notes = doc["tables"][0]["setup_differences"]
    assert len(notes) == 1 and notes[0].startswith("defaults.steps: ") and "9 (other" in notes[0]
    assert "setups differ" in result.stdout


def test_missing_and_estimated_rows_show_dashes(store, tmp_path):
    db, s, suite = store
    apollo = load_suite(suite)
    apollo = dataclasses.replace(apollo, grid=dataclasses.replace(
        apollo.grid, optimizers=(OptimizerChoice("apollo"),), seq_lens=(16,)))
    estimated = canned(expand(apollo)[0], status="estimated")
    estimated.metrics = {"optimizer_state_bytes": 700.0, "peak_allocated_bytes": 9000.0}
    s.save(estimated)
    doc, result = run_json(db, tmp_path, "apollo", "--metric", "peak_allocated_bytes", "--metric", "tokens_per_s")
    est, gone = row(doc, 16, "apollo"), row(doc, 32, "apollo")
    assert est["status"] == "estimated" and est["metrics"]["peak_allocated_bytes"]["best"]
    assert est["metrics"]["tokens_per_s"] == {**est["metrics"]["tokens_per_s"], "value": None, "best": False}
    assert gone["status"] == "missing" and gone["config"] is None
    assert "estimated" in result.stdout and "missing" in result.stdout and "—" in result.stdout


def test_csv_and_by_seq_len_plot(store, tmp_path):
    db, _, _ = store
    out = tmp_path / "c.csv"
    result = invoke("compare", "scale", "--db", db, "--reports", tmp_path / "r", "--no-run",
                    "--csv", out, "--by", "seq_len", "--metric", "optimizer_state_bytes")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out)
    assert list(frame["optimizer"]) == ["adamw", "scale"] * 2
    assert frame["optimizer_state_bytes"].tolist() == [2000, 300, 2000, 300]
    assert "optimizer_state_bytes_vs_adamw" in frame and frame["best"].fillna("").tolist()[1] == "optimizer_state_bytes"
    assert (tmp_path / "r" / "compare-scale" / "optimizer_state_bytes_by_seq_len.png").is_file()


def test_missing_cells_reuse_the_tables_setup(store):
    """A missing optimizer is run with the setup its table's other rows share, so its new row
    has exactly the fingerprint that a suite listing it would give: like for like."""
    db, s, suite = store
    req = cmp.Request(("apollo",))
    runs = cmp.select(s, ["adamw", "apollo"], req, None)
    cells = cmp.missing_cells(runs, cmp.wanted_pairs(runs, req), ["adamw", "apollo"], req, None)
    with_apollo = load_suite(suite)
    with_apollo = dataclasses.replace(with_apollo, grid=dataclasses.replace(
        with_apollo.grid, optimizers=(OptimizerChoice("apollo"),)))
    assert sorted(c.fingerprint for c in cells) == sorted(c.fingerprint for c in expand(with_apollo))


@pytest.mark.slow
def test_runs_what_is_missing_with_a_suites_setup(tiny_suite, tmp_path):
    db = tmp_path / "r.sqlite"
    result = invoke("compare", "sgd", "--suite", tiny_suite, "--steps", "3", "--db", db,
                    "--reports", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert "running 2 missing results first" in result.stderr
    runs = ResultStore(db).runs(optimizer_names=["adamw", "sgd"])
    assert sorted(r.status for r in runs) == ["ok", "ok"] and {r.suite for r in runs} == {"tiny"}
    assert "| sgd | ok | tiny " in (tmp_path / "r" / "compare-sgd" / "summary.md").read_text()


@pytest.mark.parametrize("args,words", [
    (["scalle"], ["unknown optimizer 'scalle'", "did you mean 'scale'"]),
    (["scale", "--metric", "tokens_per_sec"], ["unknown metric 'tokens_per_sec'", "did you mean 'tokens_per_s'"]),
    (["scale", "--model", "llama_9b"], ["llama_9b"]),
    (["scale", "--baseline", "adamx"], ["unknown optimizer 'adamx'"]),
    (["scale", "--device", "tpu"], ["--device 'tpu'", "auto, cpu, cuda"]),
    (["scale", "--model", "llama_tiny", "--seq-len", "4096"], ["4096", "max_seq"]),
])
def test_bad_input_exits_2_with_one_line(store, tmp_path, args, words):
    db, s, _ = store
    before = s.count_runs()
    result = invoke("compare", *args, "--db", db, "--reports", tmp_path / "r")
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and all(w in result.stderr for w in words), result.stderr
    assert s.count_runs() == before


def test_unknown_by_axis_is_a_usage_error(monkeypatch, capsys, tmp_path):
    from optbench.cli import main

    monkeypatch.setattr(sys, "argv", ["optbench", "compare", "scale", "--by", "batch", "--db", str(tmp_path / "r.sqlite")])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "'batch' is not one of 'seq_len', 'model'" in err


def test_mfu_column_only_where_a_row_measured_it(store, tmp_path, write_suite):
    db, s, _ = store
    doc, _ = run_json(db, tmp_path, "scale")  # CPU results: TFLOP/s if stored, never MFU
    assert "model_tflops_per_s" in doc["tables"][0]["rows"][0]["metrics"]
    assert "mfu_percent" not in doc["tables"][0]["rows"][0]["metrics"]
    for cell in expand(load_suite(write_suite(GRID, "grid.yaml"))):
        if cell.optimizer.name == "scale" and cell.seq_len == 16:
            s.save(canned(cell, mfu_percent=41.5, model_tflops_per_s=410.0))
    doc, result = run_json(db, tmp_path, "scale")
    assert row(doc, 16, "scale")["metrics"]["mfu_percent"]["value"] == 41.5
    assert row(doc, 16, "adamw")["metrics"]["mfu_percent"]["value"] is None
    assert "MFU (%)" in result.stdout and "41.5" in result.stdout

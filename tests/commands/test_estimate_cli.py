"""`optbench estimate`, `optbench fit` and `device: meta` suites, through the CLI."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from optbench.cli import app
from optbench.engine.trace import Estimator, Workload
from optbench.results.store import ResultStore

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_estimate_prints_a_row_per_optimizer_with_adamw_as_reference(tmp_path):
    result = invoke("estimate", "--model", "llama_tiny", "-o", "scale", "-o", "galore:rank=8",
                    "--seq-len", "64", "--batch-size", "4", "--reports", tmp_path)
    assert result.exit_code == 0, result.output
    for label in ("adamw", "scale", "galore(rank=8)"):  # headers may wrap in a narrow terminal
        assert label in result.output
    md = (tmp_path / "estimate-llama_tiny-seq64-bs4-bf16.md").read_text()
    assert "| scale |" in md and "Paper convention (GB = 10^9 B)" in md
    assert "| Peak vs adamw | Paper conv. (GB) |" in md
    for link in re.findall(r"\]\(([^)]+\.png)\)", md):
        assert (tmp_path / link).is_file()


def test_estimate_json_matches_the_library(tmp_path):
    result = invoke("estimate", "--model", "llama_tiny", "-o", "scale", "--seq-len", "32",
                    "--batch-size", "2", "--dtype", "fp32", "--grad-accum", "2", "--grad-clip",
                    "1.0", "--json", "--reports", tmp_path)
    assert result.exit_code == 0, result.output
    rows = {row["optimizer"]: row for row in json.loads(result.output)}
    assert set(rows) == {"adamw", "scale"}
    workload = Workload("llama_tiny", 32, 2, "fp32", grad_accum=2, grad_clip=1.0)
    est = Estimator("llama_tiny", "fp32").estimate(workload, "scale")
    assert rows["scale"]["peak_bytes"] == est.peak_bytes
    assert sum(rows["scale"]["parts_bytes"].values()) == est.peak_bytes


def test_estimate_a_suite_estimates_each_cell(tmp_path, tiny_suite):
    result = invoke("estimate", "--model", tiny_suite, "--json", "--reports", tmp_path)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert sorted(r["optimizer"] for r in rows) == ["adamw", "scale", "sgd"]
    assert all(r["workload"]["model"] == "llama_tiny" for r in rows)


@pytest.mark.parametrize("args,message", [
    (["--model", "llama_7m"], "unknown model 'llama_7m'"),
    (["--model", "llama_tiny", "-o", "adamx"], "unknown optimizer 'adamx'"),
    (["--model", "llama_tiny", "-o", "galore:rnk=8"], "has no hparam 'rnk'"),
    (["--model", "llama_tiny", "-o", "galore:rank"], "is not key=value"),
])
def test_estimate_bad_input_is_one_line_exit_2(args, message, tmp_path):
    result = invoke("estimate", *args, "--reports", tmp_path)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("args", [["--seq-len", "64"], ["--dtype", "fp32"], ["--autocast"],
                                  ["--grad-clip", "1"], ["-o", "scale:lr=5"]])
def test_estimate_suite_refuses_what_its_cells_set(args, tmp_path, tiny_suite):
    result = invoke("estimate", "--model", tiny_suite, *args, "--reports", tmp_path)
    assert result.exit_code == 2
    assert "does not apply to a suite" in result.output or "do not apply to a suite" in result.output


def test_bad_hparam_fails_before_any_tracing(tmp_path, monkeypatch):
    import optbench.engine.trace as estimate

    monkeypatch.setattr(estimate.Estimator, "estimate", lambda *a, **k: pytest.fail("traced"))
    result = invoke("fit", "--memory", "1GiB", "--model", "llama_tiny", "-o", "adamw", "-o",
                    "galore:rnk=8", "--reports", tmp_path)
    assert result.exit_code == 2 and "has no hparam 'rnk'" in result.output


def test_unwritable_reports_dir_fails_first(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = invoke("estimate", "--model", "llama_tiny", "--reports", blocker / "sub")
    assert result.exit_code == 2 and "not a writable directory" in result.output


def test_fit_finds_the_boundary(tmp_path):
    budget = "6MiB"
    result = invoke("fit", "--memory", budget, "--model", "llama_tiny", "-o", "scale",
                    "--seq-len", "64", "--dtype", "fp32", "--json", "--reports", tmp_path)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    largest = row["largest"]
    assert largest >= 1
    est = Estimator("llama_tiny", "fp32")
    at = lambda b: est.estimate(Workload("llama_tiny", 64, b, "fp32"), "scale").peak_bytes
    assert at(largest) <= 6 * 2**20 < at(largest + 1)
    assert (tmp_path / "fit-llama_tiny-6MiB-batch_size-seq64-fp32.png").is_file()


def test_fit_by_sequence_length_and_bad_input(tmp_path):
    result = invoke("fit", "--memory", "8MiB", "--model", "llama_tiny", "--batch-size", "2",
                    "--reports", tmp_path)
    assert result.exit_code == 0, result.output
    assert "Largest seq len" in result.output
    bad = invoke("fit", "--memory", "8 potatoes", "--model", "llama_tiny", "--reports", tmp_path)
    assert bad.exit_code == 2 and "--memory '8 potatoes' is not a memory size" in bad.output
    both = invoke("fit", "--memory", "8MiB", "--model", "llama_tiny", "--batch-size", "2",
                  "--seq-len", "64", "--reports", tmp_path)
    assert both.exit_code == 2 and "not both" in both.output


META_SUITE = """\
name: meta
defaults: {device: meta, dtype: bf16, batch_size: 4}
grid:
  models: [llama_tiny]
  seq_lens: [64]
  optimizers: [{name: adamw}, {name: apollo_mini}]
"""


@pytest.mark.slow
def test_meta_suite_stores_estimates_and_resumes(tmp_path, write_suite):
    suite = write_suite(META_SUITE, "meta.yaml")
    db, reports = tmp_path / "r.sqlite", tmp_path / "reports"
    result = invoke("run", suite, "--db", db, "--reports", reports)
    assert result.exit_code == 0, result.output
    runs = ResultStore(db).conn.execute("SELECT optimizer, status FROM runs").fetchall()
    assert sorted(runs) == [("adamw", "estimated"), ("apollo_mini", "estimated")]
    est = Estimator("llama_tiny", "bf16").estimate(Workload("llama_tiny", 64, 4), "apollo_mini")
    stored = ResultStore(db).conn.execute(
        "SELECT value FROM metrics JOIN runs USING (run_id) "
        "WHERE optimizer = 'apollo_mini' AND name = 'peak_allocated_bytes'").fetchone()[0]
    assert stored == est.peak_bytes
    summary = (reports / "meta" / "summary.md").read_text()
    assert "estimated" in summary
    again = invoke("run", suite, "--db", db, "--reports", reports)
    assert "2 already stored, 0 to run" in again.output

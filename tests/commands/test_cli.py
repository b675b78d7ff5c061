"""End to end through the CLI (Typer's CliRunner): run, resume, report, validate, list, bad input."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from optbench.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One real run of the tiny suite, shared by the tests that read its outputs."""
    from tests.conftest import TINY_SUITE

    root = tmp_path_factory.mktemp("e2e")
    suite = root / "tiny.yaml"
    suite.write_text(TINY_SUITE)
    db, reports = root / "results.sqlite", root / "reports"
    result = invoke("run", suite, "--db", db, "--reports", reports)
    return root, suite, db, reports, result


@pytest.mark.slow
def test_run_writes_store_and_report(finished_run):
    root, suite, db, reports, result = finished_run
    assert result.exit_code == 0, result.output
    assert "3 to run" in result.output
    summary = (reports / "tiny" / "summary.md").read_text()
    for name in ("adamw", "sgd", "scale"):
        assert name in summary
    for link in re.findall(r"\]\(([^)]+\.png)\)", summary):
        assert (reports / "tiny" / link).is_file(), link
    assert list((reports / "tiny").glob("loss_*.png"))


@pytest.mark.slow
def test_second_run_resumes_and_runs_nothing(finished_run):
    root, suite, db, reports, _ = finished_run
    result = invoke("run", suite, "--db", db, "--reports", reports)
    assert result.exit_code == 0
    assert "3 already stored, 0 to run" in result.output


@pytest.mark.slow
def test_report_rerenders_from_store(finished_run):
    root, suite, db, reports, _ = finished_run
    (reports / "tiny" / "summary.md").unlink()
    result = invoke("report", suite, "--db", db, "--reports", reports)
    assert result.exit_code == 0, result.output
    assert (reports / "tiny" / "summary.md").is_file()


def test_validate_and_list(tiny_suite):
    result = invoke("validate", tiny_suite)
    assert result.exit_code == 0 and "3 cells" in result.output
    for what, word in (("models", "llama_7b"), ("optimizers", "scale"), ("suites", "quick")):
        result = runner.invoke(app, ["list", what, "--suites-dir", "suites"])
        assert result.exit_code == 0 and word in result.output, result.output


def test_list_optimizers_verbose_shows_each_entry_s_source_of_truth():
    result = runner.invoke(app, ["list", "optimizers", "--verbose"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for words in (
        "galore (version 2)",
        "held against",
        "jiaweizzhao/GaLore: galore_torch/adamw.py",
        "adamw_betas=(0.9, 0.95) ← KellerJordan/Muon: muon.py",
        "deviations",
    ):
        assert words in result.output, words


def test_list_optimizers_selects_entries_by_name_or_alias():
    result = runner.invoke(app, ["list", "optimizers", "galore", "adam", "-v"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "galore (version 2)" in result.output and "adamw (adam) (version 1)" in result.output
    assert "muon (version" not in result.output


@pytest.mark.parametrize("args,words", [
    (["run", "no/such.yaml"], ["no/such.yaml", "no such suite file"]),
    (["validate", "BAD"], ["unknown key 'stepz'"]),
    (["run", "TINY", "--only", "llama_7b/*"], ["--only", "matches no cell"]),
    (["report", "TINY", "--db", "missing.sqlite"], ["missing.sqlite", "no results store"]),
])
def test_bad_input_exits_2_with_one_line(tiny_suite, write_suite, args, words, tmp_path, monkeypatch):
    from tests.conftest import TINY_SUITE

    monkeypatch.chdir(tmp_path)
    bad = write_suite(TINY_SUITE.replace("steps: 6", "stepz: 6"), "bad.yaml")
    args = [str(bad) if a == "BAD" else str(tiny_suite) if a == "TINY" else a for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.output


@pytest.mark.slow
def test_failing_cell_is_recorded_and_the_rest_finish(write_suite, tmp_path):
    from tests.conftest import TINY_SUITE

    # An lr that passes validation and blows the weights up: the cell diverges at run time.
    text = TINY_SUITE.replace("[adamw, sgd, scale]", "[adamw, {name: sgd, hparams: {lr: 1.0e+30}, label: broken}]")
    suite = write_suite(text, "faulty.yaml")
    result = invoke("run", suite, "--db", tmp_path / "r.sqlite", "--reports", tmp_path / "reports")
    assert result.exit_code == 1, result.output  # the suite finished, but not every cell did
    assert "1 of 2 cells did not finish ok" in result.output
    summary = (tmp_path / "reports" / "tiny" / "summary.md").read_text()
    assert "diverged: loss is nan at step" in summary  # the error text is kept and shown
    assert "| adamw | ok |" in summary


@pytest.mark.parametrize("args,words", [
    (["list", "foo"], ["'foo' is not one of", "models"]),
    (["list", "optimizers", "galor"], ["unknown optimizer 'galor'", "did you mean 'galore'"]),
    (["list", "models", "llama_7b"], ["list models takes no names", "list optimizers NAME"]),
    (["run"], ["Missing argument 'SUITE'"]),
    (["run", "x.yaml", "--bogus"], ["No such option: --bogus"]),
    (["estimat"], ["No such command"]),
])
def test_usage_errors_through_the_console_entry_point_are_one_line(args, words):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "optbench.cli", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for word in words:
        assert word in proc.stderr


@pytest.mark.slow
def test_cuda_suite_on_a_cpu_machine_is_skipped_not_crashed(write_suite, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    from tests.conftest import TINY_SUITE

    suite = write_suite(TINY_SUITE.replace("device: cpu", "device: cuda").replace(
        "[adamw, sgd, scale]", "[adamw]"), "cuda.yaml")
    result = invoke("run", suite, "--db", tmp_path / "r.sqlite", "--reports", tmp_path / "reports")
    assert result.exit_code == 0, result.output  # skipped for the device is not a failure
    assert "skipped" in result.output and "CUDA requested but not available" in result.output


@pytest.mark.slow
def test_only_keeps_the_whole_suite_in_the_report(finished_run, tmp_path):
    root, suite, db, reports, _ = finished_run
    result = invoke("run", suite, "--db", db, "--reports", reports, "--only", "*/sgd/*", "--rerun")
    assert result.exit_code == 0, result.output
    summary = (reports / "tiny" / "summary.md").read_text()
    assert "| adamw | ok |" in summary and "| scale | ok |" in summary


def test_a_command_line_of_undecodable_bytes_is_written_escaped():
    """A path given as bytes that are not UTF-8 reaches Python as lone surrogates, which no
    UTF-8 report file can hold: provenance shows them escaped."""
    from optbench.commands.provenance import command_line, record_argv

    record_argv(["estimate", "--reports", "/tmp/\udcff", "-m", "\ud800x"])
    assert command_line() == "optbench estimate --reports '/tmp/\\xff' -m '\\ud800x'"
    command_line().encode("utf-8")

"""Regression tests for bad input that once escaped the one-line promise (issue 16): each is
one line on stderr, exit 2, no traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from optbench.cli import app
from optbench.config.loader import load_suite
from tests.conftest import TINY_SUITE

runner = CliRunner()


def _validate(write_suite, text: str, name: str = "s.yaml"):
    result = runner.invoke(app, ["validate", str(write_suite(text, name))])
    assert "Traceback" not in result.output
    return result


@pytest.mark.parametrize(("text", "message"), [
    ("? [a, b]\n: 1\n" + TINY_SUITE, "a key must be a name, not a list or mapping"),
    (TINY_SUITE + "x: !!int abc\n", "a tagged value cannot be read"),
    (TINY_SUITE.replace("name: tiny", "name: !!timestamp notadate"), "a tagged value cannot be read"),
    ("a: " + "[" * 1000 + "]" * 1000 + "\n", "invalid YAML"),
    (TINY_SUITE.replace("kind: cosine", "kind: \"co\\nsine\\x85\""), "'co\\nsine\\x85' is not accepted"),
    (TINY_SUITE.replace("name: tiny", "name: ../x"), "name: '../x' is not a plain file name"),
    (TINY_SUITE.replace("name: tiny", "name: /abs/x"), "name: '/abs/x' is not a plain file name"),
    (TINY_SUITE.replace("name: tiny", "name: \"\\ud800\""), "is not a plain file name"),
    (TINY_SUITE.replace("[adamw, sgd, scale]", "[{name: adamw, label: '[/]'}]"),
     "grid.optimizers[0].label: '[/]' is not a usable label"),
    (TINY_SUITE.replace("[adamw, sgd, scale]", "[{name: adamw, label: \"a\\nb\"}]"),
     "is not a usable label"),
])
def test_bad_input_is_one_line(write_suite, text, message):
    result = _validate(write_suite, text)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_a_suite_named_by_its_file_gets_a_safe_name(write_suite):
    suite = load_suite(write_suite(TINY_SUITE.replace("name: tiny\n", ""), "my suite [v2].yaml"))
    assert suite.name == "my_suite_v2"


@pytest.mark.parametrize(("args", "message"), [
    (["estimate", "--model", "llama_tiny", "-o", "adamw:lr=1" + "0" * 400],
     "hparam 'lr': expected a finite number"),
    (["estimate", "--model", "llama_tiny", "-o", "adamw:lr=-1"], "'lr': -1.0 is negative"),
    (["estimate", "--model", "llama_tiny", "-o", "adamw:eps=-1e-8"], "'eps': -1e-08 is negative"),
    (["estimate", "--model", "llama_tiny", "-o", "scale:momentum=1.5"], "outside [0, 1]"),
    (["compare", "scale", "--seq-len", "0", "--no-run"], "--seq-len 0: accepted: a positive"),
    (["compare", "scale", "--seq-len", "-5", "--no-run"], "--seq-len -5: accepted: a positive"),
])
def test_cli_bad_values_are_one_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_betas_must_stay_below_one_and_counts_below_10_to_the_12(write_suite):
    result = _validate(write_suite, TINY_SUITE.replace(
        "[adamw, sgd, scale]", "[{name: adamw, hparams: {betas: [0.9, 1.0]}}]"))
    assert result.exit_code == 2 and "outside [0, 1)" in result.output
    result = _validate(write_suite, TINY_SUITE.replace("steps: 6", "steps: 1" + "0" * 400))
    assert result.exit_code == 2 and "defaults.steps: 1000" in result.output
    assert "is too large; accepted: 1 to 10^12" in result.output


def test_a_usage_error_is_one_line_through_the_entry_point():
    """Usage errors are click's, reported by optbench.cli.main (not by the Typer app alone)."""
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([str(Path(sys.executable).parent / "optbench"), "list"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: Missing argument 'what'. Choose from: models, "
                                   "optimizers, suites (see 'optbench list --help')")


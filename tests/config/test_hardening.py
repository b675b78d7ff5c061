"""Regression tests for bad input that once escaped the one-line promise (issue 16): each is
one line on stderr, exit 2, no traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from optbench.cli import app
from optbench.config.loader import load_suite
from tests.conftest import TINY_SUITE

runner = CliRunner()
H = "9" * 400  # a 400-digit integer


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
    (TINY_SUITE.replace("name: tiny", "name: \"\\ud800\""), "a lone surrogate escape"),
    (TINY_SUITE.replace("tiny end-to-end suite for tests", "\"a \\udc80\""),
     "line 2, column 14: a lone surrogate escape"),
    (TINY_SUITE.replace("[adamw, sgd, scale]", "[{name: adamw, label: '[/]'}]"),
     "grid.optimizers[0].label: '[/]' is not a usable label"),
    (TINY_SUITE.replace("[adamw, sgd, scale]", "[{name: adamw, label: \"a\\nb\"}]"),
     "is not a usable label"),
    # Found by the hostile audit (2026-12-06):
    (TINY_SUITE.replace("steps: 6", f"steps: 6\n  grad_clip: {H}"), "defaults.grad_clip"),
    (TINY_SUITE.replace("[adamw, sgd, scale]", f"[{{name: adamw, sweep: {{lr: {{factors: [{H}]}}}}}}]"),
     "factors[0]"),
    (TINY_SUITE + "search: {method: quasi_random, trials: 1000000000000}\n",
     "search.trials: 1000000000000 trials; accepted: up to 10,000"),
    (TINY_SUITE.replace("max_tokens: 60000", "max_tokens: 60000\n  tokenizer: ~nosuchuser_ob/t.json"),
     "data.tokenizer"),
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


LONG = "x" * 300


@pytest.mark.parametrize(("args", "message"), [
    (["export", "--csv", f"{{tmp}}/{LONG}"], "--csv {tmp}/xxx"),
    (["export", "--csv", f"{{tmp}}/out/{LONG}/runs.csv"], "cannot write (File name too long)"),
    (["export", "--csv", f"{{tmp}}/{'x' * 250}"], "(its curves beside it)"),
    (["export", "--tensorboard", "{tmp}/\udcff"], "not UTF-8 text, which it must be here"),
    (["export", "--tensorboard", f"{{tmp}}/{LONG}/tb"], "not a usable path (File name too long)"),
    (["export", "--tensorboard", f"{{tmp}}/tb/{LONG}"], "a name longer than this file system"),
    (["report", "{tmp}/tiny.yaml", "--reports", f"{{tmp}}/{LONG}"], "--reports {tmp}/xxx"),
])
def test_odd_output_paths_are_one_line_before_any_work(args, message, tmp_path, write_suite):
    """Found by tests/test_fuzz_cli.py: paths that the system cannot even look up."""
    from tests.conftest import store_made_up_results

    store_made_up_results(write_suite(TINY_SUITE, "tiny.yaml"), tmp_path / "r.sqlite")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = runner.invoke(app, [*args, "--db", str(tmp_path / "r.sqlite")])
    assert result.exit_code == 2, result.output
    assert message.replace("{tmp}", str(tmp_path)) in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["export", "--csv", "{db}"], "--csv {db}: that is the results store"),
    (["export", "--parquet", "{db}"], "--parquet {db}: that is the results store"),
    (["compare", "adamw", "--no-run", "--json", "{db}"], "--json {db}: that is the results store"),
    (["check", "{tmp}/tiny.yaml", "--from-store", "--baseline", "{tmp}/b.json", "-o", "{db}-wal"],
     "that is the results store"),
    (["check", "{tmp}/tiny.yaml", "--from-store", "--update", "--baseline", "{db}"],
     "that is the results store"),
    (["check", "{tmp}/tiny.yaml", "--from-store", "--update", "--baseline", "{tmp}"],
     "not a regular file"),
    (["export", "--parquet", "{tmp}/\udcff.parquet"], "not UTF-8 text"),
    (["export", "\udcff", "--csv", "{tmp}/x.csv"], "SUITE \\udcff: not UTF-8 text"),
    (["export", "--offline", "--csv", "{tmp}/x.csv"], "--offline: W&B options; add --wandb"),
    (["compare", "adamw", "--no-run", "--seq-len", "9" * 20], "--seq-len 9999"),
    (["compare", "adamw", "--no-run", "--steps", H], "--steps 9999"),
    (["compare", "adamw", "--no-run", "--suite", "\udcff"], "not UTF-8 text"),
    (["estimate", "-m", "llama_tiny", "--grad-accum", "99999999999"], "accepted 1..1024"),
    (["estimate", "-m", "llama_tiny", "--grad-clip", "inf"], "accepted a finite number"),
    (["estimate", "-m", "llama_tiny", "-o", "galore:rank=0"], "'rank': 0 is out of range"),
    (["estimate", "-m", "llama_tiny", "-o", f"muon:ns_steps={H}"], "out of range"),
    (["parity", "sgd", "--nproc", "500"], "--nproc 500: parity runs 2..64 ranks"),
    (["parity", "sgd", "--steps", H], "accepted 1..1000"),
])
def test_what_the_hostile_audit_found_is_one_line(args, message, tmp_path, write_suite):
    """A review that tried every command as a hostile user found these (2026-12-06): outputs
    that would overwrite the store or a device, values the trace or SQLite cannot take."""
    from optbench.results.store import ResultStore
    from tests.conftest import store_made_up_results

    suite = write_suite(TINY_SUITE, "tiny.yaml")
    db = tmp_path / "r.sqlite"
    store = store_made_up_results(suite, db)
    before = store.count_runs()
    done = runner.invoke(app, ["check", str(suite), "--from-store", "--update", "--db", str(db),
                               "--baseline", str(tmp_path / "b.json")])
    assert done.exit_code == 0, done.output
    args = [a.replace("{db}", str(db)).replace("{tmp}", str(tmp_path)) for a in args]
    result = runner.invoke(app, [*args, *(["--db", str(db)] if args[0] != "estimate" else [])])
    assert result.exit_code == 2, result.output
    assert message.replace("{db}", str(db)).replace("{tmp}", str(tmp_path)) in result.stderr, \
        result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert ResultStore(db).count_runs() == before and db.is_file()


def test_a_sweep_factor_written_1e_minus_1_is_a_number(write_suite):
    """YAML 1.1 reads 1e-1 (no dot) as text; hparams accept it, so factors do too."""
    text = TINY_SUITE.replace("[adamw, sgd, scale]", "[{name: adamw, sweep: {lr: {factors: [1e-1, 1]}}}]")
    result = _validate(write_suite, text)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("body", ["import sys\nsys.exit(3)\n", "raise BaseException('base')\n"])
def test_a_plugin_that_exits_is_one_line(tmp_path, monkeypatch, body):
    import subprocess
    import sys

    (tmp_path / "exiting_plugin.py").write_text(body)
    env = {**__import__("os").environ, "OPTBENCH_PLUGINS": "exiting_plugin",
           "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "optbench.cli", "list", "models"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().startswith("error: OPTBENCH_PLUGINS: importing 'exiting_plugin'")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_reports_of_undecodable_paths_are_written(tmp_path, monkeypatch):
    """A --reports path of bytes that are not UTF-8 works; the report shows it escaped."""
    monkeypatch.chdir(tmp_path)
    where = tmp_path / "\udcff"
    result = runner.invoke(app, ["estimate", "-m", "llama_tiny", "--reports", str(where)])
    assert result.exit_code == 0, result.output
    (md,) = where.glob("*.md")
    assert "\\xff" in md.read_text(encoding="utf-8")


def test_betas_must_stay_below_one_and_counts_below_10_to_the_12(write_suite):
    result = _validate(write_suite, TINY_SUITE.replace(
        "[adamw, sgd, scale]", "[{name: adamw, hparams: {betas: [0.9, 1.0]}}]"))
    assert result.exit_code == 2 and "outside [0, 1)" in result.output
    result = _validate(write_suite, TINY_SUITE.replace("steps: 6", "steps: 1" + "0" * 400))
    assert result.exit_code == 2 and "defaults.steps: 1000" in result.output
    assert "is too large; accepted: 1 to 10^12" in result.output


def test_a_usage_error_is_one_line_through_the_entry_point():
    """Usage errors are click's, made one line by the app itself: from a shell (below) and when
    a test or a script invokes the app."""
    in_process = runner.invoke(app, ["compare", "adamw", "--by", "[/]"])
    assert in_process.exit_code == 2 and in_process.stderr.count("\n") == 1, in_process.stderr
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([str(Path(sys.executable).parent / "optbench"), "list"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: Missing argument 'what'. Choose from: models, "
                                   "optimizers, suites (see 'optbench list --help')")



@pytest.mark.parametrize(("target", "message"), [
    ("x" * 300 + ".yaml", "not a usable file path"),
    ("~nosuchuser_optbench/s.yaml", "no such suite file"),  # relative to the suite: a plain name
])
def test_odd_include_paths_are_one_line(write_suite, target, message):
    result = _validate(write_suite, TINY_SUITE + f"include: {target}\n")
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_long_include_chain_is_one_line(tmp_path):
    for i in range(40):
        (tmp_path / f"s{i}.yaml").write_text(f"include: s{i + 1}.yaml\n")
    (tmp_path / "s40.yaml").write_text(TINY_SUITE)
    result = runner.invoke(app, ["validate", str(tmp_path / "s0.yaml")])
    assert result.exit_code == 2 and "include chain deeper than 32 files" in result.output


def test_a_plugin_that_raises_is_one_line(tmp_path, monkeypatch):
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "bad_plugin_optbench.py").write_text("raise RuntimeError('boom at import')\n")
    env = {**__import__("os").environ, "OPTBENCH_PLUGINS": "bad_plugin_optbench",
           "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([str(Path(sys.executable).parent / "optbench"), "list", "models"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == ("error: OPTBENCH_PLUGINS: importing 'bad_plugin_optbench' "
                                   "raised RuntimeError: boom at import")


@pytest.mark.parametrize(("value", "status", "message"), [
    ("NaN", "ok", "expected a finite number, not NaN"),
    ("1e999", "ok", "expected a finite number, not Infinity"),
    ("[" * 100000 + "]" * 100000, "ok", "nested too deeply"),
    ("9" * 400, "ok", "expected a finite number, not 9999"),
    ("1", "[/]", "status: expected one of ok, "),
])
def test_a_baseline_that_would_pass_anything_is_refused(tmp_path, value, status, message):
    import json

    from optbench.errors import OptbenchError
    from optbench.results.check import BASELINE_FORMAT, load_baseline

    cell = {"fingerprint": "f", "optimizer": "adamw", "optimizer_version": "1", "status": status}
    text = json.dumps({"optbench_baseline": BASELINE_FORMAT, "suite": "s",
                       "cells": {"c": {**cell, "metrics": {"peak_allocated_bytes": "VALUE"}}}})
    path = tmp_path / "b.json"
    path.write_text(text.replace('"VALUE"', value))
    with pytest.raises(OptbenchError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_baseline(path)


def test_a_store_with_damaged_pages_is_one_line(tmp_path, write_suite):
    """An intact header and first page, garbage after: SQLite opens it and fails on a query."""
    from optbench.config.suite import expand
    from optbench.results.store import ResultStore

    db = tmp_path / "r.sqlite"
    store = ResultStore(db)
    cells = expand(load_suite(write_suite(TINY_SUITE, "t.yaml")))
    from optbench.engine.outcome import RunResult

    for _ in range(30):
        for cell in cells:
            store.save(RunResult(suite=cell.suite, cell_id=cell.id, fingerprint=cell.fingerprint,
                                 model=cell.model, optimizer=cell.optimizer.display,
                                 optimizer_name=cell.optimizer.name, seq_len=cell.seq_len,
                                 device="cpu", dtype="fp32", status="ok", config=cell.config,
                                 metrics={"tokens_per_s": 1.0}, curve=[(1, 6.0, 1e-3)]))
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    data = bytearray(db.read_bytes())
    data[8192:] = b"\xff" * (len(data) - 8192)  # keep the header page, wreck the rest
    db.write_bytes(bytes(data))
    result = runner.invoke(app, ["compare", "scale", "--no-run", "--db", str(db),
                                 "--reports", str(tmp_path / "rep")])
    assert result.exit_code == 2 and "corrupt results database" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [["run"], ["compare", "scale", "--suite"]])
def test_an_unwritable_reports_folder_is_said_before_any_work(write_suite, tmp_path, command):
    (tmp_path / "afile").write_text("x")
    suite = write_suite(TINY_SUITE, "t.yaml")
    result = runner.invoke(app, [*command, str(suite), "--db", str(tmp_path / "r.sqlite"),
                                 "--reports", str(tmp_path / "afile" / "sub")])
    assert result.exit_code == 2, result.output
    assert "--reports" in result.output and "not a writable directory" in result.output
    assert not (tmp_path / "r.sqlite").exists() or "running" not in result.output


def test_a_corpus_folder_as_big_as_a_disk_is_refused_quickly(write_suite, tmp_path, monkeypatch):
    from optbench import data

    monkeypatch.setattr(data, "MAX_WALKED", 50)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(60):
        (corpus / f"{i}.txt").write_text("text\n")
    text = TINY_SUITE.replace("source: kjv", f"source: text\n  path: {corpus}")
    result = _validate(write_suite, text)
    assert result.exit_code == 2, result.output
    assert "holds more than 50 files and folders" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["none", "ddpx2"])
def test_a_module_in_the_current_directory_does_not_run_in_cells(write_suite, tmp_path,
                                                                 monkeypatch, parallel):
    """A json.py where optbench runs would shadow the standard library in every cell (and, for
    a sharded cell, in torchrun's launcher and every rank) if a child put the current directory
    on sys.path, as `python -m` does."""
    from optbench.results.store import ResultStore

    here = tmp_path / "cwd"
    here.mkdir()
    (here / "json.py").write_text("raise SystemExit('a json.py in the current directory ran')\n")
    monkeypatch.chdir(here)
    suite = write_suite(TINY_SUITE.replace("[adamw, sgd, scale]", "[adamw]").replace(
        "seq_lens: [32]", f"seq_lens: [32]\n  parallel: [{parallel}]"), "t.yaml")
    result = runner.invoke(app, ["run", str(suite), "--db", str(tmp_path / "r.sqlite"),
                                 "--reports", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    assert [r.status for r in ResultStore(tmp_path / "r.sqlite").runs()] == ["ok"]


def test_torchrun_starts_every_rank_isolated():
    from optbench.engine.isolation import module_command
    from optbench.engine.launch import torchrun_args

    args = torchrun_args(2, "logs", "cell.pkl", "result.json", "id")
    tail = args[args.index("--no-python") + 1:]
    assert tail == module_command("optbench.engine.worker", "cell.pkl", "result.json")


def test_before_python_3_11_children_drop_the_current_directory_too(tmp_path, monkeypatch):
    """Python 3.10 has no -P: the command made for it runs the module without '' on sys.path."""
    import subprocess

    from optbench.engine.isolation import child_env, module_command

    (tmp_path / "json.py").write_text("raise SystemExit('a json.py in the current directory ran')\n")
    monkeypatch.chdir(tmp_path)
    command = module_command("json.tool", "--compact", version=(3, 10))
    assert "-P" not in command
    done = subprocess.run(command, input='{"a": 1}', capture_output=True, text=True,
                          env=child_env(), timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == '{"a":1}', done.stderr
    plain = subprocess.run(command[:1] + ["-m", "json.tool"], input="{}", capture_output=True,
                           text=True, timeout=60)
    assert "a json.py in the current directory ran" in plain.stderr  # the hazard, for contrast
def test_stdout_on_a_full_disk_is_one_line():
    import os
    import subprocess
    import sys
    from pathlib import Path

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system to stand for a full disk")
    with open("/dev/full", "w") as full:
        done = subprocess.run([str(Path(sys.executable).parent / "optbench"), "list", "models"],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: writing the output: No space left on device"


def test_bare_optbench_shows_its_help_and_exits_0():
    result = runner.invoke(app, [])
    assert result.exit_code == 0 and "Usage" in result.output and "error" not in result.stderr


def test_a_reader_that_leaves_ends_the_command_silently(monkeypatch):
    """`optbench ... | head`: a broken pipe is exit 1 and no error line, as Rich makes it."""
    import optbench.commands.listing as listing

    def leave(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(listing, "list_things", leave)
    result = runner.invoke(app, ["list", "models"])
    assert result.exit_code == 1 and result.stderr == ""


@pytest.mark.parametrize("hparam", ["spam:grad_accu_steps=0", "muon:ns_steps=0"])
def test_integer_hparams_keep_their_librarys_meaning_of_0(hparam, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["estimate", "-m", "llama_tiny", "-o", hparam, "--json"])
    assert "out of range" not in result.stderr, result.stderr

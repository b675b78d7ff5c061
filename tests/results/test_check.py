"""`optbench check`: rules, every mark, exit codes, the baseline round trip, output formats,
bad input, and a real run whose optimizer grew a buffer."""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from optbench.results import check as chk
from optbench.cli import app
from optbench.errors import OptbenchError
from optbench.models import get_model_size
from optbench.engine.outcome import RunResult
from optbench.results.store import ResultStore
from optbench.config.loader import load_suite
from optbench.config.suite import expand

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
STATE, PEAK, TPS = "optimizer_state_bytes", "peak_allocated_bytes", "tokens_per_s"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# ----------------------------------------------------------------------------- rules


def test_default_rules_gate_state_exactly_and_peak_loosely_and_not_time():
    rules = chk.parse_rules([])
    assert str(rules[STATE]) == "0%" and rules[STATE].tolerance == 0
    assert str(rules[PEAK]) == "+2%"
    assert TPS not in rules


def test_rules_override_defaults_comma_separated_or_repeated():
    rules = chk.parse_rules(["peak_allocated_bytes:off,tokens_per_s:-20%", "eval_ppl:5%"])
    assert rules[PEAK].tolerance is None and [r.metric for r in chk.gated(rules)] == [STATE, TPS, "eval_ppl"]
    assert str(rules[TPS]) == "-20%" and rules[TPS].tolerance == pytest.approx(0.2)
    assert str(rules["eval_ppl"]) == "+5%"


@pytest.mark.parametrize("spec,words", [
    ("peak_alocated_bytes:+2%", ["unknown metric", "did you mean 'peak_allocated_bytes'"]),
    ("peak_allocated_bytes+2%", ["expected METRIC:TOLERANCE"]),
    ("peak_allocated_bytes:2", ["not a percentage"]),
    ("peak_allocated_bytes:two%", ["not a percentage"]),
    ("tokens_per_s:+20%", ["higher is better", "write -20% or 20%"]),
    ("optimizer_state_bytes:-1%", ["lower is better", "write +1% or 1%"]),
])
def test_bad_rules_name_the_rule_and_what_is_accepted(spec, words):
    with pytest.raises(OptbenchError) as err:
        chk.parse_rules([spec])
    assert f"'{spec}'" in str(err.value) and all(w in str(err.value) for w in words), err.value


# ----------------------------------------------------------------------------- marks


def obs(cell="m/a/seq8", status="ok", fp="f1", version="1", **metrics):
    values = {STATE: 1000.0, PEAK: 10_000.0, TPS: 100.0, **metrics}
    return chk.Observed(cell, fp, "a", version, status, {k: v for k, v in values.items() if v is not None},
                        error="RuntimeError: boom" if status not in ("ok", "estimated") else None)


def marks(current, base_cells, rules=("tokens_per_s:-20%",)):
    baseline = chk.Baseline(Path("b.json"), "s", {}, {o.cell_id: o for o in base_cells})
    findings = chk.compare(current, baseline, chk.parse_rules(rules))
    return {(f.cell_id, f.metric): (f.mark, f.note) for f in findings}, findings


@pytest.mark.parametrize("now,metric,mark", [
    (obs(), STATE, "~"),                                  # identical
    (obs(**{STATE: 1001.0}), STATE, "+"),                 # one byte more, rule 0%: worse
    (obs(**{STATE: 999.0}), STATE, "-"),                  # one byte less: better
    (obs(**{PEAK: 10_150.0}), PEAK, "~"),                 # +1.5% within +2%
    (obs(**{PEAK: 10_300.0}), PEAK, "+"),                 # +3% beyond +2%
    (obs(**{PEAK: 9_700.0}), PEAK, "-"),                  # -3% beyond 2%: better
    (obs(**{TPS: 70.0}), TPS, "+"),                       # higher is better: a 30% fall is worse
    (obs(**{TPS: 90.0}), TPS, "~"),                       # a 10% fall within -20%
    (obs(**{TPS: 130.0}), TPS, "-"),                      # a 30% rise is better
    (obs(status="error"), STATE, "!"),                    # newly failing
    (obs(status="oom"), PEAK, "!"),
    (obs(status="skipped"), STATE, "x"),                  # cannot run here: not a failure
    (obs(fp="f2"), STATE, "x"),                           # config changed
    (obs(fp="f2", version="2", **{STATE: 5000.0}), STATE, "x"),  # version bumped: no false +
    (obs(**{TPS: None}), TPS, "x"),                       # not measured now
    (obs(status="estimated", **{TPS: None}), STATE, "~"),  # estimated counts for memory
    (obs(status="estimated", **{TPS: None}), TPS, "x"),   # ... and lacks timing
])
def test_each_mark(now, metric, mark):
    found, _ = marks([now], [obs()])
    assert found[("m/a/seq8", metric)][0] == mark, found[("m/a/seq8", metric)]


def test_not_comparable_says_why():
    found, _ = marks([obs(fp="f2", version="2"), obs("m/new/seq8"), obs("m/b/seq8", status="error")],
                     [obs(), obs("m/gone/seq8"), obs("m/b/seq8", status="crashed")])
    assert "version changed 1 -> 2" in found[("m/a/seq8", STATE)][1]
    assert "new cell" in found[("m/new/seq8", STATE)][1]
    assert "not in the suite" in found[("m/gone/seq8", STATE)][1]
    # Failing now and in the baseline too: known, not newly failing.
    assert found[("m/b/seq8", STATE)] == ("x", "error, as in the baseline (crashed)")


def test_metric_missing_from_baseline_is_not_comparable():
    found, _ = marks([obs()], [obs(**{TPS: None})])
    assert found[("m/a/seq8", TPS)][0] == "x" and "--update" in found[("m/a/seq8", TPS)][1]


def test_exit_code_is_1_only_for_worse_or_newly_failing():
    for current, code in (([obs()], 0), ([obs(**{STATE: 900.0})], 0), ([obs(fp="f9")], 0),
                          ([obs(**{STATE: 1001.0})], 1), ([obs(status="error")], 1)):
        _, findings = marks(current, [obs()])
        assert chk.exit_code(findings) == code, current


# ----------------------------------------------------------------------------- baseline file


def test_baseline_round_trip_is_sorted_stable_and_keeps_exact_metrics(tmp_path):
    path = tmp_path / "b.json"
    cells = [obs("m/b/seq8", **{"eval_ppl": 12.5}), obs("m/a/seq8", status="error")]
    cells[0].env = {"torch": "2.13.0", "host": "box", "device": "cpu"}
    chk.write_baseline(path, "s", cells, chk.parse_rules([]))
    first = path.read_text()
    chk.write_baseline(path, "s", cells, chk.parse_rules([]))
    assert path.read_text() == first  # rewriting the same results is no diff
    doc = json.loads(first)
    assert first == json.dumps(doc, indent=2, sort_keys=True) + "\n"
    assert doc["environment"] == {"torch": "2.13.0", "device": "cpu"}  # no host: diff-friendly
    assert doc["cells"]["m/b/seq8"]["metrics"] == {STATE: 1000, PEAK: 10000}  # no timing, no loss
    assert doc["cells"]["m/a/seq8"]["error"] == "RuntimeError: boom"
    loaded = chk.load_baseline(path)
    assert loaded.suite == "s" and loaded.cells["m/b/seq8"].metrics == {STATE: 1000.0, PEAK: 10000.0}
    assert loaded.cells["m/b/seq8"].fingerprint == "f1" and loaded.cells["m/a/seq8"].status == "error"
    # A gated non-exact metric is recorded so that the gate has a value to hold.
    chk.write_baseline(path, "s", cells, chk.parse_rules(["eval_ppl:5%"]))
    assert chk.load_baseline(path).cells["m/b/seq8"].metrics["eval_ppl"] == 12.5


@pytest.mark.parametrize("content,words", [
    (None, ["no such baseline file", "--update"]),
    ("{not json", ["not valid JSON at line 1, column 2"]),
    ("[]", ["top level", "a JSON object"]),
    ('{"optbench_baseline": 7, "suite": "s", "cells": {}}', ["optbench_baseline"]),
    ('{"optbench_baseline": 1, "suite": "s", "cells": {"c": {"fingerprint": 3}}}',
     ["cells['c'].fingerprint", "a string"]),
    ('{"optbench_baseline": 1, "suite": "s", "cells": {"c": {"fingerprint": "f", "optimizer": "a",'
     ' "optimizer_version": "1", "status": "ok", "metrics": {"x": "big"}}}}',
     ["cells['c'].metrics.x", 'not "big"']),
])
def test_bad_baseline_files_are_one_line_errors(tmp_path, content, words):
    path = tmp_path / "b.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(OptbenchError) as err:
        chk.load_baseline(path)
    assert str(path) in str(err.value) and all(w in str(err.value) for w in words), err.value


# ----------------------------------------------------------------------------- CLI on canned results


def canned(cell, status="ok", **metrics) -> RunResult:
    values = {STATE: 1_000_000, PEAK: 5_000_000, TPS: 1234.0, "final_train_loss": 6.0, **metrics}
    return RunResult(
        suite=cell.suite, cell_id=cell.id, fingerprint=cell.fingerprint, model=cell.model,
        optimizer=cell.optimizer.display, optimizer_name=cell.optimizer.name, seq_len=cell.seq_len,
        device="cpu", dtype="fp32", status=status, config=cell.config, metrics=values,
        error=None if status == "ok" else "RuntimeError: boom", env={"torch": "2.13.0", "device": "cpu"},
    )


@pytest.fixture
def canned_store(tiny_suite, tmp_path):
    """The tiny suite's three cells stored as ok results, and a baseline written from them."""
    cells = {c.optimizer.name: c for c in expand(load_suite(tiny_suite))}
    db, baseline = tmp_path / "r.sqlite", tmp_path / "baselines" / "tiny.json"
    store = ResultStore(db)
    for cell in cells.values():
        store.save(canned(cell))
    result = invoke("check", tiny_suite, "--baseline", baseline, "--db", db, "--from-store", "--update")
    assert result.exit_code == 0, result.output
    assert "running 0" in result.stderr and f"wrote {baseline}: 3 cells" in result.stdout
    return tiny_suite, db, baseline, store, cells


def check(suite, db, baseline, *extra):
    return invoke("check", suite, "--baseline", baseline, "--db", db, "--from-store", *extra)


def test_unchanged_results_pass(canned_store):
    suite, db, baseline, *_ = canned_store
    result = check(suite, db, baseline)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n~ ") == 6 and "PASS" in result.stdout


def test_larger_state_fails_with_plus_and_new_failure_with_bang(canned_store):
    suite, db, baseline, store, cells = canned_store
    store.save(canned(cells["scale"], **{STATE: 1_000_004}))  # the latest result counts
    store.save(canned(cells["sgd"], status="error"))
    result = check(suite, db, baseline)
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert any(l.startswith("+") and "llama_tiny/scale/seq32 · optimizer_state_bytes" in l and "+4 B" in l
               for l in lines), result.stdout
    assert sum(l.startswith("!") and "llama_tiny/sgd/seq32" in l for l in lines) == 2
    assert "FAIL: 1 worse (+), 2 newly failing (!)" in result.stdout


def test_output_formats(canned_store, tmp_path, monkeypatch):
    suite, db, baseline, store, cells = canned_store
    store.save(canned(cells["scale"], **{STATE: 2_000_000}))
    result = check(suite, db, baseline, "--format", "junit")
    assert result.exit_code == 1
    root = ET.fromstring(result.stdout)  # stdout is the XML alone: progress went to stderr
    cases = root.findall(".//testcase")
    assert len(cases) == 6 and root.get("failures") == "1"
    failed = [c for c in cases if c.find("failure") is not None]
    assert [(c.get("classname"), c.get("name")) for c in failed] == [("tiny.llama_tiny/scale/seq32", STATE)]

    summary = tmp_path / "step_summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = check(suite, db, baseline, "--format", "github")
    errors = [l for l in result.stdout.splitlines() if l.startswith("::error ")]
    assert len(errors) == 1 and f"file={baseline}" in errors[0] and "%25" in errors[0]  # '%' escaped
    line = int(errors[0].split(",line=")[1].split(",")[0])
    assert STATE in baseline.read_text().splitlines()[line - 1]  # points at the number in the file
    assert "optbench check ❌ failed" in summary.read_text()

    out = tmp_path / "comment.md"
    result = check(suite, db, baseline, "--format", "markdown", "--output", out)
    text = out.read_text()
    assert result.exit_code == 1 and result.stdout == ""
    assert "| `+` | `llama_tiny/scale/seq32` | `optimizer_state_bytes` |" in text
    assert "<details><summary>5 within the rules" in text


def test_fingerprint_change_is_not_comparable_not_a_regression(canned_store, write_suite):
    suite, db, baseline, *_ = canned_store
    from tests.conftest import TINY_SUITE

    edited = write_suite(TINY_SUITE.replace("batch_size: 2", "batch_size: 3"), "tiny.yaml")
    store = ResultStore(db)
    for cell in expand(load_suite(edited)):
        store.save(canned(cell, **{STATE: 9_000_000}))
    result = check(edited, db, baseline)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("config changed: fingerprint") == 6


@pytest.mark.parametrize("args,words", [
    (["--baseline", "missing.json"], ["missing.json", "no such baseline file"]),
    (["--baseline", "CORRUPT"], ["not valid JSON"]),
    (["--baseline", "OTHER"], ["a baseline of suite 'other', not 'tiny'"]),
    (["--baseline", "GOOD", "--rules", "peak_alocated_bytes:1%"], ["did you mean 'peak_allocated_bytes'"]),
    (["--baseline", "GOOD", "--output", "/proc/x/y.md"], ["--output", "cannot write"]),
])
def test_bad_input_exits_2_with_one_line_and_keeps_the_store(canned_store, tmp_path, monkeypatch, args, words):
    suite, db, baseline, store, _ = canned_store
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corrupt.json").write_text('{"optbench_baseline": 1,')
    (tmp_path / "other.json").write_text(baseline.read_text().replace('"suite": "tiny"', '"suite": "other"'))
    subst = {"CORRUPT": "corrupt.json", "OTHER": "other.json", "GOOD": str(baseline)}
    before, good = store.count_runs(), baseline.read_text()
    result = invoke("check", suite, "--db", db, "--from-store", *[subst.get(a, a) for a in args])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert all(w in result.stderr for w in words), result.stderr
    assert store.count_runs() == before and baseline.read_text() == good


def test_unknown_format_is_a_one_line_usage_error(canned_store, monkeypatch, capsys):
    """Through the console entry point, as a shell calls it."""
    from optbench.cli import main

    suite, db, baseline, *_ = canned_store
    monkeypatch.setattr(sys, "argv", ["optbench", "check", str(suite), "--baseline", str(baseline),
                                      "--db", str(db), "--from-store", "--format", "xml"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "'xml' is not one of 'text', 'markdown', 'junit', 'github'" in err


def test_shipped_ci_baseline_matches_the_ci_suite():
    """The committed baseline is of the committed suite: same cells, same fingerprints."""
    suite = load_suite(REPO / "suites" / "ci_memory.yaml")
    baseline = chk.load_baseline(REPO / "baselines" / "ci_memory.json")
    cells = {c.id: c.fingerprint for c in expand(suite)}
    assert baseline.suite == suite.name
    assert {cid: o.fingerprint for cid, o in baseline.cells.items()} == cells
    assert all(o.status == "ok" and o.metrics[STATE] > 0 for o in baseline.cells.values())


# ----------------------------------------------------------------------------- a real regression


PROBE_SUITE = """\
name: probe
defaults: {device: cpu, steps: 3, warmup: 1, batch_size: 2, eval_batches: 1}
grid: {models: [llama_tiny], seq_lens: [16], optimizers: [probe_adamw]}
data: {source: kjv, max_tokens: 60000}
"""


@pytest.fixture
def probe_optimizer(monkeypatch):
    """Register tests/plugins/probe_optimizer.py here and in every cell's worker process."""
    from optbench.optimizers import load_plugins, registry

    monkeypatch.setenv("OPTBENCH_PLUGINS", "tests.plugins.probe_optimizer")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    load_plugins()
    yield
    registry.unregister("probe_adamw")  # other tests list every registered optimizer
    sys.modules.pop("tests.plugins.probe_optimizer", None)


@pytest.mark.slow
def test_an_extra_optimizer_buffer_fails_the_check(probe_optimizer, write_suite, tmp_path, monkeypatch):
    suite = write_suite(PROBE_SUITE, "probe.yaml")
    db, baseline = tmp_path / "r.sqlite", tmp_path / "probe.json"
    assert invoke("check", suite, "--baseline", baseline, "--db", db, "--update").exit_code == 0
    recorded = json.loads(baseline.read_text())["cells"]["llama_tiny/probe_adamw/seq16"]["metrics"][STATE]

    same = invoke("check", suite, "--baseline", baseline, "--db", db)
    assert same.exit_code == 0, same.output

    monkeypatch.setenv("OPTBENCH_PROBE_EXTRA_BUFFER", "1")  # the code change: one more buffer
    grown = invoke("check", suite, "--baseline", baseline, "--db", db)
    assert grown.exit_code == 1, grown.output
    row = next(l for l in grown.stdout.splitlines() if l.endswith(f"probe_adamw/seq16 · {STATE}"))
    weights = get_model_size("llama_tiny").n_params() * 4
    assert row.startswith("+") and f"{recorded:,} B" in row
    assert f"+{weights:,} B" in row  # exactly one fp32 buffer the size of the weights

"""A property-based fuzzer of the commands' options: `estimate`, `fit`, `compare`, `check`,
`export`, `report`, `list`, `validate` and `run --dry-run` called with odd values in every option (markup,
newlines, lone surrogates, huge / negative / NaN numbers, paths that cannot be written, files
where folders belong) must each end with exit 0, or exit 2 and exactly one `error:` line on
stderr; never a traceback. In-process (CliRunner) against a store of made-up results, so
nothing trains; seeded (derandomize), so a failure reproduces with the same example.
`run` is fuzzed with --dry-run (its cells and what is stored; nothing trains); `parity` is left
out, as a valid call starts torchrun: its options are checked before any work
(tests/commands/test_parity_cli.py, tests/config/test_hardening.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from optbench.cli import app
from optbench.results.store import ResultStore
from tests.conftest import TINY_SUITE, store_made_up_results

CASES = int(os.environ.get("OPTBENCH_FUZZ_CLI_CASES", 300))

runner = CliRunner()

odd_text = st.one_of(
    st.sampled_from(["[/]", "[bold]x", "[link=x]y", "a\nb", "a\tb", "\ud800", "é ∑ 😀", "", " ",
                     "-", "--", "x" * 300, "~nobody/x", "../x", "{{", "%s", "NaN"]),
    st.text(max_size=10),
)
odd_number = st.sampled_from(["0", "-1", "-0", "1", "2", "7", "32", "1" + "0" * 400, "1e999",
                              "-1e999", "nan", "inf", "0.5", "1e-3", "abc", "", "9" * 20,
                              "0x10", "1_000"])
models = st.one_of(st.sampled_from(["llama_tiny", "llama_9m", "llama_tiny.yaml"]), odd_text)
optimizer_names = st.sampled_from(["adamw", "sgd", "scale", "galore", "muon", "apollo", "lion",
                                   "adafactor", "soap", "cautious_adamw"])
hparam_names = st.sampled_from(["lr", "eps", "betas", "weight_decay", "rank", "momentum",
                                "update_proj_gap", "nosuch"])
optimizer_specs = st.one_of(
    optimizer_names,
    st.builds(lambda n, k, v: f"{n}:{k}={v}", optimizer_names, hparam_names,
              st.one_of(odd_number, odd_text, st.just("(0.9,1.5)"), st.just("(0.9,0.95)"))),
    odd_text,
)
metric_names = st.one_of(st.sampled_from(["optimizer_state_bytes", "tokens_per_s", "eval_loss",
                                          "final_train_loss", "peak_allocated_bytes"]), odd_text)


@st.composite
def odd_paths(draw, tmp: Path) -> str:
    """A path a command may read or write: plain, inside a file, unwritable, odd names."""
    return draw(st.sampled_from([
        str(tmp / "out" / "x"), str(tmp / "a_file" / "x"), str(tmp / "a_file"),
        "/proc/optbench/x", str(tmp / "[/]"), str(tmp / "a\nb"), str(tmp / ("x" * 300)),
        str(tmp / "\udc80"), "~nosuchuser/x", str(tmp), str(tmp / "out.csv"), "",
    ]))  # never the workspace's suite or baseline: a case writing there would change the next


def _options(draw, pairs: list[tuple[str, st.SearchStrategy]]) -> list[str]:
    """Some of `pairs` (option, value strategy), each drawn; a value of None is a flag."""
    args: list[str] = []
    for option, values in pairs:
        if draw(st.booleans()):
            value = draw(values)
            args += [option] if value is None else [option, value]
    return args


@st.composite
def command_lines(draw, tmp: Path) -> list[str]:
    paths = odd_paths(tmp)
    db = ["--db", draw(st.sampled_from([str(tmp / "r.sqlite")] * 4 + [str(tmp / "a_file"),
                                                                      str(tmp), str(tmp / "new.sqlite")]))]
    reports = ["--reports", draw(st.sampled_from([str(tmp / "reports")] * 3 + [draw(paths)]))]
    shape = [("--seq-len", odd_number), ("--batch-size", odd_number), ("--grad-accum", odd_number),
             ("--grad-clip", odd_number), ("--dtype", st.sampled_from(["bf16", "fp32", "fp8", ""])),
             ("--parallel", st.sampled_from(["fsdp2", "ddp", "zero1", "none", "tp", "[/]"])),
             ("--nproc", odd_number), ("--autocast", st.none()), ("--exact", st.none())]
    optimizers = [a for spec in draw(st.lists(optimizer_specs, max_size=3)) for a in ("-o", spec)]
    command = draw(st.sampled_from(["estimate", "estimate", "fit", "compare", "compare", "check",
                                    "export", "report", "list", "validate", "run"]))
    if command == "estimate":
        return ["estimate", "-m", draw(models), *optimizers, "--json",
                *_options(draw, shape), *reports]
    if command == "fit":
        memory = draw(st.one_of(st.sampled_from(["1GiB", "80GiB", "0", "-1GiB", "1e999GiB",
                                                 "10KiB", "1 TB", "nanGiB"]), odd_text))
        return ["fit", "--memory", memory, "-m", draw(models), *optimizers, "--json",
                *_options(draw, shape[1:] if draw(st.booleans()) else shape[:1] + shape[2:]),
                *reports]
    if command == "compare":
        names = draw(st.lists(st.one_of(optimizer_names, odd_text), min_size=1, max_size=3))
        return ["compare", *names, "--no-run", *db, *reports, *_options(draw, [
            ("--model", models), ("--seq-len", odd_number), ("--metric", metric_names),
            ("--by", st.sampled_from(["seq_len", "model", "x", "[/]"])),
            ("--baseline", st.one_of(optimizer_names, odd_text)), ("--suite", odd_text),
            ("--parallel", st.sampled_from(["ddpx2", "none", "fsdp2x0", "[/]"])),
            ("--csv", paths), ("--json", paths), ("--tuned", st.none())])]
    if command == "check":
        suite = draw(st.sampled_from([str(tmp / "suite.yaml")] * 3 + [draw(paths)]))
        baseline = draw(st.sampled_from([str(tmp / "baseline.json"), str(tmp / "odd.json"),
                                         draw(paths)]))
        if "new.sqlite" in db[1]:
            db[1] = str(tmp / "r.sqlite")  # check runs what an empty store lacks: it would train
        return ["check", suite, "--baseline", baseline, "--from-store", *db, *_options(draw, [
            ("--rules", st.one_of(st.builds(lambda m, t: f"{m}:{t}", metric_names, odd_number),
                                  odd_text)),
            ("--format", st.sampled_from(["text", "markdown", "junit", "github", "xml", "[/]"])),
            ("-o", paths)])]
    if command == "export":
        return ["export", *db, *_options(draw, [("--csv", paths), ("--parquet", paths),
                                                ("--tensorboard", paths)])]
    if command == "report":
        return ["report", draw(st.sampled_from([str(tmp / "suite.yaml")] * 3 + [draw(paths)])),
                *db, *reports]
    if command == "run":  # --dry-run: the cells and what is stored, nothing trained
        suite = draw(st.sampled_from([str(tmp / "suite.yaml")] * 3 + [draw(paths)]))
        return ["run", suite, "--dry-run", *db, *reports, *_options(draw, [
            ("--only", st.one_of(st.sampled_from(["*adamw*", "llama_tiny/*", "[", "**"]),
                                 odd_text)),
            ("-j", odd_number), ("--executor", st.sampled_from(["local", "slurm", "x", "[/]"])),
            ("--slurm", st.one_of(st.builds(lambda k, v: f"{k}={v}", odd_text, odd_text),
                                  odd_text)),
            ("--submitit-dir", paths), ("--rerun", st.none()), ("--no-resume", st.none())])]
    if command == "list":
        what = draw(st.one_of(st.sampled_from(["models", "optimizers", "suites"]), odd_text))
        return ["list", what, *_options(draw, [("-v", st.none()), ("--suites-dir", paths)])]
    return ["validate", draw(paths)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder holding the tiny suite, a store of made-up results for it, a baseline that
    passes, a baseline with odd content, and a plain file where folders are expected."""
    tmp = tmp_path_factory.mktemp("fuzz-cli")
    suite = tmp / "suite.yaml"
    suite.write_text(TINY_SUITE)
    store_made_up_results(suite, tmp / "r.sqlite").close()
    (tmp / "a_file").write_text("not a folder\n")
    done = runner.invoke(app, ["check", str(suite), "--baseline", str(tmp / "baseline.json"),
                               "--update", "--from-store", "--db", str(tmp / "r.sqlite")])
    assert done.exit_code == 0, done.output
    (tmp / "odd.json").write_text(json.dumps({"cells": {"[/]": {"x": [1, {"y": None}]}}}))
    here = os.getcwd()
    os.chdir(tmp)  # what an empty path or a relative one writes lands here, not in the checkout
    yield tmp
    os.chdir(here)


def check_one_line(args: list[str], result) -> None:
    where = f"optbench {' '.join(map(repr, args))}"
    assert "Traceback" not in result.output, where + "\n" + result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{where}: {result.exception!r}"
    assert result.exit_code in (0, 2), f"{where}: exit {result.exit_code}\n{result.output}"
    if result.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{where}\n{result.stderr}"


@settings(max_examples=CASES, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_every_command_answers_odd_options_with_ok_or_one_line(data, workspace):
    args = data.draw(command_lines(workspace))
    before = ResultStore(workspace / "r.sqlite").runs()
    check_one_line(args, runner.invoke(app, args))
    assert len(ResultStore(workspace / "r.sqlite").runs()) == len(before)  # nothing stored is lost

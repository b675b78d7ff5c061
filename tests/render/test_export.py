"""`optbench export` and a suite's `log:`: W&B (offline run files, read back record by record),
TensorBoard (event files read back with TensorBoard's own reader), CSV and Parquet."""

from __future__ import annotations

import struct
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from optbench.cli import app
from optbench.config.loader import load_suite
from optbench.config.suite import expand
from optbench.engine.outcome import RunResult
from optbench.results.store import ResultStore
from tests.conftest import TINY_SUITE

runner = CliRunner()
STEPS = 4


def _result(cell, status="ok") -> RunResult:
    metrics = {"optimizer_state_bytes": 1234, "peak_allocated_bytes": 56789.0,
               "tokens_per_s": 1000.0, "model_tflops_per_s": 0.0123, "eval_ppl": 150.0,
               "final_train_loss": 5.25, "eval_loss": float("nan")}
    return RunResult(
        suite=cell.suite, cell_id=cell.id, fingerprint=cell.fingerprint, model=cell.model,
        optimizer=cell.optimizer.display, optimizer_name=cell.optimizer.name,
        seq_len=cell.seq_len, device="cpu", dtype="fp32", status=status, config=cell.config,
        metrics=metrics, env={"torch": "2.13.0"},
        curve=[(i, 6.0 - 0.25 * i, 1e-3 * i) for i in range(1, STEPS + 1)])


@pytest.fixture
def stored(write_suite, tmp_path):
    suite = write_suite(TINY_SUITE, "tiny.yaml")
    cells = expand(load_suite(suite))
    store = ResultStore(tmp_path / "r.sqlite")
    for cell in cells:
        store.save(_result(cell))
    reports = tmp_path / "reports" / cells[0].suite
    reports.mkdir(parents=True)
    _png(reports / f"loss_{cells[0].model}.png")
    _png(reports / "loss_llama_other.png")  # another model's figure: not attached
    return suite, cells, tmp_path


def _png(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([1, 2, 3])
    fig.savefig(path)
    plt.close(fig)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _args(tmp_path):
    return ("--db", tmp_path / "r.sqlite", "--reports", tmp_path / "reports")


# --- TensorBoard ---------------------------------------------------------------------------


def _event_runs(root: Path) -> dict[str, object]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = {}
    for events in root.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events.parent), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        runs[str(events.parent.relative_to(root))] = acc
    return runs


def test_tensorboard_one_run_per_cell_with_curve_metrics_config_and_figures(stored):
    suite, cells, tmp = stored
    result = invoke("export", suite, "--tensorboard", tmp / "tb", *_args(tmp))
    assert result.exit_code == 0, result.output
    runs = _event_runs(tmp / "tb")
    assert len(runs) == len(cells)
    acc = next(a for name, a in runs.items() if cells[0].id.replace("/", "-") in name)
    tags = acc.Tags()
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, STEPS + 1))
    assert loss[-1].value == pytest.approx(6.0 - 0.25 * STEPS)
    by_tokens = acc.Scalars("train_by_tokens/loss")
    assert [e.step for e in by_tokens] == [i * cells[0].tokens_per_step for i in range(1, STEPS + 1)]
    assert acc.Scalars("metrics/tokens_per_s")[0].value == 1000.0
    assert acc.Scalars("metrics/optimizer_state_bytes")[0].value == 1234
    assert "metrics/eval_loss" not in tags["scalars"]  # NaN: not measured, never a point
    assert tags["images"] == [f"figures/loss_{cells[0].model}"]
    assert "config/text_summary" in tags["tensors"]
    # Exported again: the run is replaced, not doubled.
    assert invoke("export", suite, "--tensorboard", tmp / "tb", *_args(tmp)).exit_code == 0
    again = _event_runs(tmp / "tb")
    assert len(again) == len(cells)
    assert all(len(a.Scalars("train/loss")) == STEPS for a in again.values())


# --- W&B, offline --------------------------------------------------------------------------


def _wandb_records(path: Path) -> list:
    """The records of a W&B run file: a 7-byte ':W&B' header, then LevelDB-log blocks of 32 KiB
    whose records are (crc32c 4, length 2, type 1) + payload, FULL or FIRST/MIDDLE/LAST."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, records, pending = path.read_bytes(), 32768, 7, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_one_run_per_cell_with_curve_summary_and_config(stored, monkeypatch):
    suite, cells, tmp = stored
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = invoke("export", suite, "--wandb", "--offline", "--project", "optbench-test",
                    "--wandb-dir", tmp / "wb", *_args(tmp))
    assert result.exit_code == 0, result.output
    assert "W&B (offline): 3 runs" in result.output
    files = sorted((tmp / "wb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == len(cells)
    by_name = {}
    for path in files:
        records = _wandb_records(path)
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        by_name[run.display_name] = records
    name = next(n for n in by_name if cells[0].id in n)
    assert name.startswith(f"{cells[0].suite}/{cells[0].id}#")
    records = by_name[name]
    history = [{i.key or "/".join(i.nested_key): i.value_json for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    losses = [float(h["train/loss"]) for h in history if "train/loss" in h]
    assert losses == [6.0 - 0.25 * i for i in range(1, STEPS + 1)]
    assert [int(h["train/tokens"]) for h in history if "train/tokens" in h] == [
        i * cells[0].tokens_per_step for i in range(1, STEPS + 1)]
    assert any("figures/loss_" in k for h in history for k in h)
    summary = {i.key: i.value_json for r in records if r.WhichOneof("record_type") == "summary"
               for i in r.summary.update}
    assert float(summary["tokens_per_s"]) == 1000.0 and "eval_loss" not in summary
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    config = {i.key: i.value_json for i in run.config.update}
    assert cells[0].model in config["model"] and run.project == "optbench-test"


# --- CSV / Parquet, and bad input ---------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_tables_of_the_whole_store_for_pandas(stored, suffix):
    _, cells, tmp = stored
    path = tmp / f"runs{suffix}"
    result = invoke("export", f"--{suffix[1:]}", path, *_args(tmp))
    assert result.exit_code == 0, result.output
    read = pd.read_csv if suffix == ".csv" else pd.read_parquet
    runs, curves = read(path), read(tmp / f"runs.curves{suffix}")
    assert len(runs) == len(cells) and set(runs["cell_id"]) == {c.id for c in cells}
    assert (runs["tokens_per_s"] == 1000.0).all()
    assert len(curves) == len(cells) * STEPS and {"run_id", "step", "loss", "lr"} <= set(curves)


def test_the_option_not_the_suffix_says_the_format(stored):
    _, cells, tmp = stored
    assert invoke("export", "--parquet", tmp / "runs.pq", *_args(tmp)).exit_code == 0
    assert len(pd.read_parquet(tmp / "runs.pq")) == len(cells)


@pytest.mark.parametrize(("args", "message"), [
    ((), "name a destination: --wandb, --tensorboard DIR, --csv FILE or --parquet FILE"),
    (("--tensorboard", "afile", "--db", "nowhere.sqlite"), "--tensorboard afile: not a writable directory"),
    (("--csv", "x.csv", "--db", "nowhere.sqlite"), "nowhere.sqlite: no results store here"),
])
def test_bad_export_requests_are_one_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    result = invoke("export", *args)
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_online_wandb_without_a_key_is_one_line_before_anything_runs(stored, monkeypatch):
    _, _, tmp = stored
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp))  # no ~/.netrc
    result = invoke("export", "--wandb", *_args(tmp))
    assert result.exit_code == 2 and "W&B: no API key (set WANDB_API_KEY" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_an_unknown_suite_name_exports_nothing(stored):
    _, _, tmp = stored
    result = invoke("export", "no_such_suite", "--csv", tmp / "x.csv", *_args(tmp))
    assert result.exit_code == 0 and "no stored results for suite 'no_such_suite'" in result.output


# --- a suite's `log:` while running ---------------------------------------------------------


def test_log_section_is_typed_and_checked(write_suite):
    suite = load_suite(write_suite(TINY_SUITE + "log:\n  tensorboard: tb\n  wandb: {project: p, offline: true}\n", "l.yaml"))
    assert suite.log.tensorboard == "tb" and suite.log.wandb.project == "p"
    assert suite.log.wandb.offline
    # Where results go is not part of any cell: the same fingerprints as without `log:`.
    plain = load_suite(write_suite(TINY_SUITE, "p.yaml"))
    assert [c.fingerprint for c in expand(suite)] == [c.fingerprint for c in expand(plain)]
    result = invoke("validate", write_suite(TINY_SUITE + "log:\n  wandb: {projekt: p}\n", "b.yaml"))
    assert result.exit_code == 2 and "unknown key 'projekt'" in result.output


def test_stream_skips_cells_that_never_ran_says_each_status_and_closes_on_interrupt(
        stored, write_suite):
    from optbench.commands.export import StreamingLog
    from optbench.config.suite import LogTo
    from rich.console import Console

    _, cells, tmp = stored
    stream = StreamingLog(LogTo(tensorboard=str(tmp / "live")), Console(file=None, quiet=True))
    skipped, crashed, cut = cells
    stream.on_done(skipped, _result(skipped, status="skipped"), 7)
    stream.on_done(crashed, _result(crashed, status="crashed"), 8)  # died before its first step
    stream.on_event(cut, {"event": "start"})
    stream.on_event(cut, {"event": "step", "step": 1, "loss": 6.5})
    stream.close_all()
    runs = _event_runs(tmp / "live")
    assert len(runs) == 2  # the skipped cell opened no run
    statuses = {name: a.Tensors("status/text_summary")[0].tensor_proto.string_val[0].decode()
                for name, a in runs.items()}
    assert sorted(statuses.values()) == ["crashed", "interrupted"]
    (cut_run,) = [a for a in runs.values() if "train/loss" in a.Tags()["scalars"]]
    assert [e.value for e in cut_run.Scalars("train/loss")] == [6.5]


@pytest.mark.slow
def test_run_streams_each_cell_to_tensorboard_while_it_trains(write_suite, tmp_path):
    text = TINY_SUITE.replace("[adamw, sgd, scale]", "[adamw]") + f"log:\n  tensorboard: {tmp_path / 'tb'}\n"
    suite = write_suite(text, "stream.yaml")
    result = invoke("run", suite, "--db", tmp_path / "r.sqlite", "--reports", tmp_path / "rep")
    assert result.exit_code == 0, result.output
    (acc,) = _event_runs(tmp_path / "tb").values()
    steps = load_suite(suite).defaults.steps
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, steps + 1))
    assert acc.Scalars("metrics/tokens_per_s")[0].value > 0
    assert acc.Scalars("metrics/run_id")[0].value == 1

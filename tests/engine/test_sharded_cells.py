"""Sharded cells end to end: ranks under torchrun (gloo on CPU), per-rank state to the byte,
skipped and failing strategies, a rank killed or hung mid-cell."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from optbench.cli import app
from optbench.config.loader import load_suite
from optbench.config.suite import expand
from optbench.engine.runner import Hooks, run_cells
from optbench.metrics import rank_metric
from optbench.models import build_model
from optbench.results.store import ResultStore
from tests.conftest import TINY_SUITE, fsdp2_adamw_state

pytestmark = pytest.mark.slow  # every test starts ranks under torchrun

STATE = "optimizer_state_bytes"


def _suite(write_suite, optimizers: str, parallel: str, extra: str = "", steps: int = 6):
    text = (TINY_SUITE.replace("[adamw, sgd, scale]", optimizers)
            .replace("seq_lens: [32]", f"seq_lens: [32]\n  parallel: {parallel}")
            .replace("steps: 6", f"steps: {steps}{extra}"))
    return write_suite(text, "sharded.yaml")


def test_every_strategy_runs_and_fsdp2_state_is_per_shard_to_the_byte(write_suite, tmp_path):
    suite = _suite(write_suite, "[adamw, scale]", "[ddpx2, fsdp2x2, zero1x2, fsdp2x3]")
    db = tmp_path / "r.sqlite"
    done = CliRunner().invoke(app, ["run", str(suite), "--db", str(db),
                                    "--reports", str(tmp_path / "reports")])
    results = {r.cell_id: r for r in ResultStore(db).runs()}
    status = {cid: r.status for cid, r in results.items()}
    assert all(status[f"llama_tiny/adamw/seq32/{p}"] == "ok"
               for p in ("ddpx2", "fsdp2x2", "zero1x2", "fsdp2x3")), status
    assert status["llama_tiny/scale/seq32/fsdp2x2"] == "ok"
    assert done.exit_code == 0, done.output
    whole = build_model("llama_tiny")
    one_process = 2 * 4 * sum(p.numel() for p in whole.parameters()) + 4 * len(list(whole.parameters()))
    for world in (2, 3):  # 2: even shards; 3: uneven (64 rows -> 22, 22, 20)
        metrics = results[f"llama_tiny/adamw/seq32/fsdp2x{world}"].metrics
        for rank in range(world):
            assert metrics[rank_metric(STATE, rank)] == fsdp2_adamw_state(rank, world)
        assert metrics[STATE] == max(fsdp2_adamw_state(r, world) for r in range(world))
    assert fsdp2_adamw_state(0, 2) + fsdp2_adamw_state(1, 2) == one_process + 4 * len(list(whole.parameters()))
    ddp = results["llama_tiny/adamw/seq32/ddpx2"].metrics
    assert ddp[rank_metric(STATE, 0)] == ddp[rank_metric(STATE, 1)] == one_process
    zero1 = results["llama_tiny/adamw/seq32/zero1x2"].metrics
    assert zero1[rank_metric(STATE, 0)] + zero1[rank_metric(STATE, 1)] == one_process
    # Both ranks' tokens count: 2 ranks x batch 2 x seq 32 per step.
    fsdp = results["llama_tiny/adamw/seq32/fsdp2x2"]
    assert fsdp.tokens_per_step == 128
    assert fsdp.metrics["tokens_per_s"] == pytest.approx(128 / (fsdp.metrics["step_ms"] / 1e3))
    report = (tmp_path / "reports" / "tiny" / "summary.md").read_text()
    assert "| adamw · fsdp2x3 | 2 |" in report  # the per-rank table lists rank 2


def test_zero1_over_an_optimizer_it_cannot_rebuild_is_skipped_with_the_reason(write_suite, tmp_path):
    (result,) = run_cells(expand(load_suite(_suite(write_suite, "[muon]", "[zero1x2]"))))
    assert result.status == "skipped"
    assert "ZeRO-1 rebuilds the optimizer from params" in result.error


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _rank_pid(launcher: int, rank: int) -> int:
    for pid in _children(launcher):
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in env:
            return pid
    raise AssertionError(f"no rank {rank} under {launcher}")


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds ranks through /proc")
@pytest.mark.parametrize("sig,expected", [(signal.SIGKILL, "rank 1 killed by SIGKILL"),
                                          (signal.SIGSTOP, "timed out after 10 s")])
def test_a_rank_that_dies_or_hangs_ends_the_cell_crashed_and_the_suite_goes_on(
        write_suite, tmp_path, sig, expected):
    """A stopped rank stands for a hung one: it ignores SIGTERM, so torchrun kills it with
    SIGKILL after its 30 s grace. (The suite going on is shown once, after the killed rank.)"""
    hang = sig == signal.SIGSTOP
    # Long enough that rank 0's step-3 event (teed by torchrun every 0.1 s) comes mid-cell.
    suite = load_suite(_suite(write_suite, "[adamw]" if hang else "[adamw, sgd]", "[ddpx2]",
                              "\n  timeout_s: 10" if hang else "", steps=200))
    cells = expand(suite)
    state = {}

    def strike_at_step_3(cell, event):
        if cell is cells[0] and event.get("step") == 3 and "done" not in state:
            state["done"] = _rank_pid(state["pid"], 1)
            os.kill(state["done"], sig)

    hooks = Hooks(on_start=lambda cell, pid: state.update(pid=pid), on_event=strike_at_step_3)
    results = run_cells(cells, hooks)
    assert [r.status for r in results] == ["crashed"] + ([] if hang else ["ok"]), \
        [r.error for r in results]
    assert expected in results[0].error
    with pytest.raises(ProcessLookupError):  # no rank is left behind, stopped or not
        os.kill(state["done"], 0)


def test_bad_parallel_values_exit_2_with_one_line(write_suite):
    for parallel in ("[fsdp2]", "[{strategy: fsdp2, nproc: 0}]"):
        done = CliRunner().invoke(app, ["validate", str(_suite(write_suite, "[adamw]", parallel))])
        assert done.exit_code == 2
        assert len(done.output.strip().splitlines()) == 1 and "grid.parallel[0]" in done.output


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_a_cell_spread_over_two_nodes_is_stored_by_node_0(write_suite, tmp_path):
    """Two `optbench run`s on this machine stand for two nodes (one rank each), meeting through
    torchrun's static rendezvous: node 0 holds rank 0 and stores the result, node 1 records that
    its rank ran there."""
    import subprocess

    suite = _suite(write_suite, "[adamw]", "[ddpx2]")
    env = {**os.environ, "OPTBENCH_NNODES": "2", "OPTBENCH_MASTER": f"localhost:{_free_port()}"}
    runs = [subprocess.Popen(
        [sys.executable, "-m", "optbench.cli", "run", str(suite), "--db", str(tmp_path / f"n{n}.db"),
         "--reports", str(tmp_path / f"rep{n}")], env={**env, "OPTBENCH_NODE_RANK": str(n)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for n in (1, 0)]
    outputs = [p.communicate(timeout=300)[0] for p in runs]
    assert [p.returncode for p in runs] == [0, 0], outputs
    (head,) = ResultStore(tmp_path / "n0.db").runs()
    (other,) = ResultStore(tmp_path / "n1.db").runs()
    assert head.status == "ok" and rank_metric(STATE, 1) in head.metrics
    assert other.status == "skipped" and "rank 1 ran on this node" in other.error


def test_several_node_settings_are_checked_before_anything_runs(write_suite, monkeypatch):
    monkeypatch.setenv("OPTBENCH_NNODES", "2")
    monkeypatch.delenv("OPTBENCH_MASTER", raising=False)
    done = CliRunner().invoke(app, ["validate", str(_suite(write_suite, "[adamw]", "[ddpx2]"))])
    assert done.exit_code == 2 and "needs OPTBENCH_MASTER=HOST:PORT" in done.output
    monkeypatch.setenv("OPTBENCH_MASTER", "node0:29500")
    monkeypatch.setenv("OPTBENCH_NNODES", "4")
    monkeypatch.setenv("OPTBENCH_NODE_RANK", "1")
    done = CliRunner().invoke(app, ["validate", str(_suite(write_suite, "[adamw]", "[ddpx2]"))])
    assert done.exit_code == 2 and "do not split evenly over 4 nodes" in done.output


def test_gradient_accumulation_syncs_once_and_ddp_and_fsdp2_agree(write_suite, tmp_path):
    """Two micro-batches per step: the ranks reduce their gradients on the last one only
    (DDP's no_sync, FSDP2's set_requires_gradient_sync), and both strategies train AdamW
    identically, step by step, to float32 rounding."""
    suite = _suite(write_suite, "[adamw]", "[ddpx2, fsdp2x2]", "\n  grad_accum: 2")
    ddp, fsdp = run_cells(expand(load_suite(suite)))
    assert (ddp.status, fsdp.status) == ("ok", "ok"), (ddp.error, fsdp.error)
    assert ddp.config["defaults"]["grad_accum"] == 2
    for (_, a, _), (_, b, _) in zip(ddp.curve, fsdp.curve):
        assert a == pytest.approx(b, rel=1e-5)
    assert ddp.metrics["eval_loss"] == pytest.approx(fsdp.metrics["eval_loss"], rel=1e-5)

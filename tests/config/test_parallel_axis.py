"""The parallel axis of a suite: shorthand and mappings, cell ids, fingerprints, bad values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optbench.config.loader import load_suite
from optbench.config.suite import Parallel, expand, parallel_from_label
from optbench.errors import OptbenchError
from tests.conftest import TINY_SUITE

GRID_AXIS = "seq_lens: [32]\n  parallel: {axis}"


def _suite(write_suite, axis: str, defaults: str = ""):
    text = TINY_SUITE.replace("seq_lens: [32]", GRID_AXIS.format(axis=axis))
    if defaults:
        text = text.replace("steps: 6", f"steps: 6\n  parallel: {defaults}")
    return load_suite(write_suite(text, "par.yaml"))


def test_grid_axis_multiplies_cells_and_names_them(write_suite):
    suite = _suite(write_suite, "[none, ddpx2, {strategy: fsdp2, nproc: 2}, zero1x2]")
    ids = [c.id for c in expand(suite)][:4]
    assert ids == ["llama_tiny/adamw/seq32", "llama_tiny/adamw/seq32/ddpx2",
                   "llama_tiny/adamw/seq32/fsdp2x2", "llama_tiny/adamw/seq32/zero1x2"]
    assert len(expand(suite)) == 12


def test_defaults_parallel_applies_to_every_cell(write_suite):
    text = TINY_SUITE.replace("steps: 6", "steps: 6\n  parallel: {strategy: ddp, nproc: 2}")
    cells = expand(load_suite(write_suite(text)))
    assert {c.parallel for c in cells} == {Parallel("ddp", 2)}
    assert all(c.id.endswith("/ddpx2") for c in cells)


def test_one_process_fingerprint_is_what_it_was_before_strategies(write_suite):
    plain = [c.fingerprint for c in expand(load_suite(write_suite(TINY_SUITE, "a.yaml")))]
    explicit = [c.fingerprint for c in expand(_suite(write_suite, "[none]"))]
    assert plain == explicit
    # The committed CI baseline was written before the parallel axis existed: its cells must
    # still match, or every stored result would turn "not comparable".
    root = Path(__file__).resolve().parents[2]
    baseline = json.loads((root / "baselines" / "ci_memory.json").read_text())
    for cell in expand(load_suite(root / "suites" / "ci_memory.yaml")):
        assert baseline["cells"][cell.id]["fingerprint"] == cell.fingerprint


def test_strategy_and_rank_count_are_fingerprinted(write_suite):
    cells = expand(_suite(write_suite, "[none, ddpx2, ddpx3, fsdp2x2, zero1x2]"))
    prints = [c.fingerprint for c in cells if c.optimizer.name == "adamw"]
    assert len(set(prints)) == 5


def test_label_round_trips():
    for p in (Parallel(), Parallel("ddp", 2), Parallel("fsdp2", 8), Parallel("zero1", 1)):
        assert parallel_from_label(p.label) == p
    assert parallel_from_label("ddp") is None and parallel_from_label("fsdp2x0") is None


BAD_AXES = [
    ("[ddp]", ["grid.parallel[0]", "'ddp'", "fsdp2x2"]),
    ("[{strategy: dp, nproc: 2}]", ["grid.parallel[0].strategy", "'dp'", "none, ddp, fsdp2, zero1"]),
    ("[{strategy: ddp, nproc: 0}]", ["grid.parallel[0].nproc", "positive"]),
    ("[{strategy: ddp, nproc: two}]", ["grid.parallel[0].nproc", "expected an integer"]),
    ("[{strategy: none, nproc: 2}]", ["grid.parallel[0].nproc", "need a strategy"]),
    ("[{strategy: ddp, nproc: 1000}]", ["grid.parallel[0].nproc", "accepted 1..64"]),
    ("[ddpx2, ddpx2]", ["grid.parallel", "'ddpx2' is listed twice"]),
    ("[{strategy: ddp, ranks: 2}]", ["grid.parallel[0]", "unknown key 'ranks'", "nproc"]),
]


@pytest.mark.parametrize("axis,words", BAD_AXES, ids=[a for a, _ in BAD_AXES])
def test_bad_parallel_values_are_one_clear_line(write_suite, axis, words):
    with pytest.raises(OptbenchError) as info:
        _suite(write_suite, axis)
    message = str(info.value)
    assert "\n" not in message and "par.yaml" in message
    for word in words:
        assert word in message, (word, message)


def test_meta_device_takes_a_sharded_cell_without_launch_checks(write_suite, monkeypatch):
    monkeypatch.setenv("OPTBENCH_NNODES", "3")  # would refuse 8 ranks of a cell that trains
    text = TINY_SUITE.replace("device: cpu", "device: meta").replace(
        "seq_lens: [32]", "seq_lens: [32]\n  parallel: [fsdp2x8, ddpx2]")
    cells = expand(load_suite(write_suite(text)))
    assert {c.parallel.label for c in cells} == {"fsdp2x8", "ddpx2"}
    assert not any(c.launches_ranks for c in cells)


def test_meta_device_refuses_more_ranks_than_an_estimate_takes(write_suite):
    text = TINY_SUITE.replace("device: cpu", "device: meta").replace(
        "seq_lens: [32]", "seq_lens: [32]\n  parallel: [fsdp2x4096]")
    with pytest.raises(OptbenchError, match=r"grid.parallel\[0\].nproc: 4096 ranks; a per-rank "
                                            r"estimate takes 1..1024"):
        load_suite(write_suite(text))


def test_more_ranks_than_gpus_is_refused_on_cuda(write_suite, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    text = TINY_SUITE.replace("device: cpu", "device: cuda").replace(
        "seq_lens: [32]", "seq_lens: [32]\n  parallel: [ddpx2]")
    with pytest.raises(OptbenchError, match=r"nproc: 2 ranks per node need 2 GPUs .* has 1"):
        load_suite(write_suite(text))

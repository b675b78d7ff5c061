"""Seeds in suites and in `compare`: one cell per seed; a row's mean over seeds, its interval and
Welch's verdict against the baseline instead of a star."""

from __future__ import annotations

import math

import pytest

from optbench.config.loader import load_suite
from optbench.config.suite import expand
from optbench.engine.outcome import RunResult
from optbench.errors import OptbenchError
from optbench.render.compare import fmt_cell
from optbench.metrics import get_metric
from optbench.results import compare as cmp
from optbench.results import stats
from optbench.results.store import ResultStore
from tests.conftest import TINY_SUITE

SEEDED = TINY_SUITE.replace("seq_lens: [32]", "seq_lens: [32]\n  seeds: [0, 1, 2]")
LOSS = {"adamw": [5.00, 5.02, 4.98], "scale": [4.80, 4.83, 4.79], "sgd": [5.01, 4.95, 5.03]}


def _save(store: ResultStore, cell, metrics: dict, curve=()) -> None:
    """A canned ok result of `cell`."""
    store.save(RunResult(suite=cell.suite, cell_id=cell.id, fingerprint=cell.fingerprint,
                         model=cell.model, optimizer=cell.optimizer.display,
                         optimizer_name=cell.optimizer.name, seq_len=cell.seq_len, device="cpu",
                         dtype="fp32", status="ok", config=cell.config, metrics=metrics,
                         curve=list(curve)))


def test_a_seeds_axis_makes_one_cell_per_seed_named_by_it(write_suite):
    cells = expand(load_suite(write_suite(SEEDED)))
    assert [c.id for c in cells[:3]] == [f"llama_tiny/adamw/seq32/seed{s}" for s in range(3)]
    assert [c.defaults.seed for c in cells[:3]] == [0, 1, 2]
    assert len({c.fingerprint for c in cells}) == 9
    plain = expand(load_suite(write_suite(TINY_SUITE, "plain.yaml")))
    assert cells[0].fingerprint == plain[0].fingerprint  # seed 0 is the cell it always was


@pytest.mark.parametrize("seeds,words", [("[0, 0]", ["grid.seeds", "listed twice"]),
                                        ("[-1]", ["grid.seeds[0]", "0 <= seed < 2^63"])])
def test_bad_seeds_are_one_line(write_suite, seeds, words):
    with pytest.raises(OptbenchError) as info:
        load_suite(write_suite(SEEDED.replace("[0, 1, 2]", seeds)))
    assert all(w in str(info.value) for w in words) and "\n" not in str(info.value)


@pytest.fixture
def store(write_suite, tmp_path):
    s = ResultStore(tmp_path / "r.sqlite")
    for cell in expand(load_suite(write_suite(SEEDED))):
        loss = LOSS[cell.optimizer.name][cell.defaults.seed]
        _save(s, cell, {"final_train_loss": loss, "optimizer_state_bytes": 100})
    return s


def test_compare_rows_aggregate_seeds_with_welch_verdicts(store):
    req = cmp.Request(("scale", "sgd"), metrics=("final_train_loss", "optimizer_state_bytes"))
    names, baseline, metrics = cmp.resolve(req)
    runs = cmp.select(store, names, req, None)
    assert len(runs) == 9  # every seed is kept, not only the latest run
    table = cmp.table_rows(runs, names, ("llama_tiny", 32), metrics, baseline).set_index("name")
    assert list(table["seeds"]) == [3, 3, 3]
    scale = table.loc["scale"]
    expected = stats.summarize(LOSS["scale"])
    assert scale["final_train_loss"] == pytest.approx(sum(LOSS["scale"]) / 3)
    assert (scale["final_train_loss_ci_low"], scale["final_train_loss_ci_high"]) == pytest.approx(
        (expected.ci_low, expected.ci_high))
    assert scale["final_train_loss_verdict"] == "better"  # 0.19 nats lower, tight seeds
    assert scale["final_train_loss_test"] == "paired"  # the same seeds on both sides
    assert table.loc["sgd", "final_train_loss_verdict"] == "within noise"
    assert table.loc["adamw", "final_train_loss_verdict"] == ""  # the baseline itself
    # Identical state on every seed: exact, no noise to speak of, and no ★ anywhere.
    assert scale["optimizer_state_bytes_verdict"] == "within noise"
    assert all(not best for best in table["best"])
    assert cmp.config_notes(runs, ("llama_tiny", 32)) == []  # seeds are one setup


def test_a_seeded_cell_reads_mean_half_interval_and_verdict():
    metric = get_metric("final_train_loss")
    text = fmt_cell(metric, 4.8067, 0.96, best=True, ci=(4.75, 4.86), verdict="better")
    assert text == "4.807 ± 0.055 (0.96×) better"
    assert fmt_cell(metric, 4.8, math.nan, best=True) == "4.800 ★"


def test_time_to_target_over_seeds_from_stored_curves(write_suite, tmp_path):
    """AdamW's seeds end at 4.6 and 4.4 (target: their mean, 4.5, smoothed over 5 steps); SCALE
    gets there at step 1 on seed 0 and step 3 on seed 1 (4.6, 4.55, 4.5), SGD on one seed only."""
    s = ResultStore(tmp_path / "c.sqlite")
    curves = {
        "adamw": [[9, 8, 7, 6, 5, 4.8, 4.7, 4.6, 4.6, 4.6, 4.6, 4.6],   # final 4.6, never <= 4.5
                  [9, 8, 7, 6, 5, 4.5, 4.4, 4.4, 4.4, 4.4, 4.4, 4.4]],  # final 4.4
        "scale": [[4.5] * 3 + [4.0] * 9, [4.6, 4.5, 4.4] + [4.0] * 9],
        "sgd": [[9.0] * 12, [4.5] * 12],
    }
    text = SEEDED.replace("[0, 1, 2]", "[0, 1]")
    for cell in expand(load_suite(write_suite(text, "two.yaml"))):
        losses = curves[cell.optimizer.name][cell.defaults.seed]
        _save(s, cell, {"step_ms": 100.0},
              [(i + 1, loss, 1e-3) for i, loss in enumerate(losses)])
    req = cmp.Request(("scale", "sgd"))
    names, baseline, _ = cmp.resolve(req)
    runs = cmp.select(s, names, req, None)
    table = cmp.time_to_target(runs, names, ("llama_tiny", 32), baseline, ["none"],
                               s.curves([r.run_id for r in runs])).set_index("name")
    assert table["target"].iloc[0] == pytest.approx(4.5)
    # AdamW: seed 1's smoothed curve is (5 + 4.5 + 4.4 * 3)/5 = 4.54 at step 9 and
    # (4.5 + 4.4 * 4)/5 = 4.42 at step 10; seed 0 never gets there and counts all 12 steps.
    assert stats.steps_to_target(list(range(1, 13)), curves["adamw"][1], 4.5, 5) == 10
    assert table.loc["adamw", "steps"] == pytest.approx((10 + 12) / 2)
    assert table.loc["scale", "steps"] == 2.0 and table.loc["scale", "reached"] == 2
    assert table.loc["scale", "speedup"] == pytest.approx(11 / 2)
    assert table.loc["scale", "tokens"] == 2 * 2 * 32  # 2 steps x batch 2 x seq 32, one rank
    assert table.loc["scale", "seconds"] == pytest.approx(0.2)
    assert math.isnan(table.loc["sgd", "steps"]) and table.loc["sgd", "reached"] == 1


def test_each_trial_of_a_search_is_its_own_row_against_the_default_trial(write_suite, tmp_path):
    text = TINY_SUITE.replace(
        "[adamw, sgd, scale]",
        "[{name: adamw, sweep: {lr: {factors: [0.5, 1, 2]}}}, {name: scale, sweep: {lr: [1.0e-4, 1.0e-3]}}]")
    s = ResultStore(tmp_path / "t.sqlite")
    loss = {"adamw@lr=0.5x": 5.2, "adamw@lr=1x": 5.0, "adamw@lr=2x": 4.9,
            "scale@lr=0.0001": 5.5, "scale@lr=0.001": 4.5}
    for cell in expand(load_suite(write_suite(text, "sweep.yaml"))):
        _save(s, cell, {"eval_loss": loss[cell.optimizer.display]})
    req = cmp.Request(("scale",), metrics=("eval_loss",))
    names, baseline, metrics = cmp.resolve(req)
    runs = cmp.select(s, names, req, None)
    assert len(runs) == 5  # no trial hides another
    table = cmp.table_rows(runs, names, ("llama_tiny", 32), metrics, baseline)
    # Each optimizer's default first (scale's 1e-3 is its registry default), then by value.
    assert list(table["optimizer"]) == ["adamw@lr=1x", "adamw@lr=0.5x", "adamw@lr=2x",
                                        "scale@lr=0.001", "scale@lr=0.0001"]
    assert list(table["reference"]) == [True, False, False, False, False]
    assert list(table["eval_loss_vs_adamw"]) == pytest.approx([1.0, 1.04, 0.98, 0.9, 1.1])


def test_tuned_keeps_each_optimizer_s_best_trial_and_flags_an_edge(write_suite, tmp_path):
    text = TINY_SUITE.replace(
        "[adamw, sgd, scale]",
        "[{name: adamw, sweep: {lr: {factors: [0.5, 1, 2]}}}, {name: scale, sweep: {lr: [1.0e-4, 1.0e-3, 1.0e-2]}}]")
    s = ResultStore(tmp_path / "t.sqlite")
    loss = {"adamw@lr=0.5x": 5.2, "adamw@lr=1x": 5.0, "adamw@lr=2x": 4.9,  # best at the edge
            "scale@lr=0.0001": 5.5, "scale@lr=0.001": 4.5, "scale@lr=0.01": 4.8}  # inside
    for cell in expand(load_suite(write_suite(text, "tuned.yaml"))):
        _save(s, cell, {"eval_loss": loss[cell.optimizer.display]})
    req = cmp.Request(("scale",), metrics=("eval_loss",), tuned=True)
    names, baseline, metrics = cmp.resolve(req)
    runs = cmp.select(s, names, req, None)
    pair = ("llama_tiny", 32)
    table = cmp.table_rows(runs, names, pair, metrics, baseline, tuned=True)
    assert list(table["optimizer"]) == ["adamw@lr=2x", "scale@lr=0.001"]
    assert list(table["eval_loss_vs_adamw"])[1] == pytest.approx(4.5 / 4.9)
    notes = cmp.tuned_notes(runs, names, pair, ["none"])
    assert notes[0] == "adamw@lr=2x: best of 3 trials"
    assert "lr 0.002 is the largest tried (3 values, 0.0005 to 0.002): widen the range" in notes[1]
    assert notes[2:] == ["scale@lr=0.001: best of 3 trials"]  # 1e-3 lies inside its range

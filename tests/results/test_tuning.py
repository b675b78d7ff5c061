"""The tuning views on canned stored results: the best trial per optimizer, its chosen values,
the gain over the default setting with Welch's verdict (against scipy), the edge flag, and the
points and PNG of the LR-sensitivity figure, in the suite report and in `compare`."""

from __future__ import annotations

import dataclasses
import math

import pytest
from scipy import stats as scipy_stats

from optbench.config.loader import load_suite
from optbench.config.suite import expand
from optbench.engine.outcome import RunResult
from optbench.render import tuning as render_tuning
from optbench.render.report import write_report
from optbench.results import tuning
from optbench.results.store import ResultStore, runs_frame
from optbench.optimizers import resolve_hparams
from tests.conftest import TINY_SUITE

LR = resolve_hparams("adamw", {}, "llama_tiny")["lr"]  # the default the factors scale

SWEPT = TINY_SUITE.replace(
    "[adamw, sgd, scale]",
    "[{name: adamw, sweep: {lr: {factors: [0.5, 1, 2]}}}, {name: scale, sweep: {lr: [1.0e-4, 3.0e-3]}}]",
).replace("seq_lens: [32]", "seq_lens: [32]\n  seeds: [0, 1, 2]")
# Final eval loss per trial label and seed: adamw is best at 2x, the largest factor tried;
# scale's two values are both away from its default.
EVAL = {"adamw@lr=0.5x": [5.30, 5.32, 5.28], "adamw@lr=1x": [5.00, 5.03, 4.99],
        "adamw@lr=2x": [4.90, 4.92, 4.91], "scale@lr=0.0001": [5.6, 5.5, 5.7],
        "scale@lr=0.003": [4.5, 4.6, 4.4]}


def _result(cell, eval_loss: float) -> RunResult:
    return RunResult(suite=cell.suite, cell_id=cell.id, fingerprint=cell.fingerprint,
                     model=cell.model, optimizer=cell.optimizer.display,
                     optimizer_name=cell.optimizer.name, seq_len=cell.seq_len, device="cpu",
                     dtype="fp32", status="ok", config=cell.config,
                     metrics={"eval_loss": eval_loss, "peak_allocated_bytes": 1 << 20},
                     curve=[(1, 6.0, 1.0), (2, eval_loss, 1.0)])


def _save(store: ResultStore, cell, eval_loss: float) -> None:
    store.save(_result(cell, eval_loss))


@pytest.fixture
def runs(write_suite, tmp_path):
    store = ResultStore(tmp_path / "t.sqlite")
    for cell in expand(load_suite(write_suite(SWEPT))):
        _save(store, cell, EVAL[cell.optimizer.display][cell.defaults.seed])
    return store.runs()


def test_the_best_trial_its_gain_over_the_default_and_welch_s_verdict(runs):
    frame = tuning.tuning_frame(runs).set_index("name")
    adamw = frame.loc["adamw"]
    assert (adamw["trials"], adamw["seeds"], adamw["label"]) == (3, 3, "adamw@lr=2x")
    assert adamw["chosen"] == f"lr {2 * LR:.3g} (2x)"
    assert adamw["eval_loss"] == pytest.approx(sum(EVAL["adamw@lr=2x"]) / 3)
    assert adamw["default_eval_loss"] == pytest.approx(sum(EVAL["adamw@lr=1x"]) / 3)
    assert adamw["delta"] == pytest.approx((sum(EVAL["adamw@lr=2x"]) - sum(EVAL["adamw@lr=1x"])) / 3)
    p = scipy_stats.ttest_rel(EVAL["adamw@lr=2x"], EVAL["adamw@lr=1x"]).pvalue  # seeds pair up
    assert p < 0.05 and adamw["verdict"] == "better"
    interval = scipy_stats.ttest_1samp(EVAL["adamw@lr=2x"], 0).confidence_interval(0.95)
    assert adamw["eval_loss_ci"] == pytest.approx((interval.high - interval.low) / 2)
    assert adamw["edges"] == [f"adamw@lr=2x: lr {2 * LR:g} is the largest tried "
                              f"(3 values, {0.5 * LR:g} to {2 * LR:g}): widen the range"]
    scale = frame.loc["scale"]
    assert scale["label"] == "scale@lr=0.003" and scale["chosen"] == "lr 0.003"
    assert math.isnan(scale["default_eval_loss"]) and scale["verdict"] == ""  # default not tried
    assert scale["edges"] and "largest tried (2 values" in scale["edges"][0]
    assert "sgd" not in frame.index  # one trial: nothing was searched


def test_the_default_is_found_by_its_values_when_a_list_holds_it(write_suite, tmp_path):
    text = TINY_SUITE.replace("[adamw, sgd, scale]", f"[{{name: adamw, sweep: {{lr: [1.0e-4, {LR!r}]}}}}]")
    store = ResultStore(tmp_path / "d.sqlite")
    for cell, loss in zip(expand(load_suite(write_suite(text, "d.yaml"))), [5.5, 5.0]):
        _save(store, cell, loss)
    (row,) = tuning.tuning_frame(store.runs()).to_dict("records")
    assert row["default_eval_loss"] == 5.0 and row["verdict"] == "default is best"


def test_sensitivity_points_hold_each_lr_at_the_best_trial_s_other_settings(runs):
    points = tuning.sensitivity_frame(runs)
    adamw = points[points["name"] == "adamw"].sort_values("value")
    assert len(adamw) == 3 and list(adamw["chosen"]) == [False, False, True]
    assert list(adamw["seeds"]) == [3, 3, 3]
    assert adamw["std"].iloc[0] == pytest.approx(scipy_stats.tstd(EVAL["adamw@lr=0.5x"]))
    assert sorted(points[points["name"] == "scale"]["value"]) == [1e-4, 3e-3]


def test_other_swept_hparams_are_held_at_the_chosen_value(write_suite, tmp_path):
    text = TINY_SUITE.replace(
        "[adamw, sgd, scale]",
        "[{name: adamw, sweep: {lr: {factors: [0.5, 1]}, weight_decay: [0.0, 0.1]}}]")
    store = ResultStore(tmp_path / "w.sqlite")
    for cell in expand(load_suite(write_suite(text))):
        wd = cell.config["optimizer"]["hparams"]["weight_decay"]
        _save(store, cell, 5.0 - wd - cell.config["optimizer"]["hparams"]["lr"])
    points = tuning.sensitivity_frame(store.runs())
    assert len(points) == 2  # the lr line at weight_decay 0.1 (the best), not all four trials
    (row,) = tuning.tuning_frame(store.runs()).to_dict("records")
    assert row["chosen"] == f"lr {LR:.3g} (1x), weight_decay 0.1"


def test_the_suite_report_has_the_tuning_table_and_the_sensitivity_png(runs, tmp_path):
    frame = runs_frame(runs)
    paths = write_report(frame, ResultStore(tmp_path / "t.sqlite").curves(frame["run_id"]),
                         tmp_path / "rep", "t", tuning=tuning.tuning_frame(runs),
                         sensitivity=tuning.sensitivity_frame(runs))
    text = paths[0].read_text()
    assert "**Tuning.**" in text and "| adamw | 3 | 3 | lr " in text
    assert "widen the range" in text
    png = tmp_path / "rep" / "lr_sensitivity_llama_tiny.png"
    assert png in paths and png.stat().st_size > 10_000
    assert "![llama_tiny: final eval loss vs learning rate](lr_sensitivity_llama_tiny.png)" in text


def test_tuning_cells_format_a_missing_default_and_the_sign_of_the_gain(runs):
    cells = render_tuning.tuning_cells(tuning.tuning_frame(runs))
    adamw, scale = cells
    assert adamw[6].startswith("-") and adamw[7] == "better"
    assert scale[5] == "not tried" and scale[6] == "—" and scale[7] == "—"


def test_tuned_time_to_target_keeps_each_optimizer_s_best_trial(write_suite, tmp_path):
    from optbench.results import compare as cmp

    store = ResultStore(tmp_path / "t.sqlite")
    for cell in expand(load_suite(write_suite(SWEPT))):
        _save(store, cell, EVAL[cell.optimizer.display][cell.defaults.seed])
    runs = store.runs()
    curves = store.curves([r.run_id for r in runs])
    pair = ("llama_tiny", 32)
    every = cmp.time_to_target(runs, ["adamw", "scale"], pair, "adamw", ["none"], curves)
    tuned = cmp.time_to_target(runs, ["adamw", "scale"], pair, "adamw", ["none"], curves, tuned=True)
    assert len(every) == 5
    assert list(tuned["optimizer"]) == ["adamw@lr=2x", "scale@lr=0.003"]
    # The target: the best adamw trial's final loss smoothed over its last 5 (here 2) steps.
    assert tuned["target"].iloc[0] == pytest.approx(sum((6.0 + x) / 2 for x in EVAL["adamw@lr=2x"]) / 3)


def test_the_gain_over_the_default_is_tested_on_paired_seeds(runs):
    adamw = tuning.tuning_frame(runs).set_index("name").loc["adamw"]
    assert adamw["test"] == "paired"
    p = scipy_stats.ttest_rel(EVAL["adamw@lr=2x"], EVAL["adamw@lr=1x"]).pvalue
    assert p < 0.05 and adamw["verdict"] == "better"


def test_a_trial_with_a_diverged_seed_is_out_but_still_counts_as_tried(write_suite, tmp_path):
    text = TINY_SUITE.replace("[adamw, sgd, scale]", "[{name: adamw, sweep: {lr: {factors: [1, 2, 4]}}}]")
    text = text.replace("seq_lens: [32]", "seq_lens: [32]\n  seeds: [0, 1]")
    store = ResultStore(tmp_path / "d.sqlite")
    losses = {"adamw@lr=1x": [5.0, 5.1], "adamw@lr=2x": [4.8, None], "adamw@lr=4x": [None, None]}
    for cell in expand(load_suite(write_suite(text))):
        loss = losses[cell.optimizer.display][cell.defaults.seed]
        if loss is None:
            store.save(dataclasses.replace(_result(cell, math.nan), status="diverged"))
        else:
            _save(store, cell, loss)
    (row,) = tuning.tuning_frame(store.runs()).to_dict("records")
    assert row["label"] == "adamw@lr=1x"  # 2x won only on the seed where it did not diverge
    assert (row["trials"], row["out"], row["seeds"]) == (3, 2, 2)
    assert row["edges"] == [f"adamw@lr=1x: lr {LR:g} is the smallest tried (3 values, {LR:g} to "
                            f"{4 * LR:g}): widen the range"]
    assert row["verdict"] == "default is best"
    assert "(2 out)" in render_tuning.tuning_cells(tuning.tuning_frame(store.runs()))[0][1]


def test_two_labelled_setups_of_one_optimizer_are_two_searches(write_suite, tmp_path):
    text = TINY_SUITE.replace("[adamw, sgd, scale]", "[adamw, {name: adamw, hparams: {weight_decay: 0.1}, label: adamw-wd}]")
    store = ResultStore(tmp_path / "l.sqlite")
    for cell, loss in zip(expand(load_suite(write_suite(text))), [5.0, 4.9]):
        _save(store, cell, loss)
    assert tuning.tuning_frame(store.runs()).empty  # one trial each: nothing was searched
    frame = runs_frame(store.runs())
    frame["series_suffix"] = ""
    assert len(render_tuning.best_trials_only(frame, tuning.tuning_frame(store.runs()))) == 2


def test_ratios_are_against_the_baseline_s_default_even_in_a_list(write_suite, tmp_path):
    from optbench.results import compare as cmp

    text = TINY_SUITE.replace("[adamw, sgd, scale]", f"[{{name: adamw, sweep: {{lr: [1.0e-4, {LR!r}, 3.0e-3]}}}}, sgd]")
    store = ResultStore(tmp_path / "r.sqlite")
    for cell, loss in zip(expand(load_suite(write_suite(text))), [5.5, 5.0, 4.9, 6.0]):
        _save(store, cell, loss)
    req = cmp.Request(("sgd",), metrics=("eval_loss",))
    names, baseline, metrics = cmp.resolve(req)
    table = cmp.table_rows(store.runs(), names, ("llama_tiny", 32), metrics, baseline)
    assert table.set_index("optimizer").loc["sgd", "eval_loss_vs_adamw"] == pytest.approx(6.0 / 5.0)
    assert list(table["optimizer"])[:3] == ["adamw@lr=0.001", "adamw@lr=0.0001", "adamw@lr=0.003"]

"""Search spaces: grid and quasi-random trials as ordinary cells, factors of the per-model
default, stable labels and fingerprints, resume, and bad spaces as one line."""

from __future__ import annotations

import pytest

from optbench.commands.common import pending_cells
from optbench.config.loader import load_suite
from optbench.config.suite import expand
from optbench.engine.outcome import RunResult
from optbench.errors import OptbenchError
from optbench.optimizers import resolve_hparams
from optbench.results.store import ResultStore
from tests.conftest import TINY_SUITE

SPACE = TINY_SUITE.replace(
    "[adamw, sgd, scale]",
    "[{name: adamw, sweep: {lr: {factors: [0.5, 1, 2]}, weight_decay: [0.0, 0.1]}}, sgd]")


def test_grid_search_is_the_product_with_factors_of_the_default(write_suite):
    cells = expand(load_suite(write_suite(SPACE)))
    adamw = [c for c in cells if c.optimizer.name == "adamw"]
    default_lr = resolve_hparams("adamw", {}, "llama_tiny")["lr"]
    assert [c.optimizer.display for c in adamw] == [
        f"adamw@lr={f}x,weight_decay={wd}" for f in ("0.5", "1", "2") for wd in ("0", "0.1")]
    assert [c.optimizer.hparams["lr"] for c in adamw[::2]] == pytest.approx(
        [0.5 * default_lr, default_lr, 2 * default_lr])
    assert adamw[0].id == "llama_tiny/adamw@lr=0.5x,weight_decay=0/seq32"
    assert len({c.fingerprint for c in cells}) == 7  # 6 trials and sgd


def test_factors_scale_the_suite_s_own_override(write_suite):
    text = SPACE.replace("{name: adamw, sweep:", "{name: adamw, hparams: {lr: 0.01}, sweep:")
    adamw = [c for c in expand(load_suite(write_suite(text))) if c.optimizer.name == "adamw"]
    assert [c.optimizer.hparams["lr"] for c in adamw[::2]] == pytest.approx([0.005, 0.01, 0.02])


def test_a_trial_is_the_cell_it_would_be_without_a_sweep(write_suite):
    trial = expand(load_suite(write_suite(SPACE.replace("[0.5, 1, 2]", "[1]")
                                          .replace("[0.0, 0.1]", "[0.0]"), "one.yaml")))[0]
    plain = expand(load_suite(write_suite(TINY_SUITE, "plain.yaml")))[0]
    assert plain.optimizer.hparams["weight_decay"] == 0.0  # the trial sets the default itself
    assert trial.fingerprint == plain.fingerprint  # stored results carry over


QUASI = SPACE + "search: {method: quasi_random, trials: 5, seed: 3}\n"


def test_quasi_random_trials_are_fixed_by_their_seed(write_suite):
    first = [c.optimizer.display for c in expand(load_suite(write_suite(QUASI, "q1.yaml")))]
    again = [c.optimizer.display for c in expand(load_suite(write_suite(QUASI, "q2.yaml")))]
    other = [c.optimizer.display for c in expand(load_suite(
        write_suite(QUASI.replace("seed: 3", "seed: 4"), "q3.yaml")))]
    assert first == again and first != other
    adamw = [label for label in first if label.startswith("adamw@")]
    assert len(adamw) == 5
    factors = [float(label.split("lr=")[1].split("x")[0]) for label in adamw]
    assert all(0.5 <= f <= 2 for f in factors)  # log-uniform between the smallest and largest


def test_a_half_finished_sweep_resumes_with_the_rest(write_suite, tmp_path):
    cells = expand(load_suite(write_suite(SPACE)))
    store = ResultStore(tmp_path / "r.sqlite")
    for cell in cells[:3]:
        store.save(RunResult(suite=cell.suite, cell_id=cell.id, fingerprint=cell.fingerprint,
                             model=cell.model, optimizer=cell.optimizer.display,
                             optimizer_name=cell.optimizer.name, seq_len=cell.seq_len,
                             device="cpu", dtype="fp32", status="ok", config=cell.config))
    assert [c.id for c in pending_cells(cells, store, rerun=False)] == [c.id for c in cells[3:]]


BAD_SPACES = [
    ("{lr: {factors: [-1, 2]}}", ["sweep.lr.factors[0]", "not a positive number"]),
    ("{lr: []}", ["sweep.lr", "non-empty list"]),
    ("{lr: [0.1, 0.1]}", ["sweep.lr", "listed twice"]),
    ("{lrr: [0.1]}", ["sweep", "no hparam 'lrr'", "did you mean 'lr'"]),
    ("{lr: {factor: [2]}}", ["sweep.lr", "{factors: [...]}"]),
    ("{lr: [abc]}", ["sweep", "'lr'", "expected a finite number"]),
    ("{fused: {factors: [2]}}", ["sweep", "not a number", "list its values"]),
]


@pytest.mark.parametrize("space,words", BAD_SPACES, ids=[s for s, _ in BAD_SPACES])
def test_bad_search_spaces_are_one_line(write_suite, space, words):
    text = TINY_SUITE.replace("[adamw, sgd, scale]", f"[{{name: adamw, sweep: {space}}}]")
    with pytest.raises(OptbenchError) as info:
        load_suite(write_suite(text))
    message = str(info.value)
    assert "\n" not in message and "grid.optimizers[0].sweep" in message
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize("search,words", [
    ("{method: random}", ["search.method", "grid, quasi_random"]),
    ("{method: quasi_random, trials: 0}", ["search.trials", "positive"]),
])
def test_bad_search_settings_are_one_line(write_suite, search, words):
    with pytest.raises(OptbenchError) as info:
        load_suite(write_suite(SPACE + f"search: {search}\n"))
    assert all(w in str(info.value) for w in words), str(info.value)


def test_search_space_is_every_optimizer_s_space_unless_it_has_its_own(write_suite):
    text = TINY_SUITE.replace("[adamw, sgd, scale]", "[adamw, sgd, {name: scale, sweep: {adam_lr: [0.01]}}]")
    text += "search: {space: {lr: {factors: [0.5, 1]}}}\n"
    cells = expand(load_suite(write_suite(text)))
    assert [c.optimizer.display for c in cells] == [
        "adamw@lr=0.5x", "adamw@lr=1x", "sgd@lr=0.5x", "sgd@lr=1x", "scale@adam_lr=0.01"]
    sgd_lr = resolve_hparams("sgd", {}, "llama_tiny")["lr"]
    assert cells[2].optimizer.hparams["lr"] == pytest.approx(0.5 * sgd_lr)


@pytest.mark.parametrize("space,words", [
    ("{adam_lr: [0.1]}", ["grid.optimizers[0], from search.space", "no hparam 'adam_lr'"]),
    ("{lr: {factors: [0]}}", ["grid.optimizers[0], from search.space.lr.factors[0]",
                              "not a positive number"]),
])
def test_a_bad_suite_wide_space_names_the_optimizer_and_the_key(write_suite, space, words):
    text = TINY_SUITE + f"search: {{space: {space}}}\n"
    with pytest.raises(OptbenchError) as info:
        load_suite(write_suite(text))
    assert all(w in str(info.value) for w in words) and "\n" not in str(info.value)


def test_an_empty_sweep_opts_out_of_the_suite_wide_space(write_suite):
    text = TINY_SUITE.replace("[adamw, sgd, scale]", "[{name: adamw, sweep: {}}, sgd]")
    text += "search: {space: {lr: {factors: [0.5, 1]}}}\n"
    assert [c.optimizer.display for c in expand(load_suite(write_suite(text)))] == [
        "adamw", "sgd@lr=0.5x", "sgd@lr=1x"]

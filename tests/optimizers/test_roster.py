"""Roster-wide rules: per-model paper defaults, hparam-aware state formulas, device skips."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from optbench.engine.state_bytes import optimizer_state_bytes
from optbench.models import build_model
from optbench.optimizers import build_optimizer, expected_state_bytes, get_spec, list_specs, registry
from optbench.config.loader import load_suite
from optbench.config.suite import expand
from optbench.engine.train import train_cell
from tests.conftest import TINY_SUITE


def test_paper_defaults_per_model_size_and_suite_overrides_win(write_suite):
    text = """
name: paper
defaults: {device: cpu}
grid:
  models: [llama_60m, llama_1b]
  seq_lens: [256]
  optimizers: [galore, scale, {name: apollo, hparams: {rank: 64}}]
"""
    cells = {c.id: c.optimizer.hparams for c in expand(load_suite(write_suite(text)))}
    assert cells["llama_60m/galore/seq256"]["rank"] == 128
    assert cells["llama_1b/galore/seq256"]["rank"] == 512
    assert cells["llama_1b/scale/seq256"]["lr"] == 2e-4 and cells["llama_1b/scale/seq256"]["adam_lr"] == 1e-3
    assert cells["llama_60m/scale/seq256"]["adam_lr"] == 2e-2
    assert cells["llama_1b/apollo/seq256"]["rank"] == 64  # the suite's own value beats the paper's


def test_every_per_model_default_is_a_known_hparam_and_model():
    from optbench.models import MODEL_SIZES

    for spec in list_specs():
        for model, overrides in spec.defaults_by_model.items():
            assert model in MODEL_SIZES, (spec.name, model)
            assert set(overrides) <= set(spec.default_hparams), (spec.name, overrides)


@pytest.mark.parametrize("name,rank", [("galore", 8), ("apollo", 4), ("fira", 16)])
def test_state_formula_follows_a_rank_override(name, rank):
    torch.manual_seed(0)
    model = build_model("llama_tiny")
    opt = build_optimizer(name, model, rank=rank)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    assert optimizer_state_bytes(opt) == expected_state_bytes(name, model, rank=rank)
    assert expected_state_bytes(name, model, rank=rank) < expected_state_bytes(name, model)


def test_optimizer_that_cannot_run_here_is_skipped_with_the_reason(write_suite):
    cuda_only = dataclasses.replace(get_spec("sgd"), devices=("cuda",))
    text = TINY_SUITE.replace("[adamw, sgd, scale]", "[sgd]")
    with registry.override(cuda_only):
        (cell,) = expand(load_suite(write_suite(text)))
        result = train_cell(cell, emit=lambda e: None)
    assert result.status == "skipped"
    assert "sgd runs only on cuda, not cpu" in result.error


def test_run_records_the_formula_beside_the_measurement(write_suite):
    text = TINY_SUITE.replace("[adamw, sgd, scale]", "[galore]")
    (cell,) = expand(load_suite(write_suite(text)))
    result = train_cell(cell, emit=lambda e: None)
    m = result.metrics
    assert result.status == "ok"
    assert m["optimizer_state_bytes"] == m["expected_optimizer_state_bytes"] > 0


@pytest.mark.parametrize("name", ["adamw", "spam", "galore", "apollo_mini", "muon", "adamw8bit"])
def test_memory_tracker_sees_exactly_the_counted_state(name):
    """Regression: torch's MemTracker walks only top-level per-param state values, so it
    missed projector objects (GaLore/APOLLO) and crashed on SPAM's non-dict state entry."""
    from optbench.engine.measure import state_aware_tracker

    torch.manual_seed(0)
    model = build_model("llama_tiny")
    opt = build_optimizer(name, model)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    tracker = state_aware_tracker()
    tracker.track_external(model, opt)
    (snapshot,) = tracker.get_tracker_snapshot("current").values()
    opt_part = sum(v for k, v in snapshot.items() if getattr(k, "value", k) == "Optstate")
    assert opt_part == optimizer_state_bytes(opt) > 0


@pytest.mark.parametrize("name", ["spam", "galore"])
def test_tracked_run_has_state_at_least_the_counted_state(write_suite, name):
    # At the peak the optimizer part may also hold temporaries made inside optimizer.step().
    text = TINY_SUITE.replace("[adamw, sgd, scale]", f"[{name}]")
    (cell,) = expand(load_suite(write_suite(text)))
    result = train_cell(cell, emit=lambda e: None)
    assert result.status == "ok"
    m = result.metrics
    assert m["peak_optimizer_state_bytes"] >= m["optimizer_state_bytes"]


@pytest.mark.parametrize("spec", list_specs(), ids=lambda s: s.name)
def test_every_entry_names_its_source_of_truth_and_every_default_s_origin(spec):
    assert spec.reference.strip(), f"{spec.name}: no reference (the code it is held against)"
    missing = sorted(set(spec.default_hparams) - set(spec.default_sources))
    assert not missing, f"{spec.name}: defaults without a stated source: {missing}"
    assert all(d.strip().endswith(".") for d in spec.deviations), spec.deviations


def test_a_default_source_for_an_unknown_hparam_is_refused():
    spec = get_spec("sgd")
    with pytest.raises(ValueError, match="default_sources names no hparam"):
        dataclasses.replace(spec, default_sources={"momentun": "somewhere"})


def test_reference_deviations_and_default_sources_leave_the_fingerprint_alone(write_suite):
    """They describe an entry; only a change of what runs (version, source, policy, hparams)
    makes stored results not comparable."""
    suite = load_suite(write_suite(TINY_SUITE))
    (before, *_) = expand(suite)
    spec = get_spec(before.optimizer.name)
    described = dataclasses.replace(
        spec, reference="elsewhere", deviations=("Another one.",),
        default_sources={k: "somewhere" for k in spec.default_hparams},
    )
    with registry.override(described):
        (after, *_) = expand(suite)
    assert after.fingerprint == before.fingerprint

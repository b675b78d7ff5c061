"""Model sizes, the lr schedule, bf16/grad-accum bursts, and the worker's fault mapping."""

from __future__ import annotations

import math

import pytest
import torch

from optbench.models import MODEL_SIZES, build_model
from optbench.config.loader import load_suite
from optbench.config.schedules import LRSchedule, lr_factor
from optbench.config.suite import expand
from optbench.engine.train import train_cell
from optbench.errors import OptbenchError
from tests.conftest import TINY_SUITE

# Parameter counts of the GaLore / APOLLO / SCALE configs, computed by hand from
# (vocab 32000, hidden h, intermediate i, layers L): 2*32000*h + L*(4h^2 + 3hi + 2h) + h.
PAPER_PARAMS = {
    "llama_60m": 58_073_600,
    "llama_130m": 134_105_856,
    "llama_350m": 367_969_280,
    "llama_1b": 1_339_082_752,
    "llama_7b": 6_738_415_616,
}


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_paper_sizes_have_the_papers_parameter_counts(name):
    model = build_model(name, device="meta")  # shapes only: nothing is allocated
    assert sum(p.numel() for p in model.parameters()) == PAPER_PARAMS[name]
    assert model.lm_head.weight is not model.model.embed_tokens.weight  # untied
    assert model.config.rms_norm_eps == 1e-6 and model.config.vocab_size == 32000


def test_every_size_matches_its_formula():
    for name, size in MODEL_SIZES.items():
        model = build_model(name, device="meta")
        assert sum(p.numel() for p in model.parameters()) == size.n_params(), name


def test_cosine_schedule_with_warmup():
    f = lr_factor(LRSchedule(kind="cosine", warmup_steps=4, min_ratio=0.1), steps=14)
    assert [f(i) for i in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f(4) == pytest.approx(1.0)
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    linear = lr_factor(LRSchedule(kind="linear", warmup_steps=0, min_ratio=0.0), steps=10)
    assert [linear(i) for i in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    # REX at z = 1/2: (1 - 1/2) / (1/2 + 1/4) = 2/3, above linear's 1/2 (it decays late)
    rex = lr_factor(LRSchedule(kind="rex", warmup_steps=0, min_ratio=0.0), steps=10)
    assert [rex(i) for i in (0, 5, 10)] == pytest.approx([1.0, 2 / 3, 0.0])
    constant = lr_factor(LRSchedule(kind="constant", warmup_steps=0), steps=10)
    assert [constant(i) for i in (0, 5, 9)] == [1.0, 1.0, 1.0]


def test_wsd_holds_the_peak_then_cools_down_linearly_over_the_last_fraction():
    # 20 steps, warm-up 2, cooldown 0.25 -> the last 5 steps (15..19) decay from 1 toward 0.1.
    f = lr_factor(LRSchedule(kind="wsd", warmup_steps=2, min_ratio=0.1, cooldown_fraction=0.25),
                  steps=20)
    assert [f(i) for i in range(2)] == pytest.approx([0.5, 1.0])
    assert [f(i) for i in range(2, 16)] == pytest.approx([1.0] * 14)
    assert [f(i) for i in range(16, 20)] == pytest.approx([0.1 + 0.9 * (1 - k / 5) for k in (1, 2, 3, 4)])
    assert f(20) == pytest.approx(0.1)
    # A cooldown longer than what follows the warm-up starts when the warm-up ends.
    g = lr_factor(LRSchedule(kind="wsd", warmup_steps=4, min_ratio=0.0, cooldown_fraction=1.0),
                  steps=8)
    assert [g(i) for i in range(3, 8)] == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.25])


def _scheduled(write_suite, schedule: str):
    text = TINY_SUITE.replace("  lr_schedule: {kind: cosine, warmup_steps: 2, min_ratio: 0.1}",
                              f"  lr_schedule: {{{schedule}}}")
    (cell, *_) = expand(load_suite(write_suite(text, "schedule.yaml")))
    return cell


def test_cooldown_fraction_is_checked_and_kept_out_of_other_schedules_fingerprints(write_suite):
    base = _scheduled(write_suite, "kind: cosine, warmup_steps: 2, min_ratio: 0.1")
    other = _scheduled(write_suite, "kind: cosine, warmup_steps: 2, min_ratio: 0.1, "
                                    "cooldown_fraction: 0.5")
    assert base.fingerprint == other.fingerprint  # cosine never reads it
    wsd = [_scheduled(write_suite, f"kind: wsd, warmup_steps: 2, cooldown_fraction: {c}")
           for c in (0.2, 0.5)]
    assert len({wsd[0].fingerprint, wsd[1].fingerprint, base.fingerprint}) == 3
    with pytest.raises(OptbenchError, match=r"defaults.lr_schedule.cooldown_fraction: 1.5 is not "
                                            r"in 0..1"):
        _scheduled(write_suite, "kind: wsd, cooldown_fraction: 1.5")


def _cell(write_suite, extra: str, optimizer: str = "adamw"):
    text = TINY_SUITE.replace("[adamw, sgd, scale]", f"[{optimizer}]").replace(
        "eval_batches: 1", "eval_batches: 1\n" + extra)
    (cell,) = expand(load_suite(write_suite(text, "cell.yaml")))
    return cell


@pytest.mark.parametrize("optimizer", ["adamw", "scale"])
def test_bf16_weights_train_and_state_is_bf16(write_suite, optimizer):
    cell = _cell(write_suite, "  dtype: bf16", optimizer)
    result = train_cell(cell, emit=lambda e: None)
    assert result.status == "ok"
    m = result.metrics
    assert m["param_bytes"] == 2 * m["n_params"]
    assert math.isfinite(m["eval_loss"])
    flops = MODEL_SIZES[cell.model].flops_per_token(cell.seq_len)
    assert m["model_flops_per_token"] == flops
    assert m["model_tflops_per_s"] == pytest.approx(m["tokens_per_s"] * flops / 1e12)
    assert "mfu_percent" not in m  # CPU: no peak to divide by


def test_grad_accum_runs_every_micro_batch_and_is_tracked(write_suite):
    """grad_accum 2 consumes twice the tokens per step (MemTracker handles the second forward)."""
    events = []
    two = train_cell(_cell(write_suite, "  grad_accum: 2"), emit=events.append)
    steps = [e for e in events if e["event"] == "step"]
    assert two.status == "ok" and len(steps) == 6 and events[0]["event"] == "start"
    one = train_cell(_cell(write_suite, "  grad_accum: 1"), emit=lambda e: None)
    assert two.metrics["peak_allocated_bytes"] > 0
    # a different stream of batches, so a different curve from step 2 on
    assert [p[1] for p in two.curve][1:] != [p[1] for p in one.curve][1:]


def test_autocast_runs_on_cpu(write_suite):
    result = train_cell(_cell(write_suite, "  autocast: true"), emit=lambda e: None)
    assert result.status == "ok"


def test_worker_maps_cpu_allocation_failure_to_oom():
    from optbench.engine.worker import is_oom

    assert is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"))
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_oom(RuntimeError("shape mismatch"))


def test_compile_false_keeps_every_stored_fingerprint_and_true_is_a_new_experiment(write_suite):
    from optbench.config.suite import fingerprint

    plain = _cell(write_suite, "")
    before = {**plain.config, "defaults": dict(plain.config["defaults"])}
    del before["defaults"]["compile"]  # a config as stored before the key existed
    assert fingerprint(before, plain.corpus) == plain.fingerprint
    assert _cell(write_suite, "  compile: true").fingerprint != plain.fingerprint
    with pytest.raises(OptbenchError, match=r"steps > max\(warmup, 3\) \(with compile: true, "
                                            r"step 3 compiles\)"):
        text = TINY_SUITE.replace("[adamw, sgd, scale]", "[adamw]").replace(
            "steps: 6", "steps: 3").replace("warmup: 2", "warmup: 0")
        load_suite(write_suite(text.replace("eval_batches: 1", "eval_batches: 1\n  compile: true"),
                               "few.yaml"))


def test_compile_is_refused_for_meta_and_skipped_for_a_double_backward(write_suite):
    text = TINY_SUITE.replace("device: cpu", "device: meta").replace(
        "eval_batches: 1", "eval_batches: 1\n  compile: true")
    with pytest.raises(OptbenchError, match=r"defaults.compile: a device: meta suite traces"):
        load_suite(write_suite(text, "meta.yaml"))
    result = train_cell(_cell(write_suite, "  compile: true", "adahessian"), emit=lambda e: None)
    assert result.status == "skipped" and "create_graph" in result.error


def test_compile_without_a_compiler_is_a_clear_skip(write_suite, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    result = train_cell(_cell(write_suite, "  compile: true"), emit=lambda e: None)
    assert result.status == "skipped"
    assert result.error.startswith("compile: true needs a C++ compiler on PATH for TorchInductor")


@pytest.mark.slow
def test_a_compiled_cell_trains_like_eager_and_times_its_compile_apart(write_suite):
    """The same losses as eager (to float rounding), the compile step in compile_s and never in
    the step times (steps 1-2 tracked eager, 3 compiles, 4-6 timed)."""
    eager = train_cell(_cell(write_suite, ""), emit=lambda e: None)
    compiled = train_cell(_cell(write_suite, "  compile: true"), emit=lambda e: None)
    assert compiled.status == "ok", compiled.error
    assert [c[1] for c in compiled.curve] == pytest.approx([c[1] for c in eager.curve], rel=1e-4)
    m = compiled.metrics
    assert m["compile_s"] > 1.0 > m["step_ms"] / 1e3  # compiling takes seconds; a step, ms
    assert "compile_s" not in eager.metrics


def test_schedule_free_is_evaluated_at_its_average_weights(write_suite, monkeypatch):
    """train_cell evaluates inside evaluation_weights(optimizer): for schedule-free, every
    group is in eval mode (weights at x) during the evaluation and back in train mode after."""
    import contextlib

    from optbench.engine import train as train_module

    during = []

    @contextlib.contextmanager
    def watched(optimizer):
        with real(optimizer):
            during.append([g["train_mode"] for g in optimizer.param_groups])
            yield
        during.append([g["train_mode"] for g in optimizer.param_groups])

    real = train_module.evaluation_weights
    monkeypatch.setattr(train_module, "evaluation_weights", watched)
    result = train_cell(_cell(write_suite, "", "schedulefree_adamw"), emit=lambda e: None)
    assert result.status == "ok"
    assert during == [[False], [True]]

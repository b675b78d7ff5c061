"""Library optimizers: exact state bytes after one step, and a falling loss on a fixed batch."""

from __future__ import annotations

import pytest
import torch

from optbench.engine.state_bytes import optimizer_state_bytes
from optbench.optimizers import expected_state_bytes, get_spec, library  # noqa: F401  (registers)
from optbench.config.loader import load_suite
from optbench.config.suite import expand
from optbench.engine.train import train_cell
from tests.conftest import TINY_SUITE
from tests.optimizers.fixed_batch import train_on_fixed_batch

NAMES = [
    "sgd_momentum", "adafactor", "adamw8bit", "lion", "adam_mini", "adabelief", "exadam",
    "adamp", "spam", "stable_spam", "sgd_sai", "adahessian", "sophia",
]
HESSIAN = ["adahessian", "sophia"]


def test_entries_are_registered_with_their_metadata():
    for name in NAMES:
        spec = get_spec(name)
        assert spec.version == "1" and spec.devices == ("cpu", "cuda")
        assert "arXiv:" in spec.paper or name == "sgd_momentum"
        assert spec.needs_create_graph == (name in HESSIAN)
    assert get_spec("lion").source.startswith("pytorch_optimizer.Lion 4.")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", NAMES)
def test_expected_state_bytes_match_measured(name, dtype):
    model, opt, _ = train_on_fixed_batch(name, dtype, steps=1)
    assert optimizer_state_bytes(opt) == expected_state_bytes(name, model)


def test_adamw8bit_keeps_small_tensors_in_float32():
    """bnb's min_8bit_size: the 64-element norm weights get float32 states even in bf16."""
    model, opt, _ = train_on_fixed_batch("adamw8bit", torch.bfloat16, steps=1)
    norm, embed = model.model.norm.weight, model.model.embed_tokens.weight
    assert opt.state[norm]["state1"].dtype == torch.float32
    assert opt.state[embed]["state1"].dtype == torch.uint8


def test_adam_mini_state_is_float32_for_bf16_params():
    model, opt, _ = train_on_fixed_batch("adam_mini", torch.bfloat16, steps=1)
    assert {t.dtype for s in opt.state.values() for t in s.values() if torch.is_tensor(t)} == {
        torch.float32
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_default_hparams_lower_the_loss_on_a_fixed_batch(name):
    _, _, losses = train_on_fixed_batch(name, torch.float32, steps=15)
    assert losses[-1] < losses[0] - 0.2, losses


def _cell(write_suite, optimizer: str):
    text = TINY_SUITE.replace("[adamw, sgd, scale]", f"[{optimizer}]")
    (cell,) = expand(load_suite(write_suite(text, "cell.yaml")))
    return cell


@pytest.mark.slow
@pytest.mark.parametrize("name", HESSIAN)
def test_hessian_optimizers_train_a_cell_under_the_memory_tracker(write_suite, name):
    """train_cell's step 2 runs under MemTracker; update_period 1 puts a Hessian-vector
    product (a second backward through the create_graph graph) inside that tracked step."""
    optimizer = f"{{name: {name}, hparams: {{update_period: 1}}}}"
    result = train_cell(_cell(write_suite, optimizer), emit=lambda e: None)
    assert result.status == "ok", result.error
    metrics = result.metrics
    assert metrics["optimizer_state_bytes"] == 3 * metrics["param_bytes"]
    assert metrics["tracked_peak_bytes"] > 0

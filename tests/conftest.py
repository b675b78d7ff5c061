"""Shared fixtures: an isolated tokenizer/data cache and a tiny, fast suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TINY_SUITE = """\
name: tiny
description: tiny end-to-end suite for tests
defaults:
  device: cpu
  steps: 6
  warmup: 2
  batch_size: 2
  eval_batches: 1
  lr_schedule: {kind: cosine, warmup_steps: 2, min_ratio: 0.1}
grid:
  models: [llama_tiny]
  seq_lens: [32]
  optimizers: [adamw, sgd, scale]
data:
  source: kjv
  max_tokens: 60000
"""


@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory) -> Path:
    """One tokenizer/token cache for the whole test session (children inherit the env var)."""
    cache = Path(os.environ.get("OPTBENCH_TEST_CACHE") or tmp_path_factory.mktemp("cache"))
    os.environ["OPTBENCH_CACHE"] = str(cache)
    return cache


@pytest.fixture
def write_suite(tmp_path):
    """write_suite(text, name='s.yaml') -> Path of a suite file in tmp_path."""

    def write(text: str, name: str = "s.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture
def tiny_suite(write_suite) -> Path:
    return write_suite(TINY_SUITE, "tiny.yaml")


def fsdp2_adamw_state(rank: int, world: int) -> int:
    """AdamW's state on one FSDP2 rank of llama_tiny (fp32): its dim-0 chunk (fully_shard
    splits rows in chunks of ceil(rows / world), the last ranks holding fewer or none) of both
    moments, plus the float32 `step` that every rank keeps whole for every parameter."""
    import math

    from optbench.models import build_model

    total = 0
    for p in build_model("llama_tiny").parameters():
        rows = p.shape[0]
        chunk = math.ceil(rows / world)
        local_rows = max(0, min(chunk, rows - rank * chunk))
        total += 2 * 4 * local_rows * (p.numel() // rows) + 4
    return total


def stored_result(cell, metrics: dict | None = None, status: str = "ok"):
    """A RunResult for `cell` as a finished run would store it, with made-up numbers: for tests
    of what reads the store (reports, compare, check, export) that need no training."""
    from optbench.engine.outcome import RunResult

    metrics = metrics if metrics is not None else {
        "optimizer_state_bytes": 1234, "peak_allocated_bytes": 56789.0, "tokens_per_s": 1000.0,
        "final_train_loss": 5.25, "eval_loss": 5.5}
    return RunResult(suite=cell.suite, cell_id=cell.id, fingerprint=cell.fingerprint,
                     model=cell.model, optimizer=cell.optimizer.display,
                     optimizer_name=cell.optimizer.name, seq_len=cell.seq_len, device="cpu",
                     dtype="fp32", status=status, config=cell.config, metrics=metrics,
                     curve=[(1, 6.0, 1e-3), (2, 5.5, 1e-3)])


def store_made_up_results(suite_path, db):
    """A store at `db` holding `stored_result` for every cell of the suite at `suite_path`."""
    from optbench.config.loader import load_suite
    from optbench.config.suite import expand
    from optbench.results.store import ResultStore

    store = ResultStore(db)
    for cell in expand(load_suite(suite_path)):
        store.save(stored_result(cell))
    return store

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

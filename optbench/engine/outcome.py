"""The typed records of a cell's run: what the worker produces, and what the store keeps.

A `CellOutcome` crosses the process boundary as JSON (worker -> runner); a `RunResult` is the
outcome joined with the cell's identity, as `optbench.results.store` saves it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from optbench.config.suite import Cell

Curve = list[tuple[int, float, float]]  # (step, loss, lr)
# The memory timeline of the tracked step with the larger peak: [phase, *part bytes] per moment
# (optbench.engine.measure.TIMELINE_PHASES, optbench.metrics.MEMORY_PARTS).
Timeline = list[list[int]]


@dataclass
class CellOutcome:
    """What running (or tracing) one cell produced."""

    status: str  # one of optbench.metrics.STATUSES
    error: str | None = None
    traceback: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    curve: Curve = field(default_factory=list)
    env: dict[str, Any] = field(default_factory=dict)
    started_at: float | None = None
    ended_at: float | None = None
    timeline: Timeline = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "CellOutcome":
        names = {f.name for f in dataclasses.fields(cls)}
        outcome = cls(**{k: v for k, v in doc.items() if k in names})
        outcome.curve = [tuple(point) for point in outcome.curve]
        return outcome


@dataclass
class RunResult:
    """One finished (or failed) cell, as stored."""

    suite: str
    cell_id: str
    fingerprint: str
    model: str
    optimizer: str
    optimizer_name: str
    seq_len: int
    device: str
    dtype: str
    status: str
    config: dict[str, Any]
    error: str | None = None
    traceback: str | None = None
    env: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    curve: Curve = field(default_factory=list)
    started_at: float | None = None
    ended_at: float | None = None
    timeline: Timeline = field(default_factory=list)

    @property
    def parallel(self) -> str:
        """The strategy and rank count, 'fsdp2x2'; 'none' for one process (and for runs stored
        before strategies existed)."""
        p = self.config.get("defaults", {}).get("parallel") or {}
        strategy = p.get("strategy", "none")
        return "none" if strategy == "none" else f"{strategy}x{p.get('nproc', 1)}"

    @property
    def seed(self) -> int:
        return int(self.config.get("defaults", {}).get("seed", 0))

    @property
    def jobs(self) -> int:
        """How many cells ran on the machine at once when this one did (run --jobs)."""
        return int(self.env.get("jobs") or 1)

    @property
    def tokens_per_step(self) -> int | None:
        """Tokens of one optimizer step over all ranks (`batch_size` is per rank)."""
        d = self.config.get("defaults", {})
        try:
            nproc = (d.get("parallel") or {}).get("nproc", 1)
            return int(nproc * d["batch_size"] * d.get("grad_accum", 1) * self.seq_len)
        except (KeyError, TypeError):
            return None

    @classmethod
    def of(cls, cell: Cell, outcome: CellOutcome) -> "RunResult":
        return cls(
            suite=cell.suite, cell_id=cell.id, fingerprint=cell.fingerprint, model=cell.model,
            optimizer=cell.optimizer.display, optimizer_name=cell.optimizer.name,
            seq_len=cell.seq_len, device=cell.defaults.device, dtype=cell.defaults.dtype,
            status=outcome.status, config=cell.config, error=outcome.error,
            traceback=outcome.traceback, env=outcome.env, metrics=outcome.metrics,
            curve=outcome.curve, started_at=outcome.started_at, ended_at=outcome.ended_at,
            timeline=outcome.timeline,
        )

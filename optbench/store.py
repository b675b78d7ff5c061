"""SQLite results store: the single source of truth for reports, compare and check.

One row per run (config, status, environment), its metrics (name -> value, the unit in
the name) and its loss curve. Each run is written in one transaction the moment it ends,
so an interrupted suite loses nothing already finished. WAL mode lets a report read while
a suite writes.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from optbench.errors import OptbenchError

DEFAULT_DB = Path("results/optbench.sqlite")
SCHEMA_VERSION = 1
STATUSES = ("ok", "estimated", "oom", "diverged", "crashed", "error", "skipped")
# Statuses that carry results: "estimated" is a `device: meta` cell traced on fake tensors
# (memory metrics only, no time or loss).
RESULT_STATUSES = ("ok", "estimated")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    suite TEXT NOT NULL,
    cell_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    model TEXT NOT NULL,
    optimizer TEXT NOT NULL,
    optimizer_name TEXT NOT NULL,
    seq_len INTEGER NOT NULL,
    device TEXT NOT NULL,
    dtype TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    traceback TEXT,
    config_json TEXT NOT NULL,
    env_json TEXT NOT NULL,
    started_at REAL,
    ended_at REAL
);
CREATE INDEX IF NOT EXISTS runs_fingerprint ON runs (fingerprint, status);
CREATE TABLE IF NOT EXISTS metrics (
    run_id INTEGER NOT NULL REFERENCES runs (run_id),
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS loss_curves (
    run_id INTEGER NOT NULL REFERENCES runs (run_id),
    step INTEGER NOT NULL,
    loss REAL,
    lr REAL,
    PRIMARY KEY (run_id, step)
);
"""


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
    curve: list[tuple[int, float, float]] = field(default_factory=list)
    started_at: float | None = None
    ended_at: float | None = None


class ResultStore:
    """Open (creating if needed) the store at `path`."""

    def __init__(self, path: str | Path = DEFAULT_DB):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=30)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise OptbenchError(f"{self.path}: not a usable optbench results database ({exc})") from None
        except OSError as exc:
            raise OptbenchError(f"{self.path}: cannot open results database ({exc.strerror})") from None

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise OptbenchError(
                f"{self.path}: written by a newer optbench (schema {version}); upgrade optbench"
            )
        with self.conn:
            self.conn.executescript(_SCHEMA)
            self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self.conn.close()

    def save(self, r: RunResult) -> int:
        """Insert one run with its metrics and curve in a single transaction; returns run_id."""
        with self.conn:
            cur = self.conn.execute(
                "INSERT INTO runs (suite, cell_id, fingerprint, model, optimizer, optimizer_name,"
                " seq_len, device, dtype, status, error, traceback, config_json, env_json,"
                " started_at, ended_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (r.suite, r.cell_id, r.fingerprint, r.model, r.optimizer, r.optimizer_name,
                 r.seq_len, r.device, r.dtype, r.status, r.error, r.traceback,
                 json.dumps(r.config, sort_keys=True), json.dumps(r.env, sort_keys=True),
                 r.started_at, r.ended_at),
            )
            run_id = int(cur.lastrowid)
            self.conn.executemany(
                "INSERT INTO metrics (run_id, name, value) VALUES (?,?,?)",
                [(run_id, k, _finite_or_none(v)) for k, v in sorted(r.metrics.items())],
            )
            self.conn.executemany(
                "INSERT INTO loss_curves (run_id, step, loss, lr) VALUES (?,?,?,?)",
                [(run_id, int(s), _finite_or_none(loss), lr) for s, loss, lr in r.curve],
            )
        return run_id

    def has_ok(self, fingerprint: str) -> bool:
        """True when the cell has a result (ok, or estimated for a `device: meta` cell)."""
        row = self.conn.execute(
            "SELECT 1 FROM runs WHERE fingerprint = ? AND status IN ('ok', 'estimated') LIMIT 1",
            (fingerprint,),
        ).fetchone()
        return row is not None

    def latest_runs(self, fingerprints: Iterable[str], prefer_ok: bool = True) -> pd.DataFrame:
        """Per fingerprint, the latest result (ok or estimated; else the latest run of any
        status), with metrics.

        `prefer_ok=False`: the latest run whatever its status (a gate must see a new failure).
        """
        fps = list(dict.fromkeys(fingerprints))
        if not fps:
            return _empty_runs()
        marks = ",".join("?" * len(fps))
        rows = pd.read_sql_query(
            f"SELECT * FROM runs WHERE fingerprint IN ({marks}) ORDER BY run_id", self.conn, params=fps
        )
        if rows.empty:
            return _empty_runs()
        rows["_ok"] = rows["status"].isin(RESULT_STATUSES) & prefer_ok
        rows = rows.sort_values(["_ok", "run_id"]).groupby("fingerprint").tail(1).drop(columns="_ok")
        order = {fp: i for i, fp in enumerate(fps)}
        rows = rows.sort_values("fingerprint", key=lambda s: s.map(order)).reset_index(drop=True)
        return self._with_metrics(rows)

    def runs_of(self, optimizer_names: Iterable[str], models: Iterable[str] = (),
                seq_lens: Iterable[int] = (), suite: str | None = None,
                statuses: Iterable[str] = ("ok",)) -> pd.DataFrame:
        """Every run of these registry names (optionally only these models, seq lens, suite
        and statuses), oldest first, with metrics: the candidates `compare` picks from."""
        where, params = [], []
        for column, values in (("optimizer_name", optimizer_names), ("model", models),
                               ("seq_len", seq_lens), ("status", statuses)):
            values = list(values)
            if values:
                where.append(f"{column} IN ({','.join('?' * len(values))})")
                params += values
        if suite is not None:
            where.append("suite = ?")
            params.append(suite)
        rows = pd.read_sql_query(
            f"SELECT * FROM runs WHERE {' AND '.join(where) or '1'} ORDER BY run_id", self.conn, params=params
        )
        return _empty_runs() if rows.empty else self._with_metrics(rows)

    def _with_metrics(self, runs: pd.DataFrame) -> pd.DataFrame:
        ids = [int(i) for i in runs["run_id"]]
        marks = ",".join("?" * len(ids))
        metrics = pd.read_sql_query(
            f"SELECT run_id, name, value FROM metrics WHERE run_id IN ({marks})", self.conn, params=ids
        )
        if not metrics.empty:
            wide = metrics.pivot(index="run_id", columns="name", values="value").reset_index()
            runs = runs.merge(wide, on="run_id", how="left")
        return runs

    def curves(self, run_ids: Iterable[int]) -> pd.DataFrame:
        ids = [int(i) for i in run_ids]
        if not ids:
            return pd.DataFrame(columns=["run_id", "cell_id", "step", "loss", "lr"])
        marks = ",".join("?" * len(ids))
        return pd.read_sql_query(
            f"SELECT c.run_id, r.cell_id, c.step, c.loss, c.lr FROM loss_curves c"
            f" JOIN runs r USING (run_id) WHERE c.run_id IN ({marks}) ORDER BY c.run_id, c.step",
            self.conn, params=ids,
        )

    def count_runs(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def _empty_runs() -> pd.DataFrame:
    return pd.DataFrame(columns=["run_id", "suite", "cell_id", "fingerprint", "model", "optimizer",
                                 "optimizer_name", "seq_len", "device", "dtype", "status", "error"])

"""SQLite results store: the single source of truth for reports, compare and check.

One row per run (config, status, environment), its metrics (name -> value, the unit in
the name) and its loss curve. Each run is written in one transaction the moment it ends,
so an interrupted suite loses nothing already finished. WAL mode lets a report read while
a suite writes. Beside the runs, the verdicts of `optbench parity` (one row per optimizer x
strategy x harness run).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable

import pandas as pd

from optbench.engine.outcome import RunResult
from optbench.errors import OptbenchError
from optbench.metrics import RESULT_STATUSES

DEFAULT_DB = Path("results/optbench.sqlite")
SCHEMA_VERSION = 1

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
CREATE TABLE IF NOT EXISTS parity (
    parity_id INTEGER PRIMARY KEY AUTOINCREMENT,
    optimizer TEXT NOT NULL,
    optimizer_version TEXT NOT NULL,
    strategy TEXT NOT NULL,
    nproc INTEGER NOT NULL,
    steps INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    worst_relative_error REAL,
    noise_floor REAL,
    parameter TEXT,
    state_bytes_json TEXT NOT NULL,
    error TEXT,
    env_json TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS timelines (
    run_id INTEGER PRIMARY KEY REFERENCES runs (run_id),
    points_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS loss_curves (
    run_id INTEGER NOT NULL REFERENCES runs (run_id),
    step INTEGER NOT NULL,
    loss REAL,
    lr REAL,
    PRIMARY KEY (run_id, step)
);
"""


@dataclass(frozen=True)
class ParityRecord:
    """One verdict of the parity harness (optbench.engine.parity), as stored."""

    optimizer: str
    optimizer_version: str
    strategy: str
    nproc: int
    steps: int
    verdict: str  # equivalent | differs | unsupported | error
    worst_relative_error: float | None = None
    noise_floor: float | None = None
    parameter: str = ""
    state_bytes_per_rank: tuple[int, ...] = ()
    error: str = ""
    env: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0


@dataclass
class StoredRun(RunResult):
    """A run as read back: what was saved, plus its row id (later runs have larger ids)."""

    run_id: int = 0

    @property
    def usable(self) -> bool:
        """It carries results (ok, or estimated memory)."""
        return self.status in RESULT_STATUSES

    def metric(self, name: str) -> float:
        """The stored value, NaN when not measured."""
        value = self.metrics.get(name)
        return float("nan") if value is None else float(value)


class ResultStore:
    """Open (creating if needed) the store at `path`."""

    def __init__(self, path: str | Path = DEFAULT_DB):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=30)
            self._refuse_foreign()  # before WAL mode, which would change the file's header
            self.conn.execute("PRAGMA journal_mode=WAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise OptbenchError(f"{self.path}: not a usable optbench results database ({exc})") from None
        except OSError as exc:
            raise OptbenchError(f"{self.path}: cannot open results database ({exc.strerror})") from None

    def _refuse_foreign(self) -> None:
        """Another program's SQLite file (tables, but no optbench `runs` table: MLflow has a
        `runs` of its own) is left as it is: adding optbench's tables or switching it to WAL
        would change a file that --db named by mistake."""
        tables = {row[0] for row in self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
        ours = {row[1] for row in self.conn.execute("PRAGMA table_info(runs)")}
        if tables and not {"fingerprint", "config_json", "cell_id"} <= ours:
            self.conn.close()
            shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
            raise OptbenchError(f"{self.path}: an SQLite database of another program (tables: "
                                f"{shown}), not an optbench results store; pass --db a new file "
                                "or an optbench store")

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
        """Insert one run with its metrics and curve in a single transaction; returns run_id.

        A write that fails (a full disk, a lost mount) rolls back, so the store stays as it was,
        and the result is kept as JSON beside the database where space allows; the error is one
        line naming both, and the next run resumes from the store."""
        try:
            return self._insert(r)
        except (sqlite3.Error, OSError) as exc:
            kept = self._keep_aside(r)
            where = f"the result is kept in {kept}" if kept else "the result could not be kept"
            raise OptbenchError(f"{self.path}: cannot store {r.cell_id} ({exc}); {where}; the "
                                "store is unchanged: free space and run again to resume") from None

    @property
    def unsaved_folders(self) -> tuple[Path, Path]:
        """Where `save` keeps a result it could not store: DB.unsaved/ beside the database, else
        (that disk being full too) a folder of this user's, named for the database, in the
        system's temporary folder, which is often another disk."""
        import hashlib
        import tempfile

        try:
            where = self.path.resolve()
        except (OSError, RuntimeError):
            where = self.path.absolute()
        key = hashlib.sha1(os.fsencode(where)).hexdigest()[:12]
        return (self.path.with_name(self.path.name + ".unsaved"),
                Path(tempfile.gettempdir(), f"optbench-unsaved-{_user()}", f"{self.path.name}-{key}"))

    def _keep_aside(self, r: RunResult) -> Path | None:
        """The result as JSON in the first of `unsaved_folders` that takes it, written whole (a
        temporary file renamed) or not at all: a disk that is full may cut a write short."""
        import dataclasses

        text = json.dumps(dataclasses.asdict(r), default=str)
        for folder in self.unsaved_folders:
            path = folder / f"{r.fingerprint}-{time.time_ns()}.json"
            part = path.with_suffix(".part")
            try:
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
                part.write_text(text, encoding="utf-8")
                os.replace(part, path)
                return path
            except OSError:
                part.unlink(missing_ok=True)
        return None

    def restore_unsaved(self) -> tuple[list[str], list[tuple[Path, str]]]:
        """Store the results `save` kept aside, oldest first, removing each file once stored;
        (the cell ids stored, each file left where it is with the reason).

        Each file is first claimed by an atomic rename, so two commands restoring at once store
        it once. A result stored already (same cell, same start and end) is not stored again;
        one older than a run of its cell stored since is left, as it would shadow that run."""
        restored: list[str] = []
        left: list[tuple[Path, str]] = []
        for path in sorted(self._kept_files(), key=_kept_order):
            claimed = path.with_name(f"{path.name}.claimed-{os.getpid()}")
            try:
                os.replace(path, claimed)
            except FileNotFoundError:
                continue  # another command claimed it first
            except OSError as exc:
                left.append((path, f"cannot be claimed ({exc.strerror}); left where it is"))
                continue
            try:
                outcome = self._restore_one(claimed)
            except BaseException:
                os.replace(claimed, path)
                raise
            if isinstance(outcome, str):
                os.replace(claimed, path)
                left.append((path, outcome))
                continue
            try:
                claimed.unlink()
            except OSError as exc:  # stored: a later restore finds it stored and skips it
                left.append((claimed, f"stored, but could not be removed ({exc.strerror}); "
                                      "remove it by hand"))
            if outcome is not None:
                restored.append(outcome.cell_id)
        return restored, left

    def _restore_one(self, path: Path) -> RunResult | str | None:
        """The result stored from `path`; None if it was stored already; else why it is left."""
        try:
            r = _kept_result(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return "not a readable result; left where it is"
        stored = self.conn.execute(
            "SELECT started_at IS ? AND ended_at IS ?, ended_at FROM runs WHERE fingerprint = ?",
            (r.started_at, r.ended_at, r.fingerprint)).fetchall()
        if any(same for same, _ in stored):
            return None
        if any(end is not None and r.ended_at is not None and end > r.ended_at for _, end in stored):
            return ("older than a run of the same cell stored since, which it would shadow; "
                    "left where it is")
        try:
            self._insert(r)
        except (sqlite3.Error, OSError) as exc:  # still full: the file stays for next time
            raise OptbenchError(f"{self.path}: cannot store the result kept in {path} "
                                f"({exc}): free space and run again") from None
        except (ValueError, TypeError):
            return "not a readable result; left where it is"
        return r

    def _kept_files(self) -> list[Path]:
        """The kept results, and those a command that died mid-restore had claimed. The folder
        in the shared temporary folder is read only if this user owns it."""
        files = []
        for folder in self.unsaved_folders:
            if not folder.is_dir() or (hasattr(os, "getuid") and folder.stat().st_uid != os.getuid()):
                continue
            for stale in folder.glob("*.json.claimed-*"):
                if not _alive(stale.name.rpartition("-")[2]):
                    with contextlib.suppress(OSError):
                        os.replace(stale, stale.with_name(stale.name.partition(".claimed-")[0]))
            files += folder.glob("*.json")
        return files

    def _insert(self, r: RunResult) -> int:
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
            if r.timeline:
                self.conn.execute("INSERT INTO timelines (run_id, points_json) VALUES (?, ?)",
                                  (run_id, json.dumps(r.timeline)))
        return run_id

    def has_result(self, fingerprint: str) -> bool:
        """True when the cell has a result (ok, or estimated for a `device: meta` cell)."""
        marks = ",".join("?" * len(RESULT_STATUSES))
        row = self.conn.execute(
            f"SELECT 1 FROM runs WHERE fingerprint = ? AND status IN ({marks}) LIMIT 1",
            (fingerprint, *RESULT_STATUSES),
        ).fetchone()
        return row is not None

    def runs(self, fingerprints: Iterable[str] | None = None, optimizer_names: Iterable[str] = (),
             models: Iterable[str] = (), seq_lens: Iterable[int] = (), suite: str | None = None,
             statuses: Iterable[str] = ()) -> list[StoredRun]:
        """Every stored run matching all the filters given (an empty filter matches all),
        oldest first, with its metrics."""
        where, params = [], []
        filters = (("fingerprint", fingerprints), ("optimizer_name", optimizer_names),
                   ("model", models), ("seq_len", seq_lens), ("status", statuses),
                   ("suite", [suite] if suite is not None else ()))
        for column, values in filters:
            if values is None:
                continue
            values = list(values)
            if column == "fingerprint" or values:  # no fingerprints given: nothing matches
                where.append(f"{column} IN ({','.join('?' * len(values))})")
                params += values
        sql = f"SELECT * FROM runs WHERE {' AND '.join(where) or '1'} ORDER BY run_id"
        cursor = self.conn.execute(sql, params)
        names = [d[0] for d in cursor.description]
        runs = [_stored_run(dict(zip(names, row))) for row in cursor.fetchall()]
        self._attach_metrics(runs)
        return runs

    def latest_runs(self, fingerprints: Iterable[str], prefer_results: bool = True) -> list[StoredRun]:
        """Per fingerprint, in the order given, the latest run with a result (else the latest
        of any status); with `prefer_results=False` the latest whatever its status (a gate
        must see a new failure)."""
        fps = list(dict.fromkeys(fingerprints))
        chosen = latest(self.runs(fps), key=lambda r: r.fingerprint,
                        preference=RESULT_STATUSES if prefer_results else ())
        order = {fp: i for i, fp in enumerate(fps)}
        return sorted(chosen, key=lambda r: order[r.fingerprint])

    def _attach_metrics(self, runs: list[StoredRun]) -> None:
        by_id = {r.run_id: r for r in runs}
        ids = list(by_id)
        for start in range(0, len(ids), _SQL_VARIABLES):  # SQLite caps bound parameters
            chunk = ids[start:start + _SQL_VARIABLES]
            rows = self.conn.execute(
                f"SELECT run_id, name, value FROM metrics WHERE run_id IN ({','.join('?' * len(chunk))})",
                chunk).fetchall()
            for run_id, name, value in rows:
                if value is not None:
                    by_id[run_id].metrics[name] = float(value)

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

    def timelines(self, run_ids: Iterable[int]) -> dict[int, list[list[int]]]:
        """run_id -> its memory timeline (runs stored before timelines, or without one, absent)."""
        ids = [int(i) for i in run_ids]
        out = {}
        for start in range(0, len(ids), _SQL_VARIABLES):
            chunk = ids[start:start + _SQL_VARIABLES]
            rows = self.conn.execute(
                f"SELECT run_id, points_json FROM timelines WHERE run_id IN ({','.join('?' * len(chunk))})",
                chunk).fetchall()
            out.update({int(run_id): json.loads(points) for run_id, points in rows})
        return out

    def save_parity(self, records: Iterable[ParityRecord]) -> None:
        """Verdicts of one harness run, in one transaction."""
        with self.conn:
            self.conn.executemany(
                "INSERT INTO parity (optimizer, optimizer_version, strategy, nproc, steps, verdict,"
                " worst_relative_error, noise_floor, parameter, state_bytes_json, error, env_json,"
                " created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [(r.optimizer, r.optimizer_version, r.strategy, r.nproc, r.steps, r.verdict,
                  _finite_or_none(r.worst_relative_error), _finite_or_none(r.noise_floor),
                  r.parameter, json.dumps(list(r.state_bytes_per_rank)), r.error,
                  json.dumps(r.env, sort_keys=True), r.created_at) for r in records])

    def parity(self, optimizers: Iterable[str] = ()) -> list[ParityRecord]:
        """The latest verdict per (optimizer, strategy, ranks), in optimizer then strategy order."""
        names = list(optimizers)
        where = f"WHERE optimizer IN ({','.join('?' * len(names))})" if names else ""
        cursor = self.conn.execute(f"SELECT * FROM parity {where} ORDER BY parity_id", names)
        columns = [d[0] for d in cursor.description]
        latest_of: dict[tuple, ParityRecord] = {}
        for row in cursor.fetchall():
            doc = dict(zip(columns, row))
            record = ParityRecord(
                optimizer=doc["optimizer"], optimizer_version=doc["optimizer_version"],
                strategy=doc["strategy"], nproc=doc["nproc"], steps=doc["steps"],
                verdict=doc["verdict"], worst_relative_error=doc["worst_relative_error"],
                noise_floor=doc["noise_floor"], parameter=doc["parameter"] or "",
                state_bytes_per_rank=tuple(json.loads(doc["state_bytes_json"])),
                error=doc["error"] or "", env=json.loads(doc["env_json"]),
                created_at=doc["created_at"])
            latest_of[(record.optimizer, record.strategy, record.nproc)] = record
        return sorted(latest_of.values(), key=lambda r: (r.optimizer, r.strategy, r.nproc))

    def count_runs(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


_SQL_VARIABLES = 900


def _stored_run(row: dict[str, Any]) -> StoredRun:
    config, env = json.loads(row.pop("config_json")), json.loads(row.pop("env_json"))
    return StoredRun(**row, config=config, env=env)


def latest(runs: Iterable[StoredRun], key: Callable[[StoredRun], Hashable],
           preference: tuple[str, ...] = RESULT_STATUSES) -> list[StoredRun]:
    """Per `key`, the one run that stands for it: the latest with the most preferred status
    (`preference` in order), else the latest of any status. The one selection rule of the store:
    reports, compare and check all pick through it."""
    rank = {status: len(preference) - i for i, status in enumerate(preference)}
    best: dict[Hashable, StoredRun] = {}
    for run in runs:
        k = key(run)
        if k not in best or (rank.get(run.status, 0), run.run_id) > (
                rank.get(best[k].status, 0), best[k].run_id):
            best[k] = run
    return list(best.values())


RUN_COLUMNS = ("run_id", "suite", "cell_id", "fingerprint", "model", "optimizer", "optimizer_name",
               "seq_len", "device", "dtype", "status", "error", "parallel", "seed", "tokens_per_step", "jobs")


def runs_frame(runs: Iterable[StoredRun]) -> pd.DataFrame:
    """One row per run, its metrics as columns: what the report and figure renderers read."""
    rows = [{**{c: getattr(r, c) for c in RUN_COLUMNS}, **r.metrics} for r in runs]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=list(RUN_COLUMNS))


def _user() -> str:
    """This user, for a folder of its own in the shared temporary folder."""
    if hasattr(os, "getuid"):
        return str(os.getuid())
    import getpass

    return getpass.getuser()


def _alive(pid: str) -> bool:
    """Whether the process that claimed a kept result is still running."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        return True
    return True


def _kept_order(path: Path) -> tuple[int, str]:
    """Files kept aside sort by the time in their name (FINGERPRINT-NANOSECONDS.json)."""
    stamp = path.stem.rpartition("-")[2]
    return (int(stamp) if stamp.isdigit() else 0, path.name)


def _kept_result(data: Any) -> RunResult:
    """A RunResult from its JSON in DB.unsaved/ (tuples came back as lists)."""
    if not isinstance(data, dict):
        raise TypeError("not a stored result")
    r = RunResult(**data)
    r.curve = [tuple(point) for point in r.curve]
    if not isinstance(r.metrics, dict) or not isinstance(r.config, dict):
        raise TypeError("not a stored result")
    return r

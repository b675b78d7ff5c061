"""A full disk when a finished cell is saved: the store is unchanged, the result is kept as JSON
beside it, the suite stops with one line naming both, and the next run stores the kept result
and resumes."""

from __future__ import annotations

import json
import sqlite3

import pytest
from typer.testing import CliRunner

from optbench.cli import app
from optbench.config.loader import load_suite
from optbench.config.suite import expand
from optbench.engine.outcome import RunResult
from optbench.errors import OptbenchError
from optbench.results.store import ResultStore
from tests.conftest import TINY_SUITE, stored_result


def _result(cell) -> RunResult:
    return stored_result(cell, {"tokens_per_s": 1.0})


def _full(self, r):
    raise sqlite3.OperationalError("database or disk is full")


def test_a_failed_save_keeps_the_result_aside_and_the_store_unchanged(write_suite, tmp_path,
                                                                     monkeypatch):
    first, second, _ = expand(load_suite(write_suite(TINY_SUITE, "t.yaml")))
    store = ResultStore(tmp_path / "r.sqlite")
    store.save(_result(first))
    monkeypatch.setattr(ResultStore, "_insert", _full)
    with pytest.raises(OptbenchError, match=r"cannot store .*database or disk is full.*kept in "
                                            r".*r\.sqlite\.unsaved/.*\.json; the store is unchanged"):
        store.save(_result(second))
    (kept,) = (tmp_path / "r.sqlite.unsaved").glob("*.json")
    assert json.loads(kept.read_text())["cell_id"] == second.id
    monkeypatch.undo()
    assert [r.cell_id for r in ResultStore(tmp_path / "r.sqlite").runs()] == [first.id]


@pytest.mark.slow
def test_run_stops_with_one_line_then_resumes(write_suite, tmp_path, monkeypatch):
    suite = write_suite(TINY_SUITE.replace("[adamw, sgd, scale]", "[adamw, sgd]"), "t.yaml")
    args = ["run", str(suite), "--db", str(tmp_path / "r.sqlite"), "--reports", str(tmp_path / "rep")]
    real, calls = ResultStore._insert, []

    def full_on_second(self, r):
        calls.append(r.cell_id)
        return real(self, r) if len(calls) == 1 else _full(self, r)

    monkeypatch.setattr(ResultStore, "_insert", full_on_second)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "database or disk is full" in result.output and "run again to resume" in result.output
    monkeypatch.undo()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    # The second cell's result, kept aside when the save failed, is stored, not run again.
    assert "stored 1 result kept aside" in again.output
    assert "2 already stored, 0 to run" in again.output
    assert len(ResultStore(tmp_path / "r.sqlite").runs()) == 2
    assert not any(f.is_dir() and list(f.iterdir()) for f in ResultStore(tmp_path / "r.sqlite").unsaved_folders)


def test_results_kept_aside_are_stored_by_the_next_run_then_removed(write_suite, tmp_path,
                                                                   monkeypatch):
    first, second, third = expand(load_suite(write_suite(TINY_SUITE, "t.yaml")))
    db = tmp_path / "r.sqlite"
    store = ResultStore(db)
    store.save(_result(first))
    monkeypatch.setattr(ResultStore, "_insert", _full)
    for cell in (second, third):
        with pytest.raises(OptbenchError):
            store.save(_result(cell))
    monkeypatch.undo()
    (db.parent / "r.sqlite.unsaved" / "broken.json").write_text('{"cell_id": ')  # cut short
    restored, left = ResultStore(db).restore_unsaved()
    assert restored == [second.id, third.id]
    assert [(p.name, why) for p, why in left] == [("broken.json",
                                                   "not a readable result; left where it is")]
    stored = ResultStore(db).runs()
    assert [r.cell_id for r in stored] == [first.id, second.id, third.id]
    assert stored[1].metrics == {"tokens_per_s": 1.0} and stored[1].status == "ok"
    assert ResultStore(db).restore_unsaved() == ([], left)  # each is stored once


def test_a_result_that_cannot_be_kept_leaves_no_partial_file(write_suite, tmp_path, monkeypatch):
    """A full disk can cut the kept JSON short: it is written whole or not at all."""
    import tempfile
    from pathlib import Path

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # not the machine's own

    (cell, *_) = expand(load_suite(write_suite(TINY_SUITE, "t.yaml")))
    store = ResultStore(tmp_path / "r.sqlite")
    monkeypatch.setattr(ResultStore, "_insert", _full)
    real_write = Path.write_text

    def half_then_full(self, text, *a, **k):
        real_write(self, text[:10], *a, **k)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(OptbenchError, match="the result could not be kept"):
        store.save(_result(cell))
    folders = store.unsaved_folders
    monkeypatch.undo()
    assert not any(f.is_dir() and list(f.iterdir()) for f in folders)


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs mounted for the test: a disk that really fills. Mounting needs root (or
    CAP_SYS_ADMIN); elsewhere the test is skipped and the simulated ENOSPC tests above stand."""
    import shutil
    import subprocess

    where = tmp_path / "disk"
    where.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here: the simulated full-disk tests cover this")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): "
                    "the simulated full-disk tests cover this")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(folder) -> None:
    """Write until the disk says ENOSPC."""
    import errno

    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_a_disk_that_really_fills(write_suite, small_disk, tmp_path, monkeypatch):
    """On a full tmpfs the save fails with one line and the store is unchanged; the result is
    kept in the temporary folder when the database's own disk has no room for it; once space
    exists, the next restore stores it."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    first, second, _ = expand(load_suite(write_suite(TINY_SUITE, "t.yaml")))
    db = small_disk / "r.sqlite"
    store = ResultStore(db)
    store.save(_result(first))
    _fill(small_disk)
    big = _result(second)
    big.traceback = "x" * 200_000  # more than any page SQLite may still hold free
    with pytest.raises(OptbenchError, match="(disk is full|No space left).*kept in .*tmp") as err:
        store.save(big)
    assert "\n" not in str(err.value)
    (small_disk / "filler").unlink()
    assert [r.cell_id for r in ResultStore(db).runs()] == [first.id]
    assert ResultStore(db).restore_unsaved() == ([second.id], [])
    assert [r.cell_id for r in ResultStore(db).runs()] == [first.id, second.id]


def _kept_twice(write_suite, tmp_path, monkeypatch):
    """A store holding the first cell, and the second cell's result kept aside."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    first, second, _ = expand(load_suite(write_suite(TINY_SUITE, "t.yaml")))
    db = tmp_path / "r.sqlite"
    store = ResultStore(db)
    store.save(_result(first))
    kept = _result(second)
    kept.started_at, kept.ended_at = 100.0, 200.0
    with monkeypatch.context() as m:
        m.setattr(ResultStore, "_insert", _full)
        with pytest.raises(OptbenchError):
            store.save(kept)
    return db, kept


def test_a_kept_result_stored_already_is_not_stored_twice(write_suite, tmp_path, monkeypatch):
    """Another command restored it (or removing the file failed after it was stored)."""
    db, kept = _kept_twice(write_suite, tmp_path, monkeypatch)
    ResultStore(db).save(kept)  # stored by someone else meanwhile
    assert ResultStore(db).restore_unsaved() == ([], [])
    assert len(ResultStore(db).runs(fingerprints=[kept.fingerprint])) == 1
    assert not list(ResultStore(db).unsaved_folders[0].iterdir())


def test_a_kept_result_older_than_a_stored_run_is_left(write_suite, tmp_path, monkeypatch):
    """Stored now, it would get a newer run_id and shadow the newer run in reports and gates."""
    db, kept = _kept_twice(write_suite, tmp_path, monkeypatch)
    newer = _result(next(c for c in expand(load_suite(tmp_path / "t.yaml"))
                         if c.fingerprint == kept.fingerprint))
    newer.started_at, newer.ended_at = 300.0, 400.0
    ResultStore(db).save(newer)
    restored, ((path, why),) = ResultStore(db).restore_unsaved()
    assert restored == [] and "which it would shadow; left where it is" in why and path.exists()
    assert [r.ended_at for r in ResultStore(db).runs(fingerprints=[kept.fingerprint])] == [400.0]


def test_a_claim_left_by_a_command_that_died_is_restored(write_suite, tmp_path, monkeypatch):
    db, kept = _kept_twice(write_suite, tmp_path, monkeypatch)
    (path,) = ResultStore(db).unsaved_folders[0].glob("*.json")
    path.rename(path.with_name(path.name + ".claimed-999999999"))  # no such process
    assert ResultStore(db).restore_unsaved() == ([kept.cell_id], [])


def test_another_users_temporary_folder_is_not_read(write_suite, tmp_path, monkeypatch):
    """The shared temporary folder is per user and read only when this user owns it: another
    local user cannot plant results in a store."""
    import os

    if not hasattr(os, "getuid"):
        pytest.skip("no user ids on this system")
    db, kept = _kept_twice(write_suite, tmp_path, monkeypatch)
    fallback = ResultStore(db).unsaved_folders[1]
    assert fallback.parent.name == f"optbench-unsaved-{os.getuid()}"
    for path in ResultStore(db).unsaved_folders[0].glob("*.json"):
        fallback.mkdir(parents=True, exist_ok=True)
        path.rename(fallback / path.name)
    real_stat = type(fallback).stat
    monkeypatch.setattr(type(fallback), "stat", lambda self, **k: os.stat_result(
        (*real_stat(self, **k)[:4], os.getuid() + 1, *real_stat(self, **k)[5:]))
        if self == fallback else real_stat(self, **k))
    assert ResultStore(db).restore_unsaved() == ([], [])


@pytest.mark.parametrize("tables, shown", [
    (["CREATE TABLE invoices (id INTEGER, total REAL)"], "invoices"),
    # MLflow's database has a `runs` table too: still not an optbench store.
    (["CREATE TABLE runs (run_uuid TEXT, name TEXT)", "CREATE TABLE metrics (key TEXT)"],
     "metrics, runs"),
])
def test_another_programs_sqlite_file_is_left_untouched(tmp_path, tables, shown):
    """--db naming someone else's database by mistake: one line, and the file stays byte for
    byte as it was (no optbench tables, no switch to WAL mode)."""
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    for statement in tables:
        conn.execute(statement)
    conn.commit()
    conn.close()
    before = other.read_bytes()
    with pytest.raises(OptbenchError, match=rf"another program \(tables: {shown}\)"):
        ResultStore(other)
    assert other.read_bytes() == before

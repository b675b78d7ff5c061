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
    restored, unreadable = ResultStore(db).restore_unsaved()
    assert restored == [second.id, third.id]
    assert [p.name for p in unreadable] == ["broken.json"]
    stored = ResultStore(db).runs()
    assert [r.cell_id for r in stored] == [first.id, second.id, third.id]
    assert stored[1].metrics == {"tokens_per_s": 1.0} and stored[1].status == "ok"
    assert ResultStore(db).restore_unsaved() == ([], unreadable)  # each is stored once


def test_a_result_that_cannot_be_kept_leaves_no_partial_file(write_suite, tmp_path, monkeypatch):
    """A full disk can cut the kept JSON short: it is written whole or not at all."""
    from pathlib import Path

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
    monkeypatch.undo()
    assert all(not list(folder.iterdir()) for folder in store.unsaved_folders)


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


def test_another_programs_sqlite_file_is_left_untouched(tmp_path):
    """--db naming someone else's database by mistake: one line, and the file stays byte for
    byte as it was (no optbench tables, no switch to WAL mode)."""
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE invoices (id INTEGER, total REAL)")
    conn.execute("INSERT INTO invoices VALUES (1, 9.5)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    with pytest.raises(OptbenchError, match=r"another program \(tables: invoices\)"):
        ResultStore(other)
    assert other.read_bytes() == before

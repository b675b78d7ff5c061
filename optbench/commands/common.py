"""What several commands share: the provenance (commands.provenance), suite-or-name arguments, writability checks
made before minutes of work, and running cells into the store under the live progress bar."""

from __future__ import annotations

import os
from pathlib import Path

from rich.markup import escape

from optbench.config.suite import Cell
from optbench.console import LiveProgress
from optbench.engine.outcome import RunResult
from optbench.engine.runner import Hooks, run_cells
from optbench.engine.slurm import SubmititOptions, parse_parameters, run_cells_submitit
from optbench.errors import OptbenchError
from optbench.results.store import ResultStore

def is_suite_file(arg: str) -> bool:
    """Whether an argument that may be a name or a suite (--model, --suite) names a suite file."""
    return arg.endswith((".yaml", ".yml")) or Path(arg).is_file()


def ensure_writable_dir(path: Path, option: str) -> None:
    """Fail before minutes of work, not after, when `path` cannot be made into a directory
    we can write."""
    existing = next((p for p in [path, *path.parents] if _exists(p, path, option)), Path("."))
    _check_names(path, existing, option)
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise OptbenchError(f"{option} {path}: not a writable directory")


def ensure_writable_file(path: Path | None, option: str, *, store: Path | None = None,
                         replaced: bool = False) -> None:
    """The same for a file the command will write: its directory is made and the file opened
    for appending now (a file that was not there is removed again). Never the results `store`
    (or its -wal / -shm): writing there would destroy every stored result. A file `replaced`
    whole (written beside, then renamed over) must be a regular file in a writable folder."""
    if path is None:
        return
    if store is not None:
        _not_the_store(path, Path(store), option)
    if replaced:
        _replaceable(path, option)
    existed = _exists(path, path, option)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8"):
            pass
    except (OSError, ValueError) as exc:
        raise OptbenchError(f"{option} {path}: cannot write ({_reason(exc)})") from None
    if not existed:
        path.unlink()


def _not_the_store(path: Path, store: Path, option: str) -> None:
    for kept in (store, Path(f"{store}-wal"), Path(f"{store}-shm")):
        try:
            same = path.resolve() == kept.resolve() or (
                path.exists() and kept.exists() and os.path.samefile(path, kept))
        except (OSError, ValueError, RuntimeError):
            continue  # a path that cannot be looked up is said by the checks that follow
        if same:
            raise OptbenchError(f"{option} {path}: that is the results store (--db {store}); "
                                "writing there would destroy every stored result")


def _replaceable(path: Path, option: str) -> None:
    """A file written beside and renamed over: a device or folder there would be replaced (as
    root, /dev/null itself), and the folder must take the file written beside it."""
    if _exists(path, path, option) and not path.is_file():
        raise OptbenchError(f"{option} {path}: not a regular file; accepted: a file path")
    ensure_writable_file(path.with_name(path.name + ".tmp"), option)


def _exists(path: Path, whole: Path, option: str) -> bool:
    """Whether `path` exists; a path the system cannot even look up (a name past its limit, a
    character the file system cannot hold) is one line about `whole`, the path as given."""
    try:
        path.stat()
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    except (OSError, ValueError) as exc:
        raise OptbenchError(f"{option} {whole}: not a usable path ({_reason(exc)})") from None


def _check_names(path: Path, existing: Path, option: str) -> None:
    """The parts of `path` still to be made must fit the file system's name limit."""
    try:
        limit = os.pathconf(existing if existing.is_dir() else existing.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    new_parts = path.parts[len(existing.parts):] if path.is_absolute() == existing.is_absolute() \
        else path.parts
    for part in new_parts:
        if len(os.fsencode(part)) > limit:
            raise OptbenchError(f"{option} {path}: a name longer than this file system's "
                                f"{limit} bytes")


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def write_text(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", errors="backslashreplace")
    except OSError as exc:
        raise OptbenchError(f"{path}: cannot write ({exc.strerror})") from None


def store_kept_results(store: ResultStore, console) -> None:
    """Store the results a failed save kept aside (ResultStore.restore_unsaved) before working
    out what is left to run, so that a cell that finished is never run again."""
    restored, left = store.restore_unsaved()
    if restored:
        plural = "s" if len(restored) > 1 else ""
        console.print(f"stored {len(restored)} result{plural} kept aside when a save failed "
                      f"({escape(', '.join(restored))})", highlight=False)
    for path, why in left:
        console.print(f"[yellow]warning[/]: {escape(str(path))}: {escape(why)}", highlight=False)


def pending_cells(cells: list[Cell], store: ResultStore, rerun: bool) -> list[Cell]:
    """Cells still to run: all of them with `rerun`, else those without a stored result."""
    return list(cells) if rerun else [c for c in cells if not store.has_result(c.fingerprint)]


# `optbench run --executor`: local processes, or submitit on SLURM / on this machine.
EXECUTORS = {"slurm": "slurm", "submitit-local": "local"}


def submitit_options(executor: str, pairs: list[str], folder: Path,
                     jobs: int | None) -> SubmititOptions | None:
    """The --executor, --slurm, --submitit-dir and --jobs options as the engine takes them;
    None for local processes (where --slurm means nothing, so it is refused)."""
    if executor == "local":
        if pairs:
            raise OptbenchError("--slurm: only with --executor slurm or submitit-local")
        return None
    if executor not in EXECUTORS:
        raise OptbenchError(f"--executor {executor}: accepted: local, {', '.join(EXECUTORS)}")
    if jobs is not None and jobs < 1:
        raise OptbenchError(f"--jobs {jobs}: at least 1 job in flight")
    ensure_writable_dir(folder, "--submitit-dir")  # before anything is submitted
    return SubmititOptions(EXECUTORS[executor], folder, parse_parameters(pairs), max_in_flight=jobs)


def run_into_store(cells: list[Cell], store: ResultStore, console, jobs: int = 1,
                   executor: SubmititOptions | None = None, stream=None) -> list[RunResult]:
    """Run `cells` under the live progress bar (`jobs` at a time; or as submitit jobs), storing
    each result the moment it ends (nothing is shown when there are none). `stream` (a suite's
    `log:`, commands.export.StreamingLog) gets every progress event and each stored result."""
    if not cells:
        return []
    with LiveProgress(console, len(cells)) as live:
        hooks = live.hooks
        if stream:
            hooks = Hooks(on_start=live.hooks.on_start,
                          on_event=lambda cell, event: (live.hooks.on_event(cell, event),
                                                        stream.on_event(cell, event)))

        def done(cell: Cell, result: RunResult) -> None:
            run_id = store.save(result)
            live.done(cell, result)
            if stream:
                stream.on_done(cell, result, run_id)

        if executor is not None:
            return run_cells_submitit(cells, executor, hooks=hooks, on_done=done)
        return run_cells(cells, hooks=hooks, on_done=done, jobs=jobs)

"""The terminal: the two consoles every command prints to, and the live progress of a grid.

Results go to stdout (so they pipe cleanly), progress and errors to stderr. User-supplied text
(names, paths, error messages) is printed with markup off or escaped.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from optbench.errors import one_line
from optbench.metrics import MIB

if TYPE_CHECKING:  # the CLI imports this module first thing: keep torch out of it
    from optbench.config.suite import Cell
    from optbench.engine.outcome import RunResult


class _Replacing:
    """A text stream whose writes never fail on characters its encoding lacks: a path made of
    undecodable bytes (a lone surrogate once Python has read it) is written backslash-escaped
    rather than raising in the middle of a report."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except UnicodeEncodeError:
            encoding = getattr(self._stream, "encoding", None) or "utf-8"
            return self._stream.write(text.encode(encoding, "backslashreplace").decode(encoding))

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class _SafeConsole(Console):
    """Rich's console over `_Replacing` of whatever stdout / stderr is at the time of writing
    (a test's capture included)."""

    @property
    def file(self):
        return _Replacing(super().file)

    @file.setter
    def file(self, value) -> None:
        Console.file.fset(self, value)


# Off a terminal (CI logs, pipes) Rich would wrap tables at 80 columns; logs can be wider.
console = _SafeConsole() if Console().is_terminal else _SafeConsole(width=160)
err_console = _SafeConsole(stderr=True, width=None if Console(stderr=True).is_terminal else 400)


def print_error(message: str) -> None:
    """One line on stderr: 'error: <message>'."""
    err_console.print(f"[bold red]error:[/] {escape(one_line(message, limit=2000))}",
                      highlight=False, soft_wrap=True)


def status(text: str, quiet: bool):
    """A spinner on stderr while something slow runs (none with `quiet`, e.g. for --json)."""
    return contextlib.nullcontext() if quiet else err_console.status(text)


class LiveProgress:
    """A bar over the grid (cell i/N, current cell, elapsed, ETA) and a per-step status line."""

    def __init__(self, console: Console, total: int):
        self.console, self.total, self.index = console, total, 0
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            TextColumn("{task.fields[step]}"), console=console,
        )
        from optbench.engine.runner import Hooks

        self.task = None
        self.running: dict[str, str] = {}  # cell id -> its step line, in start order
        self.hooks = Hooks(on_start=self._start, on_event=self._event)

    def __enter__(self) -> "LiveProgress":
        self.progress.__enter__()
        self.task = self.progress.add_task("starting", total=self.total, step="")
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def _start(self, cell: Cell, pid: int) -> None:
        self.index += 1
        self.running[cell.id] = "starting"
        self._show(cell.id)

    def _event(self, cell: Cell, event: dict) -> None:
        if event.get("event") != "step":
            return
        tps = event.get("tokens_per_s")
        speed = f" · {tps:,.0f} tok/s" if tps else ""
        self.running[cell.id] = f"step {event['step']}/{event['steps']} · loss {event['loss']:.3f}{speed}"
        self._show(cell.id)

    def _show(self, latest: str) -> None:
        """The cells running now (several under run --jobs), the step line of the latest."""
        ids = list(self.running)
        step = self.running.get(latest, "")
        if len(ids) > 1:
            step = f"{escape(latest)}: {step}"
        self.progress.update(self.task, step=step, description=(
            f"[{self.index}/{self.total}] {' · '.join(escape(i) for i in ids)}"))

    def done(self, cell: Cell, result: RunResult) -> None:
        self.running.pop(cell.id, None)
        self.progress.advance(self.task)
        self.console.print(done_line(cell, result), highlight=False)


def done_line(cell: Cell, r: RunResult) -> str:
    """The line printed when a cell ends: its headline numbers, or its status and error."""
    took = f"{(r.ended_at or 0) - (r.started_at or 0):.0f}s"
    m, name = r.metrics, escape(cell.id)
    if r.status == "estimated":
        return (f"[green]✓[/] {name}: estimated peak {m.get('peak_allocated_bytes', 0) / MIB:,.1f}"
                f" MiB · state {m.get('optimizer_state_bytes', 0) / MIB:,.1f} MiB ({took})")
    if r.status != "ok":
        return f"[red]✗[/] {name}: {r.status} — {escape(str(r.error))} ({took})"
    return (f"[green]✓[/] {name}: loss {m.get('final_train_loss', float('nan')):.3f}"
            f" · ppl {m.get('eval_ppl', float('nan')):.1f}"
            f" · peak {m.get('peak_allocated_bytes', 0) / MIB:,.1f} MiB"
            f" · {m.get('tokens_per_s', 0):,.0f} tok/s ({took})")

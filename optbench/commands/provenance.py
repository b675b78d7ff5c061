"""The command line every report names as its provenance: recorded once, by the CLI."""

from __future__ import annotations

import shlex

_argv: list[str] | None = None


def record_argv(argv: list[str]) -> None:
    """Remember the command line the CLI was given (cli.py calls this before dispatching)."""
    global _argv
    _argv = list(argv)


def command_line() -> str:
    """'optbench compare scale sgd': the real command line, as every report's provenance."""
    return shlex.join(["optbench", *(_writable(a) for a in _argv or [])])


def _writable(arg: str) -> str:
    """An argument as UTF-8 text can hold it: bytes that were not UTF-8 on the command line
    (Python reads them as lone surrogates) shown backslash-escaped."""
    try:
        raw = arg.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no byte made, such as '\ud800'
        raw = arg.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")

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
    return shlex.join(["optbench", *(_argv or [])])

"""Markdown pieces every report writes: pipe tables, safe code fences, the provenance line."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pandas as pd

from optbench import __version__

LEFT_ALIGNED = {"Model", "Optimizer", "Status", "Config", "Note"}


def md_cell(value) -> str:
    # A '|' would split the cell and a newline would end the table row.
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame, left: set[str] | frozenset[str] = frozenset(LEFT_ALIGNED)) -> str:
    """A GitHub pipe table (pandas' to_markdown needs tabulate, which we don't depend on);
    columns named in `left` are text, the rest numbers (right-aligned)."""
    header = "| " + " | ".join(md_cell(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" if c in left else "---:" for c in frame.columns) + " |"
    body = [
        "| " + " | ".join(md_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *body])


def rows_table(header: list[str], rows: list[list[str]],
               left: set[str] | frozenset[str] = frozenset(LEFT_ALIGNED)) -> str:
    """`markdown_table` of a header and formatted rows."""
    return markdown_table(pd.DataFrame(rows, columns=header), left)


def fence(text: str) -> str:
    """A code fence longer than any backtick run in the text, so it can't close early."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def generated_line(command: str, what: str = "") -> str:
    """'_Generated <when> by optbench <version> from <what>. Command: `...`._' — the one
    provenance line of every report (the command is the real command line)."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    source = f" from {what}" if what else ""
    return f"_Generated {when} by optbench {__version__}{source}. Command: `{command}`._"

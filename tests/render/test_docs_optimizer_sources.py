"""docs/optimizers.md's "Sources of truth" section is the registry's, word for word.

Regenerate it after changing an entry's reference, deviations or defaults:
    .venv/bin/python -m tests.render.test_docs_optimizer_sources --write
"""

from __future__ import annotations

import sys
from pathlib import Path

from optbench.render.listing import optimizer_sources_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "optimizers.md"
BEGIN = "<!-- BEGIN optimizer sources (generated) -->"
END = "<!-- END optimizer sources (generated) -->"


def _split(text: str) -> tuple[str, str, str]:
    head, rest = text.split(BEGIN + "\n", 1)
    body, tail = rest.split(END, 1)
    return head, body, tail


def test_the_docs_section_is_generated_from_the_registry():
    _, body, _ = _split(DOC.read_text(encoding="utf-8"))
    assert body == optimizer_sources_markdown() + "\n", (
        "docs/optimizers.md is stale: run "
        ".venv/bin/python -m tests.render.test_docs_optimizer_sources --write"
    )


def _write() -> None:
    head, _, tail = _split(DOC.read_text(encoding="utf-8"))
    DOC.write_text(head + BEGIN + "\n" + optimizer_sources_markdown() + "\n" + END + tail,
                   encoding="utf-8")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    _write()

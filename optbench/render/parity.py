"""`optbench parity`'s verdicts: a Rich table for the terminal, Markdown for reports/parity/."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from optbench.render.markdown import generated_line, rows_table
from optbench.results.store import ParityRecord

TOLERANCE = 1e-4  # float32's, as optbench.engine.parity.TOLERANCE (not imported: it needs torch)
VERDICT_STYLE = {"equivalent": "green", "differs": "yellow", "unsupported": "red", "error": "red"}
CAPTION = ("equivalent: worst parameter error ≤ 1e-4 (float32) or ≤ 4 × the optimizer's own "
           "noise floor · error = ‖p − p_ref‖ / ‖p_ref − p_0‖ after the steps, vs one process")


def verdict_text(r: ParityRecord) -> str:
    """'equivalent (3e-08)', 'differs (1.7e-01 at layers.0.mlp.down_proj.weight; floor 1e-06)',
    'unsupported: RuntimeError: ...'."""
    if r.verdict == "equivalent" and r.worst_relative_error > TOLERANCE:
        return f"equivalent ({r.worst_relative_error:.0e}, within 4 × its floor {r.noise_floor:.0e})"
    if r.verdict == "equivalent":
        return f"equivalent ({r.worst_relative_error:.0e})"
    if r.verdict == "differs":
        return (f"differs ({r.worst_relative_error:.1e} at {r.parameter}; "
                f"floor {r.noise_floor:.0e})")
    return f"{r.verdict}: {r.error}"


CELL_CHARS = 90  # a grid cell keeps the start of an error; the Markdown lists each in full


def cell_text(r: ParityRecord) -> str:
    text = verdict_text(r)
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1].rstrip() + "…"


def _grid(records: list[ParityRecord]) -> tuple[list[str], list[list[ParityRecord | None]]]:
    """Column labels ('fsdp2x2') and one row of records per optimizer."""
    columns = list(dict.fromkeys(f"{r.strategy}x{r.nproc}" for r in records))
    rows: dict[str, dict[str, ParityRecord]] = {}
    for r in records:
        rows.setdefault(r.optimizer, {})[f"{r.strategy}x{r.nproc}"] = r
    return columns, [[row.get(c) for c in columns] for row in rows.values()]


def rich_table(records: list[ParityRecord]) -> Table:
    columns, rows = _grid(records)
    table = Table(title="Is the sharded run the same optimizer?", caption=CAPTION)
    table.add_column("Optimizer")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        name = next(r for r in row if r is not None).optimizer
        cells = [("[" + VERDICT_STYLE[r.verdict] + "]" + _escape(cell_text(r)) + "[/]")
                 if r else "—" for r in row]
        table.add_row(name, *cells)
    return table


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def write_markdown(records: list[ParityRecord], out_dir: Path, command: str) -> Path:
    columns, rows = _grid(records)
    cells = [[next(r for r in row if r is not None).optimizer,
              *(cell_text(r) if r else "—" for r in row)] for row in rows]
    errors = [f"- **{r.optimizer} under {r.strategy}x{r.nproc}** — {r.error}"
              for r in records if r.error and len(verdict_text(r)) > CELL_CHARS]
    steps = sorted({r.steps for r in records})
    lines = [
        "# optbench parity", "", generated_line(command), "",
        f"Each optimizer trained {', '.join(map(str, steps))} steps of llama_tiny sharded and in "
        f"one process on the same global batch. {CAPTION}. docs/parallel.md explains the rule.",
        "", rows_table(["Optimizer", *columns], cells, left={"Optimizer", *columns}), "",
        *(["Errors in full:", "", *errors, ""] if errors else []),
        "State bytes per rank after the steps (each rank's own shards):", "",
        rows_table(["Optimizer", "Strategy", "Bytes per rank"],
                   [[r.optimizer, f"{r.strategy}x{r.nproc}",
                     ", ".join(f"{b:,}" for b in r.state_bytes_per_rank) or "—"]
                    for r in records], left={"Optimizer", "Strategy", "Bytes per rank"}), "",
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "summary.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path

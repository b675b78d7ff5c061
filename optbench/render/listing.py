"""Rich tables for `optbench list models | optimizers | suites`."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.table import Table

from optbench.models import MODEL_SIZES
from optbench.optimizers import list_specs
from optbench.optimizers.registry import OptimizerSpec
from optbench.optimizers.sharding import known_parity, parity_measured_by


def models_table() -> Table:
    table = Table(title="Model sizes (transformers LlamaForCausalLM, untied embeddings)")
    for col in ("name", "params", "hidden", "intermediate", "layers", "heads", "vocab", "max_seq", "note"):
        table.add_column(col, justify="right" if col not in ("name", "note") else "left")
    for m in MODEL_SIZES.values():
        table.add_row(m.name, f"{m.n_params() / 1e6:,.1f}M", str(m.hidden_size), str(m.intermediate_size),
                      str(m.num_hidden_layers), str(m.num_attention_heads), str(m.vocab_size),
                      str(m.max_position_embeddings), m.note)
    return table


def optimizers_table(specs: list[OptimizerSpec]) -> Table:
    """The registry, one row per entry."""
    table = Table(title="Optimizers")
    for col in ("name", "source", "paper", "state size"):
        table.add_column(col, overflow="fold")
    for spec in specs:
        row = [_display_name(spec), spec.source, spec.paper, spec.state_formula]
        table.add_row(*(escape(cell) for cell in row))
    return table


def optimizer_details(specs: list[OptimizerSpec]) -> list[Table]:
    """One field/value table per entry: what runs, the code it is held against with the
    deviations that remain, every default with its source, and the rest of the spec."""
    tables = []
    for spec in specs:
        table = Table(title=escape(f"{_display_name(spec)} (version {spec.version})"),
                      title_justify="left", show_header=False, show_lines=True)
        table.add_column("field", style="bold", no_wrap=True)
        table.add_column("value", overflow="fold")
        for field, value in [
            ("runs", spec.source),
            ("paper", spec.paper),
            ("held against", spec.reference or "not stated"),
            ("deviations", "\n".join(f"- {d}" for d in spec.deviations) or "none known"),
            ("defaults", _defaults_text(spec)),
            ("under sharding", _sharding_text(spec)),
            ("policy", spec.policy),
            ("state size", spec.state_formula),
            ("devices", ", ".join(spec.devices)),
        ]:
            table.add_row(field, escape(value))
        tables.append(table)
    return tables


def _display_name(spec: OptimizerSpec) -> str:
    return spec.name + (f" ({', '.join(spec.aliases)})" if spec.aliases else "")


def _sharding_text(spec: OptimizerSpec) -> str:
    known = known_parity(spec.name)
    if not known:
        return "not measured"
    lines = [f"{strategy}: {verdict}" for strategy, verdict in known.items()]
    return "\n".join(lines + [f"(2 ranks; {parity_measured_by()}; docs/parallel.md)"])


def _defaults_text(spec: OptimizerSpec) -> str:
    return "\n".join(
        f"{k}={v} ← {spec.default_sources.get(k, 'source not stated')}"
        for k, v in spec.default_hparams.items()
    )


def optimizer_sources_markdown() -> str:
    """Per entry: the code it is held against, the deviations that remain and where each
    default comes from, as Markdown (the generated part of docs/optimizers.md)."""
    lines = []
    for spec in list_specs():
        lines += [f"### `{_display_name(spec)}` (version {spec.version})", ""]
        lines += [f"Runs: {spec.source}.", "", f"Held against: {spec.reference or 'not stated'}.", ""]
        if spec.deviations:
            lines += ["Deviations that remain:", "", *(f"- {d}" for d in spec.deviations), ""]
        else:
            lines += ["Deviations that remain: none known.", ""]
        known = known_parity(spec.name)
        if known:
            lines += ["Under sharding (2 ranks, llama_tiny, [docs/parallel.md](parallel.md)):", ""]
            lines += [f"- {strategy}: {_cell(verdict)}" for strategy, verdict in known.items()]
            lines.append("")
        lines += ["| hparam | default | source |", "|---|---|---|"]
        lines += [
            f"| `{k}` | `{v}` | {_cell(spec.default_sources.get(k, 'not stated'))} |"
            for k, v in spec.default_hparams.items()
        ]
        lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def suites_table(suites_dir: Path, rows: list[tuple[str, str, str, str]]) -> Table:
    """One row per suite file: (file, name, cells, description), or for a file that does not
    load, (file, '', '', the error) shown as invalid."""
    table = Table(title=f"Suites in {escape(str(suites_dir))}")
    for col in ("file", "name", "cells", "description"):
        table.add_column(col, overflow="fold")
    for path, name, cells, text in rows:
        table.add_row(escape(path), escape(name) if name else "[red]invalid[/]", cells, escape(text))
    return table

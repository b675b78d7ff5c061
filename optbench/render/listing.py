"""Rich tables for `optbench list models | optimizers | suites`."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.table import Table

from optbench.models import MODEL_SIZES
from optbench.optimizers import list_specs


def models_table() -> Table:
    table = Table(title="Model sizes (transformers LlamaForCausalLM, untied embeddings)")
    for col in ("name", "params", "hidden", "intermediate", "layers", "heads", "vocab", "max_seq", "note"):
        table.add_column(col, justify="right" if col not in ("name", "note") else "left")
    for m in MODEL_SIZES.values():
        table.add_row(m.name, f"{m.n_params() / 1e6:,.1f}M", str(m.hidden_size), str(m.intermediate_size),
                      str(m.num_hidden_layers), str(m.num_attention_heads), str(m.vocab_size),
                      str(m.max_position_embeddings), m.note)
    return table


def optimizers_table(verbose: bool) -> Table:
    table = Table(title="Optimizers", show_lines=verbose)
    for col in ("name", "source", "paper", "state size") + (("policy", "defaults", "devices", "version") if verbose else ()):
        table.add_column(col, overflow="fold")
    for spec in list_specs():
        name = spec.name + (f" ({', '.join(spec.aliases)})" if spec.aliases else "")
        row = [name, spec.source, spec.paper, spec.state_formula]
        if verbose:
            defaults = ", ".join(f"{k}={v}" for k, v in spec.default_hparams.items())
            row += [spec.policy, defaults, ", ".join(spec.devices), spec.version]
        table.add_row(*row)
    return table


def suites_table(suites_dir: Path, rows: list[tuple[str, str, str, str]]) -> Table:
    """One row per suite file: (file, name, cells, description), or for a file that does not
    load, (file, '', '', the error) shown as invalid."""
    table = Table(title=f"Suites in {escape(str(suites_dir))}")
    for col in ("file", "name", "cells", "description"):
        table.add_column(col, overflow="fold")
    for path, name, cells, text in rows:
        table.add_row(escape(path), escape(name) if name else "[red]invalid[/]", cells, escape(text))
    return table

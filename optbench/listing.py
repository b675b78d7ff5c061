"""Rich tables for `optbench list models | optimizers | suites`."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from optbench.errors import OptbenchError
from optbench.models import MODEL_SIZES


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
    from optbench.optimizers import list_specs

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


def suites_table(suites_dir: Path) -> Table:
    from optbench.suite import expand, load_suite

    # Files starting with "_" are fragments meant only for `include:`.
    paths = sorted(p for p in Path(suites_dir).glob("*.yaml") if not p.name.startswith("_"))
    if not paths:
        raise OptbenchError(f"{suites_dir}: no *.yaml suites here; pass --suites-dir")
    table = Table(title=f"Suites in {suites_dir}")
    for col in ("file", "name", "cells", "description"):
        table.add_column(col, overflow="fold")
    for path in paths:
        try:
            suite = load_suite(path)
            table.add_row(str(path), suite.name, str(len(list(expand(suite)))), suite.description)
        except OptbenchError as exc:
            table.add_row(str(path), "[red]invalid[/]", "", str(exc))
    return table

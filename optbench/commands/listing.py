"""`optbench list models | optimizers | suites`."""

from __future__ import annotations

from pathlib import Path

from optbench.config.loader import load_suite
from optbench.config.suite import expand
from optbench.errors import OptbenchError
from optbench.optimizers import get_spec, list_specs
from optbench.render import listing

KINDS = ("models", "optimizers", "suites")


def list_things(what: str, verbose: bool, suites_dir: Path, console,
                names: list[str] = ()) -> None:
    if names and what != "optimizers":
        raise OptbenchError(f"list {what} takes no names (got {', '.join(names)}); "
                            "only `list optimizers NAME...` selects entries")
    if what == "models":
        console.print(listing.models_table())
    elif what == "optimizers":
        specs = [get_spec(name) for name in names] or list_specs()  # unknown: did-you-mean
        if not verbose:
            console.print(listing.optimizers_table(specs))
        for table in listing.optimizer_details(specs) if verbose else []:
            console.print(table)
    else:
        console.print(listing.suites_table(suites_dir, suite_rows(suites_dir)))


def suite_rows(suites_dir: Path) -> list[tuple[str, str, str, str]]:
    """(file, name, cells, description) per suite; a suite that does not load keeps its row,
    with the error in place of the description."""
    # Files starting with "_" are fragments meant only for `include:`.
    paths = sorted(p for p in Path(suites_dir).glob("*.yaml") if not p.name.startswith("_"))
    if not paths:
        raise OptbenchError(f"{suites_dir}: no *.yaml suites here; pass --suites-dir")
    rows = []
    for path in paths:
        try:
            suite = load_suite(path)
            # Counting cells needs no corpus hash: every cell shares one.
            rows.append((str(path), suite.name, str(len(expand(suite, corpus=""))), suite.description))
        except OptbenchError as exc:
            rows.append((str(path), "", "", str(exc)))
    return rows

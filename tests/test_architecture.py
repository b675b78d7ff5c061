"""The house walls (docs/architecture.md), held by parsing every module with `ast`:
each layer imports only the layers below it, no import cycles, no cross-module private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "optbench"

# Lowest first. A module may import its own layer and the layers below it, never above.
LAYERS = (
    ("optbench", "optbench.errors", "optbench.metrics"),  # the vocabulary
    ("optbench.models", "optbench.data", "optbench.optimizers"),  # what can be run
    ("optbench.config",),
    ("optbench.engine",),
    ("optbench.results",),
    ("optbench.render", "optbench.console"),
    ("optbench.commands",),
    ("optbench.cli",),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    """The layer of the longest prefix that names one (the package root is layer 0)."""
    best, rank = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{module} is in no layer: add it to LAYERS and docs/architecture.md"
    return rank


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) for every optbench import, function-local ones too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "optbench"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "optbench":
            found.append((node.module, [a.name for a in node.names], node.lineno))
    return found


def resolved(module: str, names: list[str]) -> list[str]:
    """`from optbench.x import y` imports module optbench.x.y when there is one."""
    subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
    return subs or [module]


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for name, path in MODULES.items():
        for module, names, _ in imports(path):
            edges[name].update(t for t in resolved(module, names) if t in MODULES and t != name)
    return edges


def test_every_module_is_in_a_layer():
    for name in MODULES:
        layer_of(name)


def test_no_module_imports_a_higher_layer():
    bad = []
    for name, path in MODULES.items():
        for module, names, line in imports(path):
            for target in resolved(module, names):
                if layer_of(target) > layer_of(name):
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {target} (a higher layer)")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    edges, state, cycles = graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    # A package importing its own submodules (to register them) is not a cycle of design.
    real = [c for c in cycles if not all(p.startswith(c.split(" -> ")[0]) for p in c.split(" -> "))]
    assert not real, "import cycles:\n" + "\n".join(real)


def _private_uses(path: Path, own: str | None) -> list[str]:
    """`from optbench.x import _y`, and `x._y` on an imported optbench module, from outside x."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("optbench"):
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                if target in MODULES:
                    aliases[alias.asname or alias.name] = target
                elif _private(alias.name) and node.module != own:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("optbench") and alias.asname:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in aliases and aliases[node.value.id] != own and _private(node.attr):
            bad.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return bad


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@pytest.mark.parametrize("tree", ["optbench", "tests", "benchmarks"])
def test_no_cross_module_private_names(tree):
    bad = []
    for path in sorted((ROOT / tree).rglob("*.py")):
        own = module_name(path) if tree == "optbench" else None
        bad += _private_uses(path, own)
    assert not bad, "\n".join(bad)


def test_the_architecture_doc_names_every_package():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    packages = {m for m in MODULES if MODULES[m].name == "__init__.py"} | {
        m for m in MODULES if m.count(".") == 1}
    missing = [m for m in sorted(packages) if m != "optbench" and m.split(".", 1)[1] not in doc]
    assert not missing, f"docs/architecture.md does not mention: {', '.join(missing)}"

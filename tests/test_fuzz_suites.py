"""A property-based fuzzer of `optbench validate`: suites mutated from the shipped ones and the
test fixture (wrong types, huge / negative / NaN numbers, unicode and Rich markup, newlines,
deep nesting, YAML tags, unhashable keys) must each end with exit 0, or exit 2 and exactly one
line naming what is wrong; never a traceback. In-process (CliRunner), seeded (derandomize), so a
failure reproduces with the same example."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from optbench.cli import app
from tests.conftest import TINY_SUITE

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for p in (ROOT / "suites").glob("*.yaml") if not p.name.startswith("_"))
BASES = [yaml.safe_load(TINY_SUITE)] + [yaml.safe_load(p.read_text()) for p in SHIPPED
                                        if "include" not in p.read_text()]
CASES = int(__import__("os").environ.get("OPTBENCH_FUZZ_CASES", 400))  # ~10 s on 2 cores

runner = CliRunner()

weird_text = st.one_of(
    st.sampled_from(["[/]", "[bold]x", "a\nb", "\x00", "\ud800", "../x", "/abs/x", "~nobody/x",
                     "x" * 300, "", " ", "é ∑ 😀", "{{", "- a", "!!python/object:os.system"]),
    st.text(min_size=0, max_size=12),
)
weird_number = st.sampled_from([0, -1, -5, 10**400, float("nan"), float("inf"), -0.0, 1e308,
                                2**63, 0.5, True, "1e-3", "nan", None])
weird_value = st.one_of(weird_text, weird_number, st.just([]), st.just({}), st.just([[1]]),
                        st.just({"a": {"b": {"c": 1}}}))


def paths(tree, prefix=()):
    """Every (path, value) of a nested mapping / list."""
    yield prefix, tree
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from paths(value, (*prefix, i))


def set_at(tree, path, value):
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


@st.composite
def mutated_suites(draw) -> str:
    suite = copy.deepcopy(draw(st.sampled_from(BASES)))
    places = [p for p, _ in paths(suite) if p]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["value", "value", "key", "drop", "nest"]))
        path = draw(st.sampled_from(places))
        try:
            if kind == "value":
                set_at(suite, path, copy.deepcopy(draw(weird_value)))  # never the strategy's own
            elif kind == "key" and isinstance(path[-1], str):
                parent = suite
                for key in path[:-1]:
                    parent = parent[key]
                parent[draw(weird_text)] = parent.pop(path[-1])
            elif kind == "drop" and isinstance(path[-1], str):
                parent = suite
                for key in path[:-1]:
                    parent = parent[key]
                parent.pop(path[-1])
            elif kind == "nest":
                deep = 1
                for _ in range(draw(st.integers(1, 60))):
                    deep = [deep]
                set_at(suite, path, deep)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation moved this place
        places = [p for p, _ in paths(suite) if p]
    text = yaml.safe_dump(suite, allow_unicode=True, sort_keys=False)
    return draw(st.sampled_from([text, text, "? [a, b]\n: 1\n" + text, text + "\nx: !!int abc\n",
                                 text.replace("name:", "name: !!timestamp notadate\nold_name:", 1)]))


def check_one_line(result) -> None:
    out = result.output
    assert "Traceback" not in out, out
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 2), (result.exit_code, out)
    if result.exit_code == 2:
        assert len(out.strip().splitlines()) == 1, out


@settings(max_examples=CASES, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(text=mutated_suites())
def test_validate_answers_every_mutated_suite_with_ok_or_one_line(text, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "suite.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    check_one_line(runner.invoke(app, ["validate", str(path)]))


@pytest.mark.parametrize("base", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_suite_validates(base):
    result = runner.invoke(app, ["validate", str(base)])
    assert result.exit_code == 0, result.output

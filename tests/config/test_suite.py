"""Suite parsing, include:, expansion, fingerprints, and every bad-input case."""

from __future__ import annotations

import dataclasses

import pytest

from optbench.errors import OptbenchError
from optbench.config.loader import load_suite
from optbench.config.suite import expand
from tests.conftest import TINY_SUITE


def test_tiny_suite_expands_in_grid_order(tiny_suite):
    suite = load_suite(tiny_suite)
    assert suite.name == "tiny"
    assert suite.defaults.steps == 6 and suite.defaults.lr_schedule.warmup_steps == 2
    ids = [c.id for c in expand(suite)]
    assert ids == ["llama_tiny/adamw/seq32", "llama_tiny/sgd/seq32", "llama_tiny/scale/seq32"]


def test_cells_resolve_device_and_hparams(tiny_suite):
    cell = expand(load_suite(tiny_suite))[0]
    assert cell.defaults.device == "cpu"
    assert cell.optimizer.hparams["lr"] > 0  # registry defaults filled in


def test_fingerprint_is_stable_and_sensitive(write_suite):
    a = [c.fingerprint for c in expand(load_suite(write_suite(TINY_SUITE, "a.yaml")))]
    b = [c.fingerprint for c in expand(load_suite(write_suite(TINY_SUITE, "b.yaml")))]
    assert a == b and len(set(a)) == 3
    changed = TINY_SUITE.replace("steps: 6", "steps: 7")
    c = [c.fingerprint for c in expand(load_suite(write_suite(changed, "c.yaml")))]
    assert not set(a) & set(c)


def test_fingerprint_includes_optimizer_version(tiny_suite):
    from optbench.optimizers import registry

    before = expand(load_suite(tiny_suite))[0].fingerprint
    spec = registry.get_spec("adamw")
    with registry.override(dataclasses.replace(spec, version="999")):
        assert expand(load_suite(tiny_suite))[0].fingerprint != before
    assert expand(load_suite(tiny_suite))[0].fingerprint == before


def test_include_extends_and_overrides(write_suite):
    write_suite(TINY_SUITE, "base.yaml")
    child = write_suite("include: base.yaml\nname: child\ndefaults: {steps: 9}\n"
                        "grid: {optimizers: [{name: adamw, hparams: {lr: 0.01}, label: fast}]}\n")
    suite = load_suite(child)
    assert suite.name == "child" and suite.defaults.steps == 9
    assert suite.defaults.batch_size == 2  # inherited
    assert [c.id for c in expand(suite)] == ["llama_tiny/fast/seq32"]
    assert expand(suite)[0].optimizer.hparams["lr"] == 0.01


def test_shipped_suites_validate():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "suites"
    for path in sorted(root.glob("*.yaml")):
        assert list(expand(load_suite(path))), path


BAD_CASES = [
    # (what to change in TINY_SUITE, replacement, words the one-line error must contain)
    ("steps: 6", "steps: -3", ["defaults.steps", "-3", "positive"]),
    ("steps: 6", "steps: six", ["defaults.steps", "expected an integer", "'six'"]),
    ("steps: 6", "stepz: 6", ["unknown key 'stepz'", "did you mean 'steps'", "accepted keys"]),
    ("models: [llama_tiny]", "models: [llama_tiyn]", ["grid.models[0]", "unknown model 'llama_tiyn'",
                                                       "did you mean 'llama_tiny'"]),
    ("[adamw, sgd, scale]", "[adamw, sgd, scael]", ["grid.optimizers[2]", "unknown optimizer 'scael'",
                                                     "did you mean 'scale'"]),
    ("[adamw, sgd, scale]", "[{name: adamw, hparams: {lrr: 1}}]", ["grid.optimizers[0].hparams", "lrr"]),
    ("[adamw, sgd, scale]", "[adamw, adamw]", ["appears twice", "label"]),
    ("device: cpu", "device: tpu", ["defaults.device", "'tpu'", "auto, cpu, cuda"]),
    ("warmup: 2", "warmup: 6", ["defaults.warmup", "no timed step"]),
    ("seq_lens: [32]", "seq_lens: [4096]", ["grid.seq_lens[0]", "max_seq"]),
    ("seq_lens: [32]", "seq_lens: []", ["grid.seq_lens", "at least one"]),
    ("source: kjv", "source: text\n  path: does/not/exist.txt", ["data", "does/not/exist.txt"]),
    ("source: kjv", "source: parquet", ["data.source", "parquet"]),
    ("kind: cosine", "kind: linearr", ["defaults.lr_schedule.kind", "cosine"]),
    ("grid:", "grid: 3\nxgrid:", ["grid", "expected a mapping"]),
]


@pytest.mark.parametrize("old,new,words", BAD_CASES, ids=[c[1][:24] for c in BAD_CASES])
def test_bad_suite_is_one_clear_line(write_suite, old, new, words):
    assert old in TINY_SUITE
    path = write_suite(TINY_SUITE.replace(old, new, 1), "bad.yaml")
    with pytest.raises(OptbenchError) as info:
        load_suite(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for word in words:
        assert word in message, (word, message)


def test_invalid_yaml_names_line(write_suite):
    path = write_suite("name: x\ngrid: [unclosed\n")
    with pytest.raises(OptbenchError, match=r"invalid YAML at line \d+"):
        load_suite(path)


def test_missing_file_and_include_cycle(write_suite, tmp_path):
    with pytest.raises(OptbenchError, match="no such suite file"):
        load_suite(tmp_path / "nope.yaml")
    write_suite("include: b.yaml\n", "a.yaml")
    write_suite("include: a.yaml\n", "b.yaml")
    with pytest.raises(OptbenchError, match="include cycle"):
        load_suite(tmp_path / "a.yaml")


def test_missing_grid_is_named(write_suite):
    with pytest.raises(OptbenchError, match="missing required key 'grid'"):
        load_suite(write_suite("name: x\n"))


MORE_BAD_CASES = [
    ("eval_batches: 1", "eval_batches: 1\n  grad_clip: .nan", ["defaults.grad_clip", "finite"]),
    ("steps: 6", "steps: 6\n  timeout_s: .inf", ["defaults.timeout_s", "finite"]),
    ("steps: 6", "steps: 6\n  seed: 18446744073709551616", ["defaults.seed", "2^63"]),
    ("[adamw, sgd, scale]", "[{name: galore, hparams: {rank: abc}}]", ["rank", "expected an integer"]),
    ("[adamw, sgd, scale]", "[{name: galore, hparams: {rank: 2.5}}]", ["rank", "expected an integer"]),
    ("[adamw, sgd, scale]", "[{name: muon, hparams: {nesterov: maybe}}]", ["nesterov", "true or false"]),
    ("models: [llama_tiny]", "models: [llama_tiny, llama_tiny]", ["grid.models", "listed twice"]),
    ("[adamw, sgd, scale]", "[adamw, {name: adamw, label: again}]", ["same configuration"]),
    ("[adamw, sgd, scale]", "[adamw, adam]", ["same configuration"]),
    ("steps: 6", "steps: 6\n  steps: 7", ["duplicate key 'steps'", "line"]),
]


@pytest.mark.parametrize("old,new,words", MORE_BAD_CASES, ids=[c[1][-24:] for c in MORE_BAD_CASES])
def test_more_bad_values_are_one_clear_line(write_suite, old, new, words):
    test_bad_suite_is_one_clear_line(write_suite, old, new, words)


def test_non_utf8_suite_is_one_clear_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(OptbenchError, match="not UTF-8"):
        load_suite(path)


def test_fingerprint_follows_data_content_not_path_or_timeout(tmp_path):
    corpus = tmp_path / "data" / "corpus.txt"
    corpus.parent.mkdir()
    corpus.write_text("In the beginning was the word. " * 200)
    text = TINY_SUITE.replace("source: kjv\n  max_tokens: 60000", "source: text\n  path: data/corpus.txt")
    suite_file = tmp_path / "s.yaml"
    suite_file.write_text(text)
    first = expand(load_suite(suite_file))[0].fingerprint
    suite_file.write_text(text.replace("steps: 6", "steps: 6\n  timeout_s: 60"))
    assert expand(load_suite(suite_file))[0].fingerprint == first  # a limit is not a config
    corpus.write_text("Another text entirely. " * 200)
    assert expand(load_suite(suite_file))[0].fingerprint != first  # new data, new results


def test_alias_is_resolved_and_kept_as_label(write_suite):
    (cell,) = expand(load_suite(write_suite(TINY_SUITE.replace("[adamw, sgd, scale]", "[adam]"))))
    assert cell.optimizer.name == "adamw" and cell.id == "llama_tiny/adam/seq32"

"""optbench.data: corpus sources, cached tokenization, windows and batches, input errors."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from optbench import data
from optbench.data import DataConfig, load_tokens, validate_data_config
from optbench.errors import OptbenchError

WORDS = ("the light was good and the earth brought forth grass herb seed tree fruit after "
         "his kind in itself upon day night evening morning waters firmament heaven").split()


def prose(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(n_words // 12)]
    return "\n".join(lines) + "\n"


def stream_of(ts: data.TokenStream) -> np.ndarray:
    return np.concatenate([ts.train, ts.eval])


def bpe_file(cache: Path) -> Path:
    (path,) = (cache / "tokenizers").glob("bpe-*/tokenizer.json")
    return path


@pytest.fixture(scope="module")
def kjv(tmp_path_factory) -> tuple[data.TokenStream, Path]:
    """The default corpus at vocab 512, tokenized once for the whole module."""
    cache = tmp_path_factory.mktemp("kjv-cache")
    return load_tokens(DataConfig(), 512, cache), cache


@pytest.fixture
def txt_dir(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text(prose(3000, 1))
    (d / "sub" / "b.txt").write_text(prose(3000, 2))
    (d / "ignored.md").write_text("not a .txt file")
    return d


# ---------------------------------------------------------------- KJV, determinism, cache


def test_kjv_default_corpus(kjv):
    ts, cache = kjv
    tokens = stream_of(ts)
    assert ts.train.dtype == np.uint16 and len(tokens) > 1_000_000
    assert ts.tokenizer.startswith("bpe:vocab=512:corpus=")
    assert len(ts.eval) == int(len(tokens) * 0.02)
    tok = Tokenizer.from_file(str(bpe_file(cache)))
    assert tok.get_vocab_size() == 512
    assert tok.decode(tokens[:40].tolist()).startswith("In the beginning God created")
    assert int((tokens == tok.token_to_id(data.EOS)).sum()) == 66  # one EOS after each book
    assert tokens[-1] == tok.token_to_id(data.EOS)


def test_bpe_training_is_deterministic(kjv, tmp_path):
    ts, cache = kjv
    again = load_tokens(DataConfig(), 512, tmp_path)
    assert bpe_file(tmp_path).read_bytes() == bpe_file(cache).read_bytes()
    assert np.array_equal(stream_of(again), stream_of(ts))


def test_cache_is_reused_without_retokenizing(kjv, monkeypatch):
    ts, cache = kjv
    files = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}

    def boom(*args, **kwargs):
        raise AssertionError("cache miss: corpus was tokenized again")

    monkeypatch.setattr(data, "_train_bpe", boom)
    monkeypatch.setattr(data, "_encode_stream", boom)
    start = time.perf_counter()
    again = load_tokens(DataConfig(eval_fraction=0.1), 512, cache)  # split is not cached
    assert time.perf_counter() - start < 1.0
    assert isinstance(again.train, np.memmap)
    assert np.array_equal(stream_of(again), stream_of(ts))
    assert len(again.eval) == int(len(stream_of(ts)) * 0.1)
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == files
    assert not list(cache.rglob("*.tmp"))


def test_cache_hit_in_a_fresh_process_via_env(kjv, tmp_path):
    ts, cache = kjv
    code = ("import time; t = time.perf_counter(); "
            "from optbench.data import DataConfig, load_tokens; t1 = time.perf_counter(); "
            "s = load_tokens(DataConfig(), 512); print(len(s.train), time.perf_counter() - t1)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"OPTBENCH_CACHE": str(cache), "PATH": "/usr/bin:/bin",
                              "HOME": str(tmp_path)}, check=True).stdout.split()
    assert int(out[0]) == len(ts.train)
    assert float(out[1]) < 0.5
    assert not (tmp_path / ".cache").exists()


def test_cache_key_follows_vocab_max_tokens_and_corpus(txt_dir, tmp_path):
    cache = tmp_path / "cache"
    cfg = DataConfig(source="text", path=str(txt_dir))
    a = load_tokens(cfg, 300, cache)
    load_tokens(cfg, 320, cache)
    assert len(list((cache / "tokens").glob("*.npy"))) == 2
    assert len(list((cache / "tokenizers").iterdir())) == 2

    capped = load_tokens(DataConfig(source="text", path=str(txt_dir), max_tokens=500), 300, cache)
    assert len(stream_of(capped)) == 500
    assert np.array_equal(stream_of(capped), stream_of(a)[:500])
    assert len(list((cache / "tokenizers").iterdir())) == 2  # max_tokens reuses the tokenizer

    load_tokens(DataConfig(source="text", path=str(txt_dir), eval_fraction=0.3), 300, cache)
    assert len(list((cache / "tokens").glob("*.npy"))) == 3  # eval_fraction is not in the key

    (txt_dir / "a.txt").write_text(prose(3000, 3))
    load_tokens(cfg, 300, cache)
    assert len(list((cache / "tokens").glob("*.npy"))) == 4
    assert len(list((cache / "tokenizers").iterdir())) == 3


def test_large_vocab_uses_uint32(txt_dir, tmp_path):
    ts = load_tokens(DataConfig(source="text", path=str(txt_dir / "a.txt")), 70_000, tmp_path)
    assert ts.train.dtype == np.uint32


# ---------------------------------------------------------------- windows and batches


def test_windows_are_shifted_stream_chunks(kjv):
    ts, _ = kjv
    seq = 64
    for split, arr in (("train", ts.train), ("eval", ts.eval)):
        w = ts.windows(split, seq)
        assert w.dtype == torch.int64 and w.shape == ((len(arr) - 1) // seq, seq + 1)
        flat = torch.from_numpy(arr.astype(np.int64))
        assert torch.equal(w[:, :-1].reshape(-1), flat[: len(w) * seq])  # inputs tile the stream
        assert torch.equal(w[:, 1:].reshape(-1), flat[1 : len(w) * seq + 1])  # targets: +1 token
        assert torch.equal(w[1:, 0], w[:-1, -1])  # stride seq_len: boundary token shared
    with pytest.raises(ValueError):
        ts.windows("valid", seq)


def test_train_batches_are_deterministic_epochs_of_windows(kjv):
    ts, _ = kjv
    seq, bs = 32, 8
    windows = ts.windows("train", seq)
    index = {tuple(row.tolist()): i for i, row in enumerate(windows)}

    def take(seed: int, n: int) -> list[torch.Tensor]:
        it = ts.train_batches(seq, bs, seed)
        return [next(it) for _ in range(n)]

    first = take(0, 4)
    assert all(b.dtype == torch.int64 and b.shape == (bs, seq + 1) for b in first)
    assert all(torch.equal(x, y) for x, y in zip(first, take(0, 4), strict=True))
    assert not torch.equal(first[0], take(1, 1)[0])
    rows = [index[tuple(r.tolist())] for b in first for r in b]  # every row is a real window
    assert len(set(rows)) == len(rows)  # no repeats inside an epoch


def test_train_batches_cover_an_epoch_then_reshuffle(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(prose(1500, 5))
    ts = load_tokens(DataConfig(source="text", path=str(path)), 300, tmp_path / "cache")
    seq = 16
    n = len(ts.windows("train", seq))
    bs = n // 3
    it = ts.train_batches(seq, bs, seed=7)
    epoch1 = torch.cat([next(it) for _ in range(3)])
    epoch2 = torch.cat([next(it) for _ in range(3)])
    assert len({tuple(r.tolist()) for r in epoch1}) == 3 * bs
    assert not torch.equal(epoch1, epoch2)


def test_eval_batches_in_order(kjv):
    ts, _ = kjv
    seq = 64
    w = ts.windows("eval", seq)
    batches = ts.eval_batches(seq, 4, 3)
    assert [b.shape for b in batches] == [(4, seq + 1)] * 3
    assert torch.equal(torch.cat(batches), w[:12])
    every = ts.eval_batches(seq, 100, 10_000)  # asks for more than exists: all, last one partial
    assert torch.equal(torch.cat(every), w) and len(every) == -(-len(w) // 100)


def test_too_small_corpus_errors(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text(prose(600, 4))
    ts = load_tokens(DataConfig(source="text", path=str(path)), 300, tmp_path / "cache")
    with pytest.raises(OptbenchError, match="corpus too small.*eval split.*eval_fraction"):
        ts.eval_batches(len(ts.eval), 1, 1)
    assert len(ts.eval_batches(len(ts.eval) - 1, 8, 8)) == 1  # exactly one window is enough
    with pytest.raises(OptbenchError, match="corpus too small.*train split.*batch_size is 1000"):
        ts.train_batches(16, 1000, 0)


# ---------------------------------------------------------------- sources and tokenizers


def test_text_directory_in_path_order_with_eos_between_files(txt_dir, tmp_path):
    ts = load_tokens(DataConfig(source="text", path=str(txt_dir)), 300, tmp_path)
    tok = Tokenizer.from_file(str(bpe_file(tmp_path)))
    text = tok.decode(stream_of(ts).tolist(), skip_special_tokens=False)
    eos = data.EOS
    assert text == prose(3000, 1) + eos + prose(3000, 2) + eos


def test_jsonl_source_with_text_key(tmp_path):
    rows = [{"body": prose(240, i), "id": i} for i in range(20)] + [{"body": "  "}]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ts = load_tokens(DataConfig(source="jsonl", path=str(path), text_key="body"), 300, tmp_path)
    tok = Tokenizer.from_file(str(bpe_file(tmp_path)))
    text = tok.decode(stream_of(ts).tolist(), skip_special_tokens=False)
    assert text == "".join(prose(240, i) + data.EOS for i in range(20))  # blank doc dropped


@pytest.mark.parametrize("line, message", [
    ('{"text": "ok"}\n{"text": ', r"docs.jsonl:2: not valid JSON"),
    ('{"text": "ok"}\n{"body": "x"}', r"docs.jsonl:2: no 'text' field \(found: body\); set "
                                      r"data.text_key"),
    ('{"text": 3}', r"docs.jsonl:1: field 'text' is int, not text"),
])
def test_jsonl_bad_rows(tmp_path, line, message):
    path = tmp_path / "docs.jsonl"
    path.write_text(line)
    with pytest.raises(OptbenchError, match=message):
        load_tokens(DataConfig(source="jsonl", path=str(path)), 300, tmp_path)


def test_hf_saved_dataset_offline(tmp_path):
    datasets = pytest.importorskip("datasets")
    docs = [prose(240, i) for i in range(10)]
    datasets.Dataset.from_dict({"content": docs, "n": list(range(10))}).save_to_disk(
        tmp_path / "ds")
    cfg = DataConfig(source="hf", path=str(tmp_path / "ds"), text_key="content")
    ts = load_tokens(cfg, 300, tmp_path / "cache")
    tok = Tokenizer.from_file(str(bpe_file(tmp_path / "cache")))
    assert tok.decode(stream_of(ts).tolist(), skip_special_tokens=False) == \
        "".join(d + data.EOS for d in docs)

    datasets.Dataset.from_dict({"content": docs[:5], "n": [0] * 5}).save_to_disk(tmp_path / "ds")
    assert len(stream_of(load_tokens(cfg, 300, tmp_path / "cache"))) < len(stream_of(ts))

    with pytest.raises(OptbenchError, match="no column 'text' .*content, n.*text_key"):
        load_tokens(DataConfig(source="hf", path=str(tmp_path / "ds")), 300, tmp_path / "c2")

    datasets.DatasetDict({"validation": datasets.Dataset.from_dict({"text": docs})}).save_to_disk(
        tmp_path / "dd")
    split = load_tokens(DataConfig(source="hf", path=str(tmp_path / "dd"), hf_split="validation"),
                        300, tmp_path / "cache")
    assert np.array_equal(stream_of(split), stream_of(ts))
    with pytest.raises(OptbenchError, match="hf_split = 'train': not in .*splits: validation"):
        load_tokens(DataConfig(source="hf", path=str(tmp_path / "dd")), 300, tmp_path / "cache")


def small_tokenizer(eos: str | None = "</s>") -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=280, special_tokens=[eos] if eos else [],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([prose(2000, 9)], trainer)
    return tok


def test_tokenizer_json_file(txt_dir, tmp_path):
    tok = small_tokenizer()
    tok.save(str(tmp_path / "tok.json"))
    cfg = DataConfig(source="text", path=str(txt_dir / "a.txt"),
                     tokenizer=str(tmp_path / "tok.json"))
    ts = load_tokens(cfg, 512, tmp_path / "cache")
    assert ts.tokenizer.startswith(f"file:{(tmp_path / 'tok.json').resolve()}#")
    expected = tok.encode(prose(3000, 1)).ids + [tok.token_to_id("</s>")]
    assert stream_of(ts).tolist() == expected
    assert not (tmp_path / "cache" / "tokenizers").exists()  # nothing trained

    with pytest.raises(OptbenchError, match=r"has 280 tokens but the model's vocab is 279"):
        load_tokens(cfg, 279, tmp_path / "cache")
    small_tokenizer(eos=None).save(str(tmp_path / "noeos.json"))
    with pytest.raises(OptbenchError, match="no end-of-document token"):
        load_tokens(DataConfig(source="text", path=str(txt_dir),
                               tokenizer=str(tmp_path / "noeos.json")), 512, tmp_path / "cache")


def test_pretrained_tokenizer_directory(txt_dir, tmp_path):
    from transformers import PreTrainedTokenizerFast

    tok = small_tokenizer()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>").save_pretrained(tmp_path / "tk")
    cfg = DataConfig(source="text", path=str(txt_dir / "a.txt"), tokenizer=str(tmp_path / "tk"))
    ts = load_tokens(cfg, 512, tmp_path / "cache")
    assert ts.tokenizer.startswith("pretrained:")
    assert stream_of(ts).tolist() == tok.encode(prose(3000, 1)).ids + [tok.token_to_id("</s>")]
    with pytest.raises(OptbenchError, match="no-such-tokenizer-xyz': cannot load it offline"):
        load_tokens(DataConfig(tokenizer="no-such-tokenizer-xyz"), 512, tmp_path / "cache")


@pytest.mark.parametrize("tokenizer", ["bpe", "tok.json"])
def test_empty_corpus(tmp_path, tokenizer):
    small_tokenizer().save(str(tmp_path / "tok.json"))
    (tmp_path / "blank.txt").write_text("  \n\n\t\n")
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n{"text": "   "}\n')
    tok = tokenizer if tokenizer == "bpe" else str(tmp_path / "tok.json")
    for source, name in (("text", "blank.txt"), ("jsonl", "blank.jsonl")):
        cfg = DataConfig(source=source, path=str(tmp_path / name), tokenizer=tok)
        with pytest.raises(OptbenchError, match="the corpus has no text"):
            load_tokens(cfg, 300, tmp_path / "cache")
    assert not (tmp_path / "cache" / "tokens").exists()


def test_bpe_needs_room_for_bytes(txt_dir, tmp_path):
    with pytest.raises(OptbenchError, match="at least 257"):
        load_tokens(DataConfig(source="text", path=str(txt_dir)), 200, tmp_path)


# ---------------------------------------------------------------- validate_data_config


def test_validate_accepts_good_configs(txt_dir, tmp_path):
    validate_data_config(DataConfig(), "s.yaml")
    validate_data_config(DataConfig(source="text", path=str(txt_dir)), "s.yaml")
    validate_data_config(DataConfig(tokenizer="t5-base"), "s.yaml")  # a cached name: checked late
    validate_data_config(DataConfig(source="hf", hf_name="allenai/c4", hf_config="en"), "s.yaml")


def bad_cases(tmp: Path) -> list[tuple[DataConfig, str]]:
    (tmp / "empty").mkdir()
    (tmp / "zero").mkdir()
    (tmp / "zero" / "z.txt").write_text("")
    (tmp / "only.md").write_text("text")
    (tmp / "notds").mkdir()
    return [
        (DataConfig(source="kvj"), r"data.source = 'kvj': unknown data source \(did you mean "
                                   r"'kjv'\?\); accepted: kjv, text, jsonl, hf"),
        (DataConfig(source="text"), r"data.path = None: source 'text' needs a .txt file"),
        (DataConfig(source="jsonl", path=str(tmp / "nope")), r"data.path = .*nope': no such file"),
        (DataConfig(source="text", path=str(tmp / "empty")), r"holds no non-empty .txt file"),
        (DataConfig(source="text", path=str(tmp / "zero")), r"holds no non-empty .txt file"),
        (DataConfig(source="jsonl", path=str(tmp / "zero")), r"holds no non-empty .jsonl file"),
        (DataConfig(source="hf"), r"data.path = None: source 'hf' needs path .* or hf_name"),
        (DataConfig(source="hf", path=str(tmp / "notds")), r"not a directory written by .*"
                                                            r"save_to_disk"),
        (DataConfig(eval_fraction=0.0), r"data.eval_fraction = 0.0: must be in \(0, 0.5\]"),
        (DataConfig(eval_fraction=0.6), r"data.eval_fraction = 0.6: must be in"),
        (DataConfig(max_tokens=0), r"data.max_tokens = 0: must be a positive integer or null"),
        (DataConfig(max_tokens=-5), r"data.max_tokens = -5: must be a positive"),
        (DataConfig(max_tokens=2.5), r"data.max_tokens = 2.5: must be a positive"),
        (DataConfig(max_tokens=True), r"data.max_tokens = True: must be a positive"),
        (DataConfig(tokenizer="./missing/tokenizer.json"), r"data.tokenizer = './missing/"
                                                           r"tokenizer.json': no such file"),
        (DataConfig(tokenizer="/no/such/dir"), r"data.tokenizer = '/no/such/dir': no such file"
                                               r".*accepted: 'bpe'"),
    ]


def test_validate_rejects_bad_configs(tmp_path):
    for cfg, message in bad_cases(tmp_path):
        with pytest.raises(OptbenchError, match=message) as err:
            validate_data_config(cfg, "suites/x.yaml")
        text = str(err.value)
        assert text.startswith("suites/x.yaml: data.") and "\n" not in text, text


def test_validate_hf_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes the package unimportable
    with pytest.raises(OptbenchError, match=r"pip install optbench\[hf\]"):
        validate_data_config(DataConfig(source="hf", hf_name="allenai/c4"), "suites/x.yaml")


def test_load_tokens_validates_first(tmp_path):
    with pytest.raises(OptbenchError, match="data.eval_fraction"):
        load_tokens(DataConfig(eval_fraction=0.9), 512, tmp_path)

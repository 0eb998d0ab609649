"""Token files, training windows and a resumable sampler.

Token files
-----------
`tokenize_version(store, version, tok)` tokenises a curated version once per (content fingerprint,
tokenizer hash) into

    <store root>/tokens/<fingerprint[:16]>-<tokenizer hash[:16]>/
        tokens.bin        every document's token ids, EOT after each one, flat little-endian uint16
                          (uint32 when the vocabulary exceeds 65,536)
        doc_starts.npy    int64, the offset of each document's first token (documents in stored order)
        doc_sources.npy   uint16 (or uint32), each document's source code: an index into `sources`
        tokens.json       the sidecar: what was tokenised (`version`: name, fingerprint, store; or
                          `evalset`: name, fingerprint, sha256), `tokenizer` (hash, vocab size, EOT id),
                          dtype, n_tokens, n_docs, `sources` (names; codes index it), `by_source` (docs,
                          tokens, UTF-8 bytes of text: bits per byte's denominator), bytes_of_text,
                          timing; flat copies `name`, `fingerprint`, `tokenizer_hash`, `vocab_size`, `eot_id`

and `tokenize_evalset(store, name, tok)` does the same for a registered evaluation set under
`tokens/evalset-<name>-<tokenizer hash[:16]>/`. A folder is written under a temporary name and renamed
into place, so it is complete or absent; a second call finds it and reads nothing else.

Parallelism: by default the texts are encoded in this process by Hugging Face's batch encoder, which
runs over every core in Rust (rayon); Python only flattens the ids (~20 % of the time). `workers=K`
(K >= 2) instead runs K single-threaded worker processes over batches of rows (forked on POSIX, spawned
elsewhere). Measured on 2 cores, 45 MB of text (8,632 documents), 11.2M tokens, best of 3: in-process
5.5 s (2.0M tokens/s), 2 forked workers 5.6 s (2.0M), 2 spawned workers 7.5 s (1.5M; importing the
libraries again costs ~1.5 s). Single-threaded encoding alone takes ~10 s, so both reach ~1.8x. Equal
speed, so the default is the in-process encoder: no start-method caveats, no `__main__` guard needed.
Processes may pay off on many cores, where the serial flattening in one process would become the
bottleneck.

Windows and sampling
--------------------
`Windows(tokens, block_size, stride)`: window i reads tokens[i*stride : i*stride + block_size + 1];
x is its first block_size tokens, y the same shifted by one (y[t] == x[t+1]: next-token labels).
`EpochSampler` gives a seeded permutation of the windows per epoch (`default_rng([seed, epoch])`) and
yields global batches by step, so a run resumes at any step exactly, and `shard(rank, world_size)`
hands each DDP rank a fixed contiguous slice of the same global batch.

Nothing here imports Prefect or curation's filter and deduplication steps: versions are read through
`VersionStore` (manifest, files) and evaluation sets through `curation.evalsets.load_evalset`.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import secrets
import shutil
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from curation.evalsets import load_evalset
from curation.store import VersionStore
from training.model import IGNORE_INDEX
from training.tokenizer import Tokenizer, cache_root, iter_version_batches

TOKENS_DIR = "tokens"
TOKENS_FILE = "tokens.bin"
SIDECAR = "tokens.json"
DOC_STARTS = "doc_starts.npy"
DOC_SOURCES = "doc_sources.npy"
FORMAT_VERSION = 1
BATCH_ROWS = 1024


class TokenFileError(Exception):
    """A token file that cannot be written or read; the message names the file and why."""


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocab_size <= 65,536), else uint32; little-endian on disk."""
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


# ---------------------------------------------------------------------------------------------
# TokenFile


@dataclass
class TokenFile:
    path: Path  # tokens.bin
    meta: dict[str, Any]  # the sidecar
    dtype: np.dtype
    n_tokens: int
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> TokenFile:
        """The token file in `folder` (its tokens.json and tokens.bin), checked for size."""
        folder = Path(folder)
        sidecar = folder / SIDECAR
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TokenFileError(f"{sidecar}: cannot read the token file's sidecar: {exc}") from exc
        dtype = np.dtype(meta["dtype"]).newbyteorder("<")
        path = folder / meta.get("files", {}).get("tokens", TOKENS_FILE)
        expected = int(meta["n_tokens"]) * dtype.itemsize
        actual = path.stat().st_size if path.exists() else -1
        if actual != expected:
            raise TokenFileError(f"{path}: {actual} bytes, the sidecar says {meta['n_tokens']} tokens of "
                                 f"{dtype.name} ({expected} bytes); the token file is damaged, delete {folder}")
        return cls(path=path, meta=meta, dtype=dtype, n_tokens=int(meta["n_tokens"]))

    @property
    def dir(self) -> Path:
        return self.path.parent

    @property
    def n_docs(self) -> int:
        return int(self.meta["n_docs"])

    @property
    def source_names(self) -> list[str]:
        return list(self.meta["sources"])

    @property
    def bytes_of_text(self) -> int:
        """UTF-8 bytes of all documents' text (EOT separators excluded): bits per byte's denominator."""
        return int(self.meta["bytes_of_text"])

    def tokens_and_bytes(self, source: str | None = None) -> tuple[int, int]:
        """(tokens, UTF-8 bytes of text) of the whole file or of one source. Tokens include each
        document's EOT (a predicted target with no bytes), so mean loss per token * tokens / bytes / ln 2
        is bits per byte."""
        if source is None:
            return self.n_tokens, self.bytes_of_text
        entry = self.meta["by_source"].get(source)
        if entry is None:
            raise KeyError(f"no source {source!r} in {self.dir} (sources: {', '.join(self.source_names)})")
        return int(entry["tokens"]), int(entry["bytes"])

    def tokens(self) -> np.ndarray:
        """All tokens as a read-only memory map (an empty array for an empty file)."""
        if "tokens" not in self._cache:
            if self.n_tokens == 0:
                self._cache["tokens"] = np.empty(0, dtype=self.dtype)
            else:
                self._cache["tokens"] = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.n_tokens,))
        return self._cache["tokens"]

    def doc_starts(self) -> np.ndarray:
        """int64 offset of each document's first token."""
        return self._load(DOC_STARTS)

    def doc_sources(self) -> np.ndarray:
        """Each document's source code (an index into `source_names`)."""
        return self._load(DOC_SOURCES)

    def doc_lengths(self) -> np.ndarray:
        """Tokens per document, its EOT included."""
        return np.diff(np.append(self.doc_starts(), self.n_tokens))

    def sources(self) -> np.ndarray:
        """The source code of every token (n_tokens values; an EOT belongs to the document it ends)."""
        return np.repeat(self.doc_sources(), self.doc_lengths())

    def source_ranges(self) -> list[tuple[str, int, int]]:
        """(source name, start, end) token ranges, end exclusive: runs of consecutive documents of one
        source, in file order. They tile [0, n_tokens)."""
        codes = self.doc_sources()
        if len(codes) == 0:
            return []
        starts = self.doc_starts()
        change = np.flatnonzero(np.diff(codes.astype(np.int64))) + 1
        run_first = np.concatenate([[0], change])
        run_start = starts[run_first]
        run_end = np.append(run_start[1:], self.n_tokens)
        names = self.source_names
        return [(names[int(codes[d])], int(s), int(e)) for d, s, e in zip(run_first, run_start, run_end)]

    def _load(self, key: str) -> np.ndarray:
        if key not in self._cache:
            name = self.meta.get("files", {}).get(key.split(".")[0], key)
            self._cache[key] = np.load(self.dir / name, mmap_mode=None, allow_pickle=False)
        return self._cache[key]


# ---------------------------------------------------------------------------------------------
# Encoding workers


def _encode_rows(tok: Tokenizer, texts: list[str], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Flat token ids of `texts` with EOT after each, and each document's length (EOT included)."""
    ids = tok.encode_batch(texts)
    eot = tok.eot_id
    lengths = np.empty(len(ids), dtype=np.int64)
    for i, doc in enumerate(ids):
        doc.append(eot)
        lengths[i] = len(doc)
    flat = np.fromiter((t for doc in ids for t in doc), dtype=dtype, count=int(lengths.sum()))
    return flat, lengths


def _worker_init() -> None:
    # One thread per worker process: the processes are the parallelism.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"


def _worker_encode(tok: Tokenizer, texts: pa.Array, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    return _encode_rows(tok, texts.to_pylist(), np.dtype(dtype))


class _Encoder:
    """Encodes batches in order, either in this process (Rust-parallel) or on K spawned processes."""

    def __init__(self, tok: Tokenizer, dtype: np.dtype, workers: int | None):
        self.tok, self.dtype = tok, dtype
        self.workers = workers if workers and workers >= 2 else 1
        self.pool: ProcessPoolExecutor | None = None
        if self.workers >= 2:
            # fork (POSIX): no re-import of __main__, ~1.5 s faster than spawn per run. The children
            # must not touch the parent's rayon pool: they are forked with TOKENIZERS_PARALLELISM=false,
            # which also keeps `tokenizers` from warning about it; the parent's setting is restored.
            method = "fork" if os.name == "posix" else "spawn"
            ctx = multiprocessing.get_context(method)
            saved = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            try:
                self.pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_worker_init)
                self.pool.submit(os.getpid).result()  # start the workers now, under the setting above
            finally:
                if saved is None:
                    os.environ.pop("TOKENIZERS_PARALLELISM", None)
                else:
                    os.environ["TOKENIZERS_PARALLELISM"] = saved

    @property
    def mode(self) -> str:
        return f"processes x{self.workers}" if self.pool else "in-process (Rust-parallel encode_batch)"

    def map(self, batches: Iterable[tuple[pa.Array, Any]]) -> Iterator[tuple[np.ndarray, np.ndarray, Any]]:
        if self.pool is None:
            for texts, extra in batches:
                flat, lengths = _encode_rows(self.tok, texts.to_pylist(), self.dtype)
                yield flat, lengths, extra
            return
        pending: deque[tuple[Future, Any]] = deque()
        try:
            for texts, extra in batches:
                pending.append((self.pool.submit(_worker_encode, self.tok, texts, self.dtype.str), extra))
                if len(pending) >= 2 * self.workers:
                    future, done_extra = pending.popleft()
                    yield (*future.result(), done_extra)
            while pending:
                future, done_extra = pending.popleft()
                yield (*future.result(), done_extra)
        finally:
            for future, _ in pending:
                future.cancel()
            self.pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------
# Writing


def _write_token_dir(final: Path, tok: Tokenizer, batches: Iterable[pa.RecordBatch | pa.Table],
                     describe: dict[str, Any], workers: int | None, replace_stale: bool = False) -> TokenFile:
    """Tokenise record batches (text, source) into a fresh folder and rename it to `final`."""
    dtype = token_dtype(tok.vocab_size)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{secrets.token_hex(4)}"
    tmp.mkdir()
    source_code: dict[str, int] = {}
    per_source: dict[str, dict[str, int]] = {}
    starts_parts: list[np.ndarray] = []
    codes_parts: list[np.ndarray] = []
    n_tokens = 0
    started = time.perf_counter()

    def feed() -> Iterator[tuple[pa.Array, tuple[np.ndarray, np.ndarray]]]:
        for batch in batches:
            text = batch.column(0)
            source = batch.column(1)
            if isinstance(text, pa.ChunkedArray):
                text, source = text.combine_chunks(), source.combine_chunks()
            if text.null_count or source.null_count:
                raise TokenFileError(f"{describe}: null text or source in the records")
            names = source.to_pylist()
            codes = np.fromiter((source_code.setdefault(n, len(source_code)) for n in names),
                                dtype=np.int64, count=len(names))
            nbytes = pc.binary_length(text).to_numpy(zero_copy_only=False).astype(np.int64)
            yield text, (codes, nbytes)

    encoder = _Encoder(tok, dtype, workers)
    try:
        with open(tmp / TOKENS_FILE, "wb") as out:
            for flat, lengths, (codes, nbytes) in encoder.map(feed()):
                starts_parts.append(n_tokens + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64))
                codes_parts.append(codes)
                flat.tofile(out)
                n_tokens += int(lengths.sum())
                tok_by_code = np.bincount(codes, weights=lengths, minlength=len(source_code))
                bytes_by_code = np.bincount(codes, weights=nbytes, minlength=len(source_code))
                docs_by_code = np.bincount(codes, minlength=len(source_code))
                for name, code in source_code.items():
                    if docs_by_code[code]:
                        entry = per_source.setdefault(name, {"docs": 0, "tokens": 0, "bytes": 0})
                        entry["docs"] += int(docs_by_code[code])
                        entry["tokens"] += int(tok_by_code[code])
                        entry["bytes"] += int(bytes_by_code[code])
        seconds = time.perf_counter() - started
        names = sorted(source_code, key=source_code.get)
        code_dtype = np.dtype("<u2") if len(names) <= 65536 else np.dtype("<u4")
        doc_starts = np.concatenate(starts_parts) if starts_parts else np.empty(0, np.int64)
        doc_sources = (np.concatenate(codes_parts) if codes_parts else np.empty(0, np.int64)).astype(code_dtype)
        np.save(tmp / DOC_STARTS, doc_starts.astype("<i8"))
        np.save(tmp / DOC_SOURCES, doc_sources)
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": "tokens",
            **describe,
            "tokenizer": {"hash": tok.hash, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id,
                          "path": str(tok.path)},
            # flat copies for readers that want one lookup
            "name": next(iter(describe.values()))["name"],
            "fingerprint": next(iter(describe.values()))["fingerprint"],
            "tokenizer_hash": tok.hash,
            "vocab_size": tok.vocab_size,
            "eot_id": tok.eot_id,
            "dtype": dtype.name,
            "n_tokens": n_tokens,
            "n_docs": int(len(doc_starts)),
            "eot_after_each_doc": True,
            "sources": names,
            "source_code_dtype": code_dtype.name,
            "by_source": {n: per_source[n] for n in names},
            "bytes_of_text": sum(e["bytes"] for e in per_source.values()),
            "files": {"tokens": TOKENS_FILE, "doc_starts": DOC_STARTS, "doc_sources": DOC_SOURCES},
            "tokenize": {"mode": encoder.mode, "seconds": round(seconds, 3),
                         "tokens_per_s": round(n_tokens / seconds) if seconds > 0 else None},
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (tmp / SIDECAR).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _install(tmp, final, replace_stale)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return TokenFile.open(final)


def _install(tmp: Path, final: Path, replace_stale: bool) -> None:
    """Rename the finished folder into place. `replace_stale`: the folder there was found not to match
    (an evaluation set re-registered under its name) and is moved aside first. If another process
    installed the same folder meanwhile (DDP ranks tokenising at once), theirs is kept."""
    if replace_stale and final.exists():
        trash = final.parent / f".old-{final.name}-{secrets.token_hex(4)}"
        try:
            os.rename(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        except FileNotFoundError:
            pass
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / SIDECAR).exists():
            raise


def _cached(final: Path, check: dict[str, Any]) -> TokenFile | None:
    """The token file at `final` if its sidecar matches `check` (nested keys as 'a.b'), else None."""
    if not (final / SIDECAR).exists():
        return None
    tf = TokenFile.open(final)
    for dotted, want in check.items():
        value: Any = tf.meta
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value != want:
            return None
    return tf


def tokenize_version(
    store: VersionStore | str | os.PathLike[str],
    version: str,
    tokenizer: Tokenizer,
    workers: int | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_rows: int = BATCH_ROWS,
) -> TokenFile:
    """The version's documents as one token file (EOT after each), cached by (content fingerprint,
    tokenizer hash) under `<store root>/tokens/`. `workers`: None or 1 encodes in this process with
    Hugging Face's Rust-parallel batch encoder (all cores; the faster choice measured on 2 cores);
    K >= 2 uses K spawned worker processes. `cache_dir` replaces the store root (needed for a remote store)."""
    store = store if isinstance(store, VersionStore) else VersionStore(store)
    manifest = store.manifest(version)
    fingerprint = manifest["fingerprint"]
    final = cache_root(store, cache_dir) / TOKENS_DIR / f"{fingerprint[:16]}-{tokenizer.hash[:16]}"
    found = _cached(final, {"version.fingerprint": fingerprint, "tokenizer.hash": tokenizer.hash})
    if found is not None:
        return found
    if (final / SIDECAR).exists():  # the folder's name matches but its content does not: never overwrite
        raise TokenFileError(f"{final}: holds tokens of another version or tokenizer (a 16-hex-digit prefix "
                             "collision, or an edited sidecar); move it away and retry")
    describe = {"version": {"name": version, "fingerprint": fingerprint, "store": store.url,
                            "rows": manifest.get("rows")}}
    batches = iter_version_batches(store, version, ["text", "source"], batch_rows)
    return _write_token_dir(final, tokenizer, batches, describe, workers)


def tokenize_evalset(
    store: VersionStore | str | os.PathLike[str],
    name: str,
    tokenizer: Tokenizer,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> TokenFile:
    """A registered evaluation set as a token file, cached by (set fingerprint, tokenizer hash) under
    `<store root>/tokens/evalset-<name>-<tokenizer hash[:16]>/` (rebuilt if the set's fingerprint changed)."""
    store = store if isinstance(store, VersionStore) else VersionStore(store)
    table, info = load_evalset(store, name)
    final = cache_root(store, cache_dir) / TOKENS_DIR / f"evalset-{name}-{tokenizer.hash[:16]}"
    found = _cached(final, {"evalset.fingerprint": info.fingerprint, "tokenizer.hash": tokenizer.hash})
    if found is not None:
        return found
    stale = (final / SIDECAR).exists()  # the set was deleted and registered again with other text
    describe = {"evalset": {"name": name, "fingerprint": info.fingerprint, "sha256": info.sha256,
                            "store": store.url, "docs": info.docs}}
    table = table.select(["text", "source"])
    batches = table.to_batches(max_chunksize=BATCH_ROWS)
    return _write_token_dir(final, tokenizer, batches, describe, workers=None, replace_stale=stale)


# ---------------------------------------------------------------------------------------------
# Windows


def _as_array(tokens: Any) -> np.ndarray:
    if isinstance(tokens, TokenFile):
        return tokens.tokens()
    if isinstance(tokens, torch.Tensor):
        return tokens.detach().cpu().numpy()
    array = np.asarray(tokens)
    if array.ndim != 1:
        raise ValueError(f"tokens must be one-dimensional, got shape {array.shape}")
    return array


class _WindowsBase:
    """Shared gathering: subclasses define `__len__` and `starts(indices)`."""

    tokens: np.ndarray
    block_size: int
    pad_id: int = 0

    def starts(self, indices: np.ndarray | Sequence[int] | None = None) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def __len__(self) -> int:  # pragma: no cover
        raise NotImplementedError

    def _index(self, indices: Any) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"window index out of range for {n} windows")
        return np.where(idx < 0, idx + n, idx)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batch([i])
        return x[0], y[0]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(len(self)):
            yield self[i]

    def batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 tensors of shape (len(indices), block_size); y[:, t] == x[:, t+1]. Positions past
        the end of the tokens (only with drop_last=False) are x = pad_id, y = IGNORE_INDEX."""
        if isinstance(indices, torch.Tensor):
            indices = indices.cpu().numpy()
        starts = self.starts(self._index(indices))
        # One fancy-indexing gather over (rows, block_size + 1) positions instead of a Python loop over rows;
        # positions past the end read the last token (any in-range index) and are replaced by the padding.
        positions = starts[:, None] + np.arange(self.block_size + 1, dtype=np.int64)
        valid = positions < len(self.tokens)
        gathered = np.asarray(self.tokens[np.minimum(positions, len(self.tokens) - 1)], dtype=np.int64)
        chunk = np.where(valid, gathered, np.int64(self.pad_id))
        x = chunk[:, :-1].copy()
        y = np.where(valid[:, 1:], chunk[:, 1:], np.int64(IGNORE_INDEX))
        return torch.from_numpy(x), torch.from_numpy(y)


class Windows(_WindowsBase):
    """Sliding windows over a token array (or a `TokenFile`).

    Window i covers tokens[i*stride : i*stride + block_size + 1]: x its first block_size tokens, y the
    next block_size (shifted by one). `stride` defaults to block_size (no overlap: no token is a target
    twice per epoch). `drop_last=True` keeps only full windows: len = (N - block_size - 1) // stride + 1
    for N >= block_size + 1 tokens, else 0. `drop_last=False` also keeps every later window that has at
    least one target (len = ceil((N - 1) / stride)), padded with x = pad_id and y = IGNORE_INDEX.
    """

    def __init__(self, tokens: Any, block_size: int, stride: int | None = None, drop_last: bool = True,
                 pad_id: int = 0):
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        stride = block_size if stride is None else stride
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.tokens = _as_array(tokens)
        self.block_size, self.stride, self.drop_last, self.pad_id = block_size, stride, drop_last, pad_id
        n = len(self.tokens)
        if drop_last:
            self._n = (n - block_size - 1) // stride + 1 if n >= block_size + 1 else 0
        else:
            self._n = -(-(n - 1) // stride) if n >= 2 else 0

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return (f"Windows(n={self._n}, block_size={self.block_size}, stride={self.stride}, "
                f"drop_last={self.drop_last}, tokens={len(self.tokens)})")

    def starts(self, indices: Any = None) -> np.ndarray:
        idx = np.arange(self._n, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
        return idx * self.stride


class FixedWindows(_WindowsBase):
    """Windows at explicit start offsets (every one full): a fixed evaluation set of windows."""

    def __init__(self, tokens: Any, starts: Sequence[int] | np.ndarray, block_size: int, name: str | None = None):
        self.tokens = _as_array(tokens)
        self.block_size = block_size
        self._starts = np.asarray(starts, dtype=np.int64)
        self.name = name
        if self._starts.size and (self._starts.min() < 0 or self._starts.max() + block_size + 1 > len(self.tokens)):
            raise ValueError("a fixed window reaches past the end of the tokens")

    def __len__(self) -> int:
        return len(self._starts)

    def __repr__(self) -> str:
        return f"FixedWindows(name={self.name!r}, n={len(self)}, block_size={self.block_size})"

    def starts(self, indices: Any = None) -> np.ndarray:
        return self._starts.copy() if indices is None else self._starts[np.asarray(indices, dtype=np.int64)]


def fixed_eval_windows(token_file: TokenFile, n_tokens: int, block_size: int, seed: int = 0,
                       source: str | None = None) -> FixedWindows:
    """A fixed, seeded choice of n_tokens // block_size (at least 1) non-overlapping windows of
    `token_file` (all there are, if fewer), in file order. With `source`, only windows whose
    block_size + 1 tokens lie inside that source's documents. Same arguments, same windows."""
    if source is None:
        ranges = [(0, token_file.n_tokens)]
    else:
        if source not in token_file.source_names:
            raise ValueError(f"no source {source!r} in the token file (sources: {', '.join(token_file.source_names)})")
        ranges = [(s, e) for name, s, e in token_file.source_ranges() if name == source]
    span = block_size + 1
    counts = np.array([max(0, (e - s - 1) // block_size) if e - s >= span else 0 for s, e in ranges], dtype=np.int64)
    total = int(counts.sum())
    where = f"source {source!r}" if source else "the token file"
    if total == 0:
        raise ValueError(f"{where} has no run of {span} tokens: too short for block_size {block_size}")
    want = max(1, n_tokens // block_size)
    rng = np.random.default_rng([seed, block_size])
    chosen = np.sort(rng.choice(total, size=min(want, total), replace=False))
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    which = np.searchsorted(np.cumsum(counts), chosen, side="right")
    range_starts = np.array([s for s, _ in ranges], dtype=np.int64)
    starts = range_starts[which] + (chosen - first[which]) * block_size
    return FixedWindows(token_file.tokens(), starts, block_size, name=source)


def per_source_eval_windows(token_file: TokenFile, n_tokens: int, block_size: int,
                            seed: int = 0) -> dict[str, FixedWindows]:
    """`fixed_eval_windows` for each source that has at least one full window (n_tokens per source)."""
    out: dict[str, FixedWindows] = {}
    for name in token_file.source_names:
        try:
            out[name] = fixed_eval_windows(token_file, n_tokens, block_size, seed, source=name)
        except ValueError:
            continue
    return out


# ---------------------------------------------------------------------------------------------
# Sampling


@dataclass(frozen=True)
class EpochSampler:
    """A reproducible order of window indices, by step, for 1 process or a DDP group.

    The index stream is the concatenation of per-epoch permutations, epoch e being
    `np.random.default_rng([seed, e]).permutation(n_windows)`; global step s takes positions
    [s * batch_size, (s + 1) * batch_size) of it (a batch may span an epoch boundary), so any step's
    batch is computed directly and a resumed run continues exactly. `batch_size` is always the global
    batch; a `shard(rank, world_size)` yields its rank's contiguous slice of that same batch.
    """

    n_windows: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.n_windows < 1:
            raise ValueError("no windows to sample: the token array is shorter than block_size + 1")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} not in [0, {self.world_size})")

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)

    def global_batch(self, step: int, batch_size: int) -> np.ndarray:
        """The global batch of `step` (window indices, int64)."""
        begin, end = step * batch_size, (step + 1) * batch_size
        parts = []
        pos = begin
        while pos < end:
            epoch, offset = divmod(pos, self.n_windows)
            take = min(end - pos, self.n_windows - offset)
            parts.append(self._perm(epoch)[offset:offset + take])
            pos += take
        return np.concatenate(parts).astype(np.int64)

    def _perm(self, epoch: int) -> np.ndarray:
        cache = self.__dict__.setdefault("_perm_cache", {})
        if epoch not in cache:
            cache.clear()
            cache[epoch] = self.permutation(epoch)
        return cache[epoch]

    def shard(self, rank: int, world_size: int) -> EpochSampler:
        """This sampler as seen by `rank` of `world_size`: the same global batches, a fixed slice each."""
        return replace(self, rank=rank, world_size=world_size)

    def local_slice(self, batch_size: int) -> slice:
        if batch_size % self.world_size:
            raise ValueError(f"global batch size {batch_size} is not divisible by world size {self.world_size}")
        per = batch_size // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def batch_at(self, step: int, batch_size: int) -> np.ndarray:
        """This rank's window indices at `step` (the whole global batch when world_size is 1)."""
        return self.global_batch(step, batch_size)[self.local_slice(batch_size)]

    def batches(self, batch_size: int, start_step: int = 0,
                end_step: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(step, indices) from `start_step` to `end_step` (exclusive; None: forever)."""
        self.local_slice(batch_size)  # checks divisibility up front
        step = start_step
        while end_step is None or step < end_step:
            yield step, self.batch_at(step, batch_size)
            step += 1

"""Byte-level BPE tokenizers, trained once per curated version and identified by a hash.

    tok = tokenizer_for_version(store, "demo")        # trained on the version's text, cached in the store
    ids = tok.encode("In the beginning")             # list[int]
    tok.decode(ids) == "In the beginning"            # always: byte-level BPE round-trips any str

A `Tokenizer` is a small frozen record (path, hash, vocab size, EOT id) that pickles cheaply; the Hugging
Face `tokenizers.Tokenizer` behind it is loaded lazily, once per process, and cached by hash.

Choices (GPT-2's, except where said):

  * Byte-level BPE: the `ByteLevel` pre-tokenizer (GPT-2's split regex, `add_prefix_space=False`) and
    decoder, every one of the 256 bytes in the initial alphabet, no normaliser. Any Python `str` encodes
    and `decode(encode(t)) == t` exactly (tested on emoji, CJK, combining marks and control characters).
  * One special token, `EOT = "<|endoftext|>"`, the document separator. A trained tokenizer gives it
    **id 0** (the trainer places special tokens first; GPT-2 has it last, at 50256); a loaded tokenizer
    keeps whatever id its file gives it.
  * `encode(text)` treats the *literal* string "<|endoftext|>" inside a document as ordinary text (it
    becomes a few ordinary tokens, never the EOT id), so a web page that quotes it cannot forge a
    document boundary. Token files insert EOT themselves, by id, after each document. Pass
    `allow_special=True` to have the literal string map to the EOT id (as tiktoken's `allowed_special`).
  * `decode(ids)` writes the EOT id back as the literal "<|endoftext|>" (it does not drop it).
  * Vocabulary: **8,192** by default. The environment's notes for this project say CPU ablation models
    need a vocabulary of at most 8K: the embedding and output layers of a small GPT grow with it, and
    at 50K they would dominate a CPU-sized model's parameters and step time. It is a parameter.
  * `hash`: sha256 of the tokenizer.json in canonical form (JSON with sorted keys, no whitespace,
    UTF-8), so re-saving or re-indenting the same tokenizer does not change it. Token files and training
    runs record it.

Layout of a trained tokenizer's folder:

    tokenizer.json        the Hugging Face tokenizer (loadable by `tokenizers` / `transformers` as is)
    tokenizer_meta.json   hash, vocab size, EOT id, what it was trained on (the caller's description),
                          training parameters, created_at; written last, after tokenizer.json
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from curation.store import StoreError, VersionStore
from training.config import DEFAULT_VOCAB_SIZE

EOT = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "tokenizer_meta.json"
TOKENIZERS_DIR = "tokenizers"
FORMAT_VERSION = 1
# How much of a version's text trains its tokenizer: enough for stable merges at an 8K vocabulary,
# small enough to train in well under a minute on 2 cores.
SAMPLE_BYTES = 50_000_000
SAMPLE_SEED = 0


class TokenizerError(Exception):
    """A tokenizer that cannot be trained or loaded; the message names the file and why."""


# ---------------------------------------------------------------------------------------------
# The tokenizer record


# (hash, allow_special) -> tokenizers.Tokenizer; one object per process, never pickled.
_HF_CACHE: dict[tuple[str, bool], Any] = {}


@dataclass(frozen=True)
class Tokenizer:
    path: Path  # the tokenizer.json
    hash: str  # sha256 of its canonical JSON
    vocab_size: int  # 1 + the largest token id (added tokens included): the model's embedding rows
    eot_id: int

    # ---- the Hugging Face object, loaded lazily --------------------------------------------
    def hf(self, allow_special: bool = False):  # -> tokenizers.Tokenizer
        """The Hugging Face tokenizer (cached per process). With `allow_special=False` (the default),
        special tokens written literally in the input are encoded as text."""
        key = (self.hash, allow_special)
        cached = _HF_CACHE.get(key)
        if cached is None:
            raw = _read_bytes(self.path)
            actual = canonical_hash(raw, self.path)
            if actual != self.hash:
                raise TokenizerError(f"{self.path}: sha256 {actual[:16]}… does not match the expected "
                                     f"{self.hash[:16]}…; the tokenizer file was changed")
            cached = HFTokenizer.from_str(raw.decode("utf-8"))
            cached.encode_special_tokens = not allow_special
            _HF_CACHE[key] = cached
        return cached

    # ---- encoding ---------------------------------------------------------------------------
    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        return self.hf(allow_special).encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Iterable[str], allow_special: bool = False) -> list[list[int]]:
        """Many texts at once: Hugging Face's batch encoder, parallel over cores in Rust (unless the
        process disabled it, e.g. `TOKENIZERS_PARALLELISM=false` in a worker process)."""
        hf = self.hf(allow_special)
        batch = texts if isinstance(texts, list) else list(texts)
        if not batch:
            return []
        encode = getattr(hf, "encode_batch_fast", None) or hf.encode_batch  # _fast: no offsets
        return [e.ids for e in encode(batch, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; the EOT id comes back as the literal "<|endoftext|>"."""
        if isinstance(ids, np.ndarray):
            ids = ids.tolist()
        return self.hf().decode(list(ids), skip_special_tokens=False)

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes each token id stands for (int32, length `vocab_size`; 0 for special tokens and
        unused ids). Summed over a token sequence it gives the bytes of the text it encodes, exactly, for
        byte-level tokenizers: the denominator of bits per byte."""
        return _token_bytes(self)

    def meta(self) -> dict[str, Any]:
        """tokenizer_meta.json next to the file, or {} for a tokenizer.json without one."""
        path = self.path.parent / META_FILE
        if not path.exists():
            return {}
        return json.loads(path.read_text(encoding="utf-8"))


_TOKEN_BYTES_CACHE: dict[str, np.ndarray] = {}


def _token_bytes(tok: Tokenizer) -> np.ndarray:
    cached = _TOKEN_BYTES_CACHE.get(tok.hash)
    if cached is not None:
        return cached
    hf = tok.hf()
    byte_of = {ch: b for b, ch in _bytes_to_unicode().items()}
    specials = {t.content for t in hf.get_added_tokens_decoder().values() if t.special}
    out = np.zeros(tok.vocab_size, dtype=np.int32)
    byte_level = _is_byte_level(hf)
    for token, idx in hf.get_vocab(with_added_tokens=True).items():
        if token in specials:
            continue
        if byte_level and all(ch in byte_of for ch in token):
            out[idx] = len(token)  # one character of the byte alphabet per byte
        else:
            out[idx] = len(hf.decode([idx], skip_special_tokens=False).encode("utf-8"))
    out.setflags(write=False)
    _TOKEN_BYTES_CACHE[tok.hash] = out
    return out


def _is_byte_level(hf) -> bool:
    try:
        pre = json.loads(hf.to_str()).get("pre_tokenizer") or {}
    except ValueError:
        return False
    kinds = {pre.get("type")} | {p.get("type") for p in pre.get("pretokenizers", []) if isinstance(p, dict)}
    return "ByteLevel" in kinds


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (what ByteLevel uses)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars)))


# ---------------------------------------------------------------------------------------------
# Hashing and loading


def canonical_hash(raw: bytes, where: str | os.PathLike[str] = "tokenizer.json") -> str:
    """sha256 of a tokenizer.json's canonical form: sorted keys, no whitespace, UTF-8."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise TokenizerError(f"{where}: not a valid tokenizer.json (JSON error: {exc})") from exc
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(canonical).hexdigest()


def _read_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TokenizerError(f"{path}: cannot read the tokenizer file: {exc}") from exc


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """A tokenizer from a tokenizer.json (or a folder holding one): ours or any Hugging Face one that
    has an "<|endoftext|>" token."""
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    path = path.resolve()
    raw = _read_bytes(path)
    digest = canonical_hash(raw, path)
    try:
        hf = HFTokenizer.from_str(raw.decode("utf-8"))
    except Exception as exc:  # the Rust side raises plain Exception
        raise TokenizerError(f"{path}: not a tokenizer the `tokenizers` library can load: {exc}") from exc
    eot_id = hf.token_to_id(EOT)
    if eot_id is None:
        raise TokenizerError(f"{path}: the tokenizer has no {EOT!r} token; add it as a special token "
                             "(token files separate documents with it)")
    vocab = hf.get_vocab(with_added_tokens=True)
    vocab_size = max(vocab.values()) + 1 if vocab else 0
    return Tokenizer(path=path, hash=digest, vocab_size=vocab_size, eot_id=eot_id)


# ---------------------------------------------------------------------------------------------
# Training


def _batched(texts: Iterable[str], stats: dict[str, int], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        if not isinstance(text, str):
            raise TokenizerError(f"training text #{stats['docs']} is {type(text).__name__}, not str")
        batch.append(text)
        stats["docs"] += 1
        stats["chars"] += len(text)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def train_tokenizer(
    texts: Iterable[str],
    out_dir: str | os.PathLike[str],
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    min_frequency: int = 2,
    corpus: Any = None,
) -> Tokenizer:
    """Train a GPT-2-style byte-level BPE on `texts` and save it in `out_dir`.

    `corpus` describes the training text (any JSON value: a version name and fingerprint, file paths...)
    and is stored in tokenizer_meta.json. `vocab_size` counts the 256 byte tokens and EOT (id 0); a
    corpus too small to fill it gives a smaller vocabulary (the record has the real size). A new
    `out_dir` appears in one rename, complete; in an existing one, tokenizer.json then
    tokenizer_meta.json are each replaced in one rename.
    """
    if vocab_size < 257:
        raise TokenizerError(f"vocab_size must be at least 257 (256 bytes + {EOT}), got {vocab_size}")
    out_dir = Path(out_dir)
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT],  # first: id 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    stats = {"docs": 0, "chars": 0}
    started = time.perf_counter()
    hf.train_from_iterator(_batched(texts, stats), trainer=trainer)
    seconds = time.perf_counter() - started
    hf.encode_special_tokens = False
    assert hf.token_to_id(EOT) == 0, "BpeTrainer places special tokens first"

    raw = hf.to_str(pretty=True).encode("utf-8")
    digest = canonical_hash(raw)
    vocab = hf.get_vocab(with_added_tokens=True)
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": "tokenizer",
        "hash": digest,
        "vocab_size": max(vocab.values()) + 1,
        "requested_vocab_size": vocab_size,
        "eot": EOT,
        "eot_id": 0,
        "model": "byte-level BPE (GPT-2 pre-tokenizer, add_prefix_space=False)",
        "min_frequency": min_frequency,
        "corpus": corpus,
        "trained_on": {"docs": stats["docs"], "chars": stats["chars"]},
        "train_seconds": round(seconds, 3),
        "tokenizers_version": tokenizers.__version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    files = {TOKENIZER_FILE: raw, META_FILE: (json.dumps(meta, indent=2, default=str) + "\n").encode("utf-8")}
    if out_dir.exists():
        for name, data in files.items():  # the meta file last: it is what a reader checks for
            _write_atomic(out_dir / name, data)
    else:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_dir.parent / f".{out_dir.name}.tmp-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            for name, data in files.items():
                (tmp / name).write_bytes(data)
            os.rename(tmp, out_dir)
        except OSError:
            if (out_dir / META_FILE).exists():  # another process trained the same one meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
                return load_tokenizer(out_dir)
            raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    tok = load_tokenizer(out_dir / TOKENIZER_FILE)
    assert tok.hash == digest and tok.eot_id == 0
    return tok


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# One tokenizer per version


def cache_root(store: VersionStore, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where tokenizers and token files of `store` are cached: the store's own folder for a local
    store; a remote store (s3://, memory://...) needs a local `cache_dir` (token files are memory-mapped)."""
    if cache_dir is not None:
        return Path(cache_dir).resolve()
    if not store.local:
        raise StoreError(f"store {store.url} is not on a local disk: pass cache_dir= (a local folder for "
                         "tokenizers and token files, which are memory-mapped)")
    return Path(store.root)


def iter_version_batches(store: VersionStore, version: str, columns: list[str],
                         batch_rows: int = 2048) -> Iterator[Any]:
    """A version's records as Arrow record batches, file by file in stored order, without reading the
    whole version into memory (the files come from `VersionStore.files`)."""
    yield from store.iter_batches(version, columns, batch_rows=batch_rows)


def sample_version_text(store: VersionStore, version: str, max_bytes: int = SAMPLE_BYTES,
                        seed: int = SAMPLE_SEED, stats: dict[str, int] | None = None) -> Iterator[str]:
    """The version's documents, or, when its text exceeds `max_bytes`, a seeded random subset of about
    that many bytes: each document kept with probability 1.1 * max_bytes / total, in stored order,
    stopping once max_bytes are taken. The same documents every time."""
    manifest = store.manifest(version)
    total = int((manifest.get("size") or {}).get("bytes") or 0)
    # 10 % over the target so that the sample usually reaches max_bytes (and stops there)
    keep_p = 1.0 if total <= max_bytes or total == 0 else min(1.0, 1.1 * max_bytes / total)
    rng = np.random.default_rng(seed)
    taken = 0
    stats = stats if stats is not None else {}
    stats.update(total_bytes=total, sampled_docs=0, sampled_bytes=0, keep_probability=keep_p)
    for batch in iter_version_batches(store, version, ["text"]):
        texts = batch.column(0).to_pylist()
        keep = rng.random(len(texts)) < keep_p if keep_p < 1.0 else None
        for i, text in enumerate(texts):
            if keep is not None and not keep[i]:
                continue
            size = len(text.encode("utf-8"))
            stats["sampled_docs"] += 1
            stats["sampled_bytes"] += size
            taken += size
            yield text
            if keep_p < 1.0 and taken >= max_bytes:
                return


def tokenizer_for_version(
    store: VersionStore | str | os.PathLike[str],
    version: str,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    *,
    min_frequency: int = 2,
    max_bytes: int = SAMPLE_BYTES,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Tokenizer:
    """The tokenizer trained on `version`'s text (up to `max_bytes`, sampled deterministically), from
    `<store root>/tokenizers/<version>-v<vocab_size>/` when it is there, else trained once and saved there.

    The default vocabulary, 8,192, is sized for CPU ablation models (<= 8K; see the module docstring).
    A cached tokenizer trained on an earlier version of the same name (a different content
    fingerprint: the store was rebuilt) is an error naming the folder.
    """
    store = store if isinstance(store, VersionStore) else VersionStore(store)
    manifest = store.manifest(version)
    fingerprint = manifest["fingerprint"]
    folder = cache_root(store, cache_dir) / TOKENIZERS_DIR / f"{version}-v{vocab_size}"
    if (folder / META_FILE).exists():
        tok = load_tokenizer(folder / TOKENIZER_FILE)
        corpus = tok.meta().get("corpus")
        cached_fp = corpus.get("fingerprint") if isinstance(corpus, dict) else None
        if cached_fp != fingerprint:
            raise TokenizerError(f"{folder}: trained on a version {version!r} with fingerprint {str(cached_fp)[:16]}…, "
                                 f"but the store's {version!r} has {fingerprint[:16]}…; delete the folder to retrain")
        return tok
    stats: dict[str, Any] = {}
    corpus = {"kind": "version", "store": store.url, "version": version, "fingerprint": fingerprint,
              "max_bytes": max_bytes, "seed": SAMPLE_SEED, "sample": stats}
    return train_tokenizer(sample_version_text(store, version, max_bytes, SAMPLE_SEED, stats), folder,
                           vocab_size=vocab_size, min_frequency=min_frequency, corpus=corpus)

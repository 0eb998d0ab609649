"""Decontamination: drop (or flag) training documents that share word n-grams with frozen eval sets.

The eval sets are those registered in a store with `curation.evalsets.register_evalset` (`curate
evalset register`). A training document is contaminated when it shares at least `min_overlaps`
distinct n-grams with one eval document.

n = 13 is the GPT-3 paper's choice (Brown et al. 2020, section 4 and appendix C: training documents
with a 13-gram overlap with a benchmark's test/dev sets were removed); EleutherAI's lm-evaluation-harness
decontamination (`ngram_n = 13`) and many later pipelines use the same. `min_overlaps: 1` (any shared
n-gram) is also GPT-3's rule.

Words: the project's tokens (`curation.analysis.tokenize`, shared through `TOKENS` with the other
n-gram rules) that contain a letter or digit, lowercased; punctuation and other symbol tokens are
dropped, so case and punctuation do not hide a copy. Each word is hashed with xxh3_64 of its UTF-8
bytes, and an n-gram is a polynomial rolling hash of its word hashes mod 2^64: stable across
processes and machines (Python's `hash()`, salted per process, plays no part in it). A false match
between two different n-grams has a probability of about 2^-64 per pair.

A document (training or eval) with fewer than `ngram` words (but at least one) is one n-gram: its
whole word sequence. So a short eval item (a 5-word answer) is still caught when a training document
is that item (after lowercasing and dropping punctuation); a short eval item *inside* a longer training
document is not (that would take n-grams as short as the item, and many false positives).

Per process, the eval sets' n-grams are read once into a sorted uint64 array with, for each n-gram,
the eval documents holding it (a module-level cache keyed by store, set names and sha256s/fingerprints,
and n). The step object holds only its parameters and pickles cheaply to worker processes. Membership
is tested for all n-grams of a chunk of documents at once: a bit-array prefilter rules out most of
them, `np.searchsorted` checks the rest exactly, and only matches go on to count per eval document.

Columns, written in both modes: `contamination_ngrams` (int32: the most distinct n-grams the document
shares with any one eval document; 0 when clean) and `contaminated_by` (the eval set holding that eval
document, the first set in `evalsets` order on a tie; null when 0). `mode: filter` rejects documents with
`contamination_ngrams >= min_overlaps`, reason `decontaminate:ngrams=3>=1`; `mode: annotate` keeps
everything and also writes `decontaminate__ngrams` for threshold views.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator
from xxhash import xxh3_64_intdigest

from curation.analysis import TOKENS, tokenize
from curation.evalsets import EvalSetError, evalset_exists, load_evalset, read_info
from curation.steps.filter import Check, FilterParams, FilterStep, Measurement
from curation.steps.registry import register
from curation.store import StoreError, VersionStore, check_name

NGRAMS_COLUMN = "contamination_ngrams"
SET_COLUMN = "contaminated_by"

# GPT-3 (Brown et al. 2020, appendix C) and lm-evaluation-harness's decontamination use 13-grams.
DEFAULT_NGRAM = 13
# Documents per chunk: bounds the memory of the per-chunk hash arrays (~100 bytes per word).
CHUNK_DOCS = 2_000
# Eval-set indexes kept per process (different sets or n in one run are rare).
MAX_CACHED_INDEXES = 4
# The prefilter's size cap: 2^28 bits (32 MB), still ~3 % full at 8 M distinct eval n-grams.
BLOOM_MAX_LOG2 = 28

_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_MASK = (1 << 64) - 1
_ALNUM = re.compile(r"[^\W_]")


class DecontaminateParams(FilterParams):
    # Names of eval sets registered in `store`.
    evalsets: list[str] = Field(min_length=1)
    # The store (folder or fsspec URL) holding the eval sets. Recipes normally leave it out and the runner
    # fills in the store the run writes to; until it does, a step without a store fails at first use.
    store: str | None = None
    ngram: int = Field(DEFAULT_NGRAM, ge=1)
    # Documents sharing at least this many distinct n-grams with one eval document are contaminated.
    min_overlaps: int = Field(1, ge=1)

    @field_validator("evalsets")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        for name in names:
            try:
                check_name(name)
            except StoreError:
                raise ValueError(f"invalid eval set name {name!r}") from None
        if len(set(names)) != len(names):
            raise ValueError(f"an eval set is listed twice: {names}")
        return names


# ---------------------------------------------------------------------------------------------
# Words and n-grams


def words(tokens: list[str]) -> list[str]:
    """The tokens that contain a letter or digit, lowercased."""
    kept = [t for t in tokens if t[0].isalnum() or t[-1].isalnum() or _ALNUM.search(t)]
    # Tokens never hold white space, so one lower() and split() over the joined words is exact.
    return " ".join(kept).lower().split(" ") if kept else []


def sequence_hash(word_hashes: list[int]) -> int:
    """The n-gram hash of a whole word sequence (the same polynomial as `doc_ngrams`), in Python ints."""
    h = 0
    multiplier = int(_MULTIPLIER)
    for w in word_hashes:
        h = (h * multiplier + w) & _MASK
    return h


def doc_ngrams(texts: list[str], n: int, ids: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The n-gram hashes of each document: (hashes uint64, rows int64), in document then position order,
    repeats included (only matches are made distinct, see `EvalIndex.match`).

    With `ids`, tokens come from (and go to) the shared per-process `TOKENS` cache."""
    flat: list[str] = []
    lengths = np.zeros(len(texts), dtype=np.int64)
    for row, text in enumerate(texts):
        tokens = TOKENS.tokens(ids[row], text) if ids is not None else tokenize(text)
        doc_words = words(tokens)
        lengths[row] = len(doc_words)
        flat.extend(doc_words)
    total = len(flat)
    if total == 0:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    # Each distinct word is hashed once per chunk (Arrow's dictionary encoding finds them at C speed).
    encoded = pc.dictionary_encode(pa.array(flat, pa.large_string()))
    distinct = encoded.dictionary.to_pylist()
    word_hashes = np.fromiter((xxh3_64_intdigest(w.encode("utf-8")) for w in distinct), dtype=np.uint64,
                              count=len(distinct))
    values = word_hashes[encoded.indices.to_numpy()]
    del flat, encoded
    ends = np.cumsum(lengths)
    hashes: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    positions = total - n + 1
    if positions > 0:
        with np.errstate(over="ignore"):
            h = values[:positions].copy()
            for k in range(1, n):
                h *= _MULTIPLIER
                h += values[k:k + positions]
        row_of = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)[:positions]
        valid = np.arange(positions, dtype=np.int64) + n <= ends[row_of]
        hashes.append(h[valid])
        rows.append(row_of[valid])
    short = np.flatnonzero((lengths > 0) & (lengths < n))
    if len(short):
        starts = ends - lengths
        hashes.append(np.array([sequence_hash(values[starts[r]:ends[r]].tolist()) for r in short], dtype=np.uint64))
        rows.append(short.astype(np.int64))
    return np.concatenate(hashes), np.concatenate(rows)


# ---------------------------------------------------------------------------------------------
# The eval-set index


@dataclass(frozen=True)
class EvalIndex:
    """Every n-gram of the eval sets, sorted, with the eval documents holding each (CSR postings)."""

    hashes: np.ndarray  # sorted distinct uint64 n-gram hashes
    offsets: np.ndarray  # int64, len(hashes) + 1: hashes[i] is in docs[offsets[i]:offsets[i + 1]]
    docs: np.ndarray  # int32 eval document numbers (across sets, in `set_names` order)
    doc_set: np.ndarray  # int32 set number of each eval document
    set_names: tuple[str, ...]
    # A one-hash Bloom filter over the n-grams (bit = the hash's top bits, about 32 bits per n-gram):
    # most n-grams of a clean document are ruled out by one lookup in a few MB, and only the ~3 % left
    # go through the binary search.
    bits: np.ndarray  # uint8, bit-packed
    shift: int

    @property
    def nbytes(self) -> int:
        return (self.hashes.nbytes + self.offsets.nbytes + self.docs.nbytes + self.doc_set.nbytes
                + self.bits.nbytes)

    @classmethod
    def build(cls, texts: list[str], doc_set: np.ndarray, set_names: tuple[str, ...], n: int) -> EvalIndex:
        parts_h, parts_d = [], []
        for start in range(0, len(texts), CHUNK_DOCS):
            h, r = doc_ngrams(texts[start:start + CHUNK_DOCS], n)
            parts_h.append(h)
            parts_d.append(r + start)
        hashes = np.concatenate(parts_h) if parts_h else np.empty(0, np.uint64)
        docs = np.concatenate(parts_d) if parts_d else np.empty(0, np.int64)
        order = np.lexsort((docs, hashes))  # by hash, then eval document
        hashes, docs = hashes[order], docs[order].astype(np.int32)
        distinct = np.ones(len(hashes), dtype=bool)  # one posting per (n-gram, eval document)
        distinct[1:] = (hashes[1:] != hashes[:-1]) | (docs[1:] != docs[:-1])
        hashes, docs = hashes[distinct], docs[distinct]
        first = np.ones(len(hashes), dtype=bool)
        first[1:] = hashes[1:] != hashes[:-1]
        starts = np.flatnonzero(first)
        offsets = np.append(starts, len(hashes)).astype(np.int64)
        distinct_hashes = hashes[starts]
        size_log2 = int(min(max(np.ceil(np.log2(max(len(distinct_hashes), 1) * 32)), 16), BLOOM_MAX_LOG2))
        shift = 64 - size_log2
        bits = np.zeros(1 << (size_log2 - 3), dtype=np.uint8)
        slots = (distinct_hashes >> np.uint64(shift)).astype(np.int64)
        np.bitwise_or.at(bits, slots >> 3, (1 << (slots & 7)).astype(np.uint8))
        return cls(distinct_hashes, offsets, docs, doc_set.astype(np.int32), set_names, bits, shift)

    def _maybe(self, hashes: np.ndarray) -> np.ndarray:
        slots = (hashes >> np.uint64(self.shift)).astype(np.int64)
        return ((self.bits[slots >> 3] >> (slots & 7).astype(np.uint8)) & 1).astype(bool)

    def match(self, hashes: np.ndarray, rows: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Per row: the most distinct n-grams shared with one eval document (int32), and that document's
        set number (-1 when none; the lowest eval document number on a tie)."""
        counts = np.zeros(n_rows, dtype=np.int32)
        best = np.full(n_rows, -1, dtype=np.int32)
        if len(self.hashes) == 0 or len(hashes) == 0:
            return counts, best
        maybe = np.flatnonzero(self._maybe(hashes))
        pos = np.minimum(np.searchsorted(self.hashes, hashes[maybe]), len(self.hashes) - 1)
        hit = self.hashes[pos] == hashes[maybe]
        if not hit.any():
            return counts, best
        # Distinct (row, n-gram) matches: an n-gram repeated in a document counts once.
        pairs = np.unique(rows[maybe[hit]] * len(self.hashes) + pos[hit])
        hit_rows, pos = pairs // len(self.hashes), pairs % len(self.hashes)
        starts = self.offsets[pos]
        sizes = self.offsets[pos + 1] - starts
        cumulative = np.cumsum(sizes)
        within = np.arange(int(cumulative[-1]), dtype=np.int64) - np.repeat(cumulative - sizes, sizes)
        eval_docs = self.docs[np.repeat(starts, sizes) + within].astype(np.int64)
        n_eval = len(self.doc_set)
        pairs, shared = np.unique(np.repeat(hit_rows, sizes) * n_eval + eval_docs, return_counts=True)
        pair_rows, pair_docs = pairs // n_eval, pairs % n_eval
        order = np.lexsort((pair_docs, -shared, pair_rows))  # row, then most shared, then first document
        top = order[np.concatenate(([True], pair_rows[order][1:] != pair_rows[order][:-1]))]
        counts[pair_rows[top]] = shared[top]
        best[pair_rows[top]] = self.doc_set[pair_docs[top]]
        return counts, best


_INDEXES: OrderedDict[tuple, EvalIndex] = OrderedDict()
_INDEX_LOCK = threading.Lock()


def eval_index(store: str, names: tuple[str, ...], n: int) -> EvalIndex:
    """The index of the named eval sets, built once per process. A hit reads only the sets' small JSON
    files (to key on their sha256 and fingerprint); a miss loads each set, verifying its sha256."""
    target = VersionStore(store)
    infos = [read_info(target, name) for name in names]
    key = (type(target.fs).__name__, target.root, tuple((i.name, i.sha256, i.fingerprint) for i in infos), n)
    with _INDEX_LOCK:
        index = _INDEXES.get(key)
        if index is not None:
            _INDEXES.move_to_end(key)
            return index
        texts: list[str] = []
        doc_set: list[int] = []
        for number, name in enumerate(names):
            table, _ = load_evalset(target, name)
            texts.extend(table.column("text").to_pylist())
            doc_set.extend([number] * table.num_rows)
        index = EvalIndex.build(texts, np.array(doc_set, dtype=np.int32), tuple(names), n)
        _INDEXES[key] = index
        while len(_INDEXES) > MAX_CACHED_INDEXES:
            _INDEXES.popitem(last=False)
        return index


def clear_cache() -> None:
    with _INDEX_LOCK:
        _INDEXES.clear()


# ---------------------------------------------------------------------------------------------
# The step


@register
class Decontaminate(FilterStep[DecontaminateParams]):
    name = "decontaminate"
    checks = (Check("ngrams", "<", "min_overlaps"),)  # kept while it shares fewer n-grams than that
    calibratable = False  # the rule keeps evaluation text out of training data: never loosened to keep more

    def preflight(self, store_url: str) -> None:
        p = self.params
        store = p.store or store_url
        missing = [name for name in p.evalsets if not evalset_exists(store, name)]
        if missing:
            raise ValueError(f"evalsets: no evaluation set {', '.join(map(repr, missing))} in {store} (register one "
                             "with `curate evalset register`; `curate evalset list` shows those there are)")

    def _index(self) -> EvalIndex:
        p = self.params
        if p.store is None:
            raise EvalSetError(f"{self.name}: no `store` given: set `store:` to the store (folder or URL) holding "
                               f"the eval sets {', '.join(p.evalsets)} (register them with `curate evalset "
                               "register`)")
        return eval_index(p.store, tuple(p.evalsets), p.ngram)

    def measure(self, batch: pa.Table) -> Measurement:
        p = self.params
        index = self._index()
        n_rows = batch.num_rows
        counts = np.zeros(n_rows, dtype=np.int32)
        best = np.full(n_rows, -1, dtype=np.int32)
        texts, ids = batch.column("text"), batch.column("id")
        for start in range(0, n_rows, CHUNK_DOCS):
            chunk_texts = texts.slice(start, CHUNK_DOCS).to_pylist()
            hashes, rows = doc_ngrams(chunk_texts, p.ngram, ids.slice(start, CHUNK_DOCS).to_pylist())
            c, b = index.match(hashes, rows, len(chunk_texts))
            counts[start:start + len(chunk_texts)] = c
            best[start:start + len(chunk_texts)] = b
        ngrams = pa.array(counts, pa.int32())
        sets = pc.take(pa.array(index.set_names, pa.string()), pa.array(best, pa.int32(), mask=best < 0))
        return Measurement(self.reasons({"ngrams": counts}, n_rows), signals={"ngrams": ngrams},
                           annotations={NGRAMS_COLUMN: ngrams, SET_COLUMN: sets})


def version_overlap(store: VersionStore, version: str, evalsets: list[str], ngram: int = DEFAULT_NGRAM
                    ) -> dict[str, int]:
    """How many of a version's documents share at least one `ngram`-gram with the eval sets (the
    step's own measure, streamed over the version): training on evaluation text flatters that loss,
    so the ablation shows this beside every version's numbers."""
    step = Decontaminate(evalsets=evalsets, store=store.url, ngram=ngram, mode="annotate")
    docs = contaminated = 0
    for batch in store.iter_batches(version, ["id", "text"], batch_rows=CHUNK_DOCS):
        measured = step.measure(pa.Table.from_batches([batch]))
        docs += batch.num_rows
        contaminated += int(pc.sum(pc.greater_equal(measured.signals["ngrams"], 1)).as_py() or 0)
    return {"docs": docs, "contaminated": contaminated, "ngram": ngram}

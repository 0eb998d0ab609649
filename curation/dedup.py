"""Duplicate detection: exact (normalised-text hashes) and near (MinHash LSH, verified).

Near duplicates follow the standard recipe (Broder 1997; Lee et al. 2022; FineWeb/datatrove):
word 5-gram shingles of normalised text, 128 MinHash permutations, LSH bands chosen for the
Jaccard threshold, then every candidate pair is *verified* with the exact Jaccard of the two
shingle sets before anything is removed, and verified pairs are clustered with union-find.

Signatures use datasketch's own permutations and its "affine32" scheme (MurmurHash3 finaliser, then
a*h + b mod 2^32), computed for a whole batch of documents at once with numpy; a test checks them
against `datasketch.MinHash.update_batch` value for value. The LSH index is not datasketch's
`MinHashLSH` (a dict of band keys per document, ~3.6-5.3 KB/doc): it is one uint64 per band per
document in numpy arrays, and candidates come from sorting each band (b x 8 bytes per document).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import xxhash
from datasketch import MinHash

from curation.record import ORIGINS

NUM_PERM = 128  # datasketch's default; FineWeb uses 112, Lee et al. 2022 use 9 x 20 = 180
SHINGLE_WORDS = 5  # word 5-grams, as FineWeb/datatrove and Lee et al. 2022
THRESHOLD = 0.8  # Jaccard threshold: Lee et al. 2022, NeMo Curator's default
SEED = 1  # datasketch's default seed
# Candidate recall we want at exactly the threshold: pairs just above it must be found (our choice).
MIN_RECALL_AT_THRESHOLD = 0.95
_MIX = np.uint64(0x9E3779B97F4A7C15)
_WORD = re.compile(r"\w+")
_SPACES = re.compile(r"\s+")


# ---- shingles -----------------------------------------------------------------------------------


def normalize(text: str) -> str:
    """Case and white space do not make a document different (our choice, as datatrove's simplify_text)."""
    return _SPACES.sub(" ", text.lower()).strip()


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class _Vocabulary:
    """Stable 64-bit word hashes (xxh3), each distinct word hashed once per process."""

    def __init__(self, limit: int = 2_000_000):
        self.limit = limit
        self.hashes: dict[str, int] = {}

    def __call__(self, tokens: list[str]) -> np.ndarray:
        get = self.hashes.get
        values = [get(t) for t in tokens]
        if None in values:
            if len(self.hashes) > self.limit:
                self.hashes.clear()
            for i, (token, value) in enumerate(zip(tokens, values)):
                if value is None:
                    value = self.hashes[token] = xxhash.xxh3_64_intdigest(token.encode("utf-8"))
                    values[i] = value
        return np.array(values, dtype=np.uint64)


_VOCAB = _Vocabulary()


def shingles(texts: Sequence[str], n: int = SHINGLE_WORDS) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every word n-gram of every document, concatenated, and each document's
    [start, end) in them. A document of fewer than n words (at least one) is one shingle of all its
    words; an empty one is a single empty shingle, so every document has a signature."""
    word_hashes = [_VOCAB(words(t)) for t in texts]
    lengths = np.array([len(w) for w in word_hashes], dtype=np.int64)
    counts = np.maximum(lengths - n + 1, 1)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    flat = np.concatenate(word_hashes) if word_hashes else np.empty(0, np.uint64)
    total = len(flat)
    out = np.empty(int(offsets[-1]), dtype=np.uint64)
    if total:
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        padded = np.concatenate((flat, np.zeros(n, np.uint64)))
        h = np.zeros(total, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for k in range(n):
                h = h * _MIX + padded[k:k + total]
        doc_of = np.repeat(np.arange(len(texts)), lengths)
        position = np.arange(total) - starts[doc_of]
        full = position <= (lengths[doc_of] - n)  # an n-gram starting here stays inside the document
        long_docs = lengths >= n
        out_index = offsets[:-1][doc_of] + position
        keep = full & long_docs[doc_of]
        out[out_index[keep]] = h[keep]
    for d in np.flatnonzero(lengths < n):  # short (or empty) documents: one shingle of all their words
        h = np.uint64(len(word_hashes[d]) + 1)
        with np.errstate(over="ignore"):
            for value in word_hashes[d]:
                h = h * _MIX + value
        out[offsets[d]] = h
    return out, offsets


def shingle_set(hashes: np.ndarray, offsets: np.ndarray, doc: int) -> np.ndarray:
    return np.unique(hashes[offsets[doc]:offsets[doc + 1]])


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted, unique hash arrays."""
    if a.size == 0 and b.size == 0:
        return 1.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


# ---- MinHash signatures ------------------------------------------------------------------------


@lru_cache(maxsize=8)
def permutations(num_perm: int = NUM_PERM, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's permutation parameters (a, b) for the affine32 scheme."""
    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def to_uint32(hashes: np.ndarray) -> np.ndarray:
    """64-bit shingle hashes folded to the 32-bit values the affine32 scheme hashes."""
    return (hashes ^ (hashes >> np.uint64(32))).astype(np.uint32)


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser (the pre-mix datasketch's affine schemes apply)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def signatures(hashes: np.ndarray, offsets: np.ndarray, num_perm: int = NUM_PERM, seed: int = SEED,
               chunk: int = 2048) -> np.ndarray:
    """MinHash signatures (documents x num_perm, uint32) of every document at once: equal to
    datasketch's `MinHash(num_perm, seed, hashfunc=identity).update_batch(to_uint32(shingles))`.
    Works through cache-sized chunks of shingles (2,048 x 128 x 4 B = 1 MB), in place."""
    a, b = permutations(num_perm, seed)
    n_docs = len(offsets) - 1
    out = np.empty((n_docs, num_perm), dtype=np.uint32)
    mixed = fmix32(to_uint32(hashes))
    buffer = np.empty((chunk, num_perm), dtype=np.uint32)
    first = 0
    while first < n_docs:
        # As many whole documents as fit in one chunk of shingles (at least one document).
        last = max(int(np.searchsorted(offsets, offsets[first] + chunk, side="right")) - 1, first + 1)
        lo, hi = int(offsets[first]), int(offsets[last])
        block = buffer[:hi - lo] if hi - lo <= chunk else np.empty((hi - lo, num_perm), dtype=np.uint32)
        np.multiply(mixed[lo:hi, None], a[None, :], out=block)
        np.add(block, b[None, :], out=block)
        out[first:last] = np.minimum.reduceat(block, offsets[first:last] - lo, axis=0)
        first = last
    return out


# ---- LSH bands ------------------------------------------------------------------------------------


def candidate_probability(similarity: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """P(two documents of Jaccard s share at least one band) = 1 - (1 - s^r)^b: the S-curve."""
    return 1 - (1 - np.power(similarity, rows)) ** bands


def choose_bands(threshold: float = THRESHOLD, num_perm: int = NUM_PERM,
                 min_recall: float = MIN_RECALL_AT_THRESHOLD) -> tuple[int, int]:
    """(bands, rows) with bands x rows <= num_perm that catch a pair at the threshold with probability
    >= min_recall, and among those make the fewest candidates below it (area under the S-curve on
    [0, threshold]: each one costs a verification, not a wrong removal)."""
    grid = np.linspace(0, threshold, 200)
    best: tuple[float, int, int] | None = None
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if bands < 1 or candidate_probability(threshold, bands, rows) < min_recall:
            continue
        false_area = float(np.trapezoid(candidate_probability(grid, bands, rows), grid))
        if best is None or false_area < best[0]:
            best = (false_area, bands, rows)
    if best is None:
        return num_perm, 1
    return best[1], best[2]


def s_curve(bands: int, rows: int, points: Iterable[float] = (0.5, 0.6, 0.7, 0.8, 0.9)) -> dict[str, float]:
    return {f"{s:.1f}": round(float(candidate_probability(s, bands, rows)), 4) for s in points}


def band_hashes(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One uint64 per band per document (documents x bands)."""
    out = np.zeros((len(sigs), bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for band in range(bands):
            h = np.full(len(sigs), band + 1, dtype=np.uint64)
            for column in sigs[:, band * rows:(band + 1) * rows].T:
                h = h * _MIX + column.astype(np.uint64)
            out[:, band] = h
    return out


def candidate_pairs(bands: np.ndarray, max_group: int = 64) -> np.ndarray:
    """Pairs (i < j) of documents sharing a band, unique, as an (n, 2) int64 array. Groups larger
    than `max_group` (e.g. thousands of copies of one page) are linked as a star and a chain instead
    of every pair; after verification union-find still joins them."""
    pairs: list[np.ndarray] = []
    for band in range(bands.shape[1]):
        values = bands[:, band]
        order = np.argsort(values, kind="stable")
        ordered = values[order]
        starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
        ends = np.concatenate((starts[1:], [len(ordered)]))
        sizes = ends - starts
        for start, end, size in zip(starts[sizes > 1], ends[sizes > 1], sizes[sizes > 1]):
            members = np.sort(order[start:end])
            if size <= max_group:
                i, j = np.triu_indices(size, k=1)
                pairs.append(np.stack((members[i], members[j]), axis=1))
            else:
                star = np.stack((np.full(size - 1, members[0]), members[1:]), axis=1)
                chain = np.stack((members[:-1], members[1:]), axis=1)
                pairs.extend((star, chain))
    if not pairs:
        return np.empty((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(pairs).astype(np.int64), axis=0)


# ---- clusters and the keep policy ---------------------------------------------------------------


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for x in range(len(self.parent)):
            out.setdefault(self.find(x), []).append(x)
        return out


@dataclass(frozen=True)
class DocKey:
    id: str
    length: int
    quality: float = 0.0
    published: str | None = None  # the earlier version it belongs to
    source: str = ""  # the recipe input it came from (the record's `source`)
    origin: str = ""  # who wrote it: "human" or "synthetic" (the record's `origin`)


# The keep policy's criteria, most important first (the names the report's `decided_by` counts).
KEEP_CRITERIA = ("published", "origin", "source", "quality_score", "length", "id")


def _position(order: tuple[str, ...], value: str) -> int:
    """Where `value` stands in `order`; every unlisted value comes after the listed ones, all tied."""
    return order.index(value) if value in order else len(order)


@dataclass(frozen=True)
class KeepPolicy:
    """Which document of a duplicate cluster survives, criterion by criterion (KEEP_CRITERIA):
    a document of an earlier (published) version, since it cannot be removed any more; then the
    preferred origin (human text before synthetic by default, so a model's copy never replaces its
    source); then the preferred source (listed sources in their order, unlisted ones after them);
    then the highest quality_score, the longest text, the smallest id."""

    prefer_origins: tuple[str, ...] = ORIGINS
    prefer_sources: tuple[str, ...] = ()

    def provenance_rank(self, origin: str, source: str) -> tuple[int, int]:
        """(origin rank, source rank): smaller is preferred."""
        return _position(self.prefer_origins, origin), _position(self.prefer_sources, source)

    def rank(self, origin: str, source: str) -> int:
        """provenance_rank as one number (smaller is preferred), for numpy sorts."""
        origin_rank, source_rank = self.provenance_rank(origin, source)
        return origin_rank * (len(self.prefer_sources) + 1) + source_rank

    def order(self, doc: DocKey) -> tuple:
        """The sort key: the document to keep sorts first."""
        return (doc.published is None, *self.provenance_rank(doc.origin, doc.source), -doc.quality, -doc.length,
                doc.id)

    def as_report(self) -> dict[str, list[str]]:
        return {"prefer_origins": list(self.prefer_origins), "prefer_sources": list(self.prefer_sources)}

    def deciding_criterion(self, kept: DocKey, removed: DocKey) -> str:
        """The first criterion of KEEP_CRITERIA on which `kept` beat `removed`."""
        return next((name for name, a, b in zip(KEEP_CRITERIA, self.order(kept), self.order(removed)) if a != b),
                    KEEP_CRITERIA[-1])


@dataclass
class Removal:
    dup_of: str
    cluster: str
    jaccard: float
    in_version: str | None = None


@dataclass
class DedupDecision:
    removals: dict[str, Removal] = field(default_factory=dict)
    cluster_sizes: dict[str, int] = field(default_factory=dict)  # id -> size of its cluster (>= 2)
    report: dict[str, Any] = field(default_factory=dict)


def resolve_clusters(docs: list[DocKey], edges: Iterable[tuple[int, int]],
                     similarity: Callable[[int, int], float] | None = None,
                     threshold: float = 0.0, policy: KeepPolicy = KeepPolicy()) -> DedupDecision:
    """Clusters of duplicates, and which document of each survives.

    Verified edges join documents into connected components (union-find). Within a component the
    keep policy picks the best document, which absorbs every member whose own similarity to it
    reaches the threshold; the members left over (similar to a removed document, not to the kept
    one) form the next cluster, and so on. So every removal names a kept document it really
    duplicates: single-link chains (A~B, B~C, A!~C) never remove C for a similarity it does not have.
    Without a `similarity` function (unverified candidates) components are removed whole.

    The report counts, per source, whose documents were kept over whose (`kept_over`: kept source ->
    removed source -> removals) and which criterion of the policy decided each removal (`decided_by`)."""
    uf = UnionFind(len(docs))
    for i, j in edges:
        uf.union(i, j)
    decision = DedupDecision()
    sizes: dict[int, int] = {}
    kept_over: dict[str, dict[str, int]] = {}
    decided_by: dict[str, int] = {}
    for component in uf.groups().values():
        remaining = sorted(component, key=lambda m: policy.order(docs[m]))
        while len(remaining) > 1:
            kept, rest = remaining[0], remaining[1:]
            if similarity is None:
                members, scores, remaining = rest, [float("nan")] * len(rest), []
            else:
                scored = [(m, similarity(kept, m)) for m in rest]
                members = [m for m, sim in scored if sim >= threshold]
                scores = [sim for m, sim in scored if sim >= threshold]
                remaining = [m for m, sim in scored if sim < threshold]
            if not members:
                continue  # the best document duplicates none of the rest: they form their own clusters
            cluster = docs[kept].id
            size = len(members) + 1
            sizes[size] = sizes.get(size, 0) + 1
            decision.cluster_sizes[cluster] = size
            for m, sim in zip(members, scores):
                decision.cluster_sizes[docs[m].id] = size
                if not docs[m].published:
                    decision.removals[docs[m].id] = Removal(cluster, cluster, sim, docs[kept].published)
                    by_kept = kept_over.setdefault(docs[kept].source, {})
                    by_kept[docs[m].source] = by_kept.get(docs[m].source, 0) + 1
                    criterion = policy.deciding_criterion(docs[kept], docs[m])
                    decided_by[criterion] = decided_by.get(criterion, 0) + 1
    decision.report["cluster_sizes"] = {str(k): v for k, v in sorted(sizes.items())}
    decision.report["kept_over"] = {k: dict(sorted(v.items())) for k, v in sorted(kept_over.items())}
    decision.report["decided_by"] = {c: decided_by[c] for c in KEEP_CRITERIA if c in decided_by}
    return decision

"""Duplicate detection: exact (normalised-text hashes) and near (MinHash LSH, verified).

Near duplicates follow the standard recipe (Broder 1997; Lee et al. 2022; FineWeb/datatrove):
word 5-gram shingles of normalised text, 128 MinHash permutations, LSH bands chosen for the
Jaccard threshold, then every candidate pair is *verified* with the exact Jaccard of the two
shingle sets before anything is removed, and verified pairs are clustered (connected components).

Signatures use datasketch's own permutations and its "affine32" scheme (MurmurHash3 finaliser, then
a*h + b mod 2^32), computed for a whole batch of documents at once with numpy; a test checks them
against `datasketch.MinHash.update_batch` value for value. The LSH index is not datasketch's
`MinHashLSH` (a dict of band keys per document, ~3.6-5.3 KB/doc): it is one uint64 per band per
document in numpy arrays, and candidates come from sorting each band (b x 8 bytes per document).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import xxhash

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
    from datasketch import MinHash  # here: importing datasketch (and the SciPy it loads) costs ~0.45 s per process

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


def band_pairs(values: np.ndarray, max_group: int = 64) -> np.ndarray:
    """Pairs (i < j) of documents whose hash in one band is equal (i, j: positions in `values`), as an
    (n, 2) int64 array. Groups larger than `max_group` (e.g. thousands of copies of one page) are linked
    as a star and a chain instead of every pair; after verification the clustering still joins them."""
    pairs: list[np.ndarray] = []
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
    return unique_pairs(pairs)


def unique_pairs(parts: Sequence[np.ndarray]) -> np.ndarray:
    """The distinct pairs of several (n, 2) arrays, sorted."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return np.empty((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(parts).astype(np.int64), axis=0)


def candidate_pairs(bands: np.ndarray, max_group: int = 64) -> np.ndarray:
    """Pairs (i < j) of documents sharing at least one band (documents x bands), unique (see band_pairs)."""
    return unique_pairs([band_pairs(bands[:, band], max_group) for band in range(bands.shape[1])])


# ---- clusters and the keep policy ---------------------------------------------------------------


def components(edges: np.ndarray | Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Connected components of the graph the edges (n, 2) draw, each a sorted array of its nodes; nodes
    without an edge are not listed. Memory and time follow the edges, not the documents."""
    from scipy.sparse import coo_matrix  # here, as datasketch above: most processes never cluster
    from scipy.sparse.csgraph import connected_components

    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    if not len(edges):
        return []
    nodes, inverse = np.unique(edges, return_inverse=True)
    inverse = inverse.reshape(-1, 2)
    graph = coo_matrix((np.ones(len(edges), np.int8), (inverse[:, 0], inverse[:, 1])), shape=(len(nodes),) * 2)
    _, labels = connected_components(graph, directed=False)
    order = np.argsort(labels, kind="stable")
    cuts = np.flatnonzero(np.diff(labels[order])) + 1
    return [nodes[part] for part in np.split(order, cuts)]


@dataclass(frozen=True, slots=True)  # slots: the flow holds one per document in an edge
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


@dataclass(slots=True)
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


# Similarities of a batch of document pairs, in the batch's order (a decision may compute them on workers).
Similarities = Callable[[list[tuple[int, int]]], list[float]]


def resolve_clusters(docs: Mapping[int, DocKey], edges: np.ndarray | Sequence[tuple[int, int]],
                     similarities: Similarities | None = None, threshold: float = 0.0,
                     policy: KeepPolicy = KeepPolicy()) -> DedupDecision:
    """Clusters of duplicates, and which document of each survives.

    Verified edges join documents into connected components. Within a component the keep policy picks
    the best document, which absorbs every member whose own similarity to it reaches the threshold;
    the members left over (similar to a removed document, not to the kept one) form the next cluster,
    and so on. So every removal names a kept document it really duplicates: single-link chains (A~B,
    B~C, A!~C) never remove C for a similarity it does not have. Without `similarities` (unverified
    candidates) components are removed whole.

    `docs` needs only the documents that appear in an edge. The similarities each round needs (kept
    document against the rest of its component) are asked for in one batch per round, so a caller can
    compute them where the texts are; the answer does not depend on how the batches are cut.

    The report counts, per source, whose documents were kept over whose (`kept_over`: kept source ->
    removed source -> removals) and which criterion of the policy decided each removal (`decided_by`)."""
    decision = DedupDecision()
    sizes: dict[int, int] = {}
    kept_over: dict[str, dict[str, int]] = {}
    decided_by: dict[str, int] = {}
    pending = [sorted(c.tolist(), key=lambda m: policy.order(docs[m])) for c in components(edges)]
    while pending:
        needed = [(remaining[0], m) for remaining in pending for m in remaining[1:]]
        scores = iter(similarities(needed) if similarities is not None else [float("nan")] * len(needed))
        still = []
        for remaining in pending:
            kept = remaining[0]
            scored = [(m, next(scores)) for m in remaining[1:]]
            if similarities is None:
                members, left = scored, []
            else:
                members = [(m, sim) for m, sim in scored if sim >= threshold]
                left = [m for m, sim in scored if sim < threshold]
            if len(left) > 1:
                still.append(left)  # the best document duplicates none of these: they form their own clusters
            if not members:
                continue
            cluster = docs[kept].id
            size = len(members) + 1
            sizes[size] = sizes.get(size, 0) + 1
            decision.cluster_sizes[cluster] = size
            for m, sim in members:
                decision.cluster_sizes[docs[m].id] = size
                if not docs[m].published:
                    decision.removals[docs[m].id] = Removal(cluster, cluster, sim, docs[kept].published)
                    by_kept = kept_over.setdefault(docs[kept].source, {})
                    by_kept[docs[m].source] = by_kept.get(docs[m].source, 0) + 1
                    criterion = policy.deciding_criterion(docs[kept], docs[m])
                    decided_by[criterion] = decided_by.get(criterion, 0) + 1
        pending = still
    decision.report.update(_counts_report(sizes, kept_over, decided_by))
    return decision


def _counts_report(sizes: dict[int, int], kept_over: dict[str, dict[str, int]], decided_by: dict[str, int]
                   ) -> dict[str, Any]:
    return {"cluster_sizes": {str(k): v for k, v in sorted(sizes.items())},
            "kept_over": {k: dict(sorted(v.items())) for k, v in sorted(kept_over.items())},
            "decided_by": {c: decided_by[c] for c in KEEP_CRITERIA if c in decided_by}}


def merge_decisions(parts: Iterable[DedupDecision]) -> DedupDecision:
    """One decision from decisions over disjoint sets of clusters (e.g. exact dedup's hash ranges): their
    removals and cluster sizes together, their counts added."""
    merged = DedupDecision()
    sizes: dict[int, int] = {}
    kept_over: dict[str, dict[str, int]] = {}
    decided_by: dict[str, int] = {}
    for part in parts:
        merged.removals.update(part.removals)
        merged.cluster_sizes.update(part.cluster_sizes)
        for size, count in part.report.get("cluster_sizes", {}).items():
            sizes[int(size)] = sizes.get(int(size), 0) + count
        for kept, removed in part.report.get("kept_over", {}).items():
            into = kept_over.setdefault(kept, {})
            for source, count in removed.items():
                into[source] = into.get(source, 0) + count
        for criterion, count in part.report.get("decided_by", {}).items():
            decided_by[criterion] = decided_by.get(criterion, 0) + count
    merged.report.update(_counts_report(sizes, kept_over, decided_by))
    return merged

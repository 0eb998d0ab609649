"""Statistics of a version: size, lengths, vocabulary, lexical and semantic diversity, coverage.

`compute_stats(batches)` reads the records once, as a stream of Arrow tables, and returns the
`stats.json` dict (docs/stats-schema.md) and the version's `SemanticModel` (saved as
`stats_model.npz`, so that a later version can measure its coverage of this one's clusters).
Memory is bounded whatever the corpus size: what grows with the corpus is only the word-count
table (pruned past `MAX_VOCAB` words, see below) and the exact length counts (one integer per
distinct length).

Exact, over every document (streamed):
  * counts: documents, characters (Unicode code points), words, tokens (with a tokenizer:
    `encode_batch(list[str]) -> list[list[int]]`), by source, by `lang` (null lang -> "und").
  * words: lowercase runs of `\\w` (letters, digits, underscore; Arrow's RE2 `[\\pL\\pN_]+`, the
    same set as Python's `\\w`), counted column-wise with Arrow compute (lowercasing by Arrow's
    `utf8_lower`, which differs from `str.lower` only in context rules such as the Greek final sigma).
  * length: the exact count of every length, so quantiles are EXACT (numpy's default 'linear'
    interpolation between order statistics), and the histogram over integer, log-spaced edges
    (ten per decade, rounded: 1, 2, 3, 4, 5, 6, 8, 10, 13, 16, ...; bin i is [edges[i], edges[i+1]),
    empty documents fall in [0, 1)), trimmed to the bins from the first to the last non-empty one.
  * unigrams: top 5,000 words by count (ties by word). Counts are exact unless the corpus has more
    than MAX_VOCAB (1 M) distinct words: whenever the table outgrows that, it is cut to its
    MAX_VOCAB / 2 most frequent words, and a dropped word that reappears restarts from zero, so a
    word's count is low by what it had each time it was dropped (each time at most the cut-off
    count, logged); on natural text the cut-offs are far below the 5,000th count.
  * quality_score / lang_score: histogram of 20 bins on [0, 1] (values clipped into it); quantiles
    from a 1,000-bin histogram interpolated within the bin (within 0.001), with the exact minimum
    and maximum as quantiles 0 and 100. Null values are not counted.
  * dup_cluster_size: documents per value (null counts as 1: a document in no cluster).
  * instructions (when `instruction` and `output` columns exist; rows with a non-empty
    instruction): task type, a HEURISTIC: the first word of the instruction (lowercase letters,
    skipping 'please', 'can', 'you', 'could', 'would', 'kindly', 'will') and the first word after
    it that is not in a small stop-word list (articles, pronouns, prepositions, 'following', ...):
    "Summarize the article ..." -> "summarize article", "Can you translate this sentence" ->
    "translate sentence". The 200 most frequent task types are listed; `distinct_task_types` counts
    all. Input (missing or null input = 0 characters) and output lengths: exact quantiles.

The sample. Every document gets a key, xxh3-64 of its id seeded with `seed`, and the sample is the
`sample_size` documents with the smallest keys (bottom-k / priority sampling: a uniform sample
without replacement, the same whatever the batching or order of the stream, and coordinated
across versions: a document present in two versions is in both samples or in neither). Ties (a
repeated id) go to the earlier document. Sampled documents are kept as their first
`SAMPLE_CHARS` (16,384) characters, so the sample is bounded. `sample.size` is the number of
documents actually sampled (min(sample_size, docs)).

Lexical diversity, on the LENGTH-MATCHED sample: every sampled document cut to its first
`words_per_doc` words (the text up to the end of that word, punctuation kept); documents with
fewer than words_per_doc / 2 words are EXCLUDED (our choice: every document then contributes
between half and all of words_per_doc words, so versions with different length distributions stay
comparable). If no sampled document is that long, all are used whole instead.
  * distinct_n: distinct word n-grams / total n-grams over the sample (n-grams never cross
    documents), n = 1..4;
  * unigram_entropy: Shannon entropy (bits) of the sample's word distribution;
  * mattr: moving-average type-token ratio (Covington & McFall 2010), window 50, averaged over
    documents (a document shorter than the window: its plain type-token ratio);
  * compression_ratio: gzip (level 9) bytes / raw UTF-8 bytes of the sample's cut texts joined by
    newlines: higher = less redundant = more diverse (gzip sees 32 KB back, so this measures
    repetition within and between neighbouring documents);
  * near_dup_density: share of sample documents with a near duplicate in the sample: MinHash-LSH
    (`curation.dedup`: word 5-gram shingles, 128 permutations, bands chosen for Jaccard 0.7) candidate
    pairs, each VERIFIED with the exact Jaccard of the shingle sets (>= 0.7).

Semantic diversity, on the sample (each document's first SAMPLE_CHARS characters):
  * hashed TF-IDF: lowercase `\\w+` words of 2+ characters, not all digits, not in a small English
    stop-word list, hashed into 2**18 features (xxh3-64 of the UTF-8 word, seed 0, low 18 bits);
    sublinear tf (1 + ln tf), smooth idf ln((1 + n) / (1 + df)) + 1 fitted on the sample, rows
    l2-normalised;
  * truncated SVD to `dims`: scipy's `svds` (ARPACK) with a seeded start vector (or, for a sample
    too small for ARPACK, the exact eigendecomposition of its Gram matrix); component signs fixed
    (largest entry positive); embeddings X V^T re-normalised;
  * k-means (numpy; k-means++ init with greedy trials, seeded; Lloyd to convergence or 50
    iterations; best of 4 inits by inertia) on the documents whose embedding is not zero; clusters
    numbered by size, largest first; `top_terms`: the 10 highest weights of the centroid mapped back
    through the SVD components to the hashed features, each feature named by the sample's most
    frequent word hashing there;
  * cluster_entropy: entropy (bits) of the cluster shares;
  * vendi_score (Friedman & Dieng 2023): exp of the entropy of the eigenvalues of K / n, K the
    cosine similarities of the first min(1,000, n) embedded sample documents (in sample order, which
    is random); `vendi_sample` = that n.
  `dims` and `k` report what was fitted: fewer than asked when the sample is too small.
  Only the features seen in the sample are stored (the others have a zero component, so they can
  never move an embedding, whose norm is removed after projection).

Coverage (with `reference_model`, a saved `SemanticModel` of another version): this version's
sample is embedded with the reference model and assigned to its centroids. A reference cluster is
COVERED when at least max(1, ceil(0.2 * expected)) sample documents land in it, expected =
reference share x the number of sample documents with a non-zero embedding (our choice: a cluster
kept at a fifth of its former weight or more still counts as covered). covered_share = covered
clusters / reference k; `lost` lists the others with their reference share and top terms.

All numbers in the dict are plain Python ints and floats (floats rounded to 6 decimals).
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import os
import re
import tempfile
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
import xxhash
from scipy.linalg import eigh
from scipy.sparse.linalg import svds

from curation import dedup as D
from curation.analysis import as_array, ngram_hashes

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
QUANTILES = (0, 1, 5, 10, 25, 50, 75, 90, 95, 99, 100)
TOP_UNIGRAMS = 5000
MAX_VOCAB = 1_000_000  # distinct words held before the rarest half is pruned (our choice)
SAMPLE_CHARS = 16_384  # characters kept of each sampled document (bounds the sample's memory)
SLICE_BYTES = 4 << 20  # text bytes processed at a time (bounds Arrow temporaries)
MATTR_WINDOW = 50
NEAR_DUP_THRESHOLD = 0.7
N_FEATURES = 2**18
HASH_SEED = 0
TOP_TERMS = 10
VENDI_MAX = 1000
KMEANS_ITERS = 50
KMEANS_INITS = 4
TOP_TASK_TYPES = 200
SCORE_FINE_BINS = 1000
SCORE_BINS = 20
LENGTH_DENSE = 1 << 16

_ARROW_SPLIT = r"[^\pL\pN_]+"  # separators between words: the complement of Python's \w
_WORD = re.compile(r"\w+")
_LETTERS = re.compile(r"[^\W\d_]+")

STOP_WORDS = frozenset("""
a about above after again against all also am an and any are aren as at be because been before being below
between both but by can cannot could couldn did didn do does doesn doing don down during each either else
few for from further had hadn has hasn have haven having he her here hers herself him himself his how i if in
into is isn it its itself just let ll me might more most must my myself no nor not now of off on once only or
other ought our ours ourselves out over own re s same shall shan she should shouldn since so some such t than
that the their theirs them themselves then there these they this those though through thus to too under until
up upon us ve very was wasn we were weren what when where which while who whom whose why will with won would
wouldn yet you your yours yourself yourselves
""".split())

_TASK_SKIP = frozenset({"please", "can", "you", "could", "would", "kindly", "will"})
_TASK_OBJECT_STOP = frozenset("""
a an the this that these those following given some any each every all another other my your our their his her
its me us them him it i we they you to of in on for with from by about into at as and or please below above
one two three few several more most brief short simple new same both such what which how
""".split())


# ---- exact distributions ------------------------------------------------------------------------


def _quantile_from_sorted_counts(values: np.ndarray, counts: np.ndarray, qs: Sequence[float]) -> dict[str, float]:
    """numpy's 'linear' percentiles of a multiset given as sorted distinct values and their counts."""
    n = int(counts.sum())
    if n == 0:
        return {}
    cum = np.cumsum(counts)
    out = {}
    for q in qs:
        pos = q / 100 * (n - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        v_lo = values[int(np.searchsorted(cum, lo, side="right"))]
        v_hi = values[int(np.searchsorted(cum, hi, side="right"))]
        out[str(q)] = _num(float(v_lo) + (pos - lo) * (float(v_hi) - float(v_lo)))
    return out


class _IntCounts:
    """The exact count of every non-negative integer value seen (dense below 65,536, a dict above)."""

    def __init__(self) -> None:
        self.dense = np.zeros(LENGTH_DENSE, dtype=np.int64)
        self.sparse: Counter[int] = Counter()

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.int64)
        small = values < LENGTH_DENSE
        self.dense += np.bincount(values[small], minlength=LENGTH_DENSE)
        if not small.all():
            distinct, counts = np.unique(values[~small], return_counts=True)
            self.sparse.update(dict(zip(distinct.tolist(), counts.tolist())))

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        idx = np.flatnonzero(self.dense)
        big = sorted(self.sparse.items())
        values = np.concatenate((idx, np.array([v for v, _ in big], dtype=np.int64)))
        counts = np.concatenate((self.dense[idx], np.array([c for _, c in big], dtype=np.int64)))
        return values, counts

    def total(self) -> int:
        return int(self.dense.sum()) + sum(self.sparse.values())

    def quantiles(self) -> dict[str, float]:
        values, counts = self.items()
        return _quantile_from_sorted_counts(values, counts, QUANTILES)

    def log_histogram(self) -> dict[str, list]:
        values, counts = self.items()
        if counts.sum() == 0:
            return {"edges": [], "counts": []}
        edges = length_edges(int(values.max()))
        bins = np.searchsorted(edges, values, side="right") - 1
        hist = np.bincount(bins, weights=counts, minlength=len(edges) - 1).astype(np.int64)[:len(edges) - 1]
        nonzero = np.flatnonzero(hist)
        first, last = int(nonzero[0]), int(nonzero[-1])
        return {"edges": [int(e) for e in edges[first:last + 2]], "counts": [int(c) for c in hist[first:last + 1]]}


def length_edges(max_value: int) -> np.ndarray:
    """0, then integer log-spaced edges (ten per decade, rounded, deduplicated) past max_value."""
    edges = [0]
    i = 0
    while edges[-1] <= max_value:
        e = round(10 ** (i / 10))
        if e > edges[-1]:
            edges.append(e)
        i += 1
    return np.array(edges, dtype=np.int64)


class _ScoreHistogram:
    """Scores in [0, 1] (clipped): 1,000 fine bins for quantiles, exact min and max."""

    def __init__(self) -> None:
        self.fine = np.zeros(SCORE_FINE_BINS, dtype=np.int64)
        self.min = math.inf
        self.max = -math.inf

    def add(self, values: np.ndarray) -> None:
        values = values[np.isfinite(values)]
        if not len(values):
            return
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))
        bins = np.clip((np.clip(values, 0.0, 1.0) * SCORE_FINE_BINS).astype(np.int64), 0, SCORE_FINE_BINS - 1)
        self.fine += np.bincount(bins, minlength=SCORE_FINE_BINS)

    def result(self) -> dict[str, Any] | None:
        n = int(self.fine.sum())
        if n == 0:
            return None
        cum = np.cumsum(self.fine)
        quantiles = {}
        for q in QUANTILES:
            if q == 0:
                value = self.min
            elif q == 100:
                value = self.max
            else:
                target = q / 100 * n
                b = int(np.searchsorted(cum, target, side="left"))
                before = cum[b - 1] if b else 0
                inside = (target - before) / self.fine[b] if self.fine[b] else 0.0
                value = min(max((b + inside) / SCORE_FINE_BINS, self.min), self.max)
            quantiles[str(q)] = _num(value)
        coarse = self.fine.reshape(SCORE_BINS, -1).sum(axis=1)
        edges = [_num(i / SCORE_BINS) for i in range(SCORE_BINS + 1)]
        return {"quantiles": quantiles, "histogram": {"edges": edges, "counts": [int(c) for c in coarse]}}


class _WordCounts:
    """Word counts over the whole stream: per-slice Arrow value counts, merged with group-by sums."""

    def __init__(self, max_vocab: int = MAX_VOCAB) -> None:
        self.max_vocab = max_vocab
        self.table: pa.Table | None = None
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.max_pruned = 0

    def add(self, words: pa.Array) -> None:
        self.add_counts(pc.value_counts(words) if len(words) else None)

    def add_counts(self, counts: pa.StructArray | None) -> None:
        """Fold in `pc.value_counts` of some words."""
        if counts is None or not len(counts):
            return
        self.pending.append(pa.table({"word": counts.field("values").cast(pa.string()),
                                      "count": counts.field("counts")}))
        self.pending_rows += len(counts)
        if self.pending_rows > max(1_000_000, self.table.num_rows if self.table is not None else 0):
            self._compact()

    def _compact(self) -> None:
        parts = ([self.table] if self.table is not None else []) + self.pending
        self.pending, self.pending_rows = [], 0
        if not parts:
            return
        # string, not large_string, keys and one thread: ~8x faster group-by here (pyarrow 26).
        merged = pa.concat_tables(parts).group_by("word", use_threads=False).aggregate([("count", "sum")])
        table = pa.table({"word": merged.column("word"), "count": merged.column("count_sum")})
        if table.num_rows > self.max_vocab:
            # Keep the max_vocab / 2 most frequent words: all above the cut-off count, then words at the cut-off
            # in table order (deterministic: one-threaded group-by). No string sort.
            counts = table.column("count").to_numpy()
            keep = self.max_vocab // 2
            cutoff = int(np.partition(counts, len(counts) - keep)[len(counts) - keep])
            above = counts > cutoff
            at = np.flatnonzero(counts == cutoff)[:keep - int(above.sum())]
            above[at] = True
            self.max_pruned = max(self.max_pruned, cutoff)
            log.info("unigram table pruned to %d words (largest dropped count %d)", keep, self.max_pruned)
            table = table.filter(pa.array(above))
        self.table = table

    def top(self, n: int) -> dict[str, int]:
        self._compact()
        if self.table is None or self.table.num_rows == 0:
            return {}
        order = pc.sort_indices(self.table, [("count", "descending"), ("word", "ascending")])
        top = self.table.take(order[:n])
        return dict(zip(top.column("word").to_pylist(), top.column("count").to_pylist()))


class _Reservoir:
    """The `size` documents with the smallest seeded id hashes (ties: the earlier document)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.keys = np.empty(0, dtype=np.uint64)
        self.order = np.empty(0, dtype=np.int64)
        self.texts: list[str] = []
        self.ids: list[str] = []

    def key(self, doc_id: str) -> int:
        return xxhash.xxh3_64_intdigest(doc_id.encode("utf-8"), seed=self.seed)

    def offer(self, ids: list[Any], text: pa.Array, first_index: int) -> None:
        if self.size <= 0 or not ids:
            return
        keys = np.fromiter((self.key(str(first_index + i) if d is None else str(d)) for i, d in enumerate(ids)),
                           dtype=np.uint64, count=len(ids))
        order = np.arange(first_index, first_index + len(ids), dtype=np.int64)
        if len(self.keys) >= self.size:
            candidates = np.flatnonzero(keys < self.keys.max())
        else:
            candidates = np.arange(len(ids))
        if len(candidates) > self.size:
            candidates = candidates[np.lexsort((order[candidates], keys[candidates]))[:self.size]]
        if not len(candidates):
            return
        taken = pc.utf8_slice_codeunits(pc.fill_null(text.take(pa.array(candidates)), ""), 0, SAMPLE_CHARS)
        all_keys = np.concatenate((self.keys, keys[candidates]))
        all_order = np.concatenate((self.order, order[candidates]))
        all_texts = self.texts + taken.to_pylist()
        all_ids = self.ids + [str(ids[c]) for c in candidates]
        keep = np.lexsort((all_order, all_keys))[:self.size]
        self.keys, self.order = all_keys[keep], all_order[keep]
        self.texts = [all_texts[i] for i in keep]
        self.ids = [all_ids[i] for i in keep]


# ---- instruction task types ----------------------------------------------------------------------


def task_type(instruction: str | None) -> str:
    """'<verb> <object>' of an instruction, a heuristic: the first word (skipping 'please', 'can', 'you',
    'could', 'would', ...) and the first later word not in a small stop-word list."""
    words = _LETTERS.findall((instruction or "").lower()[:500])
    i = 0
    while i < len(words) and words[i] in _TASK_SKIP:
        i += 1
    if i >= len(words):
        return "(none)"
    verb = words[i]
    for word in words[i + 1:i + 12]:
        if word not in _TASK_OBJECT_STOP and word not in _TASK_SKIP and len(word) > 1:
            return f"{verb} {word}"
    return verb


# ---- lexical diversity ----------------------------------------------------------------------------


def _cut(text: str, n_words: int) -> tuple[str, list[str]]:
    """The text up to the end of its n-th word, and its first n lowercase words."""
    matches = list(islice(_WORD.finditer(text), n_words))
    if not matches:
        return "", []
    return text[:matches[-1].end()], [m.group().lower() for m in matches]


def _mattr(ids: np.ndarray, window: int) -> float:
    n = len(ids)
    if n <= window:
        return len(np.unique(ids)) / n
    order = np.lexsort((np.arange(n), ids))
    prev = np.full(n, -1, dtype=np.int64)
    same = ids[order[1:]] == ids[order[:-1]]
    prev[order[1:][same]] = order[:-1][same]
    starts = np.arange(n - window + 1)
    index = starts[:, None] + np.arange(window)[None, :]
    distinct = (prev[index] < starts[:, None]).sum(axis=1)
    return float(distinct.mean()) / window


def near_dup_components(texts: Sequence[str], threshold: float = NEAR_DUP_THRESHOLD) -> np.ndarray:
    """Component label per text: texts joined by a verified near-duplicate pair (MinHash LSH candidate,
    exact shingle Jaccard >= threshold) share a label (union-find)."""
    parent = np.arange(len(texts))
    if len(texts) < 2:
        return parent

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    hashes, offsets = D.shingles(texts)
    sigs = D.signatures(hashes, offsets)
    bands, rows = D.choose_bands(threshold, D.NUM_PERM)
    pairs = D.candidate_pairs(D.band_hashes(sigs, bands, rows))
    sets: dict[int, np.ndarray] = {}

    def shingle_set(i: int) -> np.ndarray:
        if i not in sets:
            sets[i] = D.shingle_set(hashes, offsets, i)
        return sets[i]

    for i, j in pairs.tolist():
        a, b = find(i), find(j)
        if a != b and D.jaccard(shingle_set(i), shingle_set(j)) >= threshold:
            parent[max(a, b)] = min(a, b)
    return np.array([find(i) for i in range(len(texts))])


def near_dup_density(texts: Sequence[str], threshold: float = NEAR_DUP_THRESHOLD) -> float:
    """Share of texts with a verified near duplicate (in a component of two or more)."""
    if len(texts) < 2:
        return 0.0
    labels = near_dup_components(texts, threshold)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return float((counts[inverse] > 1).mean())


def lexical_stats(texts: Sequence[str], words_per_doc: int) -> dict[str, Any]:
    """Lexical diversity of the length-matched sample (see the module docstring)."""
    cuts = [_cut(t, words_per_doc) for t in texts]
    chosen = [c for c in cuts if len(c[1]) >= max(1, words_per_doc // 2)]
    if not chosen:
        chosen = [c for c in cuts if c[1]]
    out: dict[str, Any] = {f"distinct_{n}": 0.0 for n in range(1, 5)}
    out.update({"unigram_entropy": 0.0, "mattr": 0.0, "mattr_window": MATTR_WINDOW, "compression_ratio": 0.0,
                "near_dup_density": 0.0})
    if not chosen:
        return out
    vocab: dict[str, int] = {}
    docs = [np.array([vocab.setdefault(w, len(vocab)) for w in ws], dtype=np.int64) for _, ws in chosen]
    for n in range(1, 5):
        grams = [ngram_hashes(ids, n) for ids in docs]
        total = sum(len(g) for g in grams)
        out[f"distinct_{n}"] = _num(len(np.unique(np.concatenate(grams))) / total if total else 0.0)
    counts = np.bincount(np.concatenate(docs))
    p = counts[counts > 0] / counts.sum()
    out["unigram_entropy"] = _num(float(-(p * np.log2(p)).sum()))
    out["mattr"] = _num(float(np.mean([_mattr(ids, MATTR_WINDOW) for ids in docs])))
    raw = "\n".join(text for text, _ in chosen).encode("utf-8")
    out["compression_ratio"] = _num(len(gzip.compress(raw, compresslevel=9, mtime=0)) / len(raw))
    out["near_dup_density"] = _num(near_dup_density([text for text, _ in chosen]))
    return out


# ---- semantic model -------------------------------------------------------------------------------


def _terms(text: str) -> list[str]:
    return [w for w in _WORD.findall(text[:SAMPLE_CHARS].lower())
            if len(w) > 1 and w not in STOP_WORDS and not w.isdigit()]


def _feature(word: str) -> int:
    return xxhash.xxh3_64_intdigest(word.encode("utf-8"), seed=HASH_SEED) & (N_FEATURES - 1)


def _hashed_counts(texts: Sequence[str]) -> tuple[list[np.ndarray], list[np.ndarray], Counter[str]]:
    """Per text: its distinct hashed features and their counts; and the word counts of all texts."""
    cache: dict[str, int] = {}
    words_seen: Counter[str] = Counter()
    feats, tfs = [], []
    for text in texts:
        terms = _terms(text)
        words_seen.update(terms)
        hashed = np.fromiter((cache[w] if w in cache else cache.setdefault(w, _feature(w)) for w in terms),
                             dtype=np.int64, count=len(terms))
        f, c = np.unique(hashed, return_counts=True)
        feats.append(f)
        tfs.append(c)
    return feats, tfs, words_seen


def _normalize_rows(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return np.divide(m, norms, out=np.zeros_like(m), where=norms > 0)


@dataclass
class SemanticModel:
    """Hashed TF-IDF -> truncated SVD -> k-means centroids, fitted on a version's sample.

    `features` are the hashed feature ids seen in the sample (sorted), with their `idf`, their
    name (`words`: the sample's most frequent word hashing there) and their column in `components`
    (dims x features). `centroids` (k x dims) and `shares` (k) describe the clusters."""

    features: np.ndarray
    idf: np.ndarray
    words: np.ndarray
    components: np.ndarray
    centroids: np.ndarray
    shares: np.ndarray
    top_terms: list[list[str]]
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def dims(self) -> int:
        return int(self.components.shape[0])

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @staticmethod
    def default_spec(seed: int = 0) -> dict[str, Any]:
        return {"method": "tfidf-svd", "hash": "xxh3_64", "hash_seed": HASH_SEED, "n_features": N_FEATURES,
                "token": r"\w+ lowercase, 2+ chars, not all digits, stop words dropped", "max_chars": SAMPLE_CHARS,
                "stop_words": sorted(STOP_WORDS), "tf": "1+ln(tf)", "idf": "ln((1+n)/(1+df))+1", "seed": seed}

    def _check_spec(self) -> None:
        if self.spec.get("n_features", N_FEATURES) != N_FEATURES or self.spec.get("hash", "xxh3_64") != "xxh3_64":
            raise ValueError(f"semantic model spec {self.spec} differs from this code's hashing "
                             f"(xxh3_64, {N_FEATURES} features)")

    def _tfidf(self, feats: list[np.ndarray], tfs: list[np.ndarray]) -> sp.csr_matrix:
        rows, cols, vals = [], [], []
        for r, (f, c) in enumerate(zip(feats, tfs)):
            pos = np.searchsorted(self.features, f)
            pos = np.minimum(pos, max(len(self.features) - 1, 0))
            known = (self.features[pos] == f) if len(self.features) else np.zeros(len(f), bool)
            rows.append(np.full(int(known.sum()), r, dtype=np.int64))
            cols.append(pos[known])
            vals.append((1.0 + np.log(c[known])) * self.idf[pos[known]])
        n = len(feats)
        if not n:
            return sp.csr_matrix((0, len(self.features)))
        matrix = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                               shape=(n, len(self.features)), dtype=np.float64)
        norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
        return sp.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)) @ matrix

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length embeddings (texts x dims); a text with no known term embeds to zeros."""
        self._check_spec()
        feats, tfs, _ = _hashed_counts(texts)
        if not len(self.features) or not self.dims:
            return np.zeros((len(texts), self.dims), dtype=np.float64)
        return _normalize_rows(np.asarray(self._tfidf(feats, tfs) @ self.components.T.astype(np.float64)))

    def assign(self, texts: Sequence[str]) -> np.ndarray:
        """The nearest centroid of each text (-1 for a text with a zero embedding, or no clusters)."""
        return self.assign_embeddings(self.embed(texts))

    def assign_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        labels = np.full(len(embeddings), -1, dtype=np.int64)
        if not self.k or not len(embeddings):
            return labels
        nonzero = np.linalg.norm(embeddings, axis=1) > 0
        centroids = self.centroids.astype(np.float64)
        labels[nonzero] = _nearest(embeddings[nonzero], centroids)[0]
        return labels

    # ---- persistence --------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer, features=self.features.astype(np.int64), idf=self.idf.astype(np.float32),
            words=np.asarray(self.words, dtype=str), components=self.components.astype(np.float32),
            centroids=self.centroids.astype(np.float32), shares=self.shares.astype(np.float64),
            top_terms=np.array(json.dumps(self.top_terms)), spec=np.array(json.dumps(self.spec)))
        return buffer.getvalue()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model as `.npz`: atomically (temporary file + rename) on a local path; through
        fsspec in one write for a URL."""
        data = self.to_bytes()
        path = str(path)
        if "://" in path:
            import fsspec

            with fsspec.open(path, "wb") as handle:
                handle.write(data)
            return
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".stats_model.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SemanticModel:
        path = str(path)
        if "://" in path:
            import fsspec

            with fsspec.open(path, "rb") as handle:
                data = handle.read()
        else:
            with open(path, "rb") as handle:
                data = handle.read()
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(features=z["features"], idf=z["idf"], words=z["words"], components=z["components"],
                       centroids=z["centroids"], shares=z["shares"], top_terms=json.loads(str(z["top_terms"])),
                       spec=json.loads(str(z["spec"])))


def _nearest(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest centroid (squared Euclidean) and the squared distance, per row."""
    d = (x * x).sum(axis=1)[:, None] - 2 * x @ centroids.T + (centroids * centroids).sum(axis=1)[None, :]
    labels = d.argmin(axis=1)
    return labels, np.maximum(d[np.arange(len(x)), labels], 0.0)


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding with greedy trials (2 + ln k candidates per centre, as scikit-learn)."""
    n = len(x)
    trials = 2 + int(math.log(k))
    centres = [x[rng.integers(n)]]
    closest = ((x - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:
            candidates = rng.integers(n, size=trials)
        else:
            candidates = np.searchsorted(np.cumsum(closest), rng.random(trials) * total)
            candidates = np.minimum(candidates, n - 1)
        best, best_pot, best_dist = None, math.inf, None
        for c in candidates:
            dist = np.minimum(closest, ((x - x[c]) ** 2).sum(axis=1))
            if dist.sum() < best_pot:
                best, best_pot, best_dist = c, dist.sum(), dist
        centres.append(x[best])
        closest = best_dist
    return np.array(centres)


def kmeans(x: np.ndarray, k: int, seed: int, iters: int = KMEANS_ITERS,
           n_init: int = KMEANS_INITS) -> tuple[np.ndarray, np.ndarray]:
    """(centroids, labels) of the best of `n_init` seeded k-means++ / Lloyd runs (lowest inertia)."""
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(n_init):
        centroids = _kmeans_pp(x, k, rng)
        labels = None
        for _ in range(iters):
            new_labels, dist = _nearest(x, centroids)
            if labels is not None and np.array_equal(new_labels, labels):
                break
            labels = new_labels
            sums = np.zeros_like(centroids)
            np.add.at(sums, labels, x)
            sizes = np.bincount(labels, minlength=k)
            for empty in np.flatnonzero(sizes == 0):  # an empty cluster takes the worst-fitting point
                far = int(dist.argmax())
                sums[empty], sizes[empty], dist[far] = x[far], 1, 0.0
            centroids = sums / sizes[:, None]
        labels, dist = _nearest(x, centroids)
        inertia = float(dist.sum())
        if best is None or inertia < best[0] - 1e-12:
            best = (inertia, centroids, labels)
    assert best is not None
    return best[1], best[2]


def _truncated_svd(matrix: sp.csr_matrix, dims: int, seed: int, method: str = "auto") -> np.ndarray:
    """The top right singular vectors (dims' x features) of a sparse matrix, signs fixed (largest entry positive).

    "arpack": scipy's `svds` with a seeded start vector (sparse products, no large dense algebra, so it stays
    fast when BLAS threads compete for cores); "gram": exact, from the eigendecomposition of the Gram matrix of
    the smaller side. "auto" takes ARPACK unless dims >= min(n, features) - 1, which it cannot do."""
    n, m = matrix.shape
    if n == 0 or m == 0 or matrix.nnz == 0:
        return np.zeros((0, m))
    if method == "gram" or (method == "auto" and dims >= min(n, m) - 1):
        small = min(n, m)
        gram = (matrix @ matrix.T if n <= m else matrix.T @ matrix).toarray()
        values, vectors = eigh(gram, subset_by_index=[max(small - dims, 0), small - 1])
        order = np.argsort(values)[::-1]
        values, vectors = values[order], vectors[:, order]
        d = min(dims, int((values > max(values[0], 0) * 1e-10).sum()))
        if n <= m:
            components = np.asarray(matrix.T @ vectors[:, :d]).T / np.sqrt(values[:d])[:, None]
        else:
            components = vectors[:, :d].T.copy()
    else:
        d = min(dims, min(n, m) - 1)
        v0 = np.random.default_rng(seed).standard_normal(min(n, m))
        _, s, vt = svds(matrix, k=d, v0=v0, solver="arpack")
        order = np.argsort(s)[::-1]
        s, components = s[order], vt[order]
        components = components[s > s[0] * 1e-10]
    flip = components[np.arange(len(components)), np.abs(components).argmax(axis=1)] < 0
    components[flip] *= -1
    return components


def fit_semantic(texts: Sequence[str], *, k: int, dims: int, seed: int) -> tuple[SemanticModel, np.ndarray, np.ndarray]:
    """Fit the model on sample texts; returns it, the embeddings (texts x dims) and labels (-1: no terms)."""
    feats, tfs, words_seen = _hashed_counts(texts)
    n = len(texts)
    nonempty = [i for i in range(n) if len(feats[i])]
    active = np.unique(np.concatenate(feats)) if nonempty else np.empty(0, np.int64)
    df = np.zeros(len(active), dtype=np.int64)
    for f in feats:
        df[np.searchsorted(active, f)] += 1
    idf = np.log((1.0 + len(nonempty)) / (1.0 + df)) + 1.0
    # Name each feature by the sample's most frequent word hashing there (ties: alphabetical).
    names: dict[int, tuple[int, str]] = {}
    for word, count in words_seen.items():
        f = _feature(word)
        best = names.get(f)
        if best is None or (-count, word) < (-best[0], best[1]):
            names[f] = (count, word)
    words = np.array([names[int(f)][1] for f in active], dtype=str) if len(active) else np.empty(0, dtype="<U1")
    model = SemanticModel(features=active, idf=idf, words=words, components=np.zeros((0, len(active))),
                          centroids=np.zeros((0, 0)), shares=np.zeros(0), top_terms=[],
                          spec=SemanticModel.default_spec(seed))
    matrix = model._tfidf(feats, tfs)
    model.components = _truncated_svd(matrix, dims, seed)
    embeddings = _normalize_rows(np.asarray(matrix @ model.components.T)) if model.dims else np.zeros((n, 0))
    labels = np.full(n, -1, dtype=np.int64)
    embedded = np.flatnonzero(np.linalg.norm(embeddings, axis=1) > 0)
    k_eff = min(k, len(embedded))
    if k_eff == 0:
        model.centroids = np.zeros((0, model.dims))
        return model, embeddings, labels
    centroids, raw = kmeans(embeddings[embedded], k_eff, seed)
    sizes = np.bincount(raw, minlength=k_eff)
    order = np.lexsort((np.arange(k_eff), -sizes))  # clusters numbered by size, largest first
    relabel = np.empty(k_eff, dtype=np.int64)
    relabel[order] = np.arange(k_eff)
    labels[embedded] = relabel[raw]
    model.centroids = centroids[order]
    model.shares = sizes[order] / len(embedded)
    model.top_terms = _top_terms(model)
    return model, embeddings, labels


def _top_terms(model: SemanticModel, n: int = TOP_TERMS) -> list[list[str]]:
    weights = model.centroids @ model.components  # k x features: centroids back in the hashed space
    out = []
    for row in weights:
        best = np.argsort(-row, kind="stable")[:n]
        out.append([str(model.words[i]) for i in best if row[i] > 0])
    return out


def vendi_score(embeddings: np.ndarray) -> float:
    """exp(entropy of the eigenvalues of K/n), K = X X^T for unit-length rows (cosine similarity). The non-zero
    eigenvalues of X X^T / n are those of X^T X / n (dims x dims), which is what is decomposed."""
    n = len(embeddings)
    if n == 0:
        return 0.0
    eig = np.linalg.eigvalsh(embeddings.T @ embeddings / n)
    eig = eig[eig > 1e-12]
    return float(np.exp(-(eig * np.log(eig)).sum()))


def _entropy_bits(shares: np.ndarray) -> float:
    p = shares[shares > 0]
    return float(-(p * np.log2(p)).sum()) if len(p) else 0.0


def coverage(reference: SemanticModel, texts: Sequence[str], name: str) -> dict[str, Any]:
    """Which clusters of a reference model this sample covers (see the module docstring)."""
    labels = reference.assign(texts)
    labels = labels[labels >= 0]
    counts = np.bincount(labels, minlength=reference.k) if reference.k else np.zeros(0, np.int64)
    covered, lost = [], []
    for cluster in range(reference.k):
        share = float(reference.shares[cluster])
        need = max(1, math.ceil(0.2 * share * len(labels)))
        if counts[cluster] >= need:
            covered.append(cluster)
        else:
            lost.append({"id": cluster, "share_in_reference": _num(share),
                         "top_terms": list(reference.top_terms[cluster])})
    return {"reference": name, "covered_share": _num(len(covered) / reference.k if reference.k else 0.0),
            "covered": covered, "lost": lost}


# ---- the pass -------------------------------------------------------------------------------------


def _num(x: float) -> float:
    x = float(x)
    return round(x, 6) if math.isfinite(x) else 0.0


def _column(table: pa.Table, name: str) -> pa.Array | None:
    return as_array(table.column(name)) if name in table.column_names else None


def _int_lengths(values: pa.Array | None, n: int) -> np.ndarray:
    if values is None:
        return np.zeros(n, dtype=np.int64)
    return pc.fill_null(pc.utf8_length(values), 0).to_numpy(zero_copy_only=False).astype(np.int64)


class _Accumulator:
    def __init__(self, seed: int, sample_size: int, tokenizer: Any) -> None:
        self.docs = self.chars = self.words = 0
        self.tokens: int | None = 0 if tokenizer is not None else None
        self.tokenizer = tokenizer
        self.by_source: dict[str, dict[str, int]] = {}
        self.by_lang: dict[str, dict[str, int]] = {}
        self.lengths = _IntCounts()
        self.unigrams = _WordCounts()
        self.scores = {"quality_score": _ScoreHistogram(), "lang_score": _ScoreHistogram()}
        self.dup_sizes: Counter[int] | None = None
        self.reservoir = _Reservoir(sample_size, seed)
        self.instr_docs = 0
        self.task_types: Counter[str] = Counter()
        self.input_chars = _IntCounts()
        self.output_chars = _IntCounts()
        self.has_instructions = False

    @staticmethod
    def measure(table: pa.Table) -> tuple[pa.Table, pa.Array, np.ndarray, np.ndarray, pa.StructArray | None]:
        """The costly, order-free part of `add`: Arrow kernels that release the GIL, so slices are measured
        on several threads while `add` folds them in stream order."""
        n = table.num_rows
        text = pc.fill_null(_column(table, "text").cast(pa.large_string()), "")
        chars = _int_lengths(text, n)
        # Separators become one space, then an ASCII split (every separator is a space by then): 25 % faster
        # than splitting on the regex directly.
        lists = pc.ascii_split_whitespace(pc.replace_substring_regex(pc.utf8_lower(text), _ARROW_SPLIT, " "))
        flat = pc.list_flatten(lists)
        nonempty = pc.greater(pc.binary_length(flat), 0)
        parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
        words = np.bincount(parents, weights=nonempty.to_numpy(zero_copy_only=False), minlength=n).astype(np.int64)
        nonempty_words = pc.filter(flat, nonempty)
        counts = pc.value_counts(nonempty_words) if len(nonempty_words) else None
        return table, text, chars, words, counts

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.fold(self.measure(table))

    def fold(self, measured: tuple[pa.Table, pa.Array, np.ndarray, np.ndarray, pa.StructArray | None]) -> None:
        table, text, chars, words, counts = measured
        n = table.num_rows
        if n == 0:
            return
        self.unigrams.add_counts(counts)

        self.docs += n
        self.chars += int(chars.sum())
        self.words += int(words.sum())
        self.lengths.add(chars)
        if self.tokenizer is not None:
            encoded = self.tokenizer.encode_batch(text.to_pylist())
            self.tokens += sum(len(ids) for ids in encoded)

        source = _column(table, "source")
        source = pc.fill_null(source.cast(pa.string()), "") if source is not None else pa.nulls(n, pa.string())
        grouped = pa.table({"key": pc.fill_null(source, ""), "chars": pa.array(chars),
                            "words": pa.array(words)}).group_by("key").aggregate(
            [("chars", "sum"), ("words", "sum"), ("chars", "count")])
        for row in grouped.to_pylist():
            entry = self.by_source.setdefault(row["key"], {"docs": 0, "chars": 0, "words": 0})
            entry["docs"] += row["chars_count"]
            entry["chars"] += row["chars_sum"]
            entry["words"] += row["words_sum"]
        lang = _column(table, "lang")
        if lang is not None:
            grouped = pa.table({"key": pc.fill_null(lang.cast(pa.string()), "und"), "chars": pa.array(chars)}
                               ).group_by("key").aggregate([("chars", "sum"), ("chars", "count")])
            for row in grouped.to_pylist():
                entry = self.by_lang.setdefault(row["key"], {"docs": 0, "chars": 0})
                entry["docs"] += row["chars_count"]
                entry["chars"] += row["chars_sum"]
        for name, hist in self.scores.items():
            values = _column(table, name)
            if values is not None:
                hist.add(pc.drop_null(values.cast(pa.float64())).to_numpy(zero_copy_only=False))
        sizes = _column(table, "dup_cluster_size")
        if sizes is not None:
            self.dup_sizes = self.dup_sizes if self.dup_sizes is not None else Counter()
            values = pc.fill_null(sizes.cast(pa.int64()), 1).to_numpy(zero_copy_only=False)
            distinct, counts = np.unique(values, return_counts=True)
            self.dup_sizes.update(dict(zip(distinct.tolist(), counts.tolist())))
        instruction, output = _column(table, "instruction"), _column(table, "output")
        if instruction is not None and output is not None:
            self.has_instructions = True
            present = pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(
                pc.fill_null(instruction.cast(pa.large_string()), ""))), 0), False)
            rows = pa.array(np.flatnonzero(present.to_numpy(zero_copy_only=False)))
            if len(rows):
                self.instr_docs += len(rows)
                self.task_types.update(task_type(t) for t in instruction.take(rows).to_pylist())
                inputs = _column(table, "input")
                self.input_chars.add(_int_lengths(inputs.take(rows) if inputs is not None else None, len(rows)))
                self.output_chars.add(_int_lengths(output.take(rows), len(rows)))

        ids = _column(table, "id")
        self.reservoir.offer(ids.to_pylist() if ids is not None else [None] * n, text, self.docs - n)


def _as_tables(batches: Iterable[pa.Table | pa.RecordBatch]) -> Iterable[pa.Table]:
    """The batches cut into slices of at most SLICE_BYTES of text (at least one row): the Arrow temporaries
    of a slice (lowercased text, word lists) take ~9x its text, whatever the batch size."""
    for batch in batches:
        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        if "text" not in table.column_names:
            raise ValueError(f"compute_stats needs a 'text' column; got {table.column_names}")
        sizes = pc.fill_null(pc.binary_length(table.column("text")), 0).to_numpy(zero_copy_only=False)
        ends = np.cumsum(sizes, dtype=np.int64)
        offset = 0
        while offset < table.num_rows:
            base = ends[offset - 1] if offset else 0
            stop = max(int(np.searchsorted(ends, base + SLICE_BYTES, side="right")), offset + 1)
            yield table.slice(offset, stop - offset)
            offset = stop


def compute_stats(batches: Iterable[pa.Table], *, seed: int = 0, sample_size: int = 2000, words_per_doc: int = 200,
                  k: int = 16, dims: int = 64, reference_model: Path | str | SemanticModel | None = None,
                  reference_name: str | None = None, tokenizer: Any = None) -> tuple[dict[str, Any], SemanticModel]:
    """Stream the batches once; return the stats.json dict (docs/stats-schema.md) and the semantic model."""
    if words_per_doc < 1:
        raise ValueError(f"words_per_doc must be >= 1, got {words_per_doc}")
    acc = _Accumulator(seed, sample_size, tokenizer)
    threads = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        for table in _as_tables(batches):  # at most 2 slices per thread in flight: memory stays bounded
            if table.num_rows:
                pending.append(pool.submit(_Accumulator.measure, table))
            if len(pending) >= 2 * threads:
                acc.fold(pending.popleft().result())
        while pending:
            acc.fold(pending.popleft().result())
    sample = acc.reservoir.texts

    model, embeddings, labels = fit_semantic(sample, k=k, dims=dims, seed=seed)
    embedded = labels >= 0
    clusters = [{"id": c, "size": int((labels == c).sum()), "share": _num(model.shares[c]),
                 "top_terms": model.top_terms[c]} for c in range(model.k)]
    vendi_rows = embeddings[embedded][:VENDI_MAX]

    reference = None
    if reference_model is not None:
        ref = reference_model if isinstance(reference_model, SemanticModel) else SemanticModel.load(reference_model)
        if reference_name is None:
            reference_name = Path(str(reference_model)).parent.name if not isinstance(reference_model,
                                                                                       SemanticModel) else "reference"
        reference = coverage(ref, sample, reference_name)

    instructions = None
    if acc.has_instructions:
        ranked = sorted(acc.task_types.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_TASK_TYPES]
        instructions = {"docs": acc.instr_docs, "task_types": dict(ranked),
                        "distinct_task_types": len(acc.task_types),
                        "input_chars": {"quantiles": acc.input_chars.quantiles()},
                        "output_chars": {"quantiles": acc.output_chars.quantiles()}}

    stats = {
        "schema": SCHEMA_VERSION,
        "sample": {"size": len(sample), "seed": seed, "words_per_doc": words_per_doc},
        "size": {"docs": acc.docs, "chars": acc.chars, "words": acc.words, "tokens": acc.tokens,
                 "by_source": dict(sorted(acc.by_source.items())), "by_lang": dict(sorted(acc.by_lang.items()))},
        "length": {"unit": "chars", "quantiles": acc.lengths.quantiles(), "histogram": acc.lengths.log_histogram()},
        "distributions": {
            "quality_score": acc.scores["quality_score"].result(),
            "lang_score": acc.scores["lang_score"].result(),
            "dup_cluster_size": ({str(s): c for s, c in sorted(acc.dup_sizes.items())}
                                 if acc.dup_sizes is not None else None),
        },
        "lexical": lexical_stats(sample, words_per_doc),
        "unigrams": {"total": acc.words, "top": acc.unigrams.top(TOP_UNIGRAMS)},
        "semantic": {"method": "tfidf-svd", "features": N_FEATURES, "dims": model.dims, "k": model.k, "seed": seed,
                     "clusters": clusters, "cluster_entropy": _num(_entropy_bits(model.shares)),
                     "vendi_score": _num(vendi_score(vendi_rows)), "vendi_sample": len(vendi_rows)},
        "coverage": reference,
        "instructions": instructions,
    }
    return stats, model

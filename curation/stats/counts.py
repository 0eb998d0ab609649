"""Exact counts over every document of a version, streamed: lengths, scores, words, task types.

Each counter takes one slice of the stream at a time and holds only what grows with the answer (one
integer per distinct length, one count per distinct word, pruned past `MAX_VOCAB`); docs/stats-schema.md
says how each number is computed.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.stats.common import rounded

log = logging.getLogger(__name__)

QUANTILES = (0, 1, 5, 10, 25, 50, 75, 90, 95, 99, 100)
MAX_VOCAB = 1_000_000  # distinct words held before the rarest half is pruned (our choice)
LENGTH_DENSE = 1 << 16  # lengths below this are counted in an array, longer ones in a dict
SCORE_FINE_BINS = 1000  # score quantiles are read within 0.001 (our choice)
SCORE_BINS = 20  # bins of the score histograms in stats.json (our choice)

_LETTERS = re.compile(r"[^\W\d_]+")
_TASK_SKIP = frozenset({"please", "can", "you", "could", "would", "kindly", "will"})
_TASK_OBJECT_STOP = frozenset("""
a an the this that these those following given some any each every all another other my your our their his her
its me us them him it i we they you to of in on for with from by about into at as and or please below above
one two three few several more most brief short simple new same both such what which how
""".split())


def quantiles_from_counts(values: np.ndarray, counts: np.ndarray, qs: Sequence[float]) -> dict[str, float]:
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
        out[str(q)] = rounded(float(v_lo) + (pos - lo) * (float(v_hi) - float(v_lo)))
    return out


class IntCounts:
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

    def merge(self, other: IntCounts) -> None:
        self.dense += other.dense
        self.sparse.update(other.sparse)

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
        return quantiles_from_counts(values, counts, QUANTILES)

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


class ScoreHistogram:
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

    def merge(self, other: ScoreHistogram) -> None:
        self.fine += other.fine
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)

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
            quantiles[str(q)] = rounded(value)
        coarse = self.fine.reshape(SCORE_BINS, -1).sum(axis=1)
        edges = [rounded(i / SCORE_BINS) for i in range(SCORE_BINS + 1)]
        return {"quantiles": quantiles, "histogram": {"edges": edges, "counts": [int(c) for c in coarse]}}


class WordCounts:
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

    def merge(self, other: WordCounts) -> None:
        """Fold in another part's counts (exact while neither part nor the sum passed `max_vocab` words)."""
        other._compact()
        if other.table is not None and other.table.num_rows:
            self.pending.append(other.table)
            self.pending_rows += other.table.num_rows
            self.max_pruned = max(self.max_pruned, other.max_pruned)
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

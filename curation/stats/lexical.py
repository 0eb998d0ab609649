"""Lexical diversity of the length-matched sample: distinct n-grams, entropy, MATTR, compression, near duplicates.

docs/stats-schema.md says how each measure is computed.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from itertools import islice
from typing import Any

import numpy as np

from curation import dedup as D
from curation.analysis import ngram_hashes
from curation.stats.common import WORD, rounded

MATTR_WINDOW = 50  # words (Covington & McFall 2010 use 50 as well)
NEAR_DUP_THRESHOLD = 0.7  # Jaccard of word 5-gram shingles, verified (our choice)


def _cut(text: str, n_words: int) -> tuple[str, list[str]]:
    """The text up to the end of its n-th word, and its first n lowercase words."""
    matches = list(islice(WORD.finditer(text), n_words))
    if not matches:
        return "", []
    return text[:matches[-1].end()], [m.group().lower() for m in matches]


def _mattr(ids: np.ndarray, window: int) -> float:
    """Moving-average type-token ratio of one document's word ids (its plain ratio when shorter than the window)."""
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
    """Lexical diversity of the length-matched sample (docs/stats-schema.md)."""
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
        out[f"distinct_{n}"] = rounded(len(np.unique(np.concatenate(grams))) / total if total else 0.0)
    counts = np.bincount(np.concatenate(docs))
    p = counts[counts > 0] / counts.sum()
    out["unigram_entropy"] = rounded(float(-(p * np.log2(p)).sum()))
    out["mattr"] = rounded(float(np.mean([_mattr(ids, MATTR_WINDOW) for ids in docs])))
    raw = "\n".join(text for text, _ in chosen).encode("utf-8")
    out["compression_ratio"] = rounded(len(gzip.compress(raw, compresslevel=9, mtime=0)) / len(raw))
    out["near_dup_density"] = rounded(near_dup_density([text for text, _ in chosen]))
    return out

"""The version's sample: the `size` documents with the smallest seeded hashes of their ids.

Bottom-k (priority) sampling: a uniform sample without replacement, the same whatever the batching or
order of the stream, and coordinated across versions (a document present in two versions is in both
samples or in neither). Each sampled document is kept as its first `SAMPLE_CHARS` characters.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from curation.stats.common import SAMPLE_CHARS


class Reservoir:
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
        self._keep_smallest(keys[candidates], order[candidates], taken.to_pylist(), [str(ids[c]) for c in candidates])

    def merge(self, other: Reservoir) -> None:
        """Fold in the sample of another part of the stream (numbered apart from this one's): the sample of both."""
        self._keep_smallest(other.keys, other.order, other.texts, other.ids)

    def _keep_smallest(self, keys: np.ndarray, order: np.ndarray, texts: list[str], ids: list[str]) -> None:
        all_keys = np.concatenate((self.keys, keys))
        all_order = np.concatenate((self.order, order))
        all_texts = self.texts + texts
        all_ids = self.ids + ids
        keep = np.lexsort((all_order, all_keys))[:self.size]
        self.keys, self.order = all_keys[keep], all_order[keep]
        self.texts = [all_texts[i] for i in keep]
        self.ids = [all_ids[i] for i in keep]

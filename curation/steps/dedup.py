"""Deduplication steps: exact (normalised text) and near (MinHash LSH, verified), both global.

Each shard writes a compact summary file (hashes, lengths, quality scores, sources, origins); one decision
over the whole run clusters the duplicates and applies the keep policy. The decision's heavy parts (candidates
by band or hash range, verification, reading keys) run on the run's workers (curation.dedup_parts), so the
flow's process holds only what the duplicates need, and a run on one process and a run on many keep exactly
the same documents.

The keep policy (curation.dedup.KeepPolicy), criterion by criterion:
1. a document of an earlier version (`against:`) always wins: it is published and cannot be removed;
2. origin, in the order of `prefer_origins` (default: human, then synthetic), so a model's copy
   never replaces the human text it came from;
3. source, in the order of `prefer_sources` (listed sources in that order, unlisted ones after them,
   tied). Left unset in a recipe, it is the order of the recipe's `inputs:`, filled in by the runner:
   users list their trusted sources first (the demo: stdlib_docs, kjv, then web_crawl), so a crawl's
   edited copy never replaces the original it copied. `prefer_sources: []` ranks no source;
4. then the highest `quality_score`, the longest text, the smallest id.
Dolma's `dedupe` (a Bloom filter over the documents in the order it reads them) keeps the first copy it
meets, so the order of the sources decides which copy survives; we make that order explicit. Ranking
provenance ahead of the quality score, and human ahead of synthetic, is our choice: neither a
classifier's score nor a longer text says which copy is the original, and an edited copy can score
higher than its source (the demo's crawl copies of KJV chapters did).
The report counts, per pair of sources, whose documents were kept over whose (`kept_over`), which
criterion decided each removal (`decided_by`), and the policy itself (`keep_policy`).

`against: [v1, ...]` also deduplicates against earlier versions of the store: their documents are
published and always win. Their hashes come from a persisted index under
`<store>/index/<kind>/<version>/<params>.parquet`, built on first use and reused afterwards.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any, Literal, TypeVar

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash
from pydantic import Field, model_validator

from curation import dedup as D
from curation import dedup_parts as P
from curation.record import ORIGINS
from curation.steps.base import SERIAL, Collected, StepParams, Workers, require_versions
from curation.steps.filter import FilterParams, FilterStep, Measurement, reason
from curation.steps.registry import register
from curation.store import VersionStore

EXAMPLE_CLUSTERS = 5
EXAMPLE_CHARS = 240
# Documents of an earlier version summarised at a time while its index is built (our choice: bounds the memory).
INDEX_BATCH_ROWS = 20_000
# Verified pairs per piece of work below which a piece is not worth shipping to a worker (our choice).
MIN_PAIRS_PER_PART = 1_000


class KeepPolicyParams(StepParams):
    """Which copy of a duplicate stays (see the module's docstring and curation.dedup.KeepPolicy)."""

    # Sources, most trusted first; unlisted ones come after them. None: the recipe's input order, which the runner
    # fills in; [] ranks no source (the quality score decides).
    prefer_sources: list[str] | None = None
    prefer_origins: list[Literal["human", "synthetic"]] = Field(default_factory=lambda: list(ORIGINS))

    @model_validator(mode="after")
    def _check_unique(self) -> KeepPolicyParams:
        for key in ("prefer_sources", "prefer_origins"):
            values = getattr(self, key) or []
            twice = sorted({v for v in values if values.count(v) > 1})
            if twice:
                raise ValueError(f"{key} lists {', '.join(map(repr, twice))} more than once; name each once, "
                                 "most preferred first")
        return self

    @property
    def keep_policy(self) -> D.KeepPolicy:
        return D.KeepPolicy(tuple(self.prefer_origins), tuple(self.prefer_sources or ()))


class DedupParams(FilterParams, KeepPolicyParams):
    against: list[str] = Field(default_factory=list)  # earlier versions to deduplicate against

    @model_validator(mode="after")
    def _check_against(self) -> DedupParams:
        twice = sorted({v for v in self.against if self.against.count(v) > 1})
        if twice:
            raise ValueError(f"against lists {', '.join(map(repr, twice))} more than once; name each version once")
        return self


def _quality(batch: pa.Table) -> np.ndarray:
    if "quality_score" in batch.column_names:
        return batch.column("quality_score").to_numpy(zero_copy_only=False).astype(np.float64)
    return np.zeros(batch.num_rows)


def provenance(batch: pa.Table) -> dict[str, np.ndarray]:
    """Each document's `source` and `origin` (object arrays of strings; "" where a batch outside a run lacks
    the column), what the keep policy ranks."""
    return {name: np.array(batch.column(name).to_pylist() if name in batch.column_names else [""] * batch.num_rows,
                           dtype=object) for name in ("source", "origin")}


def _lengths(texts: list[str]) -> np.ndarray:
    return np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))


DP = TypeVar("DP", bound=DedupParams)


class _DedupStep(FilterStep[DP]):
    """What exact and near dedup share: the decision's shape, how it is applied, and the index."""

    kind: str = ""
    category = "dedup"

    def is_global(self) -> bool:
        return True

    def preflight(self, store_url: str) -> None:
        require_versions(store_url, self.params.against)

    def bind(self, decision: D.DedupDecision) -> None:
        self.decision = decision

    def measure(self, batch: pa.Table) -> Measurement:
        decision: D.DedupDecision = self.decision
        ids = batch.column("id").to_pylist()
        reasons, dup_of, cluster, sim, size = [], [], [], [], []
        for doc_id in ids:
            removal = decision.removals.get(doc_id)
            if removal is None:
                reasons.append(None)
                dup_of.append(None)
                sim.append(None)
            else:
                reasons.append(self._reason(removal))
                dup_of.append(removal.dup_of)
                sim.append(removal.jaccard)
            n = decision.cluster_sizes.get(doc_id)
            size.append(n or 1)
            cluster.append(None if n is None else (removal.cluster if removal else doc_id))
        return Measurement(pa.array(reasons, pa.string()), {}, {
            "dup_of": pa.array(dup_of, pa.string()), "dup_cluster": pa.array(cluster, pa.string()),
            "dup_jaccard": pa.array(sim, pa.float64()), "dup_cluster_size": pa.array(size, pa.int32())})

    def _reason(self, removal: D.Removal) -> str:
        raise NotImplementedError

    def report(self, decision: D.DedupDecision) -> dict[str, Any]:
        return decision.report

    def finish(self, decision: D.DedupDecision, sources: list[P.Source], keys: dict[int, D.DocKey],
               workers: Workers, parts: int) -> D.DedupDecision:
        """What both kinds report: documents, removals (and how many matched earlier versions), the keep policy,
        examples (their texts read on the workers)."""
        decision.report.update({
            "documents": sum(s.documents for s in sources if not s.published), "against": list(self.params.against),
            "keep_policy": {**self.params.keep_policy.as_report(), "criteria": list(D.KEEP_CRITERIA)},
            "removed": len(decision.removals),
            "removed_matching_earlier_versions": sum(1 for r in decision.removals.values() if r.in_version),
        })
        if decision.removals:
            def read(wanted: np.ndarray) -> dict[int, str]:
                texts: dict[int, str] = {}
                for found in workers.map(P.read_texts, [(sources, piece) for piece in P.split(wanted, parts)]):
                    texts.update(found)
                return texts

            decision.report["examples"] = _examples(decision, keys, read)
        return decision

    # ---- summaries, here and of earlier versions ----------------------------------------------------
    def store_summary(self, summary: dict[str, np.ndarray], path: str, fs: fsspec.AbstractFileSystem) -> str:
        P.write_summary([summary], path, fs)
        return path

    def params_key(self) -> str:
        return hashlib.sha256(json.dumps(self.index_params(), sort_keys=True).encode()).hexdigest()[:16]

    def index_params(self) -> dict[str, Any]:
        return {}

    def summarise(self, batch: pa.Table) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def collect(self, batch: pa.Table) -> dict[str, np.ndarray]:
        return self.summarise(batch)

    def version_index(self, store_url: str, version: str) -> str:
        """The summary file of an earlier version's documents, the store's index (built on first use, and
        rebuilt when it was built before the summary held every column of KEY_COLUMNS)."""
        store = VersionStore(store_url)
        path = f"{store.root}/index/{self.kind}/{version}/{self.params_key()}.parquet"
        if not store.fs.exists(path) or not set(P.KEY_COLUMNS) <= set(pq.read_schema(path, filesystem=store.fs).names):
            columns = [c for c in ("id", "text", "quality_score", "source", "origin")
                       if c in store.schema(version).names]
            P.write_summary(self._summaries(store, version, columns), path, store.fs)
        return path

    def _summaries(self, store: VersionStore, version: str, columns: list[str]) -> Iterator[dict[str, np.ndarray]]:
        """A version's summary, INDEX_BATCH_ROWS documents at a time (one empty summary for an empty version)."""
        empty = True
        for batch in store.iter_batches(version, columns, batch_rows=INDEX_BATCH_ROWS):
            empty = False
            yield self.summarise(pa.Table.from_batches([batch]))
        if empty:
            yield self.summarise(pa.schema([store.schema(version).field(c) for c in columns]).empty_table())

    def sources(self, collected: list[Collected], workers: Workers) -> list[P.Source]:
        """Every shard's summary file (shard order), then the earlier versions' indexes (built on the workers).
        A summary still in memory (a step called directly, or a resume marker written before summaries went to
        files) is written next to its shard first."""
        sources = []
        for c in collected:
            path = c.value
            if not isinstance(path, str):
                fs, _ = fsspec.core.url_to_fs(c.store_url)
                path = self.store_summary(c.value, f"{c.path}.{self.kind}-summary.parquet", fs)
            sources.append(P.Source(path, c.path, c.store_url, P.summary_rows(path, c.store_url), rows=c.rows))
        if self.params.against:
            store_url = collected[0].store_url if collected else None
            indexes = workers.map(_version_index, [(self, store_url, v) for v in self.params.against])
            sources += [P.Source(path, version, store_url, P.summary_rows(path, store_url), published=version)
                        for path, version in zip(indexes, self.params.against)]
        return sources

    def keys(self, sources: list[P.Source], edges: np.ndarray, workers: Workers, parts: int) -> dict[int, D.DocKey]:
        """What the keep policy ranks, for the documents in an edge, read on the workers."""
        keys: dict[int, D.DocKey] = {}
        for found in workers.map(P.doc_keys, [(sources, piece) for piece in P.split(np.unique(edges), parts)]):
            keys.update(found)
        return keys


def _version_index(step: _DedupStep, store_url: str, version: str) -> str:
    return step.version_index(store_url, version)


def _exact_range(sources: list[P.Source], part: int, parts: int, policy: D.KeepPolicy
                 ) -> tuple[D.DedupDecision, dict[int, D.DocKey]]:
    """Exact duplicates among the hashes of one range, clustered and resolved where they were found (a group of
    equal hashes never spans two ranges), and the keys of the documents its largest clusters would show."""
    edges = P.equal_hashes(sources, part, parts)
    keys = P.doc_keys(sources, np.unique(edges))
    # A component is one hash: every member is identical to the kept one.
    decision = D.resolve_clusters(keys, edges, lambda pairs: [1.0] * len(pairs), 1.0, policy)
    shown = {doc for kept, members, _ in _shown(decision) for doc in (kept, *members)}
    return decision, {number: key for number, key in keys.items() if key.id in shown}


class _Similarities:
    """Exact Jaccard of document pairs, measured on the workers where the texts are read, each pair once."""

    def __init__(self, sources: list[P.Source], workers: Workers, parts: int, shingle_words: int):
        self.sources, self.workers, self.parts, self.shingle_words = sources, workers, parts, shingle_words
        self.known: dict[tuple[int, int], float] = {}

    def __call__(self, pairs: list[tuple[int, int]]) -> list[float]:
        wanted = [(min(i, j), max(i, j)) for i, j in pairs]
        unknown = np.array(sorted(set(wanted) - self.known.keys()), dtype=np.int64).reshape(-1, 2)
        parts = min(self.parts, max(1, len(unknown) // MIN_PAIRS_PER_PART))
        pieces = P.split(unknown, parts)
        for piece, measured in zip(pieces, self.workers.map(P.pair_similarities,
                                                            [(self.sources, piece, self.shingle_words)
                                                             for piece in pieces])):
            self.known.update(zip(map(tuple, piece.tolist()), measured.tolist()))
        return [self.known[key] for key in wanted]


def _shown(decision: D.DedupDecision) -> list[tuple[str, list[str], int]]:
    """The largest clusters (kept id, the removed ids an example shows, the cluster's size), largest first."""
    clusters: dict[str, list[str]] = {}
    for doc_id, removal in decision.removals.items():
        clusters.setdefault(removal.cluster, []).append(doc_id)
    largest = sorted(clusters.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:EXAMPLE_CLUSTERS]
    return [(kept, sorted(removed)[:3], decision.cluster_sizes.get(kept, len(removed) + 1))
            for kept, removed in largest]


def _examples(decision: D.DedupDecision, keys: dict[int, D.DocKey],
              read: Callable[[np.ndarray], dict[int, str]]) -> list[dict]:
    """The largest clusters, kept document first, with the start of each text (for reports); `keys` holds at
    least the documents they show."""
    shown = _shown(decision)
    index_of = {d.id: i for i, d in keys.items()}
    wanted = np.array(sorted({index_of[k] for kept, members, _ in shown for k in [kept, *members]}), np.int64)
    texts = read(wanted)
    out = []
    for kept, members, size in shown:
        listed = [{"id": kept, "kept": True, "source": keys[index_of[kept]].source,
                   "text": texts[index_of[kept]][:EXAMPLE_CHARS]}]
        for doc_id in members:
            listed.append({"id": doc_id, "kept": False, "source": keys[index_of[doc_id]].source,
                           "jaccard": decision.removals[doc_id].jaccard,
                           "text": texts[index_of[doc_id]][:EXAMPLE_CHARS]})
        out.append({"cluster": kept, "size": size, "members": listed})
    return out


# ---- exact ----------------------------------------------------------------------------------------


class ExactDedupParams(DedupParams):
    pass


@register
class ExactDedup(_DedupStep[ExactDedupParams]):
    """Documents whose normalised text (case and white space folded) is identical: xxh3-128."""

    name = "exact_dedup"
    kind = "exact"

    def index_params(self) -> dict[str, Any]:
        return {"hash": "xxh3_128", "normalize": "lower+spaces"}

    def summarise(self, batch: pa.Table) -> dict[str, np.ndarray]:
        texts = batch.column("text").to_pylist()
        digests = [xxhash.xxh3_128_intdigest(D.normalize(t).encode("utf-8")) for t in texts]
        return {"id": np.array(batch.column("id").to_pylist(), dtype=object), "length": _lengths(texts),
                "quality": _quality(batch), **provenance(batch),
                "hash_hi": np.array([d >> 64 for d in digests], dtype=np.uint64),
                "hash_lo": np.array([d & 0xFFFFFFFFFFFFFFFF for d in digests], dtype=np.uint64)}

    def decide(self, collected: list[Collected], workers: Workers = SERIAL) -> D.DedupDecision:
        sources = self.sources(collected, workers)
        parts = workers.parts(sum(s.documents for s in sources))
        pieces = workers.map(_exact_range, [(sources, part, parts, self.params.keep_policy) for part in range(parts)])
        decision = D.merge_decisions(decided for decided, _ in pieces)
        shown = {number: key for _, keys in pieces for number, key in keys.items()}
        return self.finish(decision, sources, shown, workers, parts)

    def _reason(self, removal: D.Removal) -> str:
        where = f" in {removal.in_version}" if removal.in_version else ""
        return f"{self.name}:duplicate_of={removal.dup_of}{where}"


# ---- near (MinHash LSH) -----------------------------------------------------------------------------


class MinHashDedupParams(DedupParams):
    threshold: float = Field(D.THRESHOLD, gt=0.0, le=1.0)
    num_perm: int = Field(D.NUM_PERM, ge=16, le=1024)
    shingle_words: int = Field(D.SHINGLE_WORDS, ge=1, le=32)
    seed: int = D.SEED
    bands: int | None = Field(None, ge=1)  # default: chosen for the threshold (see curation.dedup.choose_bands)
    rows: int | None = Field(None, ge=1)
    verify: bool = True  # confirm candidates with the exact Jaccard of the shingle sets

    @model_validator(mode="after")
    def _check_bands(self) -> MinHashDedupParams:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("bands and rows go together: set both, or neither to choose them for the threshold")
        if self.bands and self.rows and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands} x {self.rows} = {self.bands * self.rows} is above "
                             f"num_perm = {self.num_perm}; allowed: bands x rows <= num_perm")
        return self


@register
class MinHashDedup(_DedupStep[MinHashDedupParams]):
    name = "minhash_dedup"
    kind = "minhash"

    def band_shape(self) -> tuple[int, int]:
        p = self.params
        if p.bands and p.rows:
            return p.bands, p.rows
        return D.choose_bands(p.threshold, p.num_perm)

    def index_params(self) -> dict[str, Any]:
        p = self.params
        return {"num_perm": p.num_perm, "shingle_words": p.shingle_words, "seed": p.seed, "bands": self.band_shape(),
                "scheme": "affine32"}

    def summarise(self, batch: pa.Table, chunk_docs: int = 1000) -> dict[str, np.ndarray]:
        """Bands of every document, a chunk of documents at a time: shingling needs ~15x the text in
        temporary arrays, so chunks bound it (~50 MB for 1,000 documents of 3 KB)."""
        p = self.params
        texts = batch.column("text").to_pylist()
        bands, rows = self.band_shape()
        band = np.empty((len(texts), bands), dtype=np.uint64)
        for start in range(0, len(texts), chunk_docs):
            hashes, offsets = D.shingles(texts[start:start + chunk_docs], p.shingle_words)
            band[start:start + chunk_docs] = D.band_hashes(D.signatures(hashes, offsets, p.num_perm, p.seed),
                                                           bands, rows)
        return {"id": np.array(batch.column("id").to_pylist(), dtype=object), "length": _lengths(texts),
                "quality": _quality(batch), **provenance(batch), "band": band}

    def decide(self, collected: list[Collected], workers: Workers = SERIAL) -> D.DedupDecision:
        p = self.params
        sources = self.sources(collected, workers)
        new_documents = sum(s.documents for s in sources if not s.published)  # numbered before the published ones
        parts = workers.parts(sum(s.documents for s in sources))
        bands, rows = self.band_shape()
        pieces = P.split(np.arange(bands), parts)
        # Pairs of two published documents (both kept already) are dropped where they are found.
        pairs = D.unique_pairs(workers.map(P.band_candidates,
                                           [(sources, piece.tolist(), new_documents) for piece in pieces]))
        if p.verify and len(pairs):
            similarities = _Similarities(sources, workers, parts, p.shingle_words)
            edges = pairs[np.asarray(similarities(pairs.tolist())) >= p.threshold]
            keys = self.keys(sources, edges, workers, parts)
            decision = D.resolve_clusters(keys, edges, similarities, p.threshold, p.keep_policy)
        else:
            edges = pairs
            keys = self.keys(sources, edges, workers, parts)
            decision = D.resolve_clusters(keys, edges, policy=p.keep_policy)
        decision.report.update({
            "threshold": p.threshold, "num_perm": p.num_perm, "shingle_words": p.shingle_words,
            "bands": bands, "rows": rows, "s_curve": D.s_curve(bands, rows),
            "index_bytes_per_doc": bands * 8, "candidate_pairs": int(len(pairs)),
            "verified_pairs": len(edges), "rejected_by_verification": int(len(pairs)) - len(edges) if p.verify else 0,
        })
        return self.finish(decision, sources, keys, workers, parts)

    def _reason(self, removal: D.Removal) -> str:
        where = f" in {removal.in_version}" if removal.in_version else ""
        if removal.jaccard != removal.jaccard:  # NaN: verification was off, only the LSH said so
            return f"{self.name}:lsh_candidate dup_of={removal.dup_of}{where}"
        similar = reason(self.name, "jaccard", removal.jaccard, ">=", self.params.threshold)
        return f"{similar} dup_of={removal.dup_of}{where}"

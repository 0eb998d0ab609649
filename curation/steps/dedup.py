"""Deduplication steps: exact (normalised text) and near (MinHash LSH, verified), both global.

Each shard sends a compact summary (hashes, lengths, quality scores, sources, origins); one decision
over the whole run clusters the duplicates and applies the keep policy, so a run on one process and a
run on many keep exactly the same documents.

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
from typing import Any, Literal, TypeVar

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash
from pydantic import Field, model_validator

from curation import dedup as D
from curation.record import ORIGINS
from curation.steps.base import Collected, StepParams, require_versions
from curation.steps.filter import FilterParams, FilterStep, Measurement, reason
from curation.steps.registry import register
from curation.store import VersionStore

EXAMPLE_CLUSTERS = 5
EXAMPLE_CHARS = 240
# What every summary (and so every persisted index of an earlier version) holds per document besides its hashes.
INDEX_COLUMNS = ("id", "length", "quality", "source", "origin")


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

    def finish(self, decision: D.DedupDecision, docs: list[D.DocKey], where: list[tuple]) -> D.DedupDecision:
        """What both kinds report: documents, removals (and how many matched earlier versions), the keep policy,
        examples."""
        decision.report.update({
            "documents": sum(1 for d in docs if not d.published), "against": list(self.params.against),
            "keep_policy": {**self.params.keep_policy.as_report(), "criteria": list(D.KEEP_CRITERIA)},
            "removed": len(decision.removals),
            "removed_matching_earlier_versions": sum(1 for r in decision.removals.values() if r.in_version),
        })
        if decision.removals:
            decision.report["examples"] = _examples(decision, docs, where)
        return decision

    # ---- earlier versions ---------------------------------------------------------------------
    def params_key(self) -> str:
        return hashlib.sha256(json.dumps(self.index_params(), sort_keys=True).encode()).hexdigest()[:16]

    def index_params(self) -> dict[str, Any]:
        return {}

    def summarise(self, batch: pa.Table) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def version_index(self, store_url: str, version: str) -> dict[str, np.ndarray]:
        """The summary of an earlier version's documents, from the store's index (built on first use, and
        rebuilt when it was built before the summary held every column of INDEX_COLUMNS)."""
        store = VersionStore(store_url)
        path = f"{store.root}/index/{self.kind}/{version}/{self.params_key()}.parquet"
        if not store.fs.exists(path) or not set(INDEX_COLUMNS) <= set(pq.read_schema(path, filesystem=store.fs).names):
            table = store.read_table(version, columns=[c for c in ("id", "text", "quality_score", "source", "origin")
                                                       if c in store.schema(version).names])
            summary = self.summarise(table)
            columns = {k: v for k, v in summary.items() if v.ndim == 1}
            for k, v in summary.items():
                if v.ndim == 2:
                    columns.update({f"{k}_{i}": v[:, i] for i in range(v.shape[1])})
            store.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            tmp = f"{path}.tmp"
            pq.write_table(pa.table(columns), tmp, filesystem=store.fs, compression="zstd")
            store.fs.mv(tmp, path)
        table = pq.read_table(path, filesystem=store.fs)
        out: dict[str, np.ndarray] = {}
        for name in table.column_names:
            base, _, index = name.rpartition("_")
            if base and index.isdigit():
                continue
            out[name] = table.column(name).to_numpy(zero_copy_only=False)
        wide = sorted({n.rpartition("_")[0] for n in table.column_names if n.rpartition("_")[2].isdigit()
                       and n.rpartition("_")[0]})
        for base in wide:
            count = sum(1 for n in table.column_names if n.startswith(f"{base}_") and n[len(base) + 1:].isdigit())
            out[base] = np.stack([table.column(f"{base}_{i}").to_numpy(zero_copy_only=False) for i in range(count)],
                                 axis=1)
        return out

    def gather(self, collected: list[Collected]) -> tuple[list[D.DocKey], dict[str, np.ndarray], list[tuple]]:
        """Every document of the run (shard order) then of the earlier versions, their summaries
        stacked, and where each one's text can be read back: (path, row, store_url) or (version,)."""
        docs: list[D.DocKey] = []
        parts: dict[str, list[np.ndarray]] = {}
        where: list[tuple] = []
        for c in collected:
            summary = c.value
            docs.extend(_doc_keys(summary))
            where.extend((c.path, c.row(k), c.store_url) for k in range(len(summary["id"])))
            for key, value in summary.items():
                parts.setdefault(key, []).append(value)
        store_url = collected[0].store_url if collected else None
        for version in self.params.against:
            summary = self.version_index(store_url, version)
            docs.extend(_doc_keys(summary, published=version))
            where.extend((version, str(doc_id), store_url) for doc_id in summary["id"])
            for key, value in summary.items():
                parts.setdefault(key, []).append(value)
        stacked = {k: np.concatenate(v) for k, v in parts.items() if k != "id"}
        return docs, stacked, where


def _doc_keys(summary: dict[str, np.ndarray], published: str | None = None) -> list[D.DocKey]:
    """What the keep policy ranks, document by document of one summary."""
    return [D.DocKey(str(doc_id), int(length), float(quality), published, str(source), str(origin))
            for doc_id, length, quality, source, origin in zip(summary["id"], summary["length"], summary["quality"],
                                                               summary["source"], summary["origin"])]


def read_texts(where: list[tuple], wanted: list[int]) -> dict[int, str]:
    """Texts of the wanted documents, reading each shard file (or earlier version) once."""
    by_source: dict[tuple, list[int]] = {}
    for index in wanted:
        entry = where[index]
        key = (entry[0], entry[2])
        by_source.setdefault(key, []).append(index)
    texts: dict[int, str] = {}
    for (source, store_url), indices in by_source.items():
        if source.endswith(".parquet"):
            fs, _ = fsspec.core.url_to_fs(store_url)
            column = pq.read_table(source, columns=["text"], filesystem=fs).column("text")
            for index in indices:
                texts[index] = column[where[index][1]].as_py()
        else:  # an earlier version: look documents up by id
            table = VersionStore(store_url).read_table(source, columns=["id", "text"])
            lookup = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))
            for index in indices:
                texts[index] = lookup[where[index][1]]
    return texts


def _examples(decision: D.DedupDecision, docs: list[D.DocKey], where: list[tuple], reader=read_texts) -> list[dict]:
    """The largest clusters, kept document first, with the start of each text (for reports)."""
    clusters: dict[str, list[str]] = {}
    for doc_id, removal in decision.removals.items():
        clusters.setdefault(removal.cluster, []).append(doc_id)
    largest = sorted(clusters.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:EXAMPLE_CLUSTERS]
    index_of = {d.id: i for i, d in enumerate(docs)}
    shown = {kept: sorted(removed)[:3] for kept, removed in largest}  # the members each example shows
    wanted = sorted({index_of[k] for kept, members in shown.items() for k in [kept, *members]})
    texts = reader(where, wanted)
    out = []
    for kept, removed in largest:
        members = [{"id": kept, "kept": True, "source": docs[index_of[kept]].source,
                    "text": texts[index_of[kept]][:EXAMPLE_CHARS]}]
        for doc_id in shown[kept]:
            members.append({"id": doc_id, "kept": False, "source": docs[index_of[doc_id]].source,
                            "jaccard": decision.removals[doc_id].jaccard,
                            "text": texts[index_of[doc_id]][:EXAMPLE_CHARS]})
        out.append({"cluster": kept, "size": decision.cluster_sizes.get(kept, len(removed) + 1), "members": members})
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

    def collect(self, batch: pa.Table) -> dict[str, np.ndarray]:
        return self.summarise(batch)

    def decide(self, collected: list[Collected]) -> D.DedupDecision:
        docs, stacked, where = self.gather(collected)
        hi, lo = stacked.get("hash_hi", np.empty(0, np.uint64)), stacked.get("hash_lo", np.empty(0, np.uint64))
        order = np.lexsort((lo, hi))
        same = (hi[order][1:] == hi[order][:-1]) & (lo[order][1:] == lo[order][:-1])
        edges = [(int(order[k]), int(order[k + 1])) for k in np.flatnonzero(same)]
        # A component is one hash: every member is identical to the kept one.
        decision = D.resolve_clusters(docs, edges, lambda i, j: 1.0, 1.0, self.params.keep_policy)
        return self.finish(decision, docs, where)

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

    def collect(self, batch: pa.Table) -> dict[str, np.ndarray]:
        return self.summarise(batch)

    def decide(self, collected: list[Collected]) -> D.DedupDecision:
        p = self.params
        docs, stacked, where = self.gather(collected)
        bands, rows = self.band_shape()
        band_matrix = stacked.get("band", np.empty((0, bands), np.uint64))
        pairs = D.candidate_pairs(band_matrix)
        published = np.array([d.published is not None for d in docs], dtype=bool)
        if len(pairs):
            pairs = pairs[~(published[pairs[:, 0]] & published[pairs[:, 1]])]  # both kept already
        similarity: dict[tuple[int, int], float] = {}
        if p.verify and len(pairs):
            involved = sorted(set(pairs.ravel().tolist()))
            texts = read_texts(where, involved)
            hashes, offsets = D.shingles([texts[i] for i in involved], p.shingle_words)
            sets = {doc: D.shingle_set(hashes, offsets, k) for k, doc in enumerate(involved)}

            def measured(i: int, j: int) -> float:
                key = (min(i, j), max(i, j))
                if key not in similarity:
                    similarity[key] = D.jaccard(sets[i], sets[j])
                return similarity[key]

            edges = [(i, j) for i, j in pairs.tolist() if measured(i, j) >= p.threshold]
            decision = D.resolve_clusters(docs, edges, measured, p.threshold, p.keep_policy)
        else:
            edges = [tuple(pair) for pair in pairs.tolist()]
            decision = D.resolve_clusters(docs, edges, policy=p.keep_policy)
        decision.report.update({
            "threshold": p.threshold, "num_perm": p.num_perm, "shingle_words": p.shingle_words,
            "bands": bands, "rows": rows, "s_curve": D.s_curve(bands, rows),
            "index_bytes_per_doc": bands * 8, "candidate_pairs": int(len(pairs)),
            "verified_pairs": len(edges), "rejected_by_verification": int(len(pairs)) - len(edges) if p.verify else 0,
        })
        return self.finish(decision, docs, where)

    def _reason(self, removal: D.Removal) -> str:
        where = f" in {removal.in_version}" if removal.in_version else ""
        if removal.jaccard != removal.jaccard:  # NaN: verification was off, only the LSH said so
            return f"{self.name}:lsh_candidate dup_of={removal.dup_of}{where}"
        similar = reason(self.name, "jaccard", removal.jaccard, ">=", self.params.threshold)
        return f"{similar} dup_of={removal.dup_of}{where}"

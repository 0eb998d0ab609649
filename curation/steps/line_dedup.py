"""Boilerplate removal: exact line (or paragraph) dedup across the whole run, as a global step.

Web pages repeat navigation, footers, cookie notices and share buttons word for word across many
documents. This step removes a line (or a blank-line separated paragraph, `unit: paragraph`) from
every document when the same *normalised* unit occurs in at least `min_docs` distinct documents of
the run. Normalisation is deliberately simple: lower-case, collapse every run of (Unicode)
whitespace to one space, strip the ends. Digits and punctuation are kept (CCNet also zeroes digits and
drops punctuation and accents; we do not). Whitespace-only units are never counted nor removed.

Sources and our choices:
- CCNet (Wenzek et al. 2020, "Deduplication"): lines ("paragraphs") are normalised, hashed (first 64
  bits of SHA-1) shard by shard, and a line whose hash is already in the shard's (or other shards')
  hash files is removed: a single repeat is enough.
- Dolma (Soldaini et al. 2024; `dolma dedupe` over paragraphs) marks every paragraph already seen in the
  corpus (an in-memory Bloom filter) and the mixer deletes it: every repeat goes, the first stays.
- `min_docs: 3` is our choice: a unit must appear in at least three distinct documents to count as
  boilerplate, so that a quote, a verse or a sentence that two documents share (one quoting the other)
  survives in both, while navigation and footers, which repeat across many pages, go.
- `keep_first: true` (default) keeps the unit in one document and removes it everywhere else, as an
  exact dedup does: the document the dedup steps' keep policy prefers (its origin in `prefer_origins`,
  then its source in `prefer_sources`, which a recipe fills with its input order when unset; see
  curation.steps.dedup), and among those the first in run order (the shards in the order the run
  collects them, then row order), so a verse stays in the Bible chapter rather than in the crawl page
  quoting it. `keep_first: false` removes it from every document, which suits pure boilerplate.
- `min_chars: 0` (default) considers every non-blank unit, as CCNet and Dolma do; raise it (e.g. 10)
  to leave short structural lines alone (`}`, a Markdown rule, "Returns:"), at the cost of keeping
  short navigation items ("Home", "Share").

Global phase: `collect` sends, per shard, the distinct stable 64-bit hashes (xxh3_64 of the
normalised unit's UTF-8 bytes) of each document's units (a flat uint64 array plus per-document
offsets, ~8 bytes per distinct unit per document), the document ids and each document's keep rank;
`decide` counts distinct documents per hash with numpy and returns the sorted boilerplate hashes
(plus, with `keep_first`, the id of the document keeping each one) and a small report; `apply`
recomputes the hashes of each document's units and drops those in the decision (binary search over
the sorted array).

`apply` rewrites the text to the units it keeps, each followed by the separator that followed it in the
original (lines by "\\n", paragraphs by their blank lines as they were); a modified document also loses
blank lines left at its start and end (a final newline stays). A document left empty is rejected with
`line_dedup:empty` (the reject keeps the original text). Every row gets `boilerplate_units_removed`
(int32). Counters, over the documents that are kept: `units_removed` (occurrences), `docs_modified`,
`chars_removed`. Documents are matched by `id` for `keep_first` (ids are unique after ingest).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Literal

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field
from xxhash import xxh3_64_intdigest

from curation.markers import marker_type
from curation.steps.base import SERIAL, Collected, Step, StepOutput, Workers, set_column
from curation.steps.dedup import KeepPolicyParams, provenance
from curation.steps.registry import register

ANNOTATION = "boilerplate_units_removed"
# A paragraph break: a newline, then one or more lines holding only spaces, tabs or "\r". The whole run of
# blank lines is one separator (kept as it was between the paragraphs that stay).
_PARAGRAPH_BREAK = re.compile(r"(\n(?:[ \t\r\f\v]*\n)+)")
_LEADING_BLANK_LINES = re.compile(r"(?:[^\S\n]*\n)+")
_CHUNK_DOCS = 2048  # documents whose units are hashed together
TOP_UNITS = 10  # boilerplate units (most documents first) named in the report
EXAMPLE_CHARS = 200  # an example unit's text is cut to this many characters in the report
_NO_UNIT = np.uint64(0)  # hash slot of a blank (or too short) unit; a real unit hashing to 0 becomes 1


class LineDedupParams(KeepPolicyParams):
    unit: Literal["line", "paragraph"] = "line"
    min_docs: int = Field(3, ge=2)  # distinct documents a unit must occur in to be boilerplate (our choice)
    min_chars: int = Field(0, ge=0)  # units shorter than this (after normalising) are never removed
    keep_first: bool = True  # keep the unit in one document (keep policy, then run order), remove it from the others


@marker_type
@dataclass(frozen=True)
class LineDedupSummary:
    """What `collect` sends for one shard: distinct unit hashes per document, and the documents' ids."""

    hashes: np.ndarray  # uint64, document by document, sorted and distinct within a document
    offsets: np.ndarray  # int64, n_docs + 1: document i's hashes are hashes[offsets[i]:offsets[i + 1]]
    ids: pa.Array  # the documents' ids, row for row
    # int32 per document: its origin and source under the keep policy (KeepPolicy.rank, smaller keeps the unit);
    # None: all equal (a marker written before ranks existed).
    ranks: np.ndarray | None = None


@dataclass(frozen=True)
class LineDedupDecision:
    """The boilerplate units of the run (small: it is pickled to every shard task)."""

    hashes: np.ndarray  # uint64, sorted
    owners: np.ndarray | None  # int32 per hash: index into owner_ids of the document keeping it (keep_first)
    owner_ids: pa.Array | None  # ids of the documents that keep a boilerplate unit (keep_first)
    summary: dict[str, Any] = field(default_factory=dict)  # for the manifest report


def _trim_blank_edges(text: str) -> str:
    """Without blank lines at the start, nor after the last line with text (its newline, if any, stays)."""
    lead = _LEADING_BLANK_LINES.match(text)
    if lead:
        text = text[lead.end():]
    body = text.rstrip()
    newline = text.find("\n", len(body))
    return text if newline < 0 else text[:newline + 1]


def normalise(unit: str) -> str:
    """Lower-case, every run of whitespace as one space, no leading/trailing whitespace."""
    return " ".join(unit.lower().split())


@register
class LineDedup(Step[LineDedupParams]):
    name = "line_dedup"
    category = "dedup"

    def is_global(self) -> bool:
        return True

    # ---- units and their hashes ---------------------------------------------------------------
    def _units(self, text: str) -> list[str]:
        """The document's units in order (lines, or blank-line separated paragraphs)."""
        if self.params.unit == "line":
            return text.split("\n")
        return _PARAGRAPH_BREAK.split(text)[::2]

    def _hashes(self, units: list[str]) -> list[int]:
        """Each unit's stable hash: xxh3_64 of its normalised UTF-8 bytes; 0 for a blank or too short unit."""
        min_chars = max(self.params.min_chars, 1)
        norms = [" ".join(unit.lower().split()) for unit in units]  # normalise(), inlined: the hot loop
        return [(xxh3_64_intdigest(norm.encode("utf-8")) or 1) if len(norm) >= min_chars else 0 for norm in norms]

    def _hash(self, unit: str) -> int:
        return self._hashes([unit])[0]

    def _unit_hashes(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Every unit's hash (0 for blank/short units), document by document, and per-document offsets."""
        chunks: list[np.ndarray] = []
        counts = np.empty(len(texts), np.int64)
        for start in range(0, len(texts), _CHUNK_DOCS):  # a chunk at a time, to bound the Python objects alive
            per_doc = [self._units(text) for text in texts[start:start + _CHUNK_DOCS]]
            counts[start:start + len(per_doc)] = [len(units) for units in per_doc]
            chunks.append(np.array(self._hashes(list(chain.from_iterable(per_doc))), np.uint64))
        offsets = np.zeros(len(texts) + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        return (np.concatenate(chunks) if chunks else np.empty(0, np.uint64)), offsets

    def _rebuild(self, text: str, drop: np.ndarray) -> str:
        """The text without the dropped units: each kept unit followed by the separator that followed it in
        the original (none after the last kept one), then blank lines at the start and end trimmed."""
        if self.params.unit == "line":
            kept = "\n".join(line for line, d in zip(text.split("\n"), drop.tolist()) if not d)
        else:
            parts = _PARAGRAPH_BREAK.split(text)  # unit, separator, unit, ..., unit
            keep = [i for i, d in enumerate(drop.tolist()) if not d]
            kept = "".join(parts[2 * i] + parts[2 * i + 1] for i in keep[:-1]) + (parts[2 * keep[-1]] if keep else "")
        return _trim_blank_edges(kept)

    # ---- global phase -------------------------------------------------------------------------
    def collect(self, batch: pa.Table) -> LineDedupSummary:
        hashes, offsets = self._unit_hashes(batch.column("text").to_pylist())
        docs = np.repeat(np.arange(batch.num_rows, dtype=np.int64), np.diff(offsets))
        order = np.lexsort((hashes, docs))  # by document, then hash
        hashes, docs = hashes[order], docs[order]
        keep = hashes != _NO_UNIT
        keep[1:] &= (hashes[1:] != hashes[:-1]) | (docs[1:] != docs[:-1])  # distinct within a document
        hashes, docs = hashes[keep], docs[keep]
        offsets = np.zeros(batch.num_rows + 1, np.int64)
        np.cumsum(np.bincount(docs, minlength=batch.num_rows), out=offsets[1:])
        policy = self.params.keep_policy
        sources = provenance(batch)
        ranks = np.array([policy.rank(origin, source) for origin, source in zip(sources["origin"], sources["source"])],
                         np.int32)
        return LineDedupSummary(hashes, offsets, batch.column("id").combine_chunks().cast(pa.string()), ranks)

    def decide(self, collected: list[Collected], workers: Workers = SERIAL) -> LineDedupDecision:
        """Hashes in at least `min_docs` documents; with keep_first, the document keeping each one."""
        p = self.params
        summaries: list[LineDedupSummary] = [c.value for c in collected]
        all_hashes = np.concatenate([s.hashes for s in summaries]) if summaries else np.empty(0, np.uint64)
        n_docs = np.array([len(s.offsets) - 1 for s in summaries], np.int64)
        doc_base = np.concatenate([[0], np.cumsum(n_docs)]).astype(np.int64)  # first global doc of each shard
        # Global document offsets into all_hashes (documents in shard order, then row order).
        hash_base = np.concatenate([[0], np.cumsum([len(s.hashes) for s in summaries])]).astype(np.int64)
        doc_offsets = np.concatenate([s.offsets[:-1] + hash_base[i] for i, s in enumerate(summaries)]
                                     + [np.array([len(all_hashes)], np.int64)]) if summaries else np.zeros(1, np.int64)
        # A hash appears at most once per document, so its count is its number of documents; the first
        # occurrence (np.unique sorts stably for return_index) lies in the first document holding it.
        unique, first, counts = np.unique(all_hashes, return_index=True, return_counts=True)
        boiler = counts >= p.min_docs
        hashes, first, counts = unique[boiler], first[boiler], counts[boiler]
        first_doc = np.searchsorted(doc_offsets, first, side="right") - 1  # global document index
        held = np.flatnonzero(np.isin(all_hashes, hashes))  # every occurrence of a boilerplate unit
        holders = np.searchsorted(doc_offsets, held, side="right") - 1  # its document
        docs_with = len(np.unique(holders))
        owners = owner_ids = None
        if p.keep_first:
            ranks = np.concatenate([np.zeros(n, np.int32) if s.ranks is None else s.ranks
                                    for n, s in zip(n_docs, summaries)]) if summaries else np.empty(0, np.int32)
            # Per hash, the best ranked document holding it, the first in run order among those.
            order = np.lexsort((holders, ranks[holders], all_hashes[held]))
            ordered = all_hashes[held][order]
            keeper = holders[order][np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])] if len(held) else held
            owner_docs, owners = np.unique(keeper, return_inverse=True)
            owners = owners.reshape(-1).astype(np.int32)
            owner_ids = self._ids_of(summaries, doc_base, owner_docs)
        top = np.lexsort((first_doc, -counts))[:TOP_UNITS]  # most documents first, then run order
        examples = self._example_texts(collected, summaries, doc_base, hashes[top], first_doc[top])
        summary = {
            "unit": p.unit, "min_docs": p.min_docs, "min_chars": p.min_chars, "keep_first": p.keep_first,
            **({"keep_policy": p.keep_policy.as_report()} if p.keep_first else {}),
            "documents": int(doc_base[-1]) if summaries else 0,
            "distinct_units": int(len(unique)),
            "boilerplate_units": int(len(hashes)),
            "boilerplate_occurrences": int(counts.sum()),  # (unit, document) pairs
            "documents_with_boilerplate": int(docs_with),
            "top": [{"hash": f"{int(h):016x}", "documents": int(c), "text": t}
                    for h, c, t in zip(hashes[top], counts[top], examples)],
        }
        return LineDedupDecision(hashes, owners, owner_ids, summary)

    @staticmethod
    def _ids_of(summaries: list[LineDedupSummary], doc_base: np.ndarray, docs: np.ndarray) -> pa.Array:
        """Ids of global documents `docs` (sorted), shard by shard."""
        shard = np.searchsorted(doc_base, docs, side="right") - 1
        parts = [summaries[s].ids.take(pa.array(docs[shard == s] - doc_base[s])) for s in np.unique(shard)]
        return pa.concat_arrays(parts) if parts else pa.array([], pa.string())

    def _example_texts(self, collected: list[Collected], summaries: list[LineDedupSummary], doc_base: np.ndarray,
                       hashes: np.ndarray, docs: np.ndarray) -> list[str | None]:
        """The text of each unit as its first document wrote it, re-read from that shard's Parquet file."""
        out: list[str | None] = [None] * len(hashes)
        shards = np.searchsorted(doc_base, docs, side="right") - 1
        for s in np.unique(shards):
            c = collected[s]
            try:
                fs = fsspec.core.url_to_fs(c.store_url)[0]
                texts = pq.read_table(c.path, columns=["text"], filesystem=fs).column("text")
            except Exception:  # examples are a nicety; the decision does not depend on them
                continue
            for i in np.flatnonzero(shards == s):
                text = texts[int(docs[i] - doc_base[s])].as_py() or ""
                units = self._units(text)
                for unit, h in zip(units, self._hashes(units)):
                    if h == int(hashes[i]):
                        out[i] = unit.strip()[:EXAMPLE_CHARS]
                        break
        return out

    def report(self, decision: LineDedupDecision) -> dict[str, Any]:
        return decision.summary

    # ---- apply ----------------------------------------------------------------------------------
    def apply(self, batch: pa.Table) -> StepOutput:
        decision: LineDedupDecision = self.decision
        texts = batch.column("text").to_pylist()
        n = len(texts)
        hashes, offsets = self._unit_hashes(texts)
        docs = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
        where = np.searchsorted(decision.hashes, hashes)
        where_ok = np.minimum(where, max(len(decision.hashes) - 1, 0))
        remove = (where < len(decision.hashes)) & (hashes != _NO_UNIT)
        if len(decision.hashes):
            remove &= decision.hashes[where_ok] == hashes
        if decision.owners is not None and remove.any():
            # The first document holding a unit keeps it: compare each unit's owner with the unit's document.
            doc_owner = pc.fill_null(pc.index_in(batch.column("id").cast(pa.string()),
                                                 value_set=decision.owner_ids), -1).to_numpy(zero_copy_only=False)
            remove &= decision.owners[where_ok] != doc_owner[docs]
        per_doc = np.bincount(docs[remove], minlength=n).astype(np.int32)
        new_texts = list(texts)
        empty = np.zeros(n, bool)
        for row in np.flatnonzero(per_doc):
            text = self._rebuild(texts[row], remove[offsets[row]:offsets[row + 1]])
            new_texts[row] = text
            empty[row] = not text.strip()
        batch = set_column(batch, ANNOTATION, pa.array(per_doc, pa.int32()))
        rejected = batch.filter(pa.array(empty)).append_column(
            "reason", pa.array([f"{self.name}:empty"] * int(empty.sum()), pa.string()))
        kept_rows = ~empty
        text_type = batch.schema.field("text").type
        kept = batch.filter(pa.array(kept_rows))
        kept = set_column(kept, "text", pa.array([t for t, k in zip(new_texts, kept_rows.tolist()) if k], text_type))
        modified = kept_rows & (per_doc > 0)
        chars = sum(len(texts[r]) - len(new_texts[r]) for r in np.flatnonzero(modified))
        counters = {"units_removed": int(per_doc[kept_rows].sum()), "docs_modified": int(modified.sum()),
                    "chars_removed": int(chars)}
        return StepOutput(kept, rejected, counters)

"""The parts of a dedup decision that grow with the documents, as plain functions a worker runs.

Each shard task writes its summary (what the keep policy ranks, and the hashes) to a Parquet file in the run's
staging folder; an earlier version's persisted index is a file of the same shape. A decision reads columns
of those files, a piece at a time, on the run's workers:

- `band_candidates`: the candidate pairs of some LSH bands (one uint64 column per band);
- `equal_hashes`: the documents of one exact-hash range that share a hash;
- `pair_similarities`: the exact Jaccard of candidate pairs, reading only the texts they name;
- `doc_keys`: what the keep policy ranks, for the documents that appear in an edge.

The flow's process keeps only the pairs, the verified edges and the keys of the documents in them, so its
memory follows the duplicates, not the documents. Documents are numbered across the files in their order (run
shards in shard order, then earlier versions), so the answer does not depend on how the work is cut or where
it runs: the same as one process deciding alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation import dedup as D
from curation.store import VersionStore

# What every summary (and so every persisted index of an earlier version) holds per document besides its hashes.
KEY_COLUMNS = ("id", "length", "quality", "source", "origin")
# Pairs verified per batch: shingle sets of ~2x this many documents are held at once (~4 KB each for 3 KB texts).
VERIFY_BATCH = 2_000
# Rows decoded at a time when only some texts of a shard are wanted (our choice: ~3 MB of 1.5 KB texts).
TEXT_BATCH_ROWS = 2_048


@dataclass(frozen=True)
class Source:
    """One summary file and where the texts it describes are."""

    summary: str  # the summary's Parquet file (on the store's filesystem)
    texts: str  # the shard's Parquet file holding the texts, or the earlier version's name
    store_url: str
    documents: int
    published: str | None = None  # the earlier version these documents belong to (always kept)
    rows: np.ndarray | None = None  # rows of `texts` the summary describes (a scoped step); None: row k is k


def summary_table(summary: dict[str, np.ndarray]) -> pa.Table:
    """A summary as a table: 1-D arrays as columns, a 2-D one (bands) as a column per index."""
    columns: dict[str, np.ndarray] = {}
    for name, values in summary.items():
        if values.ndim == 2:
            columns.update({f"{name}_{i}": values[:, i] for i in range(values.shape[1])})
        else:
            columns[name] = values
    return pa.table(columns)


def write_summary(parts: Iterable[dict[str, np.ndarray]], path: str, fs: fsspec.AbstractFileSystem) -> None:
    """Summaries (one, or the batches of a larger input) as one Parquet file, atomically."""
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    tmp = f"{path}.tmp"
    writer = None
    try:
        for part in parts:
            table = summary_table(part)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, filesystem=fs, compression="zstd")
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise ValueError(f"{path}: no summary to write")
    fs.mv(tmp, path)


def summary_rows(path: str, store_url: str) -> int:
    fs, _ = fsspec.core.url_to_fs(store_url)
    return pq.ParquetFile(path, filesystem=fs).metadata.num_rows


def read_columns(source: Source, names: list[str]) -> pa.Table:
    fs, _ = fsspec.core.url_to_fs(source.store_url)
    return pq.read_table(source.summary, columns=names, filesystem=fs)


def first_index(sources: list[Source]) -> np.ndarray:
    """The number of each source's first document, and the total at the end."""
    return np.concatenate(([0], np.cumsum([s.documents for s in sources], dtype=np.int64)))


def by_source(sources: list[Source], indices: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Documents (global numbers, sorted) grouped by source: source -> (rows in its summary, the numbers)."""
    starts = first_index(sources)
    indices = np.unique(np.asarray(indices, dtype=np.int64))
    owner = np.searchsorted(starts, indices, side="right") - 1
    out = {}
    for number in np.unique(owner).tolist():
        chosen = indices[owner == number]
        out[number] = (chosen - starts[number], chosen)
    return out


def split(values: np.ndarray, parts: int) -> list[np.ndarray]:
    """`values` cut into at most `parts` contiguous, non-empty pieces."""
    return [piece for piece in np.array_split(values, max(1, min(parts, len(values)))) if len(piece)]


# ---- candidates ---------------------------------------------------------------------------------


def band_candidates(sources: list[Source], bands: list[int], new_documents: int, max_group: int = 64) -> np.ndarray:
    """Candidate pairs (global numbers) of the given bands, each band's column of every summary (8 B per document)
    at a time, except pairs of two published documents (numbered from `new_documents` on)."""
    parts = []
    for band in bands:
        values = [read_columns(s, [f"band_{band}"]).column(0).to_numpy() for s in sources]
        pairs = D.band_pairs(np.concatenate(values) if values else np.empty(0, np.uint64), max_group)
        parts.append(pairs[pairs[:, 0] < new_documents])
    return D.unique_pairs(parts)


def equal_hashes(sources: list[Source], part: int, parts: int) -> np.ndarray:
    """Edges joining the documents that share an exact hash, for the hashes with hash_hi % parts == part:
    consecutive documents of each group of equal hashes (in document order)."""
    starts = first_index(sources)
    his, los, numbers = [], [], []
    for k, source in enumerate(sources):
        table = read_columns(source, ["hash_hi", "hash_lo"])
        hi, lo = table.column(0).to_numpy(), table.column(1).to_numpy()
        mine = np.flatnonzero(hi % np.uint64(parts) == np.uint64(part))
        his.append(hi[mine])
        los.append(lo[mine])
        numbers.append(starts[k] + mine)
    if not his:
        return np.empty((0, 2), np.int64)
    hi, lo, number = np.concatenate(his), np.concatenate(los), np.concatenate(numbers)
    order = np.lexsort((lo, hi))  # stable: equal hashes stay in document order
    same = (hi[order][1:] == hi[order][:-1]) & (lo[order][1:] == lo[order][:-1])
    return np.stack((number[order][:-1][same], number[order][1:][same]), axis=1).astype(np.int64)


# ---- texts, similarities, keys --------------------------------------------------------------------


def read_texts(sources: list[Source], indices: np.ndarray) -> dict[int, str]:
    """Texts of the wanted documents, streaming each shard file (or earlier version) once, a batch of rows at a
    time: memory holds the wanted texts and one batch, not a shard's whole text column."""
    texts: dict[int, str] = {}
    for number, (rows, wanted) in by_source(sources, indices).items():
        source = sources[number]
        if source.published:  # an earlier version: look its documents up by id
            ids = read_columns(source, ["id"]).column(0).take(pa.array(rows)).to_pylist()
            number_of = dict(zip(ids, wanted.tolist()))
            for batch in VersionStore(source.store_url).iter_batches(source.texts, ["id", "text"]):
                for doc_id, text in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                    if doc_id in number_of:
                        texts[number_of[doc_id]] = text
            continue
        at = rows if source.rows is None else np.asarray(source.rows)[rows]
        order = np.argsort(at, kind="stable")
        at, numbers = at[order], wanted[order]
        fs, _ = fsspec.core.url_to_fs(source.store_url)
        first = 0
        with fs.open(source.texts, "rb") as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=TEXT_BATCH_ROWS, columns=["text"]):
                lo, hi = np.searchsorted(at, [first, first + batch.num_rows])
                if hi > lo:
                    chosen = batch.column(0).take(pa.array(at[lo:hi] - first)).to_pylist()
                    texts.update(zip(numbers[lo:hi].tolist(), chosen))
                first += batch.num_rows
                if hi == len(at):
                    break
        pa.default_memory_pool().release_unused()  # the decoded pages: back to the system, not kept for later
    return texts


def pair_similarities(sources: list[Source], pairs: np.ndarray, shingle_words: int) -> np.ndarray:
    """The exact Jaccard similarity of each pair's shingle sets (pairs: global numbers), a batch of pairs
    at a time so only a batch's shingle sets are held."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    texts = read_texts(sources, pairs.ravel())
    out = np.empty(len(pairs), dtype=np.float64)
    for first in range(0, len(pairs), VERIFY_BATCH):
        batch = pairs[first:first + VERIFY_BATCH]
        involved = np.unique(batch)
        hashes, offsets = D.shingles([texts[i] for i in involved.tolist()], shingle_words)
        sets = [D.shingle_set(hashes, offsets, k) for k in range(len(involved))]
        position = np.searchsorted(involved, batch)
        out[first:first + len(batch)] = [D.jaccard(sets[a], sets[b]) for a, b in position.tolist()]
    return out


def doc_keys(sources: list[Source], indices: np.ndarray) -> dict[int, D.DocKey]:
    """What the keep policy ranks, for the wanted documents (global number -> key). The few distinct sources and
    origins are shared objects, so the keys cost the flow their ids, not a string per document per field (pickle
    keeps the sharing)."""
    keys: dict[int, D.DocKey] = {}
    shared: dict[str, str] = {}
    for number, (rows, wanted) in by_source(sources, indices).items():
        source = sources[number]
        table = read_columns(source, list(KEY_COLUMNS)).take(pa.array(rows))
        for k, (doc_id, length, quality, src, origin) in enumerate(zip(*(table.column(c).to_pylist()
                                                                          for c in KEY_COLUMNS))):
            src, origin = shared.setdefault(str(src), str(src)), shared.setdefault(str(origin), str(origin))
            keys[int(wanted[k])] = D.DocKey(str(doc_id), int(length), float(quality), source.published, src, origin)
    return keys

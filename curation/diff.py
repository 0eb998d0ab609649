"""What changed between two versions, row by row, and where one document went and why.

`diff_versions(store, a, b)` compares two versions by `id` and by the xxh3-128 hash of `text`:
documents added, removed, changed and unchanged, with examples. When B descends from A (A is a
parent of B, B's inputs read A's data folder, or A is a further ancestor), each removal is looked up
in B's rejects (and, for an ancestor, in the rejects of the versions in between) and grouped by step
and reason key; removals that no reject explains were "not ingested by B". Both versions' `stats.json`
are put side by side, with the Jensen-Shannon divergence of their unigram distributions and the
Kolmogorov-Smirnov statistic of their length distributions.

`why(store, version, doc_id)` says where one document went: kept (with its row), removed (step,
reason, source file and line, duplicate of), or last seen in an ancestor version.

Both read only the columns they need: the diff streams `id` and `text` batch by batch and keeps
the id and a 16-byte hash per document; lookups read the `id` column and then only the row groups
that hold a match.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import deque
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from curation.store import VersionStore

STATS_FILE = "stats.json"
HEAD_CHARS = 160  # text shown with each example id
ROW_TEXT_CHARS = 300  # text shown with `why`'s row
MAX_DEPTH = 10  # how far up the parents `why` and lineage detection walk
REJECT_COLUMNS = ("id", "step", "reason", "source_file", "source_line", "dup_of")
OTHER = "\x00other"  # the unigram bucket for every word outside the top list (cannot clash with a word)
_VERSION_IN_PATH = re.compile(r"/versions/([A-Za-z0-9][A-Za-z0-9._-]{0,127})(?:/|$)")


# ---- store helpers ----------------------------------------------------------------------------------


def _parts(store: VersionStore, name: str, kind: str, manifest: dict[str, Any] | None = None) -> list[str]:
    """Filesystem paths (for `store.fs`) of a version's data or rejects files."""
    manifest = manifest if manifest is not None else store.manifest(name)
    base = store.version_path(name)
    return [f"{base}/{f['path']}" for f in manifest["files"] if f["kind"] == kind]


def _lookup(store: VersionStore, paths: Iterable[str], ids: pa.Array | list[str],
            columns: list[str] | None = None, batch_size: int = 4096) -> pa.Table | None:
    """Rows whose id is in `ids`: reads each file's `id` column, then only the row groups with a match.

    `columns=None` reads every column. Returns None when nothing matched.
    """
    value_set = ids if isinstance(ids, pa.Array) else pa.array(list(ids), pa.string())
    if len(value_set) == 0:
        return None
    found: list[pa.Table] = []
    for path in paths:
        pf = pq.ParquetFile(path, filesystem=store.fs)
        names = pf.schema_arrow.names
        if "id" not in names:
            continue
        wanted = None if columns is None else [c for c in columns if c in names]
        for group in range(pf.num_row_groups):
            group_ids = pf.read_row_group(group, columns=["id"]).column("id")
            mask = pc.fill_null(pc.is_in(group_ids, value_set=value_set.cast(group_ids.type)), False)
            if not pc.any(mask).as_py():
                continue
            if wanted is not None and wanted == ["id"]:
                found.append(pa.table({"id": group_ids}).filter(mask))
                continue
            # Stream the matching row group in batches so that only matching rows are kept.
            for batch in pf.iter_batches(batch_size=batch_size, row_groups=[group], columns=wanted):
                hit = pc.fill_null(pc.is_in(batch.column("id"), value_set=value_set.cast(group_ids.type)), False)
                if pc.any(hit).as_py():
                    found.append(pa.Table.from_batches([batch.filter(hit)]).replace_schema_metadata(None))
    if not found:
        return None
    return pa.concat_tables(found, promote_options="permissive")


def _head(text: Any, limit: int = HEAD_CHARS) -> Any:
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "replace")
    if isinstance(text, str) and len(text) > limit:
        return text[:limit] + "…"
    return text


def _plain(value: Any, limit: int) -> Any:
    """A JSON-serialisable form of one cell: long strings and bytes shortened."""
    if isinstance(value, (bytes, bytearray)):
        return _head(value, limit)
    if isinstance(value, str):
        return _head(value, limit)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v, limit) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, limit) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)


def _reason_key(reason: str | None) -> str:
    return "" if reason is None else reason.split("=", 1)[0]


def direct_parents(store: VersionStore, name: str, manifest: dict[str, Any] | None = None) -> list[str]:
    """The versions `name` was made from: its manifest's `parents`, then any version whose folder its
    inputs read (`.../versions/<v>/data/...` in the store, or `version:<v>`)."""
    manifest = manifest if manifest is not None else store.manifest(name)
    out = [p for p in manifest.get("parents") or [] if isinstance(p, str)]
    paths: list[str] = []
    for entry in manifest.get("inputs") or []:
        paths.append(entry.get("path") or "")
        paths.extend((f.get("path") or "") for f in entry.get("files") or [] if isinstance(f, dict))
    recipe = manifest.get("recipe") or {}
    paths.extend((entry.get("path") or "") for entry in recipe.get("inputs") or [] if isinstance(entry, dict))
    for raw in paths:
        if not isinstance(raw, str) or not raw:
            continue
        if raw.startswith("version:"):
            candidate = raw[len("version:"):]
            if candidate not in out and candidate != name:
                out.append(candidate)
            continue
        path = raw
        if store.local and "://" not in path:
            path = os.path.abspath(path)
        else:
            path = store.fs._strip_protocol(path)
        match = _VERSION_IN_PATH.search(path)
        if not match:
            continue
        candidate = match.group(1)
        try:
            prefix = store.version_path(candidate)
        except Exception:  # noqa: BLE001 - not a valid version name after all
            continue
        if (path == prefix or path.startswith(prefix + "/")) and candidate not in out and candidate != name:
            out.append(candidate)
    return out


def ancestors(store: VersionStore, name: str, max_depth: int = MAX_DEPTH) -> tuple[list[tuple[str, int]], list[str]]:
    """Breadth-first ancestors of a version as (name, depth), nearest first, and the ones that are missing."""
    seen = {name}
    order: list[tuple[str, int]] = []
    missing: list[str] = []
    queue = deque([(name, 0)])
    while queue:
        current, depth = queue.popleft()
        if depth >= max_depth:
            continue
        try:
            parents = direct_parents(store, current)
        except Exception:  # noqa: BLE001 - a parent whose manifest is gone ends that branch
            continue
        for parent in parents:
            if parent in seen:
                continue
            seen.add(parent)
            if not store.exists(parent):
                missing.append(parent)
                continue
            order.append((parent, depth + 1))
            queue.append((parent, depth + 1))
    return order, missing


def _steps_without_labels(recipe: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in step.items() if k != "stage"} for step in recipe.get("steps") or []]


def extends_recipe(manifest_a: dict[str, Any], manifest_b: dict[str, Any]) -> bool:
    """True when B's recipe is A's recipe with more steps: the same inputs and settings, A's steps first
    (stage labels aside). B's run then saw every document A kept, and its rejects say where they went."""
    ra, rb = manifest_a.get("recipe") or {}, manifest_b.get("recipe") or {}
    settings = ("inputs", "shard_size_mb", "on_unreadable")
    if not ra or not rb or any(ra.get(k) != rb.get(k) for k in settings):
        return False
    steps_a, steps_b = _steps_without_labels(ra), _steps_without_labels(rb)
    return len(steps_a) < len(steps_b) and steps_b[:len(steps_a)] == steps_a


def lineage(store: VersionStore, a: str, b: str) -> dict[str, Any]:
    """How B relates to A: `parent` (A in B's parents), `input` (B's inputs read A's folder),
    `ancestor` (A further up), `extends` (B's recipe is A's with more steps, on the same inputs),
    `same`, or `unrelated`; with the versions whose rejects explain removals."""
    if a == b:
        return {"lineage": "same", "via": [b]}
    manifest = store.manifest(b)
    if a in (manifest.get("parents") or []):
        return {"lineage": "parent", "via": [b]}
    if a in direct_parents(store, b, manifest):
        return {"lineage": "input", "via": [b]}
    found, _ = ancestors(store, b)
    names = [n for n, _ in found]
    if a not in names:
        if extends_recipe(store.manifest(a), manifest):
            return {"lineage": "extends", "via": [b]}
        return {"lineage": "unrelated", "via": []}
    # Every version between A and B (B first, nearest to B next) may have removed what A had.
    between = [n for n in names if n != a and a in {x for x, _ in ancestors(store, n)[0]}]
    return {"lineage": "ancestor", "via": [b, *between]}


# ---- hashing ----------------------------------------------------------------------------------------


def _hash_texts(texts: pa.Array) -> np.ndarray:
    """xxh3-128 of each text's UTF-8 bytes as an (n, 2) uint64 array; read from Arrow's buffers directly."""
    texts = texts.cast(pa.large_string()) if texts.type != pa.large_string() else texts
    n = len(texts)
    out = bytearray(16 * n)
    if n:
        buffers = texts.buffers()
        offsets = np.frombuffer(buffers[1], dtype=np.int64)[texts.offset: texts.offset + n + 1]
        data = memoryview(buffers[2]) if buffers[2] is not None else memoryview(b"")
        valid = None if texts.null_count == 0 else texts.is_valid().to_numpy(zero_copy_only=False)
        digest = xxhash.xxh3_128_digest
        for i in range(n):
            if valid is not None and not valid[i]:
                out[16 * i: 16 * i + 16] = b"\xff" * 16  # a null text: a value no real hash is likely to be
                continue
            out[16 * i: 16 * i + 16] = digest(data[offsets[i]: offsets[i + 1]])
    return np.frombuffer(bytes(out), dtype="<u8").reshape(n, 2)


def id_hashes(store: VersionStore, name: str, prefix: str, batch_size: int = 8192,
              manifest: dict[str, Any] | None = None) -> tuple[pa.Table, int]:
    """(id, <prefix>0, <prefix>1) for every document of a version, streamed batch by batch (`id` and
    `text` only); duplicate ids keep their first occurrence. Returns the table and how many were dropped."""
    ids: list[pa.Array] = []
    h0: list[np.ndarray] = []
    h1: list[np.ndarray] = []
    for path in _parts(store, name, "data", manifest):
        pf = pq.ParquetFile(path, filesystem=store.fs)
        for batch in pf.iter_batches(batch_size=batch_size, columns=["id", "text"]):
            hashes = _hash_texts(batch.column("text"))
            ids.append(batch.column("id").cast(pa.string()))
            h0.append(hashes[:, 0].copy())
            h1.append(hashes[:, 1].copy())
    table = pa.table({
        "id": pa.chunked_array(ids, pa.string()),
        f"{prefix}0": pa.chunked_array([pa.array(x, pa.uint64()) for x in h0], pa.uint64()),
        f"{prefix}1": pa.chunked_array([pa.array(x, pa.uint64()) for x in h1], pa.uint64()),
    })
    rows = table.num_rows
    if rows and pc.count_distinct(table.column("id")).as_py() < rows:
        table = table.group_by(["id"], use_threads=False).aggregate(
            [(f"{prefix}0", "first"), (f"{prefix}1", "first")]).rename_columns(["id", f"{prefix}0", f"{prefix}1"])
    return table, rows - table.num_rows


def _first_ids(ids: pa.ChunkedArray | pa.Array, k: int) -> list[str]:
    if k <= 0 or len(ids) == 0:
        return []
    table = pa.table({"id": ids})
    picked = pc.select_k_unstable(table, min(k, len(ids)), sort_keys=[("id", "ascending")])
    return [str(v) for v in table.column("id").take(picked).to_pylist()]


def _texts(store: VersionStore, name: str, ids: list[str], manifest: dict[str, Any] | None = None) -> dict[str, str]:
    if not ids:
        return {}
    rows = _lookup(store, _parts(store, name, "data", manifest), ids, ["id", "text"])
    out: dict[str, str] = {}
    for row in rows.to_pylist() if rows is not None else []:
        out.setdefault(row["id"], row["text"])
    return out


def _first_difference(x: str, y: str) -> int:
    limit = min(len(x), len(y))
    for i in range(limit):
        if x[i] != y[i]:
            return i
    return limit


# ---- removal reasons --------------------------------------------------------------------------------


def _explain_removals(store: VersionStore, removed: pa.ChunkedArray, via: list[str],
                      examples: int) -> tuple[list[dict[str, Any]], pa.Array]:
    """Groups of (version, step, reason key) for the removed ids found in the rejects of `via`, in order;
    returns the groups and the ids no reject explains."""
    remaining = removed.combine_chunks() if isinstance(removed, pa.ChunkedArray) else removed
    groups: list[dict[str, Any]] = []
    for version in via:
        if len(remaining) == 0:
            break
        manifest = store.manifest(version)
        found = _lookup(store, _parts(store, version, "rejects", manifest), remaining, list(REJECT_COLUMNS))
        if found is None or found.num_rows == 0:
            continue
        for column in REJECT_COLUMNS:
            if column not in found.column_names:
                found = found.append_column(column, pa.nulls(found.num_rows, pa.string()))
        found = found.select(list(REJECT_COLUMNS))
        # A doc rejected more than once (e.g. a repeated id at ingest and its first copy later) is
        # reported with the latest step of the run: that is where its last copy went.
        step_names = [s["name"] for s in manifest.get("steps", [])]
        scopes = {s["name"]: s["scope"] for s in manifest.get("steps", []) if s.get("scope")}
        rank = pc.fill_null(pc.index_in(found.column("step"), value_set=pa.array(step_names, pa.string())), -1)
        found = found.append_column("_rank", rank).sort_by([("id", "ascending"), ("_rank", "descending")])
        ids = found.column("id").combine_chunks()
        if found.num_rows > 1:
            firsts = pa.concat_arrays([pa.array([True]), pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1))])
            found = found.filter(firsts)
        keys = pc.list_element(pc.split_pattern(pc.fill_null(found.column("reason"), ""), "=", max_splits=1), 0)
        found = found.append_column("_key", keys)
        counted = found.group_by(["step", "_key"]).aggregate([("id", "count")])
        for entry in sorted(counted.to_pylist(), key=lambda r: (-r["id_count"], str(r["step"]), r["_key"])):
            mask = pc.and_(pc.equal(found.column("_key"), entry["_key"]),
                           pc.equal(found.column("step"), entry["step"]) if entry["step"] is not None
                           else pc.is_null(found.column("step")))
            members = found.filter(pc.fill_null(mask, False))
            picked = members.take(pc.select_k_unstable(members, min(examples, members.num_rows),
                                                       sort_keys=[("id", "ascending")])) if examples > 0 else None
            shown = []
            for row in picked.to_pylist() if picked is not None else []:
                shown.append({"id": row["id"], "reason": row["reason"], "source_file": row["source_file"],
                              "source_line": row["source_line"], "dup_of": row["dup_of"],
                              "text": None})  # filled with A's text by the caller
            groups.append({"version": version, "step": entry["step"], "reason": entry["_key"],
                           "count": entry["id_count"], "examples": shown,
                           **({"scope": scopes[entry["step"]]} if entry["step"] in scopes else {})})
        remaining = pc.filter(remaining, pc.invert(pc.is_in(remaining, value_set=ids)))
    return groups, remaining


# ---- statistics -------------------------------------------------------------------------------------


def load_stats(store: VersionStore, name: str) -> dict[str, Any] | None:
    path = f"{store.version_path(name)}/{STATS_FILE}"
    if not store.fs.exists(path):
        return None
    with store.fs.open(path, "r") as handle:
        return json.load(handle)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _leaves(obj: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            _leaves(value, f"{prefix}.{key}" if prefix else str(key), out)
    elif _is_number(obj) or obj is None:
        out[prefix] = obj


def numeric_leaves(stats: dict[str, Any] | None) -> dict[str, Any]:
    """Dotted paths of the compared numbers: everything numeric under size, lexical and coverage, and
    semantic.cluster_entropy / semantic.vendi_score (nulls kept, so `tokens: null` still lines up)."""
    out: dict[str, Any] = {}
    if not stats:
        return out
    for section in ("size", "lexical", "coverage"):
        if isinstance(stats.get(section), dict):
            _leaves(stats[section], section, out)
    semantic = stats.get("semantic") or {}
    for key in ("cluster_entropy", "vendi_score"):
        if key in semantic:
            _leaves(semantic[key], f"semantic.{key}", out)
    return out


def side_by_side(stats_a: dict[str, Any] | None, stats_b: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    a, b = numeric_leaves(stats_a), numeric_leaves(stats_b)
    out: dict[str, dict[str, Any]] = {}
    for key in [*a, *(k for k in b if k not in a)]:
        x, y = a.get(key), b.get(key)
        if not (_is_number(x) or _is_number(y)):
            continue
        both = _is_number(x) and _is_number(y)
        delta = y - x if both else None
        rel = (y - x) / x if both and x != 0 else None
        out[key] = {"a": x, "b": y, "delta": delta, "rel": rel}
    return out


def _unigram_distribution(unigrams: dict[str, Any]) -> dict[str, float] | None:
    top = {str(k): float(v) for k, v in (unigrams.get("top") or {}).items() if _is_number(v) and v > 0}
    total = float(unigrams.get("total") or 0)
    listed = sum(top.values())
    total = max(total, listed)
    if total <= 0:
        return None
    dist = {w: c / total for w, c in top.items()}
    other = (total - listed) / total
    if other > 0:
        dist[OTHER] = other
    return dist


def js_divergence(unigrams_a: dict[str, Any], unigrams_b: dict[str, Any]) -> float | None:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between two `unigrams` entries of stats.json.

    Each distribution is the top-word counts over the version's `total` words plus one "other" bucket
    (total - sum of the top counts); a word in one top list and not the other counts 0 there. A word
    just below the other version's top list is thereby treated as absent: an upper bound's worth of
    approximation that vanishes as the top lists cover more of the mass.
    """
    p, q = _unigram_distribution(unigrams_a), _unigram_distribution(unigrams_b)
    if p is None or q is None:
        return None
    value = 0.0
    for word in set(p) | set(q):
        x, y = p.get(word, 0.0), q.get(word, 0.0)
        m = 0.5 * (x + y)
        if x > 0:
            value += 0.5 * x * math.log2(x / m)
        if y > 0:
            value += 0.5 * y * math.log2(y / m)
    return min(1.0, max(0.0, value))


def _cdf_points(histogram: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    edges = np.asarray(histogram.get("edges") or [], dtype=float)
    counts = np.asarray(histogram.get("counts") or [], dtype=float)
    total = counts.sum()
    if len(edges) == 0 or total <= 0:
        return None
    if len(counts) == len(edges) - 1:  # bins [edges[i], edges[i+1]): the CDF is 0 at the first edge
        cdf = np.concatenate([[0.0], np.cumsum(counts)]) / total
    elif len(counts) == len(edges):  # a count per edge: everything up to and at that edge
        cdf = np.cumsum(counts) / total
    else:
        return None
    return edges, cdf


def ks_statistic(histogram_a: dict[str, Any], histogram_b: dict[str, Any]) -> float | None:
    """Kolmogorov-Smirnov statistic between two binned length distributions (`length.histogram`).

    Each CDF is known exactly at its own edges and linearly interpolated between them (documents
    spread uniformly within a bin; 0 below the first edge, 1 above the last). Both CDFs are evaluated on
    the union of the two edge sets; the difference of two piecewise-linear functions peaks at a break
    point, so this is the exact maximum for the interpolated CDFs. It approximates the statistic of the
    raw lengths; with the same edges it is exact at every edge and may understate the peak inside a bin.
    """
    pa_, pb = _cdf_points(histogram_a), _cdf_points(histogram_b)
    if pa_ is None or pb is None:
        return None
    grid = np.union1d(pa_[0], pb[0])
    fa = np.interp(grid, pa_[0], pa_[1], left=0.0, right=1.0)
    fb = np.interp(grid, pb[0], pb[1], left=0.0, right=1.0)
    return float(np.max(np.abs(fa - fb)))


def compare_stats(store: VersionStore, a: str, b: str) -> dict[str, Any]:
    stats_a, stats_b = load_stats(store, a), load_stats(store, b)
    notes = [f"no {STATS_FILE} for version {n!r}" for n, s in ((a, stats_a), (b, stats_b)) if s is None]
    out: dict[str, Any] = {"available": {"a": stats_a is not None, "b": stats_b is not None},
                           "metrics": side_by_side(stats_a, stats_b)}
    js = ks = None
    if stats_a is not None and stats_b is not None:
        ua, ub = stats_a.get("unigrams"), stats_b.get("unigrams")
        if isinstance(ua, dict) and isinstance(ub, dict):
            js = js_divergence(ua, ub)
        if js is None:
            notes.append("unigram distributions missing or empty: no Jensen-Shannon divergence")
        ha = (stats_a.get("length") or {}).get("histogram")
        hb = (stats_b.get("length") or {}).get("histogram")
        if isinstance(ha, dict) and isinstance(hb, dict):
            ks = ks_statistic(ha, hb)
        if ks is None:
            notes.append("length histograms missing, empty or malformed: no Kolmogorov-Smirnov statistic")
        ca, cb = stats_a.get("coverage") or {}, stats_b.get("coverage") or {}
        if ca and cb and ca.get("reference") != cb.get("reference"):
            notes.append(f"coverage is measured against different references ({ca.get('reference')!r} vs "
                         f"{cb.get('reference')!r})")
    out["unigram_js"] = {
        "value": js,
        "method": "Jensen-Shannon divergence, base 2, in [0, 1], between the unigrams.top distributions "
                  "(union of words, missing = 0, each normalised by its total with an 'other' bucket = "
                  "total - sum(top))",
    }
    out["length_ks"] = {
        "value": ks,
        "method": "Kolmogorov-Smirnov statistic from the binned length.histogram: CDFs linearly interpolated "
                  "within bins, evaluated on the union of both edge sets (approximates the raw-length statistic)",
    }
    out["notes"] = notes
    return out


# ---- the diff ---------------------------------------------------------------------------------------


def diff_versions(store: VersionStore, a: str, b: str, *, examples: int = 5) -> dict[str, Any]:
    """Documents added, removed and changed from version A to B (by id and xxh3-128 of the text),
    removal reasons when B descends from A, and the two versions' statistics side by side."""
    manifest_a, manifest_b = store.manifest(a), store.manifest(b)  # unknown versions raise here
    notes: list[str] = []
    table_a, dup_a = id_hashes(store, a, "a", manifest=manifest_a)
    table_b, dup_b = id_hashes(store, b, "b", manifest=manifest_b)
    for name, dropped in ((a, dup_a), (b, dup_b)):
        if dropped:
            notes.append(f"version {name!r} holds {dropped} repeated id(s); the first occurrence of each is compared")
    joined = table_a.join(table_b, keys="id", join_type="full outer")
    in_a, in_b = pc.is_valid(joined.column("a0")), pc.is_valid(joined.column("b0"))
    both = pc.and_(in_a, in_b)
    added_ids = joined.filter(pc.invert(in_a)).column("id")
    removed_ids = joined.filter(pc.invert(in_b)).column("id")
    common = joined.filter(both)
    differs = pc.or_(pc.not_equal(common.column("a0"), common.column("b0")),
                     pc.not_equal(common.column("a1"), common.column("b1")))
    changed_ids = common.filter(differs).column("id")
    unchanged = common.num_rows - len(changed_ids)

    added_examples = _first_ids(added_ids, examples)
    removed_examples = _first_ids(removed_ids, examples)
    changed_examples = _first_ids(changed_ids, examples)
    texts_b = _texts(store, b, added_examples + changed_examples, manifest_b)

    relation = lineage(store, a, b)
    related = relation["lineage"] != "unrelated"
    groups: list[dict[str, Any]] = []
    unexplained: pa.Array | pa.ChunkedArray = removed_ids
    if related and len(removed_ids):
        groups, unexplained = _explain_removals(store, removed_ids, relation["via"], examples)
    not_ingested_examples = _first_ids(unexplained, examples) if related else []
    shown = [e["id"] for g in groups for e in g["examples"]]
    wanted = sorted(set(removed_examples + changed_examples + shown + not_ingested_examples))
    texts_a = _texts(store, a, wanted, manifest_a)  # A's text only for the ids shown
    for group in groups:
        for example in group["examples"]:
            example["text"] = _head(texts_a.get(example["id"]))

    changed_shown = []
    for doc_id in changed_examples:
        x, y = texts_a.get(doc_id) or "", texts_b.get(doc_id) or ""
        at = _first_difference(x, y)
        start = max(0, at - 40)
        changed_shown.append({"id": doc_id, "a_chars": len(x), "b_chars": len(y), "first_difference": at,
                              "a_text": _head(x), "b_text": _head(y),
                              "a_at_difference": x[start: at + 80], "b_at_difference": y[start: at + 80]})

    removed: dict[str, Any] = {
        "count": len(removed_ids),
        "examples": [{"id": i, "text": _head(texts_a.get(i))} for i in removed_examples],
    }
    if not related:
        notes.append(f"{b!r} does not descend from {a!r}: no reasons are claimed for removals")
    else:
        removed["by_reason"] = groups
        removed["not_ingested"] = {
            "count": len(unexplained),
            "examples": [{"id": i, "text": _head(texts_a.get(i))} for i in not_ingested_examples],
            "meaning": f"in {a!r}, in no reject of {', '.join(repr(v) for v in relation['via'])}: "
                       f"{b!r} did not read them",
        }
    return {
        "a": a,
        "b": b,
        "lineage": relation["lineage"],
        "via": relation["via"],
        "docs": {"a": table_a.num_rows, "b": table_b.num_rows},
        "added": {"count": len(added_ids),
                  "examples": [{"id": i, "text": _head(texts_b.get(i))} for i in added_examples]},
        "removed": removed,
        "changed": {"count": len(changed_ids), "examples": changed_shown},
        "unchanged": unchanged,
        "hash": "xxh3-128 of the UTF-8 text",
        "stats": compare_stats(store, a, b),
        "notes": notes,
    }


# ---- why --------------------------------------------------------------------------------------------


def _rows(store: VersionStore, name: str, kind: str, doc_id: str) -> list[dict[str, Any]]:
    found = _lookup(store, _parts(store, name, kind), [doc_id])
    return [] if found is None else found.to_pylist()


def _reject_summary(row: dict[str, Any]) -> dict[str, Any]:
    return {"step": row.get("step"), "reason": row.get("reason"), "reason_key": _reason_key(row.get("reason")),
            "source_file": row.get("source_file"), "source_line": row.get("source_line"),
            "dup_of": row.get("dup_of")}


def _latest(store: VersionStore, name: str, rejects: list[dict[str, Any]]) -> dict[str, Any]:
    order = {s["name"]: i for i, s in enumerate(store.manifest(name).get("steps", []))}
    return max(rejects, key=lambda r: order.get(r.get("step"), -1))


def why(store: VersionStore, version: str, doc_id: str) -> dict[str, Any]:
    """Where document `doc_id` went in `version`, and why: kept, removed (with the step and reason),
    last seen in an ancestor (removed there, or kept there and not ingested here), or unknown."""
    store.manifest(version)  # an unknown version raises VersionNotFoundError
    out: dict[str, Any] = {"version": version, "id": doc_id}
    kept = _rows(store, version, "data", doc_id)
    rejects = _rows(store, version, "rejects", doc_id)
    if kept:
        row = {k: _plain(v, ROW_TEXT_CHARS) for k, v in kept[0].items()}
        if isinstance(kept[0].get("text"), str):
            row["text_chars"] = len(kept[0]["text"])
        out.update(status="kept", where=version, depth=0, row=row,
                   message=f"kept in {version}")
        if rejects:  # e.g. later copies of a repeated id, rejected at ingest
            out["other_rejects"] = [_reject_summary(r) for r in rejects]
        return out
    if rejects:
        latest = _latest(store, version, rejects)
        out.update(status="removed", where=version, depth=0, **_reject_summary(latest),
                   text=_plain(latest.get("text"), ROW_TEXT_CHARS),
                   message=f"removed in {version} by step {latest.get('step')}: {latest.get('reason')}")
        if len(rejects) > 1:
            out["rejects"] = [_reject_summary(r) for r in rejects]
        return out
    found, missing = ancestors(store, version)
    searched = [version]
    for parent, depth in found:
        searched.append(parent)
        parent_kept = _rows(store, parent, "data", doc_id)
        if parent_kept:
            row = {k: _plain(v, ROW_TEXT_CHARS) for k, v in parent_kept[0].items()}
            out.update(status="kept_in_parent", where=parent, depth=depth, row=row, searched=searched,
                       message=f"kept in parent {parent}, not present in this version (not ingested)")
            return out
        parent_rejects = _rows(store, parent, "rejects", doc_id)
        if parent_rejects:
            latest = _latest(store, parent, parent_rejects)
            out.update(status="removed_in_parent", where=parent, depth=depth, **_reject_summary(latest),
                       text=_plain(latest.get("text"), ROW_TEXT_CHARS), searched=searched,
                       message=f"removed in parent {parent} by step {latest.get('step')}: {latest.get('reason')}")
            return out
    out.update(status="unknown", where=None, searched=searched,
               message=f"unknown id {doc_id!r}: not in {version} or its ancestors "
                       f"(searched {', '.join(searched)}, up to {MAX_DEPTH} generations)")
    if missing:
        out["missing_ancestors"] = missing
    return out


# ---- a diff in a few numbers ------------------------------------------------------------------------

# The statistics shown beside a loss delta (curate ablate): size, lexical and semantic diversity, coverage.
SUMMARY_METRICS = ("size.docs", "size.chars", "size.words", "lexical.distinct_4", "lexical.near_dup_density",
                   "semantic.vendi_score", "coverage.covered_share")


def summarize_diff(diff: dict[str, Any], top: int = 5) -> dict[str, Any]:
    """`diff_versions` output cut to what an ablation shows beside a loss delta: documents added,
    removed and changed, the `top` removal reasons, a few statistics side by side, and the distances."""
    removed = diff.get("removed") or {}
    reasons = sorted(removed.get("by_reason") or [], key=lambda g: -g["count"])
    metrics = (diff.get("stats") or {}).get("metrics") or {}
    stats = diff.get("stats") or {}
    return {
        "a": diff["a"], "b": diff["b"], "lineage": diff["lineage"], "docs": diff["docs"],
        "added": diff["added"]["count"], "removed": removed.get("count", 0), "changed": diff["changed"]["count"],
        "top_reasons": [{"step": g["step"], "reason": g["reason"], "count": g["count"]} for g in reasons[:top]],
        "other_reasons": sum(g["count"] for g in reasons[top:]),
        "stats": {k: metrics[k] for k in SUMMARY_METRICS if k in metrics},
        "unigram_js": (stats.get("unigram_js") or {}).get("value"),
        "length_ks": (stats.get("length_ks") or {}).get("value"),
    }

"""The work of a curation run, as plain functions the flow runs as tasks.

    plan_ingest      resolve inputs to files, check every one can be opened (before any work)
    ingest_unit      stream one group of files into raw shards of the target size, plus rejects
    duplicate_ids    global pass: a repeated id keeps its first occurrence, the rest are rejects
    process_shard    run the recipe's steps over one raw shard into data and rejects parts
    ingest_counts / step_counts   fold per-task counts into the manifest's per-step accounting

Every function takes and returns plain, picklable values, so it can run in another process.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import logging
import math
import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zstandard

from curation import __version__, markers
from curation.analysis import TOKENS
from curation.guards import PerplexityScorer, staged_guards
from curation.ingest import (
    INGEST_STEP,
    PROVENANCE_COLUMNS,
    IngestError,
    InputSpec,
    file_format,
    preflight,
    read_input,
    resolve_files,
)
from curation.recall import load_labels, planted_defect_report
from curation.recipe import Recipe
from curation.record import as_rejects, concat, conform, conform_rejects
from curation.report import removed_examples, version_report
from curation.reportkit import write_report
from curation.stats.compute import Accumulator, accumulate, stats_from
from curation.steps import Collected, reason_key
from curation.steps.base import SERIAL, Workers
from curation.steps.scope import apply_in_scope, collect_in_scope
from curation.store import VersionStore, write_text

PARQUET_COMPRESSION = "zstd"
T = TypeVar("T")
log = logging.getLogger(__name__)


class ShardError(RuntimeError):
    """A step failed on one shard; the message names both (the run stops, its finished tasks are kept)."""


@dataclass(frozen=True)
class IngestUnit:
    """A group of files from one input, ingested by one task, in a fixed order."""

    unit: int
    input_index: int
    files: tuple[str, ...]
    nbytes: int


@markers.marker_type
@dataclass
class IngestResult:
    unit: int
    shards: list[str]
    lines_read: int
    records: int
    rejected_by_reason: dict[str, int]
    bytes_read: int
    resumed: bool = False  # read back from an interrupted run's finished work
    text_bytes: int = 0  # UTF-8 bytes of the records' text, for the manifest's estimate-vs-actual


@markers.marker_type
@dataclass
class ShardResult:
    shard: str  # the raw shard this result descends from
    steps: dict[str, dict[str, Any]]
    rows_out: int
    duplicate_id_rejects: int = 0
    output: str | None = None  # intermediate shard for the next round, None when data was written
    collected: Any = None  # summary (or the path of its file) for the global step that the next round starts with
    collected_rows: np.ndarray | None = None  # rows of `output` the summary describes (a scoped step); None: all
    resumed: bool = False  # read back from an interrupted run's finished work


def rounds(recipe: Recipe) -> list[tuple[int, int]]:
    """Runs of steps between global steps: round k applies steps[start:stop] to every shard, then
    (if stop is a global step) collects what that step needs to decide before the next round."""
    steps = recipe.build_steps()
    globals_ = [i for i, (_, step) in enumerate(steps) if step.is_global()]
    # A global first step gets a round of its own that applies nothing and only collects.
    bounds = [0, *globals_, len(steps)]
    return list(zip(bounds[:-1], bounds[1:]))


@dataclass
class Plan:
    units: list[IngestUnit]
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    @property
    def nbytes(self) -> int:
        return sum(u.nbytes for u in self.units)


def file_identity(file: str) -> tuple[int, int] | None:
    """(size, modification time in ns): how a later incremental run tells a file it has already seen."""
    try:
        stat = os.stat(file)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def plan_ingest(recipe: Recipe, seen: dict[str, list[int]] | None = None) -> Plan:
    """Resolve every input and open every file once, so that bad sources fail before any work.
    `seen` (path -> [size, mtime_ns]): files an earlier run ingested, skipped unless they changed."""
    units: list[IngestUnit] = []
    quarantined: list[tuple[str, str]] = []
    target = int(recipe.shard_size_mb * 1e6)
    for index, spec in enumerate(recipe.inputs):
        files = resolve_files(spec, recipe.base)
        group: list[str] = []
        group_bytes = 0
        for file in files:
            if seen and file in seen and list(file_identity(file) or ()) == list(seen[file]):
                continue
            try:
                preflight(spec, file)
            except IngestError as exc:
                if recipe.on_unreadable == "error":
                    raise
                quarantined.append((file, str(exc)))
                continue
            size = os.path.getsize(file) if os.path.exists(file) else 0
            group.append(file)
            group_bytes += size
            # Small files are grouped so one task reads about a shard's worth of input.
            if group_bytes >= target:
                units.append(IngestUnit(len(units), index, tuple(group), group_bytes))
                group, group_bytes = [], 0
        if group:
            units.append(IngestUnit(len(units), index, tuple(group), group_bytes))
    return Plan(units, quarantined)


# When a recipe leaves `shard_size_mb` unset, an input under SHARDS_PER_RUN x 64 MB is cut into about SHARDS_PER_RUN
# shards, so a few workers each get several (the last wave of tasks is then short), never below MIN_AUTO_SHARD_MB,
# where a task's start-up outweighs its work. The size depends on the input only, not on the worker count, so an
# interrupted run resumes under any number of workers. Our choice, from bench/scaling.py: three 25 MB files made
# three 64 MB shards, two waves for two workers.
SHARDS_PER_RUN = 8
MIN_AUTO_SHARD_MB = 4.0
# Tasks that run at once on a cluster whose size the flow does not know (`tcp://...`): our choice; more pieces
# than workers only queue, fewer leave workers idle.
REMOTE_CLUSTER_PARALLELISM = 16


def parallelism(workers: int | None, cluster: str | None = None) -> int:
    """How many tasks can run at once: the worker count (default: every core), `local:N`'s N, or
    REMOTE_CLUSTER_PARALLELISM for a scheduler's address."""
    if cluster:
        count = cluster.removeprefix("local:")
        return int(count) if cluster.startswith("local:") and count.isdigit() else REMOTE_CLUSTER_PARALLELISM
    return workers or os.cpu_count() or 1


def pool_size(workers: int, recipe: Recipe, plan: Plan, forecast: Estimate) -> int:
    """The worker processes worth starting: no more than the tasks that can ever run at once (the ingest tasks,
    the shards the forecast expects at the recipe's shard size, the pieces of a dedup decision). A process pool's
    start costs ~2 s on 2 cores (bench/overhead.py); one worker runs the tasks in the command's own process."""
    shards = math.ceil(forecast.text_bytes / (recipe.shard_size_mb * 1e6))
    return max(1, min(workers, max(len(plan.units), shards, forecast.documents // Workers.min_docs)))


def sized_for(recipe: Recipe) -> Recipe:
    """The recipe with the shard size its run uses: the recipe's own when it sets one, else the default cut down
    to about SHARDS_PER_RUN shards of the input's size on disk. The version does not depend on it (tested across
    shardings); a run's resume key does."""
    if "shard_size_mb" in recipe.model_fields_set:
        return recipe
    total = sum(os.path.getsize(f) for spec in recipe.inputs for f in resolve_files(spec, recipe.base)
                if os.path.isfile(f))
    size = max(MIN_AUTO_SHARD_MB, total / 1e6 / SHARDS_PER_RUN)
    if not total or size >= recipe.shard_size_mb:
        return recipe
    return recipe.model_copy(update={"shard_size_mb": round(size, 3)})


def run_key(recipe: Recipe, plan: Plan, parents: list[str], extra: str = "") -> str:
    """What makes two runs the same run: the recipe's content, its input files as found (path, size,
    modification time), the parents. A rerun with the same key resumes the first one's finished tasks."""
    files = [(file, *(file_identity(file) or (None, None))) for unit in plan.units for file in unit.files]
    blob = json.dumps({"recipe": recipe.content_hash(), "files": files, "quarantined": plan.quarantined,
                       "parents": list(parents), "extra": extra}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def marker_path(staging: str, key: str) -> str:
    return f"{staging}/work/done/{key}.arrow"


def finished(fs: fsspec.AbstractFileSystem, staging: str, key: str, expected: type[T]) -> T | None:
    """A task's result, persisted by an earlier attempt of this run once all its files were written. The
    staging folder may be shared, so the marker is data, never code: one that cannot be read as an
    `expected` of this task is ignored with a warning, and the task is done again."""
    path = marker_path(staging, key)
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as handle:
        result = markers.read(handle.read(), key, expected, path)
    if result is not None:
        result.resumed = True
    return result


def mark_finished(fs: fsspec.AbstractFileSystem, staging: str, key: str, result: T) -> T:
    """Persist a task's result after its files (write then rename: a half-written marker never counts)."""
    path = marker_path(staging, key)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    tmp = f"{path}.tmp"
    with fs.open(tmp, "wb") as handle:
        handle.write(markers.encode(result, key))
    fs.mv(tmp, path)
    return result


def quarantine_table(quarantined: list[tuple[str, str]]) -> pa.Table:
    """One reject per wholly unreadable file, so the manifest still accounts for it."""
    n = len(quarantined)
    return conform_rejects(pa.table({
        "step": pa.array([INGEST_STEP] * n, pa.string()),
        "reason": pa.array([f"unreadable_file={reason}" for _, reason in quarantined], pa.string()),
        "source_file": pa.array([f for f, _ in quarantined], pa.string()),
    }))


def _write_parquet(fs: fsspec.AbstractFileSystem, table: pa.Table, path: str) -> None:
    """Write then rename, so a crash never leaves a half-written part under its final name."""
    tmp = f"{path}.tmp"
    pq.write_table(table, tmp, filesystem=fs, compression=PARQUET_COMPRESSION)
    fs.mv(tmp, path)


class _RollingWriter:
    """Buffers tables and writes a Parquet file each time the buffer reaches the target size."""

    def __init__(self, fs: fsspec.AbstractFileSystem, pattern: str, target_bytes: int):
        self.fs, self.pattern, self.target = fs, pattern, target_bytes
        self.buffer: list[pa.Table] = []
        self.size = 0
        self.paths: list[str] = []

    def add(self, table: pa.Table | None) -> None:
        if table is None or table.num_rows == 0:
            return
        self.buffer.append(table)
        self.size += table.nbytes
        if self.size >= self.target:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        path = self.pattern.format(len(self.paths))
        _write_parquet(self.fs, concat(self.buffer), path)
        self.paths.append(path)
        self.buffer, self.size = [], 0


def ingest_unit(recipe: Recipe, unit: IngestUnit, store_url: str, staging: str) -> IngestResult:
    fs, _ = fsspec.core.url_to_fs(store_url)
    done = finished(fs, staging, f"ingest-{unit.unit:05d}", IngestResult)
    if done is not None:
        return done
    spec: InputSpec = recipe.inputs[unit.input_index]
    target = int(recipe.shard_size_mb * 1e6)
    shards = _RollingWriter(fs, f"{staging}/work/raw-{unit.unit:05d}-{{:05d}}.parquet", target)
    rejects = _RollingWriter(fs, f"{staging}/rejects/ingest-{unit.unit:05d}-{{:05d}}.parquet", target)
    lines = records = text_bytes = 0
    reasons: Counter[str] = Counter()
    for file in unit.files:
        for chunk in read_input(spec, file, chunk_bytes=min(target, 8_000_000)):
            lines += chunk.lines_read
            if chunk.records is not None:
                records += chunk.records.num_rows
                text_bytes += _text_bytes(chunk.records)
                shards.add(chunk.records)
            if chunk.rejects is not None:
                reasons.update(reason_key(r) for r in chunk.rejects.column("reason").to_pylist())
                rejects.add(chunk.rejects)
    shards.flush()
    rejects.flush()
    return mark_finished(fs, staging, f"ingest-{unit.unit:05d}",
                         IngestResult(unit.unit, shards.paths, lines, records, dict(reasons), unit.nbytes,
                                      text_bytes=text_bytes))


def duplicate_ids(store_url: str, shards: list[str], carried: str | None = None) -> dict[str, list[tuple[int, str]]]:
    """Rows whose id was already used earlier in the run, or by the version the run carries over:
    {shard: [(row, reason), ...]}.

    The first occurrence (in input order) keeps the id; later ones are ingest rejects that say
    where the id was first seen. Reads only the id and provenance columns.
    """
    fs, _ = fsspec.core.url_to_fs(store_url)
    tables = []
    for index, shard in enumerate(shards):
        t = pq.read_table(shard, columns=["id", *PROVENANCE_COLUMNS], filesystem=fs)
        tables.append(t.append_column("shard", pa.array(np.full(t.num_rows, index, np.int32)))
                       .append_column("row", pa.array(np.arange(t.num_rows, dtype=np.int64))))
    if not tables:
        return {}
    table = pa.concat_tables(tables)
    table = table.append_column("pos", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    out: dict[str, list[tuple[int, str]]] = {}
    taken = np.zeros(table.num_rows, bool)
    if carried:
        existing = VersionStore(store_url).read_table(carried, columns=["id"]).column("id")
        taken = pc.is_in(table.column("id"), value_set=existing.combine_chunks()).to_numpy(zero_copy_only=False)
        reused = table.filter(pa.array(taken)).select(["id", "shard", "row"]).to_pydict()
        for doc_id, shard_index, row in zip(reused["id"], reused["shard"], reused["row"]):
            out.setdefault(shards[shard_index], []).append((row, f"duplicate_id={doc_id} already in version {carried}"))
        table = table.filter(pa.array(~taken))
    first = table.group_by("id").aggregate([("pos", "min"), ("pos", "count")])
    first = first.filter(pc.greater(first.column("pos_count"), 1))
    if first.num_rows:
        dups = table.join(first, "id").filter(pc.not_equal(pc.field("pos"), pc.field("pos_min")))
        positions = table.column("pos").to_numpy()
        files = table.column("_source_file")
        lines = table.column("_source_line")
        for row in dups.select(["id", "shard", "row", "pos_min"]).to_pylist():
            at = int(np.searchsorted(positions, row["pos_min"]))
            where = f"{files[at].as_py()}:{lines[at].as_py()}"
            out.setdefault(shards[row["shard"]], []).append((row["row"], f"duplicate_id={row['id']} first at {where}"))
    for rows in out.values():
        rows.sort()
    return out


def carry_over(store_url: str, staging: str, version: str) -> dict[str, Any]:
    """Put an earlier version's data files into the staged version unchanged (hard links on a local disk:
    published files are immutable), ahead of the run's own parts: an incremental version holds everything
    its parent held plus what the run added."""
    store = VersionStore(store_url)
    files = store.manifest(version)["files"]
    data = [f for f in files if f["kind"] == "data"]
    for index, entry in enumerate(data):
        source = f"{store.version_path(version)}/{entry['path']}"
        target = f"{staging}/data/carried-{index:05d}.parquet"
        if store.fs.exists(target):
            continue
        if store.local:
            try:
                os.link(source, f"{target}.tmp")
            except OSError:  # another filesystem, or no hard links: copy
                store.fs.copy(source, f"{target}.tmp")
        else:
            store.fs.copy(source, f"{target}.tmp")
        store.fs.mv(f"{target}.tmp", target)
    return {"version": version, "rows": sum(f["rows"] for f in data), "files": len(data)}


def _counts(n_in: int, kept: int, reasons: Iterable[str], counters: dict[str, int] | None = None) -> dict[str, Any]:
    by_reason = Counter(reason_key(r) for r in reasons)
    return {"in": n_in, "kept": kept, "rejected": n_in - kept, "rejected_by_reason": dict(by_reason),
            **({"counters": counters} if counters else {})}


def process_shard(recipe: Recipe, shard: str, drops: list[tuple[int, str]], store_url: str, staging: str,
                  start: int = 0, stop: int | None = None, decisions: dict[int, Any] | None = None,
                  source_shard: str | None = None) -> ShardResult:
    """Apply steps[start:stop] to one shard. Duplicate-id drops happen before the first step; the
    last round writes the data part, earlier rounds an intermediate shard plus what the next
    (global) step collects. Every round writes its own rejects part."""
    fs, _ = fsspec.core.url_to_fs(store_url)
    source_shard = source_shard or shard
    stem = source_shard.rsplit("/", 1)[-1].removeprefix("raw-").removesuffix(".parquet")
    # start and stop: a global first step has a collect-only round (0, 0) before its apply round (0, 1)
    key = f"round-{start:02d}-{len(recipe.steps) if stop is None else stop:02d}-{stem}"
    done = finished(fs, staging, key, ShardResult)
    if done is not None:
        missing = [f for f in _written(done, staging, stem, len(recipe.steps) if stop is None else stop)
                   if not fs.exists(f)]
        if not missing:
            return done
        log.warning("%s: done before, but %s is gone: the shard is done again", key, missing[0])
    try:
        return _process_shard(recipe, shard, drops, store_url, staging, start, stop, decisions, source_shard, fs, key,
                              stem)
    finally:
        TOKENS.clear()  # the shard's token lists: shared by its steps, never by the next shard


def _process_shard(recipe: Recipe, shard: str, drops: list[tuple[int, str]], store_url: str, staging: str,
                   start: int, stop: int | None, decisions: dict[int, Any] | None, source_shard: str,
                   fs: fsspec.AbstractFileSystem, key: str, stem: str) -> ShardResult:
    steps = recipe.build_steps(store_url)
    stop = len(steps) if stop is None else stop
    batch = pq.read_table(shard, filesystem=fs)
    rejected: list[pa.Table] = []
    if drops:
        mask = np.ones(batch.num_rows, bool)
        rows = np.array([r for r, _ in drops], np.int64)
        mask[rows] = False
        dropped = batch.take(pa.array(rows)).append_column("reason", pa.array([r for _, r in drops], pa.string()))
        rejected.append(as_rejects(dropped, INGEST_STEP))
        batch = batch.filter(pa.array(mask))
    counts: dict[str, dict[str, Any]] = {}
    for index in range(start, stop):
        name, step = steps[index]
        if step.is_global():
            step.bind((decisions or {})[index])
        n_in = batch.num_rows
        try:
            out = apply_in_scope(step, batch, recipe.steps[index].scope)
        except Exception as exc:  # name the step and shard: the flow shows this, not a bare worker traceback
            raise ShardError(f"step {name!r} failed on shard {source_shard}: {type(exc).__name__}: {exc}") from exc
        if out.kept.num_rows + out.rejected.num_rows != n_in:
            raise RuntimeError(f"step {name!r} returned {out.kept.num_rows} kept + {out.rejected.num_rows} "
                               f"rejected for {n_in} records in {shard}")
        counts[name] = _counts(n_in, out.kept.num_rows, out.rejected.column("reason").to_pylist(), out.counters)
        if out.rejected.num_rows:
            rejected.append(as_rejects(out.rejected, name))
        batch = out.kept
    if rejected:
        _write_parquet(fs, concat(rejected), f"{staging}/rejects/steps-{stem}-{start:02d}.parquet")
    if stop < len(steps):
        output = f"{staging}/work/round-{stop:02d}-{stem}.parquet"
        _write_parquet(fs, batch, output)
        collected, rows = collect_in_scope(steps[stop][1], batch, recipe.steps[stop].scope)
        collected = steps[stop][1].store_summary(collected, f"{staging}/work/summary-{stop:02d}-{stem}.parquet", fs)
        return mark_finished(fs, staging, key, ShardResult(source_shard, counts, batch.num_rows, len(drops), output,
                                                           collected, collected_rows=rows))
    data = conform(batch.drop_columns([c for c in PROVENANCE_COLUMNS if c in batch.column_names]))
    _write_parquet(fs, data, f"{staging}/data/part-{stem}.parquet")
    return mark_finished(fs, staging, key, ShardResult(source_shard, counts, data.num_rows, len(drops)))


def _written(result: ShardResult, staging: str, stem: str, stop: int) -> list[str]:
    """The files a finished shard round wrote that later rounds read: its output (and its summary file, when the
    step keeps one), or the version's data part."""
    if result.output is None:
        return [f"{staging}/data/part-{stem}.parquet"]
    summary = f"{staging}/work/summary-{stop:02d}-{stem}.parquet"
    return [result.output, *([summary] if isinstance(result.collected, str) and result.collected == summary else [])]


def decide(recipe: Recipe, index: int, results: list[ShardResult], store_url: str, workers: Workers = SERIAL
           ) -> tuple[Any, dict | None]:
    """The decision of the global step at `index` from every shard's summary (in shard order), and
    the step's report of it for the manifest (`workers`: where its heavy parts run)."""
    name, step = recipe.build_steps(store_url)[index]
    ordered = sorted(results, key=lambda r: r.shard)
    try:
        decision = step.decide([Collected(r.collected, r.output, store_url, r.collected_rows) for r in ordered],
                               workers)
    except Exception as exc:  # name the step, whether it failed here or in one of its pieces on a worker
        raise ShardError(f"step {name!r} failed deciding from {len(ordered)} shards: {type(exc).__name__}: {exc}"
                         ) from exc
    return decision, step.report(decision)


def merge_step_counts(recipe: Recipe, results: list[ShardResult]) -> list[dict[str, Any]]:
    """Per-step totals over all shards, in recipe order."""
    merged = []
    for spec in recipe.steps:
        name = spec.instance_name
        total: dict[str, Any] = {"name": name, "in": 0, "kept": 0, "rejected": 0, "rejected_by_reason": Counter(),
                                 "counters": Counter()}
        if not spec.scope.everywhere:
            total["scope"] = spec.scope.describe()
        for result in results:
            counts = result.steps.get(name)
            if counts is None:
                continue  # this step ran in another round
            for key in ("in", "kept", "rejected"):
                total[key] += counts[key]
            total["rejected_by_reason"].update(counts["rejected_by_reason"])
            total["counters"].update(counts.get("counters", {}))
        total["rejected_by_reason"] = dict(sorted(total["rejected_by_reason"].items()))
        total["counters"] = dict(total["counters"])
        merged.append(total)
    return merged


def ingest_counts(ingested: list[IngestResult], duplicates: int, quarantined: int) -> dict[str, Any]:
    reasons: Counter[str] = Counter()
    for result in ingested:
        reasons.update(result.rejected_by_reason)
    if duplicates:
        reasons["duplicate_id"] += duplicates
    if quarantined:
        reasons["unreadable_file"] += quarantined
    n_in = sum(r.lines_read for r in ingested) + quarantined
    rejected = sum(reasons.values())
    return {"name": INGEST_STEP, "in": n_in, "kept": n_in - rejected, "rejected": rejected,
            "rejected_by_reason": dict(sorted(reasons.items())), "counters": {}}


def build_manifest(recipe: Recipe, plan: Plan, ingested: list[IngestResult], duplicates: int,
                   shards: list[ShardResult], parents: list[str], seconds: float,
                   planted: dict[str, Any] | None = None,
                   step_reports: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Everything about the run that the store cannot see in the files themselves."""
    inputs = []
    for index, spec in enumerate(recipe.inputs):
        files = [dict(zip(("path", "bytes", "mtime_ns"), (f, *(file_identity(f) or (None, None)))))
                 for unit in plan.units if unit.input_index == index for f in unit.files]
        inputs.append({"path": spec.path, "source": spec.source_name, "files": files})
    return {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tool": {"name": "curate", "version": __version__},
        "parents": list(parents),
        "recipe": recipe.model_dump(mode="json"),
        "recipe_hash": recipe.content_hash(),
        "inputs": inputs,
        "quarantined_files": [{"path": f, "reason": r, "identity": list(file_identity(f) or [None, None])}
                              for f, r in plan.quarantined],
        "steps": [ingest_counts(ingested, duplicates, len(plan.quarantined)), *merge_step_counts(recipe, shards)],
        "run_seconds": round(seconds, 3),
        **({"planted_defects": planted} if planted else {}),
        **({"step_reports": step_reports} if step_reports else {}),
    }


def write_quarantine(store_url: str, staging: str, quarantined: list[tuple[str, str]]) -> None:
    fs, _ = fsspec.core.url_to_fs(store_url)
    _write_parquet(fs, quarantine_table(quarantined), f"{staging}/rejects/ingest-quarantine.parquet")


def read_staged(store_url: str, staging: str, kind: str, columns: list[str]) -> pa.Table:
    """Columns of every staged data or rejects part (before publishing)."""
    fs, _ = fsspec.core.url_to_fs(store_url)
    parts = sorted(p for p in fs.ls(f"{staging}/{kind}", detail=False) if p.endswith(".parquet"))
    tables = []
    for part in parts:  # a column some parts lack (e.g. dup_of before dedup ran) reads as nulls
        present = [c for c in columns if c in pq.read_schema(part, filesystem=fs).names]
        tables.append(pq.read_table(part, columns=present, filesystem=fs))
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    return concat(tables)


def planted_defects(recipe: Recipe, store_url: str, staging: str) -> dict[str, Any] | None:
    """The recall report for a recipe that names planted-defect labels."""
    if not recipe.labels:
        return None
    path = recipe.resolve(recipe.labels)
    report = planted_defect_report(
        load_labels(path), read_staged(store_url, staging, "data", ["id", "source"]),
        read_staged(store_url, staging, "rejects", ["id", "source", "step", "source_file", "source_line", "dup_of"]))
    return {"labels": str(path), **report}


# The fewest documents in a piece of the statistics' pass sent to a worker (our choice): the flow's own pass
# measures slices on several threads already, and on 2 cores 48,022 documents took ~0.7 s there against 0.95 s in
# two pieces on the workers (bench/scaling.py); pieces pay off across machines (a Dask cluster).
STATS_MIN_DOCS = 250_000
STATS_COLUMNS = ("id", "text", "source", "lang", "lang_score", "quality_score", "dup_cluster_size", "instruction",
                 "input", "output")


def _accumulate_files(store_url: str, files: list[str], first_index: int) -> Accumulator:
    """The statistics' counts and sample over some of a version's data files, whose first document is the
    version's `first_index`-th (a task on a worker)."""
    fs = VersionStore(store_url).fs

    def batches():
        for part in files:
            with fs.open(part, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                columns = [c for c in STATS_COLUMNS if c in parquet.schema_arrow.names]
                for batch in parquet.iter_batches(batch_size=4096, columns=columns):
                    yield pa.Table.from_batches([batch])

    return accumulate(batches(), first_index=first_index)


def _file_groups(files: list[str], rows: list[int], pieces: int) -> list[tuple[list[str], int]]:
    """`files` (of `rows` rows each) in at most `pieces` runs of consecutive files of about equal rows, each with
    its first row's index."""
    total, groups, current, first, seen = sum(rows), [], [], 0, 0
    for file, count in zip(files, rows):
        current.append(file)
        seen += count
        if seen >= total * (len(groups) + 1) / pieces and len(groups) < pieces - 1:
            groups.append((current, first))
            current, first = [], seen
    return [*groups, (current, first)] if current or not groups else groups


def version_guards(store_url: str, staging: str, recipe: Recipe, parents: list[str], synthesis: bool,
                   perplexity: PerplexityScorer | None = None) -> dict[str, Any]:
    """The model-collapse guards' report of a staged version (a task on a worker, while the flow computes the
    statistics, unless a reference model scores perplexity: that scorer stays where it was loaded)."""
    return staged_guards(VersionStore(store_url), staging, recipe.resolved_guards, recipe=recipe, parents=parents,
                         synthesis=synthesis, perplexity=perplexity)


@dataclass
class VersionStats:
    """A staged version's statistics and the semantic model a later version measures its coverage against."""

    stats: dict[str, Any]
    model: Any


def version_stats(store_url: str, staging: str, parents: list[str], workers: Workers = SERIAL,
                  min_docs: int = STATS_MIN_DOCS) -> VersionStats:
    """The statistics of the staged data (compared with the first parent's semantic model). The pass over the data
    is cut into up to `workers.partitions` pieces of consecutive files, each of at least `min_docs` documents
    (merged in order: the same result as one pass), and the sample's measures run side by side on the workers when
    the version has at least `workers.min_docs` documents."""
    store = VersionStore(store_url)
    fs = store.fs
    parts = sorted(p for p in fs.ls(f"{staging}/data", detail=False) if p.endswith(".parquet"))
    rows = [pq.read_metadata(part, filesystem=fs).num_rows for part in parts]
    pieces = min(workers.partitions, sum(rows) // max(min_docs, 1)) if len(parts) > 1 else 1
    groups = _file_groups(parts, rows, pieces) if pieces > 1 else [(parts, 0)]
    accumulated = workers.map(_accumulate_files, [(store_url, files, first) for files, first in groups])
    for later in accumulated[1:]:
        accumulated[0].merge(later)
    reference = next((p for p in parents if fs.exists(f"{store.version_path(p)}/stats_model.npz")), None)
    reference_path = _fsspec_url(store, f"{store.version_path(reference)}/stats_model.npz") if reference else None
    side_by_side = workers.partitions > 1 and sum(rows) >= workers.min_docs  # else tasks cost more than they save
    stats, model = stats_from(accumulated[0], reference_model=reference_path, reference_name=reference,
                              map=workers.map if side_by_side else None)
    return VersionStats(stats, model)


def _fsspec_url(store: VersionStore, path: str) -> str:
    """What fsspec.open accepts for a path on the store's filesystem."""
    return path if store.local else store.fs.unstrip_protocol(path)


def version_extras(store_url: str, computed: VersionStats):
    """The publish hook: the statistics (stats.json, the semantic model) and the HTML report with its JSON twin."""
    def extras(staging, manifest: dict[str, Any]) -> list[str]:
        store = VersionStore(store_url)
        stats = computed.stats
        write_text(store.fs, staging.sub("stats.json"), json.dumps(stats, indent=1))
        computed.model.save(_fsspec_url(store, staging.sub("stats_model.npz")))
        lexical, semantic = stats.get("lexical") or {}, stats.get("semantic") or {}
        manifest["stats_summary"] = {
            "documents": stats["size"]["docs"], "words": stats["size"]["words"],
            "distinct_2": lexical.get("distinct_2"), "compression_ratio": lexical.get("compression_ratio"),
            "cluster_entropy_bits": semantic.get("cluster_entropy"), "vendi_score": semantic.get("vendi_score"),
            **({"coverage_of_" + stats["coverage"]["reference"]: stats["coverage"]["covered_share"]}
               if stats.get("coverage") else {}),
        }
        rejects = read_staged(store_url, staging.path, "rejects",
                              ["id", "text", "step", "reason", "raw", "source_file", "source_line"])
        html, twin = version_report(manifest, stats, examples=removed_examples(rejects))
        write_report(store.fs, staging.path, html, twin)
        return ["stats.json", "stats_model.npz", "report.html", "report.json"]

    return extras


# ---- resource estimate ----------------------------------------------------------------------------

# The flow's own process while a dedup step decides, its pieces on the workers (the pairs, the verified edges, the
# keys of the documents in them, the decision): measured with bench/end_to_end.py (1 M generated 3 KB documents with
# 4 % exact and 4 % near copies, 2 workers) at 54 B per document for MinHash and 27 B for exact dedup (100,000
# documents); it follows the duplicates, so a corpus with more copies needs more. With one worker the pieces run in
# that process, the flow's.
DEDUP_DRIVER_BYTES_PER_DOC = 60
# A worker's peak resident memory: WORKER_BASE_BYTES (the imports: Arrow, the steps, Prefect's task machinery, and
# what earlier tasks left in the process's heaps) + WORKER_BYTES_PER_SHARD_BYTE per byte of the largest shard's
# Arrow table (the table, the steps' filtered copies and annotations, its word tokens shared by the steps,
# Parquet's write buffers). Fitted on `curate run` with 2 workers (bench/estimates.py's recipe): 1 KB documents in
# 4, 8 and 32 MB shards peaked at 0.47, 0.63 and 1.11 GB, 3 KB in 4 and 16 MB at 0.46 and 0.76 GB, 20 KB in 8 and
# 32 MB at 0.60 and 1.09 GB. Document size moved the peak by under 6 % at a given shard size: no per-document term.
WORKER_BASE_BYTES = 460e6
WORKER_BYTES_PER_SHARD_BYTE = 20.0
# Staging at its peak (just before publishing): the raw shards and data + rejects (together one copy), each about
# the sampled records' own Parquet size, one output per round before a global step (what the per-document steps
# before the first global step keep of the sample, as Parquet), and each dedup step's summary files (MinHash: one
# 64-bit value per band, exact dedup: a 16-byte hash; both with SUMMARY_KEY_BYTES of id, length, score, source and
# origin: measured 22.7 and 171 B per document for exact and MinHash on 10,000 of bench/end_to_end.py's documents).
EXACT_HASH_BYTES = 16
SUMMARY_KEY_BYTES = 7
KEPT_SAMPLE_ROWS = 500  # per sampled file: the rows the steps before the first global step are tried on
COMPRESSED_RATIO_GUESS = 3.0  # a Hugging Face input: text bytes per stored byte, when the sample cannot tell
FILES_SAMPLED = 8  # per input: one file per eighth of its bytes
SAMPLE_BYTES_PER_FILE = 1_000_000  # decompressed bytes read from each sampled file


@dataclass
class Estimate:
    """What a run will need, from the input sizes and samples spread over each input's files."""

    documents: int
    text_bytes: int
    dedup_memory_bytes: int  # what the flow's own process holds while a dedup step decides
    worker_memory_bytes: int  # per worker process
    disk_bytes: int  # staging intermediates at their peak (raw shards, round outputs, data, rejects)

    def describe(self, workers: int) -> str:
        def size(n: float) -> str:
            return f"{n / 1e9:,.1f} GB" if n >= 1e9 else f"{n / 1e6:,.0f} MB"

        return (f"estimate: ~{self.documents:,} documents ({size(self.text_bytes)} of text); memory ~"
                f"{size(self.dedup_memory_bytes)} for the dedup decisions + {workers} x "
                f"{size(self.worker_memory_bytes)} workers; disk ~{size(self.disk_bytes)} of intermediates")

    def versus(self, actual: dict[str, int | None]) -> dict[str, Any]:
        """The manifest's `estimate`, `actual` and `estimate_ratio` (estimate / actual, per quantity measured)."""
        pairs = {"documents": "documents", "text_bytes": "text_bytes", "worker_memory_bytes": "worker_peak_rss_bytes",
                 "disk_bytes": "disk_peak_bytes"}
        ratio = {key: round(getattr(self, key) / actual[measured], 3) for key, measured in pairs.items()
                 if actual.get(measured)}
        return {"estimate": dataclasses.asdict(self), "actual": actual, "estimate_ratio": ratio}


def run_actuals(ingested: list[IngestResult], worker_peak_rss: int, staging_bytes: int) -> dict[str, int | None]:
    """What the run really read and used, next to the estimate (0 peak: no task reported one)."""
    return {"documents": sum(r.lines_read for r in ingested), "text_bytes": sum(r.text_bytes for r in ingested),
            "worker_peak_rss_bytes": worker_peak_rss or None, "disk_peak_bytes": staging_bytes}


def _text_bytes(records: pa.Table) -> int:
    return int(pc.sum(pc.binary_length(records.column("text"))).as_py() or 0)


@dataclass
class _Sample:
    """What a sample of one file held, and how many of the file's bytes it covered."""

    documents: float
    text_bytes: float
    table_bytes: float  # the records as Arrow holds them in a shard
    parquet_bytes: float  # the records as a staged Parquet part
    file_bytes: float
    kept_parquet_bytes: float = 0.0  # of parquet_bytes, what the steps before the first global step keep
    head: pa.Table | None = field(default=None, repr=False)  # the first records, to try those steps on

    def scaled(self, nbytes: float) -> _Sample:
        """The sample's densities applied to `nbytes` of input."""
        factor = nbytes / self.file_bytes if self.file_bytes else 0.0
        return _Sample(self.documents * factor, self.text_bytes * factor, self.table_bytes * factor,
                       self.parquet_bytes * factor, nbytes, self.kept_parquet_bytes * factor)

    def plus(self, other: _Sample) -> _Sample:
        return _Sample(*(getattr(self, f) + getattr(other, f) for f in _SUMMED))


_SUMMED = ("documents", "text_bytes", "table_bytes", "parquet_bytes", "file_bytes", "kept_parquet_bytes")


def _records_sample(chunks: Iterable[Any], file_bytes: float, documents: float | None = None) -> _Sample:
    """A sample from parsed chunks; `documents`: the exact count where the file's metadata knows it."""
    lines = 0
    tables = []
    for chunk in chunks:
        lines += chunk.lines_read
        if chunk.records is not None and chunk.records.num_rows:
            tables.append(chunk.records)
    if not tables:
        return _Sample(lines, 0, 0, 0, file_bytes)
    records = concat(tables)
    buffer = pa.BufferOutputStream()
    pq.write_table(records, buffer, compression=PARQUET_COMPRESSION)
    scale = documents / lines if documents is not None and lines else 1.0
    return _Sample(documents if documents is not None else lines, _text_bytes(records) * scale,
                   records.nbytes * scale, buffer.getvalue().size * scale, file_bytes,
                   head=records.slice(0, KEPT_SAMPLE_ROWS))


def _prefix(file: str, budget: int, separator: bytes) -> tuple[bytes, float]:
    """The file's first whole records (ending in `separator`) of about `budget` decompressed bytes, and the file
    bytes they took (compressed ones, for .gz and .zst)."""
    with open(file, "rb") as raw:
        if file.endswith(".gz"):
            stream: Any = gzip.GzipFile(fileobj=raw)
        elif file.endswith(".zst"):  # small reads: the file position then tells how much the sample took
            stream = zstandard.ZstdDecompressor().stream_reader(raw, read_size=8192)
        else:
            stream = raw
        data = stream.read(budget)
        while separator not in data and (more := stream.read(budget)):  # a record longer than the budget
            data += more
        consumed = raw.tell()
        whole = not stream.read(1)
    if whole:
        return data, os.path.getsize(file)
    cut = data.rfind(separator) + len(separator)
    return data[:cut], consumed * cut / len(data)


def _sample_file(spec: InputSpec, file: str, budget: int) -> _Sample:
    """Records, text and stored bytes per file byte of one file: Parquet rows counted exactly from the metadata,
    a line or paragraph format from a prefix of whole records, a one-document text file read whole."""
    fmt = file_format(spec, file)
    size = os.path.getsize(file) if os.path.isfile(file) else 0
    if fmt == "parquet":
        chunks = read_input(spec, file, chunk_bytes=budget)
        first = next(chunks, None)
        chunks.close()
        return _records_sample([first] if first else [], size, pq.read_metadata(file).num_rows)
    if fmt == "hf" or (fmt == "text" and spec.text_mode != "paragraph"):
        chunks = read_input(spec, file, chunk_bytes=budget)
        first = next(chunks, None)
        whole = next(chunks, None) is None
        chunks.close()
        sample = _records_sample([first] if first else [], size)
        if not whole:  # a dataset larger than the sample: its stored size says little, guess its compression
            sample.file_bytes = sample.text_bytes / COMPRESSED_RATIO_GUESS
        return sample
    data, covered = _prefix(file, budget, b"\n\n" if fmt == "text" else b"\n")
    with tempfile.TemporaryDirectory() as folder:
        name = os.path.basename(file).removesuffix(".gz").removesuffix(".zst")
        copy = os.path.join(folder, name)
        with open(copy, "wb") as handle:
            handle.write(data)
        return _records_sample(read_input(spec, copy, chunk_bytes=len(data) + 1), covered)


def _sampled_files(files: list[str], sizes: list[int], count: int) -> list[tuple[str, int]]:
    """Up to `count` strata of consecutive files, each about an equal share of the bytes: (its middle file, the
    stratum's bytes). Every file is its own stratum when there are no more than `count`."""
    if len(files) <= count:
        return list(zip(files, sizes))
    total = sum(sizes) or 1
    strata: dict[int, list[tuple[str, int]]] = {}
    seen = 0
    for file, size in zip(files, sizes):
        strata.setdefault(min(count - 1, int((seen + size / 2) / total * count)), []).append((file, size))
        seen += size
    return [(members[len(members) // 2][0], sum(size for _, size in members)) for members in strata.values()]


def _kept_share(recipe: Recipe, records: pa.Table | None) -> float:
    """The share of the records' text that the steps before the first global step keep: what the intermediate
    shards hold. A step that cannot run here (it needs the store, or a model's files) counts as keeping all."""
    if records is None or records.num_rows == 0:
        return 1.0
    steps = recipe.build_steps()
    first_global = next((i for i, (_, step) in enumerate(steps) if step.is_global()), len(steps))
    batch = records
    try:
        for index in range(first_global):
            batch = apply_in_scope(steps[index][1], batch, recipe.steps[index].scope).kept
    except Exception:  # noqa: BLE001 - a forecast: the upper bound rather than no estimate
        return 1.0
    finally:
        TOKENS.clear()  # the sample's token lists, as after a shard
    return _text_bytes(batch) / max(_text_bytes(records), 1)


def _input_sample(recipe: Recipe, spec: InputSpec, units: list[IngestUnit]) -> _Sample:
    """One input's totals: each stratum of its files scaled from its middle file's sample."""
    files = [f for unit in units for f in unit.files]
    sizes = [os.path.getsize(f) if os.path.isfile(f) else 0 for f in files]
    total = _Sample(0, 0, 0, 0, 0)
    for file, nbytes in _sampled_files(files, sizes, FILES_SAMPLED):
        sample = _sample_file(spec, file, SAMPLE_BYTES_PER_FILE)
        sample.kept_parquet_bytes = sample.parquet_bytes * _kept_share(recipe, sample.head)
        total = total.plus(sample.scaled(nbytes or 1))
    return total


def estimate(recipe: Recipe, plan: Plan) -> Estimate:
    """Documents and text from samples spread over each input's files; memory and disk from models fitted on
    measured runs (see the constants above)."""
    totals = _Sample(0, 0, 0, 0, 0)
    largest_shard = _Sample(0, 0, 0, 0, 0)
    target = recipe.shard_size_mb * 1e6
    for index, spec in enumerate(recipe.inputs):
        units = [unit for unit in plan.units if unit.input_index == index]
        if not units:
            continue
        sample = _input_sample(recipe, spec, units)
        totals = totals.plus(sample)
        # A shard is cut once its Arrow table reaches the target; a unit smaller than that is one shard.
        unit = sample.scaled(max(u.nbytes for u in units))
        shard = unit.scaled(unit.file_bytes * min(1.0, target / unit.table_bytes)) if unit.table_bytes else unit
        if shard.table_bytes > largest_shard.table_bytes:
            largest_shard = shard
    steps = recipe.build_steps()
    per_doc = 0
    summary_bytes_per_doc = 0
    for _, step in steps:
        band_shape = getattr(step, "band_shape", None)
        if step.is_global() and step.category == "dedup":
            per_doc = DEDUP_DRIVER_BYTES_PER_DOC
            summary_bytes_per_doc += (band_shape()[0] * 8 if band_shape else EXACT_HASH_BYTES) + SUMMARY_KEY_BYTES
    intermediates = len(rounds(recipe)) - 1  # an output per round that ends at a global step
    return Estimate(documents=int(totals.documents), text_bytes=int(totals.text_bytes),
                    dedup_memory_bytes=int(per_doc * totals.documents),
                    worker_memory_bytes=int(WORKER_BASE_BYTES
                                            + WORKER_BYTES_PER_SHARD_BYTE * largest_shard.table_bytes),
                    disk_bytes=int(totals.parquet_bytes * 2 + totals.kept_parquet_bytes * intermediates
                                   + summary_bytes_per_doc * totals.documents))

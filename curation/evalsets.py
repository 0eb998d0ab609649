"""Frozen evaluation sets: held-out human reference text, registered once per store and hashed.

An evaluation set is text that no filter, deduplication or synthesis step ever touches. It is
registered once, under a name, and is immutable afterwards, so that

  * training data can be decontaminated against it (the `decontaminate` step), and
  * every training run evaluates on exactly the same text (a trainer reads it with `load_evalset`,
    which checks the data file's sha256 before handing it out).

    <store root>/evalsets/<name>/data.parquet      id, text, source (zstd Parquet, registration order)
                                /evalset.json      name, created_at, docs, chars, sha256 of data.parquet,
                                                   content fingerprint, sources (file sha256 or version
                                                   fingerprint), sampling, what was skipped
    <store root>/evalsets/.staging/                sets being written (never visible)

Sources are files, folders or globs read with the project's own ingestion (`curation.ingest`: JSONL,
Parquet, CSV, text; lines that are not records are skipped and counted by reason), or `version:NAME`
(a published version's `id`/`text`/`source`). Repeated ids keep their first occurrence, as ingestion
does; the others are skipped as `duplicate_id`.

Like versions, a set is written in a staging folder and made visible by one atomic rename on a
local disk; on object stores (any fsspec URL) `evalset.json` is written last and is the commit
marker. Nothing here imports Prefect.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.ingest import IngestError, InputSpec, preflight, read_input, resolve_files
from curation.store import StoreError, VersionStore, check_name, file_sha256, write_json

EVALSETS_DIR = "evalsets"
DATA_FILE = "data.parquet"
INFO_FILE = "evalset.json"
FORMAT_VERSION = 1
VERSION_PREFIX = "version:"
ROLES = ("evaluation", "reference", "instruction")
SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("text", pa.large_string(), nullable=False),
                    pa.field("source", pa.string(), nullable=False)])
# An instruction set keeps each record's fields beside its rendered text (what fine-tuning reads; `text` is what
# decontamination and the fingerprint see), as instruction versions do.
INSTRUCTION_COLUMNS = ("schema", "record", "instruction", "input", "output", "task_type")
INSTRUCTION_SCHEMA = pa.schema([*SCHEMA, *(pa.field(c, pa.string()) for c in INSTRUCTION_COLUMNS)])


class EvalSetError(Exception):
    """An evaluation set that cannot be registered or loaded; the message names the set or file and why."""


class EvalSetExistsError(EvalSetError):
    pass


class EvalSetNotFoundError(EvalSetError):
    pass


@dataclass(frozen=True)
class EvalSetInfo:
    """What `evalset.json` says about a registered set (`path`: the set's folder, a path or URL)."""

    name: str
    created_at: str
    docs: int
    chars: int
    sha256: str  # of data.parquet, checked by `load_evalset`
    fingerprint: str  # over (id, text) in order, independent of the file encoding (see `content_fingerprint`)
    sources: list[dict[str, Any]]
    bytes: int = 0
    docs_available: int = 0  # documents read (after skips) before `max_docs` sampling
    max_docs: int | None = None
    seed: int = 0
    text_field: str = "text"
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> lines/records not taken
    data_file: str = DATA_FILE
    # "evaluation": held-out text that measures models (ablations, decontamination); "reference": trusted text that
    # filters are calibrated on. Never both: tuning curation on the measuring stick would flatter its results.
    # "instruction": held-out instruction records that measure fine-tuned models (loss on their responses).
    role: str = "evaluation"
    path: str = ""

    @property
    def data_path(self) -> str:
        return f"{self.path}/{self.data_file}"

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body.pop("path")
        return {"format_version": FORMAT_VERSION, "kind": "evalset", **body}

    @classmethod
    def from_json(cls, path: str, data: dict[str, Any], where: str) -> EvalSetInfo:
        missing = [k for k in ("name", "docs", "sha256", "fingerprint") if k not in data]
        if missing:
            raise EvalSetError(f"{where}: missing key(s) {', '.join(missing)}")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "path"}
        known.setdefault("created_at", "")
        known.setdefault("chars", 0)
        known.setdefault("sources", [])
        return cls(path=path, **known)


# ---------------------------------------------------------------------------------------------
# Paths


def _store(store: VersionStore | str | os.PathLike[str]) -> VersionStore:
    return store if isinstance(store, VersionStore) else VersionStore(store)


def _check_set_name(name: str) -> str:
    try:
        return check_name(name, "evaluation set")
    except StoreError as exc:
        raise EvalSetError(str(exc)) from None


def evalset_dir(store: VersionStore, name: str) -> str:
    """The set's folder on the store's filesystem (a path without protocol)."""
    return f"{store.root}/{EVALSETS_DIR}/{_check_set_name(name)}"


def _uri(store: VersionStore, path: str) -> str:
    return path if store.local else store.fs.unstrip_protocol(path)


def evalset_exists(store: VersionStore | str | os.PathLike[str], name: str) -> bool:
    target = _store(store)
    return target.fs.exists(f"{evalset_dir(target, name)}/{INFO_FILE}")


def evalset_names(store: VersionStore | str | os.PathLike[str], role: str | None = None) -> list[str]:
    """The registered sets, by name (`role`: only evaluation sets, or only reference sets)."""
    target = _store(store)
    base = f"{target.root}/{EVALSETS_DIR}"
    if not target.fs.exists(base):
        return []
    out = []
    for entry in target.fs.ls(base, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("."):
            continue
        try:
            check_name(name)
        except StoreError:
            continue
        if target.fs.exists(f"{base}/{name}/{INFO_FILE}") and (role is None or read_info(target, name).role == role):
            out.append(name)
    return sorted(out)


# Why a set of another role cannot measure a model of each kind (a role missing here is refused plainly).
_WRONG_ROLE = {
    ("evaluation", "reference"): "filters are calibrated on it: measuring models on it would flatter the curation it "
                                 "tuned; evaluate on held-out text registered with `--role evaluation`",
    ("evaluation", "instruction"): "it measures fine-tuned models on their responses (`curate finetune`, `curate "
                                   "ablate --finetune`); pre-training evaluates on text registered with `--role "
                                   "evaluation`",
    ("instruction", "evaluation"): "fine-tuned models are measured on held-out instruction records, registered with "
                                   "`--role instruction`",
    ("instruction", "reference"): "fine-tuned models are measured on held-out instruction records, registered with "
                                  "`--role instruction`",
}


def _sets_of_role(store: VersionStore | str | os.PathLike[str], names: Sequence[str] | None, role: str) -> list[str]:
    """`names` (default: every set of `role`), each checked to be a set of `role`."""
    target = _store(store)
    if not names:
        return evalset_names(target, role)
    for name in names:
        found = read_info(target, name).role
        if found != role:
            raise EvalSetError(f"{name!r} is a{'n' if found[0] in 'aeiou' else ''} {found} set: "
                               f"{_WRONG_ROLE[(role, found)]}")
    return list(names)


def evaluation_sets(store: VersionStore | str | os.PathLike[str], names: Sequence[str] | None = None) -> list[str]:
    """The sets a pre-trained model is measured on: `names` (default: every evaluation set), each one an
    evaluation set."""
    return _sets_of_role(store, names, "evaluation")


def instruction_sets(store: VersionStore | str | os.PathLike[str], names: Sequence[str] | None = None) -> list[str]:
    """The sets a fine-tuned model is measured on: `names` (default: every instruction set), each one an
    instruction set."""
    return _sets_of_role(store, names, "instruction")


# ---------------------------------------------------------------------------------------------
# Hashing


def content_fingerprint(table: pa.Table) -> str:
    """sha256 over every record in order: for each, the UTF-8 bytes of `id` then of `text`, each preceded
    by its byte length as 8-byte little-endian. Independent of how the data is stored, so anyone holding
    the same (id, text) pairs in the same order can recompute it without this package."""
    digest = hashlib.sha256()
    for ids, texts in zip(_chunks(table.column("id")), _chunks(table.column("text"))):
        for rid, text in zip(ids, texts):
            for value in (rid, text):
                data = value.encode("utf-8")
                digest.update(len(data).to_bytes(8, "little"))
                digest.update(data)
    return digest.hexdigest()


def _chunks(column: pa.ChunkedArray) -> Iterator[list[str]]:
    combined = column.combine_chunks()
    step = 10_000
    for start in range(0, len(combined), step):
        yield combined.slice(start, step).to_pylist()


# ---------------------------------------------------------------------------------------------
# Reading sources


def _read_path_source(spec_path: str, text_field: str, source_name: str | None, schema: pa.Schema
                      ) -> tuple[list[pa.Table], dict[str, Any]]:
    if schema is INSTRUCTION_SCHEMA:
        raise EvalSetError(f"source {spec_path}: an instruction set is registered from an instruction version "
                           "(version:NAME); publish the records as one first (`records: alpaca` input)")
    spec = InputSpec(path=spec_path, text_field=text_field, source=source_name)
    try:
        files = resolve_files(spec)
        for file in files:
            preflight(spec, file)
    except IngestError as exc:
        raise EvalSetError(f"source {spec_path}: {exc}") from exc
    tables: list[pa.Table] = []
    entries = []
    for file in files:
        # Hashed before reading: the recorded sha256 is of the bytes about to be read.
        entry: dict[str, Any] = {"path": os.path.abspath(file), "bytes": os.path.getsize(file),
                                 "sha256": file_sha256(file), "docs": 0, "skipped": {}}
        for chunk in read_input(spec, file):
            if chunk.records is not None and chunk.records.num_rows:
                tables.append(chunk.records.select(schema.names))
                entry["docs"] += chunk.records.num_rows
            if chunk.rejects is not None and chunk.rejects.num_rows:
                for reason in chunk.rejects.column("reason").to_pylist():
                    key = reason.split("=", 1)[0]
                    entry["skipped"][key] = entry["skipped"].get(key, 0) + 1
        entries.append(entry)
    return tables, {"kind": "path", "path": spec_path, "text_field": text_field, "files": entries}


def _read_version_source(store: VersionStore, name: str, source_name: str | None, schema: pa.Schema
                         ) -> tuple[list[pa.Table], dict[str, Any]]:
    try:
        manifest = store.manifest(name)
        missing = [c for c in schema.names if c not in store.schema(name).names]
        if missing:
            raise EvalSetError(f"source {VERSION_PREFIX}{name}: no {', '.join(missing)} column(s); an instruction "
                               "set is registered from an instruction version (`curate synthesize`, or records "
                               "ingested with `records: alpaca`)")
        table = store.read_table(name, columns=schema.names)
    except StoreError as exc:
        raise EvalSetError(f"source {VERSION_PREFIX}{name}: {exc}") from exc
    if source_name is not None:
        table = table.set_column(2, "source", pa.array([source_name] * table.num_rows, pa.string()))
    return [table], {"kind": "version", "name": name, "store": store.url, "fingerprint": manifest.get("fingerprint"),
                     "rows": manifest.get("rows"), "docs": table.num_rows}


def _parse_source(source: str) -> tuple[str, str]:
    if source.startswith(VERSION_PREFIX):
        name = source[len(VERSION_PREFIX):]
        if not name:
            raise EvalSetError(f"{source!r}: `version:` needs a version name, e.g. version:demo")
        return "version", name
    if not source:
        raise EvalSetError("empty source: give a file, folder, glob or version:NAME")
    return "path", source


def _dedupe_ids(table: pa.Table) -> tuple[pa.Table, int]:
    """Keep the first record of each id (as ingestion does); returns the table and how many were dropped."""
    ids = table.column("id").combine_chunks()
    _, first = np.unique(ids.to_numpy(zero_copy_only=False).astype(object), return_index=True)
    if len(first) == table.num_rows:
        return table, 0
    return table.take(pa.array(np.sort(first))), table.num_rows - len(first)


# ---------------------------------------------------------------------------------------------
# Registering


def register_evalset(
    store: VersionStore | str | os.PathLike[str],
    name: str,
    sources: Sequence[str],
    *,
    text_field: str = "text",
    max_docs: int | None = None,
    seed: int = 0,
    source_name: str | None = None,
    role: str = "evaluation",
) -> EvalSetInfo:
    """Read `sources`, freeze them as the eval set `name` in `store`, and return what was written.

    `sources`: files, folders or globs (read with `curation.ingest`; `text_field` names the text column
    or key) or `version:NAME`. `source_name` sets the `source` column of every document (default: the
    input's name, or the version's own `source`). `max_docs` keeps a seeded random sample of that many
    documents, in their original order. An existing name is an error: sets are immutable.
    """
    target = _store(store)
    _check_set_name(name)
    if role not in ROLES:
        raise EvalSetError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    if not sources:
        raise EvalSetError("give at least one source (a file, folder, glob or version:NAME)")
    if max_docs is not None and max_docs < 1:
        raise EvalSetError(f"max_docs must be at least 1, got {max_docs}")
    if evalset_exists(target, name):
        raise EvalSetExistsError(f"eval set {name!r} already exists in {target.url}; eval sets are immutable, "
                                 "pick another name")
    schema = INSTRUCTION_SCHEMA if role == "instruction" else SCHEMA
    tables: list[pa.Table] = []
    provenance: list[dict[str, Any]] = []
    skipped: dict[str, int] = {}
    for source in sources:
        kind, value = _parse_source(source)
        if kind == "version":
            got, entry = _read_version_source(target, value, source_name, schema)
        else:
            got, entry = _read_path_source(value, text_field, source_name, schema)
            for file in entry["files"]:
                for key, count in file["skipped"].items():
                    skipped[key] = skipped.get(key, 0) + count
        tables.extend(got)
        provenance.append(entry)
    if tables:
        table = pa.concat_tables([t.cast(schema) for t in tables])
    else:
        table = schema.empty_table()
    table, duplicates = _dedupe_ids(table)
    if duplicates:
        skipped["duplicate_id"] = skipped.get("duplicate_id", 0) + duplicates
    available = table.num_rows
    if available == 0:
        raise EvalSetError(f"eval set {name!r}: the sources hold no usable documents "
                           f"(skipped: {skipped or 'nothing'})")
    if max_docs is not None and available > max_docs:
        keep = np.sort(np.random.default_rng(seed).choice(available, size=max_docs, replace=False))
        table = table.take(pa.array(keep))
    table = table.combine_chunks()

    base = f"{target.root}/{EVALSETS_DIR}"
    staging = f"{base}/.staging/{name}.{int(time.time())}.{secrets.token_hex(4)}"
    final = evalset_dir(target, name)
    target.fs.makedirs(staging, exist_ok=True)
    try:
        pq.write_table(table, f"{staging}/{DATA_FILE}", filesystem=target.fs, compression="zstd")
        info = EvalSetInfo(
            name=name, created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            docs=table.num_rows, chars=int(pc.sum(pc.utf8_length(table.column("text"))).as_py() or 0),
            sha256=file_sha256(f"{staging}/{DATA_FILE}", target.fs), fingerprint=content_fingerprint(table),
            sources=provenance, bytes=int(target.fs.size(f"{staging}/{DATA_FILE}")), docs_available=available,
            max_docs=max_docs, seed=seed, text_field=text_field, skipped=dict(sorted(skipped.items())), role=role,
            path=_uri(target, final),
        )
        _publish(target, staging, final, info)
    finally:
        if target.fs.exists(staging):
            target.fs.rm(staging, recursive=True)
    return info


def _publish(store: VersionStore, staging: str, final: str, info: EvalSetInfo) -> None:
    """Make the staged set visible: one atomic rename locally; data then JSON (the commit marker) elsewhere."""
    if store.local:
        write_json(store.fs, f"{staging}/{INFO_FILE}", info.to_json())
        try:
            os.rename(staging, final)  # atomic; fails if the name appeared meanwhile
        except OSError as exc:
            if evalset_exists(store, info.name):
                raise EvalSetExistsError(f"eval set {info.name!r} was registered by another process meanwhile"
                                         ) from exc
            raise
        return
    if evalset_exists(store, info.name):
        raise EvalSetExistsError(f"eval set {info.name!r} already exists in {store.url}")
    store.fs.makedirs(final, exist_ok=True)
    store.fs.mv(f"{staging}/{DATA_FILE}", f"{final}/{DATA_FILE}")
    write_json(store.fs, f"{final}/{INFO_FILE}", info.to_json())


# ---------------------------------------------------------------------------------------------
# Reading


def read_info(store: VersionStore | str | os.PathLike[str], name: str) -> EvalSetInfo:
    """The metadata of a registered set (reads only `evalset.json`; the data file is not checked)."""
    target = _store(store)
    folder = evalset_dir(target, name)
    path = f"{folder}/{INFO_FILE}"
    if not target.fs.exists(path):
        raise EvalSetNotFoundError(f"no eval set {name!r} in store {target.url} "
                                   f"(eval sets: {', '.join(evalset_names(target)) or 'none'}; "
                                   "register one with `curate evalset register`)")
    try:
        with target.fs.open(path, "r") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise EvalSetError(f"{_uri(target, path)}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise EvalSetError(f"{_uri(target, path)}: expected a JSON object")
    return EvalSetInfo.from_json(_uri(target, folder), data, _uri(target, path))


def load_evalset(store: VersionStore | str | os.PathLike[str], name: str) -> tuple[pa.Table, EvalSetInfo]:
    """The set's records (`id`, `text`, `source`, in registration order) and its metadata.

    The data file is read once, and its sha256 must match the one recorded at registration; a
    mismatch is an `EvalSetError` naming the file (the set was changed or corrupted)."""
    target = _store(store)
    info = read_info(target, name)
    path = f"{evalset_dir(target, name)}/{info.data_file}"
    if not target.fs.exists(path):
        raise EvalSetError(f"{_uri(target, path)}: data file missing (named by {info.path}/{INFO_FILE})")
    with target.fs.open(path, "rb") as handle:
        data = handle.read()
    actual = hashlib.sha256(data).hexdigest()
    if actual != info.sha256:
        raise EvalSetError(f"{_uri(target, path)}: sha256 {actual[:16]}… does not match {info.sha256[:16]}… "
                           f"recorded in {info.path}/{INFO_FILE}; the eval set was changed or corrupted")
    table = pq.read_table(io.BytesIO(data))
    if table.num_rows != info.docs:
        raise EvalSetError(f"{_uri(target, path)}: holds {table.num_rows} rows, {INFO_FILE} says {info.docs}")
    return table, info


def list_evalsets(store: VersionStore | str | os.PathLike[str]) -> list[EvalSetInfo]:
    """Every registered set's metadata, by name."""
    target = _store(store)
    return [read_info(target, name) for name in evalset_names(target)]

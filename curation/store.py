"""The version store: immutable, fully accounted dataset versions.

    <root>/versions/<name>/data/part-*.parquet      kept records
                         /rejects/*.parquet          every removed record, with step and reason
                         /manifest.json              what made it, what happened, what is in it
                         /README.md                  the dataset card: `datasets.load_dataset(folder)` reads
                                                     data (config `default`) and rejects (config `rejects`)
    <root>/.staging/<name>.<run key>/                a version being written
    <root>/.staging/<name>.lock                      held by the run writing <name> (pid, host)

A version exists once its directory sits under `versions/` with a manifest. On a local disk it
gets there by one atomic rename of the staging directory, so a crashed run publishes nothing;
on object stores (any fsspec URL) the manifest is written last and is the commit marker.

A staging directory is named by the run's key (recipe, inputs, parents), so a run killed halfway
leaves its finished tasks where the same command, run again, finds and reuses them. Only one run
at a time may write a given name: the lock says who holds it (on a local disk it appears with its
whole content, never empty), and a lock whose process is gone (kill -9, a crashed machine) is taken over.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fsspec
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from curation.card import CARD, dataset_card
from curation.record import CORE_NAMES, conform, conform_to, unified_schema

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
# Every name a user gives that becomes a path (versions, series, evaluation sets, classifiers, ablations,
# collapse experiments): matched whole, so no separator, control character or trailing newline gets through.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Our choice: how long a lock file that is empty or unreadable counts as one another run is still writing.
# Creating and writing a lock takes milliseconds; a minute is ample on a loaded machine or a slow network disk,
# and short enough that a lock a crash left damaged soon stops blocking its name.
LOCK_GRACE_SECONDS = 60.0


class StoreError(Exception):
    """A store operation that cannot be done: names the version or path and why."""


class VersionExistsError(StoreError):
    pass


class VersionNotFoundError(StoreError):
    pass


class VersionLockedError(StoreError):
    """Another live run is writing the same version name."""


class AccountingError(StoreError):
    """in != kept + rejected somewhere: the run refuses to publish."""


def check_name(name: str, kind: str = "version") -> str:
    """`name`, when it is safe as one path component of the store; else a StoreError naming the `kind`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise StoreError(f"invalid {kind} name {name!r}: use letters, digits, '.', '_' and '-' (up to 128, "
                         "starting with a letter or digit, no '..')")
    return name


@dataclass(frozen=True)
class Staging:
    """A version being written; nothing in it is visible until `VersionStore.publish`."""

    name: str
    path: str  # store-relative filesystem path of the staging directory
    resumed: bool = False  # the directory held an earlier, interrupted run's work with the same key
    lock: str | None = None  # the lock file this run holds, released by publish or release

    def sub(self, *parts: str) -> str:
        return "/".join((self.path, *parts))


class VersionStore:
    def __init__(self, root: str | os.PathLike[str]):
        self.url = str(root)
        self.fs, path = fsspec.core.url_to_fs(self.url)
        self.root = path.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)
        if self.local:
            self.root = str(Path(self.root).resolve())

    # ---- paths ------------------------------------------------------------------------------
    def _versions_dir(self) -> str:
        return f"{self.root}/versions"

    def version_path(self, name: str) -> str:
        return f"{self._versions_dir()}/{check_name(name)}"

    def _uri(self, path: str) -> str:
        return path if self.local else self.fs.unstrip_protocol(path)

    # ---- reading ----------------------------------------------------------------------------
    def exists(self, name: str) -> bool:
        return self.fs.exists(f"{self.version_path(name)}/{MANIFEST}")

    def names(self) -> list[str]:
        base = self._versions_dir()
        if not self.fs.exists(base):
            return []
        out = []
        for entry in self.fs.ls(base, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if _NAME.match(name) and self.fs.exists(f"{base}/{name}/{MANIFEST}"):
                out.append(name)
        return sorted(out)

    def manifest(self, name: str) -> dict[str, Any]:
        path = f"{self.version_path(name)}/{MANIFEST}"
        if not self.fs.exists(path):
            raise VersionNotFoundError(f"no version {name!r} in store {self.url} "
                                       f"(versions: {', '.join(self.names()) or 'none'})")
        with self.fs.open(path, "r") as handle:
            return json.load(handle)

    def versions(self) -> list[dict[str, Any]]:
        """Manifests of every version, oldest first."""
        return sorted((self.manifest(n) for n in self.names()), key=lambda m: m.get("created_at", ""))

    def files(self, name: str, kind: str = "data") -> list[str]:
        """Absolute paths (or URLs) of a version's Parquet files, in their stored order."""
        manifest = self.manifest(name)
        base = self.version_path(name)
        return [self._uri(f"{base}/{f['path']}") for f in manifest["files"] if f["kind"] == kind]

    def read_table(self, name: str, kind: str = "data", columns: list[str] | None = None) -> pa.Table:
        """A version's records (or rejects) as one Arrow table, read from the store's filesystem."""
        base = self.version_path(name)
        paths = [f"{base}/{f['path']}" for f in self.manifest(name)["files"] if f["kind"] == kind]
        tables = [pq.read_table(p, columns=columns, filesystem=self.fs) for p in paths]
        if not tables:
            raise StoreError(f"version {name!r} has no {kind} files")
        return pa.concat_tables(tables, promote_options="permissive")

    def iter_batches(self, name: str, columns: list[str], kind: str = "data", batch_rows: int = 2048):
        """A version's records (or rejects) as Arrow record batches, file by file in stored order, without
        reading the whole version into memory."""
        base = self.version_path(name)
        paths = [f"{base}/{f['path']}" for f in self.manifest(name)["files"] if f["kind"] == kind]
        if not paths:
            raise StoreError(f"version {name!r} has no {kind} files")
        for path in paths:
            with self.fs.open(path, "rb") as handle:
                yield from pq.ParquetFile(handle).iter_batches(batch_size=batch_rows, columns=columns)

    def schema(self, name: str, kind: str = "data") -> pa.Schema:
        """The (harmonised) schema of a version's files, read from one Parquet footer."""
        base = self.version_path(name)
        paths = [f"{base}/{f['path']}" for f in self.manifest(name)["files"] if f["kind"] == kind]
        if not paths:
            raise StoreError(f"version {name!r} has no {kind} files")
        return pq.read_schema(paths[0], filesystem=self.fs)

    def load(self, name: str, kind: str = "data"):  # -> datasets.Dataset
        """The version as a Hugging Face `Dataset` (memory-mapped Arrow, read through `load_dataset`)."""
        import datasets  # a second or more to import: only callers of `load` pay for it

        files = self.files(name, kind)
        if not files:
            raise StoreError(f"version {name!r} has no {kind} files")
        return datasets.load_dataset("parquet", data_files=files, split="train")

    # ---- writing ----------------------------------------------------------------------------
    def begin(self, name: str, run_key: str | None = None) -> Staging:
        """Reserve a staging directory; a name already published, or being written by another live run,
        is refused before any work. With a `run_key`, the directory is the key's own: an interrupted run
        with the same key left its finished work there, and this run resumes it."""
        check_name(name)
        if self.exists(name):
            raise VersionExistsError(f"version {name!r} already exists in {self.url}; "
                                     "versions are immutable, pick another name")
        base = f"{self.root}/.staging"
        self.fs.makedirs(base, exist_ok=True)
        lock = self._acquire_lock(f"{base}/{name}.lock", name)
        try:
            if self.exists(name):  # published between the check above and the lock
                raise VersionExistsError(f"version {name!r} was just published by another run")
            if run_key:
                path = f"{base}/{name}.{run_key[:16]}"
                resumed = self.fs.exists(f"{path}/work")
                for other in self._staging_dirs(name):  # an earlier run's work for other inputs: never reusable
                    if other != path:
                        self.fs.rm(other, recursive=True)
            else:
                path, resumed = f"{base}/{name}.{int(time.time())}.{secrets.token_hex(4)}", False
            for sub in ("data", "rejects", "work"):
                self.fs.makedirs(f"{path}/{sub}", exist_ok=True)
        except BaseException:
            self._release(lock)
            raise
        return Staging(name, path, resumed, lock)

    def _staging_dirs(self, name: str) -> list[str]:
        base = f"{self.root}/.staging"
        entries = self.fs.ls(base, detail=False) if self.fs.exists(base) else []
        keyed = re.compile(rf"^{re.escape(name)}\.[0-9a-f]{{16}}$")  # run-key directories of exactly this name
        return [e.rstrip("/") for e in entries if keyed.match(e.rstrip("/").rsplit("/", 1)[-1])]

    def _acquire_lock(self, path: str, name: str) -> str:
        """Create the lock file complete: on a local disk the owner record is written first and then linked
        into place exclusively, so no run ever sees a lock without its owner; on object stores it is
        exists-then-write, which narrows but cannot close the race. A lock left by a dead process, or empty or
        unreadable for longer than LOCK_GRACE_SECONDS, is taken over."""
        me = psutil.Process()
        owner = {"pid": me.pid, "host": socket.gethostname(), "started": me.create_time(),
                 "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for _ in range(3):
            try:
                if self.local:
                    _create_complete(path, owner)
                elif self.fs.exists(path):
                    raise FileExistsError(path)
                else:
                    write_json(self.fs, path, owner)
                return path
            except FileExistsError:
                try:
                    held = _read_lock(self.fs, path)
                    age = time.time() - self.fs.modified(path).timestamp()
                except FileNotFoundError:  # released meanwhile
                    continue
                if held is None and age < LOCK_GRACE_SECONDS:
                    raise VersionLockedError(
                        f"version {name!r} is locked by {path}, which is empty or unreadable and {age:.0f} s old: "
                        f"another run is probably still creating it; retry later, or delete that file if no run "
                        f"is writing {name!r}") from None
                if held is not None and _alive(held):
                    raise VersionLockedError(
                        f"version {name!r} is being written by another run (pid {held.get('pid')} on "
                        f"{held.get('host')} since {held.get('since')}); wait for it, or pick another name") from None
                self.fs.rm(path)  # stale: its process is gone, or it stayed unreadable past the grace period
        raise VersionLockedError(f"could not lock version {name!r} in {self.url} ({path})")

    def _release(self, lock: str | None) -> None:
        if lock and self.fs.exists(lock):
            self.fs.rm(lock)

    def release(self, staging: Staging) -> None:
        """Give up the name, keeping the staged work for a later run with the same key to resume."""
        self._release(staging.lock)

    def abandon(self, staging: Staging) -> None:
        if self.fs.exists(staging.path):
            self.fs.rm(staging.path, recursive=True)
        self._release(staging.lock)

    def _staged_entry(self, staging: Staging, path: str, kind: str) -> dict[str, Any]:
        """The manifest's entry for a staged file that is not a table (a report, the card)."""
        full = staging.sub(path)
        return {"path": path, "kind": kind, "rows": None, "bytes": self.fs.size(full),
                "sha256": file_sha256(full, self.fs)}

    def _staged_parts(self, staging: Staging, kind: str) -> list[str]:
        return sorted(p for p in self.fs.ls(staging.sub(kind), detail=False) if p.endswith(".parquet"))

    def harmonise(self, staging: Staging) -> None:
        """Rewrite the staged data (and rejects) parts whose schema differs, so each kind reads as one table."""
        for kind in ("data", "rejects"):
            harmonise_schemas(self.fs, self._staged_parts(staging, kind))

    def publish(self, staging: Staging, manifest: dict[str, Any],
                extras: Callable[[Staging, dict[str, Any]], list[str]] | None = None) -> str:
        """Seal a staged version: harmonise schemas, checksum, fingerprint, account, then make it visible.

        `extras(staging, manifest)` may write more files into the staging folder once the manifest is
        final (statistics, reports) and return their names; they are checksummed and listed too. Every version
        gets a dataset card (README.md, curation/card.py), listed with its checksum; the card is not a table,
        so it leaves the content fingerprint as it is."""
        self.fs.rm(staging.sub("work"), recursive=True) if self.fs.exists(staging.sub("work")) else None
        self.harmonise(staging)
        files = []
        for kind in ("data", "rejects"):
            for part in self._staged_parts(staging, kind):
                meta = pq.read_metadata(part, filesystem=self.fs)
                files.append({"path": f"{kind}/{part.rsplit('/', 1)[-1]}", "kind": kind, "rows": meta.num_rows,
                              "bytes": self.fs.size(part), "sha256": file_sha256(part, self.fs)})
        data_parts = [staging.sub(f["path"]) for f in files if f["kind"] == "data"]
        reject_parts = [staging.sub(f["path"]) for f in files if f["kind"] == "rejects"]
        manifest = dict(manifest)
        manifest.update({
            "format_version": FORMAT_VERSION,
            "name": staging.name,
            "files": files,
            "rows": sum(f["rows"] for f in files if f["kind"] == "data"),
            "rejected_rows": sum(f["rows"] for f in files if f["kind"] == "rejects"),
            "fingerprint": content_fingerprint(self.fs, data_parts),
        })
        manifest["size"] = size_summary(self.fs, data_parts)
        manifest["accounting"] = check_accounting(manifest, _reject_counts_by_step(self.fs, reject_parts))
        if not manifest["accounting"]["ok"]:
            raise AccountingError(f"version {staging.name!r} not published: "
                                  + "; ".join(manifest["accounting"]["failures"]))
        if extras is not None:
            files.extend([self._staged_entry(staging, extra, "report") for extra in extras(staging, manifest)])
        write_text(self.fs, staging.sub(CARD), dataset_card(manifest))  # from the final manifest, so written last
        files.append(self._staged_entry(staging, CARD, "card"))
        target = self.version_path(staging.name)
        write_json(self.fs, staging.sub(MANIFEST), manifest)
        self.fs.makedirs(self._versions_dir(), exist_ok=True)
        if self.local:
            try:
                os.rename(staging.path, target)  # atomic; fails if the name appeared meanwhile
            except OSError as exc:
                if self.exists(staging.name):
                    raise VersionExistsError(f"version {staging.name!r} was published by another run "
                                             "while this one ran") from exc
                raise
        else:
            if self.exists(staging.name):
                raise VersionExistsError(f"version {staging.name!r} already exists in {self.url}")
            for f in files:
                self.fs.mv(staging.sub(f["path"]), f"{target}/{f['path']}")
            write_json(self.fs, f"{target}/{MANIFEST}", manifest)  # last: the commit marker
            self.fs.rm(staging.path, recursive=True)
        self._release(staging.lock)
        return self._uri(target)


    def publish_table(self, name: str, table: pa.Table, parents: list[str] | None = None,
                      description: str | None = None) -> str:
        """Publish records that need no curation run (a table made elsewhere, generated data) as a version:
        one data file, every row counted in by an `ingest` step, and the same checks as any version
        (no statistics or report: those come with a curation run)."""
        staging = self.begin(name)
        try:
            pq.write_table(conform(table), staging.sub("data", "part-0.parquet"), filesystem=self.fs,
                           compression="zstd")
            n = table.num_rows
            return self.publish(staging, {
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "parents": list(parents or []),
                "description": description,
                "steps": [{"name": "ingest", "in": n, "kept": n, "rejected": 0, "rejected_by_reason": {}}]})
        except BaseException:
            self.abandon(staging)
            raise


def _alive(owner: dict[str, Any]) -> bool:
    """Whether the process that wrote a lock still runs (a lock from another host is assumed alive)."""
    if owner.get("host") != socket.gethostname():
        return True
    try:
        process = psutil.Process(int(owner["pid"]))
        return abs(process.create_time() - float(owner.get("started", 0))) < 1.0  # not a reused pid
    except (psutil.NoSuchProcess, KeyError, ValueError):
        return False


def _create_complete(path: str, owner: dict[str, Any]) -> None:
    """Make a local lock file appear with its whole content, or raise FileExistsError if one exists: the
    content goes to a file of this process's own in the same folder, which is then hard-linked to `path`."""
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    with open(tmp, "x") as handle:
        json.dump(owner, handle)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links: create exclusively, then write (the grace period covers it)
        with open(path, "x") as handle:
            json.dump(owner, handle)
    finally:
        os.unlink(tmp)


def _read_lock(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any] | None:
    """The lock's owner record, or None when the file is empty or holds no owner (still being written, or
    damaged)."""
    try:
        with fs.open(path, "r") as handle:
            held = json.load(handle)
    except ValueError:  # empty, cut short, or not text
        return None
    return held if isinstance(held, dict) and "pid" in held else None


def write_json(fs: fsspec.AbstractFileSystem, path: str, obj: Any) -> None:
    write_text(fs, path, json.dumps(obj, indent=2, sort_keys=False, default=str))


def write_text(fs: fsspec.AbstractFileSystem, path: str, text: str) -> None:
    """Write then rename, so no reader finds the file half written."""
    tmp = f"{path}.tmp"
    with fs.open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    fs.mv(tmp, path)


def file_sha256(path: str | os.PathLike[str], fs: fsspec.AbstractFileSystem | None = None) -> str:
    """sha256 of a file's bytes, read 1 MiB at a time (a local path, or a path on `fs`)."""
    digest = hashlib.sha256()
    with (fs.open(path, "rb") if fs is not None else open(path, "rb")) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- schemas ------------------------------------------------------------------------------------


def harmonise_schemas(fs: fsspec.AbstractFileSystem, parts: list[str]) -> None:
    """Rewrite the parts whose schema differs, so the version reads as one table."""
    if len(parts) < 2:
        return
    schemas = [pq.read_schema(p, filesystem=fs) for p in parts]
    target = unified_schema(s.remove_metadata() for s in schemas)
    for part, schema in zip(parts, schemas):
        if schema.remove_metadata().equals(target):
            continue
        table = conform_to(pq.read_table(part, filesystem=fs), target)
        tmp = f"{part}.tmp"
        pq.write_table(table, tmp, filesystem=fs, compression="zstd")
        fs.mv(tmp, part)


# ---- content ------------------------------------------------------------------------------------


def content_fingerprint(fs: fsspec.AbstractFileSystem, parts: list[str]) -> str:
    """sha256 over the core columns of every record in stored order, independent of file layout.

    Two versions with the same records in the same order have the same fingerprint, however
    they were sharded or compressed; annotation columns do not count.
    """
    lengths_digest, data_digest = hashlib.sha256(), hashlib.sha256()
    for part in parts:
        table = pq.read_table(part, columns=list(CORE_NAMES), filesystem=fs)
        if table.num_rows == 0:
            continue
        cols = [pc.fill_null(table.column(n).cast(pa.large_string()), "\x01") for n in CORE_NAMES]
        joined = pc.binary_join_element_wise(*cols, pa.scalar("\x00", pa.large_string())).combine_chunks()
        lengths = pc.binary_length(joined).to_numpy(zero_copy_only=False).astype("<i8")
        offsets = joined.buffers()[1]
        start = int(pa.Array.from_buffers(pa.int64(), 1, [None, offsets], offset=joined.offset)[0].as_py())
        end = start + int(lengths.sum())
        lengths_digest.update(lengths.tobytes())
        data_digest.update(memoryview(joined.buffers()[2])[start:end])
    return hashlib.sha256(lengths_digest.digest() + data_digest.digest()).hexdigest()


def size_summary(fs: fsspec.AbstractFileSystem, parts: list[str]) -> dict[str, Any]:
    """Rows, characters and UTF-8 bytes of text, overall and per source."""
    by_source: dict[str, dict[str, int]] = {}
    for part in parts:
        table = pq.read_table(part, columns=["text", "source"], filesystem=fs)
        if table.num_rows == 0:
            continue
        grouped = pa.table({
            "source": table.column("source"),
            "chars": pc.utf8_length(table.column("text")),
            "bytes": pc.binary_length(table.column("text")),
        }).group_by("source").aggregate([("chars", "sum"), ("bytes", "sum"), ("chars", "count")])
        for row in grouped.to_pylist():
            entry = by_source.setdefault(row["source"], {"rows": 0, "chars": 0, "bytes": 0})
            entry["rows"] += row["chars_count"]
            entry["chars"] += row["chars_sum"]
            entry["bytes"] += row["bytes_sum"]
    totals = {k: sum(v[k] for v in by_source.values()) for k in ("rows", "chars", "bytes")}
    return {**totals, "by_source": dict(sorted(by_source.items()))}


def _reject_counts_by_step(fs: fsspec.AbstractFileSystem, parts: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for part in parts:
        steps = pq.read_table(part, columns=["step"], filesystem=fs).column("step")
        for row in pc.value_counts(steps).to_pylist():
            counts[row["values"]] = counts.get(row["values"], 0) + row["counts"]
    return counts


def check_accounting(manifest: dict[str, Any], rejects_by_step: dict[str, int]) -> dict[str, Any]:
    """The invariant, checked on the files actually written: in = kept + rejected for every step,
    each step's input is the previous step's output, and the files hold exactly those rows."""
    failures: list[str] = []
    steps: list[dict[str, Any]] = manifest["steps"]
    previous_kept = None
    for step in steps:
        name = step["name"]
        if step["in"] != step["kept"] + step["rejected"]:
            failures.append(f"{name}: in {step['in']} != kept {step['kept']} + rejected {step['rejected']}")
        if sum(step["rejected_by_reason"].values()) != step["rejected"]:
            failures.append(f"{name}: reasons count {sum(step['rejected_by_reason'].values())} "
                            f"!= rejected {step['rejected']}")
        if previous_kept is not None and step["in"] != previous_kept:
            failures.append(f"{name}: in {step['in']} != previous step's kept {previous_kept}")
        if rejects_by_step.get(name, 0) != step["rejected"]:
            failures.append(f"{name}: {rejects_by_step.get(name, 0)} reject rows written, "
                            f"{step['rejected']} counted")
        previous_kept = step["kept"]
    carried = (manifest.get("carried") or {}).get("rows", 0)  # an incremental version's parent records
    if previous_kept is not None and manifest["rows"] != previous_kept + carried:
        failures.append(f"data files hold {manifest['rows']} rows, last step kept {previous_kept}"
                        + (f" and {carried} were carried over" if carried else ""))
    unknown = set(rejects_by_step) - {s["name"] for s in steps}
    if unknown:
        failures.append(f"reject rows from unknown steps: {sorted(unknown)}")
    total_in = steps[0]["in"] if steps else 0
    return {
        "ok": not failures,
        "failures": failures,
        "records_in": total_in,
        "records_kept": manifest["rows"],
        "records_rejected": manifest["rejected_rows"],
    }

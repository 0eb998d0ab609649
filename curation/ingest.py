"""Ingestion: stream raw inputs into record tables, and every bad input into rejects.

Each reader yields `Chunk`s of bounded size: records that parsed (core columns, unknown input
columns kept) and rejects that did not, each naming its file and line (or row). A source that
cannot be read at all is an `IngestError` naming it, raised by `preflight` before any work starts.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zstandard
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curation.record import CORE_NAMES, ORIGINS, conform_rejects
from curation.synth.schemas import Rejected, load_schema

Format = Literal["auto", "jsonl", "parquet", "csv", "text", "hf"]
TextMode = Literal["file", "paragraph"]
RecordsSchema = Literal["alpaca", "chat"]

# Our choice: far above any real document (a novel is ~1 MB), low enough that one bad line
# cannot exhaust memory. Longer documents become rejects with their first bytes kept.
DEFAULT_MAX_DOC_BYTES = 8 * 1024 * 1024
# Our choice: what a reject keeps of its text or raw bytes, enough to see what the input was.
RAW_PREVIEW_BYTES = 64 * 1024
# Our choice: the most one read of a decompressed stream returns, beside the document being built.
READ_BLOCK_BYTES = 1024 * 1024
# Rows per yielded chunk: bounds reader memory (~chunk_rows x document size).
DEFAULT_CHUNK_BYTES = 8 * 1024 * 1024

INGEST_STEP = "ingest"
DEFAULT_TEXT_FIELD = "text"
PROVENANCE_COLUMNS = ("_source_file", "_source_line")


class IngestError(Exception):
    """A source that cannot be read at all; names the source and why."""


class InputSpec(BaseModel):
    """Where one input lives and how to read it; a recipe's `inputs:` entries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    format: Format = "auto"
    source: str | None = None  # defaults to the file name without extensions
    text_field: str = DEFAULT_TEXT_FIELD
    id_field: str | None = "id"
    text_mode: TextMode = "file"  # text inputs: one document per file, or per blank-line paragraph
    glob: str | None = None  # folders: which files to read
    # Hugging Face `datasets` options (format: hf).
    hf_name: str | None = None
    split: str = "train"
    streaming: bool = False
    # The source's licence, as a dataset hub identifier (mit, cc-by-4.0, psf-2.0, ...): shown on the version's
    # dataset card. A label: it does not change what a run does.
    license: str | None = None
    # Provenance for records that do not carry their own.
    origin: Literal["human", "synthetic"] = "human"
    generation: int = Field(0, ge=0)
    generator: str | None = None
    max_doc_bytes: int = Field(DEFAULT_MAX_DOC_BYTES, gt=0)
    # Columnar inputs: a column whose non-null values mark rows already rejected upstream (failed
    # generations, say); those rows become ingest rejects with that reason, and the column is dropped.
    reject_field: str | None = None
    # Each line or row is an instruction record of this schema (curation/synth/schemas.py): validated by it, its
    # `text` the schema's rendering, with the columns an instruction version has (`_add_record`).
    records: RecordsSchema | None = None

    @model_validator(mode="after")
    def _records_make_their_text(self) -> InputSpec:
        # Compared with the default, not "was it given": a recipe written back by `model_dump` (`curate tune`'s
        # candidates) gives every key.
        if self.records and self.text_field != DEFAULT_TEXT_FIELD:
            raise ValueError(f"input {self.path}: `records: {self.records}` makes the text from each record; remove "
                             f"`text_field: {self.text_field}`")
        problem = _records_format_problem(self.records, self.format)
        if problem:
            raise ValueError(f"input {self.path}: {problem}")
        return self

    @property
    def source_name(self) -> str:
        if self.source:
            return self.source
        name = Path(self.path.rstrip("/")).name
        for suffix in (".gz", ".zst", ".jsonl", ".json", ".parquet", ".csv", ".txt"):
            name = name.removesuffix(suffix)
        return name or "input"


@dataclass
class Chunk:
    """One bounded slice of an input: parsed records plus the rejects met on the way."""

    records: pa.Table | None
    rejects: pa.Table | None
    lines_read: int


@dataclass
class _Batch:
    """Accumulates rows of one file until the chunk is big enough to hand on."""

    spec: InputSpec
    file: str
    ids: list[str | None] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    extras: dict[str, list[Any]] = field(default_factory=dict)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    nbytes: int = 0
    lines_read: int = 0

    def add(self, line: int, text: str, rid: str | None, extra: dict[str, Any] | None = None) -> None:
        n = len(self.texts)
        self.ids.append(rid)
        self.texts.append(text)
        self.lines.append(line)
        self.nbytes += len(text)
        if extra:
            for key, value in extra.items():
                column = self.extras.get(key)
                if column is None:
                    column = self.extras[key] = [None] * n
                column.append(value)
        for column in self.extras.values():
            if len(column) < n + 1:
                column.append(None)

    def reject(self, line: int, reason: str, raw: bytes | None = None, text: str | None = None,
               rid: str | None = None) -> None:
        reason, raw, text = _bounded(reason, raw, text)
        self.rejects.append({"id": rid, "text": text, "reason": reason, "source_line": line, "raw": raw})
        self.nbytes += len(raw or b"") + len(text or "")

    def full(self, limit: int) -> bool:
        return self.nbytes >= limit

    def flush(self) -> Chunk:
        records = None
        if self.texts:
            records = _build_records(self.spec, self.file, self.ids, self.texts, self.lines, self.extras)
        rejects = _build_rejects(self.spec, self.file, self.rejects) if self.rejects else None
        chunk = Chunk(records, rejects, self.lines_read)
        self.ids, self.texts, self.lines, self.extras, self.rejects = [], [], [], {}, []
        self.nbytes = self.lines_read = 0
        return chunk


def _too_large(size: int, limit: int) -> str:
    return f"too_large={size} bytes > max_doc_bytes {limit}"


def _bounded(reason: str, raw: bytes | None, text: str | None) -> tuple[str, bytes | None, str | None]:
    """A reject's raw bytes and text cut to RAW_PREVIEW_BYTES, its reason then saying how many bytes there were
    (a `too_large` reason already does)."""
    size = None
    if raw is not None and len(raw) > RAW_PREVIEW_BYTES:
        size, raw = len(raw), raw[:RAW_PREVIEW_BYTES]
    if text is not None and len(text) * 4 > RAW_PREVIEW_BYTES:  # UTF-8 takes at most 4 bytes a character
        encoded = text.encode("utf-8", "surrogatepass")
        if len(encoded) > RAW_PREVIEW_BYTES:
            size, text = len(encoded), encoded[:RAW_PREVIEW_BYTES].decode("utf-8", "ignore")
    if size is not None and not reason.startswith("too_large="):
        reason = f"{reason}{'; ' if '=' in reason else '='}{size} bytes, first {RAW_PREVIEW_BYTES} kept"
    return reason, raw, text


def _column(values: list[Any]) -> pa.Array:
    """An Arrow column from Python values; mixed types fall back to JSON text so nothing is lost."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        return pa.array(
            [None if v is None else (v if isinstance(v, str) else orjson.dumps(v).decode()) for v in values],
            pa.large_string(),
        )


def _build_records(spec: InputSpec, file: str, ids: list[str | None], texts: list[str], lines: list[int],
                   extras: dict[str, list[Any]]) -> pa.Table:
    source = spec.source_name
    stem = Path(file).name
    full_ids = [rid if rid is not None else f"{source}:{stem}:{line}" for rid, line in zip(ids, lines)]
    n = len(texts)
    columns: dict[str, pa.Array] = {
        "id": pa.array(full_ids, pa.string()),
        "text": pa.array(texts, pa.large_string()),
        "source": pa.array([source] * n, pa.string()),
    }
    provenance = {"origin": spec.origin, "generation": spec.generation, "generator": spec.generator}
    for name, default in provenance.items():
        values = extras.pop(name, None)
        if values is None:
            values = [default] * n
        else:
            values = [default if v is None else v for v in values]
        columns[name] = _column(values)
    for name, values in extras.items():
        columns[name] = _column(values)
    columns["_source_file"] = pa.array([file] * n, pa.string())
    columns["_source_line"] = pa.array(lines, pa.int64())
    return pa.table(columns)


def _build_rejects(spec: InputSpec, file: str, rows: list[dict[str, Any]]) -> pa.Table:
    n = len(rows)
    table = pa.table({
        "id": pa.array([r["id"] for r in rows], pa.string()),
        "text": pa.array([r["text"] for r in rows], pa.large_string()),
        "source": pa.array([spec.source_name] * n, pa.string()),
        "step": pa.array([INGEST_STEP] * n, pa.string()),
        "reason": pa.array([r["reason"] for r in rows], pa.string()),
        "source_file": pa.array([file] * n, pa.string()),
        "source_line": pa.array([r["source_line"] for r in rows], pa.int64()),
        "raw": pa.array([r["raw"] for r in rows], pa.large_binary()),
    })
    return conform_rejects(table)


# ---------------------------------------------------------------------------------------------
# Resolving inputs to files, and checking them before any work starts.


def detect_format(path: str) -> Format:
    name = path.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".json.gz", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith((".txt", ".md", ".rst", ".text")):
        return "text"
    raise IngestError(f"{path}: cannot tell the format from the name; set `format:` "
                      "(jsonl, parquet, csv, text or hf)")


def resolve_files(spec: InputSpec, base: Path | None = None) -> list[str]:
    """The concrete files an input names, sorted so that runs are deterministic. A Hugging Face input is
    one location: the local folder or file, as an absolute path (what every later stage opens), else the
    path as given, a hub name."""
    path = Path(spec.path)
    if base is not None and not path.is_absolute():
        path = base / path
    if spec.format == "hf":
        return [str(path.resolve())] if path.exists() else [spec.path]
    if path.is_dir():
        pattern = spec.glob or ("**/*.txt" if spec.format == "text" else "**/*")
        files = sorted(str(p) for p in path.glob(pattern) if p.is_file() and not p.name.startswith("."))
        if not files:
            raise IngestError(f"{path}: folder has no files matching {pattern!r}")
        return files
    if any(ch in spec.path for ch in "*?["):
        files = sorted(p for p in glob.glob(str(path), recursive=True) if os.path.isfile(p))
        if not files:
            raise IngestError(f"{spec.path}: pattern matches no files")
        return files
    if not path.exists():
        raise IngestError(f"{path}: input file does not exist")
    return [str(path)]


def file_format(spec: InputSpec, file: str) -> Format:
    fmt = spec.format if spec.format != "auto" else detect_format(file)
    problem = _records_format_problem(spec.records, fmt)
    if problem:
        raise IngestError(f"{file}: {problem}")
    return fmt


# The formats whose lines or rows can hold each schema's records (a chat record's messages are a list: not CSV).
_RECORD_FORMATS: dict[str, tuple[Format, ...]] = {"alpaca": ("jsonl", "parquet", "hf", "csv"),
                                                   "chat": ("jsonl", "parquet", "hf")}


def _records_format_problem(records: RecordsSchema | None, fmt: Format) -> str | None:
    """Why an input of format `fmt` cannot hold `records`, or None (`auto`: decided file by file)."""
    if records is None or fmt == "auto" or fmt in _RECORD_FORMATS[records]:
        return None
    readable = "JSONL, Parquet or CSV" if "csv" in _RECORD_FORMATS[records] else "JSONL or Parquet"
    return f"`records: {records}` reads {readable} (or a Hugging Face dataset), not {fmt}; convert the file to JSONL"


def preflight(spec: InputSpec, file: str) -> None:
    """Fail fast, naming the file, when a source cannot be opened at all."""
    fmt = file_format(spec, file)
    if fmt == "hf":
        load_hf_dataset(spec, file)
        return
    try:
        if fmt == "parquet" and spec.records:
            pq.ParquetFile(file)  # a record's fields are checked row by row, as the schema says
        elif fmt == "parquet":
            schema = pq.ParquetFile(file).schema_arrow
            if spec.text_field not in schema.names:
                raise IngestError(f"{file}: no column {spec.text_field!r} (columns: {', '.join(schema.names)})")
            if not (pa.types.is_string(schema.field(spec.text_field).type)
                    or pa.types.is_large_string(schema.field(spec.text_field).type)):
                raise IngestError(f"{file}: column {spec.text_field!r} has type "
                                  f"{schema.field(spec.text_field).type}, expected a string")
        else:
            with _open_binary(file) as handle:
                handle.read(1)
    except IngestError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to open is the same user-facing error
        raise IngestError(f"{file}: cannot be read as {fmt}: {type(exc).__name__}: {exc}") from exc


def _open_binary(file: str) -> io.BufferedIOBase:
    if file.endswith(".gz"):
        return gzip.open(file, "rb")  # type: ignore[return-value]
    if file.endswith(".zst"):
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(file, "rb"), closefd=True))
    return open(file, "rb")


# ---------------------------------------------------------------------------------------------
# Readers. Each yields Chunks; none holds more than ~chunk_bytes of text at once.


def read_input(spec: InputSpec, file: str, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[Chunk]:
    fmt = file_format(spec, file)
    reader = {"jsonl": _read_jsonl, "parquet": _read_parquet, "csv": _read_csv, "text": _read_text,
              "hf": _read_hf}[fmt]
    yield from reader(spec, file, chunk_bytes)


def _check_text(batch: _Batch, line: int, text: Any, rid: str | None, raw: bytes | None) -> str | None:
    """The shared per-record checks; returns the text when it is usable, else records a reject."""
    field_name = batch.spec.text_field
    if text is None:
        batch.reject(line, f"missing_field={field_name}", raw=raw, rid=rid)
        return None
    if not isinstance(text, str):
        batch.reject(line, f"non_string_text={field_name} is {type(text).__name__}", raw=raw, rid=rid)
        return None
    # A NUL character in decoded text (JSON's \u0000 escape, a Parquet string) is kept: `normalize` removes it.
    # A raw NUL byte in a text file, CSV or JSON line is binary garbage; those readers reject it.
    if not text.strip():
        batch.reject(line, "empty_text", text=text, rid=rid)
        return None
    return text


_PROVENANCE_TYPES = {"origin": str, "generation": int, "generator": str}


def _check_provenance(batch: _Batch, line: int, extra: dict[str, Any], rid: str | None, raw: bytes) -> bool:
    for name, kind in _PROVENANCE_TYPES.items():
        value = extra.get(name)
        if value is None:
            continue
        if not isinstance(value, kind) or isinstance(value, bool):
            batch.reject(line, f"bad_field={name} is {type(value).__name__}, expected {kind.__name__}",
                         raw=raw, rid=rid)
            return False
        if name == "origin" and value not in ORIGINS:
            batch.reject(line, f"bad_field=origin {value!r} not in {ORIGINS}", raw=raw, rid=rid)
            return False
    return True


def _add_record(batch: _Batch, line: int, obj: dict[str, Any], raw: bytes | None) -> None:
    """A line or row of a `records:` input becomes a record whose text is the schema's rendering (what filters,
    dedup and a fine-tuned model all see), or a reject. Its id, `task_type` and provenance fields are read as in
    any input; every other key is the record's, validated by the schema with no coercion (an unknown key is a
    violation). The columns added are those `curate synthesize` writes (curation/synth/generate.py)."""
    spec = batch.spec
    schema = load_schema(spec.records)
    rid = obj.pop(spec.id_field, None) if spec.id_field else None
    if rid is not None and not isinstance(rid, str):
        rid = str(rid)
    extra = {name: obj.pop(name) for name in (*_PROVENANCE_TYPES, "task_type") if name in obj}
    task_type = extra.pop("task_type", None)
    if task_type is not None and not isinstance(task_type, str):
        batch.reject(line, f"bad_field=task_type is {type(task_type).__name__}, expected str", raw=raw, rid=rid)
        return
    if not _check_provenance(batch, line, extra, rid, raw):
        return
    try:
        record = schema.validate(obj)
    except Rejected as exc:
        batch.reject(line, exc.reason, raw=raw, rid=rid)
        return
    text = schema.render(record)
    size = len(text.encode())
    if size > spec.max_doc_bytes:
        batch.reject(line, _too_large(size, spec.max_doc_bytes), raw=raw, rid=rid)
        return
    batch.add(line, text, rid, {**extra, "schema": schema.name, "record": json.dumps(record, ensure_ascii=False),
                                **schema.flat(record), "task_type": task_type or spec.source_name})


def _split_fields(spec: InputSpec, obj: dict[str, Any]) -> tuple[Any, str | None, dict[str, Any]]:
    text = obj.pop(spec.text_field, None)
    rid = obj.pop(spec.id_field, None) if spec.id_field else None
    if rid is not None and not isinstance(rid, str):
        rid = str(rid)
    for reserved in ("text", "id", "source", "step", "reason") + PROVENANCE_COLUMNS:
        if reserved in obj and reserved not in _PROVENANCE_TYPES:
            obj[f"input_{reserved}"] = obj.pop(reserved)
    return text, rid, obj


def _read_jsonl(spec: InputSpec, file: str, chunk_bytes: int) -> Iterator[Chunk]:
    batch = _Batch(spec, file)
    limit = spec.max_doc_bytes
    line_no = 0
    with _open_binary(file) as handle:
        while True:
            try:
                raw = handle.readline(limit + 1)
            except (EOFError, OSError, Exception) as exc:  # noqa: BLE001 - truncated/corrupt streams
                batch.reject(line_no + 1, f"truncated_stream={type(exc).__name__}: {exc}")
                batch.lines_read += 1
                break
            if not raw:
                break
            line_no += 1
            if len(raw) > limit and not raw.endswith(b"\n"):
                size = len(raw) + _skip_line(handle)
                batch.lines_read += 1
                batch.reject(line_no, _too_large(size, limit), raw=raw[:RAW_PREVIEW_BYTES])
                continue
            if not raw.strip():
                continue  # blank lines are separators, not records
            batch.lines_read += 1
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                reason = "invalid_utf8" if _is_invalid_utf8(raw) else "nul_byte" if b"\x00" in raw \
                    else "malformed_json"
                batch.reject(line_no, f"{reason}={exc}", raw=raw)
            else:
                if not isinstance(obj, dict):
                    batch.reject(line_no, f"not_an_object=JSON {type(obj).__name__}", raw=raw)
                elif spec.records:
                    _add_record(batch, line_no, obj, raw)
                else:
                    text, rid, extra = _split_fields(spec, obj)
                    text = _check_text(batch, line_no, text, rid, raw)
                    if text is not None and _check_provenance(batch, line_no, extra, rid, raw):
                        batch.add(line_no, text, rid, extra)
            if batch.full(chunk_bytes):
                yield batch.flush()
    yield batch.flush()


def _skip_line(handle: io.BufferedIOBase) -> int:
    """Read past the rest of a line without holding it; returns its bytes."""
    skipped = 0
    while True:
        block = handle.readline(READ_BLOCK_BYTES)
        skipped += len(block)
        if not block or block.endswith(b"\n"):
            return skipped


def _is_invalid_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


class _CsvLines:
    """Physical lines of a CSV stream for `csv.reader`, none longer than the document limit.

    csv.reader would hold a whole physical line, however long. A longer line ends the iteration with its
    size and first bytes in `too_long` (the rest is skipped unread); a stream that breaks ends it with
    `failure`. The caller rejects the row and goes on with a fresh reader over the same lines.
    """

    def __init__(self, handle: io.TextIOWrapper, limit: int) -> None:
        self.handle, self.limit = handle, limit
        self.line_no = 0  # physical lines handed out so far
        self.too_long: tuple[int, bytes] | None = None
        self.failure: Exception | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            while line := self.handle.readline(self.limit + 1):
                self.line_no += 1
                if len(line) > self.limit and not line.endswith(("\n", "\r")):
                    size = len(line.encode("utf-8", "surrogateescape")) + self._skip_line()
                    self.too_long = (size, line.encode("utf-8", "surrogateescape")[:RAW_PREVIEW_BYTES])
                    return
                yield line
        except Exception as exc:  # noqa: BLE001 - truncated/corrupt streams, as in JSONL
            self.failure = exc

    def _skip_line(self) -> int:
        skipped = 0
        while piece := self.handle.readline(READ_BLOCK_BYTES):
            skipped += len(piece.encode("utf-8", "surrogateescape"))
            if piece.endswith(("\n", "\r")):
                break
        return skipped


def _read_csv(spec: InputSpec, file: str, chunk_bytes: int) -> Iterator[Chunk]:
    batch = _Batch(spec, file)
    raw_handle = _open_binary(file)
    text_handle = io.TextIOWrapper(raw_handle, encoding="utf-8", errors="surrogateescape", newline="")
    with text_handle:
        csv.field_size_limit(max(spec.max_doc_bytes, 1 << 20))
        lines = _CsvLines(text_handle, spec.max_doc_bytes)
        reader = csv.reader(lines)
        try:
            header = next(reader)
        except StopIteration:
            header = None
        except csv.Error as exc:
            raise IngestError(f"{file}: unreadable CSV header: {exc}") from exc
        if lines.too_long or lines.failure:
            problem = (f"line longer than max_doc_bytes {spec.max_doc_bytes}" if lines.too_long
                       else f"{type(lines.failure).__name__}: {lines.failure}")
            raise IngestError(f"{file}: unreadable CSV header: {problem}")
        if header is None:
            return
        if not spec.records and spec.text_field not in header:
            raise IngestError(f"{file}: no column {spec.text_field!r} in CSV header ({', '.join(header)})")
        while True:
            start = lines.line_no + 1
            try:
                row = next(reader, None)
            except csv.Error as exc:
                batch.lines_read += 1
                batch.reject(start, f"malformed_csv={exc}")
                continue
            if lines.too_long is not None:  # whatever the reader returned is a cut row
                (size, preview), lines.too_long = lines.too_long, None
                batch.lines_read += 1
                batch.reject(start, _too_large(size, spec.max_doc_bytes), raw=preview)
                reader = csv.reader(lines)  # a fresh parser: the cut line may have ended inside quotes
                continue
            if lines.failure is not None:
                batch.lines_read += 1
                batch.reject(start, f"truncated_stream={type(lines.failure).__name__}: {lines.failure}")
                break
            if row is None:
                break
            if not row or all(not cell.strip() for cell in row):
                continue
            batch.lines_read += 1
            if len(row) != len(header):
                batch.reject(start, f"malformed_csv={len(row)} fields, header has {len(header)}",
                             raw=",".join(row).encode("utf-8", "surrogateescape"))
                continue
            obj = dict(zip(header, row))
            bad = [k for k, v in obj.items() if _has_surrogates(v)]
            if bad:
                batch.reject(start, f"invalid_utf8=field {bad[0]!r}",
                             raw=",".join(row).encode("utf-8", "surrogateescape"))
                continue
            nul = [k for k, v in obj.items() if "\x00" in v]
            if nul:  # a raw NUL byte in the file: binary garbage, not text
                batch.reject(start, f"nul_byte=field {nul[0]!r}", raw=",".join(row).encode("utf-8"))
                continue
            if spec.records:  # the record's own cells are validated as written; the others are read as below
                _add_record(batch, start, _csv_values(obj, (*_PROVENANCE_TYPES, "task_type")),
                            ",".join(row).encode("utf-8"))
                if batch.full(chunk_bytes):
                    yield batch.flush()
                continue
            text, rid, extra = _split_fields(spec, obj)
            if isinstance(text, str) and len(text.encode()) > spec.max_doc_bytes:
                batch.reject(start, _too_large(len(text.encode()), spec.max_doc_bytes),
                             raw=text.encode()[:RAW_PREVIEW_BYTES], rid=rid)
                continue
            extra = _csv_values(extra, extra.keys())
            text = _check_text(batch, start, text, rid, None)
            if text is not None and _check_provenance(batch, start, extra, rid, None):
                batch.add(start, text, rid, extra)
            if batch.full(chunk_bytes):
                yield batch.flush()
    yield batch.flush()


def _csv_values(cells: dict[str, str], names: Iterable[str]) -> dict[str, Any]:
    """CSV cells are all text: in the columns `names`, an empty cell is no value, and `generation` an integer when
    it reads as one (else its provenance check names it)."""
    names = set(names)
    values: dict[str, Any] = {k: (None if k in names and v == "" else v) for k, v in cells.items()}
    if "generation" in names and values.get("generation") is not None:
        try:
            values["generation"] = int(values["generation"])
        except ValueError:
            pass
    return values


_SURROGATES = re.compile("[\udc80-\udcff]")


def _has_surrogates(value: str) -> bool:
    return bool(_SURROGATES.search(value))


# What a line may hold and still be a paragraph break (the old `\n[ \t\r\f\v]*\n` split, line by line).
_BLANK_LINE_BYTES = b" \t\r\f\v"


class _Document:
    """One text document read in pieces: its first max_doc_bytes + 1 bytes are held, the rest only counted."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.size = 0

    def add(self, piece: bytes) -> None:
        room = self.limit + 1 - len(self.data)
        if room > 0:
            self.data += piece[:room]
        self.size += len(piece)


def _add_text_document(batch: _Batch, line: int, doc: _Document, strip_bom: bool = False) -> None:
    """A text file or paragraph becomes a record, or a reject that keeps at most a preview of it."""
    batch.lines_read += 1
    data = bytes(doc.data)
    if doc.size > doc.limit:
        batch.reject(line, _too_large(doc.size, doc.limit), raw=data[:RAW_PREVIEW_BYTES])
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        batch.reject(line, f"invalid_utf8=byte {exc.start}", raw=data)
        return
    if "\x00" in text:  # a raw NUL byte in a text file: binary garbage, not text
        batch.reject(line, f"nul_byte=byte {data.index(0)}", raw=data)
        return
    checked = _check_text(batch, line, text.removeprefix("\ufeff") if strip_bom else text, None, None)
    if checked is not None:
        batch.add(line, checked, None)


def _truncated(batch: _Batch, line: int, exc: Exception, doc: _Document | None) -> None:
    """A stream that broke: what was read of the unfinished document is kept as a preview."""
    batch.lines_read += 1
    read = bytes(doc.data[:RAW_PREVIEW_BYTES]) if doc is not None else None
    batch.reject(line, f"truncated_stream={type(exc).__name__}: {exc}", raw=read)


def _read_text(spec: InputSpec, file: str, chunk_bytes: int) -> Iterator[Chunk]:
    if spec.text_mode == "paragraph":
        yield from _read_paragraphs(spec, file, chunk_bytes)
        return
    batch = _Batch(spec, file)
    doc = _Document(spec.max_doc_bytes)
    with _open_binary(file) as handle:
        try:
            while block := handle.read(READ_BLOCK_BYTES):
                doc.add(block)
        except Exception as exc:  # noqa: BLE001 - truncated/corrupt streams, as in JSONL
            _truncated(batch, 1, exc, doc)
        else:
            _add_text_document(batch, 1, doc, strip_bom=True)
    yield batch.flush()


def _read_paragraphs(spec: InputSpec, file: str, chunk_bytes: int) -> Iterator[Chunk]:
    """One document per blank-line-separated paragraph, split while streaming: a paragraph is held up to
    max_doc_bytes, each line read in pieces of READ_BLOCK_BYTES, so no line or paragraph is held whole."""
    batch = _Batch(spec, file)
    limit = spec.max_doc_bytes
    doc: _Document | None = None  # the paragraph being read
    doc_line = line_no = 0
    mid_line = line_has_text = False
    blank = bytearray()  # the current line while it holds only blank-line bytes: it may be a paragraph break
    with _open_binary(file) as handle:
        while True:
            try:
                piece = handle.readline(READ_BLOCK_BYTES)
            except Exception as exc:  # noqa: BLE001 - truncated/corrupt streams, as in JSONL
                _truncated(batch, doc_line if doc is not None else line_no + 1, exc, doc)
                doc = None
                break
            if not piece:
                break
            if not mid_line:
                line_no += 1
                line_has_text = False
            ends = piece.endswith(b"\n")
            body = piece[:-1] if ends else piece
            if not line_has_text and not body.strip(_BLANK_LINE_BYTES) and len(blank) + len(body) <= limit:
                blank += body
            else:
                if doc is None:
                    doc, doc_line = _Document(limit), line_no
                elif not line_has_text:
                    doc.add(b"\n")
                if not line_has_text:
                    doc.add(bytes(blank))
                    blank.clear()
                    line_has_text = True
                doc.add(body)
            mid_line = not ends
            if ends and not line_has_text:  # a blank line ends the paragraph
                blank.clear()
                if doc is not None:
                    _add_text_document(batch, doc_line, doc)
                    doc = None
                    if batch.full(chunk_bytes):
                        yield batch.flush()
    if doc is not None:
        _add_text_document(batch, doc_line, doc)
    yield batch.flush()


def _arrow_chunks(spec: InputSpec, file: str, batches: Iterator[pa.RecordBatch | pa.Table]) -> Iterator[Chunk]:
    """Shared vectorised checks for columnar sources (Parquet, HF datasets)."""
    row = 0
    for rb in batches:
        table = pa.Table.from_batches([rb]) if isinstance(rb, pa.RecordBatch) else rb
        n = table.num_rows
        if n == 0:
            continue
        if spec.records:
            yield _record_rows(spec, file, table, row)
            row += n
            continue
        lines = pa.array(range(row + 1, row + n + 1), pa.int64())
        row += n
        if spec.text_field not in table.column_names:
            raise IngestError(f"{file}: no column {spec.text_field!r} (columns: {', '.join(table.column_names)})")
        text = table.column(spec.text_field)
        if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
            raise IngestError(f"{file}: column {spec.text_field!r} has type {text.type}, expected a string")
        reasons = _vector_reasons(spec, text)
        if spec.reject_field and spec.reject_field in table.column_names:
            upstream = table.column(spec.reject_field).combine_chunks().cast(pa.string())
            reasons = pc.coalesce(upstream, reasons)
            table = table.drop_columns([spec.reject_field])
        bad = pc.is_valid(reasons)
        rejects = None
        if pc.any(bad).as_py():
            rejected = table.filter(bad)
            rid = rejected.column(spec.id_field).cast(pa.string()) if spec.id_field in table.column_names \
                else pa.nulls(rejected.num_rows, pa.string())
            rejects = conform_rejects(pa.table({
                "id": rid,
                "text": rejected.column(spec.text_field).cast(pa.large_string()),
                "source": pa.array([spec.source_name] * rejected.num_rows, pa.string()),
                "step": pa.array([INGEST_STEP] * rejected.num_rows, pa.string()),
                "reason": reasons.filter(bad),
                "source_file": pa.array([file] * rejected.num_rows, pa.string()),
                "source_line": lines.filter(bad),
            }))
            rejects = _bounded_texts(rejects)
        good = pc.invert(bad)
        kept = table.filter(good)
        records = _arrow_records(spec, file, kept, lines.filter(good)) if kept.num_rows else None
        yield Chunk(records, rejects, n)


def _record_rows(spec: InputSpec, file: str, table: pa.Table, rows_before: int) -> Chunk:
    """Columnar records, row by row (as JSONL lines are). Every row has every column, so a null is a value not
    given: a required field that is null is missing, an optional one takes its default."""
    batch = _Batch(spec, file)
    batch.lines_read = table.num_rows
    for line, row in enumerate(table.to_pylist(), start=rows_before + 1):
        given = {k: v for k, v in row.items() if v is not None}
        upstream = given.pop(spec.reject_field, None) if spec.reject_field else None
        raw = json.dumps(given, ensure_ascii=False, default=str).encode()  # kept by a reject
        if upstream is not None:
            rid = given.get(spec.id_field) if spec.id_field else None
            batch.reject(line, str(upstream), raw=raw, rid=None if rid is None else str(rid))
        else:
            _add_record(batch, line, given, raw)
    return batch.flush()


def _bounded_texts(rejects: pa.Table) -> pa.Table:
    """Never store a huge reject whole: texts over RAW_PREVIEW_BYTES are cut as `_Batch.reject` cuts them."""
    text = rejects.column("text")
    long_rows = pc.fill_null(pc.greater(pc.binary_length(text), RAW_PREVIEW_BYTES), False)
    if not pc.any(long_rows).as_py():
        return rejects
    texts, reasons = text.to_pylist(), rejects.column("reason").to_pylist()
    for row in pc.indices_nonzero(long_rows).to_pylist():
        reasons[row], _, texts[row] = _bounded(reasons[row], None, texts[row])
    rejects = rejects.set_column(rejects.column_names.index("text"), "text", pa.array(texts, pa.large_string()))
    return rejects.set_column(rejects.column_names.index("reason"), "reason", pa.array(reasons, pa.string()))


def _vector_reasons(spec: InputSpec, text: pa.ChunkedArray) -> pa.Array:
    """One reason per row (null when the row is usable), computed column-wise."""
    text = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    nbytes = pc.binary_length(text)
    missing = pc.is_null(text)
    empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(text), ""), False)
    huge = pc.fill_null(pc.greater(nbytes, spec.max_doc_bytes), False)
    too_large = pc.binary_join_element_wise(
        "too_large=", pc.cast(nbytes, pa.string()), f" bytes > max_doc_bytes {spec.max_doc_bytes}", "")
    return pc.case_when(
        pc.make_struct(missing, empty, huge),
        pa.scalar(f"missing_field={spec.text_field}"), "empty_text", too_large,
    )


def _arrow_records(spec: InputSpec, file: str, table: pa.Table, lines: pa.Array) -> pa.Table:
    n = table.num_rows
    source = spec.source_name
    stem = Path(file).name
    if spec.id_field and spec.id_field in table.column_names:
        given = table.column(spec.id_field).cast(pa.string())
        derived = pc.binary_join_element_wise(f"{source}:{stem}:", pc.cast(lines, pa.string()), "")
        ids = pc.coalesce(given, derived)
    else:
        ids = pc.binary_join_element_wise(f"{source}:{stem}:", pc.cast(lines, pa.string()), "")
    columns: dict[str, Any] = {
        "id": ids,
        "text": table.column(spec.text_field).cast(pa.large_string()),
        "source": pa.array([source] * n, pa.string()),
    }
    defaults = {"origin": spec.origin, "generation": spec.generation, "generator": spec.generator}
    for name, default in defaults.items():
        column = table.column(name) if name in table.column_names else None
        fill = pa.array([default] * n, pa.int32() if name == "generation" else pa.string())
        columns[name] = fill if column is None else pc.coalesce(column.cast(fill.type), fill)
    skip = {spec.text_field, spec.id_field, *defaults}
    for name in table.column_names:
        if name in skip:
            continue
        out = f"input_{name}" if name in CORE_NAMES or name in PROVENANCE_COLUMNS or name in ("step", "reason") \
            else name
        columns[out] = table.column(name)
    columns["_source_file"] = pa.array([file] * n, pa.string())
    columns["_source_line"] = lines
    return pa.table(columns)


def _read_parquet(spec: InputSpec, file: str, chunk_bytes: int) -> Iterator[Chunk]:
    parquet = pq.ParquetFile(file)
    meta = parquet.metadata
    rows_before = 0
    for group in range(meta.num_row_groups):
        rows = meta.row_group(group).num_rows
        try:
            table = parquet.read_row_group(group)
        except Exception as exc:  # noqa: BLE001 - a corrupt row group is quarantined, the rest is read
            batch = _Batch(spec, file)
            batch.lines_read = rows
            for r in range(rows_before + 1, rows_before + rows + 1):
                batch.reject(r, f"unreadable_row_group={group}: {type(exc).__name__}: {exc}")
            yield batch.flush()
        else:
            for chunk in _arrow_chunks(spec, file, iter(_slices(table, chunk_bytes))):
                if chunk.records is not None:
                    chunk.records = _offset_lines(chunk.records, "_source_line", rows_before)
                if chunk.rejects is not None:
                    chunk.rejects = _offset_lines(chunk.rejects, "source_line", rows_before)
                yield chunk
        rows_before += rows


def _offset_lines(table: pa.Table, column: str, offset: int) -> pa.Table:
    if offset == 0:
        return table
    index = table.column_names.index(column)
    return table.set_column(index, column, pc.add(table.column(column), offset))


def _slices(table: pa.Table, chunk_bytes: int) -> Iterator[pa.Table]:
    """Row slices of about chunk_bytes each, so one large row group does not become one chunk."""
    if table.num_rows == 0:
        return
    per_row = max(1, table.nbytes // table.num_rows)
    step = max(1, chunk_bytes // per_row)
    for start in range(0, table.num_rows, step):
        yield table.slice(start, step)


def _read_hf(spec: InputSpec, file: str, chunk_bytes: int) -> Iterator[Chunk]:
    dataset = load_hf_dataset(spec, file)
    if spec.streaming:
        def batches() -> Iterator[pa.Table]:
            for rows in dataset.iter(batch_size=1000):
                yield pa.Table.from_pydict(rows)
        yield from _arrow_chunks(spec, file, batches())
    else:
        yield from _arrow_chunks(spec, file, iter(_slices(dataset.data.table, chunk_bytes)))


# Files `Dataset.save_to_disk` / `DatasetDict.save_to_disk` write, which `load_dataset` refuses to read.
_SAVED_DATASET_FILES = (("dataset_info.json", "state.json"), ("dataset_dict.json",))


def load_hf_dataset(spec: InputSpec, location: str) -> Any:
    """Load a Hugging Face dataset from `location` (from `resolve_files`): a `save_to_disk` folder, a local
    folder or file that `load_dataset` reads, or a hub name; failures (offline hub names too) are one line."""
    import datasets  # a second or more to import: only runs with Hugging Face inputs pay for it

    folder = Path(location)
    try:
        if any(all((folder / name).is_file() for name in names) for names in _SAVED_DATASET_FILES):
            return _load_saved_dataset(spec, location)
        return datasets.load_dataset(location, name=spec.hf_name, split=spec.split, streaming=spec.streaming)
    except IngestError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with the name and a hint
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = (" (the Hugging Face hub is offline here: use a local path, or set HF_HUB_OFFLINE=0 "
                "on a machine with network access)") if offline or not folder.exists() else ""
        message = " ".join(str(exc).split())
        raise IngestError(f"hf:{location}: cannot load dataset: {type(exc).__name__}: {message}{hint}") from exc


def _load_saved_dataset(spec: InputSpec, location: str) -> Any:
    """A `save_to_disk` folder (memory-mapped, so `streaming` only changes how it is iterated)."""
    import datasets  # see load_hf_dataset

    if spec.hf_name:
        raise IngestError(f"hf:{location}: a save_to_disk folder has no configurations; remove `hf_name: "
                          f"{spec.hf_name}`")
    dataset = datasets.load_from_disk(location)
    if isinstance(dataset, datasets.DatasetDict):
        if spec.split not in dataset:
            raise IngestError(f"hf:{location}: no split {spec.split!r} (splits: {', '.join(dataset)}); "
                              "set `split:` to one of them")
        dataset = dataset[spec.split]
    return dataset.to_iterable_dataset() if spec.streaming else dataset

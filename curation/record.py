"""The record: one Arrow schema shared by every stage of a curation run.

Core columns come first and always exist; annotation columns added by steps and unknown
input columns follow them and are kept as they are.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import pyarrow as pa

ORIGINS = ("human", "synthetic")

CORE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("id", pa.string(), nullable=False),
    pa.field("text", pa.large_string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    # Provenance: who wrote the text, and how many model generations it is from human data.
    pa.field("origin", pa.string(), nullable=False),
    pa.field("generation", pa.int32(), nullable=False),
    pa.field("generator", pa.string(), nullable=True),
)
CORE_SCHEMA = pa.schema(CORE_FIELDS)
CORE_NAMES = tuple(f.name for f in CORE_FIELDS)

# Every rejected record carries these on top of whatever columns it had when it was rejected.
REJECT_FIELDS: tuple[pa.Field, ...] = (
    pa.field("step", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("source_file", pa.string(), nullable=True),
    pa.field("source_line", pa.int64(), nullable=True),
    # The undecodable input itself, for rejects that never became a record.
    pa.field("raw", pa.large_binary(), nullable=True),
)
REJECT_NAMES = tuple(f.name for f in REJECT_FIELDS)
REJECTS_SCHEMA = pa.schema(
    [pa.field(f.name, f.type, nullable=True) for f in CORE_FIELDS] + list(REJECT_FIELDS)
)


def conform(table: pa.Table) -> pa.Table:
    """Cast core columns to their canonical types and order; keep every other column after them."""
    columns, fields = [], []
    for field in CORE_FIELDS:
        if field.name not in table.column_names:
            raise ValueError(f"record batch has no {field.name!r} column")
        columns.append(table.column(field.name).cast(field.type))
        fields.append(field)
    for name in table.column_names:
        if name not in CORE_NAMES:
            columns.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def conform_rejects(table: pa.Table) -> pa.Table:
    """Rejects share one column order: record columns, then step/reason/provenance, then annotations."""
    n = table.num_rows
    columns, fields = [], []
    for field in REJECTS_SCHEMA:
        if field.name in table.column_names:
            columns.append(table.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(n, field.type))
        fields.append(field)
    for name in table.column_names:
        if name not in REJECTS_SCHEMA.names:
            columns.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def empty_rejects() -> pa.Table:
    return REJECTS_SCHEMA.empty_table()


def as_rejects(table: pa.Table, step: str) -> pa.Table:
    """Rows a step removed (with their `reason` column) in the rejects layout, labelled with the step."""
    renames = {"_source_file": "source_file", "_source_line": "source_line"}
    table = table.rename_columns([renames.get(n, n) for n in table.column_names])
    steps = pa.array([step] * table.num_rows, pa.string())
    if "step" in table.column_names:
        table = table.set_column(table.column_names.index("step"), "step", steps)
    else:
        table = table.append_column("step", steps)
    return conform_rejects(table)


def unified_schema(schemas: Iterable[pa.Schema]) -> pa.Schema:
    """One schema for all parts: types widened where Arrow can; conflicting types become JSON text."""
    schemas = list(schemas)
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    names: list[str] = []
    types: dict[str, set[pa.DataType]] = {}
    for schema in schemas:
        for f in schema:
            if f.name not in types:
                names.append(f.name)
                types[f.name] = set()
            types[f.name].add(f.type)
    fields = []
    for name in names:
        try:
            fields.append(pa.unify_schemas([pa.schema([pa.field(name, t)]) for t in types[name]],
                                           promote_options="permissive").field(name))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            fields.append(pa.field(name, pa.large_string()))
    return pa.schema(fields)


def conform_to(table: pa.Table, schema: pa.Schema) -> pa.Table:
    columns = []
    for f in schema:
        if f.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, f.type))
            continue
        column = table.column(f.name)
        if column.type == f.type:
            columns.append(column)
            continue
        try:
            columns.append(column.cast(f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            columns.append(pa.array([None if v is None else (v if isinstance(v, str) else json.dumps(v, default=str))
                                     for v in column.to_pylist()], f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def concat(tables: list[pa.Table]) -> pa.Table:
    """Concatenate tables whose extra columns may differ (union of columns, widened types)."""
    if len(tables) == 1:
        return tables[0]
    schema = unified_schema(t.schema for t in tables)
    return pa.concat_tables([conform_to(t, schema) for t in tables])

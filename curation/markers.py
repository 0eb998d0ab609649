"""Task result markers: what a finished task returned, stored as data so that a rerun can resume.

A marker lives in a run's staging folder, which may be shared (a network folder, a bucket), so reading
one must never run code: no pickle. A marker is one Arrow IPC file: its schema metadata holds a JSON tree
of the result, and each array the result holds (numpy or Arrow) is one list column of a single row.
Only plain JSON values, numpy arrays of numbers or strings, Arrow arrays, tuples, dicts and dataclasses
registered with `@marker_type` are written or read back; anything else is refused when writing (so a new
global step that collects an unsupported value fails in its tests) and a marker that does not decode to
the expected type is treated as missing: the task is redone, with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

FORMAT = "curate-marker/1"
_META_KEY = b"curate_marker"
_TYPES: dict[str, type] = {}

T = TypeVar("T")


class MarkerWarning(UserWarning):
    """A marker that could not be used; its task is done again."""


class MarkerError(ValueError):
    """A value that cannot be stored in (or read from) a marker."""


def marker_type(cls: type[T]) -> type[T]:
    """Allow a dataclass in markers, by its qualified name (the only classes a marker can name)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    _TYPES[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class _Encoder:
    def __init__(self) -> None:
        self.arrays: list[pa.Array] = []

    def array(self, values: pa.Array) -> int:
        self.arrays.append(values)
        return len(self.arrays) - 1

    def encode(self, value: Any) -> Any:
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if isinstance(value, list):
            return [self.encode(v) for v in value]
        if isinstance(value, tuple):
            return {"t": "tuple", "v": [self.encode(v) for v in value]}
        if isinstance(value, dict):
            return {"t": "dict", "v": [[self.encode(k), self.encode(v)] for k, v in value.items()]}
        if isinstance(value, np.generic):
            return {"t": "scalar", "dtype": _numeric_dtype(value.dtype), "v": value.item()}
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                flat = pa.array(value.ravel().tolist())
                if not (pa.types.is_string(flat.type) or pa.types.is_large_string(flat.type) or flat.null_count
                        == len(flat)):
                    raise MarkerError(f"object array of {flat.type} cannot be stored in a marker")
                dtype = "object"
            else:
                dtype = _numeric_dtype(value.dtype)
                flat = pa.array(np.ascontiguousarray(value).ravel())
            return {"t": "ndarray", "i": self.array(flat), "dtype": dtype, "shape": list(value.shape)}
        if isinstance(value, pa.ChunkedArray):
            return {"t": "arrow", "i": self.array(value.combine_chunks())}
        if isinstance(value, pa.Array):
            return {"t": "arrow", "i": self.array(value)}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            name = _type_name(type(value))
            if _TYPES.get(name) is not type(value):
                raise MarkerError(f"{name} is not registered with @marker_type")
            return {"t": "dataclass", "name": name,
                    "v": {f.name: self.encode(getattr(value, f.name)) for f in dataclasses.fields(value)}}
        raise MarkerError(f"a {type(value).__name__} cannot be stored in a marker")


def _numeric_dtype(dtype: np.dtype) -> str:
    if dtype.kind not in "biuf":
        raise MarkerError(f"numpy dtype {dtype} cannot be stored in a marker")
    return dtype.str


def _decode(tree: Any, arrays: list[pa.Array]) -> Any:
    if tree is None or isinstance(tree, bool | int | float | str):
        return tree
    if isinstance(tree, list):
        return [_decode(v, arrays) for v in tree]
    if not isinstance(tree, dict):
        raise MarkerError(f"unexpected {type(tree).__name__} in a marker")
    kind = tree.get("t")
    if kind == "tuple":
        return tuple(_decode(v, arrays) for v in tree["v"])
    if kind == "dict":
        return {_hashable(_decode(k, arrays)): _decode(v, arrays) for k, v in tree["v"]}
    if kind == "scalar":
        return _dtype(tree["dtype"]).type(tree["v"])
    if kind == "ndarray":
        values, shape = arrays[tree["i"]], tuple(int(n) for n in tree["shape"])
        if tree["dtype"] == "object":
            objects = np.empty(len(values), dtype=object)
            objects[:] = values.to_pylist()
            return objects.reshape(shape)
        return values.to_numpy(zero_copy_only=False).astype(_dtype(tree["dtype"]), copy=False).reshape(shape)
    if kind == "arrow":
        return arrays[tree["i"]]
    if kind == "dataclass":
        cls = _TYPES.get(tree["name"])
        if cls is None:
            raise MarkerError(f"unknown type {tree['name']!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        values = tree["v"]
        if set(values) - fields:
            raise MarkerError(f"{tree['name']} has no field(s) {sorted(set(values) - fields)}")
        return cls(**{k: _decode(v, arrays) for k, v in values.items()})
    raise MarkerError(f"unknown marker node {kind!r}")


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        return tuple(_hashable(k) for k in key)
    return key


def _dtype(text: str) -> np.dtype:
    dtype = np.dtype(str(text))
    if dtype.kind not in "biuf":
        raise MarkerError(f"numpy dtype {text!r} is not allowed in a marker")
    return dtype


def encode(value: Any, key: str) -> bytes:
    """The marker file's bytes for `value`, the result of the task named `key`."""
    encoder = _Encoder()
    tree = encoder.encode(value)
    columns = {f"a{i}": pa.LargeListArray.from_arrays(pa.array([0, len(a)], pa.int64()), a)
               for i, a in enumerate(encoder.arrays)}
    meta = json.dumps({"format": FORMAT, "key": key, "result": tree}, allow_nan=True)
    table = pa.table(columns) if columns else pa.table({"_": pa.array([0], pa.int8())})
    table = table.replace_schema_metadata({_META_KEY: meta.encode()})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def decode(data: bytes, key: str, expected: type[T]) -> T:
    """The result stored by `encode`; MarkerError when the bytes are not a marker of `key` holding an `expected`."""
    try:
        table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
        meta = json.loads((table.schema.metadata or {})[_META_KEY])
    except (pa.ArrowException, KeyError, ValueError) as exc:
        raise MarkerError(f"not a marker: {type(exc).__name__}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MarkerError(f"unknown marker format {meta.get('format') if isinstance(meta, dict) else meta!r}")
    if meta.get("key") != key:
        raise MarkerError(f"marker of task {meta.get('key')!r}, expected {key!r}")
    arrays = [table.column(f"a{i}").chunk(0).values for i in range(table.num_columns)
              if f"a{i}" in table.column_names]
    try:
        result = _decode(meta.get("result"), arrays)
    except (IndexError, KeyError, TypeError, ValueError) as exc:
        raise MarkerError(f"malformed marker: {type(exc).__name__}: {exc}") from exc
    if type(result) is not expected:
        raise MarkerError(f"marker holds a {type(result).__name__}, expected {expected.__name__}")
    return result


def read(data: bytes, key: str, expected: type[T], where: str) -> T | None:
    """`decode`, or None with a warning naming `where` when the marker cannot be used (the task is redone)."""
    try:
        return decode(data, key, expected)
    except MarkerError as exc:
        warnings.warn(f"{where}: ignoring the resume marker ({exc}); the task is done again", MarkerWarning,
                      stacklevel=2)
        return None

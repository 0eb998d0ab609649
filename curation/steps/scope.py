"""Scopes: a step applied to some documents only (some sources, or rows whose metadata match a predicate).

Web-tuned rules are right for a crawl and wrong for trusted text (Gopher's alpha-word rule removes most
Python docstrings), so a recipe can say where each step applies:

    - {step: gopher_quality, sources: [web_crawl]}
    - {step: language_filter, skip_sources: [docs]}
    - {step: c4_quality, where: {column: origin, op: "==", value: synthetic}}

Out-of-scope documents pass the step untouched, in their place, and are counted (`out_of_scope`); the
accounting is unchanged (in = kept + rejected, the kept count including them). A global step (dedup,
top-k %) collects and decides over its in-scope documents only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, model_validator

from curation.record import concat
from curation.steps.base import Step, StepOutput

ROW = "__scope_row"  # where each in-scope row was, to put the batch back in order
Op = Literal["==", "!=", "in", "not_in", ">=", ">", "<=", "<", "is_null", "not_null"]
_COMPARE = {"==": pc.equal, "!=": pc.not_equal, ">=": pc.greater_equal, ">": pc.greater, "<=": pc.less_equal,
            "<": pc.less}


class Predicate(BaseModel):
    """`where:` a condition on one column of the records (an input column or one an earlier step wrote)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str
    op: Op = "=="
    value: Any = None

    @model_validator(mode="after")
    def _value_fits(self) -> Predicate:
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"where: op {self.op!r} needs a list as value, got {self.value!r}")
        if self.op in ("is_null", "not_null") and self.value is not None:
            raise ValueError(f"where: op {self.op!r} takes no value")
        if self.op not in ("in", "not_in", "is_null", "not_null") and (self.value is None
                                                                      or isinstance(self.value, list)):
            raise ValueError(f"where: op {self.op!r} needs one value, got {self.value!r}")
        return self

    def mask(self, batch: pa.Table) -> pa.Array:
        if self.column not in batch.column_names:  # a column no record has: it is null everywhere
            column = pa.nulls(batch.num_rows)
        else:
            column = batch.column(self.column)
        if self.op == "is_null":
            return pc.is_null(column)
        if self.op == "not_null":
            return pc.is_valid(column)
        if self.op in ("in", "not_in"):
            found = pc.is_in(column, value_set=pa.array(self.value))  # a null is in no list, and out of none
            return found if self.op == "in" else pc.and_(pc.is_valid(column), pc.invert(found))
        return _COMPARE[self.op](column, pa.scalar(self.value))

    def describe(self) -> str:
        return f"{self.column} {self.op}" + ("" if self.value is None else f" {self.value!r}")


@dataclass(frozen=True)
class Scope:
    """Which rows a step applies to: all three conditions hold (an unset one holds everywhere)."""

    sources: tuple[str, ...] | None = None
    skip_sources: tuple[str, ...] | None = None
    where: Predicate | None = None

    @property
    def everywhere(self) -> bool:
        return self.sources is None and self.skip_sources is None and self.where is None

    def mask(self, batch: pa.Table) -> np.ndarray | None:
        """In-scope rows as a boolean array, or None when the scope is everywhere."""
        if self.everywhere:
            return None
        inside = np.ones(batch.num_rows, dtype=bool)
        source = batch.column("source") if "source" in batch.column_names else pa.nulls(batch.num_rows, pa.string())
        if self.sources is not None:
            inside &= _numpy(pc.is_in(source, value_set=pa.array(self.sources, pa.string())))
        if self.skip_sources is not None:
            inside &= ~_numpy(pc.is_in(source, value_set=pa.array(self.skip_sources, pa.string())))
        if self.where is not None:
            inside &= _numpy(self.where.mask(batch))
        return inside

    def describe(self) -> str:
        parts = []
        if self.sources is not None:
            parts.append(f"sources {', '.join(self.sources)}")
        if self.skip_sources is not None:
            parts.append(f"all but sources {', '.join(self.skip_sources)}")
        if self.where is not None:
            parts.append(f"where {self.where.describe()}")
        return "; ".join(parts) or "all documents"


EVERYWHERE = Scope()


def _numpy(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)


def apply_in_scope(step: Step, batch: pa.Table, scope: Scope = EVERYWHERE) -> StepOutput:
    """`step.apply` on the rows in scope; the others pass through in their place, counted as `out_of_scope`."""
    mask = scope.mask(batch)
    if mask is None:
        return step.apply(batch)
    outside = int((~mask).sum())
    if outside == 0:
        out = step.apply(batch)
    elif not mask.any():
        out = StepOutput(batch, batch.slice(0, 0).append_column("reason", pa.array([], pa.string())))
    else:
        numbered = batch.append_column(ROW, pa.array(np.arange(batch.num_rows, dtype=np.int64)))
        out = step.apply(numbered.filter(pa.array(mask)))
        if ROW not in out.kept.column_names or ROW not in out.rejected.column_names:
            raise RuntimeError(f"step {step.name!r} dropped columns of its batch, so it cannot be scoped")
        kept = concat([out.kept, numbered.filter(pa.array(~mask))]).sort_by(ROW)
        out = StepOutput(kept.drop_columns([ROW]), out.rejected.drop_columns([ROW]), out.counters)
    out.counters["out_of_scope"] = out.counters.get("out_of_scope", 0) + outside
    return out


def collect_in_scope(step: Step, batch: pa.Table, scope: Scope = EVERYWHERE) -> tuple[Any, np.ndarray | None]:
    """A global step's summary of its in-scope rows, and those rows' positions in `batch` (None: all)."""
    mask = scope.mask(batch)
    if mask is None:
        return step.collect(batch), None
    return step.collect(batch.filter(pa.array(mask))), np.flatnonzero(mask).astype(np.int64)

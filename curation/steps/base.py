"""The step interface: a named, configured, pure transformation over a batch of records.

`apply(batch)` returns the kept records and the rejected ones, each rejected row labelled with a
reason of the form `rule` or `rule=detail`; the text before the first `=` is the key that
counts group by. The runner, not the step, checks that in = kept + rejected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict


class StepParams(BaseModel):
    """Parameters of a step; unknown keys are errors, so a typo never silently means a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class StepOutput:
    kept: pa.Table
    rejected: pa.Table  # the input's columns plus `reason`
    # Counters a step wants in the manifest beyond in/kept/rejected (e.g. documents modified).
    counters: dict[str, int] = field(default_factory=dict)


class Step:
    """Base class: subclasses set `name`, `Params`, and implement `apply`."""

    name: ClassVar[str]
    Params: ClassVar[type[StepParams]] = StepParams

    def __init__(self, params: StepParams | None = None, **kwargs: object) -> None:
        self.params = params if params is not None else self.Params(**kwargs)

    def apply(self, batch: pa.Table) -> StepOutput:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


def split(batch: pa.Table, reasons: pa.Array) -> StepOutput:
    """Keep rows whose reason is null; reject the others with their reason."""
    bad = pc.is_valid(reasons)
    if not pc.any(bad).as_py():
        return StepOutput(batch, batch.slice(0, 0).append_column("reason", pa.array([], pa.string())))
    rejected = batch.filter(bad).append_column("reason", reasons.filter(bad).cast(pa.string()))
    return StepOutput(batch.filter(pc.invert(bad)), rejected)


def reason_key(reason: str) -> str:
    return reason.split("=", 1)[0]

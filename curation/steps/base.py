"""The step interface: a named, configured, pure transformation over a batch of records.

`apply(batch)` returns the kept records and the rejected ones, each rejected row labelled with a
reason of the form `rule` or `rule=detail`; the text before the first `=` is the key that
counts group by. The runner, not the step, checks that in = kept + rejected.

A step declares its parameters as a pydantic model and names it as its type argument
(`class Normalize(Step[NormalizeParams])`), so `self.params` is typed and the recipe validates it.
Filters are steps too: see `curation.steps.filter`.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Generic, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curation.store import VersionStore

# The ranges every threshold falls in, so a recipe with an impossible one fails when it loads.
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]  # a share of lines, words, characters or documents
Count = Annotated[int, Field(ge=0)]  # words, characters, lines, sentences
PositiveCount = Annotated[int, Field(ge=1)]
NonNegative = Annotated[float, Field(ge=0.0)]  # a ratio that may exceed 1 (symbols per word, characters per word)


class StepParams(BaseModel):
    """Parameters of a step; unknown keys are errors, so a typo never silently means a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # (lower, upper) parameter pairs that must satisfy lower <= upper when both are set.
    ordered: ClassVar[tuple[tuple[str, str], ...]] = ()

    @model_validator(mode="after")
    def _check_order(self) -> StepParams:
        for low, high in self.ordered:
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"{low} = {lo!r} is above {high} = {hi!r}; allowed: {low} <= {high}")
        return self


P = TypeVar("P", bound=StepParams)


@dataclass
class StepOutput:
    kept: pa.Table
    rejected: pa.Table  # the input's columns plus `reason`
    # Counters a step wants in the manifest beyond in/kept/rejected (e.g. documents modified).
    counters: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Collected:
    """One shard's summary for a global step, and where that shard's rows are (to re-read some)."""

    value: Any
    path: str  # Parquet file holding the batch the summary was made from
    store_url: str  # the filesystem `path` lives on (and where store-wide indexes live)
    rows: Any = None  # the rows of `path` the summary describes, in its order (a scoped step); None: every row

    def row(self, k: int) -> int:
        """The row of `path` holding the summary's k-th document."""
        return k if self.rows is None else int(self.rows[k])


def serial_map(fn: Callable[..., Any], arguments: list[tuple]) -> list[Any]:
    return [fn(*args) for args in arguments]


@dataclass(frozen=True)
class Workers:
    """Where the heavy parts of a global step's decision run. `map(fn, arguments)` returns fn(*args) for each
    entry, in order (the flow runs them as tasks on the run's workers); a decision cuts its work into at most
    `partitions` pieces, and into fewer when a piece would hold under `min_docs` documents, below which
    shipping a piece to a worker costs more than doing it (docs/scaling.md)."""

    map: Callable[[Callable[..., Any], list[tuple]], list[Any]] = serial_map
    partitions: int = 1
    min_docs: int = 20_000

    def parts(self, documents: int) -> int:
        return max(1, min(self.partitions, documents // max(self.min_docs, 1)))


SERIAL = Workers()


class Step(Generic[P]):
    """Base class: subclasses set `name`, name their parameters' class as the type argument, and implement
    `apply`."""

    name: ClassVar[str]
    Params: ClassVar[type[StepParams]] = StepParams  # set from the type argument
    # What kind of change the step makes: the default stage label when a recipe's cumulative outputs
    # are compared (`Recipe.stages`, `curate ablate --steps`).
    category: ClassVar[str] = "transform"
    # Parameters that name a local file or folder: relative to the recipe's folder, checked when it loads.
    path_params: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            args = typing.get_args(base)
            if args and isinstance(args[0], type) and issubclass(args[0], StepParams):
                cls.Params = args[0]

    def __init__(self, params: P | None = None, **kwargs: object) -> None:
        self.params: P = params if params is not None else self.Params(**kwargs)  # type: ignore[assignment]

    def preflight(self, store_url: str) -> None:
        """Raise ValueError naming what the step needs from the run's store (evaluation sets, earlier
        versions) or its files and cannot use, so that a run fails before any work rather than midway."""

    def apply(self, batch: pa.Table) -> StepOutput:
        raise NotImplementedError

    # ---- global phase: steps that must see every shard before deciding (top-k %, dedup) --------
    def is_global(self) -> bool:
        """True when `apply` needs a decision made from all shards (see `collect`/`decide`)."""
        return False

    def collect(self, batch: pa.Table) -> Any:
        """A small summary of one shard's batch as it reaches this step (stored as a resume marker, so plain
        values, numpy and Arrow arrays; see curation.markers)."""
        raise NotImplementedError

    def store_summary(self, summary: Any, path: str, fs: Any) -> Any:
        """What a shard's result carries for `decide`: the summary itself (default), or, for a step whose
        summaries grow with the documents, the path of a file it writes them to (`path`, on `fs`)."""
        return summary

    def decide(self, collected: list[Collected], workers: Workers = SERIAL) -> Any:
        """Combine every shard's summary into the decision `apply` will use (runs once per run; `workers` runs
        the parts of it that scale with the documents)."""
        raise NotImplementedError

    def report(self, decision: Any) -> dict[str, Any] | None:
        """What the decision did, for the manifest (e.g. duplicate clusters); None for nothing."""
        return None

    def bind(self, decision: Any) -> None:
        """Receive the decision before `apply` runs on any shard."""
        self.decision = decision

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


def require_versions(store_url: str, names: list[str]) -> None:
    """ValueError naming the versions (e.g. a step's `against:`) that the store does not hold."""
    if not names:
        return
    store = VersionStore(store_url)
    missing = [name for name in names if not store.exists(name)]
    if missing:
        raise ValueError(f"against: no version {', '.join(map(repr, missing))} in {store.url} "
                         "(`curate versions` lists them)")


def set_column(batch: pa.Table, name: str, values: pa.Array | pa.ChunkedArray) -> pa.Table:
    if name in batch.column_names:
        return batch.set_column(batch.column_names.index(name), name, values)
    return batch.append_column(name, values)


def split(batch: pa.Table, reasons: pa.Array) -> StepOutput:
    """Keep rows whose reason is null; reject the others with their reason."""
    bad = pc.is_valid(reasons)
    if not pc.any(bad).as_py():
        return StepOutput(batch, batch.slice(0, 0).append_column("reason", pa.array([], pa.string())))
    rejected = batch.filter(bad).append_column("reason", reasons.filter(bad).cast(pa.string()))
    return StepOutput(batch.filter(pc.invert(bad)), rejected)


def reason_key(reason: str) -> str:
    return reason.split("=", 1)[0]

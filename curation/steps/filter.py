"""Filters: steps that measure each document and reject those outside their thresholds.

A filter declares its rules once, as `Check`s of a measured signal against a parameter, and measures the
signals column-wise:

    class LengthFilter(FilterStep[LengthFilterParams]):
        name = "length_filter"
        checks = (Check("chars", ">=", "min_chars"), Check("chars", "<=", "max_chars"))

        def signals(self, batch):
            return {"chars": pc.utf8_length(batch.column("text"))}

From the checks come the reasons (`length_filter:chars=12<50`, the first failing check in declared order),
the signal columns of `mode: annotate` (`length_filter__chars`), the bounds that threshold views and
calibration read, and the ranges of the parameters. A rule simple enough to judge one document at a time can
instead define `check(text) -> reason | None`, which the base class runs over the batch.

`mode: filter` drops the failing rows; `mode: annotate` keeps every row and writes the signals, so
thresholds can be chosen from the data without re-running.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.steps.base import P, Step, StepOutput, StepParams, reason_key, set_column, split

Op = Literal[">=", "<=", ">", "<"]
_COMPARE: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_NEGATION: dict[str, str] = {">=": "<", "<=": ">", ">": "<=", "<": ">="}


class FilterParams(StepParams):
    mode: Literal["filter", "annotate"] = "filter"


@dataclass(frozen=True)
class Check:
    """One rule of a filter: a document is kept while `signal op bound` holds. `bound` names a parameter (a
    parameter set to None switches the rule off) or is a number."""

    signal: str
    op: Op
    bound: str | float

    @property
    def side(self) -> Literal["min", "max"]:
        """Whether the bound is a minimum (`>=`, `>`) or a maximum (`<=`, `<`) of the signal."""
        return "min" if self.op in (">=", ">") else "max"

    @property
    def failing_op(self) -> str:
        return _NEGATION[self.op]

    def fails(self, values: np.ndarray, bound: float) -> np.ndarray:
        """Rows that break the rule (a NaN signal breaks none: it was not measurable)."""
        with np.errstate(invalid="ignore"):
            return _COMPARE[self.failing_op](values, bound)

    def keeps(self, values: np.ndarray, bound: float) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return _COMPARE[self.op](values, bound)


def bound_of(check: Check, params: object) -> float | None:
    """The value a check compares with: its parameter's (None: the rule is off) or its number. A yes/no parameter
    switches a page rule whose signal is 1 where the rule fires, 0 elsewhere: on is the bound 0 (`<=`), off None;
    calibration moves such a bound to 1 when the rule alone would drop more of the reference than it may, which
    writes the switch back as off (`FilterStep.with_bounds`)."""
    if not isinstance(check.bound, str):
        return check.bound
    value = getattr(params, check.bound, None)
    if isinstance(value, bool):
        return 0 if value else None
    return value


def reason(rule: str, signal: str, value: float, op: str, bound: float) -> str:
    """`rule:signal=value<op>bound`, the one form every threshold reason takes. The value is shown with as
    few digits as still show it on the failing side of the bound (0.7996 against 0.8 reads 0.7996<0.8)."""
    return f"{rule}:{signal}={shown(value, op, bound)}{op}{bound:g}"


def shown(value: float, op: str, bound: float) -> str:
    if isinstance(value, int | np.integer) or (isinstance(value, float | np.floating) and float(value).is_integer()
                                               and abs(value) < 1e15):
        return str(int(value))
    for digits in range(3, 10):
        text = f"{value:.{digits}g}"
        if _COMPARE[op](float(text), bound):
            return text
    return repr(float(value))


@dataclass
class Measurement:
    """What a filter measured on a batch, row-aligned."""

    reasons: pa.Array  # null where the row passes, else `rule:signal=value<op>threshold`
    signals: dict[str, pa.Array] = field(default_factory=dict)  # written as columns in annotate mode
    annotations: dict[str, pa.Array] = field(default_factory=dict)  # columns written in both modes


Signals = Mapping[str, "np.ndarray | pa.Array | pa.ChunkedArray"]


class FilterStep(Step[P]):
    """A step that measures each document and rejects those outside its thresholds."""

    Params: ClassVar[type[StepParams]] = FilterParams
    category: ClassVar[str] = "filter"
    checks: ClassVar[tuple[Check, ...]] = ()
    # Whether `calibrate:` may move this filter's bounds (not for rules whose bound is not about quality, e.g.
    # decontamination, nor for global steps, whose measure needs the run's decision).
    calibratable: ClassVar[bool] = True

    # ---- what a filter defines ---------------------------------------------------------------
    def signals(self, batch: pa.Table) -> Signals:
        """Every signal the checks read, one value per row (numpy or Arrow)."""
        raise NotImplementedError

    def check(self, text: str) -> str | None:
        """A per-document rule, instead of `signals`: the reason (without the step's name) to drop `text`."""
        raise NotImplementedError

    # ---- hooks with defaults -------------------------------------------------------------------
    def rules(self) -> tuple[Check, ...]:
        """This instance's checks: the declared ones (a filter whose rules depend on its parameters overrides)."""
        return self.checks

    def bound(self, check: Check) -> float | None:
        """The value a check compares with (`bound_of`)."""
        return bound_of(check, self.params)

    def failing(self, check: Check, values: np.ndarray, bound: float) -> np.ndarray:
        """Rows that break `check` (a filter with an exception to a rule overrides this)."""
        return check.fails(values, bound)

    def with_bounds(self, bounds: Mapping[Check, float]) -> P:
        """These parameters with the given checks' bounds replaced (validated again). A check whose bound is a
        number of its own is kept as it is here; a filter that derives such checks from its parameters
        overrides this to write them back."""
        updates = {check.bound: (value < 1 if isinstance(getattr(self.params, check.bound), bool) else value)
                   for check, value in bounds.items() if isinstance(check.bound, str)}
        return type(self.params)(**{**self.params.model_dump(), **updates})

    # ---- derived -------------------------------------------------------------------------------
    @classmethod
    def signal_bounds(cls) -> dict[str, dict[str, str]]:
        """signal -> {"min"|"max": the parameter bounding it}: what threshold views and calibration read."""
        out: dict[str, dict[str, str]] = {}
        for check in cls.checks:
            if isinstance(check.bound, str):
                out.setdefault(check.signal, {})[check.side] = check.bound
        return out

    def reasons(self, signals: Signals, n: int) -> pa.Array:
        """The first failing check's reason per row (checks in declared order), null where every check holds."""
        out: list[str | None] = [None] * n
        pending = np.ones(n, dtype=bool)
        for check in self.rules():
            bound = self.bound(check)
            if bound is None:
                continue
            values = _numpy(signals[check.signal])
            hits = np.flatnonzero(self.failing(check, values, bound) & pending)
            pending[hits] = False
            for row in hits.tolist():
                out[row] = reason(self.name, check.signal, values[row], check.failing_op, bound)
        return pa.array(out, pa.string())

    def measure(self, batch: pa.Table) -> Measurement:
        if type(self).check is not FilterStep.check:
            found = [self.check(text) for text in batch.column("text").to_pylist()]
            return Measurement(pa.array([None if r is None else f"{self.name}:{r}" for r in found], pa.string()))
        signals = self.signals(batch)
        return Measurement(self.reasons(signals, batch.num_rows),
                           {name: _arrow(values) for name, values in signals.items()})

    def apply(self, batch: pa.Table) -> StepOutput:
        measured = self.measure(batch)
        for column, values in measured.annotations.items():
            batch = set_column(batch, column, values)
        if getattr(self.params, "mode", "filter") == "annotate":
            for signal, values in measured.signals.items():
                batch = set_column(batch, f"{self.name}__{signal}", values)
            out = split(batch, pa.nulls(batch.num_rows, pa.string()))
            would = Counter(reason_key(r) for r in pc.drop_null(measured.reasons).to_pylist())
            out.counters.update({f"would_reject:{k}": v for k, v in would.items()})
            return out
        return split(batch, measured.reasons)


def _numpy(values: np.ndarray | pa.Array | pa.ChunkedArray) -> np.ndarray:
    if isinstance(values, np.ndarray):
        return values
    return values.to_numpy(zero_copy_only=False)


def _arrow(values: np.ndarray | pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    return values if isinstance(values, pa.Array) else pa.array(values)

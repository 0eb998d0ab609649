"""Retention curves: how many documents and tokens a threshold on a measured signal would keep.

Reads a version whose filters ran in `annotate` mode (signals stored as `<rule>__<signal>`
columns), so thresholds can be chosen from the data without re-running anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curation import analysis as A
from curation.recall import load_labels
from curation.steps import Check, FilterStep, UnknownStepError, bound_of, step_class

QUANTILES = (0, 1, 5, 10, 25, 50, 75, 90, 95, 99, 100)


@dataclass
class SignalRetention:
    rule: str
    signal: str
    docs: int
    tokens: int
    mean: float
    std: float
    quantiles: dict[int, float]
    current: dict[str, float]  # "min"/"max" -> the rule's bound as the version ran it (else its default)
    kept_at_current: tuple[float, float]  # (docs share, tokens share) kept by the current bounds
    rows: list[dict[str, float]] = field(default_factory=list)  # threshold -> shares kept as a min / as a max
    suggestions: dict[str, float] = field(default_factory=dict)
    ops: dict[str, str] = field(default_factory=dict)  # "min"/"max" -> what a kept value satisfies (">=", "<", ...)
    # class (a planted or labelled defect, or "clean") -> documents, and how many the paper's bounds and the
    # bounds the version ran with would remove
    by_class: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__ | {"kept_at_current": list(self.kept_at_current)}


def signal_columns(table_columns: list[str], rule: str) -> list[str]:
    prefix = f"{rule}__"
    return [c[len(prefix):] for c in table_columns if c.startswith(prefix)]


def retention(values: np.ndarray, tokens: np.ndarray, rule: str, signal: str, thresholds: int = 21,
              params: dict[str, Any] | None = None, classes: np.ndarray | None = None) -> SignalRetention:
    """`params`: the rule's parameters as the version ran it (its defaults otherwise); `classes`: each document's
    class (e.g. its planted defect, "clean" for the others), to count what each set of bounds would catch."""
    bounded = _bounds(rule, signal, params)
    current = {check.side: bound for check, bound in bounded}
    finite = np.isfinite(values)
    v, t = values[finite], tokens[finite]
    total_docs, total_tokens = max(len(v), 1), max(int(t.sum()), 1)
    keep = np.ones(len(v), dtype=bool)
    for check, bound in bounded:
        keep &= check.keeps(v, bound)
    grid = np.unique(np.quantile(v, np.linspace(0, 1, thresholds))) if len(v) else np.array([])
    rows = []
    for threshold in grid:
        as_min, as_max = v >= threshold, v <= threshold
        rows.append({"threshold": float(threshold),
                     "docs_kept_as_min": as_min.mean(), "tokens_kept_as_min": t[as_min].sum() / total_tokens,
                     "docs_kept_as_max": as_max.mean(), "tokens_kept_as_max": t[as_max].sum() / total_tokens})
    mean, std = (float(v.mean()), float(v.std())) if len(v) else (float("nan"), float("nan"))
    quantiles = {q: float(np.percentile(v, q)) for q in QUANTILES} if len(v) else {}
    suggestions = {}
    if len(v):
        # Percentile cuts drop a fixed share; k-sigma cuts drop outliers of a roughly normal signal.
        suggestions = {"p5 (drop lowest 5 %)": quantiles[5], "p95 (drop highest 5 %)": quantiles[95],
                       "mean - 2 sd": mean - 2 * std, "mean + 2 sd": mean + 2 * std,
                       "mean - 3 sd": mean - 3 * std, "mean + 3 sd": mean + 3 * std}
    by_class = _by_class(values, classes, {"paper": _bounds(rule, signal, {}), "as run": bounded}) \
        if classes is not None else {}
    return SignalRetention(rule, signal, len(v), int(t.sum()), mean, std, quantiles, current,
                           (keep.sum() / total_docs, t[keep].sum() / total_tokens), rows, suggestions,
                           {check.side: check.op for check, _ in bounded}, by_class)


def _by_class(values: np.ndarray, classes: np.ndarray, bound_sets: dict[str, list[tuple[Check, float]]]
              ) -> dict[str, dict[str, int]]:
    """Per class: documents, and how many each set of bounds removes (a document no bound applies to stays)."""
    out: dict[str, dict[str, int]] = {}
    removed = {}
    for name, bounded in bound_sets.items():
        keep = np.ones(len(values), dtype=bool)
        for check, bound in bounded:
            keep &= ~check.fails(values, bound)
        removed[name] = ~keep
    for label in sorted(set(classes.tolist())):
        rows = classes == label
        out[label] = {"docs": int(rows.sum()), **{name: int(r[rows].sum()) for name, r in removed.items()}}
    return out


def _bounds(rule: str, signal: str, params: dict[str, Any] | None) -> list[tuple[Check, float]]:
    """The rule's checks on `signal` that are switched on, with their bounds."""
    try:
        step = step_class(rule)
    except UnknownStepError:
        return []
    if not issubclass(step, FilterStep):
        return []
    # model_construct: the bounds are all this needs, so required parameters (a model path) may be absent.
    values = step.Params.model_construct(**(params or {}))
    out = []
    for check in step.checks:
        bound = bound_of(check, values)
        if check.signal == signal and bound is not None:
            out.append((check, bound))
    return out


def recipe_params(recipe: dict[str, Any], rule: str, calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """The parameters a recipe (as stored in a manifest) gave the step `rule`, with the bounds calibration moved
    (the manifest's `calibration`) in their place: what the version ran with."""
    params: dict[str, Any] = {}
    for entry in recipe.get("steps", []):
        if entry.get("step") == rule or entry.get("name") == rule:
            params = {k: v for k, v in entry.items() if k not in ("step", "name", "mode", "stage", "sources",
                                                                  "skip_sources", "where", "calibrate")}
            break
    for check in (((calibration or {}).get("steps") or {}).get(rule) or {}).get("checks", []):
        if check.get("parameter"):
            params[check["parameter"]] = check["calibrated"] < 1 if check.get("switch") else check["calibrated"]
    return params


def rule_retention(table: pa.Table, rule: str, signals: list[str] | None = None,
                   params: dict[str, Any] | None = None, classes: np.ndarray | None = None) -> list[SignalRetention]:
    """Retention for every (or the named) signal of `rule` in an annotated table with a `text` column."""
    available = signal_columns(table.column_names, rule)
    if not available:
        annotated = sorted({c.split("__")[0] for c in table.column_names if "__" in c})
        raise ValueError(f"no signals of {rule!r} in this version: run the step with `mode: annotate` "
                         f"(annotated rules here: {', '.join(annotated) or 'none'})")
    unknown = sorted(set(signals or []) - set(available))
    if unknown:
        raise ValueError(f"{rule} has no signal {unknown[0]!r}; signals: {', '.join(available)}")
    tokens = A.token_counts(table.column("text")).tokens
    return [retention(table.column(f"{rule}__{s}").to_numpy(zero_copy_only=False).astype(np.float64), tokens, rule, s,
                      params=params, classes=classes) for s in (signals or available)]


def defect_classes(manifest: dict[str, Any], table: pa.Table) -> np.ndarray | None:
    """Each row's planted or labelled class ("clean" when it has none), from the labels file the version's recipe
    named; None when it named none (or the file is gone)."""
    path = (manifest.get("planted_defects") or {}).get("labels")
    if not path or not Path(path).is_file() or "id" not in table.column_names:
        return None
    by_id = {row["id"]: row["defect"] for row in load_labels(path) if row.get("id") is not None}
    return np.array([by_id.get(i, "clean") for i in table.column("id").to_pylist()], dtype=object)

"""Thresholds calibrated on trusted text.

The published rules were tuned on web pages; on technical prose or scripture they remove clean text (Gopher's
"80 % of words contain a letter" removes most Python docstrings). A filter with

    calibrate: {reference: [source:stdlib_docs, source:kjv], keep: 0.98}

(or a recipe-wide `calibrate:`) measures its signals on the reference documents and moves each rule's bound,
only in the direction that keeps more, to the reference quantile at which that rule alone keeps `keep` of
them: a minimum bound becomes min(bound, q_(1 - keep)), a maximum max(bound, q_keep). Where the reference
already passes the configured bound, it stays. With `joint: true`, `keep` is what the block's filters keep of
the reference together: every rule is set at the same per-rule share, the smallest at which they do. The
reference is a registered reference set, `version:NAME` or `source:NAME` (the recipe's own input with that
source), pooled and sampled (seeded) to `max_docs`; it passes through the recipe's transform steps before the
filter (normalisation, redaction), as the run's documents do. A reference that shares a document with an
evaluation set is refused: curation tuned on the measuring stick would flatter itself.

The run uses the calibrated bounds (they are part of its key); the manifest keeps the recipe as written and,
under `calibration`, each moved bound with the configured one, the quantile, the share of the reference each
keeps, and the reference's fingerprint.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash

from curation.evalsets import EvalSetError, content_fingerprint, evalset_names, load_evalset, read_info
from curation.ingest import read_input, resolve_files
from curation.recipe import Calibration, Recipe, RecipeError, StepSpec
from curation.steps import Check, FilterStep, Step
from curation.store import StoreError, VersionStore

VERSION_PREFIX = "version:"
SOURCE_PREFIX = "source:"
COLUMNS = ["id", "text", "source"]


@dataclass(frozen=True)
class Reference:
    """The pooled, sampled reference documents of one `calibrate:` block, and their fingerprint."""

    table: pa.Table
    fingerprint: str


@dataclass
class _Measured:
    """One calibrated filter's signals on its reference (as the filter would see it), per check with a bound."""

    index: int
    spec: StepSpec
    name: str
    step: FilterStep
    config: Calibration
    reference: Reference
    ids: np.ndarray
    signals: dict[Check, np.ndarray]


def calibrate(recipe: Recipe, store_url: str) -> tuple[Recipe, dict[str, Any] | None]:
    """The recipe as it runs (every calibrated filter's bounds moved) and the report for the manifest (None when
    nothing is calibrated)."""
    measured = _measure(recipe, store_url)
    if not measured:
        return recipe, None
    rule_keep = {m.index: m.config.keep for m in measured}
    together: dict[int, float] = {}
    for group in _joint_groups(measured):
        keep = group[0].config.keep
        k = _rule_keep_for(group, keep)
        kept = _kept_together(group, k)
        rule_keep.update({m.index: k for m in group})
        together.update({m.index: kept for m in group})
    specs, report = list(recipe.steps), {}
    for m in measured:
        moved, checks = _calibrated(m.step, m.signals, rule_keep[m.index])
        changed = {k: v for k, v in m.step.with_bounds(moved).model_dump().items() if getattr(m.step.params, k) != v}
        specs[m.index] = StepSpec(**{**m.spec.model_dump(exclude_none=True), **changed})
        report[m.name] = {"reference": list(m.config.reference), "fingerprint": m.reference.fingerprint,
                          "documents": m.reference.table.num_rows, "keep": m.config.keep, "joint": m.config.joint,
                          "rule_keep": rule_keep[m.index], "kept_together": together.get(m.index),
                          "checks": checks}
    return recipe.model_copy(update={"steps": specs}), {"steps": report}


def _measure(recipe: Recipe, store_url: str) -> list[_Measured]:
    """Every filter the recipe calibrates, measured on its reference."""
    wanted = [(i, spec, config) for i, spec in enumerate(recipe.steps)
              if (config := _config(recipe, spec)) is not None]
    if not wanted:
        return []
    steps = recipe.build_steps(store_url)
    references: dict[tuple, Reference] = {}
    out = []
    for i, spec, config in wanted:
        name, step = steps[i]
        if not (isinstance(step, FilterStep) and step.calibratable and not step.is_global()):
            if spec.calibrate:  # asked for by this step itself, not by the recipe as a whole
                raise RecipeError(f"steps[{i}] ({name}): calibrate: {name} has no thresholds to calibrate")
            continue
        key = (tuple(config.reference), config.max_docs, config.seed)
        if key not in references:
            references[key] = reference(config, recipe, store_url)
        ref = references[key]
        batch = _as_seen_by(ref.table, [s for _, s in steps[:i]])
        out.append(_Measured(i, spec, name, step, config, ref, np.asarray(batch.column("id").to_pylist()),
                             _signals(step, batch)))
    return out


def _config(recipe: Recipe, spec: StepSpec) -> Calibration | None:
    if spec.calibrate is False:
        return None
    return spec.calibrate or recipe.calibrate


def _signals(step: FilterStep, batch: pa.Table) -> dict[Check, np.ndarray]:
    """The values of each of the filter's switched-on checks on the reference (NaN where not measurable)."""
    signals = step.measure(batch).signals
    out = {}
    for check in step.rules():
        if step.bound(check) is not None and check.signal in signals:
            out[check] = np.asarray(signals[check.signal].to_numpy(zero_copy_only=False), dtype=np.float64)
    return out


def _calibrated(step: FilterStep, signals: dict[Check, np.ndarray], keep: float
                ) -> tuple[dict[Check, float], list[dict[str, Any]]]:
    """The new bound of each check the reference does not already pass (each rule alone keeping `keep` of it),
    and a line per check for the report."""
    moved: dict[Check, float] = {}
    lines = []
    for check, all_values in signals.items():
        bound = step.bound(check)
        values = all_values[np.isfinite(all_values)]
        if values.size == 0:
            continue
        quantile, new = calibrated_bound(values, check, bound, keep)
        if new != bound:
            moved[check] = new
        lines.append({"signal": check.signal, "op": check.op,
                      "parameter": check.bound if isinstance(check.bound, str) else None,
                      "switch": isinstance(check.bound, str) and isinstance(getattr(step.params, check.bound), bool),
                      "configured": bound, "calibrated": new, "quantile": quantile,
                      "kept_at_configured": float(check.keeps(values, bound).mean()),
                      "kept_at_calibrated": float(check.keeps(values, new).mean())})
    return moved, lines


def _joint_groups(measured: list[_Measured]) -> list[list[_Measured]]:
    """The filters calibrated by the same `joint: true` block (the recipe's, or one step's own)."""
    groups: dict[str, list[_Measured]] = {}
    for m in measured:
        if m.config.joint:
            groups.setdefault(m.config.model_dump_json(), []).append(m)
    return list(groups.values())


def _kept_together(group: list[_Measured], rule_keep: float) -> float:
    """The share of the reference every filter of `group` keeps when each rule alone keeps `rule_keep`."""
    failed: set[str] = set()
    for m in group:
        for check, values in m.signals.items():
            finite = values[np.isfinite(values)]
            if finite.size == 0:
                continue
            bound = calibrated_bound(finite, check, m.step.bound(check), rule_keep)[1]
            failed.update(m.ids[m.step.failing(check, values, bound)].tolist())
    return 1 - len(failed) / max(1, group[0].reference.table.num_rows)


def _rule_keep_for(group: list[_Measured], keep: float, steps: int = 30) -> float:
    """The smallest per-rule keep (to ~1e-9) at which the group's rules together keep `keep` of the reference: at
    1 every rule keeps all of it, and the share kept together only grows with the per-rule keep."""
    if _kept_together(group, keep) >= keep:
        return keep
    low, high = keep, 1.0
    for _ in range(steps):
        middle = (low + high) / 2
        if _kept_together(group, middle) >= keep:
            high = middle
        else:
            low = middle
    return high


def calibrated_bound(values: np.ndarray, check: Check, bound: float, keep: float) -> tuple[float, float]:
    """(the reference quantile where the rule alone keeps `keep` of `values`, the bound moved to it if that keeps
    more). The quantile is the value of the reference that the ceil(keep x n)-th document kept, counted from the
    side the rule keeps, so at least `keep` of the reference passes it and no stricter bound would do."""
    ordered = np.sort(values)
    needed = max(1, math.ceil(keep * len(ordered) - 1e-9))  # documents that must pass
    if check.side == "min":
        quantile = float(ordered[len(ordered) - needed])
        target = quantile if check.op == ">=" else float(np.nextafter(quantile, -np.inf))
        new = min(float(bound), target)
        new = math.floor(new) if _integral(bound) else new
    else:
        quantile = float(ordered[needed - 1])
        target = quantile if check.op == "<=" else float(np.nextafter(quantile, np.inf))
        new = max(float(bound), target)
        new = math.ceil(new) if _integral(bound) else new
    return quantile, (type(bound)(new) if _integral(bound) else new)


def _integral(bound: float) -> bool:
    return isinstance(bound, int) and not isinstance(bound, bool)


def _as_seen_by(table: pa.Table, before: list[Step]) -> pa.Table:
    """The reference after the recipe's transform steps that come before the filter (what it would see)."""
    for step in before:
        if step.category == "transform" and not step.is_global():
            table = step.apply(table).kept
    return table


# ---- the reference ---------------------------------------------------------------------------


def reference(config: Calibration, recipe: Recipe, store_url: str) -> Reference:
    """The reference documents of `config`, sampled (seeded) to `max_docs`, checked against the evaluation sets."""
    store = VersionStore(store_url)
    tables = [_read(entry, recipe, store, config) for entry in config.reference]
    table = pa.concat_tables([t.select(COLUMNS).cast(_SCHEMA) for t in tables]).combine_chunks()
    if table.num_rows == 0:
        raise RecipeError(f"calibrate: the reference {', '.join(config.reference)} holds no documents")
    if table.num_rows > config.max_docs:
        rows = np.sort(np.random.default_rng(config.seed).choice(table.num_rows, config.max_docs, replace=False))
        table = table.take(pa.array(rows))
    _refuse_evaluation_text(table, store, config)
    return Reference(table, content_fingerprint(table))


_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.large_string()), ("source", pa.string())])


def _read(entry: str, recipe: Recipe, store: VersionStore, config: Calibration) -> pa.Table:
    if entry.startswith(VERSION_PREFIX):
        name = entry.removeprefix(VERSION_PREFIX)
        try:
            return store.read_table(name, columns=COLUMNS)
        except StoreError as exc:
            raise RecipeError(f"calibrate: reference {entry!r}: {exc}") from None
    if entry.startswith(SOURCE_PREFIX):
        return _read_source(entry.removeprefix(SOURCE_PREFIX), recipe, config)
    try:
        info = read_info(store, entry)
        if info.role != "reference":
            raise RecipeError(f"calibrate: {entry!r} is an evaluation set: calibrating curation on the text that "
                              "measures it would flatter the result; register trusted text with "
                              "`curate evalset register NAME SOURCE --role reference`")
        return load_evalset(store, entry)[0]
    except EvalSetError as exc:
        raise RecipeError(f"calibrate: reference {entry!r}: {exc} (a reference is a registered reference set, "
                          "version:NAME or source:NAME)") from None


def _read_source(source: str, recipe: Recipe, config: Calibration) -> pa.Table:
    """A seeded reservoir sample of `max_docs` documents of the recipe's inputs with this source (memory bounded
    whatever the input's size)."""
    specs = [spec for spec in recipe.inputs if spec.source_name == source]
    if not specs:
        raise RecipeError(f"calibrate: reference 'source:{source}': no input has that source; the inputs' sources: "
                          f"{', '.join(sorted(recipe.source_names))}")
    rng = random.Random(config.seed)
    kept: list[dict[str, Any]] = []
    seen = 0
    for spec in specs:
        for file in resolve_files(spec, recipe.base):
            for chunk in read_input(spec, file):
                if chunk.records is None:
                    continue
                for row in chunk.records.select(COLUMNS).to_pylist():
                    seen += 1
                    if len(kept) < config.max_docs:
                        kept.append(row)
                    elif (slot := rng.randrange(seen)) < config.max_docs:
                        kept[slot] = row
    return pa.Table.from_pylist(kept, schema=_SCHEMA)


def _refuse_evaluation_text(table: pa.Table, store: VersionStore, config: Calibration) -> None:
    """RecipeError when a reference document is also in an evaluation set (the same text)."""
    mine = {xxhash.xxh3_64_intdigest(t.encode("utf-8")) for t in table.column("text").to_pylist()}
    for name in evalset_names(store, "evaluation"):
        held_out = load_evalset(store, name)[0].column("text").to_pylist()
        shared = sum(1 for t in held_out if xxhash.xxh3_64_intdigest(t.encode("utf-8")) in mine)
        if shared:
            raise RecipeError(f"calibrate: the reference {', '.join(config.reference)} shares {shared} document(s) "
                              f"with the evaluation set {name!r}: calibrating on held-out text would flatter the "
                              "curation it measures; leave them out of the reference")


def bound_text(check: dict[str, Any], key: str, digits: int = 4) -> str:
    """A bound of a calibration report's check as people read it: `on`/`off` for a page rule's switch."""
    value = check[key]
    if check.get("switch"):
        return "on" if value < 1 else "off"
    return f"{value:g}" if key == "configured" else f"{value:.{digits}g}"

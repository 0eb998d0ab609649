"""Incremental series: runs of one recipe, each curating only the input files that arrived since the
last run, on top of everything the series already holds.

    <store>/series/<series>.json    the watermark: the series' versions so far and every input file
                                    they ingested (path -> [size, mtime_ns])

Version k of a series is named `<series>-000k`. It carries over version k-1's records unchanged,
adds the new files' records that survive the recipe, and deduplicates them against version k-1
(each dedup step of the recipe gets it in `against:`), so nothing already published comes back.
A file whose size or modification time changed counts as new again; its records that were already
published are caught as duplicate ids or by dedup.

The watermark is rewritten after each publish; a run that crashed in between is reconciled from
the manifests, which record the series and the files each version ingested.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from curation.recipe import Recipe, StepSpec
from curation.steps import REGISTRY
from curation.store import StoreError, VersionStore, _write_json, check_name

SERIES_DIR = "series"


@dataclass
class Watermark:
    series: str
    versions: list[str] = field(default_factory=list)
    files: dict[str, list[int | None]] = field(default_factory=dict)
    updated_at: str | None = None

    @property
    def last(self) -> str | None:
        return self.versions[-1] if self.versions else None


@dataclass(frozen=True)
class Increment:
    """The next run of a series: its version name, parent, recipe (dedup against the parent) and the
    files to skip."""

    series: str
    sequence: int
    name: str
    parent: str | None
    recipe: Recipe
    seen: dict[str, list[int | None]]


def _path(store: VersionStore, series: str) -> str:
    return f"{store.root}/{SERIES_DIR}/{check_name(series)}.json"


def _manifest_files(manifest: dict[str, Any]) -> dict[str, list[int | None]]:
    files = {f["path"]: [f.get("bytes"), f.get("mtime_ns")] for spec in manifest.get("inputs", [])
             for f in spec.get("files", [])}
    files.update({q["path"]: list(q.get("identity") or [None, None]) for q in manifest.get("quarantined_files", [])})
    return files


def read_watermark(store: VersionStore, series: str) -> Watermark:
    """The series' watermark, completed from the manifests of versions it does not list yet."""
    path = _path(store, series)
    mark = Watermark(series)
    if store.fs.exists(path):
        with store.fs.open(path, "r") as handle:
            data = json.load(handle)
        mark = Watermark(series, list(data["versions"]), dict(data["files"]), data.get("updated_at"))
    members = [m for m in store.versions() if (m.get("series") or {}).get("name") == series]
    for manifest in sorted(members, key=lambda m: m["series"]["sequence"]):
        if manifest["name"] not in mark.versions:
            mark.versions.append(manifest["name"])
            mark.files.update(_manifest_files(manifest))
    return mark


def record(store: VersionStore, series: str, manifest: dict[str, Any]) -> Watermark:
    """Advance the watermark past a published version of the series (written atomically)."""
    mark = read_watermark(store, series)  # already includes the version through its manifest
    mark.updated_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    store.fs.makedirs(f"{store.root}/{SERIES_DIR}", exist_ok=True)
    _write_json(store.fs, _path(store, series), {"series": series, "versions": mark.versions, "files": mark.files,
                                                 "updated_at": mark.updated_at})
    return mark


def dedup_against(recipe: Recipe, versions: list[str]) -> Recipe:
    """The recipe with `versions` added to the `against:` list of every step that takes one."""
    if not versions:
        return recipe
    steps = []
    for spec in recipe.steps:
        if "against" in REGISTRY[spec.step].Params.model_fields:
            params = spec.params
            against = list(dict.fromkeys([*params.get("against", []), *versions]))
            spec = StepSpec(step=spec.step, name=spec.name, stage=spec.stage, **{**params, "against": against})
        steps.append(spec)
    return recipe.model_copy(update={"steps": steps})


def next_increment(store: VersionStore, series: str, recipe: Recipe, start: str | None = None) -> Increment:
    """The series' next run. `start`: an existing version a new series continues from (its records are
    carried, its input files count as seen), so data curated once need not be curated again."""
    check_name(series)
    if recipe.synthesize is not None:
        raise StoreError(f"series {series!r}: a synthesis recipe has no input files to watch")
    mark = read_watermark(store, series)
    seen = dict(mark.files)
    parent = mark.last
    if parent is None and start is not None:
        parent = start
        seen = _manifest_files(store.manifest(start))
    sequence = max((int(m.group(1)) for v in mark.versions if (m := re.search(r"-(\d+)$", v))), default=0) + 1
    return Increment(series, sequence, f"{series}-{sequence:04d}", parent,
                     dedup_against(recipe, [parent] if parent else []), seen)

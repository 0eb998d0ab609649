"""Incremental series: runs of one recipe, each curating only the input files that arrived since the
last run, on top of everything the series already holds.

    <store>/versions/<series>-000k/manifest.json   the truth: the series and sequence, the input files
                                                   the version ingested, the parent it carried over
    <store>/series/<series>.json                   a readable summary of the series (its versions and
                                                   every input file they hold: path -> [size, mtime_ns])

Version k of a series is named `<series>-000k`. It carries over version k-1's records unchanged,
adds the new files' records that survive the recipe, and deduplicates them against version k-1
(each dedup step of the recipe gets it in `against:`), so nothing already published comes back.
A file whose size or modification time changed counts as new again; its records that were already
published are caught as duplicate ids or by dedup.

The series' state is derived from the published manifests every time, never from the summary file:
a version is published by one atomic step, while the summary is written after it, so a run killed
in between (or a lost or damaged summary) cannot make the next run ingest a file again or pick the
wrong parent. The summary is rewritten by every run of the series.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from curation.recipe import Recipe, StepSpec
from curation.steps import step_class
from curation.store import StoreError, VersionStore, check_name, write_json

SERIES_DIR = "series"


@dataclass
class Watermark:
    """What a series holds: its published versions in sequence order and every input file their records
    came from (path -> [size, mtime_ns])."""

    series: str
    versions: list[str] = field(default_factory=list)
    files: dict[str, list[int | None]] = field(default_factory=dict)

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
    return f"{store.root}/{SERIES_DIR}/{check_name(series, 'series')}.json"


def _manifest_files(manifest: dict[str, Any]) -> dict[str, list[int | None]]:
    files = {f["path"]: [f.get("bytes"), f.get("mtime_ns")] for spec in manifest.get("inputs", [])
             for f in spec.get("files", [])}
    files.update({q["path"]: list(q.get("identity") or [None, None]) for q in manifest.get("quarantined_files", [])})
    return files


def held_files(store: VersionStore, name: str) -> dict[str, list[int | None]]:
    """Every input file whose records the version holds: the files it ingested (or quarantined) and those
    of each version it carried over, up the chain (a series continued from a version holds its files too)."""
    chain = [store.manifest(name)]
    while carried := (chain[-1].get("carried") or {}).get("version"):
        chain.append(store.manifest(carried))
    files: dict[str, list[int | None]] = {}
    for manifest in reversed(chain):  # oldest first: a file ingested again later keeps its latest identity
        files.update(_manifest_files(manifest))
    return files


def read_watermark(store: VersionStore, series: str) -> Watermark:
    """The series' state, read from the manifests of its published versions (the summary file is not
    trusted: it may lag behind a version published just before a crash)."""
    members = sorted((m for m in store.versions() if (m.get("series") or {}).get("name") == series),
                     key=lambda m: m["series"]["sequence"])
    versions = [m["name"] for m in members]
    return Watermark(series, versions, held_files(store, versions[-1]) if versions else {})


def record(store: VersionStore, series: str) -> Watermark:
    """Rewrite the series' summary file from the manifests (atomically), repairing one a crash left behind."""
    mark = read_watermark(store, series)
    store.fs.makedirs(f"{store.root}/{SERIES_DIR}", exist_ok=True)
    write_json(store.fs, _path(store, series), {
        "series": series, "versions": mark.versions, "files": mark.files,
        "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return mark


def dedup_against(recipe: Recipe, versions: list[str]) -> Recipe:
    """The recipe with `versions` added to the `against:` list of every step that takes one."""
    if not versions:
        return recipe
    steps = []
    for spec in recipe.steps:
        if "against" in step_class(spec.step).Params.model_fields:
            params = spec.params
            against = list(dict.fromkeys([*params.get("against", []), *versions]))
            spec = StepSpec(step=spec.step, name=spec.name, stage=spec.stage, **{**params, "against": against})
        steps.append(spec)
    return recipe.model_copy(update={"steps": steps})


def next_increment(store: VersionStore, series: str, recipe: Recipe, start: str | None = None) -> Increment:
    """The series' next run. `start`: an existing version a new series continues from (its records are
    carried, its input files count as seen), so data curated once need not be curated again."""
    check_name(series, "series")
    if recipe.synthesize is not None:
        raise StoreError(f"series {series!r}: a synthesis recipe has no input files to watch")
    mark = read_watermark(store, series)
    seen = mark.files
    parent = mark.last
    if parent is None and start is not None:
        parent = start
        seen = held_files(store, start)
    sequence = max((int(m.group(1)) for v in mark.versions if (m := re.search(r"-(\d+)$", v))), default=0) + 1
    return Increment(series, sequence, f"{series}-{sequence:04d}", parent,
                     dedup_against(recipe, [parent] if parent else []), seen)

"""The dataset card: every version folder documents itself and loads the way a Hugging Face user loads
a folder.

`README.md` holds YAML front matter whose `configs:` name the version's two tables, `default` (the
records, data/*.parquet) and `rejects` (every removed record with its step and reason,
rejects/*.parquet), so `datasets.load_dataset(folder)` and `datasets.load_dataset(folder, "rejects")`
read them as separate datasets, and the folder uploads to a dataset hub as a documented dataset. The
Markdown body is made from the version's final manifest.
"""

from __future__ import annotations

from typing import Any

import yaml

from curation.reportkit import TOP_REASONS

CARD = "README.md"
# Hub licence identifiers: "unknown" when an input does not say (an input's `license:`), "other" for a mix.
UNKNOWN_LICENSE = "unknown"
MIXED_LICENSE = "other"


def dataset_card(manifest: dict[str, Any]) -> str:
    """The card's text for a version whose manifest is final (its own file entry aside)."""
    name = manifest["name"]
    has_rejects = any(f["kind"] == "rejects" for f in manifest["files"])
    configs = [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}]
    if has_rejects:
        configs.append({"config_name": "rejects", "data_files": [{"split": "train", "path": "rejects/*.parquet"}]})
    licenses = _licenses(manifest)
    distinct = set(licenses.values())
    license = (distinct.pop() if len(distinct) == 1 and None not in distinct
               else UNKNOWN_LICENSE if None in distinct or not distinct else MIXED_LICENSE)
    front = {"pretty_name": name, "license": license, "tags": ["curate"], "configs": configs}
    if license == MIXED_LICENSE:
        front["license_name"] = "mixed"
        front["license_details"] = "; ".join(f"{source}: {value}" for source, value in licenses.items())
    sections = [
        "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---",
        f"# {name}",
        *([_cell(description, table=False)] if (description := manifest.get("description")
                                               or (manifest.get("recipe") or {}).get("description")) else []),
        _summary(manifest, has_rejects),
        "## How to load it\n\n" + _loading(name, has_rejects),
        "## Lineage\n\n" + _lineage(manifest),
        "## Sources\n\n" + _sources(manifest),
        "## Licence\n\n" + _licence(licenses, license),
        "## Steps\n\n" + _steps(manifest),
        "## Accounting\n\n" + _accounting(manifest),
        *(["## Statistics\n\n" + _table(["measure", "value"], [[k, _value(v)] for k, v in stats.items()])]
          if (stats := manifest.get("stats_summary")) else []),
        "## Recipe\n\n" + _recipe(manifest),
    ]
    return "\n\n".join(sections) + "\n"


def _summary(manifest: dict[str, Any], has_rejects: bool) -> str:
    size = manifest.get("size") or {}
    tool = manifest.get("tool") or {}
    made_by = f"{tool.get('name', 'curate')} {tool.get('version', '')}".strip()
    rejects = (f"{manifest['rejected_rows']:,} removed records, each with the step and reason that removed it "
               "(config `rejects`)" if has_rejects else "no removed records (so no `rejects` config)")
    return (f"A dataset version made by {made_by} on {manifest.get('created_at', 'an unrecorded date')}: "
            f"{manifest['rows']:,} records ({size.get('chars', 0):,} characters of text) and {rejects}. "
            "Versions are immutable; `manifest.json` lists every file with its sha256, and `report.html` "
            "(where present) shows what each step removed, with examples.\n\n"
            f"Content fingerprint (sha256 over the records' core columns, in order): `{manifest['fingerprint']}`")


def _licenses(manifest: dict[str, Any]) -> dict[str, str | None]:
    """Source -> the licence its input declares (None when it declares none)."""
    return {spec.get("source") or spec["path"]: spec.get("license")
            for spec in (manifest.get("recipe") or {}).get("inputs") or []}


def _licence(licenses: dict[str, str | None], license: str) -> str:
    if not licenses:
        return "The version records no inputs, so no licence; check where its records came from before sharing it."
    rows = _table(["source", "licence"], [[source, value or "not declared"] for source, value in licenses.items()])
    if license == UNKNOWN_LICENSE:
        note = ("At least one input declares no licence (a recipe input's `license:`), so this card says `unknown`. "
                "Check the terms of every source before you use or share the data.")
    elif license == MIXED_LICENSE:
        note = "The inputs carry different licences; the records of each source keep the terms of their own."
    else:
        note = f"Every input declares `{license}`."
    return f"{note}\n\n{rows}"


def _loading(name: str, has_rejects: bool) -> str:
    lines = ["```python", "import datasets", "",
             f'records = datasets.load_dataset("path/to/{name}", split="train")  # this folder']
    if has_rejects:
        lines.append(f'rejects = datasets.load_dataset("path/to/{name}", "rejects", split="train")')
    return "\n".join([*lines, "```"])


def _lineage(manifest: dict[str, Any]) -> str:
    parents = manifest.get("parents") or []
    lines = [f"- parents: {', '.join(f'`{p}`' for p in parents) if parents else 'none'}"]
    if carried := manifest.get("carried"):
        lines.append(f"- carried over unchanged: {carried['rows']:,} records of `{carried['version']}`")
    if series := manifest.get("series"):
        lines.append(f"- series `{series['name']}`, increment {series['sequence']}")
    return "\n".join(lines)


def _sources(manifest: dict[str, Any]) -> str:
    by_source = (manifest.get("size") or {}).get("by_source") or {}
    out = _table(["source", "records", "characters"],
                 [[name, f"{s['rows']:,}", f"{s['chars']:,}"] for name, s in by_source.items()])
    inputs = [f"- `{_cell(spec['path'])}` (source `{_cell(spec['source'])}`): {len(spec.get('files') or [])} "
              "file(s) read by this run" for spec in manifest.get("inputs") or []]
    return out + ("\n\nInputs named by the recipe:\n\n" + "\n".join(inputs) if inputs else "")


def _steps(manifest: dict[str, Any]) -> str:
    rows = []
    for step in manifest["steps"]:
        reasons = sorted(step["rejected_by_reason"].items(), key=lambda kv: (-kv[1], kv[0]))
        top = ", ".join(f"{reason} ({count:,})" for reason, count in reasons[:TOP_REASONS])
        more = len(reasons) - TOP_REASONS
        rows.append([step["name"], f"{step['in']:,}", f"{step['kept']:,}", f"{step['rejected']:,}",
                     top + (f" and {more} more" if more > 0 else "")])
    return _table(["step", "in", "kept", "rejected", "top reasons"], rows)


def _accounting(manifest: dict[str, Any]) -> str:
    accounting = manifest["accounting"]
    verdict = "ok" if accounting["ok"] else "FAILED: " + "; ".join(accounting["failures"])
    carried = (manifest.get("carried") or {}).get("rows", 0)
    return (f"{verdict}. Every step's input equals its kept plus rejected records, and the files hold exactly "
            f"those rows: {accounting['records_in']:,} records in, {accounting['records_kept']:,} kept"
            + (f" (with {carried:,} carried over)" if carried else "")
            + f", {accounting['records_rejected']:,} rejected.")


def _recipe(manifest: dict[str, Any]) -> str:
    if "recipe" not in manifest:
        return "Published without a recipe (records made elsewhere, counted in by an `ingest` step)."
    return (f"Recipe hash `{manifest.get('recipe_hash')}`.\n\n```yaml\n"
            + yaml.safe_dump(manifest["recipe"], sort_keys=False, allow_unicode=True) + "```")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "_none recorded_"
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join([*lines, *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)])


def _cell(text: Any, table: bool = True) -> str:
    """Text from the manifest, safe inside a Markdown table cell (or paragraph)."""
    text = " ".join(str(text).split())
    return text.replace("|", "\\|") if table else text


def _value(value: Any) -> str:
    if value is None:
        return "not measured"
    return f"{value:.4g}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)

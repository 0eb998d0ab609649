"""How well the steps catch known defects: per planted defect class, what each step removed, and
what the steps removed from clean text (false positives).

Labels are JSONL, one line per planted defect: `{"id", "defect", "file", "line"}`; `id` is null
for input lines that never became a record (malformed JSON...), which are then found by file and
line among the ingest rejects. Every record that is not labelled counts as clean.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa


def load_labels(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def planted_defect_report(labels: list[dict[str, Any]], data: pa.Table, rejects: pa.Table) -> dict[str, Any]:
    """`data` needs `id` and `source`; `rejects` needs `id`, `source`, `step`, `source_file`, `source_line`."""
    by_id: dict[str, str] = {}
    by_line: dict[tuple[str, int], str] = {}
    for row in rejects.select(["id", "step", "source_file", "source_line"]).to_pylist():
        if row["id"] is not None and row["id"] not in by_id:
            by_id[row["id"]] = row["step"]
        if row["source_file"] is not None and row["source_line"] is not None:
            by_line.setdefault((Path(row["source_file"]).name, row["source_line"]), row["step"])
    kept_ids = set(data.column("id").to_pylist())
    classes: dict[str, dict[str, Any]] = defaultdict(lambda: {"planted": 0, "caught": 0, "by_step": Counter(),
                                                               "kept": 0})
    labelled: set[str] = set()
    for label in labels:
        if label["defect"] == "blank_line":
            continue  # a separator, not a record
        entry = classes[label["defect"]]
        entry["planted"] += 1
        step = None
        if label.get("id") is not None and label["defect"] != "duplicate_id":
            labelled.add(label["id"])
            step = by_id.get(label["id"])
            if step is None and label["id"] not in kept_ids:
                step = by_line.get((label.get("file") or "", label.get("line")))
        else:
            step = by_line.get((label.get("file") or "", label.get("line")))
        if step is None:
            entry["kept"] += 1
        else:
            entry["caught"] += 1
            entry["by_step"][step] += 1
    clean_rejected = Counter()
    clean_rejected_sources: dict[str, Counter] = defaultdict(Counter)
    clean_total = Counter()
    for row in data.select(["id", "source"]).to_pylist():
        if row["id"] not in labelled:
            clean_total[row["source"]] += 1
    duplicate_id_rows = {(Path(lab.get("file") or "").name, lab.get("line")) for lab in labels
                         if lab["defect"] == "duplicate_id"}
    for row in rejects.select(["id", "source", "step", "source_file", "source_line"]).to_pylist():
        if row["id"] is None or row["id"] in labelled:
            continue
        if (Path(row["source_file"] or "").name, row["source_line"]) in duplicate_id_rows:
            continue
        clean_total[row["source"]] += 1
        clean_rejected[row["step"]] += 1
        clean_rejected_sources[row["source"]][row["step"]] += 1
    total = sum(clean_total.values())
    return {
        "classes": {name: {**entry, "by_step": dict(entry["by_step"]),
                           "recall": entry["caught"] / entry["planted"] if entry["planted"] else None}
                    for name, entry in sorted(classes.items())},
        "clean": {"docs": total, "rejected": sum(clean_rejected.values()),
                  "false_positive_rate": sum(clean_rejected.values()) / total if total else None,
                  "by_step": dict(clean_rejected),
                  "by_source": {s: {"docs": clean_total[s], "rejected": dict(clean_rejected_sources[s])}
                                for s in sorted(clean_total)}},
    }

"""How well the steps catch known defects: per planted defect class, what each step removed, and
what the steps removed from clean text (false positives).

Labels are JSONL, one line per planted defect: `{"id", "defect", "of", "file", "line"}`; `id` is null
for input lines that never became a record (malformed JSON...), which are then found by file and
line among the ingest rejects. Every record that is not labelled counts as clean.

A planted duplicate (`exact_dup`, `near_dup`: `of` names its original) is caught when the pair is
collapsed, whichever of the two goes: the keep policy may rightly keep the longer copy and remove
the original. An original removed as a duplicate of any planted copy of it (PII and mojibake copies
are near duplicates too) is not a false positive.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa

DUPLICATE_CLASSES = frozenset({"exact_dup", "near_dup"})
# Defects a transform repairs rather than a filter removes (normalize undoes mojibake, pii_redact redacts): kept on
# purpose, so they do not count in the recall of what must go (their "caught" are copies deduplication collapsed).
REPAIRED_CLASSES = frozenset({"mojibake", "pii"})


def load_labels(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def planted_defect_report(labels: list[dict[str, Any]], data: pa.Table, rejects: pa.Table) -> dict[str, Any]:
    """`data` needs `id` and `source`; `rejects` needs `id`, `source`, `step`, `source_file`, `source_line`
    (and `dup_of` when a dedup step ran)."""
    by_id: dict[str, str] = {}
    by_line: dict[tuple[str, int], str] = {}
    dup_of: dict[str, str] = {}
    columns = ["id", "step", "source_file", "source_line"] + (["dup_of"] if "dup_of" in rejects.column_names else [])
    for row in rejects.select(columns).to_pylist():
        if row["id"] is not None and row["id"] not in by_id:
            by_id[row["id"]] = row["step"]
            if row.get("dup_of") is not None:
                dup_of[row["id"]] = row["dup_of"]
        if row["source_file"] is not None and row["source_line"] is not None:
            by_line.setdefault((Path(row["source_file"]).name, row["source_line"]), row["step"])
    kept_ids = set(data.column("id").to_pylist())
    classes: dict[str, dict[str, Any]] = defaultdict(lambda: {"planted": 0, "caught": 0, "by_step": Counter(),
                                                               "kept": 0})
    labelled: set[str] = set()
    collapsed: set[str] = set()  # originals removed in favour of their planted copy
    for label in labels:
        if label["defect"] == "blank_line":
            continue  # a separator, not a record
        entry = classes[label["defect"]]
        entry["planted"] += 1
        step = None
        original = label.get("of")
        if original and label.get("id") and dup_of.get(original) == label["id"]:
            collapsed.add(original)  # the original went, as a duplicate of this (planted) copy
            if label["defect"] in DUPLICATE_CLASSES:
                labelled.add(label["id"])
                entry["caught"] += 1
                entry["by_step"][by_id[original]] += 1
                continue
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
        if row["id"] is None or row["id"] in labelled or row["id"] in collapsed:
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

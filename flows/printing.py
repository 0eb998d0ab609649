"""How a version is shown: what each step did, the planted defects, dedup reports and the model-collapse guards.

Shared by the commands that publish or show a version (`curate run`, `show`, `synthesize`, `guards`) and, for
the guard rows, by the flows' Prefect artifacts. Imports nothing of Prefect, torch or pyarrow, so any CLI
module can import it at start-up.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from flows.cli_common import console


def steps_table(manifest: dict[str, Any]) -> Table:
    """One row per step: documents in, kept, rejected, and the most frequent reasons."""
    table = Table(title=f"version {manifest['name']}", title_justify="left")
    scoped = any(step.get("scope") for step in manifest["steps"])
    for column in ("step", *(["applies to"] if scoped else []), "in", "kept", "rejected", "top reasons"):
        table.add_column(column, justify="right" if column in ("in", "kept", "rejected") else "left")
    for step in manifest["steps"]:
        reasons = sorted(step["rejected_by_reason"].items(), key=lambda kv: -kv[1])
        top = ", ".join(f"{k} {v:,}" for k, v in reasons[:4]) + (" …" if len(reasons) > 4 else "")
        scope = [step.get("scope") or "all"] if scoped else []
        table.add_row(step["name"], *scope, f"{step['in']:,}", f"{step['kept']:,}", f"{step['rejected']:,}", top)
    return table


def planted_table(report: dict[str, Any]) -> Table:
    """The demo's planted defects: how many each step caught, and the false positives on clean text."""
    table = Table(title="planted defects: what each step caught", title_justify="left")
    for column in ("defect", "planted", "caught", "recall", "kept", "caught by"):
        table.add_column(column, justify="left" if column in ("defect", "caught by") else "right")
    for name, entry in report["classes"].items():
        by = ", ".join(f"{k} {v}" for k, v in sorted(entry["by_step"].items(), key=lambda kv: -kv[1]))
        table.add_row(name, str(entry["planted"]), str(entry["caught"]), f"{entry['recall']:.0%}", str(entry["kept"]),
                      by)
    clean = report["clean"]
    by = ", ".join(f"{k} {v}" for k, v in sorted(clean["by_step"].items(), key=lambda kv: -kv[1]))
    rate = clean["false_positive_rate"] or 0.0
    table.add_row("[italic]clean text[/]", str(clean["docs"]), str(clean["rejected"]), f"{rate:.1%} FP", "", by)
    return table


def print_dedup_reports(manifest: dict[str, Any]) -> None:
    """Duplicate rate by kind, cluster sizes, who was kept over whom, the S-curve, and example clusters side by side."""
    for name, report in manifest.get("step_reports", {}).items():
        if "boilerplate_units" in report:
            _print_boilerplate(name, report)
        elif "removed" in report and "documents" in report:
            _print_dedup(name, report)


def _print_boilerplate(name: str, report: dict[str, Any]) -> None:
    top = ", ".join(f"{u.get('text') or u['hash']!r} ({u['documents']})" for u in report.get("top", [])[:3])
    console.print(f"[bold]{name}[/]: {report['boilerplate_units']:,} boilerplate {report.get('unit', 'unit')}s "
                  f"in {report.get('documents_with_boilerplate', 0):,} documents; most repeated: {top}")


def _print_dedup(name: str, report: dict[str, Any]) -> None:
    rate = report["removed"] / report["documents"] if report["documents"] else 0.0
    earlier = (f", {report['removed_matching_earlier_versions']:,} matching {', '.join(report['against'])}"
               if report.get("against") else "")
    sizes = ", ".join(f"{k}: {v}" for k, v in report.get("cluster_sizes", {}).items()) or "none"
    console.print(f"[bold]{name}[/]: removed {report['removed']:,} of {report['documents']:,} ({rate:.1%}){earlier}; "
                  f"cluster sizes {sizes}")
    _print_kept_over(report)
    if "bands" in report:
        curve = ", ".join(f"J={k} {v:.0%}" for k, v in report["s_curve"].items())
        console.print(f"  {report['bands']} bands x {report['rows']} rows ({report['index_bytes_per_doc']} B/doc); "
                      f"P(candidate): {curve}; {report['candidate_pairs']:,} candidates, "
                      f"{report['rejected_by_verification']:,} rejected by exact-Jaccard verification")
    for example in report.get("examples", [])[:2]:
        table = Table(title=f"cluster {example['cluster']} ({example['size']} documents)", title_justify="left",
                      show_lines=True)
        for member in example["members"][:2]:
            label = "kept" if member["kept"] else f"removed (J={member.get('jaccard', float('nan')):.2f})"
            source = f" ({member['source']})" if member.get("source") else ""
            table.add_column(f"{member['id']}{source} - {label}", overflow="fold")
        table.add_row(*(m["text"][:160] for m in example["members"][:2]))
        console.print(table)


def _print_kept_over(report: dict[str, Any]) -> None:
    """Whose documents the keep policy kept over whose, per pair of sources, and what decided each removal."""
    kept_over = report.get("kept_over")
    if not kept_over:
        return
    pairs = sorted(((n, kept, removed) for kept, by in kept_over.items() for removed, n in by.items()),
                   key=lambda p: (-p[0], p[1], p[2]))
    decided = ", ".join(f"{k} {v:,}" for k, v in (report.get("decided_by") or {}).items())
    console.print("  kept over (by source): " + ", ".join(f"{kept or '(no source)'} over {removed or '(no source)'} "
                                                         f"{n:,}" for n, kept, removed in pairs)
                  + (f"; decided by {decided}" if decided else ""))
    policy = report.get("keep_policy") or {}
    if policy:
        origins = " > ".join(policy.get("prefer_origins") or []) or "not ranked"
        sources = " > ".join(policy.get("prefer_sources") or []) or "not ranked"
        console.print(f"  keep policy: earlier versions, then origin ({origins}), then source ({sources}), then "
                      "quality_score, length, id")


def guard_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per guard: value, threshold, verdict (for artifacts and tables)."""
    def verdict(g: dict[str, Any]) -> str:
        if g["passed"] is None:
            return "not measured" if g["value"] is None else "not applied"
        return "pass" if g["passed"] else ("FAIL (hard)" if g["hard"] else "warn")

    return [{"guard": g["name"], "value": g["value"], "threshold": f"{g['op']} {g['threshold']}"
             if g["threshold"] is not None else "", "verdict": verdict(g), "detail": g["detail"]}
            for g in report["guards"]]


def print_guards(manifest: dict[str, Any]) -> None:
    """The model-collapse guards: failures in full, the rest as one line."""
    report = manifest.get("guards")
    if not report:
        return
    rows = guard_rows(report)
    flagged = [r for r in rows if r["verdict"] not in ("pass", "not measured", "not applied")]
    passed = ", ".join(f"{r['guard']} {r['value']}" for r in rows if r["verdict"] == "pass")
    console.print(f"guards ({report['mix']} mix, reference {(report.get('reference') or {}).get('name') or 'none'}): "
                  f"passed {passed or 'none'}")
    for r in flagged:
        colour = "red" if r["verdict"].startswith("FAIL") else "yellow"
        console.print(f"  [{colour}]{r['verdict']}[/] {r['guard']} = {r['value']} ({r['threshold']}; {r['detail']})")
    override = manifest.get("guard_override")
    if override:
        console.print(f"  [red]published despite[/] {', '.join(override['overridden'])}: {override['reason']}")


def accounting(manifest: dict[str, Any]) -> str:
    """'ok' when every input record is a kept record or a counted reject, else 'FAILED'."""
    return "ok" if manifest["accounting"]["ok"] else "FAILED"


def calibration_table(manifest: dict[str, Any]) -> Table | None:
    """The bounds `calibrate:` moved (configured -> calibrated) and the share of the reference each rule alone
    keeps; the bounds the reference already passed are counted in the title (every one is in the manifest)."""
    from curation.calibration import bound_text  # not at start-up (flows/cli_common.py)

    steps = (manifest.get("calibration") or {}).get("steps") or {}
    if not steps:
        return None
    entry = next(iter(steps.values()))
    kept = sum(1 for e in steps.values() for c in e["checks"] if c["calibrated"] == c["configured"])
    share = (f"keep {entry['keep']:.0%} together, each rule at {entry['rule_keep']:.2%}" if entry.get("joint")
             else f"keep {entry['keep']:.0%} per rule")
    table = Table(title=f"calibrated on {', '.join(entry['reference'])} ({entry['documents']:,} documents, "
                        f"{share}; {kept} bound(s) already kept that and stay)",
                  title_justify="left")
    for column in ("step", "rule", "configured", "calibrated", "reference kept"):
        table.add_column(column, justify="left" if column in ("step", "rule") else "right")
    for name, entry in steps.items():
        for check in entry["checks"]:
            if check["calibrated"] != check["configured"]:
                table.add_row(name, f"{check['signal']} {check['op']}", bound_text(check, "configured"),
                              bound_text(check, "calibrated"),
                              f"{check['kept_at_configured']:.1%} -> {check['kept_at_calibrated']:.1%}")
    return table

"""`curate diff A B` and `curate why VERSION ID`: what changed between two versions, and where one
document went and why.

Registered in `flows/cli.py` with `app.command(name="diff")(diff_command)` and
`app.command(name="why")(why_command)`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

# curation/ (pyarrow, fsspec) is imported inside the commands, so that every start stays fast (flows/cli_common.py).
from flows.cli_common import DEFAULT_STORE, StoreOption, console, err, fail
from flows.printing import guard_rows


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    return f"{value:.4g}"


def _text(value: Any, limit: int = 80) -> str:
    if value is None:
        return ""
    text = str(value).replace("\n", " ")
    return escape(text if len(text) <= limit else text[:limit] + "…")


def _ids(examples: list[dict[str, Any]]) -> str:
    return escape(", ".join(str(e["id"]) for e in examples))


def _print_diff(result: dict[str, Any]) -> None:
    a, b = result["a"], result["b"]
    relation = result["lineage"]
    via = f" (reasons from {', '.join(result['via'])})" if relation not in ("unrelated", "same") else ""
    console.print(f"[bold]diff[/] {escape(a)} -> {escape(b)}: {result['docs']['a']:,} -> {result['docs']['b']:,} "
                  f"documents, compared by id and xxh3-128 of the text; lineage: {relation}{escape(via)}")
    counts = Table(title="documents", title_justify="left")
    for column in ("", "count", "examples"):
        counts.add_column(column, justify="right" if column == "count" else "left", overflow="fold")
    counts.add_row("added", f"{result['added']['count']:,}", _ids(result["added"]["examples"]))
    counts.add_row("removed", f"{result['removed']['count']:,}", _ids(result["removed"]["examples"]))
    counts.add_row("changed", f"{result['changed']['count']:,}", _ids(result["changed"]["examples"]))
    counts.add_row("unchanged", f"{result['unchanged']:,}", "")
    console.print(counts)

    removed = result["removed"]
    if "by_reason" in removed and (removed["by_reason"] or removed["not_ingested"]["count"]):
        table = Table(title=f"removals by step and reason ({removed['count']:,} removed)", title_justify="left")
        for column in ("version", "step", "reason", "count", "examples"):
            table.add_column(column, justify="right" if column == "count" else "left", overflow="fold")
        for group in removed["by_reason"]:
            shown = ", ".join(f"{e['id']}" + (f" (dup of {e['dup_of']})" if e.get("dup_of") else "")
                              for e in group["examples"])
            step = str(group["step"]) + (f" ({group['scope']})" if group.get("scope") else "")
            table.add_row(escape(group["version"]), escape(step), escape(group["reason"]),
                          f"{group['count']:,}", escape(shown))
        missing = removed["not_ingested"]
        if missing["count"]:
            table.add_row("", f"[italic]not ingested by {escape(b)}[/]", "", f"{missing['count']:,}",
                          _ids(missing["examples"]))
        console.print(table)
    for example in result["changed"]["examples"][:3]:
        console.print(f"[bold]changed[/] {escape(example['id'])}: {example['a_chars']:,} -> {example['b_chars']:,} "
                      f"chars, first difference at {example['first_difference']:,}")
        console.print(f"  a: {_text(example['a_at_difference'], 120)}", highlight=False)
        console.print(f"  b: {_text(example['b_at_difference'], 120)}", highlight=False)

    stats = result["stats"]
    if stats["metrics"]:
        table = Table(title="statistics (stats.json)", title_justify="left")
        for column in ("metric", a, b, "delta", "rel"):
            table.add_column(escape(column), justify="left" if column == "metric" else "right")
        for key, entry in stats["metrics"].items():
            rel = "-" if entry["rel"] is None else f"{entry['rel']:+.1%}"
            delta = "-" if entry["delta"] is None else (("+" if entry["delta"] >= 0 else "") + _number(entry["delta"]))
            table.add_row(escape(key), _number(entry["a"]), _number(entry["b"]), delta, rel)
        console.print(table)
    js, ks = stats["unigram_js"]["value"], stats["length_ks"]["value"]
    console.print(f"unigram Jensen-Shannon divergence (base 2): {_number(js)}; "
                  f"length Kolmogorov-Smirnov statistic: {_number(ks)} "
                  "(from binned histograms, CDFs interpolated within bins)", highlight=False)
    for note in stats["notes"] + result["notes"]:
        console.print(f"[yellow]note:[/] {escape(note)}")


def diff_command(
    a: Annotated[str, typer.Argument(help="The earlier version.")],
    b: Annotated[str, typer.Argument(help="The later version.")],
    store: StoreOption = DEFAULT_STORE,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole diff as JSON.")] = False,
    examples: Annotated[int, typer.Option("--examples", "-n", min=0, help="Example ids per category.")] = 5,
    html: Annotated[Path | None, typer.Option("--html", help="Also write the diff as a self-contained HTML "
                                                              "report (and its JSON twin) into this folder.")] = None,
) -> None:
    """Documents added, removed (with the step and reason that removed them) and changed from A to B,
    and their statistics side by side."""
    from curation.diff import diff_versions
    from curation.store import StoreError, VersionStore

    try:
        result = diff_versions(VersionStore(store), a, b, examples=examples)
    except StoreError as exc:
        fail(str(exc))
    if html is not None:
        import fsspec

        from curation.report import diff_report, diff_report_input
        from curation.reportkit import write_report

        page, twin = diff_report(diff_report_input(result))
        html.mkdir(parents=True, exist_ok=True)
        paths = write_report(fsspec.filesystem("file"), str(html.resolve()), page, twin, stem=f"diff-{a}-{b}")
        if not as_json:
            err.print(f"diff report: {paths[0]}")
    if as_json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    _print_diff(result)


def _print_why(result: dict[str, Any]) -> None:
    status = result["status"]
    colour = {"kept": "green", "removed": "red", "removed_in_parent": "red", "kept_in_parent": "yellow"}.get(
        status, "white")
    console.print(f"[bold]{escape(result['id'])}[/] in {escape(result['version'])}: "
                  f"[{colour}]{escape(result['message'])}[/]")
    table = Table(show_header=False, title_justify="left")
    table.add_column("field")
    table.add_column("value", overflow="fold")
    if "row" in result:
        for key, value in result["row"].items():
            table.add_row(escape(str(key)), _text(value, 300))
    else:
        for key in ("step", "reason", "source_file", "source_line", "dup_of", "text"):
            if result.get(key) is not None:
                table.add_row(key, _text(result[key], 300))
    if table.row_count:
        console.print(table)
    for reject in result.get("other_rejects", []) + result.get("rejects", []):
        console.print(f"  reject: step {escape(str(reject['step']))}: {escape(str(reject['reason']))} "
                      f"({escape(str(reject['source_file']))}:{reject['source_line']})", highlight=False)
    if result.get("searched") and status != "unknown":
        console.print(f"searched: {escape(', '.join(result['searched']))}")


def why_command(
    version: Annotated[str, typer.Argument(help="Version name.")],
    doc_id: Annotated[str, typer.Argument(metavar="ID", help="Document id.")],
    store: StoreOption = DEFAULT_STORE,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
) -> None:
    """Where one document went and why: kept, removed by which step and reason, or last seen in a parent."""
    from curation.diff import why
    from curation.store import StoreError, VersionStore

    try:
        result = why(VersionStore(store), version, doc_id)
    except StoreError as exc:
        fail(str(exc))
    if as_json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif result["status"] != "unknown":
        _print_why(result)
    if result["status"] == "unknown":
        fail(result["message"])


def guards_command(
    version: Annotated[str, typer.Argument(help="Version to check.")],
    store: StoreOption = DEFAULT_STORE,
    reference: Annotated[str | None, typer.Option(help="Registered evaluation set used as the human reference "
                                                       "(default: the first registered).")] = None,
    reference_model: Annotated[Path | None, typer.Option(help="A GPT checkpoint.pt trained on human data, for the "
                                                              "perplexity guard.")] = None,
    parent: Annotated[str | None, typer.Option(help="Parent version (default: the version's first parent).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Model-collapse guards of a version, measured now (the version's own report is in `curate show --json`)."""
    from curation.guards import GuardConfig, version_guards
    from curation.store import StoreError, VersionStore
    from flows.gpt import perplexity_scorer

    target = VersionStore(store)
    try:
        config = GuardConfig(reference=reference, reference_model=str(reference_model) if reference_model else None)
        report = version_guards(target, version, config, parent=parent,
                                perplexity=perplexity_scorer(config.reference_model))
    except (StoreError, ValueError) as exc:
        fail(str(exc))
    if as_json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    table = Table(title=f"{version}: model-collapse guards ({report['mix']} mix, reference "
                        f"{(report.get('reference') or {}).get('name') or 'none'})", title_justify="left")
    for column in ("guard", "value", "threshold", "verdict", "detail"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for row in guard_rows(report):
        style = "red" if row["verdict"].startswith("FAIL") else ("yellow" if row["verdict"] == "warn" else "")
        table.add_row(row["guard"], _number(row["value"]), row["threshold"],
                      f"[{style}]{row['verdict']}[/]" if style else row["verdict"], escape(row["detail"]))
    console.print(table)
    console.print("generations: " + ", ".join(f"{g}: {n:,}" for g, n in report["generation_histogram"].items()))

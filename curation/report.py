"""Self-contained HTML reports of a version (and of the difference between two versions).

`version_report(manifest, stats)` and `diff_report(diff)` each return `(html, twin)`: one HTML page
with inline CSS and the plots embedded as base64 PNGs (no external assets, no JavaScript), and a
JSON-ready dict holding the same numbers the page shows. `curation.reportkit.write_report` stores both next
to each other, atomically, on any fsspec filesystem.

Every string that comes from data (ids, texts, reasons, terms, sources) is HTML-escaped; the
renderers read the manifest and the statistics defensively, so that an older manifest, or one
without planted defects, deduplication or statistics, still renders. The page, tables, number
formats and plots come from `curation.reportkit`, which the ablation report uses too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from curation.dedup import candidate_probability
from curation.reportkit import (
    TEXT_CHARS,
    TOP_REASONS,
    Plots,
    Row,
    doc_html,
    esc,
    fmt_num,
    fmt_pct,
    hist_plot,
    html_table,
    is_num,
    mpl_text,
    new_figure,
    page_html,
    plain,
)

TOP_ROWS = 20  # rows of long tables (languages, task types)

SECTION_TITLES = {
    "header": "Version",
    "funnel": "Steps",
    "examples": "Removed documents",
    "planted": "Planted defects",
    "dedup": "Deduplication",
    "guards": "Model-collapse guards",
    "stats": "Statistics",
}
DIFF_SECTION_TITLES = {
    "header": "Versions",
    "counts": "Documents",
    "reasons": "Removals by reason",
    "examples": "Examples",
    "stats": "Statistics",
    "distances": "Distances",
}


# ---- plots --------------------------------------------------------------------------------------


def _funnel_plot(steps: list[dict]) -> Any:
    fig = new_figure(9.5, max(2.2, 0.42 * len(steps) + 1.2))
    ax = fig.add_subplot()
    names = [mpl_text(s.get("name", "?"), 28) for s in steps]
    kept = [s.get("kept", 0) or 0 for s in steps]
    rejected = [s.get("rejected", 0) or 0 for s in steps]
    y = list(range(len(steps)))
    ax.barh(y, kept, color="#4c78a8", label="kept")
    ax.barh(y, rejected, left=kept, color="#e45756", label="rejected by this step")
    top = max((k + r for k, r in zip(kept, rejected)), default=0) or 1
    for i, (k, r) in enumerate(zip(kept, rejected)):
        ax.text(k + r + top * 0.01, i, f"{k:,}" + (f"  (−{r:,})" if r else ""), va="center", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.22)
    ax.set_xlabel("documents")
    ax.set_title("documents kept after each step")
    ax.legend(loc="lower right", fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


# ---- version report -----------------------------------------------------------------------------


def _by_count(counts: Mapping) -> list[tuple[Any, Any]]:
    """(key, count) pairs, largest count first, then by key."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _counts_text(pairs: Iterable[tuple[Any, Any]]) -> str:
    return ", ".join(f"{esc(k)} {fmt_num(v)}" for k, v in pairs)


def version_report(manifest: dict, stats: dict | None, *, examples: dict | None = None) -> tuple[str, dict]:
    """(HTML page, JSON twin) of one version: what made it, what each step did, what it holds."""
    manifest = manifest or {}
    plots = Plots()
    name = manifest.get("name", "?")
    twin: dict[str, Any] = {"kind": "version_report", "name": name}
    sections = [("header", SECTION_TITLES["header"], _header(manifest, twin))]
    sections.append(("funnel", SECTION_TITLES["funnel"], _funnel(manifest, twin, plots)))
    if examples:
        sections.append(("examples", SECTION_TITLES["examples"], _removed_examples(manifest, examples, twin)))
    if manifest.get("planted_defects"):
        sections.append(("planted", SECTION_TITLES["planted"], _planted(manifest["planted_defects"], twin)))
    dedup = _dedup(manifest.get("step_reports") or {}, twin, plots)
    if dedup:
        sections.append(("dedup", SECTION_TITLES["dedup"], dedup))
    if manifest.get("guards"):
        sections.append(("guards", SECTION_TITLES["guards"], _guards(manifest, twin)))
    sections.append(("stats", SECTION_TITLES["stats"], _stats(stats, twin, plots)))
    twin["sections"] = [k for k, _, _ in sections]
    twin["plots"] = plots.names
    page = page_html(f"curate report: {name}", sections)
    return page, plain(twin)


def _header(manifest: dict, twin: dict) -> str:
    accounting = manifest.get("accounting") or {}
    size = manifest.get("size") or {}
    recipe = manifest.get("recipe") or {}
    ok = accounting.get("ok")
    status = ('<span class="ok">ok</span>' if ok else '<span class="failed">FAILED</span>' if ok is False
              else '<span class="muted">not recorded</span>')
    numbers = (f"{fmt_num(accounting.get('records_in'))} in = {fmt_num(accounting.get('records_kept'))} kept + "
               f"{fmt_num(accounting.get('records_rejected'))} rejected")
    tool = manifest.get("tool") or {}
    rows = [
        ("name", esc(manifest.get("name", "?"))),
        ("created", esc(manifest.get("created_at", "–"))),
        ("parents", ", ".join(esc(p) for p in manifest.get("parents") or []) or '<span class="muted">none</span>'),
        ("recipe", esc(recipe.get("name") or "–") + (f' <span class="muted">{esc(recipe.get("description"))}</span>'
                                                     if recipe.get("description") else "")),
        ("fingerprint", f'<code>{esc(manifest.get("fingerprint", "–"))}</code>'),
        ("recipe hash", f'<code>{esc(manifest.get("recipe_hash", "–"))}</code>'),
        ("records", f"{fmt_num(manifest.get('rows'))} kept, {fmt_num(manifest.get('rejected_rows'))} rejected; "
                    f"{fmt_num(size.get('chars'))} characters, {fmt_num(size.get('bytes'))} bytes of text"),
        ("accounting", f"{status} &nbsp; {numbers}"),
    ]
    if manifest.get("run_seconds") is not None:
        rows.append(("run time", f"{fmt_num(manifest.get('run_seconds'))} s"))
    if tool:
        rows.append(("tool", esc(f"{tool.get('name', '')} {tool.get('version', '')}".strip())))
    body = html_table(None, rows, classes="meta")
    failures = accounting.get("failures") or []
    if failures:
        body += "<p class=failed>accounting failures:</p><ul>" + "".join(f"<li>{esc(f)}</li>" for f in failures)
        body += "</ul>"
    twin["header"] = {
        "name": manifest.get("name"), "created_at": manifest.get("created_at"),
        "parents": list(manifest.get("parents") or []), "fingerprint": manifest.get("fingerprint"),
        "recipe_hash": manifest.get("recipe_hash"), "rows": manifest.get("rows"),
        "rejected_rows": manifest.get("rejected_rows"), "chars": size.get("chars"),
        "accounting": {k: accounting.get(k) for k in ("ok", "records_in", "records_kept", "records_rejected",
                                                       "failures") if k in accounting},
    }
    return body


def _funnel(manifest: dict, twin: dict, plots: Plots) -> str:
    steps = [s for s in manifest.get("steps") or [] if isinstance(s, Mapping)]
    out = []
    if not steps:
        twin["steps"] = []
        return '<p class="muted">no steps recorded</p>'
    out.append(plots.img(_funnel_plot(steps), "funnel", "documents kept after each step"))
    rows, twin_steps = [], []
    scoped = any(step.get("scope") for step in steps)
    for step in steps:
        reasons = _by_count(step.get("rejected_by_reason") or {})
        shown = _counts_text(reasons[:TOP_REASONS])
        if len(reasons) > TOP_REASONS:
            shown += f' <span class="muted">+{len(reasons) - TOP_REASONS} more</span>'
        counters = step.get("counters") or {}
        counter_text = _counts_text(counters.items())
        n_in, rejected = step.get("in"), step.get("rejected")
        share = rejected / n_in if is_num(n_in) and is_num(rejected) and n_in else None
        rows.append([esc(step.get("name", "?")), *([esc(step.get("scope") or "all documents")] if scoped else []),
                     fmt_num(n_in), fmt_num(step.get("kept")), fmt_num(rejected), fmt_pct(share), shown, counter_text])
        twin_steps.append({"name": step.get("name"), "in": n_in, "kept": step.get("kept"), "rejected": rejected,
                           "rejected_share": share, "rejected_by_reason": dict(reasons),
                           "counters": dict(counters), "scope": step.get("scope")})
    headers = ["step", *(["applies to"] if scoped else []), "in", "kept", "rejected", "rejected %", "top reasons",
               "counters"]
    out.append(html_table(headers, rows, numeric=tuple(range(2, 6)) if scoped else (1, 2, 3, 4)))
    twin["steps"] = twin_steps
    return "".join(out)


def _reason_counts(manifest: dict) -> dict[str, int]:
    """Reject counts under both `reason` and `step:reason` spellings, for looking up example keys."""
    counts: dict[str, int] = {}
    for step in manifest.get("steps") or []:
        for reason, n in (step.get("rejected_by_reason") or {}).items():
            counts[reason] = counts.get(reason, 0) + n
            if not reason.startswith(f"{step.get('name')}:"):
                counts.setdefault(f"{step.get('name')}:{reason}", n)
    return counts


def _removed_examples(manifest: dict, examples: dict, twin: dict) -> str:
    counts = _reason_counts(manifest)
    out, twin_examples = [], {}
    for reason, docs in sorted(examples.items(), key=lambda kv: (-counts.get(kv[0], 0), kv[0])):
        docs = [d for d in docs or [] if isinstance(d, Mapping)]
        total = counts.get(reason)
        note = f" ({fmt_num(total)} removed)" if total is not None else ""
        out.append(f"<h3><code>{esc(reason)}</code>{note}</h3>")
        for doc in docs:
            label = esc(doc.get("id") or doc.get("where") or "(no id)")
            if doc.get("reason"):
                label += f" — {esc(doc['reason'])}"
            if doc.get("raw"):
                label += " — raw input line"
            out.append(f'<div class="muted">{label}</div>')
            if doc.get("text") is None:
                out.append('<div class="doc removed muted">(no text)</div>')
            else:
                out.append(doc_html(doc.get("text"), cls="removed"))
        twin_examples[reason] = {"removed": total, "ids": [d.get("id") for d in docs]}
    twin["removed_examples"] = twin_examples
    return "".join(out) or '<p class="muted">no examples</p>'


def removed_examples(rejects: Any, per_reason: int = 3, chars: int = TEXT_CHARS) -> dict[str, list[dict]]:
    """`examples` for `version_report` from reject rows (an Arrow table or a list of dicts with id, text, step,
    reason, and optionally raw, source_file, source_line): the first `per_reason` documents of each reason key
    (`step:rule`, as the manifest counts them). An input line that never became a document shows its raw bytes."""
    if hasattr(rejects, "select"):
        wanted = ["id", "text", "step", "reason", "raw", "source_file", "source_line"]
        rejects = rejects.select([c for c in wanted if c in rejects.column_names]).to_pylist()
    out: dict[str, list[dict]] = {}
    for row in rejects:
        key = str(row.get("reason") or "").split("=", 1)[0] or str(row.get("step") or "?")
        bucket = out.setdefault(key, [])
        if len(bucket) >= per_reason:
            continue
        text, raw = row.get("text"), row.get("raw")
        example = {"id": row.get("id"), "text": None if text is None else str(text)[:chars],
                   "reason": row.get("reason")}
        if text is None and raw is not None:
            raw = raw[:chars * 4]
            example["text"] = (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw))[:chars]
            example["raw"] = True
        if row.get("source_file"):
            example["where"] = f"{row['source_file']}:{row.get('source_line') or '?'}"
        bucket.append(example)
    return out


def _guards(manifest: dict, twin: dict) -> str:
    report = manifest["guards"]
    rows = []
    for g in report.get("guards", []):
        if g.get("passed") is None:
            verdict = "not measured" if g.get("value") is None else "not applied"
            cls = "muted"
        elif g["passed"]:
            verdict, cls = "pass", "ok"
        else:
            verdict, cls = ("FAIL (hard)", "failed") if g.get("hard") else ("warn", "failed")
        threshold = f"{esc(g.get('op'))} {fmt_num(g.get('threshold'))}" if g.get("threshold") is not None else ""
        rows.append([esc(g["name"]), fmt_num(g.get("value")), threshold, f'<span class="{cls}">{verdict}</span>',
                     esc(g.get("detail", "")), f'<span class="muted">{esc(g.get("source", ""))}</span>'])
    reference = (report.get("reference") or {}).get("name") or "none"
    intro = (f"<p>{esc(report.get('mix', ''))} mix; human reference: {esc(reference)}; generations: "
             + ", ".join(f"{esc(k)}: {fmt_num(v)}" for k, v in (report.get("generation_histogram") or {}).items())
             + "</p>")
    override = manifest.get("guard_override")
    if override:
        intro += (f'<p class="failed">Published despite failing {esc(", ".join(override["overridden"]))}: '
                  f'{esc(override["reason"])}</p>')
    twin["guards"] = {"passed": report.get("passed"), "failures": report.get("failures"),
                      "override": override}
    return intro + html_table(["guard", "value", "threshold", "verdict", "detail", "source"], rows, numeric=[1])


def _planted(report: dict, twin: dict) -> str:
    rows, twin_classes = [], {}
    for name, entry in (report.get("classes") or {}).items():
        by = _by_count(entry.get("by_step") or {})
        recall = entry.get("recall")
        bar = (f'<span class="bar" style="width:{max(0.0, min(1.0, recall)) * 60:.0f}px"></span>'
               if is_num(recall) else "")
        rows.append([esc(name), fmt_num(entry.get("planted")), fmt_num(entry.get("caught")), bar + fmt_pct(recall, 0),
                     fmt_num(entry.get("kept")), _counts_text(by)])
        twin_classes[name] = {k: entry.get(k) for k in ("planted", "caught", "recall", "kept")}
        twin_classes[name]["by_step"] = dict(by)
    clean = report.get("clean") or {}
    twin_out: dict[str, Any] = {"classes": twin_classes}
    if clean:
        by = _by_count(clean.get("by_step") or {})
        rate = clean.get("false_positive_rate")
        rows.append(Row(["clean text", fmt_num(clean.get("docs")), fmt_num(clean.get("rejected")),
                         f"{fmt_pct(rate)} FP", "", _counts_text(by)], "note"))
        twin_out["clean"] = {"docs": clean.get("docs"), "rejected": clean.get("rejected"),
                             "false_positive_rate": rate, "by_step": dict(by)}
    body = html_table(["defect", "planted", "caught", "recall", "kept", "caught by"], rows, numeric=(1, 2, 3, 4))
    if clean:
        body += _clean_removed(clean, twin_out)
    if report.get("labels"):
        body += f'<p class="muted">labels: <code>{esc(report["labels"])}</code></p>'
    twin["planted_defects"] = twin_out
    return body


def _clean_removed(clean: Mapping, twin_out: dict) -> str:
    """How much clean text the steps removed, overall and by source."""
    body = (f"<p><b>Clean-text false positives:</b> {fmt_num(clean.get('rejected'))} of "
            f"{fmt_num(clean.get('docs'))} clean documents removed ({fmt_pct(clean.get('false_positive_rate'))}).</p>")
    by_source = clean.get("by_source") or {}
    if by_source:
        rows = []
        for source, entry in by_source.items():
            rejected = entry.get("rejected") or {}
            total = sum(v for v in rejected.values() if is_num(v))
            docs = entry.get("docs")
            rows.append([esc(source), fmt_num(docs), fmt_num(total), fmt_pct(total / docs if docs else None),
                         _counts_text(_by_count(rejected))])
        body += "<h3>Clean text removed, by source</h3>"
        body += html_table(["source", "clean docs", "removed", "share", "by step"], rows, numeric=(1, 2, 3))
        twin_out["clean_by_source"] = plain(by_source)
    return body


TWIN_DEDUP_KEYS = ("threshold", "bands", "rows", "num_perm", "shingle_words", "s_curve", "candidate_pairs",
                   "verified_pairs", "rejected_by_verification", "index_bytes_per_doc")


def _dedup(reports: dict, twin: dict, plots: Plots) -> str:
    dup = {n: r for n, r in reports.items() if isinstance(r, Mapping) and "removed" in r and "documents" in r}
    lines = {n: r for n, r in reports.items() if isinstance(r, Mapping) and "boilerplate_units" in r}
    twin_dedup: dict[str, Any] = {}
    out: list[str] = []
    if dup:
        out.append(_dedup_table(dup, twin_dedup))
        out.append(_dedup_plots(dup, plots))
        for name, r in dup.items():
            if isinstance(r.get("kept_over"), Mapping) and r["kept_over"]:
                out.append(_kept_over(name, r))
                twin_dedup[name].update({k: r.get(k) for k in ("kept_over", "decided_by", "keep_policy")})
            examples = [x for x in r.get("examples") or [] if isinstance(x, Mapping)]
            if examples:
                out.append(_dedup_examples(name, examples))
                twin_dedup[name]["examples"] = [{"cluster": x.get("cluster"), "size": x.get("size"),
                                                 "members": [m.get("id") for m in x.get("members") or []]}
                                                for x in examples[:3]]
    for name, r in lines.items():
        out.append(_boilerplate(name, r))
        twin_dedup[name] = {k: r.get(k) for k in ("unit", "min_docs", "documents", "boilerplate_units",
                                                  "boilerplate_occurrences", "documents_with_boilerplate")}
    if twin_dedup:
        twin["dedup"] = twin_dedup
    return "".join(out)


def _dedup_table(dup: dict[str, Mapping], twin_dedup: dict[str, Any]) -> str:
    """One row per deduplication step: its kind, what it removed and how its candidates were verified."""
    rows = []
    for name, r in dup.items():
        docs, removed = r.get("documents") or 0, r.get("removed") or 0
        rate = removed / docs if docs else 0.0
        kind = "near (MinHash)" if "bands" in r else "exact" if "exact" in name else "?"
        against = ", ".join(esc(a) for a in r.get("against") or []) or "–"
        rows.append([esc(name), esc(kind), fmt_num(docs), fmt_num(removed), fmt_pct(rate),
                     fmt_num(r.get("removed_matching_earlier_versions")), against,
                     fmt_num(r.get("candidate_pairs")), fmt_num(r.get("verified_pairs")),
                     fmt_num(r.get("rejected_by_verification"))])
        twin_dedup[name] = {"documents": docs, "removed": removed, "duplicate_rate": rate,
                            "removed_matching_earlier_versions": r.get("removed_matching_earlier_versions"),
                            "cluster_sizes": dict(r.get("cluster_sizes") or {}),
                            **{key: r[key] for key in TWIN_DEDUP_KEYS if key in r}}
    return "<h3>Duplicate rate by kind</h3>" + html_table(
        ["step", "kind", "documents", "removed", "rate", "matching earlier versions", "against", "candidate pairs",
         "verified", "rejected by verification"], rows, numeric=(2, 3, 4, 5, 7, 8, 9))


def _dedup_plots(dup: dict[str, Mapping], plots: Plots) -> str:
    """The cluster-size plot and each MinHash step's S-curve (with its line of numbers), side by side."""
    out, figs = [], []
    sized = {n: r.get("cluster_sizes") or {} for n, r in dup.items() if r.get("cluster_sizes")}
    if sized:
        figs.append(plots.img(_cluster_plot(sized), "cluster_sizes", "duplicate cluster sizes"))
    for name, r in dup.items():
        if "bands" in r and "rows" in r:
            figs.append(plots.img(_s_curve_plot(name, r), f"s_curve:{name}", f"S-curve of {name}"))
            out.append(f"<p><b>{esc(name)}</b>: {fmt_num(r.get('bands'))} bands × {fmt_num(r.get('rows'))} rows "
                       f"({fmt_num(r.get('index_bytes_per_doc'))} B/doc), Jaccard threshold "
                       f"{fmt_num(r.get('threshold'))}; P(candidate) = 1 − (1 − s<sup>r</sup>)<sup>b</sup>: "
                       + ", ".join(f"J={esc(k)} {fmt_pct(v, 0)}" for k, v in (r.get("s_curve") or {}).items())
                       + "</p>")
    if figs:
        out.append('<div class="cluster">' + "".join(f"<div>{f}</div>" for f in figs) + "</div>")
    return "".join(out)


def _kept_over(name: str, r: Mapping) -> str:
    """Whose documents the keep policy kept over whose, per pair of sources, and which criterion decided."""
    pairs = sorted(((n, kept, removed) for kept, by in r["kept_over"].items() if isinstance(by, Mapping)
                    for removed, n in by.items() if is_num(n)), key=lambda p: (-p[0], str(p[1]), str(p[2])))
    total = sum(n for n, _, _ in pairs)
    policy = r.get("keep_policy") if isinstance(r.get("keep_policy"), Mapping) else {}
    origins = " &gt; ".join(esc(o) for o in policy.get("prefer_origins") or []) or "not ranked"
    sources = " &gt; ".join(esc(x) for x in policy.get("prefer_sources") or []) or "not ranked"
    decided = ", ".join(f"{esc(k)} {fmt_num(v)}" for k, v in (r.get("decided_by") or {}).items())
    out = [f"<h3>Kept over: {esc(name)}</h3>",
           f"<p>Keep policy: a document of an earlier version, then origin ({origins}), then source ({sources}; "
           "unlisted sources after), then the higher quality_score, the longer text, the smaller id."
           + (f" Decided by: {decided}." if decided else "") + "</p>"]
    out.append(html_table(["kept (source)", "over (source)", "removals", "share of removals"],
                          ([esc(kept or "(no source)"), esc(removed or "(no source)"), fmt_num(n),
                            fmt_pct(n / total if total else None)] for n, kept, removed in pairs), numeric=(2, 3)))
    return "".join(out)


def _dedup_examples(name: str, examples: list[Mapping]) -> str:
    """Up to three clusters of a step, four members each, the kept one marked."""
    out = [f"<h3>Example clusters: {esc(name)}</h3>"]
    for example in examples[:3]:
        out.append(f'<div class="muted">cluster <code>{esc(example.get("cluster"))}</code>, '
                   f'{fmt_num(example.get("size"))} documents</div><div class="cluster">')
        for member in (example.get("members") or [])[:4]:
            kept = bool(member.get("kept"))
            jaccard = member.get("jaccard")
            label = "kept" if kept else f"removed (J={fmt_num(jaccard, 3)})" if is_num(jaccard) else "removed"
            source = f" ({esc(member.get('source'))})" if member.get("source") else ""
            out.append(f'<div><div class="muted"><code>{esc(member.get("id"))}</code>{source} – {label}</div>'
                       f'{doc_html(member.get("text"), cls="kept" if kept else "removed")}</div>')
        out.append("</div>")
    return "".join(out)


def _boilerplate(name: str, r: Mapping) -> str:
    """A line-dedup step: how many boilerplate units it found, and the most common ones."""
    unit = esc(r.get("unit", "unit"))
    out = [f"<h3>Boilerplate {unit}s: {esc(name)}</h3>",
           f"<p>{fmt_num(r.get('boilerplate_units'))} {unit}s found in at least {fmt_num(r.get('min_docs'))} "
           f"documents ({fmt_num(r.get('boilerplate_occurrences'))} occurrences in "
           f"{fmt_num(r.get('documents_with_boilerplate'))} of {fmt_num(r.get('documents'))} documents).</p>"]
    top = [u for u in r.get("top") or [] if isinstance(u, Mapping)]
    if top:
        out.append(html_table(["documents", "text"], ([fmt_num(u.get("documents")),
                                                        doc_html(u.get("text") or u.get("hash"), 300)]
                                                       for u in top[:10]), numeric=(0,)))
    return "".join(out)


def _cluster_plot(sized: dict[str, dict]) -> Any:
    fig = new_figure(5.4, 3.6)
    ax = fig.add_subplot()
    sizes = sorted({int(k) for s in sized.values() for k in s if str(k).isdigit()})
    width = 0.8 / max(1, len(sized))
    colors = ["#4c78a8", "#f58518", "#54a24b", "#b279a2"]
    for i, (name, counts) in enumerate(sized.items()):
        xs = [j + i * width for j in range(len(sizes))]
        ax.bar(xs, [counts.get(str(s), 0) for s in sizes], width=width, label=mpl_text(name), color=colors[i % 4])
    ax.set_xticks([j + width * (len(sized) - 1) / 2 for j in range(len(sizes))], [str(s) for s in sizes])
    ax.set_xlabel("cluster size (documents)")
    ax.set_ylabel("clusters")
    ax.set_title("duplicate cluster sizes")
    ax.legend(fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def _s_curve_plot(name: str, r: Mapping) -> Any:
    bands, rows = int(r["bands"]), int(r["rows"])
    fig = new_figure(5.4, 3.6)
    ax = fig.add_subplot()
    xs = [i / 200 for i in range(201)]
    ax.plot(xs, [candidate_probability(s, bands, rows) for s in xs], color="#4c78a8",
            label=f"1−(1−s^{rows})^{bands}")
    points = [(float(k), v) for k, v in (r.get("s_curve") or {}).items() if is_num(v)]
    if points:
        ax.scatter([p[0] for p in points], [p[1] for p in points], color="#e45756", zorder=3, label="reported")
    threshold = r.get("threshold")
    if is_num(threshold):
        ax.axvline(threshold, color="#555", linestyle="--", linewidth=1)
        ax.text(threshold, 0.04, f" threshold {threshold:g}", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("Jaccard similarity s")
    ax.set_ylabel("P(candidate pair)")
    ax.set_title(f"{mpl_text(name)}: {bands} bands × {rows} rows")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return fig


# ---- statistics ---------------------------------------------------------------------------------


def _sample_note(stats: dict) -> str:
    sample = stats.get("sample") or {}
    if not sample:
        return "sample size and seed not recorded"
    words = f", at most {fmt_num(sample['words_per_doc'])} words per document" if sample.get("words_per_doc") else ""
    return f"on a sample of {fmt_num(sample.get('size'))} documents, seed {fmt_num(sample.get('seed'))}{words}"


def _quantile_table(quantiles: Mapping, unit: str = "") -> str:
    keys = sorted(quantiles, key=lambda k: float(k))
    return html_table([f"p{esc(k)}" for k in keys], [[fmt_num(quantiles[k]) for k in keys]],
                      numeric=range(len(keys))) + (f'<p class="muted">{esc(unit)}</p>' if unit else "")


@dataclass
class _StatsPage:
    """What every part of the statistics section reads (`stats`, the sample `note`) and adds to (`plots`, the
    section's `twin`)."""

    stats: Mapping[str, Any]
    note: str
    plots: Plots
    twin: dict[str, Any]


def _stats(stats: dict | None, twin: dict, plots: Plots) -> str:
    if not stats:
        twin["stats"] = None
        return '<p class="muted">no statistics for this version (stats.json missing)</p>'
    page = _StatsPage(stats, _sample_note(stats), plots, {"sample": dict(stats.get("sample") or {})})
    out = [f'<p class="muted">Exact counts are over every document; sample-based numbers are marked, '
           f"and were computed {esc(page.note)}.</p>"]
    for part in (_size_part, _length_part, _scores_part, _dup_sizes_part, _lexical_part, _unigrams_part,
                 _semantic_part, _coverage_part, _instructions_part):
        out.append(part(page))
    twin["stats"] = page.twin
    return "".join(out)


def _share(docs: Any, total: int) -> str:
    return fmt_pct((docs or 0) / total if total else None)


def _size_part(page: _StatsPage) -> str:
    size = page.stats.get("size") or {}
    if not size:
        return ""
    tokens = f", {fmt_num(size.get('tokens'))} tokens" if size.get("tokens") is not None else ""
    out = ["<h3>Size</h3>", f"<p>{fmt_num(size.get('docs'))} documents, {fmt_num(size.get('chars'))} characters, "
                            f"{fmt_num(size.get('words'))} words{tokens}.</p>"]
    total = size.get("docs") or 0
    by_source = size.get("by_source") or {}
    if by_source:
        ranked = sorted(by_source.items(), key=lambda kv: -(kv[1].get("docs") or 0))
        rows = ([esc(s), fmt_num(v.get("docs")), _share(v.get("docs"), total), fmt_num(v.get("chars")),
                 fmt_num(v.get("words"))] for s, v in ranked)
        out += ["<h3>By source</h3>", html_table(["source", "docs", "share", "chars", "words"], rows,
                                                 numeric=(1, 2, 3, 4))]
    by_lang = size.get("by_lang") or {}
    if by_lang:
        langs = sorted(by_lang.items(), key=lambda kv: -(kv[1].get("docs") or 0))
        rows = [[esc(k), fmt_num(v.get("docs")), _share(v.get("docs"), total), fmt_num(v.get("chars"))]
                for k, v in langs[:TOP_ROWS]]
        if len(langs) > TOP_ROWS:
            rest = langs[TOP_ROWS:]
            rows.append(Row([f"{len(rest)} more", fmt_num(sum(v.get("docs") or 0 for _, v in rest)), "",
                             fmt_num(sum(v.get("chars") or 0 for _, v in rest))], "note"))
        out += ["<h3>By language</h3>", html_table(["language", "docs", "share", "chars"], rows, numeric=(1, 2, 3))]
    page.twin["size"] = plain(size)
    return "".join(out)


def _length_part(page: _StatsPage) -> str:
    length = page.stats.get("length") or {}
    if not length:
        return ""
    out = ["<h3>Length</h3>"]
    fig = new_figure(9, 3.2)
    ax = fig.add_subplot()
    if hist_plot(ax, length.get("histogram") or {}, log_x=True):
        ax.set_xlabel(f"document length ({mpl_text(length.get('unit', 'chars'))}, log scale)")
        ax.set_ylabel("documents")
        ax.set_title("length distribution (all documents)")
        out.append(page.plots.img(fig, "length", "length histogram"))
    else:
        fig.clear()
    if length.get("quantiles"):
        out.append(_quantile_table(length["quantiles"], f"length quantiles in {length.get('unit', 'chars')}"))
    page.twin["length"] = plain(length)
    return "".join(out)


def _scores_part(page: _StatsPage) -> str:
    dists = page.stats.get("distributions") or {}
    scored = {k: dists[k] for k in ("quality_score", "lang_score") if isinstance(dists.get(k), Mapping)}
    if not scored:
        return ""
    out = ["<h3>Scores</h3>"]
    fig = new_figure(9, 3.0)
    drawn = 0
    for i, (key, dist) in enumerate(scored.items()):
        ax = fig.add_subplot(1, len(scored), i + 1)
        if hist_plot(ax, dist.get("histogram") or {}, color=["#54a24b", "#b279a2"][i % 2]):
            ax.set_title(key)
            ax.set_xlabel(key)
            ax.set_ylabel("documents")
            drawn += 1
    if drawn:
        out.append(page.plots.img(fig, "scores", "quality and language score histograms"))
    else:
        fig.clear()
    for key, dist in scored.items():
        if dist.get("quantiles"):
            out.append(f"<div><b>{esc(key)}</b> quantiles</div>" + _quantile_table(dist["quantiles"]))
    page.twin["distributions"] = plain(scored)
    return "".join(out)


def _dup_sizes_part(page: _StatsPage) -> str:
    sizes = (page.stats.get("distributions") or {}).get("dup_cluster_size")
    if not isinstance(sizes, Mapping) or not sizes:
        return ""
    keys = sorted(sizes, key=lambda k: float(k) if str(k).replace(".", "", 1).isdigit() else math.inf)
    page.twin.setdefault("distributions", {})["dup_cluster_size"] = plain(sizes)
    return "<h3>Duplicate cluster sizes of the kept documents</h3>" + html_table(
        ["size", *[esc(k) for k in keys]], [["documents", *[fmt_num(sizes[k]) for k in keys]]],
        numeric=range(1, len(keys) + 1))


def _lexical_part(page: _StatsPage) -> str:
    lexical = page.stats.get("lexical") or {}
    if not lexical:
        return ""
    page.twin["lexical"] = plain(lexical)
    return ("<h3>Lexical diversity</h3>" + f'<p class="muted">Sample-based: {esc(page.note)} (length-matched).</p>'
            + html_table(["measure", "value"], ([esc(k), fmt_num(v)] for k, v in lexical.items()), numeric=(1,)))


def _unigrams_part(page: _StatsPage) -> str:
    unigrams = page.stats.get("unigrams") or {}
    if not unigrams.get("top"):
        return ""
    top = list(unigrams["top"].items())[:30]
    page.twin["unigrams"] = {"total": unigrams.get("total"), "top": dict(top)}
    return (f"<p><b>Most frequent words</b> (of {fmt_num(unigrams.get('total'))} words, all documents): "
            + ", ".join(f"{esc(w)} {fmt_num(c)}" for w, c in top) + "</p>")


def _semantic_part(page: _StatsPage) -> str:
    semantic = page.stats.get("semantic") or {}
    if not semantic:
        return ""
    body = _semantic(semantic, page.note, page.plots)
    page.twin["semantic"] = plain(semantic)
    return body


def _terms(terms: Any) -> str:
    return esc(", ".join(map(str, terms or [])))


def _coverage_part(page: _StatsPage) -> str:
    coverage = page.stats.get("coverage")
    if not isinstance(coverage, Mapping) or not coverage:
        return ""
    lost = [x for x in coverage.get("lost") or [] if isinstance(x, Mapping)]
    out = ["<h3>Coverage</h3>",
           f"<p>This version covers <b>{fmt_pct(coverage.get('covered_share'))}</b> of the semantic clusters "
           f"of <code>{esc(coverage.get('reference'))}</code> (by that version's document share); "
           f"{len(lost)} cluster(s) lost. Sample-based: {esc(page.note)}.</p>"]
    if lost:
        out.append(html_table(["cluster", "share in reference", "top terms"],
                              ([fmt_num(x.get("id")), fmt_pct(x.get("share_in_reference")), _terms(x.get("top_terms"))]
                               for x in lost), numeric=(0, 1)))
    page.twin["coverage"] = plain(coverage)
    return "".join(out)


def _instructions_part(page: _StatsPage) -> str:
    instructions = page.stats.get("instructions")
    if not isinstance(instructions, Mapping) or not instructions:
        return ""
    types = _by_count(instructions.get("task_types") or {})
    out = ["<h3>Instruction task types</h3>",
           f"<p>{fmt_num(instructions.get('docs'))} instruction documents, "
           f"{fmt_num(instructions.get('distinct_task_types'))} distinct task types (verb + object).</p>"]
    if types:
        total = sum(v for _, v in types) or 1
        out.append(html_table(["task type", "documents", "share"],
                              ([esc(k), fmt_num(v), fmt_pct(v / total)] for k, v in types[:TOP_ROWS]), numeric=(1, 2)))
    for key in ("input_chars", "output_chars"):
        quantiles = (instructions.get(key) or {}).get("quantiles")
        if quantiles:
            out.append(f"<div><b>{esc(key.replace('_', ' '))}</b></div>" + _quantile_table(quantiles))
    page.twin["instructions"] = plain(instructions)
    return "".join(out)


def _semantic(semantic: Mapping, note: str, plots: Plots) -> str:
    out = ["<h3>Semantic clusters</h3>"]
    clusters = [c for c in semantic.get("clusters") or [] if isinstance(c, Mapping)]
    method = (f"{esc(semantic.get('method', '?'))}, {fmt_num(semantic.get('features'))} hashed features, "
              f"{fmt_num(semantic.get('dims'))} dimensions, k = {fmt_num(semantic.get('k'))}, "
              f"seed {fmt_num(semantic.get('seed'))}")
    out.append(f"<p>Cluster entropy <b>{fmt_num(semantic.get('cluster_entropy'))}</b> over {len(clusters)} clusters; "
               f"Vendi score <b>{fmt_num(semantic.get('vendi_score'))}</b> "
               f"(on {fmt_num(semantic.get('vendi_sample'))} documents, seed {fmt_num(semantic.get('seed'))}). "
               f'<span class="muted">{method}; sample-based: {esc(note)}.</span></p>')
    if clusters:
        ordered = sorted(clusters, key=lambda c: -(c.get("share") or 0))
        fig = new_figure(9, max(2.4, 0.28 * len(ordered) + 1.0))
        ax = fig.add_subplot()
        labels = [mpl_text(f"{c.get('id')}: {' '.join(map(str, (c.get('top_terms') or [])[:3]))}", 36) for c in ordered]
        ax.barh(range(len(ordered)), [c.get("share") or 0 for c in ordered], color="#4c78a8")
        ax.set_yticks(range(len(ordered)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("share of documents")
        ax.set_title("semantic cluster shares")
        ax.spines[["top", "right"]].set_visible(False)
        out.append(plots.img(fig, "semantic_clusters", "semantic cluster shares"))
        out.append(html_table(["cluster", "size", "share", "top terms"],
                              ([fmt_num(c.get("id")), fmt_num(c.get("size")), fmt_pct(c.get("share")),
                                _terms(c.get("top_terms"))] for c in ordered), numeric=(0, 1, 2)))
    return "".join(out)


# ---- diff report --------------------------------------------------------------------------------


def _delta_class(value: Any) -> str:
    if not is_num(value) or value == 0 or (isinstance(value, float) and math.isnan(value)):
        return "zero"
    return "up" if value > 0 else "down"


def _signed(value: Any, pct: bool = False) -> str:
    if not is_num(value) or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if value == 0:
        return "0.0%" if pct else "0"
    if pct:
        return f"{value * 100:+.1f}%"
    if isinstance(value, int):
        return f"{value:+,}"
    return f"{value:+.4g}"


def _lineage(lineage: Any) -> str:
    if lineage is None or lineage == {} or lineage == []:
        return '<span class="muted">not recorded</span>'
    if isinstance(lineage, Mapping):
        return "; ".join(f"{esc(k)}: {_lineage(v) if isinstance(v, (Mapping, list)) else esc(v)}"
                         for k, v in lineage.items())
    if isinstance(lineage, (list, tuple)):
        return " → ".join(_lineage(v) if isinstance(v, (Mapping, list)) else esc(v) for v in lineage)
    return esc(lineage)


def _example_doc(doc: Any) -> str:
    if not isinstance(doc, Mapping):
        return doc_html(doc)
    head = f'<div class="muted"><code>{esc(doc.get("id", "?"))}</code></div>'
    if "text" in doc:
        return head + doc_html(doc.get("text"))
    if "a" in doc or "b" in doc:  # a changed document: both texts side by side
        return head + ('<div class="cluster"><div>a' + doc_html(doc.get("a"), cls="removed") + "</div><div>b"
                       + doc_html(doc.get("b"), cls="kept") + "</div></div>")
    return head


DISTANCE_LABELS = {"unigram_js": "unigram Jensen-Shannon divergence",
                   "length_ks": "length Kolmogorov-Smirnov statistic"}


def diff_report(diff: dict) -> tuple[str, dict]:
    """(HTML page, JSON twin) of a version diff; every key is optional."""
    diff = diff or {}
    a, b = diff.get("a", "a"), diff.get("b", "b")
    a_name = a.get("name", "a") if isinstance(a, Mapping) else a
    b_name = b.get("name", "b") if isinstance(b, Mapping) else b
    twin: dict[str, Any] = {"kind": "diff_report", "a": plain(a), "b": plain(b)}
    header = html_table(None, [("a", esc(a_name)), ("b", esc(b_name)), ("lineage", _lineage(diff.get("lineage")))],
                        classes="meta")
    twin["lineage"] = plain(diff.get("lineage"))
    bodies = {"header": header, "counts": _diff_counts(diff, twin), "reasons": _diff_reasons(diff, twin),
              "examples": _diff_examples(diff, twin), "stats": _diff_stats(diff, a_name, b_name, twin),
              "distances": _diff_distances(diff, twin)}
    sections = [(key, DIFF_SECTION_TITLES[key], body) for key, body in bodies.items() if body is not None]
    twin["sections"] = [k for k, _, _ in sections]
    page = page_html(f"curate diff: {a_name} → {b_name}", sections)
    return page, plain(twin)


def _diff_counts(diff: Mapping, twin: dict) -> str:
    counts = diff.get("counts") or {}
    if not isinstance(counts, Mapping):
        counts = {}
    order = [k for k in ("added", "removed", "changed", "unchanged") if k in counts]
    order += [k for k in counts if k not in order]
    rows = [[esc(k), fmt_num(counts[k])] for k in order]
    twin["counts"] = plain(dict(counts))
    return html_table(["documents", "count"], rows, numeric=(1,)) if rows else '<p class="muted">no counts</p>'


def _example_id(doc: Any) -> Any:
    return doc.get("id") if isinstance(doc, Mapping) else doc


def _diff_reasons(diff: Mapping, twin: dict) -> str | None:
    """Removals by step and reason, with up to three examples each (None: no removals listed)."""
    reasons = [r for r in diff.get("removals_by_reason") or [] if isinstance(r, Mapping)]
    if not reasons:
        return None
    parts = [html_table(["step", "applies to", "reason", "count"],
                        ([esc(r.get("step", "")), esc(r.get("scope") or "all documents"), esc(r.get("reason", "")),
                          fmt_num(r.get("count"))] for r in reasons), numeric=(3,))]
    for r in reasons:
        docs = r.get("examples") or []
        if docs:
            parts.append(f"<h3><code>{esc(r.get('step', ''))}</code> {esc(r.get('reason', ''))}</h3>")
            parts.extend(_example_doc(d) for d in docs[:3])
    twin["removals_by_reason"] = [{"step": r.get("step"), "scope": r.get("scope"), "reason": r.get("reason"),
                                   "count": r.get("count"),
                                   "examples": [_example_id(d) for d in r.get("examples") or []]} for r in reasons]
    return "".join(parts)


def _diff_examples(diff: Mapping, twin: dict) -> str | None:
    """Up to five documents of each kind of change (None: no examples)."""
    examples = diff.get("examples") or {}
    if not isinstance(examples, Mapping) or not any(examples.values()):
        return None
    parts = []
    for kind, docs in examples.items():
        if docs:
            parts.append(f"<h3>{esc(kind)}</h3>")
            parts.extend(_example_doc(d) for d in list(docs)[:5])
    twin["examples"] = {k: [_example_id(d) for d in v or []] for k, v in examples.items()}
    return "".join(parts)


def _diff_stats(diff: Mapping, a_name: Any, b_name: Any, twin: dict) -> str | None:
    """Each statistic in both versions with its change, coloured by direction (None: no statistics)."""
    stats = diff.get("stats") or {}
    if not isinstance(stats, Mapping) or not stats:
        return None
    rows, twin_stats = [], {}
    for path, entry in stats.items():
        entry = entry if isinstance(entry, Mapping) else {"b": entry}
        va, vb = entry.get("a"), entry.get("b")
        delta = entry.get("delta")
        if delta is None and is_num(va) and is_num(vb):
            delta = vb - va
        rel = entry.get("rel")
        if rel is None and is_num(delta) and is_num(va) and va:
            rel = delta / abs(va)
        cls = _delta_class(delta)
        rel_cls = _delta_class(rel if is_num(rel) else delta)
        rows.append([f"<code>{esc(path)}</code>", fmt_num(va), fmt_num(vb),
                     f'<span class="{cls}">{_signed(delta)}</span>',
                     f'<span class="{rel_cls}">{_signed(rel, pct=True)}</span>'])
        twin_stats[path] = {"a": va, "b": vb, "delta": delta, "rel": rel, "direction": cls}
    twin["stats"] = plain(twin_stats)
    return html_table(["statistic", esc(a_name), esc(b_name), "delta", "relative"], rows, numeric=(1, 2, 3, 4))


def _diff_distances(diff: Mapping, twin: dict) -> str | None:
    distances = diff.get("distances") or {}
    if not isinstance(distances, Mapping) or not distances:
        return None
    rows = [[esc(DISTANCE_LABELS.get(k, k)), fmt_num(v)] for k, v in distances.items()]
    twin["distances"] = plain(dict(distances))
    return (html_table(["distance", "value"], rows, numeric=(1,))
            + '<p class="muted">0 means identical distributions.</p>')


# ---- writing ------------------------------------------------------------------------------------


def diff_report_input(diff: dict) -> dict:
    """`curation.diff.diff_versions` output in the shape `diff_report` renders."""
    def examples(part: dict) -> list[dict]:
        out = []
        for e in part.get("examples", []):
            if "a_text" in e:  # a changed document: both sides
                out.append({"id": e["id"], "a": e.get("a_text", ""), "b": e.get("b_text", "")})
            else:
                out.append({"id": e.get("id"), "text": e.get("text", "")})
        return out

    stats = diff.get("stats") or {}
    return {
        "a": diff.get("a"), "b": diff.get("b"), "lineage": diff.get("lineage"),
        "counts": {k: (diff[k]["count"] if isinstance(diff.get(k), dict) else diff.get(k, 0))
                   for k in ("added", "removed", "changed", "unchanged")},
        "examples": {k: examples(diff.get(k) or {}) for k in ("added", "removed", "changed")},
        "removals_by_reason": [{"step": r.get("step"), "scope": r.get("scope"), "reason": r.get("reason"),
                                "count": r.get("count", 0),
                                "examples": [{"id": e.get("id"), "text": e.get("text", "")}
                                             for e in r.get("examples", [])]}
                               for r in (diff.get("removed") or {}).get("by_reason", [])],
        "stats": stats.get("metrics", {}),
        "distances": {k: (stats.get(k) or {}).get("value") for k in ("unigram_js", "length_ks")},
        "notes": list(diff.get("notes", [])) + list(stats.get("notes", [])),
    }

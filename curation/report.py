"""Self-contained HTML reports of a version (and of the difference between two versions).

`version_report(manifest, stats)` and `diff_report(diff)` each return `(html, twin)`: one HTML page
with inline CSS and the plots embedded as base64 PNGs (no external assets, no JavaScript), and a
JSON-ready dict holding the same numbers the page shows. `write_report` stores both next to each
other, atomically, on any fsspec filesystem.

Every string that comes from data (ids, texts, reasons, terms, sources) is HTML-escaped; the
renderers read the manifest and the statistics defensively, so that an older manifest, or one
without planted defects, deduplication or statistics, still renders.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

DPI = 90
TEXT_CHARS = 600  # characters of a document shown in examples
TOP_REASONS = 5
TOP_ROWS = 20  # rows of long tables (languages, task types)

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#1d2330;background:#fff;margin:0}
main{max-width:1150px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:1.6em;margin:.4em 0 .2em}h2{font-size:1.3em;margin:1.6em 0 .4em;border-bottom:2px solid #dde3ec;
padding-bottom:.2em}h3{font-size:1.05em;margin:1.2em 0 .3em}
table{border-collapse:collapse;margin:.4em 0 .8em;font-size:.88em}
th,td{border:1px solid #d5dbe5;padding:3px 8px;vertical-align:top;text-align:left}
th{background:#f1f4f9}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.note td{font-style:italic;background:#fafbfd}
.meta td:first-child{font-weight:600;background:#f7f9fc}
code,.mono{font-family:"SFMono-Regular",Consolas,"Liberation Mono",monospace;font-size:.9em}
.ok{color:#0a7d32;font-weight:600}.failed{color:#b3261e;font-weight:600}
.up{color:#0a7d32;font-weight:600}.down{color:#b3261e;font-weight:600}.zero{color:#7a8290}
.muted{color:#6b7380;font-size:.9em}
.plot{max-width:100%;height:auto;display:block;margin:.4em 0}
.toc{font-size:.9em;columns:3}.toc a{color:#2457a6;text-decoration:none}
.doc{white-space:pre-wrap;word-break:break-word;font-family:"SFMono-Regular",Consolas,monospace;font-size:.8em;
background:#f7f8fa;border:1px solid #e1e5ec;border-radius:4px;padding:6px 8px;margin:.3em 0}
.cluster{display:flex;gap:10px;margin:.4em 0 1em}.cluster>div{flex:1 1 0;min-width:0}
.kept{border-left:4px solid #0a7d32}.removed{border-left:4px solid #b3261e}
.bar{display:inline-block;height:.7em;background:#4c78a8;vertical-align:middle;margin-right:4px}
"""

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


# ---- formatting ---------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _num(value: Any, digits: int = 4) -> str:
    """Thousands separators for integers, `digits` significant digits for floats, a dash for nothing."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value.is_integer() and abs(value) >= 1e4:
            return f"{int(value):,}"
        return f"{value:.{digits}g}"
    return _e(value)


def _pct(value: Any, digits: int = 1) -> str:
    if not _is_num(value) or math.isnan(value):
        return "–"
    return f"{value * 100:.{digits}f}%"


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars and arrays become Python numbers and lists, NaN and inf become None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON
    return value


def _table(headers: Iterable[str] | None, rows: Iterable[Iterable[str]], numeric: Iterable[int] = (),
           classes: str = "") -> str:
    """An HTML table; cells are already-escaped HTML, `numeric` column indexes are right-aligned."""
    numeric = set(numeric)
    head = "".join(f'<th{" class=n" if i in numeric else ""}>{h}</th>' for i, h in enumerate(headers or []))
    head = f"<thead><tr>{head}</tr></thead>" if headers is not None else ""
    body = []
    for row in rows:
        cls = ""
        if isinstance(row, _Row):
            cls, row = f' class="{row.cls}"', row.cells
        body.append(f"<tr{cls}>" + "".join(f'<td{" class=n" if i in numeric else ""}>{c}</td>'
                                           for i, c in enumerate(row)) + "</tr>")
    cls = f' class="{classes}"' if classes else ""
    return f"<table{cls}>{head}<tbody>{''.join(body)}</tbody></table>"


class _Row:
    def __init__(self, cells: list[str], cls: str):
        self.cells, self.cls = cells, cls


def _doc(text: Any, chars: int = TEXT_CHARS, cls: str = "") -> str:
    text = "" if text is None else str(text)
    if text and not text.strip():
        return f'<div class="doc {cls}"><span class="muted">(white space only: {_e(repr(text[:chars]))})</span></div>'
    more = f' <span class="muted">… ({len(text):,} chars)</span>' if len(text) > chars else ""
    shown = _e(text[:chars]).replace("\x00", "\\x00")  # a NUL byte would not show
    return f'<div class="doc {cls}">{shown}{more}</div>'


def _section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{_e(title)}</h2>{body}</section>'


def _page(title: str, sections: list[tuple[str, str, str]], intro: str = "") -> str:
    toc = "".join(f'<li><a href="#{k}">{_e(t)}</a></li>' for k, t, _ in sections)
    body = "".join(_section(k, t, b) for k, t, b in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>{_e(title)}</h1>{intro}<ul class=\"toc\">{toc}</ul>{body}</main></body></html>\n")


# ---- plots --------------------------------------------------------------------------------------


def _mpl(text: Any, limit: int = 40) -> str:
    """A label safe for matplotlib (no mathtext), shortened."""
    text = str(text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def _figure(width: float = 9.0, height: float = 4.0, **kwargs):
    from matplotlib.figure import Figure  # no pyplot: no global figure registry, nothing left open

    return Figure(figsize=(width, height), dpi=DPI, **kwargs)


def _png(fig) -> str:
    """The figure as an <img> with a base64 PNG; the figure is cleared and released."""
    buffer = io.BytesIO()
    try:
        fig.tight_layout()
    except Exception:  # a layout that does not converge is still a usable plot
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing glyphs for some scripts
        fig.savefig(buffer, format="png", dpi=DPI)
    fig.clear()
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return data


class _Plots:
    """Collects the plots of a page, so the twin can list them."""

    def __init__(self):
        self.names: list[str] = []

    def img(self, fig, name: str, alt: str) -> str:
        data = _png(fig)
        self.names.append(name)
        return f'<img class="plot" alt="{_e(alt)}" data-plot="{_e(name)}" src="data:image/png;base64,{data}">'


def _funnel_plot(steps: list[dict]) -> Any:
    fig = _figure(9.5, max(2.2, 0.42 * len(steps) + 1.2))
    ax = fig.add_subplot()
    names = [_mpl(s.get("name", "?"), 28) for s in steps]
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


def _hist_plot(ax, histogram: Mapping, *, log_x: bool = False, color: str = "#4c78a8") -> bool:
    edges = list(histogram.get("edges") or [])
    counts = list(histogram.get("counts") or [])
    if len(edges) != len(counts) + 1 or not counts:
        return False
    if log_x:
        edges = [max(e, 0.5) for e in edges]
    ax.stairs(counts, edges, fill=True, color=color, alpha=0.85)
    if log_x and edges[-1] > edges[0] > 0:
        ax.set_xscale("log")
    ax.spines[["top", "right"]].set_visible(False)
    return True


def candidate_probability(s: float, bands: int, rows: int) -> float:
    """P(two documents with Jaccard s share at least one of `bands` bands of `rows` rows)."""
    return 1.0 - (1.0 - s ** rows) ** bands


# ---- version report -----------------------------------------------------------------------------


def version_report(manifest: dict, stats: dict | None, *, examples: dict | None = None) -> tuple[str, dict]:
    """(HTML page, JSON twin) of one version: what made it, what each step did, what it holds."""
    manifest = manifest or {}
    plots = _Plots()
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
    page = _page(f"curate report: {name}", sections)
    return page, _plain(twin)


def _header(manifest: dict, twin: dict) -> str:
    accounting = manifest.get("accounting") or {}
    size = manifest.get("size") or {}
    recipe = manifest.get("recipe") or {}
    ok = accounting.get("ok")
    status = ('<span class="ok">ok</span>' if ok else '<span class="failed">FAILED</span>' if ok is False
              else '<span class="muted">not recorded</span>')
    numbers = (f"{_num(accounting.get('records_in'))} in = {_num(accounting.get('records_kept'))} kept + "
               f"{_num(accounting.get('records_rejected'))} rejected")
    tool = manifest.get("tool") or {}
    rows = [
        ("name", _e(manifest.get("name", "?"))),
        ("created", _e(manifest.get("created_at", "–"))),
        ("parents", ", ".join(_e(p) for p in manifest.get("parents") or []) or '<span class="muted">none</span>'),
        ("recipe", _e(recipe.get("name") or "–") + (f' <span class="muted">{_e(recipe.get("description"))}</span>'
                                                    if recipe.get("description") else "")),
        ("fingerprint", f'<code>{_e(manifest.get("fingerprint", "–"))}</code>'),
        ("recipe hash", f'<code>{_e(manifest.get("recipe_hash", "–"))}</code>'),
        ("records", f"{_num(manifest.get('rows'))} kept, {_num(manifest.get('rejected_rows'))} rejected; "
                    f"{_num(size.get('chars'))} characters, {_num(size.get('bytes'))} bytes of text"),
        ("accounting", f"{status} &nbsp; {numbers}"),
    ]
    if manifest.get("run_seconds") is not None:
        rows.append(("run time", f"{_num(manifest.get('run_seconds'))} s"))
    if tool:
        rows.append(("tool", _e(f"{tool.get('name', '')} {tool.get('version', '')}".strip())))
    body = _table(None, rows, classes="meta")
    failures = accounting.get("failures") or []
    if failures:
        body += "<p class=failed>accounting failures:</p><ul>" + "".join(f"<li>{_e(f)}</li>" for f in failures)
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


def _funnel(manifest: dict, twin: dict, plots: _Plots) -> str:
    steps = [s for s in manifest.get("steps") or [] if isinstance(s, Mapping)]
    out = []
    if not steps:
        twin["steps"] = []
        return '<p class="muted">no steps recorded</p>'
    out.append(plots.img(_funnel_plot(steps), "funnel", "documents kept after each step"))
    rows, twin_steps = [], []
    for step in steps:
        reasons = sorted((step.get("rejected_by_reason") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{_e(k)} {_num(v)}" for k, v in reasons[:TOP_REASONS])
        if len(reasons) > TOP_REASONS:
            shown += f' <span class="muted">+{len(reasons) - TOP_REASONS} more</span>'
        counters = step.get("counters") or {}
        counter_text = ", ".join(f"{_e(k)} {_num(v)}" for k, v in counters.items())
        n_in, rejected = step.get("in"), step.get("rejected")
        share = rejected / n_in if _is_num(n_in) and _is_num(rejected) and n_in else None
        rows.append([_e(step.get("name", "?")), _num(n_in), _num(step.get("kept")), _num(rejected), _pct(share),
                     shown, counter_text])
        twin_steps.append({"name": step.get("name"), "in": n_in, "kept": step.get("kept"), "rejected": rejected,
                           "rejected_share": share, "rejected_by_reason": dict(reasons),
                           "counters": dict(counters)})
    out.append(_table(["step", "in", "kept", "rejected", "rejected %", "top reasons", "counters"], rows,
                      numeric=(1, 2, 3, 4)))
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
        note = f" ({_num(total)} removed)" if total is not None else ""
        out.append(f"<h3><code>{_e(reason)}</code>{note}</h3>")
        for doc in docs:
            label = _e(doc.get("id") or doc.get("where") or "(no id)")
            if doc.get("reason"):
                label += f" — {_e(doc['reason'])}"
            if doc.get("raw"):
                label += " — raw input line"
            out.append(f'<div class="muted">{label}</div>')
            if doc.get("text") is None:
                out.append('<div class="doc removed muted">(no text)</div>')
            else:
                out.append(_doc(doc.get("text"), cls="removed"))
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
        threshold = f"{_e(g.get('op'))} {_num(g.get('threshold'))}" if g.get("threshold") is not None else ""
        rows.append([_e(g["name"]), _num(g.get("value")), threshold, f'<span class="{cls}">{verdict}</span>',
                     _e(g.get("detail", "")), f'<span class="muted">{_e(g.get("source", ""))}</span>'])
    reference = (report.get("reference") or {}).get("name") or "none"
    intro = (f"<p>{_e(report.get('mix', ''))} mix; human reference: {_e(reference)}; generations: "
             + ", ".join(f"{_e(k)}: {_num(v)}" for k, v in (report.get("generation_histogram") or {}).items())
             + "</p>")
    override = manifest.get("guard_override")
    if override:
        intro += (f'<p class="failed">Published despite failing {_e(", ".join(override["overridden"]))}: '
                  f'{_e(override["reason"])}</p>')
    twin["guards"] = {"passed": report.get("passed"), "failures": report.get("failures"),
                      "override": override}
    return intro + _table(["guard", "value", "threshold", "verdict", "detail", "source"], rows, numeric=[1])


def _planted(report: dict, twin: dict) -> str:
    classes = report.get("classes") or {}
    rows, twin_classes = [], {}
    for name, entry in classes.items():
        by = sorted((entry.get("by_step") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
        recall = entry.get("recall")
        bar = (f'<span class="bar" style="width:{max(0.0, min(1.0, recall)) * 60:.0f}px"></span>'
               if _is_num(recall) else "")
        rows.append([_e(name), _num(entry.get("planted")), _num(entry.get("caught")), bar + _pct(recall, 0),
                     _num(entry.get("kept")), ", ".join(f"{_e(k)} {_num(v)}" for k, v in by)])
        twin_classes[name] = {k: entry.get(k) for k in ("planted", "caught", "recall", "kept")}
        twin_classes[name]["by_step"] = dict(by)
    clean = report.get("clean") or {}
    twin_out: dict[str, Any] = {"classes": twin_classes}
    if clean:
        by = sorted((clean.get("by_step") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
        rate = clean.get("false_positive_rate")
        rows.append(_Row(["clean text", _num(clean.get("docs")), _num(clean.get("rejected")),
                          f"{_pct(rate)} FP", "", ", ".join(f"{_e(k)} {_num(v)}" for k, v in by)], "note"))
        twin_out["clean"] = {"docs": clean.get("docs"), "rejected": clean.get("rejected"),
                             "false_positive_rate": rate, "by_step": dict(by)}
    body = _table(["defect", "planted", "caught", "recall", "kept", "caught by"], rows, numeric=(1, 2, 3, 4))
    if clean:
        body += (f"<p><b>Clean-text false positives:</b> {_num(clean.get('rejected'))} of {_num(clean.get('docs'))} "
                 f"clean documents removed ({_pct(clean.get('false_positive_rate'))}).</p>")
        by_source = clean.get("by_source") or {}
        if by_source:
            srows = []
            for source, entry in by_source.items():
                rejected = entry.get("rejected") or {}
                total = sum(v for v in rejected.values() if _is_num(v))
                docs = entry.get("docs")
                srows.append([_e(source), _num(docs), _num(total), _pct(total / docs if docs else None),
                              ", ".join(f"{_e(k)} {_num(v)}" for k, v in sorted(rejected.items(),
                                                                             key=lambda kv: (-kv[1], kv[0])))])
            body += "<h3>Clean text removed, by source</h3>"
            body += _table(["source", "clean docs", "removed", "share", "by step"], srows, numeric=(1, 2, 3))
            twin_out["clean_by_source"] = _plain(by_source)
    if report.get("labels"):
        body += f'<p class="muted">labels: <code>{_e(report["labels"])}</code></p>'
    twin["planted_defects"] = twin_out
    return body


def _dedup(reports: dict, twin: dict, plots: _Plots) -> str:
    out: list[str] = []
    dup = {n: r for n, r in reports.items() if isinstance(r, Mapping) and "removed" in r and "documents" in r}
    lines = {n: r for n, r in reports.items() if isinstance(r, Mapping) and "boilerplate_units" in r}
    twin_dedup: dict[str, Any] = {}
    if dup:
        rows = []
        for name, r in dup.items():
            docs, removed = r.get("documents") or 0, r.get("removed") or 0
            rate = removed / docs if docs else 0.0
            kind = "near (MinHash)" if "bands" in r else "exact" if "exact" in name else "?"
            against = ", ".join(_e(a) for a in r.get("against") or []) or "–"
            rows.append([_e(name), _e(kind), _num(docs), _num(removed), _pct(rate),
                         _num(r.get("removed_matching_earlier_versions")), against,
                         _num(r.get("candidate_pairs")), _num(r.get("verified_pairs")),
                         _num(r.get("rejected_by_verification"))])
            twin_dedup[name] = {"documents": docs, "removed": removed, "duplicate_rate": rate,
                                "removed_matching_earlier_versions": r.get("removed_matching_earlier_versions"),
                                "cluster_sizes": dict(r.get("cluster_sizes") or {})}
            for key in ("threshold", "bands", "rows", "num_perm", "shingle_words", "s_curve", "candidate_pairs",
                        "verified_pairs", "rejected_by_verification", "index_bytes_per_doc"):
                if key in r:
                    twin_dedup[name][key] = r[key]
        out.append("<h3>Duplicate rate by kind</h3>")
        out.append(_table(["step", "kind", "documents", "removed", "rate", "matching earlier versions", "against",
                           "candidate pairs", "verified", "rejected by verification"], rows,
                          numeric=(2, 3, 4, 5, 7, 8, 9)))
        sized = {n: r.get("cluster_sizes") or {} for n, r in dup.items() if r.get("cluster_sizes")}
        figs = []
        if sized:
            figs.append(plots.img(_cluster_plot(sized), "cluster_sizes", "duplicate cluster sizes"))
        for name, r in dup.items():
            if "bands" in r and "rows" in r:
                figs.append(plots.img(_s_curve_plot(name, r), f"s_curve:{name}", f"S-curve of {name}"))
                out_line = (f"<p><b>{_e(name)}</b>: {_num(r.get('bands'))} bands × {_num(r.get('rows'))} rows "
                            f"({_num(r.get('index_bytes_per_doc'))} B/doc), Jaccard threshold "
                            f"{_num(r.get('threshold'))}; P(candidate) = 1 − (1 − s<sup>r</sup>)<sup>b</sup>: "
                            + ", ".join(f"J={_e(k)} {_pct(v, 0)}" for k, v in (r.get("s_curve") or {}).items())
                            + "</p>")
                out.append(out_line)
        if figs:
            out.append('<div class="cluster">' + "".join(f"<div>{f}</div>" for f in figs) + "</div>")
        for name, r in dup.items():
            examples = [x for x in r.get("examples") or [] if isinstance(x, Mapping)]
            if not examples:
                continue
            out.append(f"<h3>Example clusters: {_e(name)}</h3>")
            for example in examples[:3]:
                out.append(f'<div class="muted">cluster <code>{_e(example.get("cluster"))}</code>, '
                           f'{_num(example.get("size"))} documents</div><div class="cluster">')
                for member in (example.get("members") or [])[:4]:
                    kept = bool(member.get("kept"))
                    jaccard = member.get("jaccard")
                    label = "kept" if kept else f"removed (J={_num(jaccard, 3)})" if _is_num(jaccard) else "removed"
                    out.append(f'<div><div class="muted"><code>{_e(member.get("id"))}</code> – {label}</div>'
                               f'{_doc(member.get("text"), cls="kept" if kept else "removed")}</div>')
                out.append("</div>")
            twin_dedup[name]["examples"] = [{"cluster": x.get("cluster"), "size": x.get("size"),
                                             "members": [m.get("id") for m in x.get("members") or []]}
                                            for x in examples[:3]]
    for name, r in lines.items():
        out.append(f"<h3>Boilerplate {_e(r.get('unit', 'unit'))}s: {_e(name)}</h3>")
        out.append(f"<p>{_num(r.get('boilerplate_units'))} {_e(r.get('unit', 'unit'))}s found in at least "
                   f"{_num(r.get('min_docs'))} documents ({_num(r.get('boilerplate_occurrences'))} occurrences in "
                   f"{_num(r.get('documents_with_boilerplate'))} of {_num(r.get('documents'))} documents).</p>")
        top = [u for u in r.get("top") or [] if isinstance(u, Mapping)]
        if top:
            out.append(_table(["documents", "text"], ([_num(u.get("documents")),
                                                       _doc(u.get("text") or u.get("hash"), 300)] for u in top[:10]),
                              numeric=(0,)))
        twin_dedup[name] = {k: r.get(k) for k in ("unit", "min_docs", "documents", "boilerplate_units",
                                                  "boilerplate_occurrences", "documents_with_boilerplate")}
    if twin_dedup:
        twin["dedup"] = twin_dedup
    return "".join(out)


def _cluster_plot(sized: dict[str, dict]) -> Any:
    fig = _figure(5.4, 3.6)
    ax = fig.add_subplot()
    sizes = sorted({int(k) for s in sized.values() for k in s if str(k).isdigit()})
    width = 0.8 / max(1, len(sized))
    colors = ["#4c78a8", "#f58518", "#54a24b", "#b279a2"]
    for i, (name, counts) in enumerate(sized.items()):
        xs = [j + i * width for j in range(len(sizes))]
        ax.bar(xs, [counts.get(str(s), 0) for s in sizes], width=width, label=_mpl(name), color=colors[i % 4])
    ax.set_xticks([j + width * (len(sized) - 1) / 2 for j in range(len(sizes))], [str(s) for s in sizes])
    ax.set_xlabel("cluster size (documents)")
    ax.set_ylabel("clusters")
    ax.set_title("duplicate cluster sizes")
    ax.legend(fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def _s_curve_plot(name: str, r: Mapping) -> Any:
    bands, rows = int(r["bands"]), int(r["rows"])
    fig = _figure(5.4, 3.6)
    ax = fig.add_subplot()
    xs = [i / 200 for i in range(201)]
    ax.plot(xs, [candidate_probability(s, bands, rows) for s in xs], color="#4c78a8",
            label=f"1−(1−s^{rows})^{bands}")
    points = [(float(k), v) for k, v in (r.get("s_curve") or {}).items() if _is_num(v)]
    if points:
        ax.scatter([p[0] for p in points], [p[1] for p in points], color="#e45756", zorder=3, label="reported")
    threshold = r.get("threshold")
    if _is_num(threshold):
        ax.axvline(threshold, color="#555", linestyle="--", linewidth=1)
        ax.text(threshold, 0.04, f" threshold {threshold:g}", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("Jaccard similarity s")
    ax.set_ylabel("P(candidate pair)")
    ax.set_title(f"{_mpl(name)}: {bands} bands × {rows} rows")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return fig


# ---- statistics ---------------------------------------------------------------------------------


def _sample_note(stats: dict) -> str:
    sample = stats.get("sample") or {}
    if not sample:
        return "sample size and seed not recorded"
    words = f", at most {_num(sample['words_per_doc'])} words per document" if sample.get("words_per_doc") else ""
    return f"on a sample of {_num(sample.get('size'))} documents, seed {_num(sample.get('seed'))}{words}"


def _quantile_table(quantiles: Mapping, unit: str = "") -> str:
    keys = sorted(quantiles, key=lambda k: float(k))
    return _table([f"p{_e(k)}" for k in keys], [[_num(quantiles[k]) for k in keys]],
                  numeric=range(len(keys))) + (f'<p class="muted">{_e(unit)}</p>' if unit else "")


def _stats(stats: dict | None, twin: dict, plots: _Plots) -> str:
    if not stats:
        twin["stats"] = None
        return '<p class="muted">no statistics for this version (stats.json missing)</p>'
    out: list[str] = []
    note = _sample_note(stats)
    tw: dict[str, Any] = {"sample": dict(stats.get("sample") or {})}
    out.append(f'<p class="muted">Exact counts are over every document; sample-based numbers are marked, '
               f"and were computed {_e(note)}.</p>")
    size = stats.get("size") or {}
    if size:
        out.append("<h3>Size</h3>")
        out.append(f"<p>{_num(size.get('docs'))} documents, {_num(size.get('chars'))} characters, "
                   f"{_num(size.get('words'))} words" + (f", {_num(size.get('tokens'))} tokens"
                                                         if size.get("tokens") is not None else "") + ".</p>")
        docs_total = size.get("docs") or 0
        by_source = size.get("by_source") or {}
        if by_source:
            out.append("<h3>By source</h3>")
            out.append(_table(["source", "docs", "share", "chars", "words"], (
                [_e(s), _num(v.get("docs")), _pct((v.get("docs") or 0) / docs_total if docs_total else None),
                 _num(v.get("chars")), _num(v.get("words"))] for s, v in sorted(
                    by_source.items(), key=lambda kv: -(kv[1].get("docs") or 0))), numeric=(1, 2, 3, 4)))
        by_lang = size.get("by_lang") or {}
        if by_lang:
            langs = sorted(by_lang.items(), key=lambda kv: -(kv[1].get("docs") or 0))
            rows = [[_e(k), _num(v.get("docs")), _pct((v.get("docs") or 0) / docs_total if docs_total else None),
                     _num(v.get("chars"))] for k, v in langs[:TOP_ROWS]]
            if len(langs) > TOP_ROWS:
                rest = langs[TOP_ROWS:]
                rows.append(_Row([f"{len(rest)} more", _num(sum(v.get("docs") or 0 for _, v in rest)), "",
                                  _num(sum(v.get("chars") or 0 for _, v in rest))], "note"))
            out.append("<h3>By language</h3>")
            out.append(_table(["language", "docs", "share", "chars"], rows, numeric=(1, 2, 3)))
        tw["size"] = _plain(size)
    length = stats.get("length") or {}
    if length:
        out.append("<h3>Length</h3>")
        fig = _figure(9, 3.2)
        ax = fig.add_subplot()
        if _hist_plot(ax, length.get("histogram") or {}, log_x=True):
            ax.set_xlabel(f"document length ({_mpl(length.get('unit', 'chars'))}, log scale)")
            ax.set_ylabel("documents")
            ax.set_title("length distribution (all documents)")
            out.append(plots.img(fig, "length", "length histogram"))
        else:
            fig.clear()
        if length.get("quantiles"):
            out.append(_quantile_table(length["quantiles"], f"length quantiles in {length.get('unit', 'chars')}"))
        tw["length"] = _plain(length)
    dists = stats.get("distributions") or {}
    scored = {k: dists[k] for k in ("quality_score", "lang_score") if isinstance(dists.get(k), Mapping)}
    if scored:
        out.append("<h3>Scores</h3>")
        fig = _figure(9, 3.0)
        drawn = 0
        for i, (key, dist) in enumerate(scored.items()):
            ax = fig.add_subplot(1, len(scored), i + 1)
            if _hist_plot(ax, dist.get("histogram") or {}, color=["#54a24b", "#b279a2"][i % 2]):
                ax.set_title(key)
                ax.set_xlabel(key)
                ax.set_ylabel("documents")
                drawn += 1
        if drawn:
            out.append(plots.img(fig, "scores", "quality and language score histograms"))
        else:
            fig.clear()
        for key, dist in scored.items():
            if dist.get("quantiles"):
                out.append(f"<div><b>{_e(key)}</b> quantiles</div>" + _quantile_table(dist["quantiles"]))
        tw["distributions"] = _plain(scored)
    sizes = dists.get("dup_cluster_size")
    if isinstance(sizes, Mapping) and sizes:
        out.append("<h3>Duplicate cluster sizes of the kept documents</h3>")
        keys = sorted(sizes, key=lambda k: float(k) if str(k).replace(".", "", 1).isdigit() else math.inf)
        out.append(_table(["size", *[_e(k) for k in keys]], [["documents", *[_num(sizes[k]) for k in keys]]],
                          numeric=range(1, len(keys) + 1)))
        tw.setdefault("distributions", {})["dup_cluster_size"] = _plain(sizes)
    lexical = stats.get("lexical") or {}
    if lexical:
        out.append("<h3>Lexical diversity</h3>")
        out.append(f'<p class="muted">Sample-based: {_e(note)} (length-matched).</p>')
        out.append(_table(["measure", "value"], ([_e(k), _num(v)] for k, v in lexical.items()), numeric=(1,)))
        tw["lexical"] = _plain(lexical)
    unigrams = stats.get("unigrams") or {}
    if unigrams.get("top"):
        top = list(unigrams["top"].items())[:30]
        out.append(f"<p><b>Most frequent words</b> (of {_num(unigrams.get('total'))} words, all documents): "
                   + ", ".join(f"{_e(w)} {_num(c)}" for w, c in top) + "</p>")
        tw["unigrams"] = {"total": unigrams.get("total"), "top": dict(top)}
    semantic = stats.get("semantic") or {}
    if semantic:
        out.append(_semantic(semantic, note, plots))
        tw["semantic"] = _plain(semantic)
    coverage = stats.get("coverage")
    if isinstance(coverage, Mapping) and coverage:
        out.append("<h3>Coverage</h3>")
        lost = [x for x in coverage.get("lost") or [] if isinstance(x, Mapping)]
        out.append(f"<p>This version covers <b>{_pct(coverage.get('covered_share'))}</b> of the semantic clusters "
                   f"of <code>{_e(coverage.get('reference'))}</code> (by that version's document share); "
                   f"{len(lost)} cluster(s) lost. Sample-based: {_e(note)}.</p>")
        if lost:
            out.append(_table(["cluster", "share in reference", "top terms"], (
                [_num(x.get("id")), _pct(x.get("share_in_reference")),
                 _e(", ".join(map(str, x.get("top_terms") or [])))] for x in lost), numeric=(0, 1)))
        tw["coverage"] = _plain(coverage)
    instructions = stats.get("instructions")
    if isinstance(instructions, Mapping) and instructions:
        out.append("<h3>Instruction task types</h3>")
        types = sorted((instructions.get("task_types") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
        out.append(f"<p>{_num(instructions.get('docs'))} instruction documents, "
                   f"{_num(instructions.get('distinct_task_types'))} distinct task types (verb + object).</p>")
        if types:
            total = sum(v for _, v in types) or 1
            out.append(_table(["task type", "documents", "share"], ([_e(k), _num(v), _pct(v / total)]
                                                                   for k, v in types[:TOP_ROWS]), numeric=(1, 2)))
        for key in ("input_chars", "output_chars"):
            quantiles = (instructions.get(key) or {}).get("quantiles")
            if quantiles:
                out.append(f"<div><b>{_e(key.replace('_', ' '))}</b></div>" + _quantile_table(quantiles))
        tw["instructions"] = _plain(instructions)
    twin["stats"] = tw
    return "".join(out)


def _semantic(semantic: Mapping, note: str, plots: _Plots) -> str:
    out = ["<h3>Semantic clusters</h3>"]
    clusters = [c for c in semantic.get("clusters") or [] if isinstance(c, Mapping)]
    method = (f"{_e(semantic.get('method', '?'))}, {_num(semantic.get('features'))} hashed features, "
              f"{_num(semantic.get('dims'))} dimensions, k = {_num(semantic.get('k'))}, "
              f"seed {_num(semantic.get('seed'))}")
    out.append(f"<p>Cluster entropy <b>{_num(semantic.get('cluster_entropy'))}</b> over {len(clusters)} clusters; "
               f"Vendi score <b>{_num(semantic.get('vendi_score'))}</b> "
               f"(on {_num(semantic.get('vendi_sample'))} documents, seed {_num(semantic.get('seed'))}). "
               f'<span class="muted">{method}; sample-based: {_e(note)}.</span></p>')
    if clusters:
        ordered = sorted(clusters, key=lambda c: -(c.get("share") or 0))
        fig = _figure(9, max(2.4, 0.28 * len(ordered) + 1.0))
        ax = fig.add_subplot()
        labels = [_mpl(f"{c.get('id')}: {' '.join(map(str, (c.get('top_terms') or [])[:3]))}", 36) for c in ordered]
        ax.barh(range(len(ordered)), [c.get("share") or 0 for c in ordered], color="#4c78a8")
        ax.set_yticks(range(len(ordered)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("share of documents")
        ax.set_title("semantic cluster shares")
        ax.spines[["top", "right"]].set_visible(False)
        out.append(plots.img(fig, "semantic_clusters", "semantic cluster shares"))
        out.append(_table(["cluster", "size", "share", "top terms"], (
            [_num(c.get("id")), _num(c.get("size")), _pct(c.get("share")),
             _e(", ".join(map(str, c.get("top_terms") or [])))] for c in ordered), numeric=(0, 1, 2)))
    return "".join(out)


# ---- diff report --------------------------------------------------------------------------------


def _delta_class(value: Any) -> str:
    if not _is_num(value) or value == 0 or (isinstance(value, float) and math.isnan(value)):
        return "zero"
    return "up" if value > 0 else "down"


def _signed(value: Any, pct: bool = False) -> str:
    if not _is_num(value) or (isinstance(value, float) and math.isnan(value)):
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
        return "; ".join(f"{_e(k)}: {_lineage(v) if isinstance(v, (Mapping, list)) else _e(v)}"
                         for k, v in lineage.items())
    if isinstance(lineage, (list, tuple)):
        return " → ".join(_lineage(v) if isinstance(v, (Mapping, list)) else _e(v) for v in lineage)
    return _e(lineage)


def _example_doc(doc: Any) -> str:
    if not isinstance(doc, Mapping):
        return _doc(doc)
    head = f'<div class="muted"><code>{_e(doc.get("id", "?"))}</code></div>'
    if "text" in doc:
        return head + _doc(doc.get("text"))
    if "a" in doc or "b" in doc:  # a changed document: both texts side by side
        return head + ('<div class="cluster"><div>a' + _doc(doc.get("a"), cls="removed") + "</div><div>b"
                       + _doc(doc.get("b"), cls="kept") + "</div></div>")
    return head


def diff_report(diff: dict) -> tuple[str, dict]:
    """(HTML page, JSON twin) of a version diff; every key is optional."""
    diff = diff or {}
    a, b = diff.get("a", "a"), diff.get("b", "b")
    a_name = a.get("name", "a") if isinstance(a, Mapping) else a
    b_name = b.get("name", "b") if isinstance(b, Mapping) else b
    twin: dict[str, Any] = {"kind": "diff_report", "a": _plain(a), "b": _plain(b)}
    sections = []
    header = _table(None, [("a", _e(a_name)), ("b", _e(b_name)), ("lineage", _lineage(diff.get("lineage")))],
                    classes="meta")
    twin["lineage"] = _plain(diff.get("lineage"))
    sections.append(("header", DIFF_SECTION_TITLES["header"], header))

    counts = diff.get("counts") or {}
    if not isinstance(counts, Mapping):
        counts = {}
    order = [k for k in ("added", "removed", "changed", "unchanged") if k in counts]
    order += [k for k in counts if k not in order]
    rows = [[_e(k), _num(counts[k])] for k in order]
    body = (_table(["documents", "count"], rows, numeric=(1,)) if rows
            else '<p class="muted">no counts</p>')
    sections.append(("counts", DIFF_SECTION_TITLES["counts"], body))
    twin["counts"] = _plain(dict(counts))

    reasons = [r for r in diff.get("removals_by_reason") or [] if isinstance(r, Mapping)]
    if reasons:
        parts = [_table(["step", "reason", "count"], ([_e(r.get("step", "")), _e(r.get("reason", "")),
                                                       _num(r.get("count"))] for r in reasons), numeric=(2,))]
        for r in reasons:
            docs = r.get("examples") or []
            if docs:
                parts.append(f"<h3><code>{_e(r.get('step', ''))}</code> {_e(r.get('reason', ''))}</h3>")
                parts.extend(_example_doc(d) for d in docs[:3])
        sections.append(("reasons", DIFF_SECTION_TITLES["reasons"], "".join(parts)))
        twin["removals_by_reason"] = [{"step": r.get("step"), "reason": r.get("reason"), "count": r.get("count"),
                                       "examples": [d.get("id") if isinstance(d, Mapping) else d
                                                    for d in r.get("examples") or []]} for r in reasons]

    examples = diff.get("examples") or {}
    if isinstance(examples, Mapping) and any(examples.values()):
        parts = []
        for kind, docs in examples.items():
            if docs:
                parts.append(f"<h3>{_e(kind)}</h3>")
                parts.extend(_example_doc(d) for d in list(docs)[:5])
        sections.append(("examples", DIFF_SECTION_TITLES["examples"], "".join(parts)))
        twin["examples"] = {k: [d.get("id") if isinstance(d, Mapping) else d for d in v or []]
                            for k, v in examples.items()}

    stats = diff.get("stats") or {}
    if isinstance(stats, Mapping) and stats:
        rows, twin_stats = [], {}
        for path, entry in stats.items():
            entry = entry if isinstance(entry, Mapping) else {"b": entry}
            va, vb = entry.get("a"), entry.get("b")
            delta = entry.get("delta")
            if delta is None and _is_num(va) and _is_num(vb):
                delta = vb - va
            rel = entry.get("rel")
            if rel is None and _is_num(delta) and _is_num(va) and va:
                rel = delta / abs(va)
            cls = _delta_class(delta)
            rel_cls = _delta_class(rel if _is_num(rel) else delta)
            rows.append([f"<code>{_e(path)}</code>", _num(va), _num(vb), f'<span class="{cls}">{_signed(delta)}</span>',
                         f'<span class="{rel_cls}">{_signed(rel, pct=True)}</span>'])
            twin_stats[path] = {"a": va, "b": vb, "delta": delta, "rel": rel, "direction": cls}
        body = _table(["statistic", _e(a_name), _e(b_name), "delta", "relative"], rows, numeric=(1, 2, 3, 4))
        sections.append(("stats", DIFF_SECTION_TITLES["stats"], body))
        twin["stats"] = _plain(twin_stats)

    distances = diff.get("distances") or {}
    if isinstance(distances, Mapping) and distances:
        labels = {"unigram_js": "unigram Jensen-Shannon divergence", "length_ks": "length Kolmogorov-Smirnov statistic"}
        rows = [[_e(labels.get(k, k)), _num(v)] for k, v in distances.items()]
        sections.append(("distances", DIFF_SECTION_TITLES["distances"],
                         _table(["distance", "value"], rows, numeric=(1,))
                         + '<p class="muted">0 means identical distributions.</p>'))
        twin["distances"] = _plain(dict(distances))

    twin["sections"] = [k for k, _, _ in sections]
    page = _page(f"curate diff: {a_name} → {b_name}", sections)
    return page, _plain(twin)


# ---- writing ------------------------------------------------------------------------------------


def write_report(fs, folder: str, html: str, twin: dict, stem: str = "report") -> tuple[str, str]:
    """Write `<folder>/<stem>.html` and `<folder>/<stem>.json` through an fsspec filesystem, each to a
    temporary name first and then moved into place, so a reader never sees half a report."""
    folder = folder.rstrip("/")
    fs.makedirs(folder, exist_ok=True)
    paths = []
    for ext, payload in (("html", html), ("json", json.dumps(_plain(twin), indent=2, default=str) + "\n")):
        path = f"{folder}/{stem}.{ext}"
        tmp = f"{folder}/.{stem}.{ext}.tmp"
        with fs.open(tmp, "wb") as handle:
            handle.write(payload.encode("utf-8"))
        fs.mv(tmp, path)
        paths.append(path)
    return paths[0], paths[1]


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
        "removals_by_reason": [{"step": r.get("step"), "reason": r.get("reason"), "count": r.get("count", 0),
                                "examples": [{"id": e.get("id"), "text": e.get("text", "")}
                                             for e in r.get("examples", [])]}
                               for r in (diff.get("removed") or {}).get("by_reason", [])],
        "stats": stats.get("metrics", {}),
        "distances": {k: (stats.get(k) or {}).get("value") for k in ("unigram_js", "length_ks")},
        "notes": list(diff.get("notes", [])) + list(stats.get("notes", [])),
    }

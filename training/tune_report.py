"""The report of a `curate tune` search (its HTML page and JSON twin), its frontier plot, and the rows its
terminal table and Prefect artifacts show.

Built with the toolkit of the other reports (`curation.reportkit`): one page, inline CSS, the plot embedded as a
base64 PNG, every string from data escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from curation.calibration import bound_text
from curation.reportkit import Plots, Row, esc, fmt_num, fmt_pct, html_table, new_figure, page_html, plain, png_base64
from training.ablation_report import VERDICT_CLASS, summary_table

# Marker and colour of each kind of candidate on the frontier (curation/tuning.py names the kinds).
STYLE = {"as written": ("*", "#4c78a8", 14), "paper bounds": ("s", "#f58518", 8), "calibrated": ("^", "#54a24b", 8),
         "one rule calibrated": ("v", "#88d27a", 7), "filter off": ("o", "#9d9da5", 7), "unscoped": ("D", "#b279a2", 7),
         "user": ("P", "#9d755d", 9)}


def ci_text(c: Mapping[str, Any] | None, digits: int = 4) -> str:
    """`+0.0123 [-0.0040, +0.0286]`: a paired Δ and its 95 % interval (the interval left out when there is none)."""
    if not c:
        return "–"
    interval = "" if c.get("ci_low") is None else f" [{c['ci_low']:+.{digits}f}, {c['ci_high']:+.{digits}f}]"
    return f"{c['mean']:+.{digits}f}{interval}"


def p_text(value: float | None) -> str:
    return "–" if value is None else "<0.001" if value < 0.001 else f"{value:.3f}"


def removed_text(removed: Mapping[str, Any]) -> str:
    """`gopher_quality:alpha_words 412, length_filter:min_words 80, other 12`."""
    parts = [f"{reason} {n:,}" for reason, n in removed["top"]]
    if removed["other"]:
        parts.append(f"other {removed['other']:,}")
    return ", ".join(parts) or "nothing"


def planted_text(planted: Mapping[str, Any] | None) -> str:
    """`caught 412/450 (92%), worst near_dup 40%; clean drops 3.1%`."""
    if not planted:
        return "–"
    recall = "" if planted["recall"] is None else f" ({planted['recall']:.0%})"
    worst = "" if planted["worst_class"] is None else f", worst {planted['worst_class']} {planted['worst_recall']:.0%}"
    clean = planted["clean_false_drops"]
    return (f"caught {planted['caught']:,}/{planted['planted']:,}{recall}{worst}; clean drops "
            + ("–" if clean is None else f"{clean:.1%}"))


def _confirmed(entry: Mapping[str, Any], primary: str) -> Mapping[str, Any] | None:
    return (entry.get("confirmed") or {}).get(primary)


def summary_rows(result: Mapping[str, Any], digits: int = 4) -> list[dict[str, Any]]:
    """One row per candidate, ranked: what the terminal table and the Prefect table artifact show (the planted
    column only for a recipe with planted or labelled defects)."""
    primary, domains = result["primary"], result["domains"]
    labelled = any(e["planted"] for e in result["candidates"])
    rows = []
    for rank, entry in enumerate(result["candidates"], 1):
        search = entry["search"].get(primary)
        confirmed = _confirmed(entry, primary)
        row = {"rank": rank, "candidate": entry["label"] + (" (winner)" if entry["winner"] else ""),
               "version": entry["version"],
               "round": (f"{entry['round']} ({len(entry['seeds'])} seeds)" if entry["round"]
                         else f"same as {entry['same_as']}"),
               "Δ loss [95% CI]": ci_text(search, digits)}
        for domain in domains:
            row[f"Δ {domain.split('/', 1)[-1]}"] = ci_text(entry["search"].get(domain), digits)
        row.update({"tokens kept": "–" if entry["tokens"] is None else
                    f"{entry['tokens']:,}" + (f" ({entry['tokens_share']:.0%})" if entry["tokens_share"] else ""),
                    "removed (top reasons)": removed_text(entry["removed"]),
                    **({"planted": planted_text(entry["planted"])} if labelled else {}),
                    "confirmed": "" if confirmed is None else f"{ci_text(confirmed, digits)} {confirmed['verdict']} "
                                                              f"(p Holm {p_text(confirmed.get('p_adjusted'))})"})
        rows.append(row)
    return rows


# ---- the frontier -----------------------------------------------------------------------------------


def frontier_figure(result: Mapping[str, Any]):
    """Δloss against tokens kept: a point per candidate (its search interval as a bar), the baseline at 0, the
    candidates no other beats on both axes joined, the winner ringed."""
    primary = result["primary"]
    points = [e for e in result["candidates"] if e["search"] and e["tokens"] is not None]
    if not points:
        return None
    fig = new_figure(9.5, 5.0)
    ax = fig.add_subplot()
    shown: set[str] = set()
    for entry in points:
        c = entry["search"][primary]
        marker, color, size = STYLE.get(entry["kind"], ("o", "#1d2330", 7))
        if c.get("ci_low") is not None:
            ax.plot([entry["tokens"]] * 2, [c["ci_low"], c["ci_high"]], color=color, lw=1.2, alpha=0.6)
        ax.plot([entry["tokens"]], [c["mean"]], marker, color=color, ms=size,
                label=None if entry["kind"] in shown else entry["kind"])
        shown.add(entry["kind"])
        if entry["frontier"] or entry["winner"] or entry["kind"] in ("as written", "paper bounds"):
            # Named where it matters (clustered candidates would hide each other); the table names every one.
            ax.annotate(entry["label"], (entry["tokens"], c["mean"]), textcoords="offset points", xytext=(5, 3),
                        fontsize=7, color="#1d2330")
        if entry["winner"]:
            ax.plot([entry["tokens"]], [c["mean"]], "o", ms=size + 9, mfc="none", mec="#b3261e", mew=1.6,
                    label="winner")
    front = sorted((e for e in points if e["frontier"]), key=lambda e: e["tokens"])
    if len(front) > 1:
        ax.plot([e["tokens"] for e in front], [e["search"][primary]["mean"] for e in front], "--", color="#6b7380",
                lw=1, label="frontier")
    base = result["baseline"]
    if base.get("tokens"):
        ax.plot([base["tokens"]], [0.0], "X", color="#1d2330", ms=9, label=f"baseline ({base['version']})")
    ax.axhline(0.0, color="#1d2330", lw=0.6)
    ax.set_xlabel("training tokens kept")
    ax.set_ylabel("Δ loss against the baseline\n(nats/token; < 0 is better)")
    ax.set_title(f"loss on {primary} against tokens kept (search rounds; bars: 95 % interval)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def frontier_markdown(result: Mapping[str, Any]) -> str:
    """The frontier plot and its points, for the Prefect UI (a markdown artifact)."""
    primary = result["primary"]
    lines = [f"# Tune `{result['name']}`: loss against tokens kept", ""]
    fig = frontier_figure(result)
    if fig is not None:
        lines += [f"![frontier](data:image/png;base64,{png_base64(fig)})", ""]
    lines += ["| candidate | tokens kept | Δ loss [95% CI] | on the frontier |", "|---|---|---|---|"]
    for entry in result["candidates"]:
        if entry["search"]:
            lines.append(f"| {entry['label']} | {fmt_num(entry['tokens'])} | {ci_text(entry['search'][primary])} | "
                         f"{'yes' if entry['frontier'] else ''} |")
    winner = result["winner"]
    lines += ["", f"Winner: **{winner['label']}** (`{winner['version']}`), confirmed with fresh seeds: "
                  f"{ci_text(winner['delta'])}, {winner['verdict']}."]
    return "\n".join(lines)


# ---- the page -----------------------------------------------------------------------------------------


def _verdict(c: Mapping[str, Any] | None) -> str:
    if not c:
        return ""
    return f'<span class="{VERDICT_CLASS.get(c["verdict"], "zero")}">{esc(c["verdict"])}</span>'


def _summary(result: Mapping[str, Any]) -> str:
    winner, spec = result["winner"], result["settings"]["spec"]
    confirmation = result["confirmation"]
    rows = [
        ("winner", f"<b>{esc(winner['label'])}</b>, version <code>{esc(winner['version'])}</code>"),
        ("confirmed", f"{esc(ci_text(winner['delta']))} {_verdict(winner['delta'])} (p Holm "
                      f"{esc(p_text(winner['delta'].get('p_adjusted')))}; fresh seeds "
                      f"{esc(', '.join(map(str, confirmation['seeds'])))}, never trained by the search)"),
        ("winning recipe", f"<code>{esc(winner['recipe_file'])}</code>" + (
            f"; published as <code>{esc(winner['published'])}</code>" if winner["published"] else "")),
        ("baseline", f"<code>{esc(result['baseline']['version'])}</code> "
                     f"({esc(', '.join(result['baseline']['steps']) or 'ingestion only')}); "
                     f"{fmt_num(result['baseline']['tokens'])} tokens"),
        ("recipe", f"<code>{esc(result['recipe'])}</code>"),
        ("runs", f"{esc(spec['preset'])}, {fmt_num(spec['tokens']) if spec['tokens'] else 'Chinchilla'} tokens each, "
                 f"batch {spec['batch_size']}; tokenizer <code>{esc(result['tokenizer']['hash'][:16])}</code> "
                 f"({result['tokenizer']['vocab_size']:,} tokens, trained on the baseline)"),
        ("evaluation", ", ".join(f"<code>{esc(n)}</code> ({esc(fp[:12])})" for n, fp in result["eval_sets"].items())),
        ("search", f"{len(result['rounds'])} round(s) of successive halving from {result['settings']['seeds_start']} "
                   f"seed(s); {len(result['candidates'])} candidate(s)"
                   + (f", budget {result['budget_minutes']:g} min" if result["budget_minutes"] is not None else "")),
        ("wall time", f"{result.get('wall_seconds', 0):,.0f} s (this invocation)"),
    ]
    body = summary_table(rows, result["warnings"])
    body += ("<p class=muted>The search ranks candidates by their mean paired Δloss against the baseline (the same "
             "seeds, the same initial weights); a candidate chosen as the best of many is flattered by the choice, so "
             "its verdict comes only from the confirmation: the finalists against the baseline with seeds no round "
             "trained, the p-values Holm-adjusted over the finalists.</p>")
    return body


def _ranking(result: Mapping[str, Any], plots: Plots) -> str:
    primary, domains = result["primary"], result["domains"]
    rows = []
    for rank, entry in enumerate(result["candidates"], 1):
        confirmed = _confirmed(entry, primary)
        label = f"{esc(entry['label'])}<br><code>{esc(entry['version'])}</code>"
        reached = (f"{entry['round']}<br>({len(entry['seeds'])} seeds)" if entry["round"]
                   else f"same content as {esc(entry['same_as'])}")
        cells = [fmt_num(rank), label, reached, esc(ci_text(entry["search"].get(primary))),
                 *(esc(ci_text(entry["search"].get(d))) for d in domains),
                 "–" if entry["tokens"] is None else f"{fmt_num(entry['tokens'])}<br>{fmt_pct(entry['tokens_share'])}",
                 f"{fmt_num(entry['rows_removed'])} docs: {esc(removed_text(entry['removed']))}",
                 esc(planted_text(entry["planted"])),
                 "" if confirmed is None else f"{esc(ci_text(confirmed))}<br>{_verdict(confirmed)} (p Holm "
                                              f"{esc(p_text(confirmed.get('p_adjusted')))})"]
        rows.append(Row(cells, "note") if entry["winner"] else cells)
    headers = ["rank", "candidate", "round reached", f"Δ loss {esc(primary)}<br>[95% CI]",
               *(f"Δ {esc(d.split('/', 1)[-1])}<br>[95% CI]" for d in domains), "tokens kept<br>(of baseline)",
               "removed beyond the baseline", "planted defects", "confirmed (fresh seeds)"]
    body = ("<p>Δ and intervals are the search's last round for each candidate (paired by seed with the baseline); "
            "the winner's row is shaded. Removed: the candidate's own steps, by step:reason.</p>")
    body += html_table(headers, rows, numeric=range(3, 5 + len(domains)))
    fig = frontier_figure(result)
    if fig is not None:
        body += "<h3>Frontier: loss against tokens kept</h3>" + plots.img(fig, "frontier", "loss against tokens kept")
    return body


def _rounds(result: Mapping[str, Any]) -> str:
    labels = {e["key"]: e["label"] for e in result["candidates"]}
    rows = [[fmt_num(r["number"]), esc(", ".join(map(str, r["seeds"]))), f"<code>{esc(r['ablation'])}</code>",
             "<br>".join(f"{esc(labels.get(x['key'], x['key']))} {x['delta']:+.4f}" for x in r["ranking"]),
             esc(", ".join(labels.get(k, k) for k in r["kept"]))] for r in result["rounds"]]
    body = html_table(["round", "seeds", "ablation (its own report)", "mean Δ loss (ranked)", "went on"], rows,
                      numeric=(0,))
    if result.get("stopped"):
        body += f"<p class=down>{esc(result['stopped'])}</p>"
    confirmation = result["confirmation"]
    body += (f"<p>Confirmation: <code>{esc(confirmation['ablation'])}</code>, seeds "
             f"{esc(', '.join(map(str, confirmation['seeds'])))}.</p>")
    left = result["estimate"].get("left_out") or []
    if left:
        body += f"<p>Left out to fit the budget: {esc(', '.join(left))}.</p>"
    return body


def _calibration(result: Mapping[str, Any]) -> str:
    steps = ((result["winner"].get("calibration") or {}).get("steps")) or {}
    if not steps:
        return "<p class=muted>The winning recipe calibrates no bound: it runs with the bounds it states.</p>"
    rows = [[esc(step), esc(f"{c['signal']} {c['op']}"), esc(bound_text(c, "configured")),
             esc(bound_text(c, "calibrated")),
             f"{fmt_pct(c['kept_at_configured'])} → {fmt_pct(c['kept_at_calibrated'])}"]
            for step, entry in steps.items() for c in entry["checks"]]
    return ("<p>Bounds of the winning recipe as it ran (winner.yaml writes them out):</p>"
            + html_table(["step", "rule", "configured", "calibrated", "reference kept"], rows, numeric=(2, 3, 4)))


def tune_report(result: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(HTML page, JSON twin) of a search."""
    plots = Plots()
    sections: Sequence[tuple[str, str, str]] = [
        ("summary", "Search", _summary(result)), ("ranking", "Candidates, ranked", _ranking(result, plots)),
        ("rounds", "Rounds", _rounds(result)), ("bounds", "The winner's bounds", _calibration(result))]
    twin = {"kind": "tune", "name": result["name"], "primary": result["primary"], "winner": result["winner"],
            "ranking": summary_rows(result), "rounds": result["rounds"], "confirmation": result["confirmation"],
            "frontier": [{"key": e["key"], "label": e["label"], "tokens": e["tokens"],
                          "delta": e["search"][result["primary"]]["mean"], "frontier": e["frontier"]}
                         for e in result["candidates"] if e["search"]],
            "warnings": result["warnings"], "plots": plots.names}
    return page_html(f"Tune: {result['name']}", list(sections)), plain(twin)

"""The ablation's self-contained HTML report (and its JSON twin), and the loss curves as a PNG.

Built with the toolkit of the version and diff reports (`curation.reportkit`): one page, inline CSS,
plots embedded as base64 PNGs, every string from data escaped, numbers in the twin exactly as shown.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from curation.reportkit import Plots, Row, esc, fmt_num, html_table, new_figure, page_html, plain

VERDICT_CLASS = {"better": "up", "worse": "down"}
COLORS = ["#4c78a8", "#e45756", "#54a24b", "#f58518", "#72b7b2", "#b279a2", "#9d755d", "#bab0ac"]


def summary_table(rows: list[tuple[str, str]], warnings: list[str]) -> str:
    """A report's summary (label, HTML value rows) and the warnings its numbers must be read with."""
    body = html_table(None, [[k, v] for k, v in rows], classes="meta")
    if warnings:
        body += "<h3>Read the numbers with these in mind</h3><ul>" + "".join(
            f"<li>{esc(w)}</li>" for w in warnings) + "</ul>"
    return body


def _f(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _signed(value: Any, digits: int = 4) -> str:
    return "–" if value is None else f"{value:+.{digits}f}"


def _ci(c: Mapping[str, Any]) -> str:
    return "–" if c.get("ci_low") is None else f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]"


def _verdict(c: Mapping[str, Any]) -> str:
    cls = VERDICT_CLASS.get(c.get("verdict", ""), "zero")
    return f'<span class="{cls}">{esc(c.get("verdict"))}</span>'


def _p(value: Any) -> str:
    if value is None:
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


# ---- curves ---------------------------------------------------------------------------------------


def _curves(result: Mapping[str, Any]) -> dict[str, list[tuple[int, list[dict[str, Any]]]]]:
    """version -> [(seed, metrics rows)] read from each run's metrics.jsonl (runs no longer on disk are skipped)."""
    out: dict[str, list[tuple[int, list[dict[str, Any]]]]] = {}
    for run in result.get("runs", []):
        path = Path(run.get("dir") or "") / "metrics.jsonl"
        if not path.is_file():
            continue
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        out.setdefault(run["version"], []).append((int(run["seed"]), rows))
    return out


def _curves_figure(result: Mapping[str, Any]):
    curves = _curves(result)
    if not curves:
        return None
    key = f"eval/{next(iter(result['eval_sets']))}/loss"
    fig = new_figure(10.5, 4.2)
    train_ax, eval_ax = fig.subplots(1, 2)
    versions = [v for v in result["versions"] if v in curves]
    for i, version in enumerate(versions):
        color = COLORS[i % len(COLORS)]
        for j, (_seed, rows) in enumerate(sorted(curves[version])):
            tokens = [r["tokens"] for r in rows]
            label = version if j == 0 else None
            train_ax.plot(tokens, [r["train_loss"] for r in rows], color=color, alpha=0.75, lw=1.1, label=label)
            points = [(r["tokens"], r[key]) for r in rows if key in r]
            if points:
                eval_ax.plot(*zip(*points), color=color, alpha=0.75, lw=1.1, marker=".", ms=3, label=label)
    train_ax.set_title("training loss (every run)")
    eval_ax.set_title(f"evaluation loss: {key[5:-5]}")
    for ax in (train_ax, eval_ax):
        ax.set_xlabel("tokens")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    eval_ax.legend(fontsize=8)
    return fig


def curves_png(result: Mapping[str, Any]) -> bytes | None:
    """Every run's training and evaluation loss on one figure (a line per run, a colour per version)."""
    if result.get("kind") != "ablation":
        return None
    fig = _curves_figure(result)
    if fig is None:
        return None
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    fig.clear()
    return buffer.getvalue()


# ---- plots ----------------------------------------------------------------------------------------


def _forest_figure(result: Mapping[str, Any], keys: Sequence[str]):
    """Paired delta and its 95 % interval per version (and evaluation key), the zero line, per-seed dots."""
    comparisons = result["analysis"]["comparisons"]
    rows = [(v, k, comparisons[v][k]["loss"]) for v in comparisons for k in keys if k in comparisons[v]]
    if not rows:
        return None
    fig = new_figure(9.0, max(2.0, 0.45 * len(rows) + 1.1))
    ax = fig.add_subplot()
    for y, (_, _, c) in enumerate(rows):
        color = {"better": "#0a7d32", "worse": "#b3261e"}.get(c["verdict"], "#6b7380")
        if c["ci_low"] is not None:
            ax.plot([c["ci_low"], c["ci_high"]], [y, y], color=color, lw=2.2)
        ax.plot([c["mean"]], [y], "o", color=color, ms=6)
        ax.plot(c["deltas"], [y] * len(c["deltas"]), "|", color="#1d2330", ms=9, alpha=0.6)
    ax.axvline(0.0, color="#1d2330", lw=0.8)
    ax.set_yticks(range(len(rows)), [f"{v} · {k}" if len(keys) > 1 else v for v, k, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"Δ loss against {result['baseline']} (nats/token; < 0 is better)")
    ax.set_title("paired difference per version: mean (dot), 95 % interval (bar), each seed (tick)")
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def _waterfall_figure(rows: Sequence[Mapping[str, Any]]):
    fig = new_figure(9.0, 4.0)
    ax = fig.add_subplot()
    base = rows[0]["level"]
    labels = [rows[0]["label"]]
    ax.bar(0, base, color="#4c78a8")
    level = base
    for i, row in enumerate(rows[1:], 1):
        step = row["step"]
        color = {"better": "#54a24b", "worse": "#e45756"}.get(step["verdict"], "#bab0ac")
        ax.bar(i, step["mean"], bottom=level, color=color)
        if step["ci_low"] is not None:
            half = (step["ci_high"] - step["ci_low"]) / 2
            ax.errorbar(i, level + step["mean"], yerr=half, color="#1d2330", capsize=4, lw=1)
        ax.text(i, max(level, level + step["mean"]), f"{step['mean']:+.3f}", ha="center", va="bottom", fontsize=8)
        level += step["mean"]
        labels.append(f"+{row['label']}")
    ax.bar(len(rows), rows[-1]["level"], color="#4c78a8")
    labels.append("result")
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    spread = max(abs(r["step"]["mean"]) for r in rows[1:]) if len(rows) > 1 else 0.1
    lows = [r["level"] for r in rows]
    ax.set_ylim(min(lows) - 3 * spread, max(lows) + 2 * spread)
    ax.set_ylabel("evaluation loss (nats/token)")
    ax.set_title("loss change each stage caused (paired by seed; bars: 95 % interval)")
    ax.spines[["top", "right"]].set_visible(False)
    return fig


# ---- sections -------------------------------------------------------------------------------------


def _runs_line(runs: Sequence[Mapping[str, Any]]) -> str:
    cached = sum(1 for r in runs if r["cached"])
    seconds = sum(r["seconds"] for r in runs)
    return (f"{len(runs)}: {len(runs) - cached} trained now, {cached} found in the store; {seconds:,.0f} s of "
            "training in all")


def _header(result: Mapping[str, Any]) -> str:
    spec = result["spec"]
    ft = result.get("finetune")
    if ft:  # a fine-tuning ablation: the base and its settings instead of a preset and a token budget
        lora = f"LoRA r {ft['lora_r']}, alpha {ft['lora_alpha']:g}" if ft["lora"] else "every weight"
        training = [("fine-tune of", f"<code>{esc(ft['base'])}</code>"),
                    ("template, epochs, trained", f"{esc(ft['template'])}, {ft['epochs']:g}, {lora}")]
    else:
        training = [("model", f"{esc(spec['preset'])}" + (f", block {spec['block_size']}" if spec.get("block_size")
                                                           else "")),
                    ("token budget per run", fmt_num(spec["tokens"]) if spec["tokens"]
                     else "20 per parameter (Chinchilla)")]
    rows = [
        ("baseline", f"<code>{esc(result['baseline'])}</code>"),
        *training,
        ("seeds", esc(", ".join(str(s) for s in spec["seeds"]))),
        ("batch, learning rate", f"{spec['batch_size']} {'records' if ft else 'sequences'}, "
                                 f"{spec['learning_rate']:g}"),
        ("tokenizer", f"<code>{esc(result['tokenizer']['hash'][:16])}</code> ({result['tokenizer']['vocab_size']:,} "
                      f"tokens, trained on {esc(result['tokenizer']['trained_on'])})"),
        ("evaluation sets", ", ".join(f"<code>{esc(n)}</code> ({esc(fp[:12])})"
                                      for n, fp in result["eval_sets"].items())
         + ("; loss on every record's response tokens" if ft else f"; {spec['eval_tokens']:,} fixed tokens each")),
        ("ranking", " &lt; ".join(f"<code>{esc(v)}</code>" for v in result["ranking"]) + " (lowest loss first)"),
        ("runs", _runs_line(result["runs"])),
        ("wall time", f"{result.get('wall_seconds', 0):,.0f} s (this invocation)"),
    ]
    body = summary_table(rows, result["warnings"])
    body += ("<p class=muted>Δ is the per-seed difference against the baseline's run with the same seed (same initial "
             "weights), averaged; its 95 % interval uses Student's t with n−1 degrees of freedom. The verdict reads "
             "the interval: below zero is better (lower loss), above zero worse, across zero no detectable effect "
             "(smaller effects than the minimum detectable effect, MDE at power 0.8, may exist); not informative when "
             "every seed gave the same delta (no spread: no interval, no p-value). p (Holm) adjusts for comparing "
             "several versions with one baseline; a version with the baseline's content is left out of it.</p>")
    return body


def _results(result: Mapping[str, Any], plots: Plots, twin: dict) -> str:
    analysis = result["analysis"]
    primary = result["primary"]
    rows = []
    for version in analysis["versions_order"]:
        info = analysis["versions"][version]
        loss, bpb = info["eval"][primary]["loss"], info["eval"][primary]["bpb"]
        overlap = result["versions"][version].get("overlap") or {}
        cells = [f"<code>{esc(version)}</code>", fmt_num(loss["n"]), f"{_f(loss['mean'])}<br>± {_f(loss['std'])}",
                 f"{_f(bpb['mean'])}<br>± {_f(bpb['std'])}",
                 f"{fmt_num(result['versions'][version]['tokens'])}<br>{info['epochs']:.2f} ep.",
                 fmt_num(overlap.get("contaminated"))]
        c = analysis["comparisons"].get(version, {}).get(primary)
        if c is None:
            rows.append(Row(cells + ["baseline", "", "", "", ""], "note"))
            continue
        loss_c, bpb_c = c["loss"], c["bpb"]
        rel = f" ({loss_c['relative'] * 100:+.2f}%)" if loss_c.get("relative") is not None else ""
        rows.append(cells + [f"{_signed(loss_c['mean'])}{rel}<br>{_ci(loss_c)}", _signed(bpb_c["mean"]),
                             f"{_p(loss_c['p_value'])}<br>({_p(loss_c['p_adjusted'])})", _f(loss_c["mde"]),
                             _verdict(loss_c)])
    headers = ["version", "seeds", "loss<br>(nats/token)", "bits/byte", "training tokens<br>(epochs)",
               "docs overlapping eval", "Δ loss<br>[95% CI]", "Δ bits/byte", "p<br>(Holm)", "MDE", "verdict"]
    body = f"<p>Evaluation on <code>{esc(primary)}</code>; mean ± standard deviation over seeds.</p>"
    body += html_table(headers, rows, numeric=range(1, 10))
    fig = _forest_figure(result, [primary])
    if fig is not None:
        body += plots.img(fig, "forest", "paired differences with intervals")
    twin["results"] = {"primary": primary, "versions": analysis["versions"], "comparisons": analysis["comparisons"]}
    return body


def _domains(result: Mapping[str, Any], plots: Plots) -> str:
    analysis = result["analysis"]
    keys = [k for k in analysis["eval_keys"] if k != result["primary"]]
    if not keys:
        return "<p class=muted>The evaluation sets have a single source each: no per-domain split.</p>"
    rows = []
    for version, by_key in analysis["comparisons"].items():
        for key in keys:
            if key not in by_key:
                continue
            c = by_key[key]["loss"]
            base = analysis["versions"][result["baseline"]]["eval"][key]["loss"]["mean"]
            rows.append([f"<code>{esc(version)}</code>", f"<code>{esc(key)}</code>", _f(base),
                         _f(analysis["versions"][version]["eval"][key]["loss"]["mean"]), _signed(c["mean"]), _ci(c),
                         _p(c["p_value"]), _verdict(c)])
    body = html_table(["version", "evaluation (set/source)", "baseline loss", "loss", "Δ loss", "95% CI", "p",
                       "verdict"], rows, numeric=range(2, 7))
    fig = _forest_figure(result, keys)
    if fig is not None:
        body += plots.img(fig, "forest_domains", "paired differences per domain")
    return body


def _waterfall(result: Mapping[str, Any], plots: Plots) -> str:
    rows = result["waterfall"]
    table = []
    for row in rows:
        step, total = row.get("step"), row.get("cumulative")
        steps = ", ".join(row["steps"]) or "ingestion only"
        if step is None:
            table.append(Row([esc(row["label"]), esc(steps), f"<code>{esc(row['stage'])}</code>", _f(row["level"]),
                               "", "", "", ""], "note"))
            continue
        table.append([f"+{esc(row['label'])}", esc(steps), f"<code>{esc(row['stage'])}</code>", _f(row["level"]),
                      _signed(step["mean"]), _ci(step), _verdict(step), _signed(total["mean"])])
    body = ("<p>Each stage's version is the recipe run up to that stage; each row compares it with the previous "
            "stage at the same token budget and seeds.</p>")
    body += html_table(["stage", "steps", "version", "loss", "Δ this stage", "95% CI", "verdict", "Δ since baseline"],
                       table, numeric=(3, 4, 5, 7))
    return body + plots.img(_waterfall_figure(rows), "waterfall", "loss change per stage")


def _reason(group: Mapping[str, Any]) -> str:
    """`step:reason`, without repeating the step when the reason already names it (filter reasons do)."""
    step, reason = str(group.get("step")), str(group.get("reason"))
    return reason if reason.startswith(step) else f"{step}:{reason}"


def _data(result: Mapping[str, Any]) -> str:
    parts = []
    for d in result.get("diffs", []):
        reasons = ", ".join(f"{esc(_reason(r))} {r['count']:,}" for r in d["top_reasons"])
        if d.get("other_reasons"):
            reasons += f", other {d['other_reasons']:,}"
        stats = [[esc(k), fmt_num(v.get("a")), fmt_num(v.get("b")),
                  "–" if v.get("rel") is None else f"{v['rel'] * 100:+.1f}%"] for k, v in d["stats"].items()]
        parts.append(
            f"<h3><code>{esc(d['a'])}</code> → <code>{esc(d['b'])}</code> ({esc(d['lineage'])})</h3>"
            f"<p>{d['docs']['a']:,} → {d['docs']['b']:,} documents: {d['removed']:,} removed, {d['added']:,} added, "
            f"{d['changed']:,} changed. Removed by: {reasons or '–'}. Unigram Jensen–Shannon "
            f"{fmt_num(d.get('unigram_js'))}, length KS {fmt_num(d.get('length_ks'))}.</p>"
            + html_table(["statistic", esc(d["a"]), esc(d["b"]), "change"], stats, numeric=(1, 2, 3)))
    sources = []
    for version, info in result["versions"].items():
        total = max(info["tokens"], 1)
        sources.append([f"<code>{esc(version)}</code>", fmt_num(info["tokens"]),
                        ", ".join(f"{esc(s)} {n / total:.0%}" for s, n in sorted(info["tokens_by_source"].items(),
                                                                                key=lambda kv: -kv[1]))])
    by = "task type" if result.get("finetune") else "source"  # a fine-tune's examples, by their task type
    return (f"<h3>Training tokens by {by}</h3>" + html_table(["version", "tokens", f"by {by}"], sources, numeric=(1,))
            + "".join(parts))


def _noise(result: Mapping[str, Any]) -> str:
    noise = result["noise"]
    cal = noise.get("calibration")
    lines = []
    if cal:
        lines.append(f"Calibrated on <code>{esc(cal['version'])}</code> ({esc(cal['created_at'])}): single-run sd "
                     f"{_f(cal['sd_single_run'])}, paired-difference sd at most {_f(cal['sd_paired_delta_bound'])}; "
                     f"with {len(result['spec']['seeds'])} seeds the minimum detectable effect is {_f(cal['mde'])}.")
        if cal.get("seeds_needed"):
            lines.append(f"Seeds needed for an effect of {noise['effect']:g}: {cal['seeds_needed']}.")
    else:
        lines.append("No stored calibration for this setup (<code>curate ablate --calibrate VERSION --seeds 5</code>); "
                     "the MDE column is computed from the paired differences measured here.")
    if noise.get("effect") is not None:
        lines.append(f"Effect size asked about: {noise['effect']:g} nats/token.")
    return "".join(f"<p>{line}</p>" for line in lines)


def _runs(result: Mapping[str, Any]) -> str:
    primary = result["primary"]
    rows = [[f"<code>{esc(r['version'])}</code>", fmt_num(r["seed"]), _f(r["final_eval"][primary]["loss"]),
             fmt_num(r["tokens_trained"]), f"{r['epochs']:.2f}", "cached" if r["cached"] else f"{r['seconds']:.1f} s",
             esc(r["device"]), f"<code class=mono>{esc(r['dir'])}</code>"] for r in result["runs"]]
    return html_table(["version", "seed", "loss", "tokens", "epochs", "time", "device", "run folder"], rows,
                      numeric=(1, 2, 3, 4))


def _calibration_page(result: Mapping[str, Any]) -> tuple[str, dict]:
    noise = result["noise"]
    rows = [[fmt_num(s), _f(v)] for s, v in noise["runs"]["values"].items()]
    body = (f"<p>{noise['runs']['n']} seeds of <code>{esc(result['version'])}</code> on <code>{esc(result['primary'])}"
            f"</code>: mean {_f(noise['runs']['mean'])}, single-run sd {_f(noise['sd_single_run'])}; a paired "
            f"difference has sd at most {_f(noise['sd_paired_delta_bound'])} (√2 × single-run, no shared noise).</p>"
            + html_table(["seed", "loss"], rows, numeric=(0, 1))
            + "<h3>Minimum detectable effect (95 %, power 0.8)</h3>"
            + html_table(["seeds", "MDE (nats/token)"],
                         [[fmt_num(k), _f(v)] for k, v in noise["mde_by_seeds"].items()], numeric=(0, 1)))
    if noise.get("effect") is not None:
        body += f"<p>Seeds needed for an effect of {noise['effect']:g}: {fmt_num(noise.get('seeds_needed'))}.</p>"
    body += "".join(f"<p class=down>{esc(w)}</p>" for w in result["warnings"])
    page = page_html(f"Noise floor: {result['name']}", [("noise", "Seed-to-seed noise", body),
                                                        ("runs", "Runs", _runs(result))])
    return page, plain({"kind": "calibration", "name": result["name"], "noise": noise, "plots": []})


def ablation_report(result: Mapping[str, Any]) -> tuple[str, dict]:
    """(HTML page, JSON twin) of an ablation or a calibration result."""
    if result["kind"] == "calibration":
        return _calibration_page(result)
    plots = Plots()
    twin: dict[str, Any] = {"kind": "ablation", "name": result["name"], "baseline": result["baseline"],
                            "ranking": result["ranking"], "warnings": result["warnings"]}
    sections = [("summary", "Ablation", _header(result)), ("results", "Loss by version", _results(result, plots, twin)),
                ("domains", "Per domain", _domains(result, plots))]
    if result.get("waterfall"):
        sections.append(("waterfall", "Waterfall: what each stage did to the loss", _waterfall(result, plots)))
        twin["waterfall"] = result["waterfall"]
    curves = _curves_figure(result)
    if curves is not None:
        sections.append(("curves", "Loss curves", plots.img(curves, "curves", "loss curves of every run")))
    sections += [("data", "What differs in the data", _data(result)), ("noise", "Noise", _noise(result)),
                 ("runs", "Runs", _runs(result))]
    twin["diffs"] = result.get("diffs", [])
    twin["plots"] = plots.names
    return page_html(f"Ablation: {result['name']}", sections), plain(twin)


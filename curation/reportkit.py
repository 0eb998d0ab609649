"""The toolkit every HTML report page is built with: escaping, number formats, tables, the page, plots.

One page per report, inline CSS, plots embedded as base64 PNGs (no external assets, no JavaScript).
Cells and bodies passed to `html_table`, `section_html` and `page_html` are already-escaped HTML:
every string that comes from data goes through `esc` (or `fmt_num`, which escapes what is not a
number) first. `plain` makes the JSON twin of a page: the same numbers, in strict JSON.
Used by the version and diff reports (`curation.report`) and the ablation report
(`training.ablation_report`).
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
TOP_REASONS = 5  # reasons named per step in tables (the rest are counted), in reports and dataset cards

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


# ---- formatting ---------------------------------------------------------------------------------


def esc(value: Any) -> str:
    """HTML-escaped text of any value (None is empty): every string from data goes through here."""
    return html.escape("" if value is None else str(value), quote=True)


def is_num(value: Any) -> bool:
    """A real number (bool excluded, although Python counts it as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fmt_num(value: Any, digits: int = 4) -> str:
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
    return esc(value)


def fmt_pct(value: Any, digits: int = 1) -> str:
    """A share as a percentage, a dash for nothing."""
    if not is_num(value) or math.isnan(value):
        return "–"
    return f"{value * 100:.{digits}f}%"


def plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars and arrays become Python numbers and lists, NaN and inf become None."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy
        return plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON
    return value


# ---- HTML -----------------------------------------------------------------------------------------


class Row:
    """A table row with a CSS class (e.g. "note" for a summary row), where a plain row is a list of cells."""

    def __init__(self, cells: list[str], cls: str):
        self.cells, self.cls = cells, cls


def html_table(headers: Iterable[str] | None, rows: Iterable[Iterable[str] | Row], numeric: Iterable[int] = (),
               classes: str = "") -> str:
    """An HTML table; cells are already-escaped HTML, `numeric` column indexes are right-aligned."""
    numeric = set(numeric)
    head = "".join(f'<th{" class=n" if i in numeric else ""}>{h}</th>' for i, h in enumerate(headers or []))
    head = f"<thead><tr>{head}</tr></thead>" if headers is not None else ""
    body = []
    for row in rows:
        cls = ""
        if isinstance(row, Row):
            cls, row = f' class="{row.cls}"', row.cells
        body.append(f"<tr{cls}>" + "".join(f'<td{" class=n" if i in numeric else ""}>{c}</td>'
                                           for i, c in enumerate(row)) + "</tr>")
    cls = f' class="{classes}"' if classes else ""
    return f"<table{cls}>{head}<tbody>{''.join(body)}</tbody></table>"


def doc_html(text: Any, chars: int = TEXT_CHARS, cls: str = "") -> str:
    """A document's first `chars` characters in a box (its length when cut; white space made visible)."""
    text = "" if text is None else str(text)
    if text and not text.strip():
        return f'<div class="doc {cls}"><span class="muted">(white space only: {esc(repr(text[:chars]))})</span></div>'
    more = f' <span class="muted">… ({len(text):,} chars)</span>' if len(text) > chars else ""
    shown = esc(text[:chars]).replace("\x00", "\\x00")  # a NUL byte would not show
    return f'<div class="doc {cls}">{shown}{more}</div>'


def section_html(key: str, title: str, body: str) -> str:
    """A page section with its anchor (`key`) for the table of contents."""
    return f'<section id="{key}"><h2>{esc(title)}</h2>{body}</section>'


def page_html(title: str, sections: list[tuple[str, str, str]], intro: str = "") -> str:
    """The whole page: title, a table of contents and the (key, title, body) sections."""
    toc = "".join(f'<li><a href="#{k}">{esc(t)}</a></li>' for k, t, _ in sections)
    body = "".join(section_html(k, t, b) for k, t, b in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>{esc(title)}</h1>{intro}<ul class=\"toc\">{toc}</ul>{body}</main></body></html>\n")


# ---- plots --------------------------------------------------------------------------------------


def mpl_text(text: Any, limit: int = 40) -> str:
    """A label safe for matplotlib (no mathtext), shortened."""
    text = str(text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def import_plotting() -> None:
    """Import matplotlib ahead of the first plot (~0.5 s on 2 cores), e.g. while a command waits for its server."""
    import matplotlib.backends.backend_agg  # noqa: F401 - what a PNG is drawn with
    import matplotlib.figure  # noqa: F401


def new_figure(width: float = 9.0, height: float = 4.0, **kwargs):
    """A matplotlib Figure without pyplot: no global figure registry, nothing left open."""
    # matplotlib takes about a second to import, and `curation.store` imports this module (through the
    # dataset card and `curation.report`): it is imported when a plot is drawn.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, **kwargs)


def png_base64(fig) -> str:
    """The figure as a base64 PNG; the figure is cleared and released."""
    buffer = io.BytesIO()
    try:
        fig.tight_layout()
    except Exception:  # a layout that does not converge is still a usable plot
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing glyphs for some scripts
        fig.savefig(buffer, format="png", dpi=DPI)
    fig.clear()
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class Plots:
    """Collects the plots of a page, so the twin can list them."""

    def __init__(self):
        self.names: list[str] = []

    def img(self, fig, name: str, alt: str) -> str:
        """The figure as an inline <img>, recorded under `name`."""
        data = png_base64(fig)
        self.names.append(name)
        return f'<img class="plot" alt="{esc(alt)}" data-plot="{esc(name)}" src="data:image/png;base64,{data}">'


def hist_plot(ax, histogram: Mapping, *, log_x: bool = False, color: str = "#4c78a8") -> bool:
    """Draw a stats.json histogram ({"edges", "counts"}) on `ax`; False (nothing drawn) when it is malformed."""
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


def write_report(fs, folder: str, html: str, twin: dict, stem: str = "report") -> tuple[str, str]:
    """Write `<folder>/<stem>.html` and `<folder>/<stem>.json` through an fsspec filesystem, each to a
    temporary name first and then moved into place, so a reader never sees half a report."""
    folder = folder.rstrip("/")
    fs.makedirs(folder, exist_ok=True)
    paths = []
    for ext, payload in (("html", html), ("json", json.dumps(plain(twin), indent=2, default=str) + "\n")):
        path = f"{folder}/{stem}.{ext}"
        tmp = f"{folder}/.{stem}.{ext}.tmp"
        with fs.open(tmp, "wb") as handle:
            handle.write(payload.encode("utf-8"))
        fs.mv(tmp, path)
        paths.append(path)
    return paths[0], paths[1]

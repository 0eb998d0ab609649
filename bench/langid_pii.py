"""Language identification and PII redaction on the demo corpus: what they catch, what they touch, docs/s.

    .venv/bin/python bench/langid_pii.py                 # --scale 1.0 --json bench/out/langid_pii.json

Per group of the demo corpus (`curation.demo.documents_by_class`: the planted non-English and PII pages, the
clean web pages, and the two clean sources), with the steps' defaults: documents and characters, how many
`language_filter` rejects (and with which reasons) and how many `pii_redact` changes (and its counters), and
each step's docs/s over the group (one pass, the language model loaded beforehand).

Throughput: the best of 3 passes of each step over 3,000-character slices of the human documents (clean web
pages and both sources, documents of at least 3,000 characters), and over the planted PII documents (every
one a candidate for the regexes): docs/s and M chars/s, one process. `tests/test_langid_pii.py` asserts the
recall and false-positive figures on a smaller corpus.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.demo import build_demo_corpus, documents_by_class  # noqa: E402
from curation.steps.langid import LanguageFilter  # noqa: E402
from curation.steps.pii import PIIRedactor  # noqa: E402

GROUPS = ("non_english", "pii", "stdlib_docs", "kjv", "web_clean")
HUMAN = ("stdlib_docs", "kjv", "web_clean")
SLICE_CHARS = 3000


def table(texts: list[str]) -> pa.Table:
    return pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": pa.array(texts, pa.large_string())})


def timed(step: LanguageFilter | PIIRedactor, texts: list[str]):
    """The step's output on `texts` and the seconds it took."""
    start = time.perf_counter()
    out = step.apply(table(texts))
    return out, time.perf_counter() - start


def group_figures(records: list[dict]) -> dict:
    texts = [r["text"] for r in records]
    lang, lang_s = timed(LanguageFilter(), texts)
    pii, pii_s = timed(PIIRedactor(), texts)
    return {
        "docs": len(texts), "chars": sum(map(len, texts)),
        "lang_rejected": lang.rejected.num_rows, "lang_docs_per_s": round(len(texts) / lang_s),
        "lang_reasons": sorted(set(lang.rejected.column("reason").to_pylist())),
        "pii_docs": sum(n > 0 for n in pii.kept.column("pii_redactions").to_pylist()),
        "pii_counters": pii.counters, "pii_docs_per_s": round(len(texts) / pii_s),
    }


def throughput(texts: list[str]) -> dict:
    """Best of 3 passes of each step (after a warm-up on 10 documents)."""
    out = {"docs": len(texts), "chars": sum(map(len, texts))}
    for name, step in (("language_filter", LanguageFilter()), ("pii_redact", PIIRedactor())):
        step.apply(table(texts[:10]))
        best = min(timed(step, texts)[1] for _ in range(3))
        out[name] = {"docs_per_s": round(len(texts) / best), "mchars_per_s": round(out["chars"] / best / 1e6, 2)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="demo corpus scale")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-langid-pii-") as tmp:
        groups = documents_by_class(build_demo_corpus(Path(tmp), scale=args.scale))
    LanguageFilter().apply(table(["The model is loaded before the timings."]))
    figures: dict = {"scale": args.scale, "groups": {name: group_figures(groups[name]) for name in GROUPS}}
    for name, fig in figures["groups"].items():
        print(f"{name}: {fig['docs']:,} docs; language_filter rejects {fig['lang_rejected']:,} "
              f"({fig['lang_docs_per_s']:,} docs/s), pii_redact changes {fig['pii_docs']:,} "
              f"({fig['pii_docs_per_s']:,} docs/s); reasons {fig['lang_reasons']}; counters {fig['pii_counters']}")
    human = [r["text"][:SLICE_CHARS] for g in HUMAN for r in groups[g] if len(r["text"]) >= SLICE_CHARS]
    figures["throughput"] = {"human_slices": throughput(human),
                             "pii_documents": throughput([r["text"] for r in groups["pii"]])}
    for label, fig in (("3,000-char slices of the human documents", figures["throughput"]["human_slices"]),
                       ("planted PII documents (every one a candidate)", figures["throughput"]["pii_documents"])):
        for step in ("language_filter", "pii_redact"):
            print(f"{step}: {fig[step]['docs_per_s']:,} docs/s, {fig[step]['mchars_per_s']} M chars/s on "
                  f"{fig['docs']:,} {label} (one process)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

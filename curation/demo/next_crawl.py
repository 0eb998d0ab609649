"""The crawl's second drop, for the demo's incremental run (`curate increment`)."""

from __future__ import annotations

from pathlib import Path

from curation.demo.common import clean_text, json_line, rng_for, write_atomic
from curation.demo.corpus import DemoCorpus

try:  # the topics of Python's language reference; some distributions ship the stdlib without them
    from pydoc_data.topics import topics as _LANGUAGE_TOPICS
except ImportError:
    _LANGUAGE_TOPICS = {}

NEXT_CRAWL_FILE = "web_crawl-day2.jsonl"
_NEW_PAGES, _RECRAWLED, _EDITED, _REUSED_IDS = 60, 20, 15, 10  # at most, of each kind (our choice)


def write_next_crawl(corpus: DemoCorpus, kept: list[tuple[str, str]], seed: int = 0) -> tuple[Path, dict[str, int]]:
    """The crawl's next drop, `web_crawl-day2.jsonl`: new pages (the topics of Python's language reference,
    from the installed `pydoc_data`), pages re-crawled under new URLs (exact copies of documents the curated
    version `kept`, as (id, text)), lightly edited copies, and old ids reused for new text. Returns the file
    and how many of each it holds."""
    rng = rng_for(seed, "day2")
    fresh = [(f"web-day2-{name}", clean_text(text)) for name, text in sorted(_LANGUAGE_TOPICS.items())
             if len(text) >= 400 and len(text) <= 60_000]
    fresh = rng.sample(fresh, min(len(fresh), _NEW_PAGES))
    picks = rng.sample(kept, min(len(kept), _RECRAWLED + _EDITED + _REUSED_IDS))
    copies = picks[:_RECRAWLED]
    edited = picks[_RECRAWLED:_RECRAWLED + _EDITED]
    reused = picks[_RECRAWLED + _EDITED:]
    rows = [{"id": doc_id, "text": text} for doc_id, text in fresh]
    rows += [{"id": f"web-day2-recrawl-{i}", "text": text} for i, (_, text) in enumerate(copies)]
    for i, (_, text) in enumerate(edited):
        words = text.split(" ")
        for k in rng.sample(range(len(words)), max(1, len(words) // 100)):  # 1 % of the words: Jaccard ~0.95
            words[k] = rng.choice(words)
        rows.append({"id": f"web-day2-edited-{i}", "text": " ".join(words)})
    donors = [text for _, text in fresh] or [text for _, text in kept]
    rows += [{"id": doc_id, "text": rng.choice(donors)[::-1]} for doc_id, _ in reused]  # an id already published
    rng.shuffle(rows)
    path = corpus.root / NEXT_CRAWL_FILE
    write_atomic(path, "".join(json_line(r) + "\n" for r in rows).encode("utf-8"))
    return path, {"new": len(fresh), "recrawled": len(copies), "edited": len(edited), "reused_ids": len(reused)}

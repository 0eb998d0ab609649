"""The simulated crawl, ``web_crawl.jsonl``: clean human pages interleaved with planted defects.

`build_web` plans one entry per line (the clean pages, then each defect class in `_PLANNERS` order),
shuffles them, slots the duplicate-id lines into the second half, and renders every line with its label.
One RNG serves all of it, so the order of the planners and of the draws inside them is part of the corpus.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from curation.demo.common import json_line, phrases, rng_for
from curation.demo.defects import (
    LANGUAGES,
    boilerplate,
    insert_lines,
    keyword_spam,
    lorem_ipsum,
    mojibake,
    near_dup,
    non_english,
    pii_items,
    too_short,
    typographic,
)

WEB_FILE = "web_crawl.jsonl"
_URLS = phrases("urls")
_GARBAGE = phrases("malformed_json")["trailing_garbage"]
_MALFORMED_VARIANTS = ("truncate", "garbage", "trailing_comma", "single_quotes", "no_close", "unquoted_key")
_NON_STRING_TEXTS: tuple[Any, ...] = (12345, ["first part", "second part"], {"en": "nested text"})
_EMPTY_TEXTS = ("", "   ", "\n\t  \n")
_MIN_NEAR_DUP_WORDS = 100  # near copies need enough words for a few edit bursts to leave them similar
_DONOR_CHARS = 2000  # text carried by the ingest-level defects (their content does not matter)


@dataclass
class Entry:
    """One planned line of web_crawl.jsonl before ids and order are fixed."""

    defect: str | None  # None: a clean held-out document (no label)
    kind: str  # how the line is rendered: a key of _RENDERERS, "blank" or "duplicate_id"
    payload: Any = None
    of: str | None = None


def _anything(_: str) -> bool:
    return True


class DonorPool:
    """The clean documents defects are made from: each taken once, in a seeded order, while any fits;
    then reused."""

    def __init__(self, rng: random.Random, clean_pool: list[tuple[str, str]]):
        self.rng = rng
        self.by_id = dict(clean_pool)
        self.ids = [i for i, _ in clean_pool]
        self.order = self.ids[:]
        rng.shuffle(self.order)
        self.cursor = 0

    def take(self, pred: Callable[[str], bool], prefer: Callable[[str], bool] | None = None) -> str:
        """Next unused clean doc satisfying pred (and prefer, when any does); reuse once exhausted."""
        order = self.order
        pools = ([lambda i: pred(i) and prefer(i)] if prefer else []) + [pred]
        for p in pools:
            for j in range(self.cursor, len(order)):
                if p(order[j]):
                    order[self.cursor], order[j] = order[j], order[self.cursor]
                    self.cursor += 1
                    return order[self.cursor - 1]
        start = self.rng.randrange(len(order))
        for p in pools + [_anything]:  # every fitting document is used: allow reuse
            for j in range(len(order)):
                cand = order[(start + j) % len(order)]
                if p(cand):
                    return cand
        raise AssertionError("empty clean pool")

    def long_enough(self, doc_id: str) -> bool:
        return len(self.by_id[doc_id].split()) >= _MIN_NEAR_DUP_WORDS

    def non_ascii(self, doc_id: str) -> bool:
        return not self.by_id[doc_id].isascii()

    def random_text(self) -> str:
        """Any clean document's text (with replacement)."""
        return self.by_id[self.ids[self.rng.randrange(len(self.ids))]]

    def excerpt(self) -> str:
        return self.random_text()[:_DONOR_CHARS]


# ---- one planner per defect class: (rng, donors, count) -> entries --------------------------------


def _exact_dup(rng: random.Random, donors: DonorPool, n: int) -> list[Entry]:
    entries = []
    for _ in range(n):
        o = donors.take(_anything)
        entries.append(Entry("exact_dup", "record", donors.by_id[o], o))
    return entries


def _near_dup(rng: random.Random, donors: DonorPool, n: int) -> list[Entry]:
    entries = []
    for _ in range(n):
        o = donors.take(donors.long_enough)
        entries.append(Entry("near_dup", "record", near_dup(rng, donors.by_id[o]), o))
    return entries


def _mojibake(rng: random.Random, donors: DonorPool, n: int) -> list[Entry]:
    """Non-ASCII originals where there are any; ASCII ones get typographic characters first."""
    entries = []
    for _ in range(n):
        o = donors.take(_anything, prefer=donors.non_ascii)
        src = donors.by_id[o] if donors.non_ascii(o) else typographic(rng, donors.by_id[o])
        entries.append(Entry("mojibake", "record", mojibake(src), o))
    return entries


def _pii(rng: random.Random, donors: DonorPool, n: int) -> list[Entry]:
    entries = []
    for _ in range(n):
        o = donors.take(_anything)
        entries.append(Entry("pii", "record", insert_lines(rng, donors.by_id[o], pii_items(rng)), o))
    return entries


def _boilerplate(rng: random.Random, donors: DonorPool, n: int) -> list[Entry]:
    return [Entry("boilerplate", "record", boilerplate(rng)) for _ in range(n)]


def _keyword_spam(rng: random.Random, donors: DonorPool, n: int) -> list[Entry]:
    """Half of them around the opening words of a real document."""
    entries = []
    for _ in range(n):
        sentence = None
        if rng.random() < 0.5:
            sentence = " ".join(donors.random_text().split()[: rng.randint(8, 25)])
        entries.append(Entry("keyword_spam", "record", keyword_spam(rng, sentence)))
    return entries


def _lorem_ipsum(rng: random.Random, donors: DonorPool, n: int) -> list[Entry]:
    return [Entry("lorem_ipsum", "record", lorem_ipsum(rng)) for _ in range(n)]


def _non_english(rng: random.Random, donors: DonorPool, n: int) -> list[Entry]:
    return [Entry("non_english", "record", non_english(rng, LANGUAGES[k % len(LANGUAGES)])) for k in range(n)]


def _too_short(rng: random.Random, donors: DonorPool, n: int) -> list[Entry]:
    return [Entry("too_short", "record", too_short(rng, donors.random_text())) for _ in range(n)]


def _too_long(rng: random.Random, donors: DonorPool, n: int) -> list[Entry]:
    """600 KB - 1 MB of whole documents joined."""
    entries = []
    for _ in range(n):
        target = rng.randint(600_000, 1_000_000)
        parts: list[str] = []
        size = 0
        while size < target:
            text = donors.random_text()
            parts.append(text)
            size += len(text) + 2
        entries.append(Entry("too_long", "record", "\n\n".join(parts)))
    return entries


def _malformed_json(rng: random.Random, donors: DonorPool, n: int) -> list[Entry]:
    return [Entry("malformed_json", "malformed", (_MALFORMED_VARIANTS[k % len(_MALFORMED_VARIANTS)], donors.excerpt()))
            for k in range(n)]


def _invalid_utf8(rng: random.Random, donors: DonorPool, n: int) -> list[Entry]:
    return [Entry("invalid_utf8", "invalid_utf8", donors.excerpt()) for _ in range(n)]


def _nul_byte(rng: random.Random, donors: DonorPool, n: int) -> list[Entry]:
    """Raw NUL bytes: an escaped \\u0000 would be text that `normalize` cleans."""
    return [Entry("nul_byte", "raw_nul", donors.excerpt()) for _ in range(n)]


def _missing_text(rng: random.Random, donors: DonorPool, n: int) -> list[Entry]:
    return [Entry("missing_text", "missing_text", (k % 3, donors.excerpt())) for k in range(n)]


def _non_string_text(rng: random.Random, donors: DonorPool, n: int) -> list[Entry]:
    return [Entry("non_string_text", "record", _NON_STRING_TEXTS[k % len(_NON_STRING_TEXTS)]) for k in range(n)]


def _empty_text(rng: random.Random, donors: DonorPool, n: int) -> list[Entry]:
    return [Entry("empty_text", "record", _EMPTY_TEXTS[k % len(_EMPTY_TEXTS)]) for k in range(n)]


def _blank_line(rng: random.Random, donors: DonorPool, n: int) -> list[Entry]:
    return [Entry("blank_line", "blank") for _ in range(n)]


# In this order, each drawing from the one RNG: reordering changes the corpus.
_PLANNERS: tuple[tuple[str, Callable[[random.Random, DonorPool, int], list[Entry]]], ...] = (
    ("exact_dup", _exact_dup), ("near_dup", _near_dup), ("mojibake", _mojibake), ("pii", _pii),
    ("boilerplate", _boilerplate), ("keyword_spam", _keyword_spam), ("lorem_ipsum", _lorem_ipsum),
    ("non_english", _non_english), ("too_short", _too_short), ("too_long", _too_long),
    ("malformed_json", _malformed_json), ("invalid_utf8", _invalid_utf8), ("nul_byte", _nul_byte),
    ("missing_text", _missing_text), ("non_string_text", _non_string_text), ("empty_text", _empty_text),
    ("blank_line", _blank_line),
)


# ---- rendering: one renderer per line kind, (rng, payload, id, url) -> (line, labelled id) -----------


def random_url(rng: random.Random) -> str:
    host = rng.choice(_URLS["hosts"])
    dom = rng.choice(_URLS["domains"])
    return f"https://{host}.{dom}/{rng.choice(_URLS['path_words'])}/{rng.randint(1000, 999999)}"


def render_malformed(rng: random.Random, variant: str, doc_id: str, text: str, url: str) -> bytes:
    """A line that is valid UTF-8 but not valid JSON, broken the way `variant` names."""
    good = json_line({"id": doc_id, "text": text, "url": url})
    if variant == "truncate":
        cut = rng.randint(len(doc_id) + 20, max(len(doc_id) + 21, len(good) - 10))
        line = good[:cut]
    elif variant == "garbage":
        line = good + rng.choice(_GARBAGE)
    elif variant == "trailing_comma":
        line = good[:-1] + ",}"
    elif variant == "single_quotes":
        line = repr({"id": doc_id, "text": text[:300], "url": url})
        if '"' in line[:2]:  # repr chose double quotes; force an unambiguous Python-literal line
            line = "{'id': " + repr(doc_id) + ", 'text': 'broken'}"
    elif variant == "no_close":
        line = good[:-1]
    else:
        line = good.replace('"id"', "id", 1)
    return line.encode("utf-8")


def _record(rng: random.Random, text: Any, doc_id: str, url: str) -> tuple[bytes, str | None]:
    return json_line({"id": doc_id, "text": text, "url": url}).encode("utf-8"), doc_id


def _missing_text_line(rng: random.Random, payload: tuple[int, str], doc_id: str,
                       url: str) -> tuple[bytes, str | None]:
    variant, text = payload
    obj = ({"id": doc_id, "url": url, "content": text}, {"id": doc_id, "url": url, "body": text},
           {"id": doc_id, "url": url})[variant]
    return json_line(obj).encode("utf-8"), doc_id


def _malformed_line(rng: random.Random, payload: tuple[str, str], doc_id: str, url: str) -> tuple[bytes, str | None]:
    variant, text = payload
    return render_malformed(rng, variant, doc_id, text, url), None


def _raw_bytes_line(rng: random.Random, text: str, doc_id: str, url: str, *, raw: bytes) -> tuple[bytes, str | None]:
    """A JSON record with `raw` bytes spliced into its text: the line no longer decodes or parses."""
    marker = "@@BYTES@@"
    cut = rng.randint(0, len(text))
    line = json_line({"id": doc_id, "text": text[:cut] + marker + text[cut:], "url": url})
    return line.encode("utf-8").replace(marker.encode(), raw, 1), None


_RENDERERS: dict[str, Callable[..., tuple[bytes, str | None]]] = {
    "record": _record, "missing_text": _missing_text_line, "malformed": _malformed_line,
    "invalid_utf8": functools.partial(_raw_bytes_line, raw=b"\xff\xfe"),
    "raw_nul": functools.partial(_raw_bytes_line, raw=b"\x00"),
}


def _render(rng: random.Random, entries: list[Entry]) -> tuple[bytes, list[dict]]:
    """The file's bytes and its label lines; ids `web:<n>` in line order, duplicate ids reuse an earlier one."""
    lines: list[bytes] = []
    labels: list[dict] = []
    clean_ids: list[str] = []
    any_ids: list[str] = []
    n = 0
    for e in entries:
        line_no = len(lines) + 1
        label_id: str | None = None
        if e.kind == "blank":
            line = b""
        elif e.kind == "duplicate_id":
            pool = clean_ids or any_ids
            label_id = pool[rng.randrange(len(pool))]
            line = json_line({"id": label_id, "text": e.payload, "url": random_url(rng)}).encode("utf-8")
        else:
            n += 1
            doc_id = f"web:{n}"
            line, label_id = _RENDERERS[e.kind](rng, e.payload, doc_id, random_url(rng))
            if label_id is not None:
                any_ids.append(doc_id)
                if e.defect is None:
                    clean_ids.append(doc_id)
        lines.append(line)
        if e.defect is not None:
            labels.append({"id": label_id, "defect": e.defect, "of": label_id if e.kind == "duplicate_id" else e.of,
                           "file": WEB_FILE, "line": line_no})
    return b"".join(line + b"\n" for line in lines), labels


def build_web(seed: int, clean_pool: list[tuple[str, str]], held_out: list[str],
              counts: dict[str, int]) -> tuple[bytes, list[dict]]:
    """Plan, shuffle and render web_crawl.jsonl from the clean documents (`clean_pool`: their copies and
    edits) and the human texts moved into the crawl (`held_out`: clean pages, the last
    counts["duplicate_id"] of them under reused ids); return its bytes and the label lines."""
    rng = rng_for(seed, "web")
    donors = DonorPool(rng, clean_pool)
    n_dupid = counts["duplicate_id"]
    entries = [Entry(None, "record", text) for text in held_out[: len(held_out) - n_dupid]]
    for defect, plan in _PLANNERS:
        entries += plan(rng, donors, counts[defect])
    rng.shuffle(entries)
    # duplicate_id lines go into the second half so an earlier record with that id always exists.
    for text in held_out[len(held_out) - n_dupid:]:
        entries.insert(rng.randint(len(entries) // 2 + 1, len(entries)), Entry("duplicate_id", "duplicate_id", text))
    return _render(rng, entries)

"""The text of the planted defects: one generator per class, its phrases in ``data/<class>.json``.

Each generator draws from the RNG it is given in a fixed order: the same seed gives the same bytes, so a
change here that adds, removes or reorders a draw changes the demo corpus (and its versions' fingerprints).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence

from curation.demo.common import capitalise, fill, phrases

_LOREM = phrases("lorem_ipsum")
_LOREM_WORDS: list[str] = _LOREM["words"].split()
_SPAM = phrases("keyword_spam")
_BOILERPLATE = phrases("boilerplate")
_SHORT = phrases("too_short")["fragments"]
# Per language, slots for subject / verb / object / adverbial / opener, plus a few stand-alone sentences.
# Verbs are third person singular present, so any slot combination is grammatical.
_LANGS: dict[str, dict[str, list[str]]] = phrases("non_english")
LANGUAGES = tuple(_LANGS)  # in file order: the k-th non-English document is in LANGUAGES[k % len(LANGUAGES)]
_VERB_SECOND = {"de"}  # verb-second word order after a fronted adverbial
_PII = phrases("pii")
_ACCENTED = phrases("mojibake")["accented_words"]


def lorem_ipsum(rng: random.Random) -> str:
    paras = []
    for p in range(rng.randint(1, 6)):
        sents = []
        for _ in range(rng.randint(4, 9)):
            words = [rng.choice(_LOREM_WORDS) for _ in range(rng.randint(6, 16))]
            if rng.random() < 0.3:
                words.insert(rng.randint(1, len(words) - 1), rng.choice(_LOREM_WORDS) + ",")
            sents.append(capitalise(" ".join(words)) + ".")
        if p == 0 and rng.random() < 0.6:
            sents.insert(0, _LOREM["opening_sentence"])
        paras.append(" ".join(sents))
    return "\n\n".join(paras)


def keyword_spam(rng: random.Random, sentence: str | None) -> str:
    """A doorway page: a few keywords of one theme repeated hundreds of times, maybe around a real sentence."""
    kws = list(rng.choice(_SPAM["keyword_sets"]))
    kws = rng.sample(kws, rng.randint(2, len(kws)))
    sep = rng.choice(_SPAM["separators"])
    n = rng.randint(200, 700)
    toks = [rng.choice(kws) for _ in range(n)]
    if rng.random() < 0.5:  # fixed phrases repeated verbatim, as on doorway pages
        phrase = " ".join(kws[:2])
        toks = [phrase if i % 3 == 0 else t for i, t in enumerate(toks)]
    body = sep.join(toks)
    if sentence:
        return sentence + "\n\n" + body if rng.random() < 0.5 else body + "\n\n" + sentence
    return body


def boilerplate(rng: random.Random) -> str:
    """A page of site chrome only: title, menus, cookie and JavaScript notices, share buttons, footer."""
    t = _BOILERPLATE
    brand = f"{rng.choice(t['brand_first'])}{rng.choice(t['brand_second'])}"
    year = rng.randint(2009, 2024)
    nav = " | ".join(rng.sample(t["navigation"], rng.randint(4, 8)))
    blocks: list[Callable[[], str]] = [
        lambda: nav,
        lambda: t["login"][0] if rng.random() < 0.5 else t["login"][1],
        lambda: fill(rng.choice(t["cookie_banners"]), brand=brand),
        lambda: rng.choice(t["javascript_notices"]),
        lambda: "\n".join(rng.choice(t["share_buttons"]) for _ in range(rng.randint(4, 12))),
        lambda: t["categories_heading"] + "\n" + "\n".join(
            f"{c} ({rng.randint(1, 250)})" for c in rng.sample(t["categories"], rng.randint(3, 7))),
        lambda: fill(rng.choice(t["template_leaks"]), brand=brand),
        lambda: t["newsletter"],
        lambda: fill(t["post_footer"], category=rng.choice(t["categories"]), comments=rng.randint(0, 99)),
    ]
    footer = [
        " | ".join(rng.sample(t["footer_links"], rng.randint(3, 6))),
        fill(t["copyright"][0], year=year, brand=brand) if rng.random() < 0.7
        else fill(t["copyright"][1], year=year, end_year=year + rng.randint(1, 5), brand=brand),
    ]
    chosen = rng.sample(blocks, rng.randint(4, len(blocks)))
    parts = [fill(t["title"], brand=brand, page=rng.choice(t["navigation"]))] + [b() for b in chosen]
    if rng.random() < 0.5:
        parts.append(nav)  # menus repeated in header and footer
    parts += footer
    return "\n\n".join(parts)


def too_short(rng: random.Random, donor: str) -> str:
    """A stub page, or 1-8 words cut from `donor`."""
    if rng.random() < 0.5:
        return rng.choice(_SHORT)
    words = donor.split()
    k = rng.randint(1, 8)
    start = rng.randint(0, max(0, len(words) - k))
    return " ".join(words[start:start + k]) or rng.choice(_SHORT)


def _foreign_sentence(rng: random.Random, lang: str) -> str:
    w = _LANGS[lang]

    def clause() -> str:
        return f"{rng.choice(w['subj'])} {rng.choice(w['verb'])} {rng.choice(w['obj'])}"

    kind = rng.randrange(9)
    if kind in (0, 5):
        s = f"{clause()} {rng.choice(w['adv'])}"
    elif kind == 1:
        opener = rng.choice(w["open"])
        if lang in _VERB_SECOND:
            s = f"{opener} {rng.choice(w['verb'])} {rng.choice(w['subj'])} {rng.choice(w['obj'])}"
        else:
            s = f"{opener} {clause()}"
    elif kind in (2, 6, 7):
        s = f"{clause()}, {rng.choice(w['conj'])} {clause()} {rng.choice(w['adv'])}"
    elif kind in (3, 8):
        s = f"{rng.choice(w['subj'])} {rng.choice(w['say'])} {clause()}"
    else:
        return rng.choice(w["fixed"])
    return capitalise(s) + "."


def non_english(rng: random.Random, lang: str) -> str:
    """2-4 paragraphs of simple sentences in `lang` (one of LANGUAGES), no sentence twice."""
    paras = []
    used: set[str] = set()
    for _ in range(rng.randint(2, 4)):
        sents: list[str] = []
        want = rng.randint(4, 8)
        while len(sents) < want:
            s = _foreign_sentence(rng, lang)
            if s not in used:  # no sentence twice in one document
                used.add(s)
                sents.append(s)
        paras.append(" ".join(sents))
    return "\n\n".join(paras)


def pii_items(rng: random.Random) -> list[str]:
    """Sentences carrying reserved-range PII: example.com/.org emails, TEST-NET IPs, 555-01xx phones."""
    t = _PII
    out = []
    for _ in range(rng.randint(2, 5)):
        first, last = rng.choice(t["first_names"]), rng.choice(t["last_names"])
        email = f"{first}{rng.choice(t['email_separators'])}{last}{rng.choice(('', str(rng.randint(1, 99))))}" \
                f"@{rng.choice(t['email_domains'])}"
        ip = f"{rng.choice(t['ip_networks'])}.{rng.randint(1, 254)}"
        area = rng.randint(201, 989)
        line = rng.randint(100, 199)
        phone = fill(rng.choice(t["phone_formats"]), area=area, line=line)
        out.append(fill(rng.choice(t["sentences"]), name=f"{first.title()} {last.title()}", email=email,
                        phone=phone, ip=ip))
    return out


def insert_lines(rng: random.Random, text: str, items: Sequence[str]) -> str:
    lines = text.split("\n")
    for item in items:
        lines.insert(rng.randint(0, len(lines)), item)
    return "\n".join(lines)


_TOKEN_SPLIT = re.compile(r"(\s+)")


def near_dup(rng: random.Random, text: str) -> str:
    """Edit 3-10 % of the words in a few contiguous bursts (replace, delete or insert)."""
    toks = _TOKEN_SPLIT.split(text)
    words = [t for t in toks if t and not t.isspace()]
    n = len(words)
    target = max(math.ceil(0.03 * n), round(n * rng.uniform(0.03, 0.10)))
    vocab = sorted(set(words))
    # Work on a list of word slots; each slot is (word, trailing separator).
    slots: list[list[str]] = []
    lead = ""
    for t in toks:
        if not t:
            continue
        if t.isspace():
            if slots:
                slots[-1][1] += t
            else:
                lead += t
        else:
            slots.append([t, ""])
    touched = [False] * len(slots)
    done = 0
    attempts = 0
    ops: list[tuple[str, int, int]] = []
    while done < target and attempts < 1000:
        attempts += 1
        size = min(rng.randint(4, 12), target - done)
        start = rng.randint(0, max(0, len(slots) - size))
        lo, hi = max(0, start - 5), min(len(slots), start + size + 5)  # keep bursts apart
        if any(touched[lo:hi]):
            continue
        for i in range(start, min(len(slots), start + size)):
            touched[i] = True
        ops.append((rng.choice(("replace", "replace", "delete", "insert")), start, size))
        done += size
    # Apply from the end so earlier indices stay valid.
    for op, start, size in sorted(ops, key=lambda o: -o[1]):
        end = min(len(slots), start + size)
        if op == "replace":
            for i in range(start, end):
                new = rng.choice(vocab)
                if new == slots[i][0]:
                    new = new + "s"
                slots[i][0] = new
        elif op == "delete":
            sep = slots[end - 1][1]
            del slots[start:end]
            if start > 0:
                slots[start - 1][1] = slots[start - 1][1] if slots[start - 1][1] else sep
        else:
            ins = [[rng.choice(vocab), " "] for _ in range(size)]
            slots[start:start] = ins
    return (lead + "".join(w + s for w, s in slots)).strip() or text + " x"


def _cp1252_fallback_table() -> dict[int, str]:
    """Latin-1 char -> Windows-1252 char for 0x80-0x9F (undefined bytes stay as C1 controls, like browsers)."""
    table = {}
    for b in range(0x80, 0xA0):
        try:
            table[b] = bytes([b]).decode("cp1252")
        except UnicodeDecodeError:
            continue
    return table


_CP1252 = _cp1252_fallback_table()


def typographic(rng: random.Random, text: str) -> str:
    """Give an ASCII text the curly quotes, dashes and accents that real web pages have."""
    text = re.sub(r'"([^"\n]{1,200})"', "\u201c\\1\u201d", text)
    text = text.replace("'", "\u2019").replace("--", "\u2014").replace("...", "\u2026")
    if len(text.encode("utf-8")) - len(text) < 6:  # fewer than ~3 non-ASCII characters
        words = text.split(" ")
        for _ in range(3):
            words.insert(rng.randint(0, len(words)), rng.choice(_ACCENTED))
        text = " ".join(words)
    return text


def mojibake(text: str) -> str:
    """UTF-8 bytes misread as Windows-1252 (the classic 'â€™' damage that ftfy.fix_text undoes)."""
    return text.encode("utf-8").decode("latin-1").translate(_CP1252)

"""Shared per-document analysis: tokenise once, count once, let every rule read the result.

Words are the tokens of spaCy's rule-based English tokeniser (`spacy.blank("en")`), which datatrove
uses for the Gopher, C4 and FineWeb rules, so that a bound from the papers means the same here as
there. spaCy tokenises each whitespace-separated chunk on its own, so its rules are applied once per
distinct chunk and cached (`CHUNKS`). A filter reads a whole batch at once (`batch_tokens`): Arrow
splits the text column into chunks and finds the distinct ones, each distinct chunk is looked up once,
and numpy lays out every document's tokens as integer ids with their lengths and counts (tokens,
non-symbol words, their characters, tokens with a letter), with no Python object per token. Rules that
need one document's token strings (decontamination) get them from `tokenize` or the per-document `TOKENS`.

Measured against spaCy 3.8 and datatrove 0.10.1: the same tokens for every chunk of bench/filters.py's
two corpora (stdlib docstrings, Bible chapters and web pages; docstrings and READMEs of installed
packages) and of 90,000 random chunks of letters, digits and punctuation, and the same word list for
4,251 of those 4,252 documents. The one left: spaCy also matches special cases across a space, which
then apply nowhere but can stop one inside a chunk (`(input): '(` keeps `)` `:` apart, as `:'(` would
take the ":"); chunk by chunk, we merge the "):".
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from itertools import chain

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# ------------------------------------------------------------------------------------------------
# spaCy's English tokeniser rules (spaCy 3.8, MIT licence: spacy/lang/punctuation.py,
# spacy/lang/en/punctuation.py, spacy/lang/char_classes.py, spacy/lang/tokenizer_exceptions.py,
# spacy/lang/en/tokenizer_exceptions.py), mirrored for what English and technical prose contain. They
# decide, e.g. (spaCy's tokens on the right; each case is in tests/test_tokenisation.py):
#   `(int):`         ( int ):         "):" is one of spaCy's emoticons, merged after the affixes split it
#   `and/or`, `e.g.` one token        special cases (abbreviations, `x.`, `w/o`, `C++`, emoticons)
#   `:attr:`x``      : attr:`x `      ":" and "`" split off the ends only; no infix rule splits ":`"
#   `https://a.b/c.` https://a.b/c .  the URL pattern keeps a URL whole once the affixes are off
#   `foo.bar()`      foo.bar ( )      inside a word "." splits only between a lower- and an upper-case
#   `nn.Module`      nn . Module      letter; "foo.bar" matches the URL pattern (a lower-case "TLD")
#   `--flag`, `-1,`  --flag / -1 ,    "-" is neither a prefix nor a suffix; inside a word it splits only
#   `2018-01-01`     2018 - 01 - 01   before a letter, or between digits
#   `1.2.3.`, `3.14` 1.2.3 . / 3.14   no infix splits a dot between digits; a final "." is a suffix,
#   `J.`, `USA.`     J. / USA .       but not after one capital
#   `wait..`         wait ..          runs of dots are one token
#   `id`, `cannot`   i d / can not    contraction exceptions, also without their apostrophe
# Character classes are narrowed to Latin, Greek, Cyrillic and CJK letters as spaCy lists them; text in
# other scripts may split differently at the odd "." or ",".
# ------------------------------------------------------------------------------------------------

# Special cases kept as one token (emoticons, abbreviations, symbols spelt with punctuation).
_EMOTICONS = r"""
:) :-) :)) :-)) :))) :-))) (: (-: =) (= :] :-] [: [-: [= =] :o) (o: :} :-} 8) 8-) (-8 ;) ;-) (; (-; :( :-( :(( :-((
:((( :-((( ): )-: =( >:( :') :'-) :'( :'-( :/ :-/ =/ =| :| :-| ]= =[ :1 :P :-P :p :-p :O :-O :o :-o :0 :-0 :() >:o
:* :-* :3 :-3 =3 :> :-> :X :-X :x :-x :D :-D ;D ;-D =D xD XD xDD XDD 8D 8-D ^_^ ^__^ ^___^ >.< >.> <.< ._. ;_; -_-
-__- v.v V.V v_v V_V o_o o_O O_o O_O 0_o o_0 0_0 o.O O.o O.O o.o 0.0 o.0 0.o @_@ <3 <33 <333 </3 (^_^) (-_-) (._.)
(>_<) (*_*) (¬_¬) ಠ_ಠ ಠ︵ಠ (ಠ_ಠ) ¯\(ツ)/¯ (╯°□°）╯︵┻━┻ ><(((*>""".split()
_WHOLE = r"""
' \") <space> '' C++ a. b. c. d. e. f. g. h. i. j. k. l. m. n. o. p. q. r. s. t. u. v. w. x. y. z. ä. ö. ü. \t \n —
'S 's ‘S ‘s and/or w/o 're 'Cause 'cause 'cos 'Cos 'coz 'Coz 'cuz 'Cuz 'bout ma'am Ma'am o'clock O'clock 'd a.m. Adm.
Bros. co. Co. Corp. D.C. Dr. e.g. E.g. E.G. Gen. Gov. i.e. I.e. I.E. Inc. Jr. Ltd. Md. Messrs. Mo. Mont. Mr. Mrs. Ms.
p.m. Ph.D. Prof. Rep. Rev. Sen. St. vs. v.s. Mt. Ak. Ala. Apr. Ariz. Ark. Aug. Calif. Colo. Conn. Dec. Del. Feb. Fla.
Ga. Ia. Id. Ill. Ind. Jan. Jul. Jun. Kan. Kans. Ky. La. Mar. Mass. Mich. Minn. Miss. N.C. N.D. N.H. N.J. N.M. N.Y.
Neb. Nebr. Nev. Nov. Oct. Okla. Ore. Pa. S.C. Sep. Sept. Tenn. Va. Wash. Wis. em 'em ll 'll nuff 'nuff""".split()
_DROPPED_G = ("lovin", "havin", "doin", "goin", "nothin", "nuthin", "ol", "somethin")  # also Title-case, and with "'"
# Contractions: host word -> the clitics it takes ("|" separates tokens). Each is a special case with
# its apostrophes, with "’", and without apostrophes ("dont" -> do nt, "id" -> i d), lower- and Title-case.
_CLITICS = {
    "i": "'m 'm|a 'll 'll|'ve 'd 'd|'ve 've",
    **dict.fromkeys(("you", "we", "they"), "'ll 'll|'ve 'd 'd|'ve 've 're"),
    **dict.fromkeys(("he", "she", "it"), "'ll 'll|'ve 'd 'd|'ve 's"),
    **dict.fromkeys(("who", "what", "when", "where", "why", "how", "there"), "'s 'll 'll|'ve 're 've 'd 'd|'ve"),
    **dict.fromkeys(("that", "this"), "'s 'll 'll|'ve 'd 'd|'ve"),
    **dict.fromkeys(("these", "those"), "'ll 'll|'ve 're 've 'd 'd|'ve"),
    **dict.fromkeys(("ca", "do", "does", "did", "had", "may", "need", "ought", "sha", "wo"), "n't n't|'ve"),
    **dict.fromkeys(("could", "might", "must", "should", "would"), "n't n't|'ve 've"),
    **dict.fromkeys(("ai", "are", "is", "was", "were", "have", "has", "dare"), "n't"),
    "not": "'ve", "can": "not", "gon": "na", "got": "ta",
}
_NOT_SPECIAL = {"Ill", "ill", "Its", "its", "Hell", "hell", "Shell", "shell", "Shed", "shed", "were", "Were", "Well",
                "well", "Whore", "whore"}  # words spaCy keeps whole that the rules above would split (ill = i ll)


def _special_cases() -> dict[str, tuple[str, ...]]:
    """spaCy's English tokenizer exceptions but white space: chunk -> its tokens (1,343 of them)."""
    out: dict[str, tuple[str, ...]] = {key: (key,) for key in (*_EMOTICONS, *_WHOLE)}
    for word in _DROPPED_G:
        for form in (word, word.title()):
            out[form], out[form + "'"] = (form,), (form + "'",)
    for host, clitics in _CLITICS.items():
        for form in (host, host.title()):
            for clitic in clitics.split():
                parts = (form, *clitic.split("|"))
                bare = tuple(part.replace("'", "") for part in parts)
                out["".join(parts)], out["".join(bare)] = parts, bare
    out.update({"let's": ("let", "'s"), "Let's": ("Let", "'s"), "c'mon": ("c'm", "on"), "C'mon": ("C'm", "on"),
                "y'all": ("y'", "all"), "yall": ("y", "all"), "how'd'y": ("how", "'d", "'y"),
                "How'd'y": ("How", "'d", "'y")})
    for hour in range(1, 13):
        for period in ("a.m.", "am", "p.m.", "pm"):
            out[f"{hour}{period}"] = (str(hour), period)
    for unit in "cfkCFK":
        out[f"°{unit}."] = ("°", unit, ".")
    for key in _NOT_SPECIAL:
        out.pop(key, None)
    for key, value in list(out.items()):  # typographic apostrophes too
        if "'" in key:
            out[key.replace("'", "’")] = tuple(part.replace("'", "’") for part in value)
    return out


SPECIAL_CASES = _special_cases()

# Character classes. spaCy lists cased letters of the Latin, Greek and Cyrillic blocks and treats
# Han, kana and Hangul as both; the common ranges of those are here, and "letter" is Python's.
_UNCASED = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
_LOWER = "a-z\u00df-\u00f6\u00f8-\u00ff\u0100-\u017f\u03ac-\u03ce\u0430-\u045f" + _UNCASED
_UPPER = "A-Z\u00c0-\u00d6\u00d8-\u00de\u0386-\u03ab\u0400-\u042f" + _UNCASED
_NUMBER_SIGNS = "²³¹¼½¾⁰⁴-⁹₀-₉"  # Python's \w has these (numbers, not digits); spaCy's letters do not
_LETTER = r"[^\W\d_" + _NUMBER_SIGNS + "]"
_LETTER_OR_DIGIT_BEFORE = r"(?<=[0-9]|" + _LETTER + ")"  # spaCy's [{ALPHA}0-9]
_QUOTES = "'\"”“`‘´’‚,„»«「」『』（）〔〕【】《》〈〉⟦⟧"
_PUNCT = r"… …… , : ; \! \? ¿ ؟ ¡ \( \) \[ \] \{ \} < > _ # \* & 。 ？ ！ ， 、 ； ： ～ · । ، ۔ ؛ ٪".split()
_CURRENCY = r"\$ £ € ¥ ฿ US\$ C\$ A\$ ₽ ﷼ ₴ ₠ ₡ ₢ ₣ ₤ ₥ ₦ ₧ ₨ ₩ ₪ ₫ ₭ ₮ ₯ ₰ ₱ ₲ ₳ ₵ ₶ ₷ ₸ ₹ ₺ ₻ ₼ ₾ ₿".split()
_UNITS = ("km km² km³ m m² m³ dm dm² dm³ cm cm² cm³ mm mm² mm³ ha µm nm yd in ft kg g mg µg t lb oz m/s km/h kmh mph "
          "hPa Pa mbar mb MB kb KB gb GB tb TB T G M K %").split()
# Symbols (Unicode "So": ©, °, arrows, box drawing, dingbats, emoji...): always a token of their own.
_ICONS = ("[\u00a6\u00a9\u00ae\u00b0\u2100\u2101\u2103-\u2106\u2108\u2109\u2114\u2116\u2117\u211e-\u2123\u2125"
          "\u2127\u2129\u212e\u213a\u213b\u214a\u214c\u214d\u214f\u218a\u218b\u2195-\u2199\u219c-\u219f\u21a1\u21a2"
          "\u21a4\u21a5\u21a7-\u21ad\u21af-\u21cd\u21d0\u21d1\u21d3\u21d5-\u21f3\u2300-\u2307\u230c-\u231f"
          "\u2322-\u2328\u232b-\u237b\u237d-\u239a\u23b4-\u23db\u23e2-\u2426\u2440-\u244a\u249c-\u24e9\u2500-\u25b6"
          "\u25b8-\u25c0\u25c2-\u25f7\u2600-\u266e\u2670-\u2767\u2794-\u27bf\u2800-\u28ff\u2b00-\u2b2f\u2b45\u2b46"
          "\u2b4d-\u2b73\u2b76-\u2b95\u2b98-\u2bc8\u2bca-\u2bfe\ufffc\ufffd\U0001f000-\U0001faff]")
_ELLIPSES = [r"\.\.+", "…"]
_QUOTE_LIST = [re.escape(q) for q in _QUOTES]
_PUNCT_SINGLES = "".join(char for p in _PUNCT if len(char := p.replace("\\", "")) == 1)

# Prefixes peel off the front of a chunk, one at a time: brackets, quotes, "#", "*", "_", "<", ":",
# currency, "=" and "%" - but never "-", "/", "." or "\", so `--flag`, `-1`, `/usr`, `.npy` stay whole.
PREFIX = re.compile("|".join("^" + p for p in ("§", "%", "=", "—", "–", r"\+(?![0-9])", *_PUNCT, *_ELLIPSES,
                                              *_QUOTE_LIST, *_CURRENCY, _ICONS)))
# Suffixes peel off the end: the same punctuation, "'s", a unit or currency after a number (`10km`),
# and "." after a digit, a lower-case letter or punctuation, or after two capitals - not after one
# capital (`J.`), so initials keep their dot.
SUFFIX = re.compile("|".join(p + "$" for p in (
    *_PUNCT, *_ELLIPSES, *_QUOTE_LIST, _ICONS, "'s", "'S", "’s", "’S", "—", "–",
    r"(?<=[0-9])\+", r"(?<=°[FfCcKk])\.", r"(?<=[0-9])(?:" + "|".join(_CURRENCY) + ")",
    r"(?<=[0-9])(?:" + "|".join(_UNITS) + ")",
    r"(?<=[0-9" + _LOWER + r"%²\-\+" + re.escape(_PUNCT_SINGLES + _QUOTES) + r"|()?:])\.",
    r"(?<=[" + _UPPER + "][" + _UPPER + r"])\.",
)))
_SUFFIX_MAX = 4  # the longest suffix, runs of dots aside ("mbar", "km/h")
_DIGITS = frozenset("0123456789")
_PREFIX_LETTERS = "UCA"  # the only prefixes that start with a letter or digit: US$, C$, A$
# Single characters that are a prefix, or a suffix, wherever they stand (the fast path of split_chunk).
_PREFIX_CHARS = frozenset("§%=—–" + _QUOTES + _PUNCT_SINGLES)
_SUFFIX_CHARS = frozenset("—–" + _QUOTES + _PUNCT_SINGLES)
# Infixes split what is left inside: runs of dots, symbols, an operator between digits (`2+2`,
# `2018-01-01`), "." between a lower- and an upper-case letter (`nn.Module`), "," between letters,
# a hyphen, "~", ":", "<", ">", "=" or "/" between a letter or digit and a letter (`e-mail`, `a=b`).
INFIX = re.compile("|".join((
    *_ELLIPSES, _ICONS, r"(?<=[0-9])[+\-\*^](?=[0-9-])",
    r"(?<=[" + _LOWER + re.escape(_QUOTES) + r"])\.(?=[" + _UPPER + re.escape(_QUOTES) + "])",
    r"(?<=" + _LETTER + r"),(?=" + _LETTER + ")",
    _LETTER_OR_DIGIT_BEFORE + r"(?:-|–|—|--|---|——|~)(?=" + _LETTER + ")",
    _LETTER_OR_DIGIT_BEFORE + r"[:<>=/](?=" + _LETTER + ")",
)))
# Every infix starts with one of these: where none is, no infix can be.
_INFIX_START = re.compile(r"[.…+\-*^,–—~:<>=/]|" + _ICONS)
# spaCy's URL pattern (after Diego Perini's, MIT): with or without a scheme, a host whose last label
# is lower-case letters, an optional port and path. A chunk left by the affixes that matches it is one token.
URL = re.compile(
    r"^(?:(?:[\w\+\-\.]{2,})://)?(?:\S+(?::\S*)?@)?(?:(?!(?:10|127)(?:\.\d{1,3}){3})"
    r"(?!(?:169\.254|192\.168)(?:\.\d{1,3}){2})(?!172\.(?:1[6-9]|2\d|3[0-1])(?:\.\d{1,3}){2})"
    r"(?:[1-9]\d?|1\d\d|2[01]\d|22[0-3])(?:\.(?:1?\d{1,2}|2[0-4]\d|25[0-5])){2}(?:\.(?:[1-9]\d?|1\d\d|2[0-4]\d|25[0-4]))"
    r"|(?:(?:[A-Za-z0-9\u00a1-\uffff][A-Za-z0-9\u00a1-\uffff_-]{0,62})?[A-Za-z0-9\u00a1-\uffff]\.)+"
    r"(?:[" + _LOWER + r"]{2,63}))(?::\d{2,5})?(?:[/?#]\S*)?$")


def _suffix_length(tail: str) -> int:
    """The length of the suffix that ends `tail` (0: none). No suffix ends in an ASCII digit, and one that
    ends in a letter is "'s" or a unit after a number; only a run of dots is longer than _SUFFIX_MAX."""
    last = tail[-1]
    if last in _SUFFIX_CHARS and last != "…":  # no longer suffix ends in one of these ("……" does in "…")
        return 1
    if last in _DIGITS or (last.isalpha() and tail[-2:-1] not in ("'", "’")
                           and _DIGITS.isdisjoint(tail[-_SUFFIX_MAX - 1:])):
        return 0
    found = SUFFIX.search(tail, len(tail.rstrip(".")) if tail.endswith("..") else max(0, len(tail) - _SUFFIX_MAX))
    return found.end() - found.start() if found else 0


def _infixes(rest: str) -> Iterator[re.Match[str]]:
    """INFIX.finditer(rest), trying the pattern only where an infix can start (the same matches, faster)."""
    end = 0
    for candidate in _INFIX_START.finditer(rest):
        if candidate.start() >= end and (found := INFIX.match(rest, candidate.start())):
            end = found.end()
            yield found


def _split_affixes(chunk: str, specials: bool = True) -> list[str]:
    """spaCy's Tokenizer._split_affixes and _attach_tokens: peel prefixes and suffixes until a special
    case or nothing is left, then keep the middle whole (a special case or a URL) or split it on infixes."""
    prefixes: list[str] = []
    suffixes: list[str] = []
    rest, last = chunk, -1
    while rest and len(rest) != last:
        if specials and rest in SPECIAL_CASES:
            break
        last = len(rest)
        if rest[0] in _PREFIX_CHARS:  # what PREFIX.match gives: no longer prefix starts with one of these
            pre = 1
        else:
            found = PREFIX.match(rest) if rest[0] in _PREFIX_LETTERS or not rest[0].isalnum() else None
            pre = found.end() if found else 0
        if pre and specials and rest[pre:] in SPECIAL_CASES:
            prefixes.append(rest[:pre])
            rest = rest[pre:]
            break
        suf = _suffix_length(rest[pre:]) if pre < len(rest) else 0
        if suf and specials and rest[:-suf] in SPECIAL_CASES:
            suffixes.append(rest[-suf:])
            rest = rest[:-suf]
            break
        if pre and suf and pre + suf <= len(rest):
            prefixes.append(rest[:pre])
            suffixes.append(rest[-suf:])
            rest = rest[pre:-suf]
        elif pre:
            prefixes.append(rest[:pre])
            rest = rest[pre:]
        elif suf:
            suffixes.append(rest[-suf:])
            rest = rest[:-suf]
    tokens = prefixes
    if rest:
        special = SPECIAL_CASES.get(rest) if specials else None
        if special:
            tokens.extend(special)
        elif "." in rest and URL.match(rest):
            tokens.append(rest)
        else:
            start = 0
            for infix in _infixes(rest):
                if infix.start() == 0:
                    continue
                if infix.start() != start:
                    tokens.append(rest[start:infix.start()])
                if infix.end() != infix.start():
                    tokens.append(infix.group())
                start = infix.end()
            if rest[start:]:
                tokens.append(rest[start:])
    tokens.extend(reversed(suffixes))
    return tokens


def _special_sequences() -> dict[tuple[str, ...], str]:
    """spaCy's special-case matcher: special cases that the affix rules would split, by the tokens they
    split into (`):` -> `)`, `:`), to merge where those tokens follow each other in one chunk."""
    return {tokens: key for key in SPECIAL_CASES
            if len(tokens := tuple(_split_affixes(key, specials=False))) > 1}


_SEQUENCES = _special_sequences()
_SEQUENCE_PAIRS = frozenset(tokens[:2] for tokens in _SEQUENCES)
_SEQUENCE_MAX = max(map(len, _SEQUENCES))


def _merge_special_cases(tokens: list[str]) -> list[str]:
    """Replace runs of tokens that spell a special case by its tokens; longer runs first, then the
    earlier ones (spaCy's _filter_special_spans)."""
    if len(tokens) < 2 or _SEQUENCE_PAIRS.isdisjoint(zip(tokens, tokens[1:])):
        return tokens
    found = [(start, end) for start in range(len(tokens) - 1) if tuple(tokens[start:start + 2]) in _SEQUENCE_PAIRS
             for end in range(start + 2, min(start + _SEQUENCE_MAX, len(tokens)) + 1)
             if tuple(tokens[start:end]) in _SEQUENCES]
    taken: set[int] = set()
    chosen: list[tuple[int, int]] = []
    for start, end in sorted(found, key=lambda span: (span[0] - span[1], span[0])):
        if start not in taken and end - 1 not in taken:
            chosen.append((start, end))
        taken.update(range(start, end))
    out: list[str] = []
    position = 0
    for start, end in sorted(chosen):
        out.extend(tokens[position:start])
        out.extend(SPECIAL_CASES[_SEQUENCES[tuple(tokens[start:end])]])
        position = end
    out.extend(tokens[position:])
    return out


def split_chunk(chunk: str) -> tuple[str, ...]:
    """spaCy's English tokens of one whitespace-free chunk."""
    special = SPECIAL_CASES.get(chunk)
    if special:
        return special
    if chunk.isalpha():  # no affix, infix or URL rule applies to letters alone
        return (chunk,)
    # Fast path for most punctuated words, `(word`, `word,`, `word.`, `"word"`: one prefix character, letters,
    # one suffix character ("." after a lower-case letter), where no part but the letters is a special case.
    lead = chunk[0] in _PREFIX_CHARS
    trail = chunk[-1] in _SUFFIX_CHARS or (chunk[-1] == "." and "a" <= chunk[-2:-1] <= "z")
    core = chunk[lead:len(chunk) - trail]
    if core.isalpha() and chunk[lead:] not in SPECIAL_CASES and chunk[:len(chunk) - trail] not in SPECIAL_CASES:
        tokens = [chunk[0]] * lead + list(split_chunk(core)) + [chunk[-1]] * trail
    else:
        tokens = _split_affixes(chunk)
    return tuple(_merge_special_cases(tokens))


# ------------------------------------------------------------------------------------------------
# Counting

# datatrove's PUNCTUATION (datatrove.utils.text): a token made only of these is a symbol, not a word.
PUNCTUATION = "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»" + "".join(
    map(chr, (*range(0, 9), *range(11, 13), *range(13, 32), *range(127, 160))))


def _is_word(token: str) -> bool:
    """datatrove's non-symbol word: a token with a character outside PUNCTUATION (no letter is in it)."""
    return token.isalpha() or bool(token.strip(PUNCTUATION))


def _has_letter(token: str) -> bool:
    return token.isalpha() or any(map(str.isalpha, token))


class _TokensByChunk(dict):
    """chunk -> its tokens, split on first sight; emptied when full."""

    def __init__(self, max_chunks: int) -> None:
        super().__init__()
        self.max_chunks = max_chunks

    def __missing__(self, chunk: str) -> tuple[str, ...]:
        if len(self) >= self.max_chunks:
            self.clear()
        tokens = self[chunk] = split_chunk(chunk) if chunk else ()
        return tokens


@dataclass(frozen=True)
class TokenCounts:
    """Per document: all tokens, words (tokens with a character that is not punctuation, datatrove's
    non-symbol words), the characters in those words, and tokens with a letter."""

    tokens: np.ndarray
    words: np.ndarray
    word_chars: np.ndarray
    alpha: np.ndarray


@dataclass(frozen=True)
class BatchTokens:
    """Every document's tokens of a text column, flat, as numbers: what the rules of a batch read at once.

    Document d's tokens are positions starts[d]:starts[d + 1] of `ids` (equal ids, equal tokens: an id is
    the token's key in `vocabulary`, which holds this batch's distinct tokens) and `lengths` (characters)."""

    ids: np.ndarray
    lengths: np.ndarray
    starts: np.ndarray
    vocabulary: dict[str, int]
    counts: TokenCounts

    def take(self, rows: np.ndarray) -> BatchTokens:
        """The BatchTokens of these documents (rows), in this order."""
        sizes = np.diff(self.starts)[rows]
        where = _spans(self.starts[rows], sizes)
        return BatchTokens(self.ids[where], self.lengths[where], np.concatenate(([0], np.cumsum(sizes))),
                           self.vocabulary, TokenCounts(*(getattr(self.counts, f.name)[rows]
                                                          for f in fields(TokenCounts))))


def _spans(firsts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The positions firsts[k], firsts[k] + 1, ... (sizes[k] of them) for every k, one after the other."""
    return np.repeat(firsts - (np.cumsum(sizes) - sizes), sizes) + np.arange(int(sizes.sum()))


def sums_by_document(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """values summed over each document's span of positions (empty documents get 0)."""
    cumulative = np.concatenate(([0], np.cumsum(values, dtype=np.int64)))
    return np.diff(cumulative[starts])


def _rows_within(texts: list[str], earlier: list[str]) -> np.ndarray | None:
    """The rows of `earlier` holding `texts`, in order (as a filter's survivors are), or None if they are not
    there: texts are compared whole, so a match is the same text."""
    rows: list[int] = []
    row = 0
    for text in texts:
        while row < len(earlier) and earlier[row] != text:
            row += 1
        if row == len(earlier):
            return None
        rows.append(row)
        row += 1
    return np.array(rows, dtype=np.int64)


class ChunkCache:
    """Tokens per distinct chunk, shared by every step in a process. Bounded by distinct chunks (our
    choice: 200,000, ~55 MB at ~270 bytes each; 2,000 demo documents hold ~51,000, 2,000 docstring pages
    of installed packages ~156,000), and emptied when full, so that memory does not grow with the text seen;
    besides, the last batch's texts and analysis (`batch`), replaced by the next batch's."""

    def __init__(self, max_chunks: int = 200_000):
        self._tokens_cache = _TokensByChunk(max_chunks)
        # The last batch analysed from scratch: its texts and BatchTokens. The filters of a stack run one
        # after the other on a batch's survivors, whose analysis is then a `take` of this one.
        self._batch_cache: dict[str, tuple[list[str], BatchTokens]] = {}

    def tokens(self, text: str) -> list[str]:
        return list(chain.from_iterable(map(self._tokens_cache.__getitem__, text.split())))

    def batch(self, text: pa.Array) -> BatchTokens:
        """BatchTokens of a text column: taken from the last batch's when every text is one of its texts,
        in order (the survivors of the filter before), else analysed."""
        texts = text.to_pylist()
        last = self._batch_cache.get("last")
        rows = _rows_within(texts, last[0]) if last is not None else None
        if rows is not None:
            return last[1].take(rows)
        tokens = self._analyse(text)
        self._batch_cache["last"] = (texts, tokens)
        return tokens

    def _analyse(self, text: pa.Array) -> BatchTokens:
        """Arrow splits the column into chunks as str.split() does (the same white space: checked for every
        code point, tests/test_tokenisation.py; it also yields "" at either end of a text, which holds no
        token), and finds the distinct ones; each distinct chunk's tokens come from the cache once, and
        numpy lays them out per occurrence."""
        chunks = pc.utf8_split_whitespace(text)
        encoded = chunks.flatten().dictionary_encode()
        codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        by_chunk = list(map(self._tokens_cache.__getitem__, encoded.dictionary.to_pylist()))
        flat = list(chain.from_iterable(by_chunk))
        vocabulary: dict[str, int] = {}
        flat_ids = np.fromiter(map(vocabulary.setdefault, flat, range(len(flat))), np.int64, len(flat))
        per_chunk = np.fromiter(map(len, by_chunk), np.int64, len(by_chunk))
        per_occurrence = per_chunk[codes]
        # Position of every token of every occurrence in `flat`: its chunk's tokens there.
        where = _spans((np.cumsum(per_chunk) - per_chunk)[codes], per_occurrence)
        token_positions = np.concatenate(([0], np.cumsum(per_occurrence)))
        chunk_starts = np.concatenate(([0], np.cumsum(pc.list_value_length(chunks).fill_null(0).to_numpy(
            zero_copy_only=False), dtype=np.int64)))
        starts = token_positions[chunk_starts]
        ids, lengths = flat_ids[where], np.fromiter(map(len, flat), np.int64, len(flat))[where]
        # Per distinct token, whether it is a word and whether it has a letter; then summed per document.
        distinct = list(vocabulary)
        is_word = np.zeros(len(flat), dtype=np.int64)
        has_letter = np.zeros(len(flat), dtype=np.int64)
        keys = np.fromiter(vocabulary.values(), np.int64, len(distinct))
        is_word[keys] = np.fromiter(map(_is_word, distinct), bool, len(distinct))
        has_letter[keys] = np.fromiter(map(_has_letter, distinct), bool, len(distinct))
        words = is_word[ids]
        counts = TokenCounts(np.diff(starts), sums_by_document(words, starts),
                             sums_by_document(words * lengths, starts), sums_by_document(has_letter[ids], starts))
        return BatchTokens(ids, lengths, starts, vocabulary, counts)

    def counts(self, texts: Iterable[str]) -> TokenCounts:
        return self.batch(pa.array(list(texts), pa.large_string())).counts

    def clear(self) -> None:
        self._tokens_cache.clear()
        self._batch_cache.clear()


CHUNKS = ChunkCache()


def tokenize(text: str) -> list[str]:
    """spaCy's English tokens of `text`, white space left out (as datatrove's word splitter returns them)."""
    return CHUNKS.tokens(text)


def batch_tokens(text: pa.Array | pa.ChunkedArray) -> BatchTokens:
    """BatchTokens of every document of a text column."""
    return CHUNKS.batch(as_array(text))


def token_counts(text: pa.Array | pa.ChunkedArray) -> TokenCounts:
    """TokenCounts of every document of a text column."""
    return batch_tokens(text).counts


# Line breaks as str.splitlines sees them.
ARROW_LINE_BREAK = r"\r\n|[\n\r\v\f\x{1c}-\x{1e}\x{85}\x{2028}\x{2029}]"


def as_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def count(text: pa.Array, pattern: str) -> np.ndarray:
    """Matches of an RE2 pattern per document, as int64."""
    return pc.count_substring_regex(text, pattern).to_numpy(zero_copy_only=False).astype(np.int64)


def count_literal(text: pa.Array, literal: str) -> np.ndarray:
    return pc.count_substring(text, literal).to_numpy(zero_copy_only=False).astype(np.int64)


def char_lengths(text: pa.Array) -> np.ndarray:
    return pc.utf8_length(text).to_numpy(zero_copy_only=False).astype(np.int64)


def line_counts(text: pa.Array) -> np.ndarray:
    """len(text.splitlines()) per document, column-wise."""
    breaks = count(text, ARROW_LINE_BREAK)
    ends_with_break = pc.match_substring_regex(text, f"(?:{ARROW_LINE_BREAK})$").to_numpy(zero_copy_only=False)
    empty = char_lengths(text) == 0
    return np.where(empty, 0, breaks + 1 - ends_with_break.astype(np.int64))


def list_lengths(lists: pa.Array) -> np.ndarray:
    """Elements per row of a list column, as int64."""
    return pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)


def duplicated(lists: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a list column of strings (a document's lines, paragraphs): (repeated elements, characters in
    them), every occurrence after the first of an element in its row counting."""
    values = lists.flatten()
    sizes = list_lengths(lists)
    offsets = np.concatenate(([0], np.cumsum(sizes)))
    encoded = values.dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    owner = np.repeat(np.arange(len(sizes)), sizes)
    _, firsts = np.unique(owner * max(len(encoded.dictionary), 1) + codes, return_index=True)
    repeat = np.ones(len(codes), dtype=np.int64)
    repeat[firsts] = 0
    return sums_by_document(repeat, offsets), sums_by_document(repeat * char_lengths(values), offsets)


def safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator with 0 where the denominator is 0 (an empty document has no ratio)."""
    out = np.zeros(len(numerator), dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


class TokenCache:
    """Python token lists per document, shared across steps in one process.

    Keyed by (id, text), so a step that rewrites text (normalise, PII) gets fresh tokens. A token list
    costs ~12 bytes per character of its text, so the cache is bounded by characters (our choice: 64 M,
    one default shard, ~0.8 GB) and emptied when a shard is done (`clear`): the steps of one shard
    share tokens, and a worker's memory does not grow with the shards it has seen.
    """

    def __init__(self, max_chars: int = 64_000_000):
        self.max_chars = max_chars
        self.chars = 0
        self._cache: OrderedDict[tuple[str, int, int], list[str]] = OrderedDict()

    def tokens(self, doc_id: str, text: str) -> list[str]:
        key = (doc_id, len(text), hash(text))
        found = self._cache.get(key)
        if found is None:
            found = tokenize(text)
            self._cache[key] = found
            self.chars += len(text)
            while self.chars > self.max_chars and len(self._cache) > 1:
                (_, length, _), _ = self._cache.popitem(last=False)
                self.chars -= length
        return found

    def clear(self) -> None:
        self._cache.clear()
        self.chars = 0


TOKENS = TokenCache()


def ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """One uint64 per n-gram of a sequence of token ids (a polynomial rolling hash, mod 2^64)."""
    count_ = len(ids) - n + 1
    if count_ <= 0:
        return np.empty(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = np.zeros(count_, dtype=np.uint64)
        for k in range(n):
            h = h * np.uint64(0x9E3779B97F4A7C15) + ids[k:k + count_].astype(np.uint64) + np.uint64(1)
    return h

"""C4's quality rules (Raffel et al. 2020, section 2.2), as in datatrove's C4QualityFilter.

Line rules remove lines (no terminal punctuation, fewer than 3 words, a word over 1,000
characters, "javascript", cookie/terms-of-use lines); page rules reject the document ("lorem
ipsum", a curly bracket, fewer than 5 sentences left). Like the reference, the step rewrites the
text to the lines it keeps; `remove_lines: false` only measures and keeps the text as it is.
The bad-words list is optional: C4 used the LDNOOBW list, which is not shipped here; pass your
own words or a file.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa

from curation.analysis import tokenize
from curation.steps.base import Count, PositiveCount, StepOutput
from curation.steps.filter import Check, FilterParams, FilterStep, Measurement, reason
from curation.steps.registry import register

CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
END_PUNCTUATION = (".", "?", "!", '"', "'")
ELLIPSIS = "..."
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                     "use cookies")
# spaCy's Sentencizer (datatrove's sentence splitter), its default punct_chars: a sentence ends after a
# token that is one of these, once a token that is not punctuation follows.
SENTENCE_ENDS = frozenset(
    "!.?։؟۔܀܁܂߹।॥၊။።፧፨᙮᜵᜶᠃᠉᥄᥅᪨᪩᪪᪫᭚᭛᭞᭟᰻᰼᱾᱿‼‽⁇⁈⁉⸮⸼꓿꘎꘏꛳꛷꡶꡷꣎꣏꤯꧈꧉꩝꩞꩟꫰꫱꯫﹒﹖﹗！．？𐩖𐩗𑁇𑁈𑂾𑂿𑃀𑃁𑅁𑅂𑅃𑇅𑇆𑇍"
    "𑇞𑇟𑈸𑈹𑈻𑈼𑊩𑑋𑑌𑗂𑗃𑗉𑗊𑗋𑗌𑗍𑗎𑗏𑗐𑗑𑗒𑗓𑗔𑗕𑗖𑗗𑙁𑙂𑜼𑜽𑜾𑩂𑩃𑪛𑪜𑱁𑱂𖩮𖩯𖫵𖬷𖬸𖭄𛲟𝪈｡。")
_FIRST_SENTENCE_END = re.compile("[" + re.escape("".join(sorted(SENTENCE_ENDS))) + "]")
_FIRST_ASCII_SENTENCE_END = re.compile("[.!?]")  # the same for ASCII text, ten times faster
_ASCII_PUNCTUATION = "!\"#%&'()*,-./:;?@[\\]_{} "  # ASCII characters of Unicode category P*, and the space


class C4QualityParams(FilterParams):
    # Raffel et al. 2020 and the TFDS c4_utils reference implementation, as datatrove's defaults.
    remove_lines: bool = True
    remove_citations: bool = True
    filter_no_terminal_punct: bool = True
    min_num_sentences: Count | None = 5
    min_words_per_line: Count | None = 3
    max_word_length: PositiveCount | None = 1000
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True
    bad_words: list[str] | None = None
    bad_words_file: str | None = None


def _is_punctuation(token: str) -> bool:
    """spaCy's is_punct: every character in a Unicode punctuation category (so "`", "+", "=" are not)."""
    return all(unicodedata.category(char).startswith("P") for char in token)


@functools.lru_cache(maxsize=200_000)  # distinct chunks, as analysis.CHUNKS (our choice)
def _sentence_marks(chunk: str) -> str:
    """One letter per token of a chunk: "E" a sentence end, "P" other punctuation, "W" anything else. A chunk
    with no sentence end is one "W" or nothing: all that matters of it is whether a word follows an end."""
    if chunk.isascii() and not _FIRST_ASCII_SENTENCE_END.search(chunk):
        return "W" if chunk.strip(_ASCII_PUNCTUATION) else ""
    return "".join("E" if token in SENTENCE_ENDS else "P" if _is_punctuation(token) else "W"
                   for token in tokenize(chunk))


def count_sentences(line: str) -> int:
    """Sentences in a line as spaCy's Sentencizer splits it: one, plus one per sentence end that a token
    other than punctuation follows. On the shared tokens, so `torch.cuda.Stream, ...` ends a sentence
    after "cuda" as it does for datatrove, and `e.g.`, `Mr.`, `3.5`, `...` end none."""
    first_end = (_FIRST_ASCII_SENTENCE_END if line.isascii() else _FIRST_SENTENCE_END).search(line)
    if first_end is None or not line[first_end.start():].strip(_ASCII_PUNCTUATION):
        return 1 if line.strip() else 0  # only punctuation after the first sentence end: no second sentence
    # Other punctuation neither ends a sentence nor starts one: without it, each "EW" is a new sentence.
    marks = "".join(map(_sentence_marks, line.split())).replace("P", "")
    return 1 + marks.count("EW") if marks else 0


@register
class C4Quality(FilterStep[C4QualityParams]):
    """Line rules rewrite the text and page rules reject it, in one pass over the lines, so `measure` is
    its own. Its checks are what calibration and threshold views read: the sentence count, and the two page
    rules as switches (signal 1 where the rule fires, measured whether the rule is on or off)."""

    name = "c4_quality"
    checks = (Check("sentences", ">=", "min_num_sentences"), Check("lorem_ipsum", "<=", "filter_lorem_ipsum"),
              Check("curly_bracket", "<=", "filter_curly_bracket"))
    path_params = ("bad_words_file",)

    def __init__(self, params: C4QualityParams | None = None, **kwargs: object) -> None:
        super().__init__(params, **kwargs)
        p = self.params
        words = list(p.bad_words or [])
        if p.bad_words_file:
            words += [w.strip() for w in Path(p.bad_words_file).read_text(encoding="utf-8").splitlines() if w.strip()]
        self._bad_words = re.compile(r"(?:\W|^)(" + "|".join(map(re.escape, words)) + r")(?:\W|$)") if words else None

    def measure(self, batch: pa.Table) -> Measurement:
        texts = batch.column("text").to_pylist()
        reasons: list[str | None] = []
        new_texts: list[str] = []
        sentences = np.zeros(len(texts), dtype=np.int64)
        removed_frac = np.zeros(len(texts), dtype=np.float64)
        pages = np.zeros((len(texts), 2), dtype=np.int64)  # lorem_ipsum, curly_bracket: 1 where the rule fires
        self.lines_removed: dict[str, int] = {}
        for row, text in enumerate(texts):
            reason, kept, n_sentences, n_lines = self._check(text, pages[row])
            reasons.append(reason)
            new_texts.append(kept)
            sentences[row] = n_sentences
            removed_frac[row] = 1 - (kept.count("\n") + 1 if kept else 0) / max(n_lines, 1)
        annotations = {}
        if self.params.remove_lines and self.params.mode == "filter":
            annotations["text"] = pa.array(new_texts, pa.large_string())
        return Measurement(pa.array(reasons, pa.string()),
                           {"sentences": pa.array(sentences), "lorem_ipsum": pa.array(pages[:, 0]),
                            "curly_bracket": pa.array(pages[:, 1]), "lines_removed_frac": pa.array(removed_frac)},
                           annotations)

    def _drop(self, why: str) -> None:
        self.lines_removed[why] = self.lines_removed.get(why, 0) + 1

    def _check(self, text: str, pages: np.ndarray) -> tuple[str | None, str, int, int]:
        """(reason, the text as kept, sentences, lines); `pages` gets 1 for each page rule that fires in a line
        the line rules keep, on or off. A page rule's reason is the first in line order, as in the reference;
        the scan goes on after it only to measure the other page rule."""
        p = self.params
        if self._bad_words is not None and self._bad_words.search(text.lower()):
            return f"{self.name}:bad_words", text, 0, 0
        lines = text.splitlines()
        kept: list[str] = []
        n_sentences = 0
        page_reason = None
        for line in lines:
            line = stripped = line.strip()
            # A word longer than the bound needs a line longer than it.
            if (p.max_word_length is not None and len(line) > p.max_word_length
                    and any(len(w) > p.max_word_length for w in line.split())):
                self._drop("too_long_word")
                continue
            if p.remove_citations:
                line = CITATION.sub("", line)
            if p.filter_no_terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith(ELLIPSIS)):
                self._drop("no_terminal_punct")
                continue
            # The words of the line before citations go, split only as far as the minimum needs.
            if (p.min_words_per_line is not None
                    and len(stripped.split(None, p.min_words_per_line - 1)) < p.min_words_per_line):
                self._drop("too_few_words")
                continue
            lower = line.lower()
            if "lorem ipsum" in lower:
                pages[0] = 1
                if p.filter_lorem_ipsum and page_reason is None:
                    page_reason = f"{self.name}:lorem_ipsum"
            if p.filter_javascript and "javascript" in lower:
                self._drop("javascript")
                continue
            if "{" in line:
                pages[1] = 1
                if p.filter_curly_bracket and page_reason is None:
                    page_reason = f"{self.name}:curly_bracket"
            if p.filter_policy and any(s in lower for s in POLICY_SUBSTRINGS):
                self._drop("policy")
                continue
            n_sentences += count_sentences(line)
            kept.append(line)
        if page_reason is not None:
            return page_reason, text, n_sentences, len(lines)
        if p.min_num_sentences is not None and n_sentences < p.min_num_sentences:
            why = reason(self.name, "sentences", n_sentences, "<", p.min_num_sentences)
            return why, text, n_sentences, len(lines)
        return None, "\n".join(kept).strip(), n_sentences, len(lines)

    def apply(self, batch: pa.Table) -> StepOutput:
        out = super().apply(batch)
        out.counters.update({f"lines_removed:{k}": v for k, v in sorted(self.lines_removed.items())})
        return out

"""C4's quality rules (Raffel et al. 2020, section 2.2), as in datatrove's C4QualityFilter.

Line rules remove lines (no terminal punctuation, fewer than 3 words, a word over 1,000
characters, "javascript", cookie/terms-of-use lines); page rules reject the document ("lorem
ipsum", a curly bracket, fewer than 5 sentences left). Like the reference, the step rewrites the
text to the lines it keeps; `remove_lines: false` only measures and keeps the text as it is.
The bad-words list is optional: C4 used the LDNOOBW list, which is not shipped here; pass your
own words or a file.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from curation.steps.base import Count, PositiveCount, StepOutput
from curation.steps.filter import Check, FilterParams, FilterStep, Measurement, reason
from curation.steps.registry import register

CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
END_PUNCTUATION = (".", "?", "!", '"', "'")
ELLIPSIS = "..."
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                     "use cookies")
# Sentence breaks as a rule-based sentencizer (spaCy's, which datatrove uses) sees them: a token of
# ., ! or ? (optionally followed by closing quotes/brackets) before a space, with more words after it
# on the line. Abbreviations that tokenisers keep whole (Mr., e.g., U.S., single initials) do not break.
_SENTENCE_PUNCT = re.compile(r"[.!?]+(?=[\"'”’)\]}]*\s)")
_WORD_CHAR = re.compile(r"\w")
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "e.g", "i.e", "a.m", "p.m"})


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


def count_sentences(line: str) -> int:
    """Sentences in a line: one, plus one per sentence break followed by more words."""
    if not line:
        return 0
    breaks = 0
    for match in _SENTENCE_PUNCT.finditer(line):
        if match.group() == "..." or not _WORD_CHAR.search(line, match.end()):
            continue
        start = line.rfind(" ", 0, match.start()) + 1
        previous = line[start:match.start()]
        if match.group() == "." and (previous.lower() in _ABBREVIATIONS or (len(previous) == 1 and previous.isalpha())
                                     or (previous[-1:].isalnum() and "." in previous)):
            continue
        if not previous:
            continue
        breaks += 1
    return breaks + 1


@register
class C4Quality(FilterStep[C4QualityParams]):
    """Line rules rewrite the text and page rules reject it, in one pass over the lines, so `measure` is
    its own; the sentence count is its one threshold check."""

    name = "c4_quality"
    checks = (Check("sentences", ">=", "min_num_sentences"),)
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
        self.lines_removed: dict[str, int] = {}
        for row, text in enumerate(texts):
            reason, kept, n_sentences, n_lines = self._check(text)
            reasons.append(reason)
            new_texts.append(kept)
            sentences[row] = n_sentences
            removed_frac[row] = 1 - (kept.count("\n") + 1 if kept else 0) / max(n_lines, 1)
        annotations = {}
        if self.params.remove_lines and self.params.mode == "filter":
            annotations["text"] = pa.array(new_texts, pa.large_string())
        return Measurement(pa.array(reasons, pa.string()),
                           {"sentences": pa.array(sentences), "lines_removed_frac": pa.array(removed_frac)},
                           annotations)

    def _drop(self, why: str) -> None:
        self.lines_removed[why] = self.lines_removed.get(why, 0) + 1

    def _check(self, text: str) -> tuple[str | None, str, int, int]:
        p = self.params
        if self._bad_words is not None and self._bad_words.search(text.lower()):
            return f"{self.name}:bad_words", text, 0, 0
        lines = text.splitlines()
        kept: list[str] = []
        n_sentences = 0
        for line in lines:
            line = line.strip()
            words = line.split()
            if p.max_word_length is not None and any(len(w) > p.max_word_length for w in words):
                self._drop("too_long_word")
                continue
            if p.remove_citations:
                line = CITATION.sub("", line)
            if p.filter_no_terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith(ELLIPSIS)):
                self._drop("no_terminal_punct")
                continue
            if p.min_words_per_line is not None and len(words) < p.min_words_per_line:
                self._drop("too_few_words")
                continue
            lower = line.lower()
            if p.filter_lorem_ipsum and "lorem ipsum" in lower:
                return f"{self.name}:lorem_ipsum", text, n_sentences, len(lines)
            if p.filter_javascript and "javascript" in lower:
                self._drop("javascript")
                continue
            if p.filter_curly_bracket and "{" in line:
                return f"{self.name}:curly_bracket", text, n_sentences, len(lines)
            if p.filter_policy and any(s in lower for s in POLICY_SUBSTRINGS):
                self._drop("policy")
                continue
            n_sentences += count_sentences(line)
            kept.append(line)
        if p.min_num_sentences is not None and n_sentences < p.min_num_sentences:
            why = reason(self.name, "sentences", n_sentences, "<", p.min_num_sentences)
            return why, text, n_sentences, len(lines)
        return None, "\n".join(kept).strip(), n_sentences, len(lines)

    def apply(self, batch: pa.Table) -> StepOutput:
        out = super().apply(batch)
        out.counters.update({f"lines_removed:{k}": v for k, v in sorted(self.lines_removed.items())})
        return out

"""Length filter on characters and words, computed column-wise with Arrow.

Defaults are our choice for a first, coarse pass: drop fragments under 50 characters or
5 words and anything over 1,000,000 characters (Gopher's quality filter applies its own
50-100,000 word window).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from curation.steps.base import Count
from curation.steps.filter import Check, FilterParams, FilterStep, Signals
from curation.steps.registry import register


class LengthFilterParams(FilterParams):
    min_chars: Count | None = 50
    max_chars: Count | None = 1_000_000
    min_words: Count | None = 5
    max_words: Count | None = None
    ordered = (("min_chars", "max_chars"), ("min_words", "max_words"))


def word_counts(text: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Whitespace-separated words per document."""
    return pc.count_substring_regex(text, r"\S+")


@register
class LengthFilter(FilterStep[LengthFilterParams]):
    name = "length_filter"
    checks = (Check("chars", ">=", "min_chars"), Check("chars", "<=", "max_chars"),
              Check("words", ">=", "min_words"), Check("words", "<=", "max_words"))

    def signals(self, batch: pa.Table) -> Signals:
        text = batch.column("text")
        return {"chars": pc.utf8_length(text).combine_chunks(), "words": word_counts(text).combine_chunks()}

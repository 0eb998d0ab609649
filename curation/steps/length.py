"""Length filter on characters and words, computed column-wise with Arrow.

Defaults are our choice for a first, coarse pass: drop fragments under 50 characters or
5 words and anything over 1,000,000 characters (Gopher's quality filter applies its own
50-100,000 word window).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from curation.steps.base import Count, FilterParams, FilterStep, Measurement, first_failure, threshold_reason


class LengthFilterParams(FilterParams):
    min_chars: Count | None = 50
    max_chars: Count | None = 1_000_000
    min_words: Count | None = 5
    max_words: Count | None = None
    ordered = (("min_chars", "max_chars"), ("min_words", "max_words"))


def word_counts(text: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Whitespace-separated words per document."""
    return pc.count_substring_regex(text, r"\S+")


class LengthFilter(FilterStep):
    name = "length_filter"
    Params = LengthFilterParams
    signal_bounds = {"chars": {"min": "min_chars", "max": "max_chars"},
                     "words": {"min": "min_words", "max": "max_words"}}

    def measure(self, batch: pa.Table) -> Measurement:
        p: LengthFilterParams = self.params  # type: ignore[assignment]
        text = batch.column("text")
        signals = {"chars": pc.utf8_length(text).combine_chunks(), "words": word_counts(text).combine_chunks()}
        conditions = []
        for signal, bound, op in (("chars", p.min_chars, "<"), ("chars", p.max_chars, ">"),
                                  ("words", p.min_words, "<"), ("words", p.max_words, ">")):
            if bound is None:
                continue
            values = signals[signal]
            test = pc.less(values, bound) if op == "<" else pc.greater(values, bound)
            conditions.append((test, threshold_reason(self.name, signal, values, op, bound)))
        return Measurement(first_failure(conditions, batch.num_rows), signals)

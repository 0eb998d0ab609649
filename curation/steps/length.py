"""Length filter on characters and words, computed column-wise with Arrow.

Defaults are our choice for a first, coarse pass: drop fragments under 50 characters or
5 words and anything over 1,000,000 characters (Gopher's quality filter later applies its own
50-100,000 word window).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from curation.steps.base import Step, StepOutput, StepParams, split


class LengthFilterParams(StepParams):
    min_chars: int | None = 50
    max_chars: int | None = 1_000_000
    min_words: int | None = 5
    max_words: int | None = None


def word_counts(text: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Whitespace-separated words per document."""
    return pc.count_substring_regex(text, r"\S+")


class LengthFilter(Step):
    name = "length_filter"
    Params = LengthFilterParams

    def apply(self, batch: pa.Table) -> StepOutput:
        p: LengthFilterParams = self.params  # type: ignore[assignment]
        text = batch.column("text")
        chars = pc.utf8_length(text)
        words = word_counts(text) if p.min_words is not None or p.max_words is not None else None
        conditions, reasons = [], []
        for signal, values, bound, op in (
            ("chars", chars, p.min_chars, "<"),
            ("chars", chars, p.max_chars, ">"),
            ("words", words, p.min_words, "<"),
            ("words", words, p.max_words, ">"),
        ):
            if bound is None:
                continue
            test = pc.less(values, bound) if op == "<" else pc.greater(values, bound)
            conditions.append(test)
            reasons.append(pc.binary_join_element_wise(
                f"{self.name}:{signal}=", pc.cast(values, pa.string()), f"{op}{bound}", ""))
        if not conditions:
            return split(batch, pa.nulls(batch.num_rows, pa.string()))
        reason = pc.case_when(pc.make_struct(*conditions), *reasons)
        return split(batch, reason)

"""FineWeb's own quality rules (Penedo et al. 2024, "The FineWeb Datasets", section 3.3), with the
defaults of datatrove's FineWebQualityFilter: too few lines ending in punctuation, too many short
lines, too many characters in duplicated lines, and list-like pages (many line breaks per word).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation import analysis as A
from curation.steps.base import Count, Fraction, NonNegative
from curation.steps.filter import Check, FilterParams, FilterStep, Signals
from curation.steps.registry import register

# Sentence-ending punctuation across scripts (the Unicode Terminal_Punctuation characters that end
# sentences; quotes, brackets, ellipses, colons and semicolons are not among them), as datatrove uses.
STOP_CHARS = tuple(".!?\u037e\u0589\u061f\u06d4\u0700\u0701\u0702\u0964\u0965\u104a\u104b\u1362\u1367\u1368"
                   "\u166e\u1803\u1809\u1944\u1945\u203c\u203d\u2047\u2048\u2049\u2e2e\u3002\ua4ff\ua60e\ua60f"
                   "\ua6f3\ua6f7\ufe52\ufe56\ufe57\uff01\uff0e\uff1f\uff61")

_ENDS_IN_STOP_CHAR = "[" + "".join(STOP_CHARS) + "]$"  # none of them needs escaping in a class


class FineWebQualityParams(FilterParams):
    # Penedo et al. 2024 / datatrove defaults.
    line_punct_thr: Fraction | None = 0.12  # reject when fewer than this share of lines end in punctuation
    line_punct_exclude_zero: bool = False
    short_line_thr: Fraction | None = 0.67  # reject when more than this share of lines are short
    short_line_length: Count = 30
    char_duplicates_ratio: Fraction | None = 0.01  # reject when more than this share of characters repeat lines
    new_line_ratio: NonNegative | None = 0.3  # reject when line breaks per word exceed this


@register
class FineWebQuality(FilterStep[FineWebQualityParams]):
    name = "fineweb_quality"
    checks = (Check("lines", ">=", 1),  # a document with no line of text
              Check("line_punct_ratio", ">=", "line_punct_thr"), Check("short_line_ratio", "<=", "short_line_thr"),
              Check("char_dup_ratio", "<=", "char_duplicates_ratio"), Check("list_ratio", "<=", "new_line_ratio"))

    def signals(self, batch: pa.Table) -> Signals:
        text = A.as_array(batch.column("text"))
        lines = pc.split_pattern(text, "\n")
        every_line = lines.flatten()
        # Blank lines do not count (Arrow's white space is str.strip()'s: tests/test_tokenisation.py).
        written = np.flatnonzero(A.char_lengths(pc.utf8_trim_whitespace(every_line)) > 0)
        offsets = np.concatenate(([0], np.cumsum(A.list_lengths(lines))))
        kept_offsets = np.searchsorted(written, offsets)
        kept_per_document = np.diff(kept_offsets)
        kept = every_line.take(written)
        kept_lines = pa.LargeListArray.from_arrays(kept_offsets, kept)
        punctuated = pc.match_substring_regex(kept, _ENDS_IN_STOP_CHAR).to_numpy(zero_copy_only=False)
        short = A.char_lengths(kept) <= self.params.short_line_length
        breaks = A.count_literal(text, "\n")
        dup_chars = A.duplicated(kept_lines)[1] / np.maximum(A.char_lengths(text) - breaks, 1)
        return {"lines": kept_per_document,
                "line_punct_ratio": A.safe_ratio(A.sums_by_document(punctuated, kept_offsets), kept_per_document),
                "short_line_ratio": A.safe_ratio(A.sums_by_document(short, kept_offsets), kept_per_document),
                "char_dup_ratio": dup_chars,
                "list_ratio": A.safe_ratio(breaks, A.token_counts(text).tokens)}

    def failing(self, check: Check, values: np.ndarray, bound: float) -> np.ndarray:
        failed = super().failing(check, values, bound)
        if check.signal == "line_punct_ratio" and self.params.line_punct_exclude_zero:
            failed &= values > 0  # datatrove's option: pages with no punctuated line at all are left to other rules
        return failed

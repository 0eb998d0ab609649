"""FineWeb's own quality rules (Penedo et al. 2024, "The FineWeb Datasets", section 3.3), with the
defaults of datatrove's FineWebQualityFilter: too few lines ending in punctuation, too many short
lines, too many characters in duplicated lines, and list-like pages (many line breaks per word).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation import analysis as A
from curation.steps.base import Count, FilterParams, FilterStep, Fraction, Measurement, NonNegative
from curation.steps.gopher import _reason_column, duplicates

# Sentence-ending punctuation across scripts (the Unicode Terminal_Punctuation characters that end
# sentences; quotes, brackets, ellipses, colons and semicolons are not among them), as datatrove uses.
STOP_CHARS = tuple(".!?\u037e\u0589\u061f\u06d4\u0700\u0701\u0702\u0964\u0965\u104a\u104b\u1362\u1367\u1368"
                   "\u166e\u1803\u1809\u1944\u1945\u203c\u203d\u2047\u2048\u2049\u2e2e\u3002\ua4ff\ua60e\ua60f"
                   "\ua6f3\ua6f7\ufe52\ufe56\ufe57\uff01\uff0e\uff1f\uff61")


class FineWebQualityParams(FilterParams):
    # Penedo et al. 2024 / datatrove defaults.
    line_punct_thr: Fraction | None = 0.12  # reject when fewer than this share of lines end in punctuation
    line_punct_exclude_zero: bool = False
    short_line_thr: Fraction | None = 0.67  # reject when more than this share of lines are short
    short_line_length: Count = 30
    char_duplicates_ratio: Fraction | None = 0.01  # reject when more than this share of characters repeat lines
    new_line_ratio: NonNegative | None = 0.3  # reject when line breaks per word exceed this


class FineWebQuality(FilterStep):
    name = "fineweb_quality"
    Params = FineWebQualityParams
    signal_bounds = {"line_punct_ratio": {"min": "line_punct_thr"}, "short_line_ratio": {"max": "short_line_thr"},
                     "char_dup_ratio": {"max": "char_duplicates_ratio"}, "list_ratio": {"max": "new_line_ratio"}}

    def measure(self, batch: pa.Table) -> Measurement:
        p: FineWebQualityParams = self.params  # type: ignore[assignment]
        text = A.as_array(batch.column("text"))
        texts = text.to_pylist()
        n = len(texts)
        punct = np.zeros(n)
        short = np.zeros(n)
        dup_chars = np.zeros(n)
        empty = np.ones(n, dtype=bool)
        for row, doc in enumerate(texts):
            lines = [line for line in doc.split("\n") if line.strip()]  # blank lines do not count
            if not lines:
                continue  # rejected as empty below
            punct[row] = sum(1 for line in lines if line.endswith(STOP_CHARS)) / len(lines)
            short[row] = sum(1 for line in lines if len(line) <= p.short_line_length) / len(lines)
            dup_chars[row] = duplicates(lines)[1] / max(len(doc) - doc.count("\n"), 1)
            empty[row] = False
        newlines = A.count_literal(text, "\n")
        list_ratio = A.safe_ratio(newlines, A.count(text, A.ARROW_TOKEN))
        signals = {"line_punct_ratio": punct, "short_line_ratio": short, "char_dup_ratio": dup_chars,
                   "list_ratio": list_ratio}
        checks = [("lines", np.zeros(n, dtype=np.int64), empty, "<", 1)]
        if p.line_punct_thr is not None:
            failed = punct < p.line_punct_thr
            if p.line_punct_exclude_zero:
                failed &= punct > 0
            checks.append(("line_punct_ratio", punct, failed, "<", p.line_punct_thr))
        if p.short_line_thr is not None:
            checks.append(("short_line_ratio", short, short > p.short_line_thr, ">", p.short_line_thr))
        if p.char_duplicates_ratio is not None:
            checks.append(("char_dup_ratio", dup_chars, dup_chars > p.char_duplicates_ratio, ">",
                           p.char_duplicates_ratio))
        if p.new_line_ratio is not None:
            checks.append(("list_ratio", list_ratio, list_ratio > p.new_line_ratio, ">", p.new_line_ratio))
        return Measurement(_reason_column(n, checks, self.name), {k: pa.array(v) for k, v in signals.items()})

"""What every part of the version statistics shares: the rounding of numbers, the word pattern, the sample cut."""

from __future__ import annotations

import math
import re

SAMPLE_CHARS = 16_384  # characters kept of each sampled document (bounds the sample's memory)
WORD = re.compile(r"\w+")  # a word of the lexical and semantic measures (Python's \w: letters, digits, underscore)


def rounded(x: float) -> float:
    """A plain float rounded to 6 decimals, as every float in stats.json (0.0 for NaN and infinities)."""
    x = float(x)
    return round(x, 6) if math.isfinite(x) else 0.0

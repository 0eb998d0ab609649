"""Unicode and whitespace normalisation: remove NUL characters, repair mojibake with ftfy, NFC, tidy whitespace.

Rejects nothing that still has text; a document that normalises to nothing is rejected as
`normalize:empty`. Counts how many documents changed, and how many NUL characters were removed.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

import ftfy
import pyarrow as pa

from curation.steps.base import Count, Step, StepOutput, StepParams, split
from curation.steps.registry import register

_SPACES = re.compile(r"[^\S\n]+")  # runs of whitespace other than newlines
_TRAILING = re.compile(r"[^\S\n]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")
# Invisible characters that only hide duplicates and empty documents: zero-width space, word joiner,
# and byte-order marks inside text. (Zero-width joiners are kept: emoji and Indic scripts need them.)
_INVISIBLE = re.compile("[\u200b\u2060\ufeff]")


class NormalizeParams(StepParams):
    fix_mojibake: bool = True  # ftfy.fix_text; pure-ASCII text cannot be mojibake and is skipped
    # NFC is what most web corpora (e.g. FineWeb via ftfy) settle on.
    unicode_form: Literal["NFC", "NFKC", "NFD", "NFKD"] | None = "NFC"
    collapse_spaces: bool = True  # runs of spaces/tabs -> one space, trailing spaces dropped
    max_blank_lines: Count = 1  # keep paragraph breaks, drop runs of empty lines


@register
class Normalize(Step[NormalizeParams]):
    name = "normalize"

    def normalize(self, text: str) -> str:
        p = self.params
        # Ingest keeps a decoded NUL character (JSON's \u0000, a Parquet string) rather than lose the document;
        # no text is meant to hold one, and many tools stop reading at it.
        text = text.replace("\x00", "")
        if p.fix_mojibake and not text.isascii():
            text = ftfy.fix_text(text, normalization=p.unicode_form or "NFC")
        elif p.unicode_form and not text.isascii():
            text = unicodedata.normalize(p.unicode_form, text)
        if not text.isascii():
            text = _INVISIBLE.sub("", text)
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if p.collapse_spaces:
            text = _TRAILING.sub("\n", _SPACES.sub(" ", text))
        text = _BLANK_RUNS.sub("\n" * (p.max_blank_lines + 1), text)
        return text.strip()

    def apply(self, batch: pa.Table) -> StepOutput:
        before = batch.column("text").to_pylist()
        after = [self.normalize(t) for t in before]
        changed = sum(a != b for a, b in zip(after, before))
        nul_chars = sum(t.count("\x00") for t in before)
        batch = batch.set_column(batch.column_names.index("text"), "text", pa.array(after, pa.large_string()))
        reasons = pa.array([None if t else "normalize:empty" for t in after], pa.string())
        out = split(batch, reasons)
        out.counters["modified"] = changed
        if nul_chars:  # only where there were any, as pii_redact's `redacted:*` counters
            out.counters["nul_chars_removed"] = nul_chars
        return out

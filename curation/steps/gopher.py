"""Gopher's quality and repetition rules (Rae et al. 2021, "Scaling Language Models", appendix A,
Table A1), with the defaults and check order of datatrove's GopherQualityFilter and
GopherRepetitionFilter, which FineWeb uses.

Quality is measured column-wise over the whole batch (Arrow compute, no Python loop). Repetition
needs the tokens: n-grams are hashed to integers with numpy, and the sequential scan for
duplicated n-grams runs only on documents that have a repeated n-gram at all.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from curation import analysis as A
from curation.steps.base import Count, Fraction, NonNegative, PositiveCount
from curation.steps.filter import Check, FilterParams, FilterStep, Signals
from curation.steps.registry import register

# Gopher's stop words (Rae et al. 2021, A.1.1): a document needs at least two of them.
STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


class GopherQualityParams(FilterParams):
    # Rae et al. 2021, Table A1 / datatrove defaults.
    min_doc_words: Count | None = 50
    max_doc_words: Count | None = 100_000
    min_avg_word_length: NonNegative | None = 3
    max_avg_word_length: NonNegative | None = 10
    max_symbol_word_ratio: NonNegative | None = 0.1  # '#' and ellipses per word
    max_bullet_lines_ratio: Fraction | None = 0.9
    max_ellipsis_lines_ratio: Fraction | None = 0.3
    min_alpha_words_ratio: Fraction | None = 0.8  # words with at least one letter
    min_stop_words: Count | None = 2
    stop_words: tuple[str, ...] = STOP_WORDS
    ordered = (("min_doc_words", "max_doc_words"), ("min_avg_word_length", "max_avg_word_length"))


@register
class GopherQuality(FilterStep[GopherQualityParams]):
    name = "gopher_quality"
    checks = (
        Check("words", ">=", "min_doc_words"), Check("words", "<=", "max_doc_words"),
        Check("mean_word_length", ">=", "min_avg_word_length"), Check("mean_word_length", "<=", "max_avg_word_length"),
        Check("hash_ratio", "<=", "max_symbol_word_ratio"), Check("ellipsis_ratio", "<=", "max_symbol_word_ratio"),
        Check("bullet_lines", "<=", "max_bullet_lines_ratio"),
        Check("ellipsis_lines", "<=", "max_ellipsis_lines_ratio"),
        Check("alpha_words", ">=", "min_alpha_words_ratio"), Check("stop_words", ">=", "min_stop_words"),
    )

    def signals(self, batch: pa.Table) -> Signals:
        text = A.as_array(batch.column("text"))
        counts = A.token_counts(text)  # words: tokens with a character that is not punctuation
        tokens = counts.tokens
        hashes = A.count_literal(text, "#")
        ellipses = A.count_literal(text, "...") + A.count_literal(text, "…")
        lines = A.line_counts(text)
        # A bullet line counts once: the match runs to the end of its line, because Arrow's regex count
        # restarts after each match as at the start of a text, where "^" matches again ("--" would count twice).
        bullets = A.count(text, r"(?m)^[ \t]*[•\-][^\n]*")
        ellipsis_lines = A.count(text, r"(?m)(?:\.\.\.|…)[ \t\r]*$")
        # Distinct stop words among the tokens, matched case-sensitively (as the reference does).
        stop_words = frozenset(self.params.stop_words)
        stops = np.array([len(stop_words.intersection(A.TOKENS.tokens(doc_id, doc)))
                          for doc_id, doc in zip(batch.column("id").to_pylist(), text.to_pylist())], dtype=np.int64)
        return {
            "words": counts.words, "mean_word_length": A.safe_ratio(counts.word_chars, counts.words),
            "hash_ratio": A.safe_ratio(hashes, tokens), "ellipsis_ratio": A.safe_ratio(ellipses, tokens),
            "bullet_lines": A.safe_ratio(bullets, lines), "ellipsis_lines": A.safe_ratio(ellipsis_lines, lines),
            "alpha_words": A.safe_ratio(counts.alpha, tokens), "stop_words": stops,
        }


class GopherRepetitionParams(FilterParams):
    # Rae et al. 2021, Table A1 / datatrove defaults.
    dup_line_frac: Fraction | None = 0.3
    dup_para_frac: Fraction | None = 0.3
    dup_line_char_frac: Fraction | None = 0.2
    dup_para_char_frac: Fraction | None = 0.2
    # (n, the largest share of characters the n-grams may cover)
    top_n_grams: tuple[tuple[PositiveCount, Fraction], ...] = ((2, 0.2), (3, 0.18), (4, 0.16))
    dup_n_grams: tuple[tuple[PositiveCount, Fraction], ...] = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12),
                                                               (9, 0.11), (10, 0.10))


_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")


def duplicates(items: list[str]) -> tuple[int, int]:
    """(repeated elements, characters in them): every occurrence after the first counts."""
    seen: set[str] = set()
    elements = chars = 0
    for item in items:
        if item in seen:
            elements += 1
            chars += len(item)
        else:
            seen.add(item)
    return elements, chars


_MIX = np.uint64(0x9E3779B97F4A7C15)


def ngram_repetition(ids: np.ndarray, lengths: np.ndarray, top_ns: set[int], dup_ns: set[int]) -> dict[int, int]:
    """Gopher's n-gram repetition signals in one pass over n = 1, 2, ... (exact, as the reference):

    * for n in `top_ns`: characters of the most frequent n-gram (joined with spaces) times its count,
      ties going to the n-gram seen first (Counter.most_common's order);
    * for n in `dup_ns`: characters (without spaces) of n-grams repeating an earlier one, scanning
      left to right and jumping past each repeat.

    An n-gram can only repeat if its (n-1)-gram prefix repeats, so each n looks only at the
    positions whose previous n-gram was repeated: a set that shrinks fast on natural text.
    """
    total = len(ids)
    cumulative = np.concatenate(([0], np.cumsum(lengths)))
    pos = np.arange(total)
    hashes = ids.astype(np.uint64) + np.uint64(1)
    out: dict[int, int] = {}
    for n in range(1, max(top_ns | dup_ns) + 1):
        if n > 1:
            valid = pos + (n - 1) < total
            pos, hashes = pos[valid], hashes[valid]
            with np.errstate(over="ignore"):
                hashes = hashes * _MIX + ids[pos + (n - 1)].astype(np.uint64) + np.uint64(1)
        order = np.argsort(hashes, kind="stable")
        sorted_hashes = hashes[order]
        starts = np.flatnonzero(np.concatenate(([True], sorted_hashes[1:] != sorted_hashes[:-1])))
        counts = np.diff(np.concatenate((starts, [len(sorted_hashes)])))
        if n in top_ns and total - n + 1 > 0:
            best = int(counts.max()) if counts.size else 1
            if best >= 2:
                start = int(pos[order[starts[counts == best]]].min())
            else:
                start, best = 0, 1  # all n-grams unique: the first one, once
            out[n] = int(cumulative[start + n] - cumulative[start] + n - 1) * best
        repeated_sorted = np.repeat(counts >= 2, counts)
        keep = np.zeros(len(hashes), dtype=bool)
        keep[order] = repeated_sorted
        if n in dup_ns:
            first = np.zeros(len(hashes), dtype=bool)
            first[order[starts]] = True
            out[n] = _scan_repeats(pos[keep].tolist(), hashes[keep].tolist(), np.flatnonzero(~first[keep]).tolist(),
                                   cumulative, n)
        pos, hashes = pos[keep], hashes[keep]
        if pos.size == 0:
            for m in (top_ns | dup_ns):
                if m > n and m not in out:
                    out[m] = (int(cumulative[m] + m - 1) if m in top_ns and total - m + 1 > 0 else 0)
            break
    return out


def _scan_repeats(positions: list[int], hashes: list[int], candidates: list[int], cumulative: np.ndarray,
                  n: int) -> int:
    """The reference left-to-right scan, visiting only positions of repeated n-grams (the others
    are unique and can never be found in the seen-set)."""
    seen: set[int] = set()
    repeated = idx = k = 0
    for j in candidates:
        c = positions[j]
        if c < idx:
            continue  # jumped over by an earlier repeat: never visited
        k = bisect_left(positions, idx, k)
        seen.update(hashes[k:j])
        if hashes[j] in seen:
            repeated += int(cumulative[c + n] - cumulative[c])
            idx = c + n
        else:
            seen.add(hashes[j])
            idx = c + 1
        k = j + 1
    return repeated


@register
class GopherRepetition(FilterStep[GopherRepetitionParams]):
    name = "gopher_repetition"
    checks = (Check("dup_para_frac", "<=", "dup_para_frac"), Check("dup_para_char_frac", "<=", "dup_para_char_frac"),
              Check("dup_line_frac", "<=", "dup_line_frac"), Check("dup_line_char_frac", "<=", "dup_line_char_frac"))

    def rules(self) -> tuple[Check, ...]:
        """The declared checks, then one per n-gram size the parameters list (its bound a number)."""
        p = self.params
        return (*self.checks, *(Check(f"top_{n}gram_char_frac", "<=", bound) for n, bound in p.top_n_grams),
                *(Check(f"dup_{n}gram_char_frac", "<=", bound) for n, bound in p.dup_n_grams))

    def with_bounds(self, bounds: Mapping[Check, float]) -> GopherRepetitionParams:
        """The n-gram checks' bounds go back into `top_n_grams`/`dup_n_grams`, the others into their parameters."""
        by_signal = {check.signal: value for check, value in bounds.items()}
        p = super().with_bounds(bounds)
        top = tuple((n, by_signal.get(f"top_{n}gram_char_frac", b)) for n, b in p.top_n_grams)
        dup = tuple((n, by_signal.get(f"dup_{n}gram_char_frac", b)) for n, b in p.dup_n_grams)
        return type(p)(**{**p.model_dump(), "top_n_grams": top, "dup_n_grams": dup})

    def signals(self, batch: pa.Table) -> Signals:
        names = [check.signal for check in self.rules()]
        values = np.zeros((batch.num_rows, len(names)), dtype=np.float64)
        for row, (doc_id, text) in enumerate(zip(batch.column("id").to_pylist(), batch.column("text").to_pylist())):
            self._measure_one(doc_id, text, values[row])
        return {name: values[:, k] for k, name in enumerate(names)}

    def _measure_one(self, doc_id: str, text: str, out: np.ndarray) -> None:
        """Fills `out` with every signal of one document, in `rules()` order."""
        p = self.params
        size = len(text) or 1
        paragraphs = _PARAGRAPHS.split(text.strip())
        dup_paras, dup_para_chars = duplicates(paragraphs)
        lines = _LINES.split(text)
        dup_lines, dup_line_chars = duplicates(lines)
        out[0] = dup_paras / len(paragraphs)
        out[1] = dup_para_chars / size
        out[2] = dup_lines / len(lines)
        out[3] = dup_line_chars / size
        tokens = A.TOKENS.tokens(doc_id, text)
        # Equal tokens get equal ids (the position of their first occurrence), computed at C speed.
        vocab: dict[str, int] = {}
        token_ids = np.array(list(map(vocab.setdefault, tokens, range(len(tokens)))), dtype=np.int64)
        lengths = np.array(list(map(len, tokens)), dtype=np.int64)
        stats = ngram_repetition(token_ids, lengths, {n for n, _ in p.top_n_grams}, {n for n, _ in p.dup_n_grams})
        for k, (n, _) in enumerate(p.top_n_grams + p.dup_n_grams, start=4):
            out[k] = stats.get(n, 0) / size

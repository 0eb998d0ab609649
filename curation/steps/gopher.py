"""Gopher's quality and repetition rules (Rae et al. 2021, "Scaling Language Models", appendix A,
Table A1), with the defaults and check order of datatrove's GopherQualityFilter and
GopherRepetitionFilter, which FineWeb uses.

Both read the batch's tokens as integer ids (`analysis.batch_tokens`). Quality is measured column-wise
over the whole batch (Arrow compute and numpy, no Python loop per token). Repetition groups the n-grams of
the whole batch with numpy sorts, and the sequential scan for duplicated n-grams visits only positions of
n-grams that repeat.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
        analysed = A.batch_tokens(text)
        counts = analysed.counts  # words: tokens with a character that is not punctuation
        tokens = counts.tokens
        hashes = A.count_literal(text, "#")
        ellipses = A.count_literal(text, "...") + A.count_literal(text, "…")
        lines = A.line_counts(text)
        # A bullet line counts once: the match runs to the end of its line, because Arrow's regex count
        # restarts after each match as at the start of a text, where "^" matches again ("--" would count twice).
        bullets = A.count(text, r"(?m)^[ \t]*[•\-][^\n]*")
        ellipsis_lines = A.count(text, r"(?m)(?:\.\.\.|…)[ \t\r]*$")
        # Distinct stop words among the tokens, matched case-sensitively (as the reference does).
        stops = _distinct_per_document(analysed, self.params.stop_words)
        return {
            "words": counts.words, "mean_word_length": A.safe_ratio(counts.word_chars, counts.words),
            "hash_ratio": A.safe_ratio(hashes, tokens), "ellipsis_ratio": A.safe_ratio(ellipses, tokens),
            "bullet_lines": A.safe_ratio(bullets, lines), "ellipsis_lines": A.safe_ratio(ellipsis_lines, lines),
            "alpha_words": A.safe_ratio(counts.alpha, tokens), "stop_words": stops,
        }


def _distinct_per_document(tokens: A.BatchTokens, words: tuple[str, ...]) -> np.ndarray:
    """How many of `words` occur among each document's tokens."""
    wanted = np.array(sorted(tokens.vocabulary[word] for word in set(words) if word in tokens.vocabulary),
                      dtype=np.int64)
    hits = np.flatnonzero(np.isin(tokens.ids, wanted))
    documents = np.searchsorted(tokens.starts, hits, side="right") - 1
    which = np.searchsorted(wanted, tokens.ids[hits])  # 0 .. len(wanted) - 1
    present = np.unique(documents * len(wanted) + which) // max(len(wanted), 1)
    return np.bincount(present, minlength=len(tokens.starts) - 1).astype(np.int64)


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


# Paragraphs and lines as the reference splits them (re.split; RE2 splits the same on these patterns).
_PARAGRAPHS = r"\n{2,}"
_LINES = r"\n+"


def ngram_repetition(ids: np.ndarray, lengths: np.ndarray, starts: np.ndarray, top_ns: set[int],
                     dup_ns: set[int]) -> dict[int, np.ndarray]:
    """Gopher's n-gram repetition signals of every document of a batch, in one pass over n = 1, 2, ...
    (exact, as the reference; document d's tokens are positions starts[d]:starts[d + 1] of `ids`, equal
    ids for equal tokens, and of `lengths`, their characters), an int64 array per n:

    * for n in `top_ns`: characters of the most frequent n-gram (joined with spaces) times its count,
      ties going to the n-gram seen first (Counter.most_common's order);
    * for n in `dup_ns`: characters (without spaces) of n-grams repeating an earlier one, scanning
      left to right and jumping past each repeat.

    Each n-gram gets a group number, (its document, then its (n-1)-gram's group, then its last token)
    sorted, so that equal n-grams of one document share one and a document's groups are consecutive.
    An n-gram can only repeat if its (n-1)-gram prefix repeats, so each n looks only at the positions
    whose previous n-gram was repeated: a set that shrinks fast on natural text.
    """
    documents = len(starts) - 1
    sizes = np.diff(starts)
    document = np.repeat(np.arange(documents), sizes)
    ends = starts[1:][document]
    cumulative = np.concatenate(([0], np.cumsum(lengths, dtype=np.int64)))
    span = int(ids.max()) + 1 if len(ids) else 1
    if (max(documents, len(ids)) + 1) * span >= 2**63:
        raise ValueError(f"a batch of {len(ids):,} tokens is too large for int64 n-gram keys: pass smaller batches")
    out = {n: np.zeros(documents, dtype=np.int64) for n in top_ns | dup_ns}
    for n in top_ns:  # unless an n-gram repeats: the first n-gram, once
        first = starts[:-1][sizes >= n]
        out[n][sizes >= n] = cumulative[first + n] - cumulative[first] + n - 1
    positions, groups, position_ends = np.arange(len(ids)), document, ends
    for n in range(1, max(top_ns | dup_ns) + 1):
        if n > 1:
            whole = positions + (n - 1) < position_ends
            positions, groups, position_ends = positions[whole], groups[whole], position_ends[whole]
        keys = groups * span + ids[positions + (n - 1)]
        order = np.argsort(keys)
        sorted_keys = keys[order]
        new_group = np.ones(len(keys), dtype=bool)
        new_group[1:] = sorted_keys[1:] != sorted_keys[:-1]
        group_starts = np.flatnonzero(new_group)
        counts = np.diff(np.append(group_starts, len(keys)))
        groups = np.empty(len(keys), dtype=np.int64)
        groups[order] = np.cumsum(new_group) - 1
        repeated = counts[groups] >= 2
        if n in top_ns or n in dup_ns:
            first_seen = np.minimum.reduceat(positions[order], group_starts) if len(keys) else group_starts
        if n in top_ns:
            _most_frequent(out[n], counts, first_seen, document, cumulative, n)
        positions, groups, position_ends = positions[repeated], groups[repeated], position_ends[repeated]
        if n in dup_ns:
            found = np.array(_scan_repeats(positions.tolist(), groups.tolist(),
                                           np.flatnonzero(positions != first_seen[groups]).tolist(), n), dtype=np.int64)
            out[n] = np.zeros(documents, dtype=np.int64)
            np.add.at(out[n], document[found], cumulative[found + n] - cumulative[found])
        if positions.size == 0:
            break
    return out


def _most_frequent(out: np.ndarray, counts: np.ndarray, first_seen: np.ndarray, document: np.ndarray,
                   cumulative: np.ndarray, n: int) -> None:
    """Writes, for each document with a repeated n-gram, the characters of its most frequent one (the first
    seen among equals) times its count; the groups of one document are consecutive."""
    repeated = counts >= 2
    counts, first_seen = counts[repeated], first_seen[repeated]
    if counts.size == 0:
        return
    owner = document[first_seen]
    new_document = np.ones(len(owner), dtype=bool)
    new_document[1:] = owner[1:] != owner[:-1]
    spans = np.flatnonzero(new_document)
    best = np.maximum.reduceat(counts, spans)
    is_best = counts == best[np.cumsum(new_document) - 1]
    start = np.minimum.reduceat(np.where(is_best, first_seen, len(document)), spans)
    out[owner[spans]] = (cumulative[start + n] - cumulative[start] + n - 1) * best


def _scan_repeats(positions: list[int], groups: list[int], candidates: list[int], n: int) -> list[int]:
    """The reference left-to-right scan, visiting only positions of repeated n-grams (the others are unique
    and can never be found in the seen-set): the positions of the repeats. One scan serves a whole batch:
    groups never span documents, and a jump past a repeat never leaves its document."""
    seen: set[int] = set()
    found: list[int] = []
    idx = k = 0
    for j in candidates:
        c = positions[j]
        if c < idx:
            continue  # jumped over by an earlier repeat: never visited
        k = bisect_left(positions, idx, k)
        seen.update(groups[k:j])
        if groups[j] in seen:
            found.append(c)
            idx = c + n
        else:
            seen.add(groups[j])
            idx = c + 1
        k = j + 1
    return found


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
        p = self.params
        names = [check.signal for check in self.rules()]
        values = np.zeros((batch.num_rows, len(names)), dtype=np.float64)
        text = A.as_array(batch.column("text"))
        size = np.maximum(A.char_lengths(text), 1)
        paragraphs = pc.split_pattern_regex(pc.utf8_trim_whitespace(text), _PARAGRAPHS)
        lines = pc.split_pattern_regex(text, _LINES)
        dup_paras, dup_para_chars = A.duplicated(paragraphs)
        dup_lines, dup_line_chars = A.duplicated(lines)
        values[:, 0] = dup_paras / A.list_lengths(paragraphs)
        values[:, 1] = dup_para_chars / size
        values[:, 2] = dup_lines / A.list_lengths(lines)
        values[:, 3] = dup_line_chars / size
        tokens = A.batch_tokens(text)
        stats = ngram_repetition(tokens.ids, tokens.lengths, tokens.starts, {n for n, _ in p.top_n_grams},
                                 {n for n, _ in p.dup_n_grams})
        for k, (n, _) in enumerate(p.top_n_grams + p.dup_n_grams, start=4):
            values[:, k] = stats[n] / size
        return {name: values[:, k] for k, name in enumerate(names)}

"""Word tokens as datatrove's (spaCy's `blank("en")`), so that the Gopher, C4 and FineWeb bounds mean the same.

Every expected token list below is what spaCy 3.8's English tokenizer returns for the text (white space left
out, as datatrove's word splitter does); bench/filters.py measures the agreement on whole corpora.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from curation import analysis as A
from curation.steps import REGISTRY


@pytest.mark.parametrize("text, tokens", [
    # Google-style arguments: "):" is one of spaCy's emoticons, merged after the affixes split it.
    ("Args: x (int): the size.", ["Args", ":", "x", "(", "int", "):", "the", "size", "."]),
    ("data[:]", ["data", "[:", "]"]),
    # special cases spelt with punctuation
    ("and/or w/o e.g. x. i.e.,", ["and/or", "w/o", "e.g.", "x.", "i.e.", ","]),
    # Sphinx roles: only the ends split off
    (":attr:`x`", [":", "attr:`x", "`"]),
    (":class:`numpy.ndarray`.", [":", "class:`numpy.ndarray", "`", "."]),
    # URLs stay whole once their final punctuation is off; so do dotted names with a lower-case last part
    ("see https://example.com/a?b=1.", ["see", "https://example.com/a?b=1", "."]),
    # "." splits between a lower- and an upper-case letter only
    ("foo.bar() os.path.join nn.Module", ["foo.bar", "(", ")", "os.path.join", "nn", ".", "Module"]),
    # hyphens: neither prefix nor suffix; inside, they split before a letter or between digits
    ("--flag -1, utf-8 e-mail", ["--flag", "-1", ",", "utf-8", "e", "-", "mail"]),
    ("2018-01-01", ["2018", "-", "01", "-", "01"]),
    # numbers with dots, runs of dots; a final "." splits off, but not after one capital
    ("version 1.2.3. pi is 3.14 J. USA.", ["version", "1.2.3", ".", "pi", "is", "3.14", "J.", "USA", "."]),
    ("wait.. then...", ["wait", "..", "then", "..."]),
    # contractions, also without their apostrophe
    ("the id cannot don't", ["the", "i", "d", "can", "not", "do", "n't"]),
    # a unit after a number; underscores split off the ends
    ("10km __init__", ["10", "km", "_", "_", "init", "_", "_"]),
])
def test_tokens_are_spacys(text, tokens):
    assert A.tokenize(text) == tokens


def test_token_counts_use_datatroves_symbol_words():
    """A word is a token with a character outside datatrove's PUNCTUATION: "©" is one, "):" is not."""
    counts = A.token_counts(pa.array(["Copyright © 2024 the authors (int):"]))
    # tokens: Copyright © 2024 the authors ( int ):
    assert (counts.tokens[0], counts.words[0], counts.word_chars[0], counts.alpha[0]) == (8, 6, 27, 4)


def _signals(step: str, text: str) -> dict:
    table = pa.table({"id": ["d"], "text": pa.array([text], pa.large_string())})
    kept = REGISTRY[step](mode="annotate").apply(table).kept
    return {c.split("__", 1)[1]: kept.column(c)[0].as_py() for c in kept.column_names if "__" in c}


def test_gopher_alpha_ratio_counts_docstring_tokens_as_datatrove_does():
    signals = _signals("gopher_quality", "Args:\n    x (int): the size of the thing.")
    # Args : x ( int ): the size of the thing . -> 8 of 12 tokens have a letter
    assert signals["alpha_words"] == pytest.approx(8 / 12)


def test_gopher_counts_each_dash_underlined_heading_once():
    """reStructuredText underlines ("-----") start with "-": datatrove counts each such line once."""
    body = ("The parser reads the file and returns the rows that match the query, with the header and "
            "the types of each column. It is the main entry point of the module and is used by the tools.")
    text = f"Usage\n-----\n\n{body}\n\nNotes\n-----\n\n{body}"
    signals = _signals("gopher_quality", text)
    assert signals["bullet_lines"] == pytest.approx(2 / 9)  # 2 of text.splitlines()'s 9 lines
    assert REGISTRY["gopher_quality"]().measure(pa.table({"id": ["d"], "text": [text]})).reasons.to_pylist() == [None]


def test_the_chunk_cache_is_bounded_by_distinct_chunks():
    cache = A.ChunkCache(max_chunks=3)
    text = "one two, three. (four) five"
    assert cache.tokens(text) == A.tokenize(text) == ["one", "two", ",", "three", ".", "(", "four", ")", "five"]
    assert list(cache.counts([text]).tokens) == [9]
    assert len(cache._tokens_cache) <= 3  # emptied when full, then refilled


def test_arrow_splits_chunks_where_python_does():
    """The batch path splits on Arrow's white space: the same as str.split() at every code point."""
    texts = [f"a{chr(c)}b" for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    split = pc.utf8_split_whitespace(pa.array(texts, pa.large_string())).to_pylist()
    assert [t for t, chunks in zip(texts, split) if chunks != t.split()] == []


@pytest.mark.parametrize("texts", [
    ["Args: x (int): the size.", "", "  \n ", " lead and trail\u3000", "the id cannot don't. the the"],
    ["wait.. then... 2018-01-01 nn.Module", "x\x1cy\u2028z e.g. C++ :)"],
])
def test_batch_tokens_are_the_documents_tokens(texts):
    """Per document, the flat ids and lengths spell tokenize()'s tokens, and the counts are theirs."""
    batch = A.batch_tokens(pa.array(texts, pa.large_string()).slice(0))
    names = {key: token for token, key in batch.vocabulary.items()}
    for row, text in enumerate(texts):
        span = slice(batch.starts[row], batch.starts[row + 1])
        tokens = A.tokenize(text)
        assert [names[key] for key in batch.ids[span]] == tokens
        assert list(batch.lengths[span]) == [len(token) for token in tokens]
        words = [t for t in tokens if t.strip(A.PUNCTUATION)]
        assert (batch.counts.tokens[row], batch.counts.words[row], batch.counts.word_chars[row],
                batch.counts.alpha[row]) == (len(tokens), len(words), sum(map(len, words)),
                                             sum(any(c.isalpha() for c in t) for t in tokens))


def test_batch_tokens_of_a_sliced_column():
    column = pa.array(["one two", "three, four.", "five"], pa.large_string()).slice(1, 2)
    batch = A.batch_tokens(column)
    assert list(batch.starts) == [0, 4, 5]
    assert list(batch.counts.tokens) == [4, 1]


def _words(batch: A.BatchTokens) -> list[list[str]]:
    names = {key: token for token, key in batch.vocabulary.items()}
    return [[names[key] for key in batch.ids[batch.starts[row]:batch.starts[row + 1]]]
            for row in range(len(batch.starts) - 1)]


def test_a_filters_survivors_share_the_batchs_analysis_and_never_a_stale_one():
    """The next filter of a stack reads its batch's survivors: their analysis is the batch's, row for row; a
    text that changed (same id, same length) is analysed again."""
    texts = ["the cat sat.", "a dog ran off", "the cat sat.", "birds, (sing)"]
    A.CHUNKS.clear()
    A.batch_tokens(pa.array(texts, pa.large_string()))
    survivors = A.batch_tokens(pa.array([texts[1], texts[3]], pa.large_string()))
    assert _words(survivors) == [A.tokenize(texts[1]), A.tokenize(texts[3])]
    assert list(survivors.counts.tokens) == [4, 5] and list(survivors.counts.words) == [4, 2]
    changed = A.batch_tokens(pa.array([texts[1], "the dog sat."], pa.large_string()))
    assert _words(changed) == [["a", "dog", "ran", "off"], ["the", "dog", "sat", "."]]

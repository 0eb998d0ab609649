"""The first steps: each keeps or rejects with a reason, never loses a record."""

from __future__ import annotations

import pyarrow as pa

from curation.steps import REGISTRY


def batch(texts: list[str]) -> pa.Table:
    return pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": pa.array(texts, pa.large_string()),
                     "extra": list(range(len(texts)))})


def test_normalize_repairs_mojibake_and_whitespace():
    out = REGISTRY["normalize"]().apply(batch([
        "The cafÃ© served crÃ¨me brÃ»lÃ©e.",  # UTF-8 read as cp1252
        "tabs\tand   spaces  \nend   \n\n\n\n\nnext paragraph",
        "plain ascii stays",
        " \u200b ",  # becomes nothing: rejected, not dropped
    ]))
    texts = out.kept.column("text").to_pylist()
    assert texts[0] == "The café served crème brûlée."
    assert texts[1] == "tabs and spaces\nend\n\nnext paragraph"
    assert texts[2] == "plain ascii stays"
    assert out.kept.column("extra").to_pylist() == [0, 1, 2]  # unknown columns ride along
    assert out.rejected.column("reason").to_pylist() == ["normalize:empty"]
    assert out.counters["modified"] == 3


def test_length_filter_reasons_carry_value_and_threshold():
    step = REGISTRY["length_filter"](min_chars=20, max_chars=60, min_words=4)
    out = step.apply(batch(["too short", "x" * 30, "four words are enough here", "word " * 20]))
    assert out.kept.column("id").to_pylist() == ["d2"]
    assert out.rejected.column("reason").to_pylist() == [
        "length_filter:chars=9<20", "length_filter:words=1<4", "length_filter:chars=100>60"]
    assert out.kept.num_rows + out.rejected.num_rows == 4


def test_annotate_mode_keeps_everything_and_writes_signals():
    step = REGISTRY["length_filter"](min_chars=20, mode="annotate")
    out = step.apply(batch(["too short", "long enough to pass the filter"]))
    assert out.kept.num_rows == 2 and out.rejected.num_rows == 0
    assert out.kept.column("length_filter__chars").to_pylist() == [9, 30]
    assert out.kept.column("length_filter__words").to_pylist() == [2, 6]
    assert out.counters == {"would_reject:length_filter:chars": 1}

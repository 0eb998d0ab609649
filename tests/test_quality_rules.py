"""Heuristic quality rules: a failing and a passing case per rule, each reason naming value and threshold."""

from __future__ import annotations

import random
import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from curation import analysis as A
from curation.steps import REGISTRY
from curation.steps.c4 import count_sentences
from curation.steps.gopher import ngram_repetition

VOCAB = ("river mill people morning trade grain news weather roads prices health families village market "
         "harvest winter summer children school teacher letter window garden kitchen bread water stone bridge "
         "forest mountain valley journey story evening friend brother sister mother father").split()


STOPS = ("the", "of", "and", "to", "with", "that", "a", "in", "was", "for", "on", "by")


def prose(seed: int, sentences: int = 8) -> str:
    """Clean, varied English-like prose: one sentence per line, stop words, terminal punctuation."""
    rng = random.Random(seed)
    lines = []
    for _ in range(sentences):
        words = [rng.choice(VOCAB) if k % 2 else rng.choice(STOPS) for k in range(rng.randint(10, 16))]
        lines.append(" ".join(words).capitalize() + ".")
    return "\n".join(lines)


def run(step: str, texts: list[str], **params) -> list[str | None]:
    table = pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": pa.array(texts, pa.large_string())})
    reasons = REGISTRY[step](**params).measure(table).reasons.to_pylist()
    return reasons


def key(reason: str | None) -> str | None:
    return None if reason is None else reason.split("=")[0]


CLEAN = prose(1)


@pytest.mark.parametrize("step", ["gopher_quality", "gopher_repetition", "c4_quality", "fineweb_quality"])
def test_clean_prose_passes_every_rule(step):
    assert run(step, [CLEAN, prose(2), prose(3, 12)]) == [None, None, None]


@pytest.mark.parametrize("text, expected", [
    ("Too short to be a document of the kind we want to keep.", "gopher_quality:words=13<50"),
    (" ".join(["a b c d e"] * 30) + " the and", "gopher_quality:mean_word_length"),
    (" ".join(["incomprehensibilities"] * 60) + " the and", "gopher_quality:mean_word_length"),
    (CLEAN + " " + "#tag " * 40, "gopher_quality:hash_ratio"),
    (CLEAN + " " + "wait... " * 40, "gopher_quality:ellipsis_ratio"),
    ("\n".join(f"• item {VOCAB[i]} of the list and that one" for i in range(12)), "gopher_quality:bullet_lines"),
    ("\n".join(f"{VOCAB[i]} and the {VOCAB[i + 1]} went to the {VOCAB[i + 2]} with {VOCAB[i + 3]} of the "
               f"{VOCAB[i + 4]} again and again..." for i in range(10)), "gopher_quality:ellipsis_lines"),
    (CLEAN + " " + " = + - * / ;" * 20, "gopher_quality:alpha_words"),
    (" ".join(VOCAB * 2) + " the", "gopher_quality:stop_words=1<2"),
])
def test_gopher_quality_failures(text, expected):
    reason = run("gopher_quality", [text])[0]
    assert reason is not None and reason.startswith(expected), reason


def test_gopher_quality_reason_carries_value_and_threshold():
    reason = run("gopher_quality", [" ".join(["incomprehensibilities"] * 60) + " the and"])[0]
    assert reason == "gopher_quality:mean_word_length=20.4>10"  # (60 x 21 + 3 + 3) / 62


@pytest.mark.parametrize("text, expected", [
    ("\n\n".join([prose(5, 2)] * 3 + [prose(6, 2)]), "gopher_repetition:dup_para_frac"),
    ("\n".join([CLEAN] + ["Buy now and save big on everything in the store today."] * 6),
     "gopher_repetition:dup_line_frac"),
    ("\n\n".join([prose(10, 8), prose(11, 1), prose(12, 1), prose(13, 1), prose(10, 8)]),
     "gopher_repetition:dup_para_char_frac"),
    (CLEAN + "\n" + " ".join(f"click here {w}" for w in VOCAB), "gopher_repetition:top_2gram_char_frac"),
    (prose(20, 12) + "\n" + " ".join(["alpha beta gamma delta epsilon zeta eta theta iota kappa"] * 10),
     "gopher_repetition:dup_5gram_char_frac"),
])
def test_gopher_repetition_failures(text, expected):
    reason = run("gopher_repetition", [text])[0]
    assert reason is not None and reason.startswith(expected), reason


def _reference_duplicated(words: list[str], n: int) -> int:
    """Gopher's reference scan, written plainly, to check the vectorised one against."""
    seen, repeated, i = set(), 0, 0
    while i < len(words) - n + 1:
        gram = "".join(words[i:i + n])
        if gram in seen:
            repeated += len(gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return repeated


def _reference_top(words: list[str], n: int) -> int:
    """Gopher's most frequent n-gram, joined with spaces, times its count (the first seen among equals)."""
    grams = [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0
    gram, count = Counter(grams).most_common(1)[0]
    return len(gram) * count


def test_ngram_repetition_matches_the_reference_scan():
    """Every document of one batch gets the reference's values: no n-gram is shared across documents."""
    rng = random.Random(7)
    documents = [[rng.choice("a bb c dd e".split()[: rng.randint(1, 5)]) for _ in range(rng.randint(0, 50))]
                 for _ in range(500)]
    vocab: dict[str, int] = {}
    words = [w for doc in documents for w in doc]
    ids = np.array([vocab.setdefault(w, len(vocab)) for w in words], dtype=np.int64)
    lengths = np.array([len(w) for w in words], dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum([len(doc) for doc in documents])))
    got = ngram_repetition(ids, lengths, starts, {2, 3}, {5, 6})
    for row, doc in enumerate(documents):
        for n in (2, 3):
            assert got[n][row] == _reference_top(doc, n)
        for n in (5, 6):
            assert got[n][row] == _reference_duplicated(doc, n)


def _reference_duplicates(items: list[str]) -> tuple[int, int]:
    """(repeated elements, their characters), every occurrence after the first counting, written plainly."""
    seen: set[str] = set()
    repeated = [item for item in items if item in seen or seen.add(item)]
    return len(repeated), sum(map(len, repeated))


EDGE_TEXTS = ["", "\n\n", "  a\n\n\n a\n\u2028a\u3000\n", "x.\r\nx.\r\n\n\ny\u3002\n  \n\x1c\n",
              "line one.\nline one.\n\nline one.", "\u00e9t\u00e9 \u2014 fin!\n\u00e9t\u00e9 \u2014 fin!",
              "short\n" * 5 + "a much longer line that goes on past thirty characters.\n\n\n"]


def test_line_signals_are_the_per_document_reference_column_wise():
    """Gopher's paragraph/line repetition and FineWeb's line signals, measured over the column with Arrow,
    equal the per-document reference (re.split, str.strip, str.split, str.endswith) on edge cases."""
    table = pa.table({"id": [f"d{i}" for i in range(len(EDGE_TEXTS))],
                      "text": pa.array(["pad", *EDGE_TEXTS], pa.large_string()).slice(1)})
    gopher = REGISTRY["gopher_repetition"]().measure(table).signals
    fineweb = REGISTRY["fineweb_quality"]().measure(table).signals
    stops = tuple(".!?\u3002")
    for row, text in enumerate(EDGE_TEXTS):
        size = len(text) or 1
        paragraphs, lines = re.split(r"\n{2,}", text.strip()), re.split(r"\n+", text)
        assert gopher["dup_para_frac"][row].as_py() == _reference_duplicates(paragraphs)[0] / len(paragraphs)
        assert gopher["dup_para_char_frac"][row].as_py() == _reference_duplicates(paragraphs)[1] / size
        assert gopher["dup_line_frac"][row].as_py() == _reference_duplicates(lines)[0] / len(lines)
        assert gopher["dup_line_char_frac"][row].as_py() == _reference_duplicates(lines)[1] / size
        kept = [line for line in text.split("\n") if line.strip()]
        assert fineweb["lines"][row].as_py() == len(kept)
        if kept:
            assert fineweb["line_punct_ratio"][row].as_py() == sum(ln.endswith(stops) for ln in kept) / len(kept)
            assert fineweb["short_line_ratio"][row].as_py() == sum(len(ln) <= 30 for ln in kept) / len(kept)
            assert fineweb["char_dup_ratio"][row].as_py() == (_reference_duplicates(kept)[1]
                                                              / max(len(text) - text.count("\n"), 1))


@pytest.mark.parametrize("text, expected", [
    (CLEAN + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.", "c4_quality:lorem_ipsum"),
    (CLEAN + "\nThe value is set with {key: value} in the file.", "c4_quality:curly_bracket"),
    ("One short sentence here.\nAnother one there.\nno punctuation at all here", "c4_quality:sentences=2<5"),
])
def test_c4_failures(text, expected):
    assert run("c4_quality", [text])[0] == expected or run("c4_quality", [text])[0].startswith(expected)


def test_c4_removes_bad_lines_and_counts_them():
    text = CLEAN + "\nHome | About | Contact\nPlease enable JavaScript to view this page.\nWe use cookies on this site."
    step = REGISTRY["c4_quality"]()
    out = step.apply(pa.table({"id": ["a"], "text": pa.array([text], pa.large_string())}))
    assert out.kept.column("text")[0].as_py() == CLEAN
    assert out.counters == {"lines_removed:javascript": 1, "lines_removed:no_terminal_punct": 1,
                            "lines_removed:policy": 1}
    annotated = REGISTRY["c4_quality"](mode="annotate").apply(out.kept.set_column(1, "text", pa.array([text],
                                                                                                     pa.large_string())))
    assert annotated.kept.column("text")[0].as_py() == text  # annotate mode never rewrites


def test_a_stacks_later_filters_measure_survivors_as_from_scratch():
    """gopher_quality and fineweb_quality on gopher_repetition's survivors (whose analysis they share)
    measure what they measure on those documents alone."""
    texts = [prose(seed, 6 + seed % 7) for seed in range(40)] + ["\n".join(["Buy now and save."] * 9)] * 3
    table = pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": pa.array(texts, pa.large_string())})
    survivors = REGISTRY["gopher_repetition"]().apply(table).kept
    assert 0 < survivors.num_rows < table.num_rows
    shared = {name: REGISTRY[name]().measure(survivors).signals for name in ("gopher_quality", "fineweb_quality")}
    for name, signals in shared.items():
        A.CHUNKS.clear()
        alone = REGISTRY[name]().measure(pa.table({"id": survivors.column("id"), "text": survivors.column("text")}))
        assert {k: v.to_pylist() for k, v in signals.items()} == {k: v.to_pylist() for k, v in alone.signals.items()}


def test_c4_line_rules_read_the_words_of_the_line_as_written():
    """A word over 1,000 characters drops its line; the word count is taken before citations go."""
    long_word = "Read " + "x" * 1001 + " now."
    cited = "[1] [2] Yes."  # three words as written, one once the citations go: kept, as "  Yes."
    text = "\n".join([CLEAN, long_word, cited, "Two words."])
    step = REGISTRY["c4_quality"]()
    out = step.apply(pa.table({"id": ["a"], "text": pa.array([text], pa.large_string())}))
    assert out.kept.column("text")[0].as_py() == CLEAN + "\n  Yes."
    assert out.counters == {"lines_removed:too_long_word": 1, "lines_removed:too_few_words": 1}


def test_c4_bad_words_are_optional():
    assert run("c4_quality", [CLEAN]) == [None]
    assert run("c4_quality", [CLEAN], bad_words=["bridge", "forest", "river", "mill"]) == ["c4_quality:bad_words"]


@pytest.mark.parametrize("line, sentences", [
    ("In the beginning God created the heaven and the earth.", 1),
    ("And God said, Let there be light: and there was light. And God saw the light.", 2),
    ("See e.g. the docs. Then Mr. Smith left... and came back!", 2),
    ("Return a value (e.g. 3.5). Raise ValueError if x < 0.", 2),
    # spaCy's sentencizer ends a sentence after any "." token: here the one split off between a lower- and an
    # upper-case letter (datatrove counts 2 in each)
    ("Represents torch.cuda.Stream, preserving device-specific type and attributes.", 2),
    ("A subclass of :class:`nn.Module` instances.", 2),
    ("Wait.. Then go.", 1),  # ".." (one token) is not a sentence end
])
def test_sentence_count(line, sentences):
    assert count_sentences(line) == sentences


@pytest.mark.parametrize("text, expected", [
    ("\n".join(f"{w} and the {w} of that" for w in VOCAB[:10]), "fineweb_quality:line_punct_ratio"),
    ("\n".join(["A longer line that ends well and has words."] + [f"{w}." for w in VOCAB[:9]]),
     "fineweb_quality:short_line_ratio"),
    (CLEAN + "\n" + CLEAN.splitlines()[0], "fineweb_quality:char_dup_ratio"),
    ("\n".join(f"{w} {v}." for w, v in zip(VOCAB[:20], VOCAB[20:40])) + "\n" + CLEAN,
     "fineweb_quality:short_line_ratio"),
    ("\n\n\n", "fineweb_quality:lines"),
])
def test_fineweb_failures(text, expected):
    reason = run("fineweb_quality", [text])[0]
    assert reason is not None and reason.startswith(expected), reason


def test_fineweb_list_ratio():
    text = "\n".join(f"The {w} and the {v} were here." for w, v in zip(VOCAB[:30], VOCAB[5:35]))
    assert run("fineweb_quality", [text]) == [None]
    assert run("fineweb_quality", [text], new_line_ratio=0.05)[0].startswith("fineweb_quality:list_ratio")


def test_annotate_mode_writes_every_signal_and_drops_nothing():
    texts = [CLEAN, "tiny"]
    table = pa.table({"id": ["a", "b"], "text": pa.array(texts, pa.large_string())})
    out = REGISTRY["gopher_quality"](mode="annotate").apply(table)
    assert out.kept.num_rows == 2 and out.rejected.num_rows == 0
    assert out.kept.column("gopher_quality__words").to_pylist()[1] == 1
    assert out.counters == {"would_reject:gopher_quality:words": 1}
    rep = REGISTRY["gopher_repetition"](mode="annotate").apply(table)
    assert {c for c in rep.kept.column_names if c.startswith("gopher_repetition__")} >= {
        "gopher_repetition__dup_line_frac", "gopher_repetition__top_2gram_char_frac",
        "gopher_repetition__dup_10gram_char_frac"}

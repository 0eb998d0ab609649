"""Heuristic quality rules: a failing and a passing case per rule, each reason naming value and threshold."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

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


def test_ngram_repetition_matches_the_reference_scan():
    rng = random.Random(7)
    for _ in range(500):
        words = [rng.choice("a bb c dd e".split()[: rng.randint(1, 5)]) for _ in range(rng.randint(0, 50))]
        vocab: dict[str, int] = {}
        ids = np.array([vocab.setdefault(w, len(vocab)) for w in words], dtype=np.int64)
        lengths = np.array([len(w) for w in words], dtype=np.int64)
        got = ngram_repetition(ids, lengths, {2}, {5, 6})
        for n in (5, 6):
            assert got.get(n, 0) == _reference_duplicated(words, n)


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

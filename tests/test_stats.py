"""Version statistics (curation/stats/) on crafted corpora with known answers."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pyarrow as pa
import pytest

from curation.stats import SemanticModel, compute_stats, fit_semantic, task_type
from curation.stats import compute as stats_compute
from curation.stats.compute import Accumulator
from curation.stats.counts import WordCounts
from curation.stats.sample import Reservoir
from curation.stats.semantic import _hashed_counts, _truncated_svd

TOPICS = {
    "cooking": "flour butter oven bake recipe sugar dough simmer garlic onion sauce skillet roast knead yeast".split(),
    "astronomy": "galaxy telescope orbit planet star nebula comet asteroid supernova cosmic gravity lunar solar "
                 "eclipse quasar".split(),
    "football": "goal striker referee penalty midfielder stadium league match kick coach defender offside tackle "
                "season fans".split(),
}
FILLER = "the a and of to in is was for on with as by it".split()


def topic_doc(rng: random.Random, topic: str, words: int = 150) -> str:
    vocab = TOPICS[topic]
    return " ".join(rng.choice(vocab) if rng.random() < 0.5 else rng.choice(FILLER) for _ in range(words)) + "."


def topic_table(topics: list[str], per_topic: int = 150, seed: int = 0) -> pa.Table:
    rng = random.Random(seed)
    rows = [{"id": f"{t}-{i}", "text": topic_doc(rng, t), "source": t} for t in topics for i in range(per_topic)]
    return pa.Table.from_pylist(rows)


def varied_doc(rng: random.Random, i: int, words: int = 120) -> str:
    vocab = [f"w{rng.randrange(20000)}" for _ in range(words)]
    return f"Document {i}: " + " ".join(vocab) + "."


PARAGRAPH = ("The committee met on Tuesday to review the annual budget, and after a long discussion about "
             "roads, schools and the new library it agreed to postpone the final vote until the spring. ") * 6


def small(**kw):
    base = {"sample_size": 200, "words_per_doc": 100, "k": 3, "dims": 8}
    base.update(kw)
    return base


def test_repeated_paragraph_is_less_diverse_than_varied_text():
    rng = random.Random(1)
    repeated = pa.table({"id": [f"r{i}" for i in range(150)], "text": [PARAGRAPH] * 150, "source": ["x"] * 150})
    varied = pa.table({"id": [f"v{i}" for i in range(150)], "text": [varied_doc(rng, i) for i in range(150)],
                       "source": ["x"] * 150})
    rep, _ = compute_stats([repeated], **small())
    var, _ = compute_stats([varied], **small())
    for n in range(1, 5):
        assert rep["lexical"][f"distinct_{n}"] < var["lexical"][f"distinct_{n}"]
    assert rep["lexical"]["compression_ratio"] < var["lexical"]["compression_ratio"]
    assert rep["lexical"]["near_dup_density"] == 1.0
    assert var["lexical"]["near_dup_density"] == 0.0
    assert rep["lexical"]["unigram_entropy"] < var["lexical"]["unigram_entropy"]
    assert rep["lexical"]["mattr"] < var["lexical"]["mattr"]
    assert rep["lexical"]["mattr_window"] == 50


def test_counts_and_by_source_exact():
    table = pa.table({
        "id": ["a", "b", "c", "d"],
        "text": ["one two three", "Hello, world!", "x", "ÉTÉ café_au lait 42"],
        "source": ["web", "web", "books", "books"],
        "lang": ["en", "en", None, "fr"],
    })
    stats, _ = compute_stats([table.slice(0, 3), table.slice(3)], **small())
    size = stats["size"]
    assert size["docs"] == 4
    assert size["chars"] == sum(len(t) for t in table.column("text").to_pylist())
    assert size["words"] == 3 + 2 + 1 + 4
    assert size["tokens"] is None
    assert size["by_source"] == {"books": {"docs": 2, "chars": 1 + 19, "words": 5},
                                 "web": {"docs": 2, "chars": 13 + 13, "words": 5}}
    assert size["by_lang"] == {"en": {"docs": 2, "chars": 26}, "fr": {"docs": 1, "chars": 19},
                               "und": {"docs": 1, "chars": 1}}
    assert stats["unigrams"]["total"] == 10
    assert stats["unigrams"]["top"]["été"] == 1 and stats["unigrams"]["top"]["café_au"] == 1
    assert stats["sample"] == {"size": 4, "seed": 0, "words_per_doc": 100}
    json.dumps(stats)  # plain JSON


def test_unigrams_top_counts_and_order():
    texts = ["b b a", "A c b", "d"]
    stats, _ = compute_stats([pa.table({"id": ["1", "2", "3"], "text": texts, "source": ["s"] * 3})], **small())
    assert list(stats["unigrams"]["top"].items()) == [("b", 3), ("a", 2), ("c", 1), ("d", 1)]


def test_streamed_words_match_python_word_regex():
    import re
    from collections import Counter

    texts = ["Don't stop—it's 3.14 o'clock, naïve façade!", "snake_case __init__ x²+y² ½", "日本語のテキスト 中文",
             "tab\tnew\nline\u00a0nbsp\u2003em", "  leading and trailing  ", "Straße ΑΘΗΝΑ Ĳssel", "..."]
    stats, _ = compute_stats([pa.table({"id": [str(i) for i in range(len(texts))], "text": texts,
                                        "source": ["s"] * len(texts)})], **small())
    expected = Counter(w for t in texts for w in re.findall(r"\w+", t.lower()))
    assert stats["unigrams"]["top"] == dict(expected) and stats["size"]["words"] == sum(expected.values())


def test_unigram_pruning_keeps_top_words():
    counter = WordCounts(max_vocab=10)
    for i in range(30):
        counter.add(pa.array(["common"] * 5 + [f"rare{i}"]))
        counter._compact()
    top = counter.top(3)
    assert top["common"] == 150 and counter.table.num_rows <= 10


def test_length_quantiles_and_histogram():
    lengths = [10, 20, 30, 40, 50, 100, 1000, 70000, 5]
    table = pa.table({"id": [str(i) for i in range(len(lengths))], "text": ["x" * n for n in lengths],
                      "source": ["s"] * len(lengths)})
    stats, _ = compute_stats([table], **small())
    quantiles = stats["length"]["quantiles"]
    assert list(quantiles) == ["0", "1", "5", "10", "25", "50", "75", "90", "95", "99", "100"]
    for q, value in quantiles.items():
        assert value == pytest.approx(np.percentile(lengths, float(q)), abs=1e-6)
    assert quantiles["50"] == 40 and quantiles["0"] == 5 and quantiles["100"] == 70000
    hist = stats["length"]["histogram"]
    assert sum(hist["counts"]) == len(lengths) and len(hist["edges"]) == len(hist["counts"]) + 1
    edges = np.array(hist["edges"])
    assert (np.diff(edges) > 0).all()
    for n in lengths:  # each length is counted in its own bin [edges[i], edges[i+1])
        i = int(np.searchsorted(edges, n, side="right")) - 1
        assert hist["counts"][i] >= 1
    assert hist["counts"][int(np.searchsorted(edges, 10, side="right")) - 1] == 1


def test_score_distributions_and_dup_sizes():
    rng = np.random.default_rng(0)
    scores = rng.random(5000)
    table = pa.table({"id": [str(i) for i in range(5000)], "text": ["some words here"] * 5000,
                      "source": ["s"] * 5000, "quality_score": scores,
                      "dup_cluster_size": pa.array([None] * 4990 + [2] * 8 + [3] * 2, pa.int32())})
    stats, _ = compute_stats([table], **small(sample_size=50))
    quality = stats["distributions"]["quality_score"]
    for q, value in quality["quantiles"].items():
        assert value == pytest.approx(np.percentile(scores, float(q)), abs=2e-3)
    assert quality["quantiles"]["0"] == pytest.approx(scores.min(), abs=1e-6)
    assert sum(quality["histogram"]["counts"]) == 5000 and len(quality["histogram"]["edges"]) == 21
    assert stats["distributions"]["lang_score"] is None
    assert stats["distributions"]["dup_cluster_size"] == {"1": 4990, "2": 8, "3": 2}


def test_reservoir_deterministic_for_seed_and_batching():
    table = pa.table({"id": [f"d{i}" for i in range(3000)], "text": [f"text {i}" for i in range(3000)],
                      "source": ["s"] * 3000})

    def sample(seed: int, batch: int) -> list[str]:
        acc = Accumulator(seed, 100, None)
        for offset in range(0, table.num_rows, batch):
            acc.add(table.slice(offset, batch))
        return acc.reservoir.ids

    first = sample(0, 500)
    assert len(first) == 100 and len(set(first)) == 100
    assert sample(0, 500) == first
    assert sample(0, 77) == first  # the batching does not matter
    assert sample(1, 500) != first
    # a bottom-k sample: the 100 ids with the smallest seeded hashes
    res = Reservoir(100, 0)
    expected = sorted(table.column("id").to_pylist(), key=res.key)[:100]
    assert first == expected
    # roughly uniform: about a third of the sample from each third of the stream
    thirds = np.bincount([int(i[1:]) // 1000 for i in sample(3, 1000)], minlength=3)
    assert thirds.min() > 15


def test_three_topics_give_three_clusters_with_right_terms():
    stats, model = compute_stats([topic_table(list(TOPICS))], **small(sample_size=300))
    clusters = stats["semantic"]["clusters"]
    assert len(clusters) == 3 and stats["semantic"]["k"] == 3
    found = set()
    for cluster in clusters:
        assert cluster["share"] == pytest.approx(1 / 3, abs=0.08)
        terms = cluster["top_terms"]
        assert len(terms) == 10
        topic = max(TOPICS, key=lambda t: len(set(terms) & set(TOPICS[t])))
        assert set(terms) <= set(TOPICS[topic]), terms
        found.add(topic)
    assert found == set(TOPICS)
    assert stats["semantic"]["cluster_entropy"] == pytest.approx(math.log2(3), abs=0.05)
    assert 2.0 < stats["semantic"]["vendi_score"] < 6.0
    assert stats["semantic"]["vendi_sample"] == 300
    # each generated document lands in its topic's cluster
    rng = random.Random(99)
    for cluster in clusters:
        topic = max(TOPICS, key=lambda t: len(set(cluster["top_terms"]) & set(TOPICS[t])))
        labels = model.assign([topic_doc(rng, topic) for _ in range(20)])
        assert (labels == cluster["id"]).all()


def test_coverage_loses_exactly_the_dropped_topic(tmp_path):
    full, model = compute_stats([topic_table(list(TOPICS))], **small(sample_size=300))
    path = tmp_path / "v1" / "stats_model.npz"
    model.save(path)
    again, _ = compute_stats([topic_table(list(TOPICS), seed=5)], reference_model=path, **small(sample_size=300))
    assert again["coverage"]["reference"] == "v1"
    assert again["coverage"]["covered_share"] == 1.0 and again["coverage"]["lost"] == []
    assert sorted(again["coverage"]["covered"]) == [0, 1, 2]

    dropped, _ = compute_stats([topic_table(["cooking", "football"], seed=6)], reference_model=path,
                               reference_name="full", **small(sample_size=300))
    coverage = dropped["coverage"]
    assert coverage["reference"] == "full"
    assert coverage["covered_share"] == pytest.approx(2 / 3, abs=1e-6)
    assert len(coverage["lost"]) == 1
    lost = coverage["lost"][0]
    astronomy = next(c for c in full["semantic"]["clusters"] if "galaxy" in c["top_terms"])
    assert lost["id"] == astronomy["id"]
    assert lost["share_in_reference"] == astronomy["share"]
    assert lost["top_terms"] == astronomy["top_terms"]


def test_model_saves_loads_and_assigns_identically(tmp_path):
    stats, model = compute_stats([topic_table(list(TOPICS))], **small(sample_size=300))
    path = tmp_path / "m.npz"
    model.save(path)
    assert not [p for p in tmp_path.iterdir() if p.name != "m.npz"]  # no temporary file left
    loaded = SemanticModel.load(path)
    rng = random.Random(3)
    texts = [topic_doc(rng, t) for t in TOPICS for _ in range(10)] + ["", "123 !!"]
    assert np.array_equal(model.assign(texts), loaded.assign(texts))
    assert model.assign(["", "123 !!"]).tolist() == [-1, -1]
    np.testing.assert_allclose(model.embed(texts), loaded.embed(texts), atol=1e-5)
    assert loaded.top_terms == model.top_terms and loaded.spec == model.spec
    assert loaded.k == 3 and loaded.dims == stats["semantic"]["dims"]


def test_arpack_svd_matches_exact_gram_svd():
    rng = random.Random(0)
    for per_topic in (40, 3):  # more documents than features (Gram of X^T X), and fewer (Gram of X X^T)
        texts = [topic_doc(rng, t) for t in TOPICS for _ in range(per_topic)]
        model, _, _ = fit_semantic(texts, k=3, dims=5, seed=0)
        feats, tfs, _ = _hashed_counts(texts)
        matrix = model._tfidf(feats, tfs)
        gram = _truncated_svd(matrix, 5, 0, method="gram")
        arpack = _truncated_svd(matrix, 5, 0, method="arpack")
        np.testing.assert_allclose(gram @ gram.T, np.eye(5), atol=1e-8)
        np.testing.assert_allclose(gram, arpack, atol=1e-6)  # same vectors, same signs
    assert _truncated_svd(matrix, 50, 0).shape[0] == min(matrix.shape)  # too small for ARPACK: exact


def test_instruction_task_types():
    rows = [
        ("Summarize the article below in two sentences.", "", "A summary."),
        ("Please summarize this article about rivers.", "Rivers are long.", "Rivers."),
        ("Translate this sentence into French.", "Good morning", "Bonjour"),
        ("Can you translate the following sentence to German?", "Thank you", "Danke"),
        ("Could you write a poem about the sea?", None, "Waves and more waves"),
        ("   ", "", "ignored: empty instruction"),
    ]
    table = pa.table({"id": [str(i) for i in range(len(rows))], "text": [" ".join(filter(None, r)) for r in rows],
                      "source": ["alpaca"] * len(rows), "instruction": [r[0] for r in rows],
                      "input": [r[1] for r in rows], "output": [r[2] for r in rows]})
    stats, _ = compute_stats([table], **small())
    instructions = stats["instructions"]
    assert instructions["docs"] == 5
    assert instructions["task_types"] == {"summarize article": 2, "translate sentence": 2, "write poem": 1}
    assert instructions["distinct_task_types"] == 3
    inputs = [len(r[1] or "") for r in rows[:5]]
    outputs = [len(r[2]) for r in rows[:5]]
    for q in ("0", "50", "100", "25"):
        assert instructions["input_chars"]["quantiles"][q] == pytest.approx(np.percentile(inputs, float(q)))
        assert instructions["output_chars"]["quantiles"][q] == pytest.approx(np.percentile(outputs, float(q)))
    assert task_type("Give me three examples of fruit") == "give examples"
    assert task_type("") == "(none)"
    plain, _ = compute_stats([table.drop_columns(["instruction"])], **small())
    assert plain["instructions"] is None


def test_tokens_counted_with_tokenizer():
    class Chars:
        def encode_batch(self, texts):
            return [list(t.encode()) for t in texts]

    table = pa.table({"id": ["a", "b"], "text": ["abc", "héllo"], "source": ["s", "s"]})
    stats, _ = compute_stats([table], tokenizer=Chars(), **small())
    assert stats["size"]["tokens"] == 3 + 6


def test_schema_keys_and_empty_input():
    stats, model = compute_stats([topic_table(list(TOPICS), per_topic=20)], **small())
    assert list(stats) == ["schema", "sample", "size", "length", "distributions", "lexical", "unigrams",
                           "semantic", "coverage", "instructions"]
    assert list(stats["lexical"]) == ["distinct_1", "distinct_2", "distinct_3", "distinct_4", "unigram_entropy",
                                      "mattr", "mattr_window", "compression_ratio", "near_dup_density"]
    assert list(stats["semantic"]) == ["method", "features", "dims", "k", "seed", "clusters", "cluster_entropy",
                                       "vendi_score", "vendi_sample"]
    assert stats["semantic"]["features"] == 2**18
    empty, empty_model = compute_stats([])
    assert empty["size"]["docs"] == 0 and empty["semantic"]["clusters"] == [] and empty["length"]["quantiles"] == {}
    json.dumps(empty)
    assert empty_model.assign(["anything"]).tolist() == [-1]


def test_short_documents_excluded_from_lexical_sample():
    long_docs = [varied_doc(random.Random(i), i, words=150) for i in range(20)]
    short = ["tiny tiny tiny"] * 200
    table = pa.table({"id": [str(i) for i in range(220)], "text": long_docs + short, "source": ["s"] * 220})
    stats, _ = compute_stats([table], **small(sample_size=220))
    assert stats["lexical"]["near_dup_density"] == 0.0  # the 200 identical short docs are not in it
    only_short, _ = compute_stats([table.slice(20)], **small())
    assert only_short["lexical"]["near_dup_density"] == 1.0  # fallback: all docs, whole


def test_same_stats_whatever_the_batching(monkeypatch):
    table = topic_table(list(TOPICS), per_topic=60)
    table = table.append_column("quality_score", pa.array(np.linspace(0, 1, table.num_rows)))
    whole, _ = compute_stats([table], **small(sample_size=100))
    monkeypatch.setattr(stats_compute, "SLICE_BYTES", 500)  # about one document per slice
    pieces = [table.slice(i, 37).to_batches()[0] for i in range(0, table.num_rows, 37)]  # RecordBatches too
    sliced, _ = compute_stats(pieces, **small(sample_size=100))
    assert json.dumps(sliced, sort_keys=True) == json.dumps(whole, sort_keys=True)


def test_parts_accumulated_apart_and_merged_in_order_give_the_stats_of_one_pass():
    # What a run's workers do: each accumulates consecutive files, the flow merges them in order.
    table = topic_table(list(TOPICS))
    n = table.num_rows
    table = table.append_column("quality_score", pa.array([i / n for i in range(n)]))
    table = table.append_column("dup_cluster_size", pa.array([1 + (i % 3 == 0) for i in range(n)]))
    one, _ = compute_stats([table], **small())
    cuts = [0, 101, 260, n]
    parts = [stats_compute.accumulate([table.slice(a, b - a)], sample_size=200, first_index=a)
             for a, b in zip(cuts, cuts[1:])]
    for later in parts[1:]:
        parts[0].merge(later)
    merged, _ = stats_compute.stats_from(parts[0], words_per_doc=100, k=3, dims=8)
    assert merged == one
    assert merged["size"]["docs"] == n and merged["sample"]["size"] == 200

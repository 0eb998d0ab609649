"""Deduplication: signatures equal datasketch's, the S-curve maths, verification, the keep policy,
dedup against earlier versions, and identical results whatever the sharding or process count."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl
from datasketch import MinHash

from curation import dedup as D
from curation.recipe import parse_recipe
from curation.steps import REGISTRY, Collected
from curation.store import VersionStore
from flows.curate import run_curation

VOCAB = [f"w{i}" for i in range(3000)]


def text(rng: random.Random, words: int = 120) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(words))


def edit(rng: random.Random, doc: str, fraction: float) -> str:
    tokens = doc.split()
    for k in rng.sample(range(len(tokens)), int(len(tokens) * fraction)):
        tokens[k] = rng.choice(VOCAB)
    return " ".join(tokens)


def true_jaccard(a: str, b: str) -> float:
    hashes, offsets = D.shingles([a, b])
    return D.jaccard(D.shingle_set(hashes, offsets, 0), D.shingle_set(hashes, offsets, 1))


def test_signatures_equal_datasketch_minhash():
    docs = ["the quick brown fox jumps over the lazy dog and more", "two words", "", "Ünïcode wörds ok " * 30]
    hashes, offsets = D.shingles(docs)
    sigs = D.signatures(hashes, offsets, num_perm=64, seed=7)
    for d in range(len(docs)):
        reference = MinHash(num_perm=64, seed=7, hashfunc=lambda x: x, scheme="affine32")
        reference.update_batch([int(v) for v in D.to_uint32(hashes[offsets[d]:offsets[d + 1]])])
        assert np.array_equal(reference.hashvalues, sigs[d])


def test_shingles_ignore_case_and_spacing():
    assert true_jaccard("One two  three four five six", "one TWO three\nfour five six") == 1.0
    assert true_jaccard("a b c d e f g", "z y x w v u t") == 0.0


def test_s_curve_and_band_choice():
    bands, rows = D.choose_bands(0.8, 128)
    assert bands * rows <= 128
    assert D.candidate_probability(0.8, bands, rows) >= D.MIN_RECALL_AT_THRESHOLD
    assert D.candidate_probability(0.5, bands, rows) < 0.2
    curve = D.s_curve(bands, rows)
    assert list(curve.values()) == sorted(curve.values())
    # datasketch's default would be 9 bands of 13 rows at threshold 0.9 -> poor recall at 0.8:
    assert D.candidate_probability(0.8, 9, 13) < 0.5
    assert D.candidate_probability(0.5, 1, 1) == 0.5


def test_candidate_rate_matches_the_s_curve():
    rng = random.Random(0)
    bands, rows = D.choose_bands(0.8, 128)
    pairs = []
    for _ in range(200):
        base = text(rng, 300)
        pairs += [base, edit(rng, base, 0.03)]  # Jaccard ~0.85
    hashes, offsets = D.shingles(pairs)
    band = D.band_hashes(D.signatures(hashes, offsets), bands, rows)
    found = {tuple(p) for p in D.candidate_pairs(band).tolist()}
    sims = [true_jaccard(pairs[2 * k], pairs[2 * k + 1]) for k in range(200)]
    hit = [(2 * k, 2 * k + 1) in found for k in range(200)]
    expected = np.mean([D.candidate_probability(s, bands, rows) for s in sims])
    assert np.mean(hit) == pytest.approx(expected, abs=0.05)


def _decide(step_name: str, batches: list[pa.Table], tmp_path: Path, **params):
    step = REGISTRY[step_name](**params)
    tmp_path.mkdir(parents=True, exist_ok=True)
    collected = []
    for k, batch in enumerate(batches):
        path = tmp_path / f"shard-{k}.parquet"
        pq.write_table(batch, path)
        collected.append(Collected(step.collect(batch), str(path), str(tmp_path)))
    return step, step.decide(collected)


def _corpus(seed: int = 1):
    rng = random.Random(seed)
    rows, truth = [], {}
    for k in range(30):
        base = text(rng)
        rows.append({"id": f"b{k}", "text": base, "quality_score": 0.5})
        if k % 3 == 0:
            near = edit(rng, base, 0.02)
            rows.append({"id": f"n{k}", "text": near, "quality_score": 0.9})  # better score: kept
            truth[f"b{k}"] = f"n{k}"
        if k % 5 == 0:
            rows.append({"id": f"e{k}", "text": base.upper(), "quality_score": 0.5})  # same length: smaller id kept
    return rows, truth


def _table(rows):
    return pa.table({"id": [r["id"] for r in rows], "text": pa.array([r["text"] for r in rows], pa.large_string()),
                     "quality_score": pa.array([r["quality_score"] for r in rows], pa.float32())})


def test_keep_policy_and_determinism_across_shardings(tmp_path):
    rows, truth = _corpus()
    removals = []
    for split in (1, 3, 7):
        shuffled = rows[:]  # same order, different shard boundaries
        size = -(-len(shuffled) // split)
        batches = [_table(shuffled[i:i + size]) for i in range(0, len(shuffled), size)]
        _, decision = _decide("minhash_dedup", batches, tmp_path / f"s{split}", threshold=0.8)
        removals.append({k: v.dup_of for k, v in decision.removals.items()})
    assert removals[0] == removals[1] == removals[2]
    got = removals[0]
    for base, near in truth.items():
        assert got[base] == near  # the higher quality_score wins over the original
    for k in range(0, 30, 15):  # b0/b15 have both an exact upper-case copy and a near copy
        assert got[f"e{k}"] == f"n{k}"


def test_verification_removes_nothing_below_the_threshold(tmp_path):
    rng = random.Random(3)
    rows = []
    for k in range(40):
        base = text(rng, 200)
        rows += [{"id": f"a{k}", "text": base, "quality_score": 0.0},
                 {"id": f"c{k}", "text": edit(rng, base, 0.25), "quality_score": 0.0}]  # Jaccard ~0.3-0.5
    # Permissive bands make many candidates far below 0.8; verification must drop every one.
    _, verified = _decide("minhash_dedup", [_table(rows)], tmp_path / "v", bands=64, rows=2)
    _, unverified = _decide("minhash_dedup", [_table(rows)], tmp_path / "u", bands=64, rows=2, verify=False)
    assert verified.report["candidate_pairs"] > 0 and verified.removals == {}
    assert verified.report["rejected_by_verification"] == verified.report["candidate_pairs"]
    assert len(unverified.removals) > 0


def test_exact_dedup_groups_normalised_text(tmp_path):
    rows = [{"id": "x2", "text": "Hello World", "quality_score": 0.0},
            {"id": "x1", "text": "hello world", "quality_score": 0.0},
            {"id": "y", "text": "something else entirely", "quality_score": 0.0}]
    step, decision = _decide("exact_dedup", [_table(rows)], tmp_path)
    assert {k: v.dup_of for k, v in decision.removals.items()} == {"x2": "x1"}  # equal length: smaller id
    step.bind(decision)
    out = step.apply(_table(rows))
    assert out.rejected.column("reason").to_pylist() == ["exact_dedup:duplicate_of=x1"]
    assert out.rejected.column("dup_of").to_pylist() == ["x1"]
    assert out.kept.column("dup_cluster_size").to_pylist() == [2, 1]


def test_second_version_deduplicates_against_the_first(tmp_path, prefect_harness):
    rng = random.Random(9)
    first = [{"id": f"a{k}", "text": text(rng)} for k in range(20)]
    new = [{"id": f"b{k}", "text": text(rng)} for k in range(10)]
    near_old = [{"id": "c0", "text": edit(rng, first[0]["text"], 0.02)}]
    write_jsonl(tmp_path / "one.jsonl", first)
    write_jsonl(tmp_path / "two.jsonl", [{**r, "id": f"again-{r['id']}"} for r in first] + new + near_old)
    store = str(tmp_path / "store")
    run_curation(parse_recipe({"inputs": [{"path": str(tmp_path / "one.jsonl")}]}), store, "v1", workers=1)
    recipe = parse_recipe({"inputs": [{"path": str(tmp_path / "two.jsonl")}],
                           "steps": [{"step": "exact_dedup", "against": ["v1"]},
                                     {"step": "minhash_dedup", "against": ["v1"]}]})
    manifest = run_curation(recipe, store, "v2", workers=1, parents=["v1"])
    kept = set(VersionStore(store).read_table("v2", columns=["id"]).column("id").to_pylist())
    assert kept == {f"b{k}" for k in range(10)}
    rejects = VersionStore(store).read_table("v2", "rejects").to_pylist()
    assert {r["id"] for r in rejects} == {f"again-a{k}" for k in range(20)} | {"c0"}
    assert all(r["reason"].endswith(" in v1") for r in rejects)
    near = next(r for r in rejects if r["id"] == "c0")
    assert near["dup_of"] == "a0" and near["step"] == "minhash_dedup" and near["dup_jaccard"] >= 0.8
    assert manifest["step_reports"]["exact_dedup"]["removed_matching_earlier_versions"] == 20
    index_files = list((tmp_path / "store" / "index").rglob("*.parquet"))
    assert {p.parts[-3] for p in index_files} == {"exact", "minhash"}
    stamps = {p: p.stat().st_mtime_ns for p in index_files}
    run_curation(recipe, store, "v3", workers=1, parents=["v1"])  # reuses the persisted index
    assert {p: p.stat().st_mtime_ns for p in index_files} == stamps
    # The published documents (source "one") were kept over the run's ("two"), counted per source.
    assert manifest["step_reports"]["exact_dedup"]["kept_over"] == {"one": {"two": 20}}
    assert manifest["step_reports"]["minhash_dedup"]["kept_over"] == {"one": {"two": 1}}
    assert manifest["step_reports"]["minhash_dedup"]["decided_by"] == {"published": 1}
    # An index written before summaries held each document's source and origin is rebuilt, not misread.
    for path in index_files:
        old = pq.read_table(path)
        pq.write_table(old.drop_columns(["source", "origin"]), path)
    again = run_curation(recipe, store, "v4", workers=1, parents=["v1"])
    assert again["step_reports"]["minhash_dedup"]["kept_over"] == {"one": {"two": 1}}
    assert all({"source", "origin"} <= set(pq.read_schema(p).names) for p in index_files)


@pytest.mark.e2e
def test_one_and_two_processes_publish_the_same_dedup(tmp_path):
    rows, _ = _corpus(5)
    write_jsonl(tmp_path / "in.jsonl", rows)
    (tmp_path / "r.yaml").write_text(json.dumps({
        "inputs": [{"path": "in.jsonl"}], "shard_size_mb": 0.005,
        "steps": [{"step": "exact_dedup"}, {"step": "minhash_dedup"}]}))
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    cli = str(Path(sys.executable).with_name("curate"))
    for workers, name in ((1, "one"), (2, "two")):
        result = subprocess.run([cli, "run", str(tmp_path / "r.yaml"), "--store", str(tmp_path / "s"), "--name", name,
                                 "--workers", str(workers)], capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
    store = VersionStore(tmp_path / "s")
    assert store.manifest("one")["fingerprint"] == store.manifest("two")["fingerprint"]
    reasons = [sorted(store.read_table(n, "rejects").column("reason").to_pylist()) for n in ("one", "two")]
    assert reasons[0] == reasons[1] and len(reasons[0]) > 5


def test_single_link_chains_never_remove_a_document_for_a_similarity_it_lacks():
    # A~B 0.85 and B~C 0.85 join one component, but A~C is only 0.7: keeping A removes B, not C.
    docs = dict(enumerate([D.DocKey("A", 300), D.DocKey("B", 200), D.DocKey("C", 100)]))
    sims = {(0, 1): 0.85, (1, 2): 0.85, (0, 2): 0.7}
    decision = D.resolve_clusters(docs, [(0, 1), (1, 2)], lambda pairs: [sims[min(p), max(p)] for p in pairs], 0.8)
    assert {k: (v.dup_of, v.jaccard) for k, v in decision.removals.items()} == {"B": ("A", 0.85)}
    assert decision.cluster_sizes == {"A": 2, "B": 2}
    # Published documents always win and are never removed.
    docs = {5: D.DocKey("new", 900), 9: D.DocKey("old", 10, published="v1")}
    decision = D.resolve_clusters(docs, [(5, 9)], lambda pairs: [0.9] * len(pairs), 0.8)
    assert decision.removals["new"].dup_of == "old" and decision.removals["new"].in_version == "v1"


# ---- the keep policy: provenance before the quality score ------------------------------------------


def _sourced(rows: list[dict]) -> pa.Table:
    """A batch as a run's step sees it: with `source` and `origin` next to the text and the score."""
    return _table(rows).append_column("source", pa.array([r["source"] for r in rows])).append_column(
        "origin", pa.array([r.get("origin", "human") for r in rows]))


def _planted_copies(seed: int = 11) -> list[dict]:
    """Human originals (3 kjv, 1 stdlib_docs) with a crawl copy each that is LONGER and scores HIGHER (as the
    demo's edited crawl copies do), and 2 pairs of crawl pages duplicating each other."""
    rng = random.Random(seed)
    rows = []
    for k, source in enumerate(["kjv", "kjv", "kjv", "stdlib_docs"]):
        original = text(rng, 200)
        rows.append({"id": f"orig{k}", "text": original, "quality_score": 0.3, "source": source})
        rows.append({"id": f"copy{k}", "text": edit(rng, original, 0.01) + " read more", "quality_score": 0.9,
                     "source": "web_crawl"})
    for k in range(2):
        page = text(rng, 200)
        rows.append({"id": f"page{k}", "text": page, "quality_score": 0.8, "source": "web_crawl"})
        rows.append({"id": f"mirror{k}", "text": edit(rng, page, 0.01), "quality_score": 0.2, "source": "web_crawl"})
    return rows


@pytest.mark.parametrize("step_name", ["minhash_dedup", "exact_dedup"])
def test_a_crawl_copy_never_replaces_the_original_of_an_earlier_source(tmp_path, step_name):
    rows = _planted_copies()
    if step_name == "exact_dedup":  # exact copies: the crawl's differs only in spacing, so it is longer
        originals = {r["id"]: r["text"] for r in rows}
        for r in rows:
            if r["id"].startswith("copy"):
                r["text"] = originals["orig" + r["id"][4:]].replace(" ", "  ")
    # The recipe's input order, as the runner passes it: stdlib_docs, kjv, then web_crawl.
    _, decision = _decide(step_name, [_sourced(rows)], tmp_path, prefer_sources=["stdlib_docs", "kjv", "web_crawl"])
    removed = {k: v.dup_of for k, v in decision.removals.items() if not k.startswith(("page", "mirror"))}
    assert removed == {f"copy{k}": f"orig{k}" for k in range(4)}  # the originals stay, though shorter and lower


def test_prefer_sources_overrides_the_input_order_and_an_empty_list_ranks_none(tmp_path):
    rows = _planted_copies()
    _, crawl_first = _decide("minhash_dedup", [_sourced(rows)], tmp_path / "a", prefer_sources=["web_crawl"])
    assert {crawl_first.removals[f"orig{k}"].dup_of for k in range(4)} == {f"copy{k}" for k in range(4)}
    assert crawl_first.report["keep_policy"]["prefer_sources"] == ["web_crawl"]
    _, unranked = _decide("minhash_dedup", [_sourced(rows)], tmp_path / "b", prefer_sources=[])
    assert {unranked.removals[f"orig{k}"].dup_of for k in range(4)} == {f"copy{k}" for k in range(4)}  # score decides
    assert unranked.report["decided_by"] == {"quality_score": 6}
    with pytest.raises(ValueError, match="prefer_sources lists 'kjv' more than once"):
        REGISTRY["minhash_dedup"](prefer_sources=["kjv", "web_crawl", "kjv"])
    with pytest.raises(ValueError, match="against lists 'v1' more than once"):  # two tasks would build one index
        REGISTRY["exact_dedup"](against=["v1", "v2", "v1"])


def test_human_text_wins_over_its_synthetic_copy_by_default(tmp_path):
    rows = [{**r, "origin": "synthetic" if r["id"].startswith("copy") else "human", "source": "mixed"}
            for r in _planted_copies() if r["id"].startswith(("orig", "copy"))]
    _, decision = _decide("minhash_dedup", [_sourced(rows)], tmp_path)  # no parameter: the default policy
    assert {k: v.dup_of for k, v in decision.removals.items()} == {f"copy{k}": f"orig{k}" for k in range(4)}
    assert decision.report["decided_by"] == {"origin": 4}
    _, by_score = _decide("minhash_dedup", [_sourced(rows)], tmp_path / "o", prefer_origins=[])
    assert set(by_score.removals) == {f"orig{k}" for k in range(4)}


def test_kept_over_counts_whose_documents_were_kept_over_whose_whatever_the_sharding(tmp_path):
    rows = _planted_copies()
    reports = []
    for split in (1, 3, 5):
        size = -(-len(rows) // split)
        batches = [_sourced(rows[i:i + size]) for i in range(0, len(rows), size)]
        _, decision = _decide("minhash_dedup", batches, tmp_path / f"s{split}",
                              prefer_sources=["stdlib_docs", "kjv", "web_crawl"])
        reports.append({k: decision.report[k] for k in ("kept_over", "decided_by")})
    assert reports[0] == reports[1] == reports[2]
    assert reports[0] == {"kept_over": {"kjv": {"web_crawl": 3}, "stdlib_docs": {"web_crawl": 1},
                                        "web_crawl": {"web_crawl": 2}},
                          "decided_by": {"source": 4, "quality_score": 2}}
    examples = decision.report["examples"]
    assert {m["source"] for e in examples for m in e["members"]} == {"kjv", "stdlib_docs", "web_crawl"}


def test_summaries_with_sources_survive_a_resume_marker(tmp_path):
    from curation import markers

    batch = _sourced(_planted_copies()[:4])
    for name in ("minhash_dedup", "exact_dedup"):
        summary = REGISTRY[name]().collect(batch)
        back = markers.decode(markers.encode(summary, "k"), "k", dict)
        assert list(back["source"]) == ["kjv", "web_crawl", "kjv", "web_crawl"]
        assert list(back["origin"]) == ["human"] * 4


def test_curate_show_and_the_html_report_say_who_was_kept_over_whom(tmp_path):
    from curation.report import version_report
    from flows.cli_common import console
    from flows.printing import print_dedup_reports

    _, decision = _decide("minhash_dedup", [_sourced(_planted_copies())], tmp_path,
                          prefer_sources=["stdlib_docs", "kjv", "web_crawl"])
    manifest = {"name": "v", "steps": [], "step_reports": {"minhash_dedup": json.loads(json.dumps(decision.report))}}
    with console.capture() as captured:
        print_dedup_reports(manifest)
    shown = " ".join(captured.get().split())
    assert "kept over (by source): kjv over web_crawl 3, web_crawl over web_crawl 2, stdlib_docs over web_crawl 1; " \
           "decided by source 4, quality_score 2" in shown
    assert "source (stdlib_docs > kjv > web_crawl)" in shown
    page, twin = version_report(manifest, None)
    assert "Kept over: minhash_dedup" in page and "stdlib_docs &gt; kjv &gt; web_crawl" in page
    assert twin["dedup"]["minhash_dedup"]["kept_over"] == decision.report["kept_over"]
    assert twin["dedup"]["minhash_dedup"]["decided_by"] == {"source": 4, "quality_score": 2}


def test_a_large_clusters_examples_read_the_texts_they_show():
    """A cluster with more than three removed copies, removed in an order other than their ids': the example shows
    the first three ids and must read exactly those texts (it once read the first three removed instead)."""
    from curation.steps.dedup import _examples

    ids = ["keep", "e", "d", "c", "b", "a"]
    keys = {k: D.DocKey(i, 10) for k, i in enumerate(ids)}
    decision = D.DedupDecision(removals={i: D.Removal("keep", "keep", 1.0) for i in ids[1:]},
                               cluster_sizes={"keep": len(ids)})

    def read(wanted):
        return {index: f"text of {ids[index]}" for index in wanted.tolist()}

    (example,) = _examples(decision, keys, read)
    assert [m["id"] for m in example["members"]] == ["keep", "a", "b", "c"]
    assert [m["text"] for m in example["members"]] == [f"text of {i}" for i in ("keep", "a", "b", "c")]


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
    docs = [D.DocKey("A", 300), D.DocKey("B", 200), D.DocKey("C", 100)]
    sims = {(0, 1): 0.85, (1, 2): 0.85, (0, 2): 0.7}
    decision = D.resolve_clusters(docs, [(0, 1), (1, 2)], lambda i, j: sims[(min(i, j), max(i, j))], 0.8)
    assert {k: (v.dup_of, v.jaccard) for k, v in decision.removals.items()} == {"B": ("A", 0.85)}
    assert decision.cluster_sizes == {"A": 2, "B": 2}
    # Published documents always win and are never removed.
    docs = [D.DocKey("new", 900), D.DocKey("old", 10, published="v1")]
    decision = D.resolve_clusters(docs, [(0, 1)], lambda i, j: 0.9, 0.8)
    assert decision.removals["new"].dup_of == "old" and decision.removals["new"].in_version == "v1"

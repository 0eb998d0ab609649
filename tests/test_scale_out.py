"""Scale-out: dedup decisions cut into pieces that run on workers remove the same documents, for the same reasons,
whatever the number of pieces, the sharding, or the process count; shards sized for the workers."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl
from test_dedup import edit, text

from curation import dedup as D
from curation import dedup_parts as P
from curation.pipeline import MIN_AUTO_SHARD_MB, parallelism, sized_for
from curation.recipe import DEFAULT_SHARD_SIZE_MB, parse_recipe
from curation.steps import REGISTRY, Collected
from curation.steps.base import Workers, serial_map
from curation.store import VersionStore
from flows.curate import run_curation


def _corpus(seed: int = 4, bases: int = 60) -> list[dict]:
    """Originals with exact copies (case and spacing changed), near copies, and chains of edits (A~B, B~C, A!~C)
    so the keep policy needs more than one round of similarities."""
    rng = random.Random(seed)
    rows = []
    for k in range(bases):
        base = text(rng, 150)
        rows.append({"id": f"b{k:03d}", "text": base, "quality_score": rng.random(), "source": "a"})
        if k % 3 == 0:
            rows.append({"id": f"e{k:03d}", "text": base.upper().replace(" ", "  "), "quality_score": rng.random(),
                         "source": "b"})
        if k % 4 == 0:
            step = base
            for link in range(4):  # each link ~0.85 to the one before: far ends fall below 0.8
                step = edit(rng, step, 0.02)
                rows.append({"id": f"c{k:03d}-{link}", "text": step, "quality_score": rng.random(), "source": "b"})
    rng.shuffle(rows)
    return rows


def _batch(rows: list[dict]) -> pa.Table:
    return pa.table({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows],
                     "quality_score": pa.array([r["quality_score"] for r in rows], pa.float32()),
                     "source": [r["source"] for r in rows], "origin": ["human"] * len(rows)})


class CountingMap:
    """Runs the pieces here, counting them: what the flow's task map does, minus the workers."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, fn, arguments):
        self.calls.append((fn.__name__, len(arguments)))
        return serial_map(fn, arguments)


def _decide(step_name: str, rows: list[dict], shards: int, folder: Path, workers: Workers, store: str | None = None,
            **params):
    step = REGISTRY[step_name](**params)
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(rows) // shards)
    collected = []
    for k in range(0, len(rows), size):
        path = folder / f"shard-{k:05d}.parquet"
        batch = _batch(rows[k:k + size])
        pq.write_table(batch, path)
        summary = step.store_summary(step.collect(batch), str(folder / f"summary-{k:05d}.parquet"),
                                     fsspec.filesystem("file"))
        collected.append(Collected(summary, str(path), store or str(folder)))
    return step.decide(collected, workers)


def _outcome(decision: D.DedupDecision) -> tuple:
    removals = {k: (v.dup_of, round(v.jaccard, 12), v.in_version) for k, v in decision.removals.items()}
    report = {k: v for k, v in decision.report.items()}
    return removals, decision.cluster_sizes, report


@pytest.mark.parametrize("step_name", ["exact_dedup", "minhash_dedup"])
def test_any_number_of_pieces_and_any_sharding_make_the_same_decision(tmp_path, step_name):
    rows = _corpus()
    outcomes, pieces, calls = [], [], []
    for shards, partitions in ((1, 1), (1, 3), (4, 2), (7, 5), (3, 9)):
        counting = CountingMap()
        workers = Workers(map=counting, partitions=partitions, min_docs=1)
        decision = _decide(step_name, rows, shards, tmp_path / f"{shards}-{partitions}", workers)
        outcomes.append(_outcome(decision))
        pieces.append(max(n for _, n in counting.calls))
        calls.append([name for name, _ in counting.calls])
    assert all(o == outcomes[0] for o in outcomes[1:])
    assert pieces[0] == 1 and max(pieces) >= 5  # the work really was cut
    removals, sizes, report = outcomes[0]
    assert len(removals) >= 15 and report["documents"] == len(rows)
    if step_name == "minhash_dedup":
        assert report["verified_pairs"] > 0 and all(j >= 0.8 for _, j, _ in removals.values())
        # The chains: links too far from the kept document stay, and form clusters of their own; deciding that took
        # more than one round of similarities (verification, then the kept documents against the rest, again).
        chains = [[f"b{k:03d}"] + [f"c{k:03d}-{n}" for n in range(4)] for k in range(0, 60, 4)]
        assert any(sum(d not in removals for d in chain) >= 2 and set(chain) & set(removals) for chain in chains)
        assert all(c.count("pair_similarities") >= 3 for c in calls)


def test_the_decision_equals_one_process_holding_everything(tmp_path):
    """The pieces against a direct reading of the same definition: every pair sharing a band, verified by the
    exact Jaccard of all texts in memory, clustered by the keep policy."""
    rows = _corpus(seed=8)
    step = REGISTRY["minhash_dedup"]()
    batch = _batch(rows)
    summary = step.collect(batch)
    pairs = D.candidate_pairs(summary["band"])
    hashes, offsets = D.shingles([r["text"] for r in rows])
    sets = [D.shingle_set(hashes, offsets, k) for k in range(len(rows))]
    keys = {k: D.DocKey(r["id"], len(r["text"]), float(np.float32(r["quality_score"])), None, r["source"], "human")
            for k, r in enumerate(rows)}
    sims = [D.jaccard(sets[i], sets[j]) for i, j in pairs.tolist()]
    edges = pairs[np.array(sims) >= 0.8]
    expected = D.resolve_clusters(keys, edges, lambda ps: [D.jaccard(sets[i], sets[j]) for i, j in ps], 0.8,
                                  step.params.keep_policy)
    decided = _decide("minhash_dedup", rows, 3, tmp_path, Workers(partitions=4, min_docs=1))
    assert _outcome(decided)[:2] == _outcome(expected)[:2] and len(expected.removals) >= 15


def test_pieces_read_only_their_columns_and_number_documents_across_files(tmp_path):
    rows = _corpus(seed=2, bases=12)
    step = REGISTRY["minhash_dedup"]()
    fs = fsspec.filesystem("file")
    sources = []
    for k, part in enumerate((rows[:10], rows[10:])):
        path = str(tmp_path / f"s{k}.parquet")
        pq.write_table(_batch(part), path)
        summary = step.store_summary(step.collect(_batch(part)), str(tmp_path / f"sum{k}.parquet"), fs)
        sources.append(P.Source(summary, path, str(tmp_path), len(part)))
    assert P.first_index(sources).tolist() == [0, 10, len(rows)]
    assert P.read_texts(sources, np.array([11, 0])) == {0: rows[0]["text"], 11: rows[11]["text"]}
    keys = P.doc_keys(sources, np.array([12]))
    assert keys[12].id == rows[12]["id"] and keys[12].length == len(rows[12]["text"])
    # A scoped step's summary describes some rows of its shard: texts are read from those rows.
    scoped = P.Source(sources[1].summary, sources[1].texts, str(tmp_path), sources[1].documents,
                      rows=np.arange(sources[1].documents)[::-1])
    assert P.read_texts([scoped], np.array([0])) == {0: rows[-1]["text"]}


def test_against_an_earlier_version_gives_the_same_decision_in_pieces(tmp_path, prefect_harness, monkeypatch):
    rng = random.Random(12)
    first = [{"id": f"a{k}", "text": text(rng)} for k in range(30)]
    write_jsonl(tmp_path / "one.jsonl", first)
    store = str(tmp_path / "store")
    run_curation(parse_recipe({"inputs": [{"path": str(tmp_path / "one.jsonl")}]}), store, "v1", workers=1)
    rows = [{"id": f"n{k}", "text": edit(rng, first[k]["text"], 0.02) if k < 10 else text(rng),
             "quality_score": 0.5, "source": "two"} for k in range(25)]
    rows += [{"id": f"x{k}", "text": first[k]["text"].upper(), "quality_score": 0.5, "source": "two"}
             for k in range(10, 15)]
    outcomes = {}
    for name in ("exact_dedup", "minhash_dedup"):
        for partitions in (1, 3):
            folder = Path(store) / f"staging-{name}-{partitions}"
            decision = _decide(name, rows, 2, folder, Workers(partitions=partitions, min_docs=1), store,
                               against=["v1"])
            outcomes.setdefault(name, []).append(_outcome(decision))
        assert outcomes[name][0] == outcomes[name][1]
    # The earlier version's index, rebuilt a few documents at a time, is the same index.
    monkeypatch.setattr("curation.steps.dedup.INDEX_BATCH_ROWS", 7)
    for index in (Path(store) / "index").rglob("*.parquet"):
        index.unlink()
    for name in ("exact_dedup", "minhash_dedup"):
        decision = _decide(name, rows, 2, Path(store) / f"again-{name}", Workers(partitions=2, min_docs=1), store,
                           against=["v1"])
        assert _outcome(decision) == outcomes[name][0]
    rebuilt = pq.ParquetFile(next((Path(store) / "index").rglob("*.parquet"))).metadata
    assert rebuilt.num_rows == 30 and rebuilt.num_row_groups == 5  # written 7 documents at a time
    exact_removed = outcomes["exact_dedup"][0][0]
    assert {k: v[2] for k, v in exact_removed.items()} == {f"x{k}": "v1" for k in range(10, 15)}
    near_removed = outcomes["minhash_dedup"][0][0]
    assert {f"n{k}" for k in range(10)} <= set(near_removed) and all(v[2] == "v1" for v in near_removed.values())
    assert VersionStore(store).exists("v1")


@pytest.mark.e2e
def test_two_workers_decide_in_tasks_and_publish_what_one_process_does(tmp_path, prefect_harness):
    rows = _corpus(seed=6)
    write_jsonl(tmp_path / "in.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows])
    recipe = parse_recipe({"inputs": [{"path": str(tmp_path / "in.jsonl")}], "shard_size_mb": 0.01,
                           "steps": [{"step": "exact_dedup"}, {"step": "minhash_dedup"}]})
    one = run_curation(recipe, str(tmp_path / "a"), "v", workers=1)
    two = run_curation(recipe, str(tmp_path / "b"), "v", workers=2, decision_min_docs=1, stats_min_docs=1)
    assert one["fingerprint"] == two["fingerprint"]
    rejected = [VersionStore(tmp_path / s).read_table("v", "rejects").sort_by("id").to_pylist() for s in ("a", "b")]
    assert [(r["id"], r["reason"]) for r in rejected[0]] == [(r["id"], r["reason"]) for r in rejected[1]]
    assert len(rejected[0]) >= 15
    rounds = [t for t in two["timings"].values() if isinstance(t, dict) and "decide_tasks" in t]
    assert len(rounds) == 2 and all(t["decide_tasks"] >= 2 for t in rounds)  # pieces ran as tasks
    # How much the flow's own process grew while deciding (Linux's peak, reset before each decision).
    assert all(0 <= t["decide_flow_memory_growth_bytes"] < 200e6 for t in rounds)
    assert all(t["decide_tasks"] == 0 for t in one["timings"].values() if isinstance(t, dict) and "decide_tasks" in t)
    # The summaries went to files in the staging folder, not through the flow: the published version has none.
    assert not list((tmp_path / "b").rglob("summary-*.parquet"))
    # The statistics' pass ran in pieces on the workers, merged in order: the same stats.json as one pass; the
    # guards ran as a task beside it (one worker: here, before it), with the same report.
    assert two["guards"] == one["guards"] and two["guards"]["guards"]
    assert two["timings"]["guards+stats"]["tasks"] >= 5 and one["timings"]["guards+stats"]["tasks"] == 0
    stats = [json.loads((Path(m["path"]) / "stats.json").read_text()) for m in (one, two)]
    assert stats[0] == stats[1] and stats[0]["size"]["docs"] == two["rows"]


def test_a_small_input_is_cut_into_several_shards_unless_the_recipe_sets_their_size(tmp_path):
    for k in range(3):  # sparse files: sizes without the bytes
        path = tmp_path / f"in{k}.jsonl"
        path.touch()
        os.truncate(path, 25_000_000)
    inputs = [{"path": str(tmp_path / "in*.jsonl")}]
    auto = parse_recipe({"inputs": inputs})
    assert sized_for(auto).shard_size_mb == pytest.approx(75 / 8, abs=1e-3)  # ~8 shards, any worker count
    assert sized_for(parse_recipe({"inputs": inputs, "shard_size_mb": 64})).shard_size_mb == 64  # the user's
    assert sized_for(auto).content_hash() != auto.content_hash()  # a run's resume key follows the shards
    os.truncate(tmp_path / "in0.jsonl", 10)
    os.truncate(tmp_path / "in1.jsonl", 10)
    assert sized_for(auto).shard_size_mb == MIN_AUTO_SHARD_MB  # 25 MB: never below 4 MB
    os.truncate(tmp_path / "in0.jsonl", 1_000_000_000)
    assert sized_for(auto).shard_size_mb == DEFAULT_SHARD_SIZE_MB  # a large input: the default already cuts enough
    assert (parallelism(3), parallelism(None, "local:5"), parallelism(None, "tcp://h:8786")) == (3, 5, 16)

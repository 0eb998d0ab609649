"""Row-level version diff and the `why` lookup, on a tiny store published by hand (no Prefect)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from conftest import doc
from typer.testing import CliRunner

from curation.diff import diff_versions, js_divergence, ks_statistic, lineage, side_by_side, why
from curation.record import conform, conform_rejects
from curation.store import VersionNotFoundError, VersionStore
from flows.cli_inspect import diff_command, why_command


def _records(rows: list[tuple[str, str]]) -> pa.Table:
    return conform(pa.table({
        "id": [i for i, _ in rows],
        "text": [t for _, t in rows],
        "source": ["web"] * len(rows),
        "origin": ["human"] * len(rows),
        "generation": pa.array([0] * len(rows), pa.int32()),
        "generator": pa.array([None] * len(rows), pa.string()),
    }))


def _rejects(rows: list[dict]) -> pa.Table:
    columns = {k: [r.get(k) for r in rows] for k in ("id", "text", "step", "reason", "source_file", "source_line",
                                                    "dup_of")}
    table = pa.table({**{k: v for k, v in columns.items() if k != "dup_of"},
                      "source": ["web"] * len(rows), "origin": ["human"] * len(rows),
                      "generation": pa.array([0] * len(rows), pa.int32()),
                      "generator": pa.array([None] * len(rows), pa.string()),
                      "dup_of": pa.array(columns["dup_of"], pa.string())})
    return conform_rejects(table)


def publish(store: VersionStore, name: str, kept: list[tuple[str, str]], rejects: list[dict] | None = None,
            steps: list[tuple[str, dict[str, int]]] | None = None, parents: list[str] | None = None,
            stats: dict | None = None, **extra) -> None:
    """A version with `kept` records; `steps` are (name, rejected_by_reason) after an ingest that kept all."""
    rejects = rejects or []
    steps = steps or []
    st = store.begin(name)
    pq.write_table(_records(kept), st.sub("data", "part-0.parquet"), filesystem=store.fs)
    if rejects:
        pq.write_table(_rejects(rejects), st.sub("rejects", "steps-0.parquet"), filesystem=store.fs)
    if stats is not None:
        with store.fs.open(st.path + "/stats.json", "w") as handle:
            json.dump(stats, handle)
    n_in = len(kept) + len(rejects)
    counted = [{"name": "ingest", "in": n_in, "kept": n_in, "rejected": 0, "rejected_by_reason": {}}]
    current = n_in
    for step, by_reason in steps:
        rejected = sum(by_reason.values())
        counted.append({"name": step, "in": current, "kept": current - rejected, "rejected": rejected,
                        "rejected_by_reason": by_reason})
        current -= rejected
    store.publish(st, {"steps": counted, "parents": parents or [], "created_at": name, **extra})


def stats_for(words: dict[str, int], total: int, edges: list[float], counts: list[int], docs: int) -> dict:
    return {
        "schema": 1,
        "size": {"docs": docs, "chars": 1000 * docs, "words": total, "tokens": None,
                 "by_source": {"web": {"docs": docs, "chars": 1000 * docs, "words": total}}, "by_lang": {}},
        "length": {"unit": "chars", "quantiles": {"50": 1000}, "histogram": {"edges": edges, "counts": counts}},
        "lexical": {"distinct_1": 0.5, "unigram_entropy": 7.5, "mattr": 0.7, "mattr_window": 50},
        "unigrams": {"total": total, "top": words},
        "semantic": {"method": "tfidf-svd", "clusters": [{"id": 0, "size": docs, "share": 1.0, "top_terms": []}],
                     "cluster_entropy": 2.0, "vendi_score": 3.5, "vendi_sample": docs},
        "coverage": None,
    }


A_DOCS = [(f"d{i}", doc(i)) for i in range(10)]
CHANGED = doc(4) + " An edited closing sentence."
EDGES = [1.0, 10.0, 100.0, 1000.0, 10000.0]


@pytest.fixture()
def store(tmp_path):
    store = VersionStore(tmp_path / "store")
    words_a = {"the": 50, "river": 20, "mill": 10}
    publish(store, "A", A_DOCS, stats=stats_for(words_a, 100, EDGES, [0, 0, 4, 6], 10))
    # B descends from A: length_filter removes d1 and d3, exact_dedup removes d2, d4 is edited, n1/n2 are new.
    kept_b = [(i, t) for i, t in A_DOCS if i not in {"d1", "d2", "d3", "d4"}]
    kept_b += [("d4", CHANGED), ("n1", doc(101)), ("n2", doc(102))]
    rejects_b = [
        {"id": "d1", "text": doc(1), "step": "length_filter", "reason": "length_filter:chars=12<200",
         "source_file": "a.jsonl", "source_line": 2},
        {"id": "d3", "text": doc(3), "step": "length_filter", "reason": "length_filter:chars=9<200",
         "source_file": "a.jsonl", "source_line": 4},
        {"id": "d2", "text": doc(2), "step": "exact_dedup", "reason": "exact_dedup:duplicate_of=d0",
         "source_file": "a.jsonl", "source_line": 3, "dup_of": "d0"},
    ]
    words_b = {"the": 40, "river": 10, "weir": 30}
    publish(store, "B", kept_b, rejects_b,
            steps=[("length_filter", {"length_filter:chars": 2}), ("exact_dedup", {"exact_dedup:duplicate_of": 1})],
            parents=["A"], stats=stats_for(words_b, 120, [1.0, 10.0, 100.0, 500.0, 1000.0, 10000.0],
                                           [0, 0, 1, 2, 6], 9))
    # C descends from B and read only two of its documents.
    publish(store, "C", [A_DOCS[0], A_DOCS[5]], parents=["B"])
    # U shares ids with A but has no lineage to it.
    publish(store, "U", [A_DOCS[0], ("d1", "other text entirely")])
    # D read A's data folder as its input (no `parents` entry) and dropped d9 with a reason.
    publish(store, "D", A_DOCS[:9], [{"id": "d9", "text": doc(9), "step": "length_filter",
                                      "reason": "length_filter:chars=5<200", "source_file": "x", "source_line": 10}],
            steps=[("length_filter", {"length_filter:chars": 1})],
            inputs=[{"path": f"{store.version_path('A')}/data/*.parquet", "source": "web", "files": []}])
    # A2: A's documents and A's statistics again.
    publish(store, "A2", A_DOCS, parents=["A"], stats=stats_for(words_a, 100, EDGES, [0, 0, 4, 6], 10))
    return store


def _ids(examples):
    return sorted(e["id"] for e in examples)


def test_diff_of_a_descendant_lists_every_change_with_its_reason(store):
    result = diff_versions(store, "A", "B")
    assert result["lineage"] == "parent"
    assert result["docs"] == {"a": 10, "b": 9}
    assert result["added"]["count"] == 2 and _ids(result["added"]["examples"]) == ["n1", "n2"]
    assert result["removed"]["count"] == 3 and _ids(result["removed"]["examples"]) == ["d1", "d2", "d3"]
    assert result["changed"]["count"] == 1 and _ids(result["changed"]["examples"]) == ["d4"]
    assert result["unchanged"] == 6
    change = result["changed"]["examples"][0]
    assert change["first_difference"] == len(doc(4)) and change["b_chars"] == len(CHANGED)
    groups = {(g["step"], g["reason"]): g for g in result["removed"]["by_reason"]}
    assert set(groups) == {("length_filter", "length_filter:chars"), ("exact_dedup", "exact_dedup:duplicate_of")}
    assert groups[("length_filter", "length_filter:chars")]["count"] == 2
    assert _ids(groups[("length_filter", "length_filter:chars")]["examples"]) == ["d1", "d3"]
    dedup = groups[("exact_dedup", "exact_dedup:duplicate_of")]
    assert dedup["count"] == 1 and dedup["version"] == "B"
    example = dedup["examples"][0]
    assert example["dup_of"] == "d0" and example["source_line"] == 3 and example["text"].startswith(doc(2)[:40])
    assert result["removed"]["not_ingested"]["count"] == 0
    json.dumps(result)  # JSON-serialisable as it is


def test_examples_are_capped_and_ancestors_explain_what_they_removed(store):
    assert diff_versions(store, "A", "B", examples=1)["added"]["examples"] == [
        {"id": "n1", "text": doc(101)[:160] + "…"}]
    result = diff_versions(store, "A", "C")
    assert result["lineage"] == "ancestor" and result["via"] == ["C", "B"]
    assert result["removed"]["count"] == 8
    assert sum(g["count"] for g in result["removed"]["by_reason"]) == 3
    assert {g["version"] for g in result["removed"]["by_reason"]} == {"B"}
    assert result["removed"]["not_ingested"]["count"] == 5  # d4, d6..d9: C did not read them


def test_inputs_reading_a_versions_folder_count_as_lineage(store):
    assert lineage(store, "A", "D")["lineage"] == "input"
    result = diff_versions(store, "A", "D")
    assert [(g["step"], g["reason"], g["count"]) for g in result["removed"]["by_reason"]] == [
        ("length_filter", "length_filter:chars", 1)]


def test_unrelated_versions_claim_no_reasons(store):
    result = diff_versions(store, "A", "U")
    assert result["lineage"] == "unrelated"
    assert result["removed"]["count"] == 8 and result["changed"]["count"] == 1
    assert "by_reason" not in result["removed"] and "not_ingested" not in result["removed"]
    assert any("no reasons are claimed" in n for n in result["notes"])
    # The reverse direction (B is A's child, A is not B's) is unrelated too.
    assert diff_versions(store, "B", "A")["lineage"] == "unrelated"


def test_a_version_that_removed_everything(store):
    rejects = [{"id": i, "text": t, "step": "length_filter", "reason": "length_filter:chars=1<2", "source_file": "f",
                "source_line": n} for n, (i, t) in enumerate(A_DOCS)]
    publish(store, "E", [], rejects, steps=[("length_filter", {"length_filter:chars": 10})], parents=["A"])
    result = diff_versions(store, "A", "E")
    assert result["docs"] == {"a": 10, "b": 0} and result["removed"]["count"] == 10 and result["unchanged"] == 0
    assert [(g["reason"], g["count"]) for g in result["removed"]["by_reason"]] == [("length_filter:chars", 10)]
    assert diff_versions(store, "E", "A")["added"]["count"] == 10


def test_statistics_side_by_side_and_distances(store):
    stats = diff_versions(store, "A", "B")["stats"]
    docs = stats["metrics"]["size.docs"]
    assert docs == {"a": 10, "b": 9, "delta": -1, "rel": pytest.approx(-0.1)}
    assert "size.tokens" not in stats["metrics"]  # null on both sides: nothing to compare
    assert stats["metrics"]["size.by_source.web.words"]["delta"] == 20
    assert stats["metrics"]["semantic.vendi_score"]["delta"] == 0
    assert "semantic.vendi_sample" not in stats["metrics"]
    assert 0 < stats["unigram_js"]["value"] <= 1
    assert 0 < stats["length_ks"]["value"] <= 1
    same = diff_versions(store, "A", "A2")["stats"]
    assert same["unigram_js"]["value"] == pytest.approx(0.0, abs=1e-12)
    assert same["length_ks"]["value"] == 0.0
    missing = diff_versions(store, "A", "C")["stats"]
    assert missing["available"] == {"a": True, "b": False}
    assert missing["unigram_js"]["value"] is None and any("no stats.json" in n for n in missing["notes"])
    assert missing["metrics"]["size.docs"] == {"a": 10, "b": None, "delta": None, "rel": None}


def test_distance_functions():
    u = {"total": 100, "top": {"a": 60, "b": 30}}
    assert js_divergence(u, dict(u)) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence(u, {"total": 100, "top": {"a": 30, "b": 60}}) > 0
    assert js_divergence({"total": 10, "top": {"a": 10}}, {"total": 10, "top": {"b": 10}}) == pytest.approx(1.0)
    # Same mass in "other": the identical tails cancel.
    assert js_divergence({"total": 200, "top": {"a": 100}}, {"total": 400, "top": {"a": 200}}) == pytest.approx(0.0)
    h = {"edges": [1, 10, 100, 1000], "counts": [5, 3, 2]}
    assert ks_statistic(h, dict(h)) == 0.0
    assert ks_statistic(h, {"edges": [1, 10, 100, 1000], "counts": [0, 0, 10]}) == pytest.approx(0.8)
    # Different edges: evaluated on the union with interpolation; splitting a bin evenly changes nothing.
    split = {"edges": [1, 10, 55, 100, 1000], "counts": [5, 1.5, 1.5, 2]}
    assert ks_statistic(h, split) == pytest.approx(0.0, abs=1e-12)
    assert side_by_side({"size": {"docs": 0}}, {"size": {"docs": 5}})["size.docs"]["rel"] is None


def test_why_kept_removed_removed_in_parent_and_unknown(store):
    kept = why(store, "B", "d4")
    assert kept["status"] == "kept" and kept["row"]["text"] == CHANGED[:300] + ("…" if len(CHANGED) > 300 else "")
    assert kept["row"]["source"] == "web" and kept["row"]["generation"] == 0
    removed = why(store, "B", "d2")
    assert removed["status"] == "removed" and removed["step"] == "exact_dedup"
    assert removed["reason"] == "exact_dedup:duplicate_of=d0" and removed["dup_of"] == "d0"
    assert (removed["source_file"], removed["source_line"]) == ("a.jsonl", 3)
    in_parent = why(store, "C", "d3")
    assert in_parent["status"] == "removed_in_parent" and in_parent["where"] == "B"
    assert in_parent["message"] == "removed in parent B by step length_filter: length_filter:chars=9<200"
    not_ingested = why(store, "C", "d7")
    assert not_ingested["status"] == "kept_in_parent" and not_ingested["where"] == "B"
    assert "not ingested" in not_ingested["message"]
    own = why(store, "D", "d9")
    assert own["status"] == "removed" and own["reason"] == "length_filter:chars=5<200"
    unknown = why(store, "C", "nope")
    assert unknown["status"] == "unknown" and unknown["searched"] == ["C", "B", "A"]
    with pytest.raises(VersionNotFoundError):
        why(store, "Z", "d0")
    json.dumps(kept), json.dumps(removed)


def test_why_reads_only_matching_row_groups(tmp_path):
    store = VersionStore(tmp_path / "s")
    st = store.begin("big")
    rows = [(f"r{i:04d}", doc(i)) for i in range(300)]
    pq.write_table(_records(rows), st.sub("data", "part-0.parquet"), filesystem=store.fs, row_group_size=50)
    store.publish(st, {"steps": [{"name": "ingest", "in": 300, "kept": 300, "rejected": 0, "rejected_by_reason": {}}],
                       "parents": [], "created_at": "x"})
    assert why(store, "big", "r0123")["row"]["text"] == doc(123)
    assert why(store, "big", "r9999")["status"] == "unknown"


@pytest.fixture()
def cli():
    app = typer.Typer(pretty_exceptions_enable=False)
    app.command(name="diff")(diff_command)
    app.command(name="why")(why_command)
    return app


def test_cli_diff_and_why(store, cli):
    runner = CliRunner(env={"COLUMNS": "200"})
    result = runner.invoke(cli, ["diff", "A", "B", "--store", store.url])
    assert result.exit_code == 0, result.output
    for fragment in ("lineage: parent", "added", "n1, n2", "d1, d2, d3", "length_filter:chars", "dup of d0",
                     "size.docs", "Jensen-Shannon", "Kolmogorov-Smirnov"):
        assert fragment in result.output, fragment
    as_json = runner.invoke(cli, ["diff", "A", "U", "-s", store.url, "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["lineage"] == "unrelated"
    missing = runner.invoke(cli, ["diff", "A", "nope", "-s", store.url])
    assert missing.exit_code == 2 and "no version 'nope'" in missing.output

    removed = runner.invoke(cli, ["why", "B", "d2", "-s", store.url])
    assert removed.exit_code == 0 and "removed in B by step exact_dedup" in removed.output
    assert json.loads(runner.invoke(cli, ["why", "C", "d7", "-s", store.url, "--json"]).stdout)["status"] == \
        "kept_in_parent"
    env = runner.invoke(cli, ["why", "B", "d0"], env={"CURATE_STORE": store.url, "COLUMNS": "200"})
    assert env.exit_code == 0 and "kept in B" in env.output
    unknown = runner.invoke(cli, ["why", "B", "nope", "-s", store.url])
    assert unknown.exit_code == 2 and "unknown id 'nope'" in unknown.output
    bad_version = runner.invoke(cli, ["why", "Z", "d0", "-s", store.url])
    assert bad_version.exit_code == 2 and "no version 'Z'" in bad_version.output

"""Line/paragraph-level boilerplate removal across the run (a global step): collect -> decide -> apply."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import doc, write_jsonl
from xxhash import xxh3_64_intdigest

from curation.steps.base import Collected
from curation.steps.line_dedup import ANNOTATION, LineDedup, LineDedupDecision, normalise

NAV = "Home | About | Contact"
SHARE = "Share this page on Facebook"
QUOTE = "To be, or not to be, that is the question."

# Three shards. NAV is in 6 documents (a1, a2, b1, b3, c1, c2), SHARE in 4 (a2, b2, b3, c2), QUOTE in 2 (a1, c1).
SHARDS = [
    [("a0", "Unique opening document.\nNothing shared here."),
     ("a1", f"{NAV}\nFirst article body.\n{QUOTE}"),
     ("a2", f"  home |  ABOUT | contact  \nSecond article body.\n{SHARE}\n")],
    [("b1", f"{NAV}\nThird article body."),
     ("b2", f"Fourth article body.\n\n{SHARE}"),
     ("b3", f"{NAV}\n{SHARE}")],
    [("c1", f"{QUOTE}\n{NAV}\nFifth article body."),
     ("c2", f"{SHARE}\n{NAV}")],
]


def table(rows: list[tuple[str, str]], **extra) -> pa.Table:
    return pa.table({"id": pa.array([r[0] for r in rows], pa.string()),
                     "text": pa.array([r[1] for r in rows], pa.large_string()),
                     **extra})


def run_step(tmp_path, batches: list[pa.Table], **params):
    """The global phase as the flow runs it: collect per shard, decide once, bind, apply per shard."""
    collected = []
    for i, batch in enumerate(batches):
        path = str(tmp_path / f"shard-{len(list(tmp_path.iterdir())):03d}-{i:03d}.parquet")
        pq.write_table(batch, path)
        collected.append(Collected(LineDedup(**params).collect(batch), path, str(tmp_path)))
    decision = LineDedup(**params).decide(collected)
    step = pickle.loads(pickle.dumps(LineDedup(**params)))  # as shipped to a worker
    step.bind(pickle.loads(pickle.dumps(decision)))
    return [step.apply(b) for b in batches], decision, step


def texts_by_id(outputs) -> dict[str, str]:
    return {i: t for out in outputs for i, t in zip(out.kept.column("id").to_pylist(),
                                                     out.kept.column("text").to_pylist())}


def test_keep_first_removes_a_line_in_many_documents_from_all_but_its_first(tmp_path):
    outputs, decision, _ = run_step(tmp_path, [table(s) for s in SHARDS])
    texts = texts_by_id(outputs)
    assert texts == {
        "a0": "Unique opening document.\nNothing shared here.",  # untouched
        "a1": f"{NAV}\nFirst article body.\n{QUOTE}",  # NAV's first document keeps it; QUOTE (2 docs) stays
        "a2": f"Second article body.\n{SHARE}\n",  # SHARE's first document; the final newline stays
        "b1": "Third article body.",
        "b2": "Fourth article body.\n",  # the blank line left at the end goes, the newline stays
        "c1": f"{QUOTE}\nFifth article body.",
    }
    rejected = pa.concat_tables([o.rejected for o in outputs])
    assert rejected.column("id").to_pylist() == ["b3", "c2"]  # nothing left but boilerplate
    assert set(rejected.column("reason").to_pylist()) == {"line_dedup:empty"}
    assert rejected.column("text").to_pylist() == [f"{NAV}\n{SHARE}", f"{SHARE}\n{NAV}"]  # the original text
    assert len(decision.hashes) == 2 and decision.hashes.dtype == np.uint64
    assert np.all(decision.hashes[1:] > decision.hashes[:-1])  # sorted, for binary search


def test_keep_first_false_removes_everywhere(tmp_path):
    outputs, _, _ = run_step(tmp_path, [table(s) for s in SHARDS], keep_first=False)
    texts = texts_by_id(outputs)
    assert texts["a1"] == f"First article body.\n{QUOTE}"
    assert texts["a2"] == "Second article body.\n"
    assert texts["c1"] == f"{QUOTE}\nFifth article body."
    assert sorted(i for o in outputs for i in o.rejected.column("id").to_pylist()) == ["b3", "c2"]


def test_two_documents_are_not_boilerplate_unless_min_docs_says_so(tmp_path):
    outputs, _, _ = run_step(tmp_path, [table(s) for s in SHARDS], min_docs=2)
    texts = texts_by_id(outputs)
    assert texts["a1"].endswith(QUOTE)  # first holder keeps it
    assert texts["c1"] == "Fifth article body."
    outputs, decision, _ = run_step(tmp_path, [table(s) for s in SHARDS], min_docs=7)
    assert len(decision.hashes) == 0
    assert texts_by_id(outputs) == {i: t for s in SHARDS for i, t in s}
    assert all(o.rejected.num_rows == 0 for o in outputs)


def test_counters_and_annotation(tmp_path):
    outputs, _, _ = run_step(tmp_path, [table(s) for s in SHARDS])
    totals: dict[str, int] = {}
    for o in outputs:
        for k, v in o.counters.items():
            totals[k] = totals.get(k, 0) + v
    # Kept documents only: a2 (NAV), b1 (NAV), b2 (SHARE), c1 (NAV); b3/c2 are rejects.
    assert totals == {"units_removed": 4, "docs_modified": 4,
                      "chars_removed": len("  home |  ABOUT | contact  \n") + 2 * len(NAV + "\n") + len(f"\n{SHARE}")}
    kept = pa.concat_tables([o.kept for o in outputs])
    annotation = dict(zip(kept.column("id").to_pylist(), kept.column(ANNOTATION).to_pylist()))
    assert annotation == {"a0": 0, "a1": 0, "a2": 1, "b1": 1, "b2": 1, "c1": 1}
    assert kept.schema.field(ANNOTATION).type == pa.int32()
    rejected = pa.concat_tables([o.rejected for o in outputs])
    assert rejected.column(ANNOTATION).to_pylist() == [2, 2]
    for batch, o in zip(SHARDS, outputs):
        assert o.kept.num_rows + o.rejected.num_rows == len(batch)


def test_unrelated_columns_pass_through_and_types_stay(tmp_path):
    batches = [table(s, source=pa.array([f"src{k}" for k in range(len(s))]),
                     score=pa.array(np.arange(len(s), dtype=np.float32)),
                     meta=pa.array([{"k": k} for k in range(len(s))])) for s in SHARDS]
    outputs, _, _ = run_step(tmp_path, batches)
    for batch, out in zip(batches, outputs):
        assert out.kept.schema.field("text").type == pa.large_string()
        for column in ("source", "score", "meta"):
            assert out.kept.schema.field(column).type == batch.schema.field(column).type
        ids = batch.column("id").to_pylist()
        for row in out.kept.to_pylist():
            original = batch.slice(ids.index(row["id"]), 1).to_pylist()[0]
            assert {k: row[k] for k in ("source", "score", "meta")} == {k: original[k] for k in ("source", "score",
                                                                                                  "meta")}


def test_paragraph_mode_keeps_separators_as_they_were(tmp_path):
    footer = "Copyright 2024 Example Corp.\nAll rights reserved."
    rows = [
        ("p0", f"Intro one.\nStill intro one.\n\n\nBody one.\n\n{footer}"),
        ("p1", f"Intro two.\n  \n{footer}\n\nBody two.\n"),
        ("p2", f"{footer}\n\nIntro three.\n\nBody three."),
        ("p3", f"Only a line of it:\n{footer.splitlines()[0]}"),  # not the same paragraph
        ("p4", footer),
    ]
    outputs, decision, _ = run_step(tmp_path, [table(rows[:2]), table(rows[2:])], unit="paragraph")
    texts = texts_by_id(outputs)
    assert texts == {
        "p0": f"Intro one.\nStill intro one.\n\n\nBody one.\n\n{footer}",  # the first keeps it
        "p1": "Intro two.\n  \nBody two.\n",  # the footer and the separator after it go
        "p2": "Intro three.\n\nBody three.",
        "p3": f"Only a line of it:\n{footer.splitlines()[0]}",
    }
    assert [r for o in outputs for r in o.rejected.column("id").to_pylist()] == ["p4"]
    # Line mode on the same documents: each footer line is in 5 documents, removed from 4.
    outputs, _, _ = run_step(tmp_path, [table(rows[:2]), table(rows[2:])], unit="line")
    assert texts_by_id(outputs)["p3"] == "Only a line of it:"
    assert decision.summary["boilerplate_units"] == 1 and decision.summary["unit"] == "paragraph"


def test_normalisation_and_stable_hash():
    assert normalise("  Home |\tABOUT\u00a0|  contact \r") == "home | about | contact"
    step = LineDedup()
    assert step._hash(" HOME  page ") == xxh3_64_intdigest(b"home page")  # stable across processes and runs
    assert step._hash("   ") == 0
    assert LineDedup(min_chars=10)._hash("Reply") == 0


def test_min_chars_leaves_short_units_alone(tmp_path):
    rows = [(f"d{i}", f"Reply\n}}\nBody number {i}.") for i in range(4)]
    outputs, _, _ = run_step(tmp_path, [table(rows)], min_chars=6, keep_first=False)
    assert texts_by_id(outputs)["d3"] == "Reply\n}\nBody number 3."
    outputs, _, _ = run_step(tmp_path, [table(rows)], keep_first=False)
    assert texts_by_id(outputs)["d3"] == "Body number 3."


def test_windows_newlines_and_repeats_within_a_document(tmp_path):
    rows = [("w0", "a\r\nNAV LINE\r\nb"), ("w1", "NAV LINE\r\nc\r\nNAV LINE"), ("w2", "nav line"),
            ("w3", "d\nrepeat\nrepeat\nrepeat")]  # repeats inside one document are not boilerplate
    outputs, _, _ = run_step(tmp_path, [table(rows)], keep_first=False)
    texts = texts_by_id(outputs)
    assert texts["w0"] == "a\r\nb" and texts["w1"] == "c\r" and texts["w3"] == "d\nrepeat\nrepeat\nrepeat"
    assert outputs[0].counters["units_removed"] == 3


def test_result_does_not_depend_on_sharding(tmp_path):
    rng = np.random.default_rng(7)
    boiler = [f"boilerplate line number {k}" for k in range(6)]
    rows = []
    for i in range(60):
        lines = [doc(i, 12)] + [boiler[k] for k in rng.choice(6, size=rng.integers(0, 4), replace=False)]
        if i % 11 == 0:
            lines = [boiler[0], boiler[1]]
        rng.shuffle(lines)
        rows.append((f"r{i:02d}", "\n".join(lines)))
    sources = [f"s{i % 3}" for i in range(60)]  # the keep policy ranks s2 first: owners are not run order
    for keep_first in (True, False):
        results = []
        for cuts in ([60], [20, 40, 60], [7, 8, 45, 60], [1, 59, 60]):
            batches = [table(rows[a:b], source=pa.array(sources[a:b])) for a, b in zip([0, *cuts[:-1]], cuts)]
            outputs, decision, _ = run_step(tmp_path, batches, keep_first=keep_first, prefer_sources=["s2"])
            rejected = sorted(i for o in outputs for i in o.rejected.column("id").to_pylist())
            counters = {k: sum(o.counters[k] for o in outputs) for k in outputs[0].counters}
            results.append((texts_by_id(outputs), rejected, counters, decision.hashes.tolist(),
                            decision.summary))
        assert all(r == results[0] for r in results[1:])
        assert results[0][2]["units_removed"] > 0 and results[0][1]  # it did something


def test_report_names_the_most_common_units_with_their_text(tmp_path):
    _, decision, step = run_step(tmp_path, [table(s) for s in SHARDS])
    report = step.report(decision)
    assert report["boilerplate_units"] == 2 and report["documents"] == 8
    assert report["boilerplate_occurrences"] == 10 and report["documents_with_boilerplate"] == 7
    assert [(t["documents"], t["text"]) for t in report["top"]] == [(6, NAV), (4, SHARE)]
    # Examples are a nicety: without the shard files, the decision is the same and the text is None.
    batches = [table(s) for s in SHARDS]
    collected = [Collected(LineDedup().collect(b), str(tmp_path / "missing.parquet"), str(tmp_path)) for b in batches]
    blind = LineDedup().decide(collected)
    assert blind.hashes.tolist() == decision.hashes.tolist() and blind.summary["top"][0]["text"] is None
    pickle.dumps(report)


def test_step_pickles_and_decision_is_small(tmp_path):
    rows = [(f"d{i}", f"{NAV}\n{doc(i, 300)}") for i in range(200)]
    outputs, decision, step = run_step(tmp_path, [table(rows)])
    assert isinstance(decision, LineDedupDecision)
    assert len(pickle.dumps(decision)) < 4_000  # one hash, one owner id and the report
    again = pickle.loads(pickle.dumps(step))
    assert again.apply(table(rows)).kept.equals(outputs[0].kept)
    assert LineDedup().is_global() and LineDedup.name == "line_dedup"
    summary = LineDedup().collect(table(rows))
    assert summary.hashes.dtype == np.uint64 and summary.offsets.dtype == np.int64
    assert summary.hashes.nbytes <= 8 * 2 * 200  # distinct units per document: NAV + one body line
    back = pickle.loads(pickle.dumps(summary))  # it travels back from a worker process
    assert np.array_equal(back.hashes, summary.hashes) and back.ids.equals(summary.ids)


def test_empty_inputs(tmp_path):
    empty = table([])
    outputs, decision, _ = run_step(tmp_path, [empty])
    assert outputs[0].kept.num_rows == 0 and outputs[0].rejected.num_rows == 0 and len(decision.hashes) == 0
    step = LineDedup()
    step.bind(step.decide([]))
    out = step.apply(table([("x", "a\nb")]))
    assert out.kept.column("text").to_pylist() == ["a\nb"] and out.counters["units_removed"] == 0


def test_end_to_end_through_the_flow(tmp_path, prefect_harness, monkeypatch):
    from curation.recipe import parse_recipe
    from curation.steps import REGISTRY
    from curation.store import VersionStore
    from flows.curate import run_curation

    monkeypatch.setitem(REGISTRY, "line_dedup", LineDedup)  # workers=1: tasks run in this process
    rows = [{"id": i, "text": t} for shard in SHARDS for i, t in shard]
    rows += [{"id": f"x{k}", "text": f"{doc(k)}\n{NAV}\n{SHARE}"} for k in range(12)]
    path = write_jsonl(tmp_path / "web.jsonl", rows)
    (tmp_path / "unit").mkdir()  # what the unit-level phase gives on the same rows, as one batch
    expected_out, _, _ = run_step(tmp_path / "unit", [table([(r["id"], r["text"]) for r in rows])])
    expected = texts_by_id(expected_out)
    store = VersionStore(tmp_path / "store")
    for shard_mb in (0.002, 64.0):
        recipe = parse_recipe({"inputs": [{"path": str(path)}], "steps": [{"step": "line_dedup"}],
                               "shard_size_mb": shard_mb})
        manifest = run_curation(recipe, str(tmp_path / "store"), f"v-{shard_mb}", workers=1)
        assert manifest["accounting"]["ok"], manifest["accounting"]
        assert (len([f for f in manifest["files"] if f["kind"] == "data"]) > 1) == (shard_mb < 1)
        step = {s["name"]: s for s in manifest["steps"]}["line_dedup"]
        assert step["in"] == len(rows) and step["rejected_by_reason"] == {"line_dedup:empty": 2}
        assert step["counters"] == {k: sum(o.counters[k] for o in expected_out) for k in expected_out[0].counters}
        report = manifest["step_reports"]["line_dedup"]
        assert [(t["documents"], t["text"]) for t in report["top"]] == [(18, NAV), (16, SHARE)]
        data = store.read_table(f"v-{shard_mb}", columns=["id", "text", ANNOTATION])
        assert dict(zip(data.column("id").to_pylist(), data.column("text").to_pylist())) == expected
        rejects = store.read_table(f"v-{shard_mb}", "rejects")
        assert sorted(rejects.column("id").to_pylist()) == ["b3", "c2"]


@pytest.mark.parametrize("unit", ["line", "paragraph"])
def test_unmodified_documents_are_byte_identical(tmp_path, unit):
    rows = [("u0", "\n\n  indented start\n\nmiddle  \n\n\nend\n\n"), ("u1", "x\r\n\r\ny"), ("u2", ""), ("u3", "   ")]
    others = [(f"v{k}", f"boiler unit\n\nkeep {k}") for k in range(3)]
    outputs, _, _ = run_step(tmp_path, [table(rows + others)], unit=unit)
    texts = texts_by_id(outputs)
    assert {k: texts[k] for k, _ in rows} == dict(rows)
    assert texts["v2"] == "keep 2"  # the step did run (blank lines left at the start go)


def test_keep_first_keeps_a_unit_in_the_preferred_source_not_the_first_page_quoting_it(tmp_path):
    verse = "In the beginning God created the heaven and the earth."
    crawl = [(f"w{k}", f"{verse}\nA web page quoting it, number {k}.") for k in range(3)]
    bible = [("kjv1", f"Chapter one.\n{verse}\nAnd the earth was without form.")]
    # The crawl's shard comes first in run order; the recipe lists kjv first (as the runner passes it).
    sources = {"source": pa.array(["web_crawl"] * 3)}, {"source": pa.array(["kjv"])}
    batches = [table(crawl, **sources[0]), table(bible, **sources[1])]
    outputs, decision, _ = run_step(tmp_path, batches, prefer_sources=["kjv", "web_crawl"])
    texts = texts_by_id(outputs)
    assert texts["kjv1"] == bible[0][1]  # the chapter keeps its verse
    assert all(verse not in texts[f"w{k}"] for k in range(3))
    assert decision.summary["keep_policy"]["prefer_sources"] == ["kjv", "web_crawl"]
    # Synthetic text never keeps a unit that human text holds, by default, whatever the order.
    origins = [table(crawl, origin=pa.array(["synthetic"] * 3)), table(bible, origin=pa.array(["human"]))]
    outputs, _, _ = run_step(tmp_path, origins)
    assert texts_by_id(outputs)["kjv1"] == bible[0][1]
    # Without a preference (an empty list, no origins), the first document in run order keeps it, as before.
    outputs, _, _ = run_step(tmp_path, batches, prefer_sources=[], prefer_origins=[])
    assert texts_by_id(outputs)["w0"].startswith(verse) and verse not in texts_by_id(outputs)["kjv1"]

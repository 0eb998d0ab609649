"""Frozen eval sets (registration, immutability, tamper checks) and the decontaminate step."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl
from pydantic import ValidationError
from typer.testing import CliRunner

from curation import evalsets as E
from curation.record import conform
from curation.steps import decontaminate as D
from curation.steps.decontaminate import Decontaminate, DecontaminateParams
from curation.store import VersionStore
from flows.cli_evalsets import evalset_app

BRIDGE = ("The committee concluded that the proposed bridge across the northern estuary would cost far more "
          "than the original estimate suggested, and recommended a ferry service instead.")
ORCHARD = ("Every autumn the villagers gathered apples from the hillside orchard, pressed them in the old stone "
           "mill and stored the cider in oak barrels beneath the chapel.")
SHORT = "Photosynthesis converts light into sugar"  # 5 words


def records(texts: list[str], prefix: str = "t") -> pa.Table:
    n = len(texts)
    return conform(pa.table({
        "id": [f"{prefix}{i}" for i in range(n)], "text": texts, "source": ["web"] * n, "origin": ["human"] * n,
        "generation": pa.array([0] * n, pa.int32()), "generator": pa.array([None] * n, pa.string()),
    }))


@pytest.fixture
def store(tmp_path):
    """A store with eval sets `qa` (two passages, from JSONL with one broken line) and `short` (one 5-word item)."""
    root = tmp_path / "store"
    write_jsonl(tmp_path / "qa.jsonl", [{"id": "q1", "text": BRIDGE}, b"{not json", {"id": "q2", "text": ORCHARD}])
    write_jsonl(tmp_path / "short.jsonl", [{"text": SHORT}])
    E.register_evalset(root, "qa", [str(tmp_path / "qa.jsonl")])
    E.register_evalset(root, "short", [str(tmp_path / "short.jsonl")], source_name="tiny")
    D.clear_cache()
    yield root
    D.clear_cache()


def test_register_load_list(store, tmp_path):
    table, info = E.load_evalset(store, "qa")
    assert table.column_names == ["id", "text", "source"]
    assert table.column("id").to_pylist() == ["q1", "q2"] and table.column("text").to_pylist() == [BRIDGE, ORCHARD]
    assert info.docs == 2 and info.chars == len(BRIDGE) + len(ORCHARD)
    assert info.skipped == {"malformed_json": 1}
    assert info.fingerprint == E.content_fingerprint(table)
    files = info.sources[0]["files"]
    assert files[0]["sha256"] == E.file_sha256(str(tmp_path / "qa.jsonl")) and files[0]["docs"] == 2
    meta = json.loads((store / "evalsets" / "qa" / "evalset.json").read_text())
    assert meta["name"] == "qa" and meta["sha256"] == info.sha256 and meta["docs"] == 2
    short, _ = E.load_evalset(store, "short")
    assert short.column("source").to_pylist() == ["tiny"]
    assert [i.name for i in E.list_evalsets(store)] == ["qa", "short"]
    assert not (store / "evalsets" / ".staging").exists() or not any((store / "evalsets" / ".staging").iterdir())
    with pytest.raises(E.EvalSetNotFoundError, match="no eval set 'nope'.*qa, short"):
        E.load_evalset(store, "nope")


def test_names_are_immutable(store, tmp_path):
    with pytest.raises(E.EvalSetExistsError, match="already exists"):
        E.register_evalset(store, "qa", [str(tmp_path / "short.jsonl")])
    assert E.load_evalset(store, "qa")[0].num_rows == 2  # untouched
    with pytest.raises(E.EvalSetError, match="invalid evaluation set name"):
        E.register_evalset(store, "../x", [str(tmp_path / "short.jsonl")])
    with pytest.raises(E.EvalSetError, match="does not exist"):
        E.register_evalset(store, "missing", [str(tmp_path / "nope.jsonl")])


def test_tampering_is_detected(store):
    path = store / "evalsets" / "qa" / "data.parquet"
    table = pq.read_table(path)
    pq.write_table(table.set_column(1, "text", pa.array([BRIDGE, "changed"], pa.large_string())), path)
    with pytest.raises(E.EvalSetError, match=r"data\.parquet: sha256 .* does not match"):
        E.load_evalset(store, "qa")


def test_object_store(tmp_path):
    """Any fsspec URL: here the in-memory filesystem (the JSON is written last, as the commit marker)."""
    write_jsonl(tmp_path / "qa.jsonl", [{"id": "q1", "text": BRIDGE}])
    url = f"memory://evalsets-{tmp_path.name}"
    info = E.register_evalset(url, "qa", [str(tmp_path / "qa.jsonl")])
    assert info.path.startswith("memory://") and E.evalset_names(url) == ["qa"]
    assert E.load_evalset(url, "qa")[0].column("text").to_pylist() == [BRIDGE]
    with pytest.raises(E.EvalSetExistsError):
        E.register_evalset(url, "qa", [str(tmp_path / "qa.jsonl")])
    out = Decontaminate(evalsets=["qa"], store=url).apply(training_batch())
    assert out.rejected.column("id").to_pylist() == ["t0"]


def test_max_docs_is_a_seeded_sample_in_order(tmp_path):
    rows = [{"id": f"d{i}", "text": f"document number {i} about rivers"} for i in range(50)]
    write_jsonl(tmp_path / "many.jsonl", rows)
    a = E.register_evalset(tmp_path / "s", "a", [str(tmp_path / "many.jsonl")], max_docs=10, seed=7)
    b = E.register_evalset(tmp_path / "s", "b", [str(tmp_path / "many.jsonl")], max_docs=10, seed=7)
    assert a.docs == 10 and a.docs_available == 50 and a.fingerprint == b.fingerprint
    ids = [int(x[1:]) for x in E.load_evalset(tmp_path / "s", "a")[0].column("id").to_pylist()]
    assert ids == sorted(ids)


def test_version_source(tmp_path):
    root = tmp_path / "store"
    vs = VersionStore(root)
    st = vs.begin("v1")
    texts = [BRIDGE, ORCHARD, SHORT]
    pq.write_table(records(texts, "v"), st.sub("data", "part-0.parquet"))
    vs.publish(st, {"steps": [{"name": "ingest", "in": 3, "kept": 3, "rejected": 0, "rejected_by_reason": {}}],
                    "parents": [], "created_at": "x"})
    info = E.register_evalset(vs, "from-version", ["version:v1"])
    table, _ = E.load_evalset(vs, "from-version")
    assert table.column("text").to_pylist() == texts and table.column("source").to_pylist() == ["web"] * 3
    assert info.sources == [{"kind": "version", "name": "v1", "store": vs.url, "fingerprint": vs.manifest("v1")[
        "fingerprint"], "rows": 3, "docs": 3}]
    with pytest.raises(E.EvalSetError, match="no version 'v2'"):
        E.register_evalset(vs, "other", ["version:v2"])


# ---- the step --------------------------------------------------------------------------------------------

FILLER = "Our town council met on Tuesday to discuss parking, the library roof and next summer's festival."
COPIED_13 = "THE COMMITTEE concluded, that the proposed bridge -- across the Northern Estuary; would cost"
COPIED_12 = "the committee concluded that the proposed bridge across the northern estuary would"


def training_batch() -> pa.Table:
    return records([
        f"{FILLER} {COPIED_13} a great deal, said the paper. {FILLER}",  # 13 words from `qa`: contaminated
        f"{FILLER} {COPIED_12} perhaps be built next year. {FILLER}",  # only 12: kept
        "photosynthesis CONVERTS light, into sugar!",  # the whole short item: contaminated by `short`
        f"{FILLER} Photosynthesis converts light into sugar and oxygen in green leaves.",  # short item inside: kept
        FILLER,
    ])


def test_filter_rejects_copies(store):
    step = Decontaminate(evalsets=["qa", "short"], store=str(store))
    out = step.apply(training_batch())
    assert out.rejected.column("id").to_pylist() == ["t0", "t2"]
    assert out.rejected.column("reason").to_pylist() == ["decontaminate:ngrams=1>=1"] * 2
    assert out.rejected.column("contaminated_by").to_pylist() == ["qa", "short"]
    assert out.kept.column("id").to_pylist() == ["t1", "t3", "t4"]
    assert out.kept.column("contamination_ngrams").to_pylist() == [0, 0, 0]
    assert out.kept.column("contaminated_by").to_pylist() == [None, None, None]
    assert out.kept.schema.field("contamination_ngrams").type == pa.int32()
    assert "decontaminate__ngrams" not in out.kept.column_names


def test_annotate_keeps_everything(store):
    step = Decontaminate(evalsets=["qa", "short"], store=str(store), mode="annotate")
    out = step.apply(training_batch())
    assert out.rejected.num_rows == 0 and out.kept.num_rows == 5
    assert out.kept.column("contamination_ngrams").to_pylist() == [1, 0, 1, 0, 0]
    assert out.kept.column("contaminated_by").to_pylist() == ["qa", None, "short", None, None]
    assert out.kept.column("decontaminate__ngrams").to_pylist() == [1, 0, 1, 0, 0]
    assert out.counters == {"would_reject:decontaminate:ngrams": 2}


def test_min_overlaps_counts_per_eval_document(store):
    """Three shared 13-grams with one eval document pass `min_overlaps: 3`; one with each of two do not add up."""
    fifteen = BRIDGE.split()[:15]
    one_each = " ".join(BRIDGE.split()[:13]) + " and then " + " ".join(ORCHARD.split()[:13])
    twice = f"{COPIED_13} and again {COPIED_13}"  # the same n-gram twice counts once
    batch = records([f"{FILLER} {' '.join(fifteen)} {FILLER}", f"{FILLER} {one_each} {FILLER}", twice])
    step = Decontaminate(evalsets=["qa"], store=str(store), min_overlaps=3, mode="annotate")
    assert step.apply(batch).kept.column("contamination_ngrams").to_pylist() == [3, 1, 1]
    out = Decontaminate(evalsets=["qa"], store=str(store), min_overlaps=2).apply(batch)
    assert out.rejected.column("reason").to_pylist() == ["decontaminate:ngrams=3>=2"]


def test_threshold_view_reads_the_rule_as_a_max(monkeypatch):
    from curation import steps
    from curation.thresholds import retention

    monkeypatch.setitem(steps.REGISTRY, "decontaminate", Decontaminate)
    view = retention(np.array([0, 0, 1, 3], float), np.array([10, 10, 10, 10]), "decontaminate", "ngrams",
                     params={"evalsets": ["qa"], "min_overlaps": 2})
    assert view.current == {"max": 2} and view.ops == {"max": "<"} and view.kept_at_current == (0.75, 0.75)


def test_chunking_and_set_order(store, monkeypatch):
    expected = Decontaminate(evalsets=["qa", "short"], store=str(store), mode="annotate").apply(training_batch())
    monkeypatch.setattr(D, "CHUNK_DOCS", 2)
    D.clear_cache()
    chunked = Decontaminate(evalsets=["qa", "short"], store=str(store), mode="annotate").apply(training_batch())
    assert chunked.kept.equals(expected.kept)
    # The same text in two sets: the first listed set is named.
    E.register_evalset(store, "qa-copy", [str(store.parent / "qa.jsonl")])
    out = Decontaminate(evalsets=["qa-copy", "qa"], store=str(store)).apply(training_batch())
    assert out.rejected.column("contaminated_by").to_pylist() == ["qa-copy"]


def test_step_pickles_small_and_needs_a_store(store):
    step = Decontaminate(evalsets=["qa", "short"], store=str(store))
    step.apply(training_batch())  # builds the per-process index
    blob = pickle.dumps(step)
    assert len(blob) < 2_000
    again = pickle.loads(blob)
    assert again.apply(training_batch()).rejected.column("id").to_pylist() == ["t0", "t2"]
    with pytest.raises(E.EvalSetError, match="no `store` given"):
        Decontaminate(evalsets=["qa"]).apply(training_batch())
    with pytest.raises(E.EvalSetNotFoundError, match="no eval set 'nope'"):
        Decontaminate(evalsets=["nope"], store=str(store)).apply(training_batch())
    with pytest.raises(ValidationError):
        DecontaminateParams(evalsets=[])
    with pytest.raises(ValidationError, match="listed twice"):
        DecontaminateParams(evalsets=["qa", "qa"])
    with pytest.raises(ValidationError):
        DecontaminateParams(evalsets=["qa"], ngram_size=13)  # unknown key


def test_tampered_set_fails_the_step(store):
    path = store / "evalsets" / "qa" / "data.parquet"
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(E.EvalSetError, match="does not match"):
        Decontaminate(evalsets=["qa"], store=str(store)).apply(training_batch())


def test_words_and_hashes_are_stable():
    assert D.words(["Hello", ",", "World's", "--", "_", "...", "os.path", "'s"]) == ["hello", "world's", "os.path",
                                                                                      "'s"]
    hashes, rows = D.doc_ngrams(["a b c d", "A, b; C d!", "x"], 3)
    assert rows.tolist() == [0, 0, 1, 1, 2]
    assert hashes[:2].tolist() == hashes[2:4].tolist()
    # Known values: a change here silently breaks matching against indexes built elsewhere.
    assert D.sequence_hash([1, 2]) == (0x9E3779B97F4A7C15 + 2) % 2**64
    short, _ = D.doc_ngrams(["one two"], 13)
    full, _ = D.doc_ngrams(["one two"], 2)
    assert short.tolist() == full.tolist()  # a short document's hash is its whole-sequence n-gram
    empty, _ = D.doc_ngrams(["", "-- ..."], 13)
    assert empty.size == 0 and isinstance(empty, np.ndarray)


# ---- CLI -------------------------------------------------------------------------------------------------


def test_cli_register_and_list(tmp_path):
    write_jsonl(tmp_path / "qa.jsonl", [{"id": "q1", "text": BRIDGE}, {"id": "q2", "text": ORCHARD}])
    root = tmp_path / "store"
    runner = CliRunner()
    result = runner.invoke(evalset_app, ["register", "qa", str(tmp_path / "qa.jsonl"), "--store", str(root)])
    assert result.exit_code == 0, result.output
    info = E.read_info(root, "qa")
    for text in ("2 docs", f"{info.chars:,} chars", info.fingerprint, "data.parquet"):
        assert text in result.output
    result = runner.invoke(evalset_app, ["register", "one", str(tmp_path / "qa.jsonl"), "--max-docs", "1",
                                         "--seed", "3"], env={"CURATE_STORE": str(root)})
    assert result.exit_code == 0 and "1 docs (sampled from 2, seed 3)" in result.output
    result = runner.invoke(evalset_app, ["list", "--store", str(root)])
    assert result.exit_code == 0 and "qa" in result.output and "one" in result.output
    result = runner.invoke(evalset_app, ["register", "qa", str(tmp_path / "qa.jsonl"), "--store", str(root)])
    assert result.exit_code == 2 and "already exists" in result.output
    result = runner.invoke(evalset_app, ["list", "--store", str(tmp_path / "empty")])
    assert result.exit_code == 0 and "no eval sets" in result.output

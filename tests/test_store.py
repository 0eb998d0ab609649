"""The version store: immutable, atomic, accounted versions that Hugging Face `datasets` reads."""

from __future__ import annotations

import json

import datasets
import pyarrow.parquet as pq
import pytest
from conftest import doc, write_jsonl

from curation import store as store_module
from curation.recipe import parse_recipe
from curation.store import AccountingError, StoreError, VersionExistsError, VersionNotFoundError, VersionStore
from flows.curate import run_curation


def recipe_for(tmp_path, rows, shard_mb=64.0, steps=None):
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    return parse_recipe({"inputs": [{"path": str(path), "source": "web"}],
                         "steps": steps if steps is not None else [{"step": "normalize"},
                                                                    {"step": "length_filter", "min_chars": 30}],
                         "shard_size_mb": shard_mb})


ROWS = [{"id": f"d{i}", "text": doc(i)} for i in range(30)] + [{"id": "short", "text": "too short"}]


def test_publish_list_show_and_load_with_datasets(tmp_path, prefect_harness):
    recipe = recipe_for(tmp_path, ROWS)
    manifest = run_curation(recipe, str(tmp_path / "store"), "v1", workers=1)
    store = VersionStore(tmp_path / "store")
    assert store.names() == ["v1"]
    assert manifest["rows"] == 30 and manifest["rejected_rows"] == 1
    assert manifest["accounting"]["ok"] and manifest["accounting"]["records_in"] == 31
    steps = {s["name"]: s for s in manifest["steps"]}
    assert steps["length_filter"]["rejected_by_reason"] == {"length_filter:chars": 1}
    assert manifest["recipe_hash"] == recipe.content_hash()
    # Checksums in the manifest match the files on disk.
    for entry in manifest["files"]:
        path = f"{store.version_path('v1')}/{entry['path']}"
        assert store_module.file_sha256(path, store.fs) == entry["sha256"]
        if entry["kind"] in ("data", "rejects"):
            assert pq.read_metadata(path).num_rows == entry["rows"]
    assert {f["path"] for f in manifest["files"] if f["kind"] == "report"} == {
        "stats.json", "stats_model.npz", "report.html", "report.json"}
    ds = datasets.load_dataset("parquet", data_files=store.files("v1"), split="train")
    assert ds.num_rows == 30 and set(ds.column_names) >= {"id", "text", "source", "origin", "generation"}
    assert store.load("v1", "rejects")["reason"] == ["length_filter:chars=9<30"]
    # Versions are immutable: the same name again is refused before any work.
    with pytest.raises(VersionExistsError, match="'v1' already exists"):
        run_curation(recipe, str(tmp_path / "store"), "v1", workers=1)
    with pytest.raises(VersionNotFoundError, match="no version 'v9'.*versions: v1"):
        store.manifest("v9")


def test_fingerprint_depends_on_content_not_on_sharding(tmp_path, prefect_harness):
    one = run_curation(recipe_for(tmp_path, ROWS), str(tmp_path / "s"), "one", workers=1)
    many = run_curation(recipe_for(tmp_path, ROWS, shard_mb=0.001), str(tmp_path / "s"), "many", workers=1)
    assert len([f for f in many["files"] if f["kind"] == "data"]) > 3
    assert one["fingerprint"] == many["fingerprint"]
    edited = ROWS[:-2] + [{"id": "d28", "text": doc(28) + " changed"}, ROWS[-1]]
    other = run_curation(recipe_for(tmp_path, edited), str(tmp_path / "s"), "other", workers=1)
    assert other["fingerprint"] != one["fingerprint"]


def test_shards_with_different_extra_columns_read_as_one_table(tmp_path, prefect_harness):
    rows = [{"id": f"a{i}", "text": doc(i), "score": i} for i in range(20)]
    rows += [{"id": f"b{i}", "text": doc(i + 50), "score": f"high-{i}", "tag": "x"} for i in range(20)]
    manifest = run_curation(recipe_for(tmp_path, rows, shard_mb=0.002, steps=[]), str(tmp_path / "s"), "mixed",
                            workers=1)
    ds = VersionStore(tmp_path / "s").load("mixed")
    assert ds.num_rows == 40 == manifest["rows"]
    assert ds["score"][0] == "0" and ds["score"][-1] == "high-19"  # conflicting types kept as text
    assert ds["tag"][0] is None and ds["tag"][-1] == "x"


def test_crash_during_publish_publishes_nothing(tmp_path, prefect_harness, monkeypatch):
    recipe = recipe_for(tmp_path, ROWS)

    def crash(*args):
        raise OSError("simulated crash while renaming")

    monkeypatch.setattr(store_module.os, "rename", crash)
    with pytest.raises(OSError, match="simulated crash"):
        run_curation(recipe, str(tmp_path / "store"), "v1", workers=1)
    store = VersionStore(tmp_path / "store")
    assert store.names() == [] and not store.exists("v1")
    left = sorted(p.name for p in (tmp_path / "store" / ".staging").iterdir())
    assert len(left) == 1 and left[0].startswith("v1.")  # the run's own work, kept to resume; the lock is released
    monkeypatch.undo()
    assert run_curation(recipe, str(tmp_path / "store"), "v1", workers=1)["rows"] == 30
    assert list((tmp_path / "store" / ".staging").iterdir()) == []  # published: nothing left behind


def test_accounting_mismatch_refuses_to_publish(tmp_path):
    store = VersionStore(tmp_path / "store")
    staging = store.begin("bad")
    manifest = {"steps": [{"name": "ingest", "in": 10, "kept": 9, "rejected": 0, "rejected_by_reason": {}}],
                "parents": [], "created_at": "now"}
    with pytest.raises(AccountingError, match="ingest: in 10 != kept 9 \\+ rejected 0"):
        store.publish(staging, manifest)
    assert store.names() == []


def test_fsspec_url_store(tmp_path, prefect_harness):
    url = "memory://curate-test-store"
    manifest = run_curation(recipe_for(tmp_path, ROWS), url, "remote", workers=1)
    store = VersionStore(url)
    assert store.names() == ["remote"] and manifest["path"].startswith("memory://")
    assert store.read_table("remote").num_rows == 30
    with store.fs.open(f"{store.version_path('remote')}/manifest.json") as handle:
        assert json.load(handle)["fingerprint"] == manifest["fingerprint"]


def test_bad_version_names_are_refused(tmp_path):
    with pytest.raises(StoreError, match="invalid version name"):
        VersionStore(tmp_path).begin("../escape")


def test_flow_publishes_prefect_artifacts(tmp_path, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    run_curation(recipe_for(tmp_path, ROWS), str(tmp_path / "store"), "art", workers=1)
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["curate-art-steps", "curate-art-summary"])))
    by_key = {a.key: a for a in found}
    assert set(by_key) == {"curate-art-steps", "curate-art-summary"}
    assert "length_filter" in str(by_key["curate-art-steps"].data)
    assert "Version `art`" in by_key["curate-art-summary"].data and "accounting ok" in by_key["curate-art-summary"].data

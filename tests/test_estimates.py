"""The run's estimate: close to what a run really reads, and recorded next to what it used."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import doc, write_jsonl
from typer.testing import CliRunner

from curation import pipeline
from curation.pipeline import estimate, plan_ingest
from curation.recipe import parse_recipe
from curation.store import VersionStore, content_fingerprint
from flows.cli import app
from flows.curate import run_curation

TOLERANCE = 0.25  # the estimate's promise: within 25 % of what the run reads


def _mixed_input(folder) -> tuple[int, int]:
    """Files whose documents differ in size (short first, as a crawl's small files often sort first), in three
    formats; returns the documents and their text bytes."""
    folder.mkdir()
    short = [{"id": f"s{i}", "text": doc(i, words=15)} for i in range(3000)]
    long = [{"id": f"l{i}", "text": doc(i, words=1500)} for i in range(300)]  # ~2.5 MB: more than one sample
    medium = [{"id": f"m{i}", "text": doc(i, words=150)} for i in range(800)]
    write_jsonl(folder / "a-short.jsonl", short)
    write_jsonl(folder / "b-long.jsonl", long)
    with gzip.open(folder / "c-medium.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in medium)
    table = pa.table({"id": [f"p{i}" for i in range(500)], "text": [doc(i, words=400) for i in range(500)]})
    pq.write_table(table, folder / "d-long.parquet")
    texts = [r["text"] for r in short + long + medium] + table.column("text").to_pylist()
    return len(texts), sum(len(t.encode()) for t in texts)


def test_documents_estimate_holds_when_files_differ_in_document_size(tmp_path):
    documents, text_bytes = _mixed_input(tmp_path / "in")
    recipe = parse_recipe({"inputs": [{"path": str(tmp_path / "in"), "source": "web"}],
                           "steps": [{"step": "length_filter", "min_chars": 30}]})
    forecast = estimate(recipe, plan_ingest(recipe))
    assert abs(forecast.documents / documents - 1) <= TOLERANCE, (forecast.documents, documents)
    assert abs(forecast.text_bytes / text_bytes - 1) <= TOLERANCE, (forecast.text_bytes, text_bytes)


def _recipe(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"id": f"d{i}", "text": doc(i, words=60 + i % 40)} for i in range(400)])
    return parse_recipe({"inputs": [{"path": str(path), "source": "web"}],
                         "steps": [{"step": "length_filter", "min_chars": 30}, {"step": "exact_dedup"},
                                   {"step": "minhash_dedup", "threshold": 0.8}]})


def test_manifest_holds_estimate_and_actual_and_the_fingerprint_ignores_them(tmp_path, prefect_harness, monkeypatch):
    store = str(tmp_path / "store")
    manifest = run_curation(_recipe(tmp_path), store, "v1", workers=1)
    assert set(manifest["estimate"]) == {"documents", "text_bytes", "worker_memory_bytes", "dedup_memory_bytes",
                                         "disk_bytes"}
    actual = manifest["actual"]
    assert actual["documents"] == 400
    assert actual["text_bytes"] == sum(len(doc(i, words=60 + i % 40).encode()) for i in range(400))
    assert actual["worker_peak_rss_bytes"] > 0 and actual["flow_peak_rss_bytes"] > 0 and actual["disk_peak_bytes"] > 0
    assert manifest["estimate_ratio"]["documents"] == round(manifest["estimate"]["documents"] / 400, 3)

    target = VersionStore(store)
    assert manifest["fingerprint"] == content_fingerprint(target.fs, target.files("v1"))
    monkeypatch.setattr(pipeline, "WORKER_BASE_BYTES", 7e9)  # another estimate, the same data
    other = run_curation(_recipe(tmp_path), store, "v2", workers=1)
    assert other["estimate"]["worker_memory_bytes"] != manifest["estimate"]["worker_memory_bytes"]
    assert other["fingerprint"] == manifest["fingerprint"]

    shown = CliRunner().invoke(app, ["show", "v1", "--store", store], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "estimate vs actual: documents" in shown.output


def test_a_process_pool_is_no_larger_than_the_tasks_that_can_run_at_once(tmp_path):
    write_jsonl(tmp_path / "small.jsonl", [{"id": f"s{i}", "text": doc(i)} for i in range(10)])
    for part in range(3):
        write_jsonl(tmp_path / f"part-{part}.jsonl", [{"id": f"p{part}-{i}", "text": doc(i)} for i in range(10)])

    def pool(inputs: list[str], workers: int, **recipe) -> int:
        sized = pipeline.sized_for(parse_recipe({"inputs": [{"path": p} for p in inputs], **recipe}, tmp_path))
        plan = plan_ingest(sized)
        return pipeline.pool_size(workers, sized, plan, estimate(sized, plan))

    assert pool(["small.jsonl"], 8) == 1  # one ingest task, one shard: the tasks run in the command's process
    assert pool([f"part-{part}.jsonl" for part in range(3)], 8) == 3  # three ingest tasks
    assert pool([f"part-{part}.jsonl" for part in range(3)], 2) == 2  # never more than asked for
    # Shards of 200 bytes: the forecast's text bytes (~3 KB) make several shards of one file.
    assert pool(["small.jsonl"], 4, shard_size_mb=0.0002) == 4

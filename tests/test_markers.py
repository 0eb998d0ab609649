"""Resume markers are data: a planted or corrupt marker makes its task run again, never runs code."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pytest
from conftest import write_jsonl

from curation import markers
from curation.pipeline import IngestResult, IngestUnit, ShardResult, finished, ingest_unit, mark_finished, marker_path
from curation.recipe import Recipe
from curation.steps.line_dedup import LineDedupSummary


class _Payload:
    """A pickle that creates a file when it is loaded: what an attacker would plant."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def _staged_ingest(tmp_path: Path) -> tuple[Recipe, IngestUnit, str, str]:
    data = write_jsonl(tmp_path / "in.jsonl", [{"id": f"d{i}", "text": f"document number {i} has words"}
                                               for i in range(5)])
    recipe = Recipe.model_validate({"inputs": [{"path": str(data)}], "steps": []})
    staging = tmp_path / "store" / ".staging" / "v.key"
    for folder in ("work", "rejects", "data"):  # as VersionStore.begin lays a staging folder out
        (staging / folder).mkdir(parents=True)
    return recipe, IngestUnit(0, 0, (str(data),), data.stat().st_size), str(tmp_path / "store"), str(staging)


def test_a_round_trip_keeps_every_value_a_global_step_collects():
    ids = np.array(["a", "b", "c"], dtype=object)
    result = ShardResult(
        "raw-00000-00000.parquet", {"exact_dedup": {"in": 3, "kept": 2, "rejected": 1,
                                                    "rejected_by_reason": {"exact_dedup:duplicate_of": 1},
                                                    "counters": {"n": np.int64(4)}}},
        2, 1, "round-01.parquet",
        {"id": ids, "length": np.array([1, 2, 3], np.int64), "band": np.arange(12, dtype=np.uint64).reshape(3, 4),
         "quality": np.zeros(3, np.float32), "pairs": [(0, 1)], "summary": LineDedupSummary(
             np.array([5, 9], np.uint64), np.array([0, 1, 2], np.int64), pa.array(["a", "b"]))})
    back = markers.decode(markers.encode(result, "k"), "k", ShardResult)
    assert back.steps == result.steps and back.rows_out == 2 and back.output == "round-01.parquet"
    collected = back.collected
    assert collected["id"].dtype == object and list(collected["id"]) == ["a", "b", "c"]
    assert collected["band"].dtype == np.uint64 and np.array_equal(collected["band"], result.collected["band"])
    assert collected["quality"].dtype == np.float32 and collected["pairs"] == [(0, 1)]
    summary = collected["summary"]
    assert isinstance(summary, LineDedupSummary) and summary.ids.to_pylist() == ["a", "b"]
    assert np.array_equal(summary.offsets, [0, 1, 2])


def test_values_a_marker_cannot_hold_are_refused_when_writing():
    with pytest.raises(markers.MarkerError, match="cannot be stored"):
        markers.encode(ShardResult("s", {}, 0, collected=object()), "k")
    with pytest.raises(markers.MarkerError, match="object array"):
        markers.encode(ShardResult("s", {}, 0, collected=np.array([{"a": 1}], dtype=object)), "k")


@pytest.mark.parametrize("planted", ["pickle", "garbage", "other_task", "other_type"])
def test_a_planted_or_corrupt_marker_is_ignored_and_the_task_redone(tmp_path, planted):
    recipe, unit, store, staging = _staged_ingest(tmp_path)
    first = ingest_unit(recipe, unit, store, staging)
    assert not first.resumed
    fs = fsspec.filesystem("file")
    key = "ingest-00000"
    assert finished(fs, staging, key, IngestResult).resumed  # a sound marker is reused
    evidence = tmp_path / "pwned"
    content = {"pickle": pickle.dumps(_Payload(str(evidence))),
               "garbage": b"\x00not an arrow file",
               "other_task": markers.encode(first, "ingest-00001"),
               "other_type": markers.encode(ShardResult("s", {}, 0), key)}[planted]
    Path(marker_path(staging, key)).write_bytes(content)
    with pytest.warns(markers.MarkerWarning, match="done again"):
        again = ingest_unit(recipe, unit, store, staging)
    assert not evidence.exists()
    assert not again.resumed and again.records == first.records == 5
    assert finished(fs, staging, key, IngestResult).records == 5  # rewritten as a sound marker


def test_markers_are_written_atomically_under_their_own_name(tmp_path):
    fs = fsspec.filesystem("file")
    staging = str(tmp_path / "staging")
    mark_finished(fs, staging, "ingest-00003", IngestResult(3, ["a.parquet"], 4, 4, {}, 10))
    done = sorted(os.listdir(Path(marker_path(staging, "x")).parent))
    assert done == ["ingest-00003.arrow"]
    assert finished(fs, staging, "ingest-00003", IngestResult).shards == ["a.parquet"]

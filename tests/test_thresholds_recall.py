"""Threshold retention from annotated versions, and the planted-defect recall report."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from conftest import doc, write_jsonl
from typer.testing import CliRunner

from curation.recall import planted_defect_report
from curation.recipe import parse_recipe
from curation.store import VersionStore
from curation.thresholds import recipe_params, retention, rule_retention
from flows.cli import app
from flows.curate import run_curation

ROWS = [{"id": f"d{i}", "text": doc(i, words=5 + 7 * i)} for i in range(30)]


def _run(tmp_path, name, mode):
    path = write_jsonl(tmp_path / "in.jsonl", ROWS)
    recipe = parse_recipe({"inputs": [{"path": str(path)}],
                           "steps": [{"step": "length_filter", "min_words": 60, "max_chars": None, "min_chars": None,
                                      "mode": mode}]})
    return run_curation(recipe, str(tmp_path / "store"), name, workers=1)


def test_retention_at_current_bounds_matches_what_filter_mode_keeps(tmp_path, prefect_harness):
    annotated = _run(tmp_path, "annotated", "annotate")
    filtered = _run(tmp_path, "filtered", "filter")
    assert annotated["rows"] == 30 and filtered["rows"] < 30
    table = VersionStore(tmp_path / "store").read_table("annotated")
    params = recipe_params(VersionStore(tmp_path / "store").manifest("annotated")["recipe"], "length_filter")
    (words,) = rule_retention(table, "length_filter", ["words"], params)
    assert words.current == {"min": 60}
    assert words.kept_at_current[0] == pytest.approx(filtered["rows"] / 30)
    assert words.docs == 30 and words.quantiles[50] == pytest.approx(np.median(table["length_filter__words"]))
    runner = CliRunner()
    result = runner.invoke(app, ["thresholds", "annotated", "length_filter", "--signal", "words",
                                 "--store", str(tmp_path / "store"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["kept_at_current"][0] == pytest.approx(filtered["rows"] / 30)
    missing = runner.invoke(app, ["thresholds", "filtered", "gopher_quality", "--store", str(tmp_path / "store")])
    assert missing.exit_code == 2 and "run the step with `mode: annotate`" in " ".join(missing.output.split())


def test_retention_curve_is_monotone_and_suggests_cuts():
    rng = np.random.default_rng(0)
    values = rng.normal(10, 2, 1000)
    tokens = rng.integers(50, 500, 1000)
    curve = retention(values, tokens, "gopher_quality", "mean_word_length")
    as_min = [row["docs_kept_as_min"] for row in curve.rows]
    assert as_min == sorted(as_min, reverse=True) and as_min[0] == 1.0
    assert curve.current == {"min": 3, "max": 10}
    assert curve.suggestions["mean - 2 sd"] == pytest.approx(10 - 4, abs=0.3)
    assert curve.kept_at_current[0] == pytest.approx(((values >= 3) & (values <= 10)).mean())


def test_planted_defect_report_counts_catches_and_false_positives():
    labels = [{"id": "spam1", "defect": "keyword_spam", "file": "web.jsonl", "line": 1},
              {"id": "spam2", "defect": "keyword_spam", "file": "web.jsonl", "line": 2},
              {"id": None, "defect": "malformed_json", "file": "web.jsonl", "line": 3},
              {"id": "c1", "defect": "duplicate_id", "file": "web.jsonl", "line": 5}]
    data = pa.table({"id": ["spam2", "c1", "c2"], "source": ["web", "web", "web"]})
    rejects = pa.table({"id": ["spam1", None, "c1", "c3"], "source": ["web"] * 4,
                        "step": ["gopher_repetition", "ingest", "ingest", "c4_quality"],
                        "source_file": ["/x/web.jsonl"] * 4, "source_line": [1, 3, 5, 6]})
    report = planted_defect_report(labels, data, rejects)
    assert report["classes"]["keyword_spam"] == {"planted": 2, "caught": 1, "by_step": {"gopher_repetition": 1},
                                                 "kept": 1, "recall": 0.5}
    assert report["classes"]["malformed_json"]["by_step"] == {"ingest": 1}
    assert report["classes"]["duplicate_id"]["caught"] == 1
    # clean: c1 and c2 kept, c3 rejected by c4 (the duplicate-id reject of c1 is not a false positive)
    assert report["clean"]["docs"] == 3 and report["clean"]["by_step"] == {"c4_quality": 1}

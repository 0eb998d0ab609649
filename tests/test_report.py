"""HTML reports: sections, embedded plots, escaping, the JSON twin, atomic writing, and a headless browser."""

from __future__ import annotations

import ast
import base64
import json
import re
import subprocess
from pathlib import Path

import fsspec
import pytest
from conftest import chromium

from curation.report import SECTION_TITLES, diff_report, removed_examples, version_report
from curation.reportkit import write_report

PNG = b"\x89PNG\r\n\x1a\n"
SCRIPT = "<script>alert('x')</script>"


def _step(name, n_in, reasons=None, counters=None):
    reasons = reasons or {}
    rejected = sum(reasons.values())
    return {"name": name, "in": n_in, "kept": n_in - rejected, "rejected": rejected,
            "rejected_by_reason": reasons, "counters": counters or {}}


def _guard_report() -> dict:
    """A real guard report of a small half-synthetic mix (no reference set)."""
    import pyarrow as pa

    from curation.guards import GuardConfig, compute_guards

    table = pa.table({"id": ["a", "b", "c"], "text": ["human words here", "more human words", "model words"],
                      "source": ["web", "web", "synth"], "origin": ["human", "human", "synthetic"],
                      "generation": pa.array([0, 0, 2], pa.int32())})
    return compute_guards([table], GuardConfig(max_synthetic_fraction=0.2))


def make_manifest() -> dict:
    steps = [_step("ingest", 2178, {"malformed_json": 5, "duplicate_id": 3, "empty_text": 3, "invalid_utf8": 3,
                                    "missing_field": 3, "non_string_text": 3, "nul_byte": 3})]
    for name, reasons, counters in [
        ("normalize", {}, {"modified": 373}),
        ("length_filter", {"length_filter:chars": 66}, {}),
        ("language_filter", {"language_filter:lang": 100, "language_filter:lang_score": 44}, {}),
        ("gopher_quality", {"gopher_quality:alpha_words": 250, "gopher_quality:words": 2}, {}),
        ("pii_redact", {}, {"modified": 49, "redacted:email": 95}),
        ("exact_dedup", {"exact_dedup:duplicate_of": 123}, {}),
        ("minhash_dedup", {"minhash_dedup:jaccard": 147}, {}),
        ("line_dedup", {}, {"units_removed": 12, "docs_modified": 9, "chars_removed": 1800}),
    ]:
        steps.append(_step(name, steps[-1]["kept"], reasons, counters))
    kept = steps[-1]["kept"]
    rejected = sum(s["rejected"] for s in steps)
    member = {"id": "web:280", "kept": False, "jaccard": 0.9683908045977011,
              "text": f"Call <PHONE> for details. {SCRIPT} And of all my sons, (for the LORD hath given me many sons"}
    return {
        "name": "demo", "created_at": "2026-11-26T01:23:43+00:00", "parents": ["raw-v0"],
        "tool": {"name": "curate", "version": "0.1.0"},
        "recipe": {"name": "demo", "description": "Built-in demo corpus."},
        "recipe_hash": "581e0bf3d957bdc7bc71cb3da5bf229d54e7edbcd5fbbcc848f0dcced07f7fcb",
        "fingerprint": "227ddeb662abb84e4a8a75563793ecafb14de293b784521979fb057ad92a50f9",
        "steps": steps, "rows": kept, "rejected_rows": rejected, "run_seconds": 13.481,
        "size": {"rows": kept, "chars": 3156733, "bytes": 3156790,
                 "by_source": {"kjv": {"rows": 644, "chars": 1876720, "bytes": 1876720}}},
        "accounting": {"ok": True, "failures": [], "records_in": 2178, "records_kept": kept,
                       "records_rejected": rejected},
        "guards": _guard_report(),
        "guard_override": {"reason": "known <synthetic> mix", "overridden": ["synthetic_fraction"]},
        "planted_defects": {
            "labels": "labels.jsonl",
            "classes": {
                "near_dup": {"planted": 150, "caught": 108, "kept": 42, "recall": 0.72,
                             "by_step": {"minhash_dedup": 71, "gopher_quality": 17, "exact_dedup": 2}},
                "too_short": {"planted": 60, "caught": 60, "kept": 0, "recall": 1.0, "by_step": {"length_filter": 60}},
            },
            "clean": {"docs": 1417, "rejected": 364, "false_positive_rate": 0.25688073394495414,
                      "by_step": {"gopher_quality": 146, "gopher_repetition": 109},
                      "by_source": {"kjv": {"docs": 724, "rejected": {"gopher_quality": 5}}}},
        },
        "step_reports": {
            "exact_dedup": {"cluster_sizes": {"2": 120, "3": 1}, "documents": 1394, "against": [], "removed": 123,
                            "removed_matching_earlier_versions": 0,
                            "examples": [{"cluster": "kjv:1-chronicles:14", "size": 2, "members": [
                                {"id": "kjv:1-chronicles:14", "kept": True, "text": "And Ibhar, and Elishua"},
                                {"id": "web:995", "kept": False, "jaccard": 1.0, "text": "And Ibhar, and Elishua"}]}]},
            "minhash_dedup": {"cluster_sizes": {"2": 140, "4": 2}, "documents": 1271, "against": [], "threshold": 0.8,
                              "num_perm": 128, "shingle_words": 5, "bands": 18, "rows": 7,
                              "s_curve": {"0.5": 0.1317, "0.6": 0.4001, "0.7": 0.7871, "0.8": 0.9855, "0.9": 1.0},
                              "index_bytes_per_doc": 144, "candidate_pairs": 186, "verified_pairs": 147,
                              "rejected_by_verification": 39, "removed": 147, "removed_matching_earlier_versions": 0,
                              "examples": [{"cluster": "kjv:1-chronicles:28", "size": 2, "members": [
                                  {"id": "kjv:1-chronicles:28", "kept": True,
                                   "text": "And of all my sons, (for the LORD hath given me many sons"}, member]}]},
            "line_dedup": {"unit": "paragraph", "min_docs": 3, "min_chars": 30, "documents": 1124,
                           "boilerplate_units": 2, "boilerplate_occurrences": 12, "documents_with_boilerplate": 9,
                           "top": [{"hash": "00ff", "documents": 7, "text": "Subscribe to our <b>newsletter</b>!"}]},
        },
    }


def make_stats() -> dict:
    edges = [10 * 2 ** (i / 2) for i in range(25)]
    return {
        "schema": 1,
        "sample": {"size": 2000, "seed": 7, "words_per_doc": 200},
        "size": {"docs": 1124, "chars": 3156733, "words": 560000, "tokens": None,
                 "by_source": {"kjv": {"docs": 644, "chars": 1876720, "words": 350000},
                               "web_crawl": {"docs": 449, "chars": 1256248, "words": 205000},
                               "stdlib<docs>": {"docs": 31, "chars": 23765, "words": 5000}},
                 "by_lang": {"en": {"docs": 1120, "chars": 3150000}, "de": {"docs": 4, "chars": 6733}}},
        "length": {"unit": "chars", "quantiles": {"0": 201, "50": 2600, "100": 48000},
                   "histogram": {"edges": edges, "counts": [max(0, 120 - abs(i - 12) * 10) for i in range(24)]}},
        "distributions": {
            "quality_score": {"quantiles": {"5": 0.31, "50": 0.8, "95": 0.99},
                              "histogram": {"edges": [i / 20 for i in range(21)], "counts": list(range(20))}},
            "lang_score": {"quantiles": {"50": 0.99}, "histogram": {"edges": [0.6 + i / 50 for i in range(21)],
                                                                    "counts": [i * i for i in range(20)]}},
            "dup_cluster_size": {"1": 1000, "2": 124},
        },
        "lexical": {"distinct_1": 0.123, "distinct_2": 0.52, "distinct_3": 0.81, "distinct_4": 0.93,
                    "unigram_entropy": 9.87, "mattr": 0.71, "mattr_window": 50, "compression_ratio": 2.95,
                    "near_dup_density": 0.004},
        "unigrams": {"total": 560000, "top": {"the": 40000, "and": 35000, "of": 20000}},
        "semantic": {"method": "tfidf-svd", "features": 2 ** 18, "dims": 64, "k": 3, "seed": 0,
                     "clusters": [{"id": 0, "size": 600, "share": 0.5338, "top_terms": ["lord", "israel", "king"]},
                                  {"id": 1, "size": 400, "share": 0.3559, "top_terms": ["module", "return", "<tag>"]},
                                  {"id": 2, "size": 124, "share": 0.1103, "top_terms": ["$x$", "price", "cookie"]}],
                     "cluster_entropy": 0.96, "vendi_score": 11.4, "vendi_sample": 500},
        "coverage": {"reference": "demo-0", "covered_share": 0.94, "covered": [0, 1],
                     "lost": [{"id": 5, "share_in_reference": 0.06, "top_terms": ["lorem", "ipsum"]}]},
        "instructions": {"docs": 40, "task_types": {"write poem": 12, "explain code": 9}, "distinct_task_types": 2,
                         "input_chars": {"quantiles": {"50": 120}}, "output_chars": {"quantiles": {"50": 800}}},
    }


def make_examples() -> dict:
    return {"gopher_quality:alpha_words": [{"id": "stdlib:ast", "text": f">>> ast.parse('x') {SCRIPT}"}],
            "length_filter:chars": [{"id": "web:1", "text": "too short & small"}]}


def png_images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_version_report_sections_plots_escaping_and_twin():
    manifest, stats = make_manifest(), make_stats()
    page, twin = version_report(manifest, stats, examples=make_examples())
    for title in SECTION_TITLES.values():
        assert f">{title}</h2>" in page, title
    for heading in ("Duplicate rate by kind", "Length", "Scores", "Lexical diversity", "Semantic clusters",
                    "Coverage", "Instruction task types", "By source", "By language"):
        assert f"<h3>{heading}" in page, heading
    images = png_images(page)
    assert len(images) >= 6  # funnel, cluster sizes, S-curve, length, scores, semantic clusters
    assert all(img.startswith(PNG) for img in images)
    assert twin["plots"] == ["funnel", "cluster_sizes", "s_curve:minhash_dedup", "length", "scores",
                             "semantic_clusters"]
    # no external assets, no scripts of our own
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "&lt;b&gt;newsletter&lt;/b&gt;" in page and "stdlib&lt;docs&gt;" in page and "&lt;tag&gt;" in page
    # the numbers the page shows are the twin's numbers
    assert twin["header"]["accounting"] == {k: manifest["accounting"][k] for k in
                                            ("ok", "records_in", "records_kept", "records_rejected", "failures")}
    for shown, step in zip(twin["steps"], manifest["steps"]):
        assert (shown["name"], shown["in"], shown["kept"], shown["rejected"]) == (
            step["name"], step["in"], step["kept"], step["rejected"])
        assert shown["rejected_by_reason"] == step["rejected_by_reason"]
        assert f"{step['kept']:,}" in page
    assert "accounting" in page and ">ok<" in page and "2,178 in" in page
    assert twin["planted_defects"]["classes"]["near_dup"]["recall"] == 0.72 and "72%" in page
    assert twin["guards"]["failures"] == ["synthetic_fraction", "lineage_depth"]
    assert "FAIL (hard)" in page and "known &lt;synthetic&gt; mix" in page and "generation 2: 1" in page
    assert twin["planted_defects"]["clean"]["false_positive_rate"] == pytest.approx(0.25688, abs=1e-5)
    assert "25.7% FP" in page
    assert twin["dedup"]["minhash_dedup"]["duplicate_rate"] == pytest.approx(147 / 1271)
    assert f"{147 / 1271:.1%}" in page and twin["dedup"]["minhash_dedup"]["bands"] == 18
    assert twin["dedup"]["exact_dedup"]["examples"][0]["members"] == ["kjv:1-chronicles:14", "web:995"]
    assert twin["stats"]["semantic"]["vendi_score"] == 11.4 and "11.4" in page
    assert twin["stats"]["lexical"]["distinct_1"] == 0.123 and "0.123" in page
    assert twin["removed_examples"]["gopher_quality:alpha_words"] == {"removed": 250, "ids": ["stdlib:ast"]}
    # sample-based numbers state their sample
    assert "sample of 2,000 documents, seed 7" in page and "on 500 documents" in page
    assert json.loads(json.dumps(twin, allow_nan=False)) == twin


def test_version_report_tolerates_a_bare_manifest():
    page, twin = version_report({"name": "v<1>", "steps": []}, None)
    assert "v&lt;1&gt;" in page and "no statistics" in page
    assert twin["sections"] == ["header", "funnel", "stats"] and twin["plots"] == []
    failed = make_manifest()
    failed["accounting"] = {"ok": False, "failures": ["x: in 3 != kept 1 + rejected 1"], "records_in": 3}
    page, twin = version_report(failed, {"sample": {"size": 10, "seed": 1}})
    assert "FAILED" in page and "in 3 != kept 1" in page and twin["header"]["accounting"]["ok"] is False


def test_removed_examples_keys_match_the_manifest_reasons():
    raw = b'{"id": "w:1", "text": "<i>\x00'
    rows = [{"id": str(i), "text": "t" * 900, "step": "gopher_quality", "reason": "gopher_quality:words=3<50"}
            for i in range(5)]
    rows.append({"id": None, "text": None, "step": "ingest", "reason": "malformed_json=line 1", "raw": raw,
                 "source_file": "in.jsonl", "source_line": 7})
    out = removed_examples(rows, per_reason=2, chars=100)
    assert set(out) == {"gopher_quality:words", "malformed_json"}
    assert out["malformed_json"] == [{"id": None, "text": raw.decode(), "reason": "malformed_json=line 1",
                                      "raw": True, "where": "in.jsonl:7"}]
    page, _ = version_report(make_manifest(), None, examples=out)
    assert "in.jsonl:7 — malformed_json=line 1 — raw input line" in page and "&lt;i&gt;\\x00" in page
    assert [d["id"] for d in out["gopher_quality:words"]] == ["0", "1"]
    assert len(out["gopher_quality:words"][0]["text"]) == 100


def make_diff() -> dict:
    return {
        "a": "demo", "b": "demo-2", "lineage": ["demo", "demo-2"],
        "counts": {"added": 12, "removed": 30, "changed": 4, "unchanged": 1090},
        "examples": {"added": [{"id": "web:9", "text": "new <doc>"}], "removed": [{"id": "kjv:1", "text": "gone"}],
                     "changed": [{"id": "web:3", "a": "before", "b": "after"}]},
        "removals_by_reason": [{"step": "gopher_quality", "reason": "gopher_quality:alpha_words", "count": 30,
                                "examples": [{"id": "kjv:1", "text": SCRIPT}]}],
        "stats": {"size.docs": {"a": 1124, "b": 1106, "delta": -18, "rel": -0.016},
                  "lexical.distinct_2": {"a": 0.5, "b": 0.55, "delta": 0.05, "rel": 0.1},
                  "semantic.vendi_score": {"a": 11.4, "b": 11.4, "delta": 0.0, "rel": 0.0}},
        "distances": {"unigram_js": 0.0123, "length_ks": 0.04},
    }


def test_diff_report_colours_deltas_and_tolerates_missing_keys():
    page, twin = diff_report(make_diff())
    assert '<span class="down">-18</span>' in page and '<span class="up">+0.05</span>' in page
    assert '<span class="zero">0</span>' in page and '<span class="zero">0.0%</span>' in page
    assert "&lt;script&gt;" in page and "<script>" not in page and "new &lt;doc&gt;" in page
    assert twin["counts"]["removed"] == 30 and ">30<" in page
    assert twin["stats"]["size.docs"]["direction"] == "down" and twin["distances"]["unigram_js"] == 0.0123
    assert twin["sections"] == ["header", "counts", "reasons", "examples", "stats", "distances"]
    page, twin = diff_report({})
    assert "<h2>Documents</h2>" in page and twin["sections"] == ["header", "counts"]
    page, twin = diff_report({"a": "x", "stats": {"p": {"a": 1, "b": 3}}, "counts": None, "examples": {"added": []}})
    assert twin["stats"]["p"]["delta"] == 2 and twin["stats"]["p"]["rel"] == 2.0


def test_the_report_pages_share_a_public_toolkit():
    """The version, diff and ablation reports are built with `curation.reportkit`; none reaches into another
    module's private names."""
    root = Path(__file__).resolve().parents[1]
    private = []
    for name in ("curation/report.py", "curation/reportkit.py", "training/ablation_report.py"):
        for node in ast.walk(ast.parse((root / name).read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("curation", "training"):
                private += [f"{name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert private == []


def test_write_report_is_atomic_and_roundtrips():
    fs = fsspec.filesystem("memory")
    page, twin = version_report(make_manifest(), make_stats())
    html_path, json_path = write_report(fs, "/reports/demo", page, twin)
    assert fs.cat(html_path).decode() == page
    assert json.loads(fs.cat(json_path)) == twin
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("/reports/demo", detail=False)) == ["report.html", "report.json"]


# ---- a real browser -----------------------------------------------------------------------------


def _screenshot(html_path: Path, tmp_path: Path) -> Path:
    png = tmp_path / "screenshot.png"
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
           "--window-size=1200,2000", f"--screenshot={png}", html_path.resolve().as_uri()]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert png.exists(), f"no screenshot (exit {result.returncode}): {result.stderr[-2000:]}"
    return png


def test_report_renders_in_headless_chromium(tmp_path):
    from matplotlib.image import imread

    page, _ = version_report(make_manifest(), make_stats(), examples=make_examples())
    html_path = tmp_path / "report.html"
    html_path.write_text(page, encoding="utf-8")
    pixels = imread(_screenshot(html_path, tmp_path))[..., :3]  # floats in [0, 1]
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000
    non_white = (pixels < 0.94).any(axis=-1)
    assert non_white.mean() > 0.03, "the page rendered (almost) blank"
    # the funnel plot's bars: saturated colour, not just black text on white
    saturation = pixels.max(axis=-1) - pixels.min(axis=-1)
    assert (saturation > 0.25).mean() > 0.005, "no coloured plot area in the rendered page"


# ---- the real demo --------------------------------------------------------------------------------


@pytest.mark.e2e
def test_report_of_the_real_demo_version(demo_run, tmp_path):
    store = demo_run[0]
    from curation.store import VersionStore

    target = VersionStore(str(store))
    manifest = target.manifest("demo")
    folder = Path(target.version_path("demo"))
    stats = json.loads((folder / "stats.json").read_text()) if (folder / "stats.json").exists() else None
    examples = removed_examples(target.read_table("demo", "rejects", columns=["id", "text", "step", "reason"]))
    page, twin = version_report(manifest, stats, examples=examples)
    assert len(png_images(page)) >= 3 and all(img.startswith(PNG) for img in png_images(page))
    assert [s["kept"] for s in twin["steps"]] == [s["kept"] for s in manifest["steps"]]
    assert twin["header"]["accounting"]["ok"] is True
    assert set(examples) <= {k for s in manifest["steps"] for k in s["rejected_by_reason"]}
    for key in ("header", "funnel", "examples", "planted", "dedup"):
        assert key in twin["sections"]
    write_report(fsspec.filesystem("file"), str(tmp_path / "out"), page, twin)
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == twin

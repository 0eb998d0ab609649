"""Thresholds calibrated on trusted text: each bound moves only towards keeping more, to the reference quantile
where its rule alone keeps `keep` of the reference; recorded with the configured bound and the reference."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from conftest import doc, write_jsonl

from curation.calibration import bound_text, calibrate, calibrated_bound
from curation.evalsets import register_evalset
from curation.recipe import RecipeError, parse_recipe
from curation.steps import REGISTRY, Check
from curation.store import VersionStore
from curation.thresholds import recipe_params

# Docstring-like text: prose with code, so many tokens hold no letter (Gopher's alpha-word rule drops it).
CODE = "Example:: >>> f(1, 2) == 3 # -> [1, 2] {a: 1} (x, y) 0.5 + 1 = 2 ; :: -- ** // 10 20 30"


def docstring(i: int) -> str:
    return f"{doc(i, 40)} {' '.join([CODE] * (1 + i % 4))} {doc(i + 1000, 20)}"


def _inputs(tmp_path, n: int = 60) -> list[dict]:
    docs = [{"id": f"d{i}", "text": docstring(i)} for i in range(n)]
    web = [{"id": f"w{i}", "text": docstring(500 + i) if i % 3 else "BUY NOW " * 40} for i in range(30)]
    return [{"path": str(write_jsonl(tmp_path / "docs.jsonl", docs)), "source": "docs"},
            {"path": str(write_jsonl(tmp_path / "web.jsonl", web)), "source": "web"}]


@pytest.mark.parametrize("op, bound, keep, values, expected", [
    (">=", 0.8, 0.9, np.arange(10) / 10, 0.1),  # 9 of 0.0, 0.1, ..., 0.9 are >= 0.1
    (">=", 0.8, 0.5, np.arange(10) / 10, 0.5),
    (">=", 0.1, 0.9, np.arange(10) / 10, 0.1),  # the reference already passes 0.1 at 90 %: the bound stays
    (">=", 0.05, 0.9, np.arange(10) / 10, 0.05),
    ("<=", 0.3, 0.9, np.arange(10) / 10, 0.8),
    ("<=", 0.95, 0.9, np.arange(10) / 10, 0.95),
    (">=", 50, 0.9, np.array([10, 20, 30, 40, 45, 60, 70, 80, 90, 100]), 20),  # a count stays a count
])
def test_a_bound_moves_to_the_reference_quantile_only_towards_keeping_more(op, bound, keep, values, expected):
    _, new = calibrated_bound(values.astype(float), Check("s", op, "p"), bound, keep)
    assert new == pytest.approx(expected) and type(new) is type(bound)
    assert Check("s", op, "p").keeps(values, new).mean() >= min(keep, Check("s", op, "p").keeps(values, bound).mean())


def test_a_calibrated_bound_equals_the_reference_quantile(tmp_path):
    recipe = parse_recipe({"inputs": _inputs(tmp_path), "steps": [
        {"step": "normalize"},
        {"step": "gopher_quality", "sources": ["web"], "calibrate": {"reference": "source:docs", "keep": 0.9}}]})
    calibrated, report = calibrate(recipe, str(tmp_path / "store"))
    docs = pa.table({"id": [f"d{i}" for i in range(60)], "text": [docstring(i) for i in range(60)],
                     "source": ["docs"] * 60})
    normalised = REGISTRY["normalize"]().apply(docs).kept
    alpha = REGISTRY["gopher_quality"](mode="annotate").apply(normalised).kept.column("gopher_quality__alpha_words")
    values = np.sort(alpha.to_numpy())
    expected = float(values[len(values) - 54])  # the 54th highest: 54 of 60 documents (90 %) keep it
    assert expected < 0.8  # the paper's bound would drop the reference's documents
    params = calibrated.steps[1].params
    assert params["min_alpha_words_ratio"] == pytest.approx(expected)
    entry = report["steps"]["gopher_quality"]
    line = next(c for c in entry["checks"] if c["signal"] == "alpha_words")
    assert line["configured"] == 0.8 and line["calibrated"] == pytest.approx(expected)
    assert line["quantile"] == pytest.approx(expected) and line["kept_at_calibrated"] >= 0.9
    assert entry["reference"] == ["source:docs"] and entry["documents"] == 60 and len(entry["fingerprint"]) == 64
    assert recipe.steps[1].params == {}  # the recipe as written is unchanged; the run uses `calibrated`
    assert calibrated.content_hash() != recipe.content_hash()


def test_the_repetition_rules_n_gram_bounds_are_written_back(tmp_path):
    repetitive = [{"id": f"r{i}", "text": " ".join(["the cat sat on the mat and the dog sat on the log"] * 8)}
                  for i in range(20)]
    recipe = parse_recipe({"inputs": [{"path": str(write_jsonl(tmp_path / "poems.jsonl", repetitive)),
                                       "source": "poems"}],
                           "steps": [{"step": "gopher_repetition", "calibrate": {"reference": "source:poems"}}]})
    calibrated, _ = calibrate(recipe, str(tmp_path / "store"))
    step = calibrated.build_steps()[0][1]
    assert all(bound > 0.2 for _, bound in step.params.top_n_grams[:1])
    assert step.apply(pa.table({"id": ["x"], "text": [repetitive[0]["text"]], "source": ["poems"]})).kept.num_rows == 1


def test_a_joint_block_keeps_its_share_of_the_reference_with_every_rule_together(tmp_path):
    # 200 documents of 100 to 2,090 characters: a minimum and a maximum that the reference breaks at both ends.
    docs = [{"id": f"d{i}", "text": ("word " * (20 + i * 2)).strip()} for i in range(200)]
    inputs = [{"path": str(write_jsonl(tmp_path / "docs.jsonl", docs)), "source": "docs"}]
    step = {"step": "length_filter", "min_chars": 1500, "max_chars": 1600}
    lengths = np.array([len(d["text"]) for d in docs], dtype=np.float64)
    for joint in (False, True):
        recipe = parse_recipe({"inputs": inputs, "steps": [step],
                               "calibrate": {"reference": "source:docs", "keep": 0.9, "joint": joint}})
        calibrated, report = calibrate(recipe, str(tmp_path / "store"))
        entry = report["steps"]["length_filter"]
        params = calibrated.build_steps()[0][1].params
        kept = ((lengths >= params.min_chars) & (lengths <= params.max_chars)).mean()
        if not joint:  # each rule alone keeps 90 %: together 80 %
            assert entry["rule_keep"] == 0.9 and entry["kept_together"] is None and kept == pytest.approx(0.8)
        else:  # together 90 %: each rule at 95 %, its bound the reference quantile there
            assert kept >= 0.9 and kept == pytest.approx(entry["kept_together"])
            assert entry["rule_keep"] == pytest.approx(0.95, abs=0.005)
            ordered = np.sort(lengths)
            assert params.min_chars == ordered[len(ordered) - math.ceil(entry["rule_keep"] * len(ordered) - 1e-9)]
            assert params.max_chars == ordered[math.ceil(entry["rule_keep"] * len(ordered) - 1e-9) - 1]


def test_a_page_rule_the_reference_breaks_too_often_is_switched_off_and_one_it_passes_stays_on(tmp_path):
    # Technical prose: 1 document in 10 quotes code with a curly bracket (C4 drops the page), none says lorem ipsum.
    prose = "The parser reads each line and returns the value. It stops at the end of the file. " * 4
    docs = [{"id": f"d{i}", "text": prose + ("Pass options as {'strict': True}." if i % 10 == 0 else "")}
            for i in range(40)]
    recipe = parse_recipe({"inputs": [{"path": str(write_jsonl(tmp_path / "docs.jsonl", docs)), "source": "docs"}],
                           "steps": [{"step": "c4_quality", "calibrate": {"reference": "source:docs", "keep": 0.98}}]})
    calibrated, report = calibrate(recipe, str(tmp_path / "store"))
    step = calibrated.build_steps()[0][1]
    assert step.params.filter_curly_bracket is False and step.params.filter_lorem_ipsum is True
    checks = {c["signal"]: c for c in report["steps"]["c4_quality"]["checks"]}
    assert checks["curly_bracket"]["switch"] and checks["curly_bracket"]["kept_at_configured"] == pytest.approx(0.9)
    assert (bound_text(checks["curly_bracket"], "configured"), bound_text(checks["curly_bracket"], "calibrated")) \
        == ("on", "off")
    assert checks["lorem_ipsum"]["calibrated"] == checks["lorem_ipsum"]["configured"] == 0
    # The page with code is kept now, and its bracket line with it; lorem ipsum still drops a page.
    table = pa.table({"id": ["a", "b"], "text": [docs[0]["text"], prose + "Lorem ipsum dolor sit amet, he said."],
                      "source": ["docs", "docs"]})
    out = step.apply(table)
    assert out.kept.column("id").to_pylist() == ["a"] and "{'strict': True}" in out.kept.column("text")[0].as_py()
    assert out.rejected.column("reason").to_pylist() == ["c4_quality:lorem_ipsum"]
    # What `curate thresholds` reads back as the parameters the version ran with.
    assert recipe_params({"steps": [{"step": "c4_quality"}]}, "c4_quality", report)["filter_curly_bracket"] is False


def test_an_evaluation_set_or_text_it_holds_is_never_a_reference(tmp_path):
    store = VersionStore(tmp_path / "store")
    held_out = write_jsonl(tmp_path / "heldout.jsonl", [{"id": "h0", "text": docstring(3)}])
    register_evalset(store, "heldout", [str(held_out)])
    as_reference = parse_recipe({"inputs": _inputs(tmp_path), "steps": [
        {"step": "gopher_quality", "calibrate": {"reference": "heldout"}}]})
    with pytest.raises(RecipeError, match="'heldout' is an evaluation set"):
        calibrate(as_reference, store.url)
    overlapping = parse_recipe({"inputs": _inputs(tmp_path), "steps": [  # docs.jsonl holds d3, the held-out text
        {"step": "gopher_quality", "calibrate": {"reference": "source:docs"}}]})
    with pytest.raises(RecipeError, match="shares 1 document.*evaluation set 'heldout'"):
        calibrate(overlapping, store.url)
    register_evalset(store, "trusted", [str(tmp_path / "web.jsonl")], role="reference")
    from curation.evalsets import EvalSetError, evaluation_sets

    with pytest.raises(EvalSetError, match="'trusted' is a reference set"):
        evaluation_sets(store, ["trusted"])
    assert evaluation_sets(store) == ["heldout"]


def test_a_step_without_thresholds_cannot_be_calibrated_and_a_recipe_wide_block_skips_it(tmp_path):
    bad = parse_recipe({"inputs": _inputs(tmp_path), "steps": [
        {"step": "exact_dedup", "calibrate": {"reference": "source:docs"}}]})
    with pytest.raises(RecipeError, match="exact_dedup has no thresholds to calibrate"):
        calibrate(bad, str(tmp_path / "store"))
    wide = parse_recipe({"inputs": _inputs(tmp_path), "calibrate": {"reference": "source:docs"},
                         "steps": [{"step": "exact_dedup"}, {"step": "gopher_quality"},
                                   {"step": "fineweb_quality", "calibrate": False}]})
    calibrated, report = calibrate(wide, str(tmp_path / "store"))
    assert list(report["steps"]) == ["gopher_quality"] and calibrated.steps[2].params == {}


@pytest.mark.e2e
def test_a_calibrated_run_records_its_bounds_and_keeps_the_trusted_kind_of_text(tmp_path, prefect_harness):
    from flows.curate import run_curation

    steps = [{"step": "normalize"}, {"step": "gopher_quality", "sources": ["web"]}]
    paper = parse_recipe({"inputs": _inputs(tmp_path), "steps": steps})
    calibrated = parse_recipe({"inputs": _inputs(tmp_path), "calibrate": {"reference": "source:docs"},
                               "steps": steps})
    store = str(tmp_path / "store")
    before = run_curation(paper, store, "paper", workers=1)
    after = run_curation(calibrated, store, "calibrated", workers=1)
    rejected = {m["name"]: m["steps"][2]["rejected_by_reason"] for m in (before, after)}
    assert rejected["paper"].get("gopher_quality:alpha_words", 0) >= 10  # the docstring-like crawl pages
    assert rejected["calibrated"] == {"gopher_quality:stop_words": 10}  # only the spam pages
    assert after["calibration"]["steps"]["gopher_quality"]["reference"] == ["source:docs"]
    assert "min_alpha_words_ratio" not in after["recipe"]["steps"][1]  # the manifest keeps the recipe as written


def test_threshold_views_show_the_calibrated_bounds_and_what_each_would_remove_per_class():
    from curation.thresholds import recipe_params, retention

    recipe = {"steps": [{"step": "gopher_quality", "sources": ["web"], "min_doc_words": 20}]}
    calibration = {"steps": {"gopher_quality": {"checks": [
        {"signal": "alpha_words", "parameter": "min_alpha_words_ratio", "configured": 0.8, "calibrated": 0.55}]}}}
    params = recipe_params(recipe, "gopher_quality", calibration)
    assert params == {"min_doc_words": 20, "min_alpha_words_ratio": 0.55}
    values = np.array([0.9, 0.7, 0.6, 0.3, 0.2, 0.95])
    classes = np.array(["clean", "clean", "clean", "spam", "spam", "spam"], dtype=object)
    view = retention(values, np.ones(6), "gopher_quality", "alpha_words", params=params, classes=classes)
    assert view.current == {"min": 0.55}
    assert view.by_class == {"clean": {"docs": 3, "paper": 2, "as run": 0},
                             "spam": {"docs": 3, "paper": 2, "as run": 2}}

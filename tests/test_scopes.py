"""Scopes: a step applies to some sources or rows only; the others pass through in place, counted, and every
view says where each step applied."""

from __future__ import annotations

import pyarrow as pa
import pytest
from conftest import doc, write_jsonl

from curation.recipe import RecipeError, parse_recipe
from curation.steps import REGISTRY
from curation.steps.scope import Predicate, Scope, apply_in_scope, collect_in_scope
from curation.store import VersionStore
from flows.printing import steps_table

SYMBOLS = "x = f(a, b) # -> {k: v} [1, 2] ;; == != <= >= :: // ** %% @@ $$ ^^ ~~ ||"  # fails the alpha-word rule


def _batch() -> pa.Table:
    return pa.table({"id": ["a", "b", "c", "d"], "text": [SYMBOLS, doc(1, 80), SYMBOLS, doc(2, 80)],
                     "source": ["docs", "web", "web", "docs"], "lang": ["en", "en", None, "fr"]})


def test_a_scoped_filter_leaves_other_sources_untouched_and_in_place():
    step = REGISTRY["gopher_quality"](min_doc_words=5)
    out = apply_in_scope(step, _batch(), Scope(sources=("web",)))
    assert out.kept.column("id").to_pylist() == ["a", "b", "d"]  # a: docs, out of scope, kept where it was
    assert out.rejected.column("id").to_pylist() == ["c"] and "__scope_row" not in out.rejected.column_names
    assert out.counters["out_of_scope"] == 2 and out.kept.num_rows + out.rejected.num_rows == 4


def test_columns_a_step_adds_are_null_outside_its_scope():
    step = REGISTRY["gopher_quality"](mode="annotate")
    out = apply_in_scope(step, _batch(), Scope(skip_sources=("docs",)))
    assert out.kept.column("id").to_pylist() == ["a", "b", "c", "d"]
    measured = out.kept.column("gopher_quality__words").to_pylist()
    assert measured[0] is None and measured[3] is None and measured[1] > 0


@pytest.mark.parametrize("where, inside", [
    ({"column": "lang", "op": "==", "value": "en"}, ["a", "b"]),
    ({"column": "lang", "op": "in", "value": ["en", "fr"]}, ["a", "b", "d"]),
    ({"column": "lang", "op": "not_in", "value": ["en"]}, ["d"]),  # a null matches no test, `not_in` included
    ({"column": "lang", "op": "is_null"}, ["c"]),
    ({"column": "missing", "op": "not_null"}, []),
])
def test_a_predicate_on_a_metadata_column_selects_rows(where, inside):
    mask = Scope(where=Predicate(**where)).mask(_batch())
    assert [i for i, m in zip("abcd", mask) if m] == inside


def test_a_global_step_collects_only_its_scope_and_says_which_rows():
    step = REGISTRY["exact_dedup"]()
    summary, rows = collect_in_scope(step, _batch(), Scope(sources=("web",)))
    assert list(summary["id"]) == ["b", "c"] and rows.tolist() == [1, 2]


@pytest.mark.parametrize("step, message", [
    ({"step": "gopher_quality", "sources": ["web"], "skip_sources": ["docs"]}, "give `sources` or `skip_sources`"),
    ({"step": "gopher_quality", "sources": ["webb"]}, "no input has source 'webb'; the inputs' sources: docs, web"),
    ({"step": "gopher_quality", "where": {"column": "lang", "op": "in", "value": "en"}}, "needs a list"),
    ({"step": "gopher_quality", "where": {"column": "lang", "op": "=="}}, "needs one value"),
])
def test_bad_scopes_are_recipe_errors(step, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe({"inputs": [{"path": "a.jsonl", "source": "docs"}, {"path": "b.jsonl", "source": "web"}],
                      "steps": [step]})


def test_a_scope_is_part_of_what_the_recipe_does():
    base = {"inputs": [{"path": "a.jsonl", "source": "web"}], "steps": [{"step": "gopher_quality"}]}
    scoped = {**base, "steps": [{"step": "gopher_quality", "sources": ["web"]}]}
    assert parse_recipe(base).content_hash() != parse_recipe(scoped).content_hash()
    assert parse_recipe(scoped).steps[0].params == {}  # a scope is not a parameter of the step


@pytest.mark.e2e
def test_scoped_steps_in_a_run_account_for_every_record_and_show_their_scope(tmp_path, prefect_harness):
    from flows.curate import run_curation

    docs = [{"id": f"d{i}", "text": SYMBOLS if i % 2 else doc(i, 80)} for i in range(6)]
    web = [{"id": f"w{i}", "text": SYMBOLS if i % 2 else doc(100 + i, 80)} for i in range(6)]
    web.append({"id": "w-copy", "text": docs[0]["text"]})  # an exact copy of a docs page, in the crawl
    web.append({"id": "w-copy2", "text": web[0]["text"]})  # an exact copy within the crawl
    recipe = parse_recipe({
        "inputs": [{"path": str(write_jsonl(tmp_path / "docs.jsonl", docs)), "source": "docs"},
                   {"path": str(write_jsonl(tmp_path / "web.jsonl", web)), "source": "web"}],
        "steps": [{"step": "gopher_quality", "min_doc_words": 5, "sources": ["web"]},
                  {"step": "exact_dedup", "sources": ["web"]}]})
    manifest = run_curation(recipe, str(tmp_path / "store"), "v", workers=1)
    steps = {s["name"]: s for s in manifest["steps"]}
    quality, dedup = steps["gopher_quality"], steps["exact_dedup"]
    assert quality["scope"] == "sources web" and quality["counters"]["out_of_scope"] == 6
    assert quality["rejected"] == 3 and quality["in"] == quality["kept"] + quality["rejected"]
    # Only the crawl's own copy goes: the copy of a docs page stays, the docs page is outside the scope.
    assert dedup["rejected_by_reason"] == {"exact_dedup:duplicate_of": 1} and dedup["counters"]["out_of_scope"] == 6
    kept = VersionStore(tmp_path / "store").read_table("v", columns=["id", "source"])
    assert kept.filter(pa.compute.equal(kept.column("source"), "docs")).num_rows == 6  # untouched
    ids = kept.column("id").to_pylist()
    assert "w-copy" in ids and ("w0" in ids) != ("w-copy2" in ids)  # one of the crawl's two copies stays
    assert manifest["accounting"]["ok"]
    table = steps_table(manifest)
    assert [c.header for c in table.columns][:2] == ["step", "applies to"]
    report = (tmp_path / "store" / "versions" / "v" / "report.html").read_text()
    assert "applies to" in report and "sources web" in report


@pytest.mark.e2e
def test_the_recipes_input_order_ranks_sources_for_the_keep_policy(tmp_path, prefect_harness):
    from flows.curate import run_curation

    original = doc(7, 120)
    copy = original.replace("river", "stream", 1) + " Share this page with a friend today."  # longer, nearly equal
    recipe = parse_recipe({
        "inputs": [{"path": str(write_jsonl(tmp_path / "kjv.jsonl", [{"id": "k1", "text": original}])),
                    "source": "kjv"},
                   {"path": str(write_jsonl(tmp_path / "crawl.jsonl", [{"id": "c1", "text": copy}])),
                    "source": "crawl"}],
        "steps": [{"step": "minhash_dedup", "threshold": 0.7}]})
    assert recipe.build_steps()[0][1].params.prefer_sources == ["kjv", "crawl"]
    manifest = run_curation(recipe, str(tmp_path / "store"), "v", workers=1)
    assert VersionStore(tmp_path / "store").read_table("v", columns=["id"]).column("id").to_pylist() == ["k1"]
    assert manifest["step_reports"]["minhash_dedup"]["kept_over"] == {"kjv": {"crawl": 1}}

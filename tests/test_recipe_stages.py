"""A recipe as cumulative stages (for `curate ablate --steps`): grouping, the baseline, and hashes that
let a stage find the version an identical recipe already published."""

from __future__ import annotations

import pytest

from curation.recipe import RecipeError, parse_recipe


def recipe(steps: list[dict]):
    return parse_recipe({"name": "r", "inputs": [{"path": "in.jsonl"}], "steps": steps})


STEPS = [{"step": "normalize"}, {"step": "length_filter"}, {"step": "gopher_quality"}, {"step": "pii_redact"},
         {"step": "exact_dedup"}, {"step": "minhash_dedup"}]


def test_consecutive_steps_of_one_category_form_a_stage():
    stages = recipe(STEPS).stages()
    assert [(s.label, s.steps, s.end) for s in stages] == [
        ("raw", (), 0), ("transform", ("normalize",), 1), ("filter", ("length_filter", "gopher_quality"), 3),
        ("transform", ("pii_redact",), 4), ("dedup", ("exact_dedup", "minhash_dedup"), 6)]


def test_each_step_can_be_its_own_stage():
    labelled = [{**STEPS[0], "stage": "raw"}, *STEPS[1:]]
    stages = recipe(labelled).stages(each_step=True)
    assert [(s.label, s.steps, s.end) for s in stages] == [
        ("raw", ("normalize",), 1), *((s["step"], (s["step"],), i + 2) for i, s in enumerate(STEPS[1:]))]


def test_labels_override_categories_and_raw_steps_join_the_baseline():
    labelled = [{**STEPS[0], "stage": "raw"}, *({**s, "stage": "quality"} for s in STEPS[1:4]), *STEPS[4:]]
    stages = recipe(labelled).stages()
    assert [(s.label, s.steps) for s in stages] == [
        ("raw", ("normalize",)), ("quality", ("length_filter", "gopher_quality", "pii_redact")),
        ("dedup", ("exact_dedup", "minhash_dedup"))]


def test_stage_labels_do_not_change_what_the_recipe_is():
    plain = recipe(STEPS)
    labelled = recipe([{**s, "stage": "x"} for s in STEPS])
    assert plain.content_hash() == labelled.content_hash()
    assert labelled.prefix(3).content_hash() == recipe(STEPS[:3]).content_hash()
    assert labelled.prefix(3).content_hash() != plain.content_hash()
    assert [s.step for s in labelled.prefix(3).steps] == ["normalize", "length_filter", "gopher_quality"]


def test_bad_stage_labels_are_recipe_errors():
    with pytest.raises(RecipeError, match="must come before every other step; gopher_quality"):
        recipe([STEPS[0], {**STEPS[2], "stage": "raw"}])
    with pytest.raises(RecipeError, match="stage"):
        recipe([{**STEPS[0], "stage": "has spaces"}])


def test_a_longer_recipe_on_the_same_inputs_extends_a_shorter_one():
    from curation.diff import extends_recipe

    short = {"recipe": recipe(STEPS[:2]).model_dump(mode="json")}
    longer = {"recipe": recipe([{**s, "stage": "x"} for s in STEPS]).model_dump(mode="json")}
    assert extends_recipe(short, longer) and not extends_recipe(longer, short)
    elsewhere = {"recipe": parse_recipe({"inputs": [{"path": "other.jsonl"}], "steps": STEPS}).model_dump(mode="json")}
    assert not extends_recipe(short, elsewhere)
    reordered = {"recipe": recipe([STEPS[1], STEPS[0], *STEPS[2:]]).model_dump(mode="json")}
    assert not extends_recipe(short, reordered)

"""Recipes fail before any work, naming the bad key and listing the valid ones."""

from __future__ import annotations

import pytest

from curation.recipe import RecipeError, load_recipe, parse_recipe
from curation.steps import REGISTRY

BASE = {"inputs": [{"path": "x.jsonl"}]}


@pytest.mark.parametrize("recipe, message", [
    ({**BASE, "steps": [{"step": "lenght_filter"}]},
     f"steps[0]: unknown step 'lenght_filter'; valid steps: {', '.join(sorted(REGISTRY))}"),
    ({**BASE, "steps": [{"step": "normalize"}, {"step": "length_filter", "min_char": 3}]},
     "steps[1] (length_filter): unknown key 'min_char'; valid keys: mode, min_chars, max_chars, min_words, max_words"),
    ({"inputs": [{"path": "x.jsonl", "textfield": "body"}]}, "unknown key 'inputs[0].textfield'; valid keys: path,"),
    ({**BASE, "shard_size": 3}, "unknown key 'shard_size'; valid keys: name, description, inputs, synthesize, steps"),
    ({"synthesize": {"method": "grounded", "source": "v", "records": 5, "backend": {"kind": "gpt", "checkpont": "x"}}},
     "unknown key 'synthesize.backend.gpt.checkpont'; valid keys: kind, checkpoint, generation"),
    ({"synthesize": {"method": "grounded", "records": 5, "backend": {"kind": "programmatic"}}},
     "method grounded needs `source:`"),
    ({"synthesize": {"method": "self_instruct", "records": 5, "backend": {"kind": "hf", "path": "m"},
                     "sampling": {"temp": 1}}}, "unknown key 'synthesize.sampling.temp'; valid keys: temperature,"),
    ({**BASE, "synthesize": {"method": "self_instruct", "records": 5, "backend": {"kind": "hf", "path": "m"}}},
     "a synthesis recipe takes no 'inputs'"),
    ({"steps": []}, "missing required key 'inputs'"),
    ({**BASE, "steps": [{"step": "length_filter", "min_chars": "many"}]},
     "min_chars = 'many': input should be a valid integer"),
    ({"inputs": [{"path": "x.jsonl", "origin": "robot"}]}, "inputs[0].origin"),
    ({**BASE, "steps": [{"step": "normalize"}, {"step": "normalize"}]}, "step name 'normalize' is used twice"),
])
def test_bad_recipes_name_the_key(recipe, message):
    with pytest.raises(RecipeError) as info:
        parse_recipe(recipe)
    assert message in str(info.value)


@pytest.mark.parametrize("step, message", [
    ({"step": "length_filter", "min_chars": -5},
     "steps[1] (length_filter): min_chars = -5: out of range; allowed: >= 0"),
    ({"step": "length_filter", "min_chars": 500, "max_chars": 10},
     "steps[1] (length_filter): min_chars = 500 is above max_chars = 10; allowed: min_chars <= max_chars"),
    ({"step": "fineweb_quality", "line_punct_thr": -1},
     "steps[1] (fineweb_quality): line_punct_thr = -1: out of range; allowed: >= 0"),
    ({"step": "fineweb_quality", "new_line_ratio": -1}, "new_line_ratio = -1: out of range; allowed: >= 0"),
    ({"step": "gopher_quality", "min_alpha_words_ratio": 5},
     "steps[1] (gopher_quality): min_alpha_words_ratio = 5: out of range; allowed: <= 1"),
    ({"step": "gopher_quality", "min_doc_words": 200, "max_doc_words": 100}, "min_doc_words = 200 is above"),
    ({"step": "gopher_repetition", "dup_line_frac": 1.5}, "dup_line_frac = 1.5: out of range; allowed: <= 1"),
    ({"step": "gopher_repetition", "top_n_grams": [[2, 1.5]]}, "top_n_grams.0.1 = 1.5: out of range; allowed: <= 1"),
    ({"step": "c4_quality", "min_num_sentences": -3},
     "steps[1] (c4_quality): min_num_sentences = -3: out of range; allowed: >= 0"),
    ({"step": "instruction_filter", "min_task_words": 10, "max_task_words": 5}, "min_task_words = 10 is above"),
    ({"step": "minhash_dedup", "bands": 4}, "bands and rows go together"),
    ({"step": "normalize", "name": "again", "max_blank_lines": -1},
     "max_blank_lines = -1: out of range; allowed: >= 0"),
    ({"step": "normalize", "name": "again", "unicode_form": "NFX"}, "unicode_form = 'NFX': input should be"),
    ({"step": "minhash_dedup", "bands": 40, "rows": 8}, "bands x rows = 40 x 8 = 320 is above num_perm = 128"),
])
def test_thresholds_out_of_range_fail_at_load_naming_step_key_value_and_range(step, message):
    with pytest.raises(RecipeError) as info:
        parse_recipe({**BASE, "steps": [{"step": "normalize"}, step]})
    assert message in str(info.value)


def test_recipe_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("inputs: [\n")
    with pytest.raises(RecipeError, match="bad.yaml: not valid YAML"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="missing.yaml: recipe file does not exist"):
        load_recipe(tmp_path / "missing.yaml")


def test_relative_inputs_resolve_against_the_recipe_and_hash_ignores_the_name(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: a\ninputs:\n  - {path: data.jsonl}\nsteps:\n  - {step: normalize}\n")
    recipe = load_recipe(path)
    assert recipe.base == tmp_path.resolve()
    renamed = parse_recipe({"name": "b", "inputs": [{"path": "data.jsonl"}], "steps": [{"step": "normalize"}]})
    assert recipe.content_hash() == renamed.content_hash()
    changed = parse_recipe({"inputs": [{"path": "data.jsonl"}], "steps": [{"step": "normalize", "max_blank_lines": 2}]})
    assert changed.content_hash() != recipe.content_hash()
    assert [name for name, _ in changed.build_steps()] == ["normalize"]
